//! The desired body in comparable form, kept per resource while what it is made from stays the
//! same. Rendering and normalising a spec cost about as much as the rest of a reconcile, yet the
//! result changes only with the spec, the content of its `scriptFrom` scripts, the parent's job
//! id or the parent's post-deploy actions. The cache is keyed by a digest of exactly those
//! inputs, so a ConfigMap edit or a parent re-created under a new id is a miss, never a stale
//! body.
//!
//! Only the comparable value, its digest and the script digests are kept (no rendered body: it
//! holds the scripts' content, and it is rendered again on the rare reconcile that writes).

use super::compare::Compact;
use super::digest::value_digest;
use super::normalise::normalise_desired;
use super::render::{RenderError, RenderInputs, Rendered, ScriptResolver, render};
use crate::api::{JobSpec, ScriptSource};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// The normalised desired body and what the engine records of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The body in comparable form (`normalise_desired`), compact.
    pub value: Compact,
    /// `sha256:` of `value`, recorded as the body last written.
    pub digest: String,
    /// The digests of the managed scripts, by key (`pre[0].script`).
    pub scripts: BTreeMap<String, String>,
}

impl Desired {
    pub fn of(rendered: &Rendered) -> Self {
        let value = normalise_desired(rendered);
        Desired {
            digest: value_digest(&value),
            value: Compact::of(&value),
            scripts: rendered.scripts.clone(),
        }
    }
}

/// A digest of everything `render` reads: two equal fingerprints render the same body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

/// The inputs of `render(spec, inputs)` as a digest, the scripts as `scripts` read them.
/// `None` when a script cannot be read (the render fails, and a failure is not cached).
fn fingerprint(
    spec: &JobSpec,
    inputs: &RenderInputs<'_>,
    scripts: &ReadOnce<'_>,
) -> Option<Fingerprint> {
    let mut h = Sha256::new();
    // Every part is length-prefixed, so no two sequences of parts hash the same bytes.
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(&serde_json::to_vec(spec).ok()?);
    for (_, read) in &scripts.read {
        part(read.as_ref().ok()?);
    }
    match inputs.linked_job_id {
        Some(id) => part(id.as_bytes()),
        None => part(b"\xff"),
    }
    for (item, id) in inputs.parent_post_actions {
        part(item.as_bytes());
        part(id.as_bytes());
    }
    Some(Fingerprint(h.finalize().into()))
}

/// The spec's `scriptFrom` scripts, read once: the fingerprint and the render see the same
/// bytes even if the source changes meanwhile.
struct ReadOnce<'s> {
    read: Vec<(&'s ScriptSource, Result<Vec<u8>, String>)>,
    inner: &'s dyn ScriptResolver,
}

impl<'s> ReadOnce<'s> {
    fn new(spec: &'s JobSpec, inner: &'s dyn ScriptResolver) -> Self {
        let read = spec
            .script_sources()
            .map(|s| (s, inner.resolve(s)))
            .collect();
        ReadOnce { read, inner }
    }
}

impl ScriptResolver for ReadOnce<'_> {
    fn resolve(&self, source: &ScriptSource) -> Result<Vec<u8>, String> {
        match self.read.iter().find(|(s, _)| std::ptr::eq(*s, source)) {
            Some((_, read)) => read.clone(),
            None => self.inner.resolve(source),
        }
    }
}

/// One resource's place in a [`DesiredCache`].
#[derive(Clone, Copy)]
pub struct CacheSlot<'a> {
    pub cache: &'a DesiredCache,
    /// Identifies the resource (the controller uses its uid).
    pub key: &'a str,
}

/// The last desired body of each resource, with the fingerprint it was made from. One entry
/// per resource: an entry is replaced when its inputs change and removed with the resource.
#[derive(Debug, Default)]
pub struct DesiredCache {
    entries: Mutex<HashMap<String, (Fingerprint, Arc<Desired>)>>,
}

impl DesiredCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, key: &str, fp: &Fingerprint) -> Option<Arc<Desired>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(f, _)| f == fp)
            .map(|(_, d)| d.clone())
    }

    fn put(&self, key: &str, fp: Fingerprint, desired: Arc<Desired>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(key) {
            Some(entry) => *entry = (fp, desired),
            None => {
                entries.insert(key.to_string(), (fp, desired));
            }
        }
    }

    /// Drop a resource's entry (it was deleted).
    pub fn forget(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(key);
    }

    /// Keep only the entries of the resources `keep` says still exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|key, _| keep(key));
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The desired body of `spec`, from the cache when its inputs are unchanged; the rendered body
/// too when it had to be rendered.
pub fn desired(
    spec: &JobSpec,
    inputs: &RenderInputs<'_>,
    slot: Option<CacheSlot<'_>>,
) -> Result<(Arc<Desired>, Option<Rendered>), RenderError> {
    let Some(slot) = slot else {
        let rendered = render(spec, inputs)?;
        return Ok((Arc::new(Desired::of(&rendered)), Some(rendered)));
    };
    let scripts = ReadOnce::new(spec, inputs.scripts);
    let fp = fingerprint(spec, inputs, &scripts);
    if let Some(fp) = &fp
        && let Some(hit) = slot.cache.get(slot.key, fp)
    {
        return Ok((hit, None));
    }
    let inputs = RenderInputs {
        scripts: &scripts,
        ..*inputs
    };
    let rendered = render(spec, &inputs)?;
    let desired = Arc::new(Desired::of(&rendered));
    if let Some(fp) = fp {
        slot.cache.put(slot.key, fp, desired.clone());
    }
    Ok((desired, Some(rendered)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A ConfigMap whose content the test changes between reconciles.
    struct Scripts(Mutex<Result<Vec<u8>, String>>);

    impl Scripts {
        fn set(&self, v: Result<&[u8], &str>) {
            *self.0.lock().unwrap() = v.map(<[u8]>::to_vec).map_err(str::to_string);
        }
    }

    impl ScriptResolver for Scripts {
        fn resolve(&self, _: &ScriptSource) -> Result<Vec<u8>, String> {
            self.0.lock().unwrap().clone()
        }
    }

    fn spec(timeout: i32) -> JobSpec {
        serde_json::from_value(json!({
            "name": "cached", "platform": "Windows", "scheduleType": "Daily",
            "startDateTime": "2025-07-01 09:57:18 AM", "timeout": timeout, "timeoutUnit": "HOURS",
            "linkedJobRef": {"name": "parent"},
            "chainedJobRule": [{"threshold": 100, "actionRefs": [{"actionItem": "S1"}]}],
            "postDeployActions": [{"action": "Run Script", "scriptType": "ps",
                "scriptFrom": {"configMapKeyRef": {"name": "scripts", "key": "post.ps1"}},
                "params": {"actionItem": "S1"}}]
        }))
        .unwrap()
    }

    /// What a reconcile of `spec` would compare with, through the cache, and whether it hit.
    fn run(
        cache: &DesiredCache,
        key: &str,
        spec: &JobSpec,
        scripts: &Scripts,
        parent: &str,
        actions: &[(String, String)],
    ) -> (Arc<Desired>, bool) {
        let inputs = RenderInputs {
            linked_job_id: Some(parent),
            parent_post_actions: actions,
            scripts,
        };
        let (got, rendered) = desired(spec, &inputs, Some(CacheSlot { cache, key })).unwrap();
        // Whatever the cache answers equals rendering afresh.
        let fresh = Desired::of(&render(spec, &inputs).unwrap());
        assert_eq!(*got, fresh);
        (got, rendered.is_none())
    }

    #[test]
    fn a_cached_body_is_served_only_while_every_input_is_unchanged() {
        let cache = DesiredCache::new();
        let scripts = Scripts(Mutex::new(Ok(b"Write-Host one".to_vec())));
        let actions = vec![("S1".to_string(), "a-1".to_string())];
        let s = spec(6);
        let (first, hit) = run(&cache, "uid-1", &s, &scripts, "p-1", &actions);
        assert!(!hit);
        let (again, hit) = run(&cache, "uid-1", &s, &scripts, "p-1", &actions);
        assert!(hit, "unchanged inputs are a hit");
        assert!(Arc::ptr_eq(&first, &again));

        // The ConfigMap's script changed: a miss, and the new script's digest.
        scripts.set(Ok(b"Write-Host two"));
        let (changed, hit) = run(&cache, "uid-1", &s, &scripts, "p-1", &actions);
        assert!(!hit);
        assert_ne!(changed.scripts, first.scripts);
        assert_ne!(
            changed.value.member("postDeployActions"),
            first.value.member("postDeployActions")
        );
        // And back: the entry was replaced, so the first content is a miss again.
        scripts.set(Ok(b"Write-Host one"));
        assert!(!run(&cache, "uid-1", &s, &scripts, "p-1", &actions).1);
        assert_eq!(cache.len(), 1, "one entry per resource");

        // The parent was re-created under another id.
        let (moved, hit) = run(&cache, "uid-1", &s, &scripts, "p-2", &actions);
        assert!(!hit);
        assert_eq!(moved.value.member("linkedJobId"), Some(json!("p-2")));

        // The parent's post-deploy action got another id.
        let other = vec![("S1".to_string(), "a-2".to_string())];
        let (rule, hit) = run(&cache, "uid-1", &s, &scripts, "p-2", &other);
        assert!(!hit);
        assert_eq!(
            rule.value
                .member("chainedJobRule")
                .map(|r| r[0]["actionIds"].clone()),
            Some(json!(["a-2"]))
        );

        // The spec changed.
        let (edited, hit) = run(&cache, "uid-1", &spec(7), &scripts, "p-2", &other);
        assert!(!hit);
        assert_eq!(edited.value.member("timeout"), Some(json!(7)));

        // Another resource with the same inputs has its own entry.
        assert!(!run(&cache, "uid-2", &spec(7), &scripts, "p-2", &other).1);
        assert_eq!(cache.len(), 2);
        cache.forget("uid-2");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_unreadable_script_is_an_error_and_is_not_cached() {
        let cache = DesiredCache::new();
        let scripts = Scripts(Mutex::new(Err(
            "ConfigMap \"scripts\" does not exist".into()
        )));
        let actions = vec![("S1".to_string(), "a-1".to_string())];
        let inputs = RenderInputs {
            linked_job_id: Some("p-1"),
            parent_post_actions: &actions,
            scripts: &scripts,
        };
        let slot = Some(CacheSlot {
            cache: &cache,
            key: "uid-1",
        });
        assert!(matches!(
            desired(&spec(6), &inputs, slot),
            Err(RenderError::ScriptUnavailable { .. })
        ));
        assert!(cache.is_empty());
        scripts.set(Ok(b"Write-Host one"));
        assert!(!run(&cache, "uid-1", &spec(6), &scripts, "p-1", &actions).1);
    }

    #[test]
    fn without_a_slot_nothing_is_kept() {
        let scripts = Scripts(Mutex::new(Ok(b"x".to_vec())));
        let actions = vec![("S1".to_string(), "a-1".to_string())];
        let inputs = RenderInputs {
            linked_job_id: Some("p-1"),
            parent_post_actions: &actions,
            scripts: &scripts,
        };
        let (_, rendered) = desired(&spec(6), &inputs, None).unwrap();
        assert!(rendered.is_some());
    }
}
