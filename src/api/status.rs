//! `status` of a DeploymentJob and the one table that maps an outcome to conditions.
//!
//! Conditions follow the kstatus conventions (`Ready`, `Reconciling`, `Stalled`) so `kubectl
//! wait --for=condition=Ready`, Flux and Argo CD can judge health; `Synced` says whether the
//! last reconcile succeeded. Every reason the operator can report is a [`Reason`] variant, and
//! [`Reason::effect`] is that table; docs/crd.md and the README list it for users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the operator knows about the job. Written whole, by server-side apply, and only when
/// it differs from what is stored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// The blocks that are absent most of the time (pending create, drift) or hold several strings
// are boxed: every resource's status is cached, and inline they cost ~300 bytes each.
pub struct DeploymentJobStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The Qualys job this resource manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,

    /// Ready, Synced, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The last time the operator wrote to Qualys for this job (create, update, status change).
    /// Not the last check: that would rewrite status on every resync; it is a metric instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write_time: Option<Time>,

    /// Recorded before a create is sent, so a crash between the create and the status write
    /// that records the job id is recovered by adopting that job, not by creating a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<Box<PendingCreate>>,

    /// Digests of what was last written: the managed body and each script (`sha256:` of the
    /// decoded bytes, keyed like `pre[0].script`). Scripts cannot be read back from Qualys, so
    /// these are how a script change is noticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<Box<Digests>>,

    /// Report mode: how the live job differs from the spec. Scripts appear as digests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub pending_changes: Vec<FieldChange>,

    /// Drift corrected or detected: which fields, and how often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Box<DriftStatus>>,

    /// A summary of the live job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<LiveJobSummary>>,

    /// The generation at which an existing job was adopted. The operator never enables a job
    /// on adoption: its `status` is applied only once the spec changes after this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_generation: Option<i64>,

    /// When the operator last enabled the job. A non-recurring job (On-demand, Once) is enabled
    /// at most once: enabling it again would run it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_enabled_time: Option<Time>,
}

/// A create that may or may not have reached Qualys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingCreate {
    /// The job name sent.
    pub name: String,
    /// The platform sent.
    pub platform: String,
    /// Digest of the body sent.
    pub body_digest: String,
    /// When the create started (RFC 3339).
    pub started_at: String,
}

/// Digests of what was last written to Qualys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Digests {
    /// Digest of the managed part of the body last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Digest of each script last written, keyed like `pre[0].script`, `post[1].detectionScript`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scripts: BTreeMap<String, String>,
}

/// One field that differs between the spec and the live job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct FieldChange {
    /// Path in the job body, e.g. `approvedPatches` or `preDeployActions[0].params.timeout`.
    pub path: String,
    /// The live value (JSON), absent when the field is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The desired value (JSON); scripts as `sha256:` digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Drift seen on the live job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftStatus {
    /// The fields that drifted the last time drift was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub fields: Vec<String>,
    /// How many times drift has been corrected.
    #[serde(default)]
    pub corrections: i64,
    /// When drift was last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detected_time: Option<Time>,
}

/// What the live job looks like, in brief.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveJobSummary {
    /// The job's state in Qualys (Enabled, Disabled, or a server state such as Prepared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The job's trigger status as Qualys reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_trigger_status: Option<String>,
    /// Completion percentage as Qualys reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_percent: Option<String>,
    /// Who last updated the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When the job was last updated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// Condition types.
pub mod condition_type {
    pub const READY: &str = "Ready";
    pub const SYNCED: &str = "Synced";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const ALL: [&str; 4] = [READY, SYNCED, RECONCILING, STALLED];
}

/// How a reason sets one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    True,
    False,
    /// Leave the condition as it is (e.g. Ready while retrying a rate-limited call).
    Unchanged,
}

/// The four conditions a reason sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    pub ready: Effect,
    pub synced: Effect,
    pub reconciling: Effect,
    pub stalled: Effect,
}

macro_rules! reasons {
    ($( $(#[$m:meta])* $name:ident => [$ready:ident, $synced:ident, $reconciling:ident, $stalled:ident], )+) => {
        /// Every reason the operator reports, with its effect on the conditions.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Reason { $( $(#[$m])* $name, )+ }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$name => stringify!($name),)+ }
            }

            pub fn from_name(name: &str) -> Option<Reason> {
                match name { $(stringify!($name) => Some(Reason::$name),)+ _ => None }
            }

            /// The row of the reason table.
            pub fn effect(self) -> Effects {
                match self {
                    $(Reason::$name => Effects {
                        ready: Effect::$ready,
                        synced: Effect::$synced,
                        reconciling: Effect::$reconciling,
                        stalled: Effect::$stalled,
                    },)+
                }
            }
        }
    };
}

reasons! {
    /// The job was created and matches the spec.
    Created => [True, True, False, False],
    /// The job was updated to match the spec.
    Updated => [True, True, False, False],
    /// An existing job was adopted (spec.jobId or pending-create recovery) and matches the spec.
    Adopted => [True, True, False, False],
    /// Nothing to do: the job matches the spec.
    UpToDate => [True, True, False, False],
    /// A create is in flight.
    Creating => [False, False, True, False],
    /// Deletion is in progress.
    Deleting => [False, False, True, False],
    /// The linkedJobRef parent has no job id yet.
    WaitingForLinkedJob => [False, False, True, False],
    /// Qualys rate-limited the operator; retrying with backoff.
    RateLimited => [Unchanged, False, True, False],
    /// The gateway is unreachable or failing; retrying with backoff.
    GatewayUnavailable => [Unchanged, False, True, False],
    /// Report mode: the live job differs; status.pendingChanges lists how.
    DriftDetected => [False, True, False, False],
    /// The spec cannot be rendered or is refused by Qualys as invalid.
    InvalidSpec => [False, False, False, True],
    /// Qualys refused the credentials.
    Unauthorized => [False, False, False, True],
    /// The user lacks PM.API.ACCESS or the subscription lacks Patch Management.
    Forbidden => [False, False, False, True],
    /// A job with this name exists in Qualys and is not this resource's; set spec.jobId to adopt it.
    NameConflict => [False, False, False, True],
    /// Another DeploymentJob already manages this job.
    JobClaimed => [False, False, False, True],
    /// An accepted update did not take effect; the operator stopped re-sending it.
    NotConverging => [False, False, False, True],
    /// A non-recurring job that has been enabled cannot be disabled.
    CannotDisable => [False, False, False, True],
    /// The job vanished from Qualys and recreatePolicy is Never.
    JobMissing => [False, False, False, True],
    /// Deletion cannot reach Qualys (no usable credentials, or the job still has children).
    DeletionBlocked => [False, False, False, True],
    /// The installed CRD does not keep or accept what the operator writes (an older CRD, or a
    /// status write refused with 422); nothing is changed in Qualys until it is fixed.
    CrdMismatch => [False, False, False, True],
    /// The pm.qualys.io/paused annotation is set.
    Paused => [Unchanged, Unchanged, False, False],
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// True for the reasons that need a person (Stalled).
    pub fn is_stalled(self) -> bool {
        self.effect().stalled == Effect::True
    }
}

/// Build the conditions for `reason`, keeping `lastTransitionTime` of conditions whose status
/// did not change and leaving `Unchanged` ones as they were.
pub fn conditions_for(
    previous: &[Condition],
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let effects = reason.effect();
    let mut out = Vec::with_capacity(4);
    for (ty, effect) in [
        (condition_type::READY, effects.ready),
        (condition_type::SYNCED, effects.synced),
        (condition_type::RECONCILING, effects.reconciling),
        (condition_type::STALLED, effects.stalled),
    ] {
        let old = previous.iter().find(|c| c.type_ == ty);
        let status = match effect {
            Effect::True => "True",
            Effect::False => "False",
            Effect::Unchanged => match old {
                Some(c) => {
                    out.push(c.clone());
                    continue;
                }
                None => "Unknown",
            },
        };
        let transition = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: ty.to_string(),
            status: status.to_string(),
            reason: reason.as_str().to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: transition,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn get<'a>(c: &'a [Condition], ty: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == ty).unwrap()
    }

    #[test]
    fn table_matches_the_design() {
        let e = Reason::UpToDate.effect();
        assert_eq!(
            (e.ready, e.reconciling, e.stalled),
            (Effect::True, Effect::False, Effect::False)
        );
        for r in [
            Reason::InvalidSpec,
            Reason::NameConflict,
            Reason::DeletionBlocked,
        ] {
            assert!(r.is_stalled());
        }
        assert_eq!(Reason::RateLimited.effect().ready, Effect::Unchanged);
        assert_eq!(Reason::Paused.effect().reconciling, Effect::False);
        for r in Reason::ALL {
            assert_eq!(Reason::from_name(r.as_str()), Some(*r));
        }
    }

    #[test]
    fn transition_time_moves_only_on_a_real_transition() {
        let first = conditions_for(&[], Reason::Created, "created", Some(1), &now(100));
        assert_eq!(get(&first, "Ready").status, "True");
        assert_eq!(get(&first, "Ready").last_transition_time, now(100));
        let same = conditions_for(&first, Reason::UpToDate, "ok", Some(2), &now(200));
        assert_eq!(get(&same, "Ready").last_transition_time, now(100));
        assert_eq!(get(&same, "Ready").observed_generation, Some(2));
        let retry = conditions_for(&same, Reason::RateLimited, "429", Some(2), &now(300));
        assert_eq!(
            get(&retry, "Ready"),
            get(&same, "Ready"),
            "Ready is left as it was"
        );
        assert_eq!(get(&retry, "Reconciling").status, "True");
        assert_eq!(get(&retry, "Reconciling").last_transition_time, now(300));
        let stalled = conditions_for(&retry, Reason::Forbidden, "403", Some(2), &now(400));
        assert_eq!(get(&stalled, "Ready").status, "False");
        assert_eq!(get(&stalled, "Stalled").status, "True");
    }
}
