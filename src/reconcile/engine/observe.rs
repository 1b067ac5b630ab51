//! The read-only half of a reconcile: render the spec, find the live job (by recorded id,
//! `spec.jobId`, a pending create, or name) and diff the two. Writes nothing to Qualys.

use super::outcome::{Outcome, api_failure};
use super::{Context, Mode};
use crate::api::{
    DeploymentJobSpec, JobState, PendingCreate, Reason, RecreatePolicy, ScheduleType,
};
use crate::qualys::{self, Error as QError, JobBody};
use crate::reconcile::desired::{self, Desired};
use crate::reconcile::diff::FieldDiff;
use crate::reconcile::directory::Listed;
use crate::reconcile::gateway::GatewayRead;
use crate::reconcile::render::{RenderError, RenderInputs, Rendered, render};
use crate::reconcile::state::EngineState;
use jiff::Timestamp;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How far a job's creation date may precede the recorded start of a create and still be that
/// create (clocks of the operator and Qualys differ).
const CLOCK_SKEW: Duration = Duration::from_secs(300);

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
pub(super) enum StateAction {
    Set(qualys::WireState),
    /// A difference the operator deliberately leaves alone, with why.
    Leave {
        to: qualys::WireState,
        why: String,
    },
}

/// The read-only half of a reconcile: what exists and how it differs.
#[derive(Debug)]
pub struct Observation {
    /// The wire form of the desired body: always there when the job is to be created or
    /// updated (a cached desired body has none otherwise).
    pub rendered: Option<Rendered>,
    pub(super) desired: Arc<Desired>,
    pub desired_digest: String,
    pub live: Option<JobBody>,
    pub identified_by: IdentifiedBy,
    /// Body fields that differ (never `status`).
    pub changes: Vec<FieldDiff>,
    pub(super) state_action: Option<StateAction>,
    /// True when this pass binds an existing job to the resource for the first time.
    pub(super) adopting: bool,
    /// The job vanished and recreatePolicy allows creating it again.
    pub(super) recreating: bool,
}

impl Observation {
    /// The status change, as a field change (`status`), when one is due.
    pub fn status_change(&self) -> Option<FieldDiff> {
        match &self.state_action {
            Some(StateAction::Set(s)) => Some(self.status_field_change(*s)),
            _ => None,
        }
    }

    /// The live state differs from the spec's, whether or not the operator would change it,
    /// with why it would not (Report mode shows both).
    pub fn status_difference(&self) -> Option<(FieldDiff, Option<&str>)> {
        match &self.state_action {
            Some(StateAction::Set(s)) => Some((self.status_field_change(*s), None)),
            Some(StateAction::Leave { to, why }) => {
                Some((self.status_field_change(*to), Some(why.as_str())))
            }
            None => None,
        }
    }

    fn status_field_change(&self, to: qualys::WireState) -> FieldDiff {
        FieldDiff {
            path: "status".into(),
            from: self
                .live
                .as_ref()
                .and_then(|l| l.status.get().cloned())
                .map(Value::String)
                .unwrap_or(Value::Null),
            to: Value::String(to.as_str().into()),
        }
    }

    /// Every change a plan would make (body fields, then status).
    pub fn all_changes(&self) -> Vec<FieldDiff> {
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
pub async fn observe<Q: GatewayRead + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &EngineState,
    ctx: &Context<'_, Q>,
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

    let parent_actions = parent_post_actions(spec, ctx).await?;
    let inputs = RenderInputs {
        linked_job_id: ctx.linked_job_id,
        parent_post_actions: &parent_actions,
        scripts: ctx.scripts,
    };
    let (desired, rendered) =
        desired::desired(job, &inputs, ctx.desired_cache).map_err(render_failure)?;

    let (live, identified_by, adopting, recreating) = find_live(spec, state, ctx).await?;

    let mut obs = Observation {
        desired_digest: desired.digest.clone(),
        rendered,
        desired,
        live,
        identified_by,
        changes: Vec::new(),
        state_action: None,
        adopting,
        recreating,
    };
    if let Some(live) = &obs.live {
        obs.changes = obs
            .desired
            .value
            .diff(live, &state.digests.scripts)
            .into_iter()
            .filter(|c| c.path != "status")
            .collect();
        obs.state_action = state_action(spec, state, ctx, live, adopting);
    }
    // A cached desired body has no wire form; a reconcile that writes one renders it again.
    if obs.rendered.is_none() && (obs.live.is_none() || !obs.changes.is_empty()) {
        obs.rendered = Some(render(job, &inputs).map_err(render_failure)?);
    }
    Ok(obs)
}

/// A write found no wire form of the desired body (observe renders it whenever one is due).
pub(super) fn not_rendered() -> Outcome {
    Outcome::new(
        Reason::InvalidSpec,
        "internal error: the desired body was not rendered before a write",
    )
}

fn render_failure(e: RenderError) -> Outcome {
    match e {
        RenderError::WaitingForLinkedJob { .. } => {
            Outcome::new(Reason::WaitingForLinkedJob, e.to_string())
        }
        other => Outcome::new(Reason::InvalidSpec, other.to_string()),
    }
}

/// The `linkedJobRef` parent's post-deploy actions as (actionItem, actionId), read from its
/// live job when `actionRefs` name them; empty otherwise.
async fn parent_post_actions<Q: GatewayRead + ?Sized>(
    spec: &DeploymentJobSpec,
    ctx: &Context<'_, Q>,
) -> Result<Vec<(String, String)>, Outcome> {
    let job = &spec.job;
    let uses_refs = job
        .chained_job_rule
        .iter()
        .flatten()
        .any(|r| r.action_refs.is_some());
    if !uses_refs {
        return Ok(Vec::new());
    }
    let parent_id = ctx
        .linked_job_id
        .or(job.linked_job_id.as_deref())
        .unwrap_or_default();
    let parent = ctx.client.get_job(parent_id).await.map_err(|e| match e {
        QError::NotFound { .. } => Outcome::new(
            Reason::InvalidSpec,
            format!("spec.job.linkedJobRef: the parent job {parent_id} does not exist in Qualys"),
        ),
        other => api_failure(&other, "reading the linked parent job"),
    })?;
    Ok(parent.post_action_ids())
}

pub(super) type Found = (Option<JobBody>, IdentifiedBy, bool, bool);

/// The live job, in order of proof: `spec.jobId`, the recorded id, a pending create's job,
/// then (by mode) a job with the same name.
pub(super) async fn find_live<Q: GatewayRead + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &EngineState,
    ctx: &Context<'_, Q>,
) -> Result<Found, Outcome> {
    if let Some(id) = &spec.job_id {
        return by_job_id(id, state, ctx).await;
    }
    if let Some(id) = &state.job_id {
        return by_recorded_id(spec, id, ctx).await;
    }
    if let Some(pending) = &state.pending_create {
        return by_pending_create(spec, pending, ctx).await;
    }
    by_name(spec, ctx).await
}

/// JobClaimed, when another resource manages job `id`.
fn claimed<Q: ?Sized>(ctx: &Context<'_, Q>, id: &str, why: &str) -> Option<Outcome> {
    let other = ctx.claims.claimed_by(id)?;
    Some(Outcome::new(
        Reason::JobClaimed,
        format!("job {id} is already managed by DeploymentJob {other}{why}"),
    ))
}

async fn by_job_id<Q: GatewayRead + ?Sized>(
    id: &str,
    state: &EngineState,
    ctx: &Context<'_, Q>,
) -> Result<Found, Outcome> {
    if let Some(o) = claimed(ctx, id, "; two resources must not manage one job") {
        return Err(o);
    }
    let adopting = state.job_id.as_deref() != Some(id);
    match ctx.client.get_job(id).await {
        Ok(live) => Ok((Some(live), IdentifiedBy::JobId, adopting, false)),
        Err(QError::NotFound { .. }) => Err(Outcome::new(
            Reason::JobMissing,
            format!(
                "spec.jobId: job {id} does not exist in Qualys; correct spec.jobId, or remove it to create a new job"
            ),
        )),
        Err(e) => Err(api_failure(&e, "reading the job")),
    }
}

async fn by_recorded_id<Q: GatewayRead + ?Sized>(
    spec: &DeploymentJobSpec,
    id: &str,
    ctx: &Context<'_, Q>,
) -> Result<Found, Outcome> {
    if let Some(o) = claimed(ctx, id, "") {
        return Err(o);
    }
    match ctx.client.get_job(id).await {
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
    }
}

/// Read a job found in a listing; one that vanished since is no job.
async fn read_found<Q: GatewayRead + ?Sized>(
    ctx: &Context<'_, Q>,
    id: &str,
    by: IdentifiedBy,
    doing: &str,
) -> Result<Found, Outcome> {
    match ctx.client.get_job(id).await {
        Ok(live) => Ok((Some(live), by, false, false)),
        Err(QError::NotFound { .. }) => Ok((None, IdentifiedBy::Nothing, false, false)),
        Err(e) => Err(api_failure(&e, doing)),
    }
}

/// The create may have reached Qualys: find what it made, with a fresh listing — made by this
/// connection's user since the create started, and claimed by no other resource.
async fn by_pending_create<Q: GatewayRead + ?Sized>(
    spec: &DeploymentJobSpec,
    pending: &PendingCreate,
    ctx: &Context<'_, Q>,
) -> Result<Found, Outcome> {
    let (name, platform) = (&spec.job.name, spec.job.platform.as_str());
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
    let username = ctx.client.username().to_string();
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
    match mine.as_slice() {
        [] => Ok((None, IdentifiedBy::Nothing, false, false)),
        [one] => {
            read_found(
                ctx,
                &one.id,
                IdentifiedBy::PendingCreate,
                "reading the recovered job",
            )
            .await
        }
        many => Err(name_conflict(
            name,
            platform,
            many,
            "were created since the interrupted create",
        )),
    }
}

/// No id: a job with the same name is the CLI's (its contract) and a conflict for the
/// controller.
async fn by_name<Q: GatewayRead + ?Sized>(
    spec: &DeploymentJobSpec,
    ctx: &Context<'_, Q>,
) -> Result<Found, Outcome> {
    let (name, platform) = (&spec.job.name, spec.job.platform.as_str());
    let existing = ctx
        .directory
        .named(ctx.client, platform, name, ctx.listing_max_age)
        .await
        .map_err(|e| api_failure(&e, "looking up jobs by name"))?;
    let existing: Vec<&Listed> = existing.iter().collect();
    match (ctx.mode, existing.as_slice()) {
        (_, []) => Ok((None, IdentifiedBy::Nothing, false, false)),
        (Mode::Cli, [one]) => {
            read_found(
                ctx,
                &one.id,
                IdentifiedBy::Name,
                "reading the job found by name",
            )
            .await
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

pub(super) fn is_recurring(spec: &DeploymentJobSpec, live: &JobBody) -> bool {
    let schedule = live
        .schedule_type
        .get()
        .and_then(|s| ScheduleType::from_wire(s))
        .unwrap_or(spec.job.schedule_type);
    !matches!(schedule, ScheduleType::OnDemand | ScheduleType::Once)
}

fn state_action<Q: GatewayRead + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &EngineState,
    ctx: &Context<'_, Q>,
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
        JobState::Enabled if adopted_now => Some(StateAction::Leave {
            to: qualys::WireState::Enabled,
            why: "the job is Disabled in Qualys; the operator never enables a job it adopts — change the spec to enable it".into(),
        }),
        JobState::Enabled if !is_recurring(spec, live) && state.last_enabled_time.is_some() => {
            Some(StateAction::Leave {
                to: qualys::WireState::Enabled,
                why: "this non-recurring job was enabled once already; enabling it again would run it again, so the operator leaves it Disabled".into(),
            })
        }
        JobState::Enabled => Some(StateAction::Set(qualys::WireState::Enabled)),
        JobState::Disabled => Some(StateAction::Set(qualys::WireState::Disabled)),
    }
}
