//! The engine: observe the live job, decide, and act — create (with pending-create recovery),
//! adopt, update, enable/disable, delete or orphan — against a Qualys client, remembering what
//! it must through a [`StateStore`]. It knows nothing of Kubernetes: the controller and the CLI
//! both drive it, and every outcome maps to one [`Reason`].

use super::diff::{FieldChange, diff};
use super::digest::value_digest;
use super::directory::Directory;
use super::directory::Listed;
use super::normalise::{normalise_desired, normalise_live_managed};
use super::render::{RenderError, RenderInputs, Rendered, ScriptResolver, render};
use super::state::{EngineState, StateStore};
use super::update::{create_body, update_body};
use crate::api::{
    DeletionPolicy, DeploymentJobSpec, DriftPolicy, JobState, LiveJobSummary, PendingCreate,
    Reason, RecreatePolicy, ScheduleType,
};
use crate::qualys::{self, Client, Error as QError, JobBody};
use jiff::Timestamp;
use serde_json::Value;
use std::time::Duration;

/// How far a job's creation date may precede the recorded start of a create and still be that
/// create (clocks of the operator and Qualys differ).
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Who drives the engine; it decides how a job without a recorded id is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The controller: a job with the same name that is not this resource's is a NameConflict.
    Controller,
    /// The CLI, which has no status: an existing job with exactly this name on this platform
    /// is the one (its documented contract); two or more are a NameConflict.
    Cli,
}

/// Which other resource already manages a job, if any (JobClaimed).
pub trait Claims: Sync {
    fn claimed_by(&self, job_id: &str) -> Option<String>;
}

/// No other resources (a single manifest).
pub struct NoClaims;

impl Claims for NoClaims {
    fn claimed_by(&self, _job_id: &str) -> Option<String> {
        None
    }
}

/// Everything a reconcile reads besides the spec and the state.
pub struct Context<'a> {
    pub client: &'a Client,
    pub directory: &'a Directory,
    pub claims: &'a dyn Claims,
    pub scripts: &'a (dyn ScriptResolver + Sync),
    /// The `linkedJobRef` parent's job id, when it has one.
    pub linked_job_id: Option<&'a str>,
    pub mode: Mode,
    /// `metadata.generation` of the resource (None for the CLI).
    pub generation: Option<i64>,
    /// How old a job listing may be for a name lookup before a create.
    pub listing_max_age: Duration,
}

/// Normal or Warning, as Kubernetes events are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something worth telling a person (a Kubernetes event in the controller, a line in the CLI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    /// Created, Adopted, Updated, DriftCorrected, DriftDetected, Enabled, Disabled, Deleted,
    /// Orphaned, or a failure reason.
    pub reason: &'static str,
    pub note: String,
}

impl Event {
    fn normal(reason: &'static str, note: impl Into<String>) -> Self {
        Event {
            type_: EventType::Normal,
            reason,
            note: note.into(),
        }
    }
    fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Event {
            type_: EventType::Warning,
            reason,
            note: note.into(),
        }
    }
}

/// What a reconcile did and found.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub reason: Reason,
    pub message: String,
    pub events: Vec<Event>,
    /// Report mode: the differences (scripts as digests).
    pub pending_changes: Vec<FieldChange>,
    /// Fields found drifted from a spec that had not changed (corrected or reported).
    pub drift_fields: Vec<String>,
    pub drift_corrected: bool,
    pub live: Option<LiveJobSummary>,
    /// From a 429: when to try again.
    pub retry_after: Option<Duration>,
    /// Whether anything was written to Qualys.
    pub wrote: bool,
    /// Deletion only: the Qualys side is done and the finalizer may go.
    pub finished: bool,
    /// The live job's last-change date (epoch ms, as the summary list's `updated` reports it),
    /// so a poller does not mistake the operator's own write for a change.
    pub live_updated_ms: Option<i64>,
}

impl Outcome {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Outcome {
            reason,
            message: message.into(),
            events: Vec::new(),
            pending_changes: Vec::new(),
            drift_fields: Vec::new(),
            drift_corrected: false,
            live: None,
            retry_after: None,
            wrote: false,
            finished: false,
            live_updated_ms: None,
        }
    }

    /// Deletion done without touching Qualys (deletionPolicy Orphan, force-orphan, or no job).
    pub fn finished_orphan(job_id: Option<String>, force_orphan: bool) -> Self {
        let what = job_id
            .map(|id| format!("job {id}"))
            .unwrap_or_else(|| "no job".into());
        let why = if force_orphan {
            "pm.qualys.io/force-orphan"
        } else {
            "deletionPolicy Orphan"
        };
        let mut o = Outcome::new(Reason::Deleting, format!("left {what} in Qualys ({why})"));
        o.finished = true;
        o.events.push(Event::normal("Orphaned", o.message.clone()));
        o
    }

    fn event(mut self, event: Event) -> Self {
        self.events.push(event);
        self
    }
}

/// How the live job was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifiedBy {
    /// The job id recorded in the state (status).
    State,
    /// `spec.jobId`.
    JobId,
    /// Exact name within the platform (the CLI's contract).
    Name,
    /// Pending-create recovery: the job a create that lost its answer made.
    PendingCreate,
    /// No job exists yet.
    Nothing,
}

impl IdentifiedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifiedBy::State => "state",
            IdentifiedBy::JobId => "jobId",
            IdentifiedBy::Name => "name",
            IdentifiedBy::PendingCreate => "pendingCreate",
            IdentifiedBy::Nothing => "none",
        }
    }
}

/// What should happen to the job's Enabled/Disabled state.
#[derive(Clone, Debug, PartialEq)]
enum StateAction {
    Set(qualys::JobState),
    /// A difference the operator deliberately leaves alone, with why.
    Leave(String),
}

/// The read-only half of a reconcile: what exists and how it differs.
#[derive(Debug)]
pub struct Observation {
    pub rendered: Rendered,
    desired: Value,
    pub desired_digest: String,
    pub live: Option<JobBody>,
    pub identified_by: IdentifiedBy,
    /// Body fields that differ (never `status`).
    pub changes: Vec<FieldChange>,
    state_action: Option<StateAction>,
    /// True when this pass binds an existing job to the resource for the first time.
    adopting: bool,
    /// The job vanished and recreatePolicy allows creating it again.
    recreating: bool,
}

impl Observation {
    /// The status change, as a field change (`status`), when one is due.
    pub fn status_change(&self) -> Option<FieldChange> {
        match &self.state_action {
            Some(StateAction::Set(s)) => Some(FieldChange {
                path: "status".into(),
                from: self
                    .live
                    .as_ref()
                    .and_then(|l| l.status.get().cloned())
                    .map(Value::String)
                    .unwrap_or(Value::Null),
                to: Value::String(s.as_str().into()),
            }),
            _ => None,
        }
    }

    /// Every change a plan would make (body fields, then status).
    pub fn all_changes(&self) -> Vec<FieldChange> {
        let mut all = self.changes.clone();
        all.extend(self.status_change());
        all
    }

    pub fn job_id(&self) -> Option<&str> {
        self.live.as_ref().and_then(JobBody::job_id)
    }
}

/// Observe without writing anything to Qualys. `Err` carries the outcome that stopped it
/// (invalid spec, waiting for a parent, a conflict, an API error).
pub async fn observe(
    spec: &DeploymentJobSpec,
    state: &EngineState,
    ctx: &Context<'_>,
) -> Result<Observation, Outcome> {
    let job = &spec.job;
    if let (Some(parent), None) = (&job.linked_job_ref, ctx.linked_job_id) {
        return Err(Outcome::new(
            Reason::WaitingForLinkedJob,
            format!(
                "waiting for DeploymentJob {:?} to have a Qualys job id",
                parent.name
            ),
        ));
    }

    // actionRefs name the parent's post-deploy actions: read them from the parent's live job.
    let uses_refs = job
        .chained_job_rule
        .iter()
        .flatten()
        .any(|r| r.action_refs.is_some());
    let mut parent_actions = Vec::new();
    if uses_refs {
        let parent_id = ctx
            .linked_job_id
            .or(job.linked_job_id.as_deref())
            .unwrap_or_default();
        let parent = ctx.client.get_job(parent_id).await.map_err(|e| match e {
            QError::NotFound { .. } => Outcome::new(
                Reason::InvalidSpec,
                format!(
                    "spec.job.linkedJobRef: the parent job {parent_id} does not exist in Qualys"
                ),
            ),
            other => api_failure(&other, "reading the linked parent job"),
        })?;
        for a in parent.post_deploy_actions.get().into_iter().flatten() {
            if let (Some(item), Some(id)) = (
                a.params.get().and_then(|p| p.action_item.get()),
                a.action_id.get(),
            ) {
                parent_actions.push((item.clone(), id.clone()));
            }
        }
    }

    let inputs = RenderInputs {
        linked_job_id: ctx.linked_job_id,
        parent_post_actions: &parent_actions,
        scripts: ctx.scripts,
    };
    let rendered = render(job, &inputs).map_err(|e| match e {
        RenderError::WaitingForLinkedJob { .. } => {
            Outcome::new(Reason::WaitingForLinkedJob, e.to_string())
        }
        other => Outcome::new(Reason::InvalidSpec, other.to_string()),
    })?;
    let desired = normalise_desired(&rendered);
    let desired_digest = value_digest(&desired);

    let (live, identified_by, adopting, recreating) = find_live(spec, state, ctx).await?;

    let mut obs = Observation {
        rendered,
        desired,
        desired_digest,
        live,
        identified_by,
        changes: Vec::new(),
        state_action: None,
        adopting,
        recreating,
    };
    if let Some(live) = &obs.live {
        let live_norm = normalise_live_managed(live, &state.digests.scripts, &obs.desired);
        obs.changes = diff(&obs.desired, &live_norm)
            .into_iter()
            .filter(|c| c.path != "status")
            .collect();
        obs.state_action = state_action(spec, state, ctx, live, adopting);
    }
    Ok(obs)
}

type Found = (Option<JobBody>, IdentifiedBy, bool, bool);

async fn find_live(
    spec: &DeploymentJobSpec,
    state: &EngineState,
    ctx: &Context<'_>,
) -> Result<Found, Outcome> {
    let name = &spec.job.name;
    let platform = spec.job.platform.as_str();

    if let Some(id) = &spec.job_id {
        if let Some(other) = ctx.claims.claimed_by(id) {
            return Err(Outcome::new(
                Reason::JobClaimed,
                format!(
                    "job {id} is already managed by DeploymentJob {other}; two resources must not manage one job"
                ),
            ));
        }
        let adopting = state.job_id.as_deref() != Some(id.as_str());
        return match ctx.client.get_job(id).await {
            Ok(live) => Ok((Some(live), IdentifiedBy::JobId, adopting, false)),
            Err(QError::NotFound { .. }) => Err(Outcome::new(
                Reason::JobMissing,
                format!(
                    "spec.jobId: job {id} does not exist in Qualys; correct spec.jobId, or remove it to create a new job"
                ),
            )),
            Err(e) => Err(api_failure(&e, "reading the job")),
        };
    }

    if let Some(id) = &state.job_id {
        if let Some(other) = ctx.claims.claimed_by(id) {
            return Err(Outcome::new(
                Reason::JobClaimed,
                format!("job {id} is already managed by DeploymentJob {other}"),
            ));
        }
        return match ctx.client.get_job(id).await {
            Ok(live) => Ok((Some(live), IdentifiedBy::State, false, false)),
            Err(QError::NotFound { .. }) => match spec.effective_recreate_policy() {
                RecreatePolicy::Recreate => Ok((None, IdentifiedBy::Nothing, false, true)),
                RecreatePolicy::Never => Err(Outcome::new(
                    Reason::JobMissing,
                    format!(
                        "job {id} no longer exists in Qualys (deleted outside the operator); it is not re-created \
                         automatically because a re-created job re-patches and may reboot machines: set \
                         spec.recreatePolicy: Recreate to create it again, or delete this resource"
                    ),
                )),
            },
            Err(e) => Err(api_failure(&e, "reading the job")),
        };
    }

    if let Some(pending) = &state.pending_create {
        // The create may have reached Qualys: find what it made, with a fresh listing.
        let candidates = ctx
            .directory
            .named(ctx.client, platform, name, Duration::ZERO)
            .await
            .map_err(|e| {
                api_failure(
                    &e,
                    "looking for the job an interrupted create may have made",
                )
            })?;
        let since = pending_start(pending).map(|t| t - CLOCK_SKEW);
        let username = ctx.client.identity().username().to_string();
        let mine: Vec<&Listed> = candidates
            .iter()
            .filter(|s| s.created_by.as_ref().is_none_or(|u| *u == username))
            .filter(|s| {
                let at = s
                    .created_ms
                    .and_then(|ms| Timestamp::from_millisecond(ms).ok());
                match (since, at) {
                    (Some(since), Some(at)) => at >= since,
                    _ => true,
                }
            })
            .filter(|s| ctx.claims.claimed_by(&s.id).is_none())
            .collect();
        return match mine.as_slice() {
            [] => Ok((None, IdentifiedBy::Nothing, false, false)),
            [one] => {
                let id = one.id.clone();
                match ctx.client.get_job(&id).await {
                    Ok(live) => Ok((Some(live), IdentifiedBy::PendingCreate, false, false)),
                    Err(QError::NotFound { .. }) => Ok((None, IdentifiedBy::Nothing, false, false)),
                    Err(e) => Err(api_failure(&e, "reading the recovered job")),
                }
            }
            many => Err(name_conflict(
                name,
                platform,
                many,
                "were created since the interrupted create",
            )),
        };
    }

    let existing = ctx
        .directory
        .named(ctx.client, platform, name, ctx.listing_max_age)
        .await
        .map_err(|e| api_failure(&e, "looking up jobs by name"))?;
    let existing: Vec<&Listed> = existing.iter().collect();
    match (ctx.mode, existing.as_slice()) {
        (_, []) => Ok((None, IdentifiedBy::Nothing, false, false)),
        (Mode::Cli, [one]) => {
            let id = one.id.clone();
            match ctx.client.get_job(&id).await {
                Ok(live) => Ok((Some(live), IdentifiedBy::Name, false, false)),
                Err(QError::NotFound { .. }) => Ok((None, IdentifiedBy::Nothing, false, false)),
                Err(e) => Err(api_failure(&e, "reading the job found by name")),
            }
        }
        (Mode::Cli, many) => Err(name_conflict(name, platform, many, "exist")),
        (Mode::Controller, found) => Err(name_conflict(
            name,
            platform,
            found,
            "exist and are not managed by this resource",
        )),
    }
}

fn name_conflict(name: &str, platform: &str, found: &[&Listed], how: &str) -> Outcome {
    let ids: Vec<&str> = found.iter().map(|s| s.id.as_str()).collect();
    let hint = match ids.as_slice() {
        [one] => format!("set spec.jobId: {one} to adopt it, or choose another name"),
        _ => "set spec.jobId to the one to adopt, or choose another name".to_string(),
    };
    Outcome::new(
        Reason::NameConflict,
        format!(
            "{} {platform} job(s) named {name:?} {how} ({}); {hint}",
            ids.len(),
            ids.join(", ")
        ),
    )
}

fn pending_start(p: &PendingCreate) -> Option<Timestamp> {
    p.started_at.parse().ok()
}

fn is_recurring(spec: &DeploymentJobSpec, live: &JobBody) -> bool {
    let schedule = live
        .schedule_type
        .get()
        .and_then(|s| ScheduleType::from_wire(s))
        .unwrap_or(spec.job.schedule_type);
    !matches!(schedule, ScheduleType::OnDemand | ScheduleType::Once)
}

fn state_action(
    spec: &DeploymentJobSpec,
    state: &EngineState,
    ctx: &Context<'_>,
    live: &JobBody,
    adopting: bool,
) -> Option<StateAction> {
    let desired = spec.job.status?;
    // Server states such as Prepared are not drift.
    let current = live.status.get().and_then(|s| JobState::from_wire(s))?;
    if desired == current {
        return None;
    }
    let adopted_now = adopting
        || (state.adopted_generation.is_some() && state.adopted_generation == ctx.generation);
    match desired {
        JobState::Enabled if adopted_now => Some(StateAction::Leave(
            "the job is Disabled in Qualys; the operator never enables a job it adopts — change the spec to enable it".into(),
        )),
        JobState::Enabled if !is_recurring(spec, live) && state.last_enabled_time.is_some() => {
            Some(StateAction::Leave(
                "this non-recurring job was enabled once already; enabling it again would run it again, so the operator leaves it Disabled".into(),
            ))
        }
        JobState::Enabled => Some(StateAction::Set(qualys::JobState::Enabled)),
        JobState::Disabled => Some(StateAction::Set(qualys::JobState::Disabled)),
    }
}

/// Reconcile toward the spec: create, adopt, update, enable/disable, or (Report mode) only
/// describe the differences.
pub async fn apply<S: StateStore>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_>,
) -> Outcome {
    let obs = match observe(spec, state, ctx).await {
        Ok(obs) => obs,
        Err(outcome) => return outcome,
    };
    let report = spec.effective_drift_policy() == DriftPolicy::Report;
    match obs.live.clone() {
        None if report => {
            let mut o = Outcome::new(
                Reason::DriftDetected,
                "the job does not exist in Qualys; driftPolicy Report creates nothing",
            );
            o.pending_changes = vec![FieldChange {
                path: String::new(),
                from: Value::Null,
                to: Value::String("(create job)".into()),
            }];
            o
        }
        None => create(spec, state, store, ctx, obs).await,
        Some(live) => converge(spec, state, store, ctx, obs, live, report).await,
    }
}

async fn create<S: StateStore>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_>,
    obs: Observation,
) -> Outcome {
    let now = Timestamp::now();
    state.job_id = None;
    state.pending_create = Some(PendingCreate {
        name: spec.job.name.clone(),
        platform: spec.job.platform.as_str().to_string(),
        body_digest: obs.desired_digest.clone(),
        started_at: now.to_string(),
    });
    // Recorded and confirmed before the POST: a crash after it is recovered, not repeated.
    if let Err(e) = store.save(state).await {
        return Outcome::new(
            Reason::GatewayUnavailable,
            format!("not creating the job: {e}"),
        );
    }
    let body = create_body(&obs.rendered);
    let created = match ctx.client.create_job(&body).await {
        Ok(job) => job,
        Err(e @ QError::OutcomeUnknown { .. }) => {
            let mut o = Outcome::new(
                Reason::GatewayUnavailable,
                format!("{e}; the next attempt looks the job up before creating anything"),
            );
            o.events
                .push(Event::warning("CreateOutcomeUnknown", o.message.clone()));
            return o;
        }
        Err(e) => {
            // Refused outright: nothing was created, so nothing needs recovering.
            state.pending_create = None;
            let _ = store.save(state).await;
            return api_failure(&e, "creating the job");
        }
    };
    let Some(id) = created.job_id().map(str::to_string) else {
        return Outcome::new(
            Reason::GatewayUnavailable,
            "the gateway created a job but did not say its id",
        );
    };
    state.job_id = Some(id.clone());
    state.pending_create = None;
    state.digests.body = Some(obs.desired_digest.clone());
    state.digests.scripts = obs.rendered.scripts.clone();
    state.last_write_time = Some(Timestamp::now());
    state.adopted_generation = None;
    let saved = store.save(state).await;
    if let Some(listed) = listed_of(&created) {
        ctx.directory
            .remember(spec.job.platform.as_str(), &spec.job.name, listed);
    }

    let verb = if obs.recreating {
        "re-created"
    } else {
        "created"
    };
    let mut outcome = Outcome::new(Reason::Created, format!("{verb} job {id}"));
    outcome.wrote = true;
    outcome
        .events
        .push(Event::normal("Created", format!("{verb} Qualys job {id}")));
    if let Err(e) = saved {
        outcome
            .events
            .push(Event::warning("StateNotSaved", e.to_string()));
    }
    let mut live = created;
    if spec.job.status == Some(JobState::Enabled) {
        match set_state(ctx, &id, qualys::JobState::Enabled).await {
            Ok(()) => {
                state.last_enabled_time = Some(Timestamp::now());
                live.status = qualys::Field::Value(qualys::values::ENABLED.to_string());
                outcome
                    .events
                    .push(Event::normal("Enabled", format!("enabled job {id}")));
            }
            Err(e) => return with_live(api_failure(&e, "enabling the new job"), &live),
        }
    }
    with_live(outcome, &live)
}

async fn converge<S: StateStore>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_>,
    obs: Observation,
    live: JobBody,
    report: bool,
) -> Outcome {
    let id = live.job_id().unwrap_or_default().to_string();
    let newly_bound = state.job_id.as_deref() != Some(id.as_str());
    if newly_bound {
        state.job_id = Some(id.clone());
        state.pending_create = None;
        if obs.adopting {
            state.adopted_generation = ctx.generation;
            state.digests = Default::default();
        }
        if let Err(e) = store.save(state).await {
            return Outcome::new(
                Reason::GatewayUnavailable,
                format!("cannot record job {id}: {e}"),
            );
        }
    }
    // Drift: the live job changed while the spec stayed what was last written.
    let spec_unchanged = state.digests.body.as_deref() == Some(obs.desired_digest.as_str());
    let mut events = Vec::new();
    match obs.identified_by {
        IdentifiedBy::JobId if newly_bound => events.push(Event::normal(
            "Adopted",
            format!("adopted existing Qualys job {id} (spec.jobId)"),
        )),
        IdentifiedBy::PendingCreate => events.push(Event::normal(
            "Adopted",
            format!(
                "recovered job {id}, created before the operator lost the answer to its create"
            ),
        )),
        IdentifiedBy::Name if newly_bound => events.push(Event::normal(
            "Adopted",
            format!("found job {id} by its name"),
        )),
        _ => {}
    }

    if report {
        let mut all = obs.all_changes();
        if let Some(StateAction::Leave(_)) = &obs.state_action {
            all.extend(obs.status_change());
        }
        let mut o = if all.is_empty() {
            Outcome::new(Reason::UpToDate, format!("job {id} matches the spec"))
        } else {
            let fields: Vec<String> = all.iter().map(|c| c.path.clone()).collect();
            events.push(Event::warning(
                "DriftDetected",
                format!("job {id} differs from the spec in: {}", fields.join(", ")),
            ));
            let mut o = Outcome::new(
                Reason::DriftDetected,
                format!(
                    "job {id} differs from the spec in {} field(s): {}; driftPolicy Report changes nothing",
                    fields.len(),
                    fields.join(", ")
                ),
            );
            o.drift_fields = fields;
            o.pending_changes = all;
            o
        };
        o.events = events;
        return with_live(o, &live);
    }

    let mut current = live;
    let mut wrote = false;
    let mut updated_fields = Vec::new();
    if !obs.changes.is_empty() {
        let body = update_body(&current, &obs.rendered, &state.digests.scripts);
        let answer = match ctx.client.update_job(&id, &body).await {
            Ok(answer) => answer,
            Err(e) => {
                let mut o = api_failure(&e, "updating the job");
                o.events.splice(0..0, events);
                return with_live(o, &current);
            }
        };
        wrote = true;
        // Scripts sent as content are now the stored ones.
        let mut recorded = state.digests.scripts.clone();
        recorded.extend(
            obs.rendered
                .scripts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        state.digests.scripts = recorded;
        state.digests.body = Some(obs.desired_digest.clone());
        state.last_write_time = Some(Timestamp::now());
        let after = diff(
            &obs.desired,
            &normalise_live_managed(&answer, &state.digests.scripts, &obs.desired),
        );
        let stuck: Vec<String> = after
            .iter()
            .filter(|c| c.path != "status")
            .map(|c| c.path.clone())
            .collect();
        current = answer;
        if !stuck.is_empty() {
            let msg = format!(
                "Qualys accepted the update of job {id} but did not apply: {}; the operator stopped re-sending it \
                 (no retry loop). Check the values against what Qualys allows, then change the spec or request a reconcile",
                stuck.join(", ")
            );
            let mut o = Outcome::new(Reason::NotConverging, msg.clone())
                .event(Event::warning("NotConverging", msg));
            o.events.splice(0..0, events);
            o.wrote = true;
            return with_live(o, &current);
        }
        updated_fields = obs.changes.iter().map(|c| c.path.clone()).collect();
    }

    let mut drift_fields = Vec::new();
    let mut drift_corrected = false;
    if !updated_fields.is_empty() {
        if spec_unchanged && !newly_bound {
            drift_corrected = true;
            drift_fields = updated_fields.clone();
            events.push(Event::normal(
                "DriftCorrected",
                format!(
                    "corrected drift of job {id} in: {}",
                    updated_fields.join(", ")
                ),
            ));
        } else {
            events.push(Event::normal(
                "Updated",
                format!("updated job {id}: {}", updated_fields.join(", ")),
            ));
        }
    } else {
        // Nothing was written, yet the live job matches: it matches this spec (a spec change
        // the job already had, or a first look at an adopted job), so remember it as written.
        state.digests.body = Some(obs.desired_digest.clone());
        state.digests.scripts.extend(obs.rendered.scripts.clone());
    }

    let mut note = None;
    match &obs.state_action {
        Some(StateAction::Set(target)) => match set_state(ctx, &id, *target).await {
            Ok(()) => {
                wrote = true;
                state.last_write_time = Some(Timestamp::now());
                if *target == qualys::JobState::Enabled {
                    state.last_enabled_time = Some(Timestamp::now());
                }
                current.status = qualys::Field::Value(target.as_str().to_string());
                events.push(Event::normal(
                    if *target == qualys::JobState::Enabled {
                        "Enabled"
                    } else {
                        "Disabled"
                    },
                    format!("set job {id} {}", target.as_str()),
                ));
            }
            Err(e) => {
                let mut o = if *target == qualys::JobState::Disabled
                    && !is_recurring(spec, &current)
                {
                    let msg = format!(
                        "job {id} is a non-recurring job that has been enabled; Qualys does not allow disabling it ({e}). \
                         Set spec.job.status: Enabled or remove the field"
                    );
                    Outcome::new(Reason::CannotDisable, msg.clone())
                        .event(Event::warning("CannotDisable", msg))
                } else {
                    api_failure(&e, "changing the job's state")
                };
                o.events.splice(0..0, events);
                o.wrote = wrote;
                return with_live(o, &current);
            }
        },
        Some(StateAction::Leave(why)) => note = Some(why.clone()),
        None => {}
    }

    let reason = match obs.identified_by {
        IdentifiedBy::JobId | IdentifiedBy::PendingCreate | IdentifiedBy::Name if newly_bound => {
            Reason::Adopted
        }
        _ if wrote => Reason::Updated,
        _ => Reason::UpToDate,
    };
    let mut message = match reason {
        Reason::Adopted => format!("adopted job {id}; it matches the spec"),
        Reason::Updated => format!("updated job {id}; it matches the spec"),
        _ => format!("job {id} matches the spec"),
    };
    if let Some(note) = note {
        message.push_str("; ");
        message.push_str(&note);
    }
    let mut o = Outcome::new(reason, message);
    o.events = events;
    o.wrote = wrote;
    o.drift_fields = drift_fields;
    o.drift_corrected = drift_corrected;
    with_live(o, &current)
}

async fn set_state(ctx: &Context<'_>, id: &str, target: qualys::JobState) -> Result<(), QError> {
    let items = ctx.client.set_status(&[id.to_string()], target).await?;
    match items.into_iter().find(|i| i.id == id) {
        Some(item) => item.result,
        None => Err(QError::ItemFailed {
            id: id.to_string(),
            message: "not in the gateway's answer".into(),
        }),
    }
}

/// Options of a deletion.
#[derive(Clone, Debug, Default)]
pub struct CleanupOptions {
    /// `pm.qualys.io/force-orphan`: release without touching Qualys.
    pub force_orphan: bool,
    /// Other resources that still link to this job (its children): a parent is not deleted
    /// in Qualys before them.
    pub children: Vec<String>,
}

/// The resource is being deleted: delete the Qualys job, or leave it (Orphan). `finished`
/// says the finalizer may go.
pub async fn cleanup<S: StateStore>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_>,
    options: &CleanupOptions,
) -> Outcome {
    let policy = if options.force_orphan {
        DeletionPolicy::Orphan
    } else {
        spec.effective_deletion_policy()
    };
    let known = state.job_id.clone().or_else(|| spec.job_id.clone());
    if policy == DeletionPolicy::Orphan {
        let what = known
            .map(|id| format!("job {id}"))
            .unwrap_or_else(|| "no job".into());
        let why = if options.force_orphan {
            "pm.qualys.io/force-orphan"
        } else {
            "deletionPolicy Orphan"
        };
        let mut o = Outcome::new(Reason::Deleting, format!("left {what} in Qualys ({why})"));
        o.finished = true;
        o.events.push(Event::normal("Orphaned", o.message.clone()));
        return o;
    }
    let id = match known {
        Some(id) => id,
        None if state.pending_create.is_some() => match find_live(spec, state, ctx).await {
            Ok((Some(live), ..)) => live.job_id().unwrap_or_default().to_string(),
            Ok((None, ..)) => return finished("no job was created; nothing to delete"),
            Err(o) => return o,
        },
        None => return finished("no job was created; nothing to delete"),
    };
    if !options.children.is_empty() {
        let msg = format!(
            "job {id} is still the linked parent of DeploymentJob(s) {}; it is deleted in Qualys once they are gone \
             (or set pm.qualys.io/force-orphan: \"true\" to leave it)",
            options.children.join(", ")
        );
        return Outcome::new(Reason::DeletionBlocked, msg);
    }
    let result = match ctx
        .client
        .delete_jobs_confirmed(std::slice::from_ref(&id))
        .await
    {
        Ok(items) => items
            .into_iter()
            .find(|i| i.id == id)
            .map(|i| i.result)
            .unwrap_or_else(|| {
                Err(QError::ItemFailed {
                    id: id.clone(),
                    message: "not in the gateway's answer".into(),
                })
            }),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(QError::ItemFailed { message, .. }) => {
            // A per-item failure may mean "already gone": confirm with a GET.
            match ctx.client.get_job(&id).await {
                Err(QError::NotFound { .. }) => {}
                Ok(_) => {
                    return Outcome::new(
                        Reason::DeletionBlocked,
                        format!("Qualys refused to delete job {id}: {message}; fix that in Qualys, or set pm.qualys.io/force-orphan: \"true\" to leave the job"),
                    )
                    .event(Event::warning("DeleteFailed", format!("Qualys refused to delete job {id}: {message}")));
                }
                Err(e) => return api_failure(&e, "confirming the deletion"),
            }
        }
        Err(e @ (QError::Unauthorized { .. } | QError::Forbidden { .. })) => {
            return Outcome::new(
                Reason::DeletionBlocked,
                format!(
                    "cannot delete job {id}: {e}; restore the credentials, or set pm.qualys.io/force-orphan: \"true\" (or deletionPolicy: Orphan) to leave the job"
                ),
            );
        }
        Err(e) => return api_failure(&e, "deleting the job"),
    }
    ctx.directory.forget(&id);
    state.job_id = None;
    state.pending_create = None;
    let _ = store.save(state).await;
    let mut o = Outcome::new(Reason::Deleting, format!("deleted job {id}"));
    o.finished = true;
    o.wrote = true;
    o.events
        .push(Event::normal("Deleted", format!("deleted Qualys job {id}")));
    o
}

fn finished(message: &str) -> Outcome {
    let mut o = Outcome::new(Reason::Deleting, message);
    o.finished = true;
    o
}

/// The outcome of a failed call: the reason from the error's kind, a message that names what
/// was being done.
pub fn api_failure(e: &QError, doing: &str) -> Outcome {
    let reason = reason_for(e);
    let mut o = Outcome::new(reason, format!("{doing}: {e}"));
    if let QError::RateLimited { retry_after } = e {
        o.retry_after = *retry_after;
    }
    if reason.is_stalled() {
        o.events
            .push(Event::warning(reason.as_str(), o.message.clone()));
    }
    o
}

/// The one mapping from a client error to a condition reason.
pub fn reason_for(e: &QError) -> Reason {
    match e {
        QError::Unauthorized { .. } => Reason::Unauthorized,
        QError::Forbidden { .. } => Reason::Forbidden,
        QError::Invalid { .. } | QError::Config { .. } => Reason::InvalidSpec,
        QError::NotFound { .. } => Reason::JobMissing,
        QError::RateLimited { .. } => Reason::RateLimited,
        _ => Reason::GatewayUnavailable,
    }
}

fn with_live(mut o: Outcome, live: &JobBody) -> Outcome {
    o.live = Some(live_summary(live));
    o.live_updated_ms = last_change_ms(live);
    o
}

/// The later of a job's creation and last update (what the summary list calls `updated`).
pub fn last_change_ms(job: &JobBody) -> Option<i64> {
    let date = |a: &qualys::Field<qualys::Audit>| {
        a.get().and_then(|a| a.date.get()).and_then(|d| d.as_i64())
    };
    date(&job.updated_by).max(date(&job.created_by))
}

/// The brief of a live job kept in status.
pub fn live_summary(live: &JobBody) -> LiveJobSummary {
    let text = |v: &qualys::Field<Value>| match v.get() {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let updated = live.updated_by.get();
    LiveJobSummary {
        state: live.status.get().cloned(),
        job_trigger_status: text(&live.job_trigger_status),
        completion_percent: text(&live.completion_percent),
        updated_by: updated
            .and_then(|u| u.user.get())
            .and_then(|u| u.name.get())
            .cloned(),
        updated_at: updated
            .and_then(|u| u.date.get())
            .and_then(|d| d.as_i64())
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string()),
    }
}

/// A job just created, for the directory.
fn listed_of(job: &JobBody) -> Option<Listed> {
    Some(Listed {
        id: job.id.get()?.clone(),
        created_by: job
            .created_by
            .get()
            .and_then(|a| a.user.get())
            .and_then(|u| u.name.get())
            .cloned(),
        created_ms: job
            .created_by
            .get()
            .and_then(|a| a.date.get())
            .and_then(|d| d.as_i64()),
    })
}
