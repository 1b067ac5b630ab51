//! Creating a job, with the pending-create record saved before the POST so a lost answer is
//! recovered, never repeated.

use super::Context;
use super::converge::set_state;
use super::observe::{Observation, not_rendered};
use super::outcome::{Notice, Outcome, api_failure, refused_outright, with_live};
use crate::api::{DeploymentJobSpec, JobState, PendingCreate, Reason};
use crate::qualys::{self, Error as QError, JobBody};
use crate::reconcile::directory::Listed;
use crate::reconcile::gateway::GatewayWrite;
use crate::reconcile::state::{EngineState, StateStore};
use crate::reconcile::update::create_body;
use jiff::Timestamp;

pub(super) async fn create<S: StateStore, Q: GatewayWrite + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_, Q>,
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
    let created = match post(state, store, ctx, &obs).await {
        Ok(job) => job,
        Err(o) => return o,
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
    state.digests.scripts = obs.desired.scripts.clone();
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
        .push(Notice::normal("Created", format!("{verb} Qualys job {id}")));
    if let Err(e) = saved {
        outcome
            .events
            .push(Notice::warning("StateNotSaved", e.to_string()));
    }
    enable_if_asked(spec, state, ctx, outcome, created, &id).await
}

/// The POST. A create whose outcome is unknown keeps its pending record (the next attempt looks
/// the job up first); one the gateway refused made nothing, so its record is cleared.
async fn post<S: StateStore, Q: GatewayWrite + ?Sized>(
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_, Q>,
    obs: &Observation,
) -> Result<JobBody, Outcome> {
    let body = create_body(obs.rendered.as_ref().ok_or_else(not_rendered)?);
    match ctx.client.create_job(&body).await {
        Ok(job) => Ok(job),
        Err(e @ QError::OutcomeUnknown { .. }) => {
            let mut o = Outcome::new(
                Reason::GatewayUnavailable,
                format!("{e}; the next attempt looks the job up before creating anything"),
            );
            o.events
                .push(Notice::warning("CreateOutcomeUnknown", o.message.clone()));
            Err(o)
        }
        Err(e) if refused_outright(&e) => {
            state.pending_create = None;
            let _ = store.save(state).await;
            let doing = if matches!(e, QError::Unexpected { status: 413, .. }) {
                "creating the job: the gateway refused the body as too large; make the job's scripts smaller"
            } else {
                "creating the job"
            };
            Err(api_failure(&e, doing))
        }
        Err(e) => Err(api_failure(&e, "creating the job")),
    }
}

/// A job is created Disabled; enable it when the spec says Enabled.
async fn enable_if_asked<Q: GatewayWrite + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    ctx: &Context<'_, Q>,
    mut outcome: Outcome,
    mut live: JobBody,
    id: &str,
) -> Outcome {
    if spec.job.status != Some(JobState::Enabled) {
        return with_live(outcome, &live);
    }
    if let Err(e) = set_state(ctx, id, qualys::WireState::Enabled).await {
        return with_live(api_failure(&e, "enabling the new job"), &live);
    }
    state.last_enabled_time = Some(Timestamp::now());
    live.status = qualys::Field::Value(qualys::values::ENABLED.to_string());
    outcome.state_set = Some(qualys::WireState::Enabled);
    outcome
        .events
        .push(Notice::normal("Enabled", format!("enabled job {id}")));
    with_live(outcome, &live)
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
