//! Validation of a job about to be stored: enums, ranges, required fields and links.
//!
//! Each problem is reported with the path of the field (`postDeployActions[0].scriptType`);
//! all problems of a request are reported together. The ranges are the table in
//! docs/simulator.md, which the CRD schema shares.

use std::collections::HashSet;

use super::state::{StoreView, link_of};
use crate::qualys::{Action, DeferrablePrompt, Field, JobBody, LooseInt, RebootCountdown, values};

const UNITS: [&str; 2] = ["HOURS", "MINUTES"];
/// Pre- or post-deploy actions per list, as the console allows.
const MAX_ACTIONS: usize = 5;

/// True when the stored job has this very action (same id, same kind).
fn echoed(action: &Action, kind: &str, stored: Option<&JobBody>) -> bool {
    let Some(id) = action.action_id.get() else {
        return false;
    };
    stored.is_some_and(|s| {
        s.actions()
            .any(|(_, _, a)| a.action_id.get() == Some(id) && a.kind() == Some(kind))
    })
}

/// An inclusive range for each unit, used for durations given as value + unit.
struct Span {
    hours: (i64, i64),
    minutes: (i64, i64),
}

const TIMEOUT: Span = Span {
    hours: (1, 168),
    minutes: (1, 10_080),
};
const INTERVAL: Span = Span {
    hours: (1, 24),
    minutes: (1, 1_440),
};
const RANDOMIZE: Span = Span {
    hours: (0, 2),
    minutes: (0, 120),
};

struct Check<'e> {
    errors: &'e mut Vec<String>,
}

impl Check<'_> {
    fn push(&mut self, message: String) {
        self.errors.push(message);
    }

    fn required<'a>(&mut self, field: &'a Field<String>, path: &str) -> Option<&'a str> {
        match field.get().map(String::as_str) {
            Some(s) if !s.trim().is_empty() => Some(s),
            _ => {
                self.push(format!("{path} is required"));
                None
            }
        }
    }

    /// A string that must be one of `allowed` when set.
    fn one_of<'a>(
        &mut self,
        field: &'a Field<String>,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'a str> {
        let value = field.get()?;
        if allowed.contains(&value.as_str()) {
            Some(value)
        } else {
            self.push(format!(
                "{path}: {value:?} is not one of {}",
                allowed.join(", ")
            ));
            None
        }
    }

    fn required_one_of<'a>(
        &mut self,
        field: &'a Field<String>,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'a str> {
        if field.is_unset() {
            self.push(format!("{path} is required ({})", allowed.join(", ")));
            return None;
        }
        self.one_of(field, path, allowed)
    }

    /// An integer given as a number or a string; `""` counts as unset.
    fn int(&mut self, field: &Field<LooseInt>, path: &str) -> Option<i64> {
        let value = field.get()?;
        if matches!(value, LooseInt::Text(s) if s.trim().is_empty()) {
            return None;
        }
        match value.as_i64() {
            Some(n) => Some(n),
            None => {
                self.push(format!("{path} must be an integer"));
                None
            }
        }
    }

    fn range(&mut self, field: &Field<LooseInt>, path: &str, lo: i64, hi: i64) -> Option<i64> {
        let n = self.int(field, path)?;
        if (lo..=hi).contains(&n) {
            Some(n)
        } else {
            self.push(format!("{path} must be between {lo} and {hi} (got {n})"));
            None
        }
    }

    fn set(&mut self, field: &Field<LooseInt>, path: &str, allowed: &[i64]) {
        if let Some(n) = self.int(field, path)
            && !allowed.contains(&n)
        {
            let list: Vec<String> = allowed.iter().map(i64::to_string).collect();
            self.push(format!(
                "{path} must be one of {} (got {n})",
                list.join(", ")
            ));
        }
    }

    /// A duration as value + unit; returns it in minutes. A value without a unit is read in
    /// hours.
    fn duration(
        &mut self,
        value: &Field<LooseInt>,
        unit: &Field<String>,
        path: &str,
        unit_path: &str,
        span: &Span,
    ) -> Option<i64> {
        let unit = self.one_of(unit, unit_path, &UNITS);
        let n = self.int(value, path)?;
        let (per, (lo, hi), name) = match unit {
            Some("MINUTES") => (1, span.minutes, "MINUTES"),
            _ => (60, span.hours, "HOURS"),
        };
        if (lo..=hi).contains(&n) {
            Some(n * per)
        } else {
            self.push(format!(
                "{path} must be between {lo} and {hi} {name} (got {n})"
            ));
            None
        }
    }

    fn deferment(&mut self, prompt: &Field<DeferrablePrompt>, path: &str) {
        let Some(d) = prompt.get().and_then(|p| p.deferment.get()) else {
            return;
        };
        self.range(&d.count, &format!("{path}.deferment.count"), 1, 99);
        self.duration(
            &d.interval,
            &d.interval_unit,
            &format!("{path}.deferment.interval"),
            &format!("{path}.deferment.intervalUnit"),
            &INTERVAL,
        );
    }

    fn countdown(&mut self, countdown: &Field<RebootCountdown>, path: &str) {
        let Some(c) = countdown.get() else { return };
        self.duration(
            &c.interval,
            &c.interval_unit,
            &format!("{path}.interval"),
            &format!("{path}.intervalUnit"),
            &INTERVAL,
        );
    }

    fn action(&mut self, action: &Action, path: &str, stored: Option<&JobBody>) {
        let kind = match action.kind() {
            // A kind the console made and the client sent back untouched is the gateway's own.
            Some(k) if !values::ACTION_KINDS.contains(&k) && echoed(action, k, stored) => None,
            _ => self.required_one_of(
                &action.action,
                &format!("{path}.action"),
                &values::ACTION_KINDS,
            ),
        };
        for (field, name) in [
            (&action.script_type, "scriptType"),
            (&action.detection_script_type, "detectionScriptType"),
        ] {
            if field.get().is_some_and(|s| !s.is_empty()) {
                self.one_of(field, &format!("{path}.{name}"), &["ps", "sh"]);
            }
        }
        let has_default = action
            .default_script_type
            .get()
            .is_some_and(|s| !s.is_empty());
        let has_script = action.script.get().is_some_and(|s| !s.is_empty());
        if kind == Some(values::RUN_SCRIPT) && !has_script && !has_default {
            self.push(format!(
                "{path}.script is required for a Run Script action without defaultScriptType"
            ));
        }
    }
}

/// How strict a check is.
pub struct Options {
    /// A create (status may be set) rather than an update.
    pub create: bool,
    /// `"timeout": -1` without a `timeoutUnit` passes (qualysdk's `create_job` sends it when the
    /// caller gives no timeout).
    pub accept_unset_timeout: bool,
}

/// qualysdk's "no timeout": `-1` and no unit.
fn unset_timeout(job: &JobBody) -> bool {
    job.timeout.get().and_then(LooseInt::as_i64) == Some(-1)
        && job.timeout_unit.get().is_none_or(|u| u.is_empty())
}

/// Check a job document about to be stored.
pub fn job(job: &JobBody, store: &StoreView<'_>, opts: Options, errors: &mut Vec<String>) {
    let create = opts.create;
    let mut c = Check { errors };
    c.required(&job.name, "name");
    c.required_one_of(&job.r#type, "type", &[values::INSTALL, values::ROLLBACK]);
    c.required_one_of(&job.platform, "platform", &values::PLATFORMS);
    c.required_one_of(&job.schedule_type, "scheduleType", &values::SCHEDULE_TYPES);
    if create {
        c.one_of(&job.status, "status", &[values::ENABLED, values::DISABLED]);
    }
    c.one_of(
        &job.timezone_type,
        "timezoneType",
        &["SPECIFIC_TZ", "AGENT_TZ"],
    );
    c.one_of(&job.filter_type, "filterType", &["Any", "All"]);
    c.one_of(
        &job.exclusion_filter_type,
        "exclusionFilterType",
        &["Any", "All"],
    );

    let timeout = if opts.accept_unset_timeout && unset_timeout(job) {
        None
    } else {
        c.duration(
            &job.timeout,
            &job.timeout_unit,
            "timeout",
            "timeoutUnit",
            &TIMEOUT,
        )
    };
    let randomize = c.duration(
        &job.download_randomize_time,
        &job.download_randomize_time_unit,
        "downloadRandomizeTime",
        "downloadRandomizeTimeUnit",
        &RANDOMIZE,
    );
    if let (Some(t), Some(r)) = (timeout, randomize)
        && r >= t
    {
        c.push("downloadRandomizeTime must be smaller than the timeout".to_string());
    }

    c.deferment(&job.pre_deployment, "preDeployment");
    if let Some(post) = job.post_deployment.get() {
        c.deferment(&post.reboot_option, "postDeployment.rebootOption");
        c.countdown(&post.reboot_countdown, "postDeployment.rebootCountdown");
    }

    if let Some(n) = c.int(&job.patch_tuesday_plus_x_days, "patchTuesdayPlusXDays")
        && !((-27..=-1).contains(&n) || (1..=27).contains(&n))
    {
        c.push(format!(
            "patchTuesdayPlusXDays must be between -27 and -1 or between 1 and 27 (got {n})"
        ));
    }
    if let Some(configs) = job
        .notification
        .get()
        .and_then(|n| n.notification_configs.get())
    {
        c.range(
            &configs.completed_percentage,
            "notification.notificationConfigs.completedPercentage",
            1,
            100,
        );
    }
    c.range(&job.day_of_month, "dayOfMonth", 1, 31);
    c.range(&job.recurring_day_of_month, "recurringDayOfMonth", 1, 5);
    c.range(
        &job.recurring_week_day_of_month,
        "recurringWeekDayOfMonth",
        0,
        6,
    );
    c.set(&job.monthly_recurring_type, "monthlyRecurringType", &[0, 1]);
    c.set(&job.dynamic_qql_type, "dynamicQQLType", &[0, 1, 2]);
    c.int(&job.custom_patch_url_id, "customPatchURLId");

    let stored = job.job_id().and_then(|id| store.job(id));
    for (list, i, action) in job.actions() {
        c.action(action, &format!("{list}[{i}]"), stored);
    }
    for (name, list) in [
        ("preDeployActions", &job.pre_deploy_actions),
        ("postDeployActions", &job.post_deploy_actions),
    ] {
        if let Some(n) = list.get().map(Vec::len).filter(|n| *n > MAX_ACTIONS) {
            c.push(format!("{name}: at most {MAX_ACTIONS} actions (got {n})"));
        }
    }

    links(&mut c, job, store);
}

/// `linkedJobId` must name another existing job without closing a cycle; `chainedJobRule`
/// needs a link and must name post-deploy actions of that parent.
fn links(c: &mut Check<'_>, job: &JobBody, store: &StoreView<'_>) {
    let own_id = job.job_id().unwrap_or_default();
    let parent = match link_of(job) {
        None => None,
        Some(pid) if pid == own_id => {
            c.push("linkedJobId: a job cannot be linked to itself".to_string());
            None
        }
        Some(pid) => match store.job(pid) {
            None => {
                c.push(format!("linkedJobId: no deployment job {pid} exists"));
                None
            }
            Some(parent) => {
                if closes_cycle(own_id, parent, store) {
                    c.push(format!(
                        "linkedJobId: linking to {pid} would make a cycle of linked jobs"
                    ));
                }
                Some(parent)
            }
        },
    };

    let Some(rules) = job.chained_job_rule.get().filter(|r| !r.is_empty()) else {
        return;
    };
    if link_of(job).is_none() {
        c.push("chainedJobRule requires linkedJobId".to_string());
        return;
    }
    let parent_posts: HashSet<&str> = parent
        .and_then(|p| p.post_deploy_actions.get())
        .into_iter()
        .flatten()
        .filter_map(|a| a.action_id.get().map(String::as_str))
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("chainedJobRule[{i}]");
        c.required_one_of(
            &rule.field,
            &format!("{at}.field"),
            &[values::CHAINED_FIELD],
        );
        c.required_one_of(
            &rule.condition,
            &format!("{at}.condition"),
            &[values::CHAINED_CONDITION],
        );
        if rule.threshold.is_unset() {
            c.push(format!("{at}.threshold is required (1-100)"));
        } else {
            c.range(&rule.threshold, &format!("{at}.threshold"), 1, 100);
        }
        match rule.action_ids.get() {
            None => c.push(format!("{at}.actionIds is required")),
            Some(ids) if ids.is_empty() => c.push(format!("{at}.actionIds must not be empty")),
            Some(ids) => {
                if let Some(parent) = parent {
                    let pid = parent.job_id().unwrap_or_default();
                    for (j, id) in ids.iter().enumerate() {
                        if !parent_posts.contains(id.as_str()) {
                            c.push(format!(
                                "{at}.actionIds[{j}]: {id} is not a post-deploy action of job {pid}"
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn closes_cycle(own_id: &str, parent: &JobBody, store: &StoreView<'_>) -> bool {
    let mut seen = HashSet::new();
    let mut current = Some(parent);
    while let Some(job) = current {
        let id = job.job_id().unwrap_or_default();
        if id == own_id {
            return true;
        }
        if !seen.insert(id.to_string()) {
            return false;
        }
        current = link_of(job).and_then(|p| store.job(p));
    }
    false
}
