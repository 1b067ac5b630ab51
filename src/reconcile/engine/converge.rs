//! Bringing an existing job to the spec: adopt, update, enable/disable — or, in Report mode,
//! only describe the differences.

use super::Context;
use super::observe::{IdentifiedBy, Observation, StateAction, is_recurring, not_rendered};
use super::outcome::{Notice, Outcome, api_failure, with_live};
use crate::api::{DeploymentJobSpec, Reason};
use crate::qualys::{self, Error as QError, JobBody};
use crate::reconcile::gateway::GatewayWrite;
use crate::reconcile::state::{EngineState, StateStore};
use crate::reconcile::update::update_body;
use jiff::Timestamp;

/// What a converge has done so far: a failure part-way reports it too.
struct Progress {
    id: String,
    current: JobBody,
    events: Vec<Notice>,
    wrote: bool,
}

impl Progress {
    fn fail(self, mut o: Outcome) -> Outcome {
        o.events.splice(0..0, self.events);
        o.wrote = o.wrote || self.wrote;
        with_live(o, &self.current)
    }
}

pub(super) async fn converge<S: StateStore, Q: GatewayWrite + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_, Q>,
    obs: Observation,
    live: JobBody,
    report: bool,
) -> Outcome {
    let id = live.job_id().unwrap_or_default().to_string();
    let newly_bound = match bind(state, store, ctx, &obs, &id).await {
        Ok(newly_bound) => newly_bound,
        Err(o) => return o,
    };
    // Drift: the live job changed while the spec stayed what was last written.
    let drifted =
        !newly_bound && state.digests.body.as_deref() == Some(obs.desired_digest.as_str());
    let mut p = Progress {
        events: adoption_events(&obs, &id, newly_bound),
        id,
        current: live,
        wrote: false,
    };
    if report {
        let mut o = report_differences(&obs, &p.id);
        p.events.append(&mut o.events);
        o.events = p.events;
        return with_live(o, &p.current);
    }
    let updated_fields = match write_update(state, ctx, &obs, &mut p).await {
        Ok(fields) => fields,
        Err(o) => return p.fail(o),
    };
    let drift_fields = record_update(state, &obs, &mut p, &updated_fields, drifted);
    let state_set = match change_state(spec, state, ctx, &obs, &mut p).await {
        Ok(set) => set,
        Err(o) => return p.fail(o),
    };
    let mut o = converged(&obs, newly_bound, &p);
    o.events = p.events;
    o.wrote = p.wrote;
    o.drift_corrected = !drift_fields.is_empty();
    o.drift_fields = drift_fields;
    o.updated_fields = updated_fields;
    o.state_set = state_set;
    with_live(o, &p.current)
}

/// Record the job as this resource's when it is found for the first time (adopted, recovered,
/// or found by name); `Ok(true)` when it was.
async fn bind<S: StateStore, Q: GatewayWrite + ?Sized>(
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_, Q>,
    obs: &Observation,
    id: &str,
) -> Result<bool, Outcome> {
    if state.job_id.as_deref() == Some(id) {
        return Ok(false);
    }
    state.job_id = Some(id.to_string());
    state.pending_create = None;
    if obs.adopting {
        state.adopted_generation = ctx.generation;
        state.digests = Default::default();
    }
    store.save(state).await.map_err(|e| {
        Outcome::new(
            Reason::GatewayUnavailable,
            format!("cannot record job {id}: {e}"),
        )
    })?;
    Ok(true)
}

fn adoption_events(obs: &Observation, id: &str, newly_bound: bool) -> Vec<Notice> {
    let note = match obs.identified_by {
        IdentifiedBy::JobId if newly_bound => {
            format!("adopted existing Qualys job {id} (spec.jobId)")
        }
        IdentifiedBy::PendingCreate => {
            format!("recovered job {id}, created before the operator lost the answer to its create")
        }
        IdentifiedBy::Name if newly_bound => format!("found job {id} by its name"),
        _ => return Vec::new(),
    };
    vec![Notice::normal("Adopted", note)]
}

/// PATCH the body fields that differ; the fields written, or the outcome that stopped it (a
/// failed call, or an update Qualys accepted without applying it).
async fn write_update<Q: GatewayWrite + ?Sized>(
    state: &mut EngineState,
    ctx: &Context<'_, Q>,
    obs: &Observation,
    p: &mut Progress,
) -> Result<Vec<String>, Outcome> {
    if obs.changes.is_empty() {
        return Ok(Vec::new());
    }
    let id = &p.id;
    let body = update_body(
        &p.current,
        obs.rendered.as_ref().ok_or_else(not_rendered)?,
        &state.digests.scripts,
    );
    let answer = ctx
        .client
        .update_job(id, &body)
        .await
        .map_err(|e| api_failure(&e, "updating the job"))?;
    p.wrote = true;
    // Scripts sent as content are now the stored ones.
    state.digests.scripts.extend(
        obs.desired
            .scripts
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    state.digests.body = Some(obs.desired_digest.clone());
    state.last_write_time = Some(Timestamp::now());
    let after = obs.desired.value.diff(&answer, &state.digests.scripts);
    let stuck: Vec<String> = after
        .iter()
        .filter(|c| c.path != "status")
        .map(|c| c.path.clone())
        .collect();
    p.current = answer;
    if !stuck.is_empty() {
        let msg = format!(
            "Qualys accepted the update of job {id} but did not apply: {}; the operator stopped re-sending it \
             (no retry loop). Check the values against what Qualys allows, then change the spec or request a reconcile",
            stuck.join(", ")
        );
        return Err(Outcome::new(Reason::NotConverging, msg.clone())
            .event(Notice::warning("NotConverging", msg)));
    }
    Ok(obs.changes.iter().map(|c| c.path.clone()).collect())
}

/// The event of an update (a spec change, or drift corrected); the drift fields corrected.
/// With nothing written the live job already matches this spec (a spec change it already had,
/// or a first look at an adopted job), so it is remembered as written.
fn record_update(
    state: &mut EngineState,
    obs: &Observation,
    p: &mut Progress,
    updated_fields: &[String],
    drifted: bool,
) -> Vec<String> {
    let id = &p.id;
    if updated_fields.is_empty() {
        state.digests.body = Some(obs.desired_digest.clone());
        state.digests.scripts.extend(obs.desired.scripts.clone());
        return Vec::new();
    }
    let fields = updated_fields.join(", ");
    if drifted {
        p.events.push(Notice::normal(
            "DriftCorrected",
            format!("corrected drift of job {id} in: {fields}"),
        ));
        updated_fields.to_vec()
    } else {
        p.events.push(Notice::normal(
            "Updated",
            format!("updated job {id}: {fields}"),
        ));
        Vec::new()
    }
}

/// Enable or disable the job when the spec asks for it; the state set.
async fn change_state<Q: GatewayWrite + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    ctx: &Context<'_, Q>,
    obs: &Observation,
    p: &mut Progress,
) -> Result<Option<qualys::WireState>, Outcome> {
    let Some(StateAction::Set(target)) = &obs.state_action else {
        return Ok(None);
    };
    let (target, id) = (*target, &p.id);
    if let Err(e) = set_state(ctx, id, target).await {
        return Err(
            if target == qualys::WireState::Disabled && !is_recurring(spec, &p.current) {
                let msg = format!(
                    "job {id} is a non-recurring job that has been enabled; Qualys does not allow disabling it ({e}). \
                     Set spec.job.status: Enabled or remove the field"
                );
                Outcome::new(Reason::CannotDisable, msg.clone())
                    .event(Notice::warning("CannotDisable", msg))
            } else {
                api_failure(&e, "changing the job's state")
            },
        );
    }
    p.wrote = true;
    state.last_write_time = Some(Timestamp::now());
    let reason = if target == qualys::WireState::Enabled {
        state.last_enabled_time = Some(Timestamp::now());
        "Enabled"
    } else {
        "Disabled"
    };
    p.current.status = qualys::Field::Value(target.as_str().to_string());
    p.events.push(Notice::normal(
        reason,
        format!("set job {id} {}", target.as_str()),
    ));
    Ok(Some(target))
}

/// The reason and message of a converge that went through.
fn converged(obs: &Observation, newly_bound: bool, p: &Progress) -> Outcome {
    let id = &p.id;
    let reason = match obs.identified_by {
        IdentifiedBy::JobId | IdentifiedBy::PendingCreate | IdentifiedBy::Name if newly_bound => {
            Reason::Adopted
        }
        _ if p.wrote => Reason::Updated,
        _ => Reason::UpToDate,
    };
    let mut message = match reason {
        Reason::Adopted => format!("adopted job {id}; it matches the spec"),
        Reason::Updated => format!("updated job {id}; it matches the spec"),
        _ => format!("job {id} matches the spec"),
    };
    if let Some(StateAction::Leave { why, .. }) = &obs.state_action {
        message.push_str("; ");
        message.push_str(why);
    }
    Outcome::new(reason, message)
}

/// driftPolicy Report: every difference Correct mode would act on, the job's state included,
/// and why a state difference would be left alone where a rule forbids changing it.
fn report_differences(obs: &Observation, id: &str) -> Outcome {
    let mut all = obs.changes.clone();
    let mut not_acting = None;
    if let Some((change, why)) = obs.status_difference() {
        all.push(change);
        not_acting = why;
    }
    if all.is_empty() {
        return Outcome::new(Reason::UpToDate, format!("job {id} matches the spec"));
    }
    let fields: Vec<String> = all.iter().map(|c| c.path.clone()).collect();
    let mut message = format!(
        "job {id} differs from the spec in {} field(s): {}; driftPolicy Report changes nothing",
        fields.len(),
        fields.join(", ")
    );
    if let Some(why) = not_acting {
        message.push_str(&format!(
            "; status would not be changed with driftPolicy Correct either: {why}"
        ));
    }
    let mut o = Outcome::new(Reason::DriftDetected, message).event(Notice::warning(
        "DriftDetected",
        format!("job {id} differs from the spec in: {}", fields.join(", ")),
    ));
    o.drift_fields = fields;
    o.pending_changes = all;
    o
}

pub(super) async fn set_state<Q: GatewayWrite + ?Sized>(
    ctx: &Context<'_, Q>,
    id: &str,
    target: qualys::WireState,
) -> Result<(), QError> {
    let items = ctx.client.set_status(&[id.to_string()], target).await?;
    match items.into_iter().find(|i| i.id == id) {
        Some(item) => item.result,
        None => Err(QError::ItemFailed {
            id: id.to_string(),
            message: "not in the gateway's answer".into(),
        }),
    }
}
