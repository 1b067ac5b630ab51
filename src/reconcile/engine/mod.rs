//! The engine: observe the live job, decide, and act — create (with pending-create recovery),
//! adopt, update, enable/disable, delete or orphan — against a Qualys client, remembering what
//! it must through a [`StateStore`]. It knows nothing of Kubernetes: the controller and the CLI
//! both drive it, and every outcome maps to one [`Reason`].

mod cleanup;
mod converge;
mod create;
mod observe;
mod outcome;

pub use cleanup::{CleanupOptions, Ownership, cleanup, ownership, release_without_qualys};
pub use observe::{IdentifiedBy, Observation, observe};
pub use outcome::{
    Notice, NoticeType, Outcome, api_failure, last_change_ms, later_date_ms, live_summary,
    reason_for,
};

use super::desired::CacheSlot;
use super::diff::FieldDiff;
use super::directory::Directory;
use super::gateway::GatewayWrite;
use super::render::ScriptResolver;
use super::state::{EngineState, StateStore};
use crate::api::{DeploymentJobSpec, DriftPolicy, Reason};
use crate::qualys::Client;
use serde_json::Value;
use std::time::Duration;

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

/// Everything a reconcile reads besides the spec and the state. `Q` is the engine's view of
/// Qualys: the HTTP client, a read-only view for `plan`, or [`MemoryGateway`] in tests.
///
/// [`MemoryGateway`]: crate::reconcile::gateway::MemoryGateway
pub struct Context<'a, Q: ?Sized = Client> {
    pub client: &'a Q,
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
    /// Where this resource's desired body is kept between reconciles (None: rendered each time).
    pub desired_cache: Option<CacheSlot<'a>>,
}

/// Reconcile toward the spec: create, adopt, update, enable/disable, or (Report mode) only
/// describe the differences.
pub async fn apply<S: StateStore, Q: GatewayWrite + ?Sized>(
    spec: &DeploymentJobSpec,
    state: &mut EngineState,
    store: &mut S,
    ctx: &Context<'_, Q>,
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
            o.pending_changes = vec![FieldDiff {
                path: String::new(),
                from: Value::Null,
                to: Value::String("(create job)".into()),
            }];
            o
        }
        None => create::create(spec, state, store, ctx, obs).await,
        Some(live) => converge::converge(spec, state, store, ctx, obs, live, report).await,
    }
}
