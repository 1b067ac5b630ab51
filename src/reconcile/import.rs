//! The reverse of `render`: a live job → the `spec.job` that manages it as it is. Used by
//! `qpm-operator import`, whose output must plan to "no changes". Scripts are left unmanaged
//! (their content cannot be read back); server states and server-managed fields are dropped.

use crate::api::*;
use crate::qualys::{self, Field, JobBody, LooseInt};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Why a live job cannot be expressed as a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job}: {field}: {message}")]
pub struct ImportError {
    pub job: String,
    pub field: String,
    pub message: String,
}

/// The spec of a live job. Fields with values this version does not know are left unmanaged
/// and named in the returned notes.
pub fn spec_from_live(live: &JobBody) -> Result<(JobSpec, Vec<String>), ImportError> {
    let job = live.job_id().unwrap_or("?").to_string();
    let mut notes = Vec::new();
    let err = |field: &str, message: String| ImportError {
        job: job.clone(),
        field: field.into(),
        message,
    };
    let name = live
        .name
        .get()
        .cloned()
        .ok_or_else(|| err("name", "missing".into()))?;
    let platform =
        required_enum(&live.platform, Platform::from_wire).map_err(|m| err("platform", m))?;
    let schedule_type = required_enum(&live.schedule_type, ScheduleType::from_wire)
        .map_err(|m| err("scheduleType", m))?;
    let mut e = EnumReader { notes: &mut notes };

    let spec = JobSpec {
        name,
        job_type: e.read("type", &live.r#type, JobType::from_wire),
        platform,
        status: live.status.get().and_then(|s| JobState::from_wire(s)),
        asset_ids: list(&live.asset_ids),
        asset_tag_ids: list(&live.asset_tag_ids),
        match_all_tag_ids: list(&live.match_all_tag_ids),
        exclusion_tag_ids: list(&live.exclusion_tag_ids),
        exclusion_asset_ids: list(&live.exclusion_asset_ids),
        co_author_user_ids: list(&live.co_author_user_ids),
        approved_patches: list(&live.approved_patches),
        schedule_type,
        start_date_time: live.start_date_time.get().cloned(),
        recurring: copy(&live.recurring),
        recurring_week_days: live
            .recurring_week_days
            .get()
            .filter(|s| !s.is_empty())
            .cloned(),
        day_of_month: int(&live.day_of_month),
        recurring_day_of_month: int(&live.recurring_day_of_month),
        recurring_week_day_of_month: int(&live.recurring_week_day_of_month),
        recurring_last_day_of_month: copy(&live.recurring_last_day_of_month),
        monthly_recurring_type: int(&live.monthly_recurring_type),
        patch_tuesday_plus_x_days: int(&live.patch_tuesday_plus_x_days).filter(|d| *d != 0),
        timezone_type: e.read("timezoneType", &live.timezone_type, TimezoneType::from_wire),
        timezone: live.timezone.get().filter(|s| !s.is_empty()).cloned(),
        timeout: int(&live.timeout),
        timeout_unit: e.read("timeoutUnit", &live.timeout_unit, TimeUnit::from_wire),
        download_randomize_time: int(&live.download_randomize_time),
        download_randomize_time_unit: e.read(
            "downloadRandomizeTimeUnit",
            &live.download_randomize_time_unit,
            TimeUnit::from_wire,
        ),
        pre_deployment: live
            .pre_deployment
            .get()
            .map(|p| deferrable(p, &mut e, "preDeployment"))
            .map(Box::new),
        during_deployment: live
            .during_deployment
            .get()
            .map(|p| PromptSpec {
                user_message: p.user_message.get().cloned(),
                description: p.description.get().cloned(),
            })
            .map(Box::new),
        post_deployment: live
            .post_deployment
            .get()
            .map(|p| PostDeploymentSpec {
                suppress_reboots: copy(&p.suppress_reboots),
                reboot_honor_on_user_login: copy(&p.reboot_honor_on_user_login),
                reboot_option: p
                    .reboot_option
                    .get()
                    .map(|r| deferrable(r, &mut e, "postDeployment.rebootOption")),
                reboot_countdown: p.reboot_countdown.get().map(|c| RebootCountdownSpec {
                    interval: int(&c.interval),
                    interval_unit: e.read(
                        "postDeployment.rebootCountdown.intervalUnit",
                        &c.interval_unit,
                        TimeUnit::from_wire,
                    ),
                    user_message: c.user_message.get().cloned(),
                    description: c.description.get().cloned(),
                }),
                on_complete: p.on_complete.get().map(|c| OnCompleteSpec {
                    user_message: c.user_message.get().cloned(),
                    description: c.description.get().cloned(),
                    always_show_completed_prompt: copy(&c.always_show_completed_prompt),
                }),
            })
            .map(Box::new),
        description: live.description.get().cloned(),
        opportunistic_downloads: copy(&live.opportunistic_downloads),
        filter_type: e.read("filterType", &live.filter_type, FilterType::from_wire),
        exclusion_filter_type: e.read(
            "exclusionFilterType",
            &live.exclusion_filter_type,
            FilterType::from_wire,
        ),
        minimize_window: copy(&live.minimize_window),
        dynamic_patches_qql: live.dynamic_patches_qql.get().cloned(),
        is_dynamic_patches_qql: copy(&live.is_dynamic_patches_qql),
        dynamic_qql_type: int(&live.dynamic_qql_type),
        additional_dynamic_patches_qql: live.additional_dynamic_patches_qql.get().cloned(),
        additional_dynamic_qql_type: int(&live.additional_dynamic_qql_type),
        continue_on_patch_failure: copy(&live.continue_on_patch_failure),
        pre_deploy_actions: actions(
            &live.pre_deploy_actions,
            "preDeployActions",
            platform,
            &mut e,
        ),
        post_deploy_actions: actions(
            &live.post_deploy_actions,
            "postDeployActions",
            platform,
            &mut e,
        ),
        notification: live
            .notification
            .get()
            .map(|n| NotificationSpec {
                notification_types: n.notification_types.get().map(|t| NotificationTypesSpec {
                    email: copy(&t.email),
                }),
                notification_configs: n.notification_configs.get().map(|c| {
                    NotificationConfigsSpec {
                        recipient_emails: c.recipient_emails.get().cloned(),
                        completed_percentage: int(&c.completed_percentage),
                    }
                }),
                notification_events: n.notification_events.get().map(|v| NotificationEventsSpec {
                    on_job_start: copy(&v.on_job_start),
                    on_job_complete: copy(&v.on_job_complete),
                }),
            })
            .map(Box::new),
        linked_job_id: live.linked_job_id.get().filter(|s| !s.is_empty()).cloned(),
        linked_job_ref: None,
        chained_job_rule: chained_rules(live),
        custom_patch_url_id: live.custom_patch_url_id.get().and_then(|v| match v {
            LooseInt::Number(n) => n
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .map(IntOrString::Int),
            LooseInt::Text(s) => Some(IntOrString::String(s.clone())),
        }),
        is_vuln_context: copy(&live.is_vuln_context),
        is_asset_imported: copy(&live.is_asset_imported),
    };
    Ok((spec, notes))
}

struct EnumReader<'a> {
    notes: &'a mut Vec<String>,
}

impl EnumReader<'_> {
    fn read<T>(
        &mut self,
        field: &str,
        value: &Field<String>,
        parse: fn(&str) -> Option<T>,
    ) -> Option<T> {
        let v = value.get()?;
        let parsed = parse(v);
        if parsed.is_none() && !v.is_empty() {
            self.notes.push(format!(
                "{field}: value {v:?} is not known to this version; left unmanaged"
            ));
        }
        parsed
    }
}

fn required_enum<T>(value: &Field<String>, parse: fn(&str) -> Option<T>) -> Result<T, String> {
    match value.get() {
        Some(v) => parse(v).ok_or_else(|| format!("value {v:?} is not supported")),
        None => Err("missing".to_string()),
    }
}

fn list(value: &Field<Vec<String>>) -> Option<Vec<String>> {
    value.get().filter(|l| !l.is_empty()).cloned()
}

fn copy<T: Copy>(value: &Field<T>) -> Option<T> {
    value.get().copied()
}

fn int(value: &Field<LooseInt>) -> Option<i32> {
    value
        .get()
        .and_then(LooseInt::as_i64)
        .and_then(|i| i32::try_from(i).ok())
}

fn deferrable(
    p: &qualys::DeferrablePrompt,
    e: &mut EnumReader<'_>,
    at: &str,
) -> DeferrablePromptSpec {
    DeferrablePromptSpec {
        user_message: p.user_message.get().cloned(),
        description: p.description.get().cloned(),
        deferment: p.deferment.get().map(|d| DefermentSpec {
            count: int(&d.count),
            interval: int(&d.interval),
            interval_unit: e.read(
                &format!("{at}.deferment.intervalUnit"),
                &d.interval_unit,
                TimeUnit::from_wire,
            ),
        }),
    }
}

/// The spec of an action list, or `None` (the list left unmanaged, with a note) when one of
/// its actions cannot be expressed: a kind this version does not know, members it cannot
/// read, or fields a valid spec would need. Managing the list would replace such an action;
/// leaving the list out keeps every action of the live job as it is.
fn actions(
    value: &Field<Vec<qualys::Action>>,
    list: &str,
    platform: Platform,
    e: &mut EnumReader<'_>,
) -> Option<Vec<ActionSpec>> {
    let items = value.get()?;
    let mut notes = Vec::new();
    let mut reader = EnumReader { notes: &mut notes };
    let mut out = Vec::with_capacity(items.len());
    for (i, a) in items.iter().enumerate() {
        let at = format!("{list}[{i}]");
        match action(a, &at, platform, &mut reader) {
            Ok(spec) => out.push(spec),
            Err(why) => {
                e.notes.push(format!(
                    "{at} {why}; {list} left unmanaged (the job keeps its actions as they are)"
                ));
                return None;
            }
        }
    }
    e.notes.append(&mut notes);
    Some(out)
}

fn action(
    a: &qualys::Action,
    at: &str,
    platform: Platform,
    e: &mut EnumReader<'_>,
) -> Result<ActionSpec, String> {
    let kind = match a.kind() {
        None => return Err("has no readable action kind".to_string()),
        Some(k) => ActionKind::from_wire(k)
            .ok_or_else(|| format!("is a {k:?} action, a kind this version does not know"))?,
    };
    if let Some(key) = a.unreadable_keys().next() {
        return Err(format!("has a {key:?} member this version cannot read"));
    }
    let registry = kind == ActionKind::ChangeRegistryKey;
    let uninstall = kind == ActionKind::UninstallSoftware;
    if registry && platform != Platform::Windows {
        return Err(format!(
            "is a Change Registry Key action of a {platform} job"
        ));
    }
    let text =
        |f: &Field<String>, wanted: bool| f.get().filter(|s| wanted && !s.is_empty()).cloned();
    let params = a.params.get().map(|p| ActionParamsSpec {
        action_item: p.action_item.get().cloned(),
        timeout: int(&p.timeout),
        download_url: p.download_url.get().cloned(),
        download_protocol: int(&p.download_protocol),
        install_method: int(&p.install_method),
        file_checksum: p.file_checksum.get().cloned(),
        registry_key: text(&p.registry_key, registry),
        registry_action: if registry {
            e.read(
                &format!("{at}.params.registryAction"),
                &p.registry_action,
                RegistryAction::from_wire,
            )
        } else {
            None
        },
        value_name: text(&p.value_name, registry),
        value_type: if registry {
            e.read(
                &format!("{at}.params.valueType"),
                &p.value_type,
                RegistryValueType::from_wire,
            )
        } else {
            None
        },
        value_data: p.value_data.get().filter(|_| registry).cloned(),
        software_name: text(&p.software_name, uninstall),
        uninstall_command: text(&p.uninstall_command, uninstall),
    });
    let has = |f: fn(&ActionParamsSpec) -> bool| params.as_ref().is_some_and(f);
    if registry && !has(|p| p.registry_key.is_some() && p.registry_action.is_some()) {
        return Err(
            "is a Change Registry Key action without a readable params.registryKey and params.registryAction"
                .to_string(),
        );
    }
    if uninstall && !has(|p| p.software_name.is_some()) {
        return Err("is an Uninstall Software action without params.softwareName".to_string());
    }
    Ok(ActionSpec {
        action: kind,
        params,
        // Scripts cannot be read back: left unmanaged (the job keeps what it has).
        script: None,
        script_from: None,
        script_type: e.read(
            &format!("{at}.scriptType"),
            &a.script_type,
            ScriptType::from_wire,
        ),
        default_script_type: a
            .default_script_type
            .get()
            .filter(|s| !s.is_empty())
            .cloned(),
        detection_script: None,
        detection_script_from: None,
        detection_script_type: e.read(
            &format!("{at}.detectionScriptType"),
            &a.detection_script_type,
            ScriptType::from_wire,
        ),
    })
}

fn chained_rules(live: &JobBody) -> Option<Vec<ChainedJobRuleSpec>> {
    let rules: Vec<&qualys::ChainedJobRule> = match live.chained_job_rule.get() {
        Some(top) => top.iter().collect(),
        None => live
            .linked_to_job
            .get()
            .into_iter()
            .flatten()
            .flat_map(|p| p.chained_job_rule.get().into_iter().flatten())
            .collect(),
    };
    if rules.is_empty() {
        return None;
    }
    Some(
        rules
            .into_iter()
            .map(|r| ChainedJobRuleSpec {
                field: r.field.get().and_then(|f| ChainedRuleField::from_wire(f)),
                action_refs: None,
                action_ids: r.action_ids.get().cloned(),
                threshold: r
                    .threshold
                    .get()
                    .and_then(LooseInt::as_i64)
                    .and_then(|t| i32::try_from(t).ok())
                    .unwrap_or(100),
                condition: r
                    .condition
                    .get()
                    .and_then(|c| ChainedRuleCondition::from_wire(c)),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(platform: &str, pre: serde_json::Value) -> JobBody {
        serde_json::from_value(json!({
            "id": "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b", "name": "j", "platform": platform,
            "scheduleType": "On-demand",
            "preDeployActions": pre,
            "postDeployActions": [{"action": "Run Script", "scriptType": "sh",
                                   "params": {"actionItem": "post"}}]
        }))
        .unwrap()
    }

    fn registry(params: serde_json::Value) -> serde_json::Value {
        json!({"action": "Change Registry Key", "params": params})
    }

    /// The pre-deploy list is left unmanaged with exactly this note; the post list stays managed.
    fn left_unmanaged(live: &JobBody, why: &str) {
        let (spec, notes) = spec_from_live(live).unwrap();
        assert_eq!(spec.pre_deploy_actions, None);
        assert_eq!(spec.post_deploy_actions.map(|l| l.len()), Some(1));
        assert_eq!(
            notes,
            [format!(
                "preDeployActions[0] {why}; preDeployActions left unmanaged (the job keeps its actions as they are)"
            )]
        );
    }

    #[test]
    fn a_registry_action_in_another_spelling_is_left_unmanaged() {
        left_unmanaged(
            &job(
                "Windows",
                json!([registry(json!({"regKey": "HKLM\\X", "op": 1}))]),
            ),
            "is a Change Registry Key action without a readable params.registryKey and params.registryAction",
        );
        // A registry action with a value type this version does not know: its list too.
        left_unmanaged(
            &job(
                "Windows",
                json!([registry(
                    json!({"registryKey": "HKLM\\X", "registryAction": "Rename"})
                )]),
            ),
            "is a Change Registry Key action without a readable params.registryKey and params.registryAction",
        );
    }

    #[test]
    fn actions_that_a_valid_spec_cannot_hold_leave_their_list_unmanaged() {
        left_unmanaged(
            &job(
                "Linux",
                json!([registry(
                    json!({"registryKey": "HKLM\\X", "registryAction": "Delete"})
                )]),
            ),
            "is a Change Registry Key action of a Linux job",
        );
        left_unmanaged(
            &job(
                "Windows",
                json!([{"action": "Uninstall Software", "params": {"uninstallCommand": "x"}}]),
            ),
            "is an Uninstall Software action without params.softwareName",
        );
        left_unmanaged(
            &job(
                "Windows",
                json!([{"action": "Install Software", "params": {"timeout": true}}]),
            ),
            "has a \"params\" member this version cannot read",
        );
        left_unmanaged(
            &job("Windows", json!([{"action": 3}])),
            "has no readable action kind",
        );
    }

    #[test]
    fn the_new_kinds_import_with_only_their_own_fields() {
        let live = job(
            "Windows",
            json!([
                registry(json!({"registryKey": "HKLM\\X", "registryAction": "Create",
                                "valueName": "v", "valueType": "REG_SZ", "valueData": "",
                                "softwareName": "stray"})),
                {"action": "Uninstall Software",
                 "params": {"softwareName": "Acme", "valueName": "stray"}}
            ]),
        );
        let (spec, notes) = spec_from_live(&live).unwrap();
        assert_eq!(notes, Vec::<String>::new());
        let pre = spec.pre_deploy_actions.unwrap();
        assert_eq!(
            serde_json::to_value(&pre).unwrap(),
            json!([
                {"action": "Change Registry Key",
                 "params": {"registryKey": "HKLM\\X", "registryAction": "Create",
                            "valueName": "v", "valueType": "REG_SZ", "valueData": ""}},
                {"action": "Uninstall Software", "params": {"softwareName": "Acme"}}
            ])
        );
    }
}
