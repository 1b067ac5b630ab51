//! Deletion: delete the job the resource has proven its own, or leave it in Qualys.

use super::observe::{IdentifiedBy, find_live};
use super::outcome::{Event, Outcome, api_failure, finished};
use super::{Claims, Context};
use crate::api::{DeletionPolicy, DeploymentJobSpec, Reason};
use crate::qualys::Error as QError;
use crate::reconcile::gateway::GatewayWrite;
use crate::reconcile::state::{EngineState, StateStore};

/// Options of a deletion.
#[derive(Clone, Debug, Default)]
pub struct CleanupOptions {
    /// `pm.qualys.io/force-orphan`: release without touching Qualys.
    pub force_orphan: bool,
    /// Other resources that still link to this job (its children): a parent is not deleted
    /// in Qualys before them.
    pub children: Vec<String>,
}

/// Which Qualys job a resource being deleted may delete. Ownership is recorded in the state's
/// `job_id`, which is set only once the resource created the job or adopted it while no other
/// resource claimed it (a JobClaimed or NameConflict resource never records one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Proven its own.
    Owned(String),
    /// A create may have reached Qualys: the job it made, if found, is this resource's.
    PendingCreate,
    /// Named (spec.jobId) or shared, but not proven this resource's own.
    NotOwned { job_id: String, why: String },
    /// No job at all.
    Nothing,
}

/// What the resource has proven about its job (see [`Ownership`]).
pub fn ownership(spec: &DeploymentJobSpec, state: &EngineState, claims: &dyn Claims) -> Ownership {
    if let Some(id) = &state.job_id {
        return match claims.claimed_by(id) {
            Some(other) => Ownership::NotOwned {
                job_id: id.clone(),
                why: format!("DeploymentJob {other} manages it too"),
            },
            None => Ownership::Owned(id.clone()),
        };
    }
    if state.pending_create.is_some() {
        return Ownership::PendingCreate;
    }
    match &spec.job_id {
        Some(id) => Ownership::NotOwned {
            job_id: id.clone(),
            why: match claims.claimed_by(id) {
                Some(other) => format!("it is managed by DeploymentJob {other} (JobClaimed)"),
                None => "this resource never adopted it (spec.jobId was never reconciled)".into(),
            },
        },
        None => Ownership::Nothing,
    }
}

/// The outcome of a deletion that needs no Qualys call — deletionPolicy Orphan,
/// force-orphan, no job, or a job the resource has not proven its own — or `None` when the
/// job must be deleted in Qualys.
pub fn release_without_qualys(
    spec: &DeploymentJobSpec,
    state: &EngineState,
    claims: &dyn Claims,
    force_orphan: bool,
) -> Option<Outcome> {
    let orphan = force_orphan || spec.effective_deletion_policy() == DeletionPolicy::Orphan;
    if orphan {
        return Some(Outcome::finished_orphan(
            state.job_id.clone().or_else(|| spec.job_id.clone()),
            force_orphan,
        ));
    }
    match ownership(spec, state, claims) {
        Ownership::Owned(_) | Ownership::PendingCreate => None,
        Ownership::Nothing => Some(finished("no job was created; nothing to delete")),
        Ownership::NotOwned { job_id, why } => {
            let mut o = finished(&format!(
                "left job {job_id} in Qualys: {why}; a resource deletes only a job it created or adopted"
            ));
            o.events
                .push(Event::normal("OrphanedNotOwned", o.message.clone()));
            Some(o)
        }
    }
}

/// The resource is being deleted: delete the Qualys job it owns, or leave it (Orphan, or not
/// proven its own). `finished` says the finalizer may go.
pub async fn cleanup<S: StateStore, Q: GatewayWrite + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_, Q>,
    options: &CleanupOptions,
) -> Outcome {
    if let Some(done) = release_without_qualys(spec, state, ctx.claims, options.force_orphan) {
        return done;
    }
    let id = match ownership(spec, state, ctx.claims) {
        Ownership::Owned(id) => id,
        _ => match find_live(spec, state, ctx).await {
            Ok((Some(live), IdentifiedBy::PendingCreate, ..)) => {
                live.job_id().unwrap_or_default().to_string()
            }
            Ok(_) => return finished("no job was created; nothing to delete"),
            Err(o) => return o,
        },
    };
    if !options.children.is_empty() {
        let msg = format!(
            "job {id} is still the linked parent of DeploymentJob(s) {}; it is deleted in Qualys once they are gone \
             (or set pm.qualys.io/force-orphan: \"true\" to leave it)",
            options.children.join(", ")
        );
        return Outcome::new(Reason::DeletionBlocked, msg);
    }
    let result = match ctx.client.delete_jobs(std::slice::from_ref(&id)).await {
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
