//! What every reconcile shares: clients, the cache of DeploymentJobs, connections, metrics,
//! the event recorder, the trigger channel, and small per-resource memories (backoff, reason,
//! the poll cursor).

use super::connections::{Connections, Resolved};
use super::events::Recorder;
use super::metrics::Metrics;
use crate::api::{DeploymentJob, Reason};
use crate::qualys::ConnectionId;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::channel::mpsc::UnboundedSender;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// The key of a resource in every per-resource map of the controller: its namespace and name
/// only, so that a reference built from a `linkedJobRef` finds the same entry as one built from
/// the object. (`ObjectRef::from_obj` would also keep the uid and resourceVersion in each entry,
/// which equality and hashing ignore.)
pub fn key_of(dj: &DeploymentJob) -> ObjectRef<DeploymentJob> {
    ObjectRef::new(&dj.name_any()).within(&dj.namespace().unwrap_or_default())
}

/// The form a person reads, `namespace/name` (kube's own `Display` of an `ObjectRef` spells
/// out the kind and version); also the form the engine and the CLI name resources by.
pub fn display(key: &ObjectRef<DeploymentJob>) -> impl fmt::Display + '_ {
    Shown(key)
}

struct Shown<'a>(&'a ObjectRef<DeploymentJob>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.0.namespace.as_deref().unwrap_or_default(),
            self.0.name
        )
    }
}

/// Two keys in the order of their display forms, without building them.
pub fn display_order(a: &ObjectRef<DeploymentJob>, b: &ObjectRef<DeploymentJob>) -> Ordering {
    fn shown(k: &ObjectRef<DeploymentJob>) -> impl Iterator<Item = u8> + '_ {
        let ns = k.namespace.as_deref().unwrap_or_default().bytes();
        ns.chain(std::iter::once(b'/')).chain(k.name.bytes())
    }
    shown(a).cmp(shown(b))
}

/// Timers of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Safety resync of every resource (jittered).
    pub resync: Duration,
    /// Summary poll per connection.
    pub poll_interval: Duration,
    /// Re-read of referenced Secrets by name.
    pub secret_poll_interval: Duration,
    /// How old the job listing may be for a name check before a create.
    pub listing_max_age: Duration,
}

pub struct Shared {
    pub kube: kube::Client,
    pub store: Store<DeploymentJob>,
    pub connections: Connections,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub settings: Settings,
    /// The installed CRD, as compared with this binary's.
    pub crd: Arc<super::crd_check::InstalledCrd>,
    /// Per resource: the desired body while its inputs are unchanged.
    pub desired: crate::reconcile::DesiredCache,
    trigger: UnboundedSender<ObjectRef<DeploymentJob>>,
    /// Per resource: the retry delays still to come (exponential, jittered, capped).
    backoff: Mutex<HashMap<ObjectRef<DeploymentJob>, ExponentialBackoff>>,
    /// Per connection: job id → last change (ms) already seen, by a poll or a reconcile.
    cursors: Mutex<HashMap<ConnectionId, HashMap<String, i64>>>,
}

impl Shared {
    pub fn new(
        kube: kube::Client,
        store: Store<DeploymentJob>,
        connections: Connections,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        settings: Settings,
        trigger: UnboundedSender<ObjectRef<DeploymentJob>>,
    ) -> Self {
        Shared {
            kube,
            store,
            connections,
            metrics,
            recorder,
            settings,
            crd: super::crd_check::InstalledCrd::new(),
            desired: crate::reconcile::DesiredCache::new(),
            trigger,
            backoff: Mutex::new(HashMap::new()),
            cursors: Mutex::new(HashMap::new()),
        }
    }

    /// Shares what is known of the installed CRD.
    pub fn with_crd(mut self, crd: Arc<super::crd_check::InstalledCrd>) -> Self {
        self.crd = crd;
        self
    }

    /// Ask for a reconcile of `r`.
    pub fn trigger(&self, r: ObjectRef<DeploymentJob>) {
        let _ = self.trigger.unbounded_send(r);
    }

    /// The next retry delay of a failing resource: 1 s doubling to 5 min, with jitter.
    pub fn next_retry_delay(&self, key: &ObjectRef<DeploymentJob>) -> Duration {
        let Ok(mut m) = self.backoff.lock() else {
            return MAX_RETRY_DELAY;
        };
        m.entry(key.clone())
            .or_insert_with(|| {
                ExponentialBuilder::new()
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(MAX_RETRY_DELAY)
                    .with_factor(2.0)
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(MAX_RETRY_DELAY)
    }

    pub fn reset_backoff(&self, key: &ObjectRef<DeploymentJob>) {
        if let Ok(mut m) = self.backoff.lock() {
            m.remove(key);
        }
    }

    /// Record a reconcile's outcome (`qpm_reconciles_total`) and the resource's Ready reason
    /// (`qpm_managed_jobs`; the outcome's when there is no Ready condition). One map, kept by
    /// the metrics.
    pub fn set_reason(
        &self,
        key: &ObjectRef<DeploymentJob>,
        outcome: Reason,
        ready: Option<Reason>,
    ) {
        self.metrics.set_reason(
            key,
            Some(super::metrics::Reasons {
                outcome: outcome.as_str(),
                ready: ready.unwrap_or(outcome).as_str(),
            }),
        );
    }

    /// Forget what is kept per resource for resources no longer in the cache. Most leave
    /// through their finalizer's last reconcile, which forgets them there; one whose finalizer
    /// was removed by hand (a stuck deletion, cleared with kubectl) vanishes without one, and its
    /// reason would count in `qpm_managed_jobs` for the life of the process.
    pub fn forget_vanished(&self) {
        let cached = self.store.state();
        let present: HashSet<ObjectRef<DeploymentJob>> =
            cached.iter().map(|dj| key_of(dj)).collect();
        let uids: HashSet<&str> = cached
            .iter()
            .filter_map(|dj| dj.metadata.uid.as_deref())
            .collect();
        let mut vanished: HashSet<ObjectRef<DeploymentJob>> = self
            .metrics
            .reason_keys()
            .into_iter()
            .chain(self.connections.keys())
            .filter(|k| !present.contains(k))
            .collect();
        if let Ok(m) = self.backoff.lock() {
            vanished.extend(m.keys().filter(|k| !present.contains(*k)).cloned());
        }
        for key in &vanished {
            self.set_reason_gone(key);
            self.connections.forget(key);
            self.reset_backoff(key);
        }
        self.desired.retain(|uid| uids.contains(uid));
    }

    pub fn set_reason_gone(&self, key: &ObjectRef<DeploymentJob>) {
        self.metrics.set_reason(key, None);
    }

    pub fn last_reason(&self, key: &ObjectRef<DeploymentJob>) -> Option<String> {
        self.metrics.outcome(key).map(String::from)
    }

    /// The resync delay, jittered by ±10% so resyncs of many resources spread out.
    pub fn resync_delay(&self) -> Duration {
        self.settings.resync.mul_f64(rand::random_range(0.9..1.1))
    }

    /// A reconcile saw job `id` as of `ms`: the poller need not report that as a change.
    pub fn note_seen(&self, conn: &Resolved, id: &str, ms: i64) {
        if let Ok(mut c) = self.cursors.lock() {
            c.entry(conn.id.clone())
                .or_default()
                .insert(id.to_string(), ms);
        }
    }

    /// Forget the poll cursors of connections no longer in use.
    pub fn keep_cursors_of<'a>(&self, active: impl Iterator<Item = &'a ConnectionId>) {
        let active: Vec<&ConnectionId> = active.collect();
        if let Ok(mut c) = self.cursors.lock() {
            c.retain(|id, _| active.contains(&id));
        }
    }

    /// Compare a listing with what was seen: the ids that changed, appeared or vanished.
    pub fn advance_cursor(
        &self,
        conn: &ConnectionId,
        listing: &HashMap<String, i64>,
    ) -> Vec<String> {
        let Ok(mut c) = self.cursors.lock() else {
            return Vec::new();
        };
        let cursor = c.entry(conn.clone()).or_default();
        let mut changed: Vec<String> = listing
            .iter()
            .filter(|(id, ms)| cursor.get(*id) != Some(*ms))
            .map(|(id, _)| id.clone())
            .collect();
        changed.extend(
            cursor
                .keys()
                .filter(|id| !listing.contains_key(*id))
                .cloned(),
        );
        *cursor = listing.clone();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(namespace: &str, name: &str) -> DeploymentJob {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pm.qualys.io/v1alpha1",
            "kind": "DeploymentJob",
            "metadata": {"name": name, "namespace": namespace, "uid": "u-1", "resourceVersion": "7"},
            "spec": {"job": {"name": "j", "platform": "Windows", "scheduleType": "On-demand"}},
        }))
        .expect("a valid DeploymentJob")
    }

    #[test]
    fn a_key_holds_namespace_and_name_only_and_matches_a_reference_by_name() {
        let key = key_of(&job("team-a", "web"));
        assert_eq!(key, ObjectRef::new("web").within("team-a"));
        assert_eq!(key.extra.uid, None);
        assert_eq!(key.extra.resource_version, None);
        assert_eq!(display(&key).to_string(), "team-a/web");
    }

    #[test]
    fn keys_order_as_their_display_forms() {
        // '-' sorts before '/', so the namespace alone would order these the other way round.
        let names = [
            ("a", "x"),
            ("a-b", "y"),
            ("a", "x-1"),
            ("ab", "a"),
            ("a0", "z"),
        ];
        for (na, a) in names {
            for (nb, b) in names {
                let (ka, kb) = (key_of(&job(na, a)), key_of(&job(nb, b)));
                assert_eq!(
                    display_order(&ka, &kb),
                    display(&ka).to_string().cmp(&display(&kb).to_string()),
                    "{na}/{a} vs {nb}/{b}"
                );
            }
        }
    }
}
