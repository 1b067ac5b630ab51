//! What re-queues a DeploymentJob besides its own edits: a job that moved in Qualys (the
//! summary poller), a referenced Secret that changed (re-read by name), a referenced
//! ConfigMap that changed (a metadata-only watch), and a parent that got its job id.

use super::context::Shared;
use super::context::key_of;
use crate::api::{DeploymentJob, DriftPolicy, ScriptStore};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One summary listing per connection per interval; reconcile only the resources whose job's
/// last-change date moved (or that vanished), plus Report-mode resources, which are observed
/// on every poll. The cursor lives in memory: after a restart the first pass reads everything
/// the startup reconciles have not already seen. The interval stretches so polling spends at
/// most its share of each connection's budget (`ClientOptions::poll_share`).
pub async fn poll_summaries(ctx: Arc<Shared>) {
    let mut wait = ctx.settings.poll_interval;
    loop {
        tokio::time::sleep(wait).await;
        let floor = poll_once(&ctx).await;
        let next = ctx.settings.poll_interval.max(floor);
        if next != wait {
            tracing::info!(
                interval_s = next.as_secs_f64(),
                "summary poll interval set to keep polling within its share of the Qualys budget"
            );
        }
        wait = next;
    }
}

/// One pass over every connection in use; returns the shortest interval until the next pass
/// that keeps each connection's polling within its share of the budget.
pub async fn poll_once(ctx: &Shared) -> std::time::Duration {
    let mut floor = std::time::Duration::ZERO;
    let active = ctx.connections.active();
    ctx.keep_cursors_of(active.iter().map(|(id, ..)| id));
    'connections: for (id, client, directory) in active {
        let calls_before = client.list_calls();
        // One platform at a time, so only one platform's listing is in memory at once.
        let mut listing = HashMap::new();
        for platform in crate::qualys::values::PLATFORMS {
            let dates = match directory.refresh(&client, platform).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(connection = %id, error = %e, "cannot list job summaries");
                    continue 'connections;
                }
            };
            listing.extend(
                dates
                    .into_iter()
                    .map(|(id, ms)| (id, ms.unwrap_or_default())),
            );
        }
        ctx.metrics.polled(&id.to_string());
        floor = floor.max(client.min_poll_interval(client.list_calls() - calls_before));
        let changed: HashSet<String> = ctx.advance_cursor(&id, &listing).into_iter().collect();
        for dj in ctx.store.state() {
            let key = key_of(&dj);
            let bound = dj.status.as_ref().and_then(|s| s.job_id.as_ref());
            let mine = ctx.connections.assignment(&key).as_ref() == Some(&id);
            let report = dj.spec.effective_drift_policy() == DriftPolicy::Report;
            if bound.is_some_and(|j| changed.contains(j)) || (report && mine) {
                ctx.trigger(key);
            }
        }
    }
    floor
}

/// Every poll interval, forget the per-resource state of resources that left the cache
/// without a last reconcile (`Shared::forget_vanished`). An entry exists only once a reconcile
/// found its resource in the cache, and the cache swaps a re-listing in whole, so a resource
/// missing from it is gone.
pub async fn forget_vanished(ctx: Arc<Shared>) {
    let mut interval = tokio::time::interval(ctx.settings.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        ctx.forget_vanished();
    }
}

/// Re-read every referenced Secret by name (metadata only) each interval; a change, creation
/// or deletion re-queues exactly the resources that reference it. No list or watch of Secrets.
pub async fn poll_secrets(ctx: Arc<Shared>) {
    let mut seen: HashMap<(String, String), Option<String>> = HashMap::new();
    let mut interval = tokio::time::interval(ctx.settings.secret_poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let referencing = secret_references(&ctx.store);
        seen.retain(|k, _| referencing.contains_key(k));
        for ((namespace, name), refs) in referencing {
            let api: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
            let version = match api.get_metadata_opt(&name).await {
                Ok(meta) => meta.and_then(|m| m.resource_version()),
                Err(e) => {
                    tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read a referenced Secret");
                    continue;
                }
            };
            // A change since the last read re-queues every resource that reads the Secret. On
            // the first read only the stalled ones are re-queued (one may be waiting for exactly
            // this Secret to appear); the others were reconciled at startup already.
            match seen.insert((namespace, name), version.clone()) {
                Some(before) if before != version => refs.into_iter().for_each(|r| ctx.trigger(r)),
                Some(_) => {}
                None => refs
                    .into_iter()
                    .filter(|r| ctx.store.get(r).is_some_and(|dj| is_stalled(&dj)))
                    .for_each(|r| ctx.trigger(r)),
            }
        }
    }
}

fn is_stalled(dj: &DeploymentJob) -> bool {
    dj.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == crate::api::condition_type::STALLED && c.status == "True")
    })
}

/// (namespace, Secret name) → the resources that reference it (connectionRef or secretKeyRef).
fn secret_references(
    store: &Store<DeploymentJob>,
) -> HashMap<(String, String), Vec<ObjectRef<DeploymentJob>>> {
    let mut out: HashMap<(String, String), Vec<ObjectRef<DeploymentJob>>> = HashMap::new();
    for dj in store.state() {
        let ns = dj.namespace().unwrap_or_default();
        let mut names: HashSet<String> = HashSet::new();
        if let Some(c) = &dj.spec.connection_ref {
            names.insert(c.name.clone());
        }
        names.extend(script_refs(&dj, ScriptStore::Secret).map(String::from));
        for name in names {
            out.entry((ns.clone(), name)).or_default().push(key_of(&dj));
        }
    }
    out
}

/// The names of the objects of `store` kind a resource reads scripts from.
fn script_refs(dj: &DeploymentJob, store: ScriptStore) -> impl Iterator<Item = &str> {
    dj.spec.job.script_sources().filter_map(move |s| {
        s.target()
            .filter(|(kind, _)| *kind == store)
            .map(|(_, r)| r.name.as_str())
    })
}

/// The resources that read a ConfigMap (for the metadata-only ConfigMap watch).
pub fn configmap_readers(
    store: &Store<DeploymentJob>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<DeploymentJob>> {
    let ns = cm.namespace().unwrap_or_default();
    let name = cm.name_any();
    store
        .state()
        .iter()
        .filter(|dj| dj.namespace().as_deref() == Some(ns.as_str()))
        .filter(|dj| script_refs(dj, ScriptStore::ConfigMap).any(|n| n == name))
        .map(|dj| key_of(dj))
        .collect()
}

/// Watches DeploymentJob events (before the generation filter) for links: when a parent gets
/// its job id its children are re-queued; when a child goes, its parent (which may be waiting
/// to delete) is.
pub struct LinkTap {
    ctx_trigger: Arc<dyn Fn(ObjectRef<DeploymentJob>) + Send + Sync>,
    job_ids: HashMap<ObjectRef<DeploymentJob>, Option<String>>,
    children: HashMap<ObjectRef<DeploymentJob>, HashSet<ObjectRef<DeploymentJob>>>,
    parent_of: HashMap<ObjectRef<DeploymentJob>, ObjectRef<DeploymentJob>>,
}

impl LinkTap {
    pub fn new(trigger: Arc<dyn Fn(ObjectRef<DeploymentJob>) + Send + Sync>) -> Self {
        LinkTap {
            ctx_trigger: trigger,
            job_ids: HashMap::new(),
            children: HashMap::new(),
            parent_of: HashMap::new(),
        }
    }

    pub fn observe(&mut self, event: &watcher::Event<DeploymentJob>) {
        match event {
            watcher::Event::Apply(dj) | watcher::Event::InitApply(dj) => self.applied(dj),
            watcher::Event::Delete(dj) => self.deleted(dj),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    fn applied(&mut self, dj: &DeploymentJob) {
        let key = key_of(dj);
        let ns = dj.namespace().unwrap_or_default();
        let parent = dj
            .spec
            .job
            .linked_job_ref
            .as_ref()
            .map(|r| ObjectRef::new(&r.name).within(&ns));
        match (self.parent_of.get(&key).cloned(), parent) {
            (old, new) if old == new => {}
            (old, new) => {
                if let Some(old) = old
                    && let Some(set) = self.children.get_mut(&old)
                {
                    set.remove(&key);
                }
                match new {
                    Some(p) => {
                        self.children
                            .entry(p.clone())
                            .or_default()
                            .insert(key.clone());
                        self.parent_of.insert(key.clone(), p);
                    }
                    None => {
                        self.parent_of.remove(&key);
                    }
                }
            }
        }
        let job_id = dj.status.as_ref().and_then(|s| s.job_id.clone());
        let before = self.job_ids.insert(key.clone(), job_id.clone());
        if job_id.is_some() && before.flatten() != job_id {
            for child in self.children.get(&key).into_iter().flatten() {
                (self.ctx_trigger)(child.clone());
            }
        }
    }

    fn deleted(&mut self, dj: &DeploymentJob) {
        let key = key_of(dj);
        self.job_ids.remove(&key);
        if let Some(parent) = self.parent_of.remove(&key) {
            if let Some(set) = self.children.get_mut(&parent) {
                set.remove(&key);
            }
            (self.ctx_trigger)(parent);
        }
    }
}
