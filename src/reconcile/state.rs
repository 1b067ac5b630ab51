//! What the engine must remember between reconciles, and where it keeps it: the resource's
//! status in the controller, a file (or memory) for the CLI.

use crate::api::{DeploymentJobStatus, Digests, PendingCreate};
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// The engine's memory of one DeploymentJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineState {
    /// The Qualys job this resource manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// A create that may have reached Qualys; recorded and confirmed before the POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<PendingCreate>,
    /// Digests of the body and scripts last written.
    #[serde(default)]
    pub digests: Digests,
    /// The last write to Qualys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write_time: Option<Timestamp>,
    /// The generation at which an existing job was adopted (no enabling before it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_generation: Option<i64>,
    /// When the operator last enabled the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_enabled_time: Option<Timestamp>,
}

impl EngineState {
    /// The engine's memory as the controller keeps it, in status.
    pub fn from_status(status: Option<&DeploymentJobStatus>) -> Self {
        let Some(s) = status else {
            return Self::default();
        };
        EngineState {
            job_id: s.job_id.clone(),
            pending_create: s.pending_create.as_deref().cloned(),
            digests: s.digests.as_deref().cloned().unwrap_or_default(),
            last_write_time: s.last_write_time.as_ref().map(|t| t.0),
            adopted_generation: s.adopted_generation,
            last_enabled_time: s.last_enabled_time.as_ref().map(|t| t.0),
        }
    }

    /// Copy the engine's memory into a status.
    pub fn write_to(&self, status: &mut DeploymentJobStatus) {
        status.job_id = self.job_id.clone();
        status.pending_create = self.pending_create.clone().map(Box::new);
        status.digests = if self.digests == Digests::default() {
            None
        } else {
            Some(Box::new(self.digests.clone()))
        };
        status.last_write_time = self.last_write_time.map(to_second);
        status.adopted_generation = self.adopted_generation;
        status.last_enabled_time = self.last_enabled_time.map(to_second);
    }
}

/// The API server keeps times to the second; a finer one would never compare equal to what it
/// stored, and status would be rewritten on every reconcile.
pub fn to_second(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Why the state could not be saved (the engine then stops before writing to Qualys).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot record the operator's state: {0}")]
pub struct StoreError(pub String);

/// Durable storage of an [`EngineState`]. `save` returns only once the state is stored: the
/// engine relies on it before a create (pending-create) and right after one (the job id).
///
/// The future is boxed: an `impl Future` here trips the compiler's higher-ranked `Send`
/// checks once the engine runs inside kube's controller.
pub trait StateStore: Send {
    fn save<'a>(&'a mut self, state: &'a EngineState) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A store that keeps nothing beyond the caller's own copy (tests, one-shot runs).
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl StateStore for MemoryStore {
    fn save<'a>(&'a mut self, _state: &'a EngineState) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
