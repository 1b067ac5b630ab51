//! Writing `status`: the whole status by server-side apply (field manager `qpm-operator`),
//! only when it differs from what is stored, with the resourceVersion the reconcile started
//! from as a precondition — a replica that lost its lease, or read a stale object, gets a
//! conflict instead of overwriting newer state (and, before a create, instead of creating).

use super::crd_check::{InstalledCrd, owned};
use super::metrics::Metrics;
use crate::api::{DeploymentJob, DeploymentJobStatus, FIELD_MANAGER, Reason, conditions_for};
use crate::reconcile::{EngineState, Outcome, StateStore, StoreError};
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::sync::Arc;

/// Now, to the second (as the API server stores it).
pub fn now() -> Time {
    crate::reconcile::state::to_second(jiff::Timestamp::now())
}

/// Writes one resource's status; remembers what is stored.
pub struct StatusWriter {
    api: Api<DeploymentJob>,
    name: String,
    generation: Option<i64>,
    /// The status as stored (after our own writes).
    pub current: DeploymentJobStatus,
    resource_version: Option<String>,
    metrics: Arc<Metrics>,
    /// The installed CRD: status is compared as it would be stored under it.
    installed: Option<Arc<InstalledCrd>>,
}

impl StatusWriter {
    pub fn new(api: Api<DeploymentJob>, dj: &DeploymentJob, metrics: Arc<Metrics>) -> Self {
        StatusWriter {
            api,
            name: dj.name_any(),
            generation: dj.metadata.generation,
            current: dj.status.clone().unwrap_or_default(),
            resource_version: dj.resource_version(),
            metrics,
            installed: None,
        }
    }

    /// Compares status as the installed CRD would keep it, and refuses to record a pending
    /// create that it would drop.
    pub fn checked(mut self, installed: Arc<InstalledCrd>) -> Self {
        self.installed = Some(installed);
        self
    }

    /// Store `status` unless it is what is stored already.
    pub fn write(&mut self, status: DeploymentJobStatus) -> BoxFuture<'_, Result<(), kube::Error>> {
        Box::pin(self.write_inner(status))
    }

    async fn write_inner(&mut self, status: DeploymentJobStatus) -> Result<(), kube::Error> {
        // Only what the operator owns is compared and sent: the fields the installed schema
        // keeps, and its own conditions (another manager's stay as they are).
        let status = match &self.installed {
            Some(installed) => owned(&installed.as_stored(&status)),
            None => owned(&status),
        };
        if status == owned(&self.current) {
            return Ok(());
        }
        let mut body = json!({
            "apiVersion": "pm.qualys.io/v1alpha1",
            "kind": "DeploymentJob",
            "metadata": {"name": self.name},
            "status": status,
        });
        if let Some(rv) = &self.resource_version {
            body["metadata"]["resourceVersion"] = json!(rv);
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(body);
        let stored = self.api.patch_status(&self.name, &params, &patch).await?;
        self.metrics.status_writes.inc();
        self.resource_version = stored.resource_version();
        self.current = stored.status.unwrap_or(status);
        Ok(())
    }

    /// The status that says work is in flight (a pending create), keeping the rest.
    fn in_flight(&self, state: &EngineState) -> DeploymentJobStatus {
        let mut s = self.current.clone();
        state.write_to(&mut s);
        if state.pending_create.is_some() {
            s.conditions = conditions_for(
                &s.conditions,
                Reason::Creating,
                "creating the job in Qualys",
                self.generation,
                &now(),
            );
        }
        s
    }
}

impl StateStore for StatusWriter {
    fn save<'a>(&'a mut self, state: &'a EngineState) -> BoxFuture<'a, Result<(), StoreError>> {
        let status = self.in_flight(state);
        let dropped = state
            .pending_create
            .as_ref()
            .and(self.installed.as_ref())
            .and_then(|i| i.blocked());
        Box::pin(async move {
            if let Some(why) = dropped {
                // A record the server would prune is no record: refuse, so nothing is created.
                return Err(StoreError(why));
            }
            self.write(status)
                .await
                .map_err(|e| StoreError(e.to_string()))
        })
    }
}

/// The status after a reconcile: the engine's memory, the outcome's conditions, drift and the
/// live summary.
pub fn compose(
    previous: &DeploymentJobStatus,
    state: &EngineState,
    outcome: &Outcome,
    generation: Option<i64>,
    report_mode: bool,
) -> DeploymentJobStatus {
    let mut s = previous.clone();
    state.write_to(&mut s);
    s.observed_generation = generation;
    // "Nothing to do" after a success keeps that success's reason and message: a resync that
    // finds nothing changed must not rewrite status.
    let (reason, message) = match (outcome.reason, kept_success(previous)) {
        (Reason::UpToDate, Some((r, m))) => (r, m),
        _ => (outcome.reason, outcome.message.clone()),
    };
    s.conditions = conditions_for(&previous.conditions, reason, &message, generation, &now());
    s.pending_changes = if report_mode && outcome.reason == Reason::DriftDetected {
        outcome
            .pending_changes
            .iter()
            .map(|c| c.to_status())
            .collect()
    } else if outcome.reason.effect().ready == crate::api::Effect::True {
        Vec::new()
    } else {
        previous.pending_changes.clone()
    };
    if !outcome.drift_fields.is_empty() {
        let mut drift = previous.drift.clone().unwrap_or_default();
        if drift.fields != outcome.drift_fields || outcome.drift_corrected {
            drift.last_detected_time = Some(now());
        }
        drift.fields = outcome.drift_fields.clone();
        if outcome.drift_corrected {
            drift.corrections += 1;
        }
        s.drift = Some(drift);
    }
    if let Some(live) = &outcome.live {
        s.job = Some(Box::new(live.clone()));
    }
    s
}

/// The reason and message of a Ready=True condition, if the resource has one.
fn kept_success(previous: &DeploymentJobStatus) -> Option<(Reason, String)> {
    let ready = previous
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition_type::READY)?;
    let reason = Reason::from_name(&ready.reason)?;
    (ready.status == "True" && reason.effect().ready == crate::api::Effect::True)
        .then(|| (reason, ready.message.clone()))
}

/// The message of a 422 answer, naming each field it lists.
pub fn refusal(status: &kube::core::Status) -> String {
    let causes: Vec<String> = status
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        })
        .unwrap_or_default();
    let what = if causes.is_empty() {
        status.message.clone()
    } else {
        causes.join("; ")
    };
    format!(
        "the API server refused the status write ({what}); the installed CRD does not accept what this operator writes: \
         apply the CRD of this operator version (kubectl apply --server-side -f crds/deploymentjob.yaml)"
    )
}

impl StatusWriter {
    /// After a refused write: record why in the conditions, on top of the status as stored
    /// (which the server accepted before; sending less would make the apply remove the rest),
    /// so the resource shows it; a failure here is only logged.
    pub async fn refused(&mut self, message: &str) {
        let mut s = owned(&self.current);
        s.conditions = conditions_for(
            &self.current.conditions,
            Reason::CrdMismatch,
            message,
            self.generation,
            &now(),
        );
        let body = json!({
            "apiVersion": "pm.qualys.io/v1alpha1",
            "kind": "DeploymentJob",
            "metadata": {"name": self.name},
            "status": s,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .api
            .patch_status(&self.name, &params, &Patch::Apply(body))
            .await
        {
            Ok(stored) => {
                self.metrics.status_writes.inc();
                self.resource_version = stored.resource_version();
                self.current = stored.status.unwrap_or(s);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record that the status write was refused")
            }
        }
    }
}

/// The status of a paused resource: only the conditions change, and observedGeneration stays
/// where it was (the spec has not been looked at).
pub fn paused(previous: &DeploymentJobStatus) -> DeploymentJobStatus {
    let mut s = previous.clone();
    s.conditions = conditions_for(
        &previous.conditions,
        Reason::Paused,
        "reconciling is paused by the pm.qualys.io/paused annotation",
        previous.observed_generation,
        &now(),
    );
    s
}
