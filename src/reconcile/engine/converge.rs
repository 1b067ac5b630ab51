//! Bringing an existing job to the spec: adopt, update, enable/disable — or, in Report mode,
//! only describe the differences.

use super::Context;
use super::observe::{IdentifiedBy, Observation, StateAction, is_recurring};
use super::outcome::{Event, Outcome, api_failure, with_live};
use crate::api::{DeploymentJobSpec, Reason};
use crate::qualys::{self, Error as QError, JobBody};
use crate::reconcile::diff::diff;
use crate::reconcile::gateway::GatewayWrite;
use crate::reconcile::normalise::normalise_live_managed;
use crate::reconcile::state::{EngineState, StateStore};
use crate::reconcile::update::update_body;
use jiff::Timestamp;

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
        let mut o = report_differences(&obs, &id);
        events.append(&mut o.events);
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
    let mut state_set = None;
    match &obs.state_action {
        Some(StateAction::Set(target)) => match set_state(ctx, &id, *target).await {
            Ok(()) => {
                wrote = true;
                state_set = Some(*target);
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
        Some(StateAction::Leave { why, .. }) => note = Some(why.clone()),
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
    o.updated_fields = updated_fields;
    o.state_set = state_set;
    with_live(o, &current)
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
    let mut o = Outcome::new(Reason::DriftDetected, message).event(Event::warning(
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
    target: qualys::JobState,
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
