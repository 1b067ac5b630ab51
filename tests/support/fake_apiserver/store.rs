//! The object store and every write rule: resourceVersions, generation, uid, finalizers and
//! deletionTimestamp, the status subresource, preconditions, patches and server-side apply.
//! Everything here runs under the server's one lock, so each request is atomic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::log::{Fault, PatchType, RequestRecord};
use super::registry::{Registry, ResourceType};
use super::schema::CrdSchema;
use super::selector::Selectors;
use super::ssa::{self, ManagerEntry};
use super::validate;

/// One stored object and its field owners.
#[derive(Clone, Debug)]
pub struct Stored {
    pub obj: Value,
    pub managers: Vec<ManagerEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, kept in the history watches resume from.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    /// `""` for cluster-scoped objects.
    pub namespace: String,
    pub kind: ChangeType,
    /// The object before a modification (selectors decide ADDED/MODIFIED/DELETED from both).
    pub old: Option<Value>,
    pub object: Value,
    /// When it happened (a lagging watch delivers it later).
    pub at: Instant,
}

#[derive(Clone, Debug)]
pub enum WatchMsg {
    Change(Arc<Change>),
    /// `compact()` was called: every open watch ends with 410 Gone.
    Compacted,
}

/// The rest of a paginated list, frozen at the resourceVersion of its first page.
struct Snapshot {
    rv: u64,
    group: String,
    plural: String,
    items: VecDeque<Value>,
}

/// Addresses one request: the resource type, the version asked for, and where.
#[derive(Clone, Debug)]
pub struct Target {
    pub rt: Arc<ResourceType>,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    fn key(&self) -> (String, String) {
        (
            self.namespace.clone().unwrap_or_default(),
            self.name().to_string(),
        )
    }

    fn type_key(&self) -> (String, String) {
        (self.rt.group.clone(), self.rt.plural.clone())
    }

    fn api_version(&self) -> String {
        self.rt.api_version(&self.version)
    }
}

/// Who writes and how.
#[derive(Clone, Debug, Default)]
pub struct WriteCtx {
    /// `fieldManager` from the query.
    pub field_manager: Option<String>,
    /// The manager recorded when none is given: the User-Agent's product name, as the real
    /// server does.
    pub default_manager: String,
    pub dry_run: bool,
    pub force: bool,
}

impl WriteCtx {
    fn manager(&self) -> &str {
        self.field_manager
            .as_deref()
            .unwrap_or(&self.default_manager)
    }
}

/// List query parameters.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub selectors: Selectors,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

enum Ownership {
    /// Work out ownership from what the write changed.
    Update,
    /// Already worked out (server-side apply).
    Precomputed(Vec<ManagerEntry>),
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(key)?.as_str()
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn set_or_remove(obj: &mut Value, key: &str, value: Option<Value>) {
    if let Some(map) = obj.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(key.to_string(), v);
            }
            None => {
                map.remove(key);
            }
        }
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// The object without what the server rewrites on every write, to tell real changes from no-ops.
fn without_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

/// What `metadata.generation` follows: everything but metadata (and status, when status is
/// a subresource).
fn generation_view(rt: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        if rt.status_subresource {
            m.remove("status");
        }
    }
    o
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

fn is_crd_type(rt: &ResourceType) -> bool {
    is_crd_type_key(&rt.group, &rt.plural)
}

fn is_crd_type_key(group: &str, plural: &str) -> bool {
    group == "apiextensions.k8s.io" && plural == "customresourcedefinitions"
}

fn is_namespace_type(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "namespaces"
}

/// The finalizer the real server puts on every CRD, removed once its objects are gone.
const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn conflict_error(rt: &ResourceType, name: &str, conflicts: &[ssa::Conflict]) -> ApiError {
    let mut by_manager: Vec<(String, String, Vec<String>)> = Vec::new();
    for c in conflicts {
        let path = ssa::dotted(&c.path);
        match by_manager.iter_mut().find(|(m, _, _)| *m == c.manager) {
            Some((_, _, paths)) => paths.push(path),
            None => by_manager.push((c.manager.clone(), c.api_version.clone(), vec![path])),
        }
    }
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(m, av, paths)| {
            if paths.len() == 1 {
                format!("conflict with \"{m}\" using {av}: {}", paths[0])
            } else {
                let list: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
                format!("conflicts with \"{m}\" using {av}:\n{}", list.join("\n"))
            }
        })
        .collect();
    let n = conflicts.len();
    let message = format!(
        "Apply failed with {n} conflict{}: {}",
        if n == 1 { "" } else { "s" },
        parts.join("\n")
    );
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                "field": ssa::dotted(&c.path),
            })
        })
        .collect();
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(Box::new(
        json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": causes}),
    ));
    e
}

/// Applies an RFC 6902 patch the way the real server's library does, where a `test` of `null`
/// against a missing path succeeds (kube's finalizer helper relies on that).
fn apply_json_patch(doc: &mut Value, ops: &json_patch::Patch) -> Result<(), ApiError> {
    for op in &ops.0 {
        if let json_patch::PatchOperation::Test(t) = op
            && t.value.is_null()
            && doc.pointer(t.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|e| {
            let cause = match e.kind {
                json_patch::PatchErrorKind::TestFailed => {
                    format!("testing value {} failed: test failed", e.path)
                }
                kind => format!("{op} failed at {}: {kind}", e.path),
            };
            ApiError::patch_unprocessable(cause)
        })?;
    }
    Ok(())
}

/// The whole server state.
pub struct State {
    pub rv: u64,
    pub registry: Registry,
    objects: HashMap<(String, String), BTreeMap<(String, String), Stored>>,
    pub history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Watches and continue tokens from a resourceVersion below this get 410 Gone.
    pub floor: u64,
    snapshots: BTreeMap<u64, Snapshot>,
    next_snapshot: u64,
    pub log: Vec<RequestRecord>,
    pub faults: Vec<Fault>,
    pub events: broadcast::Sender<WatchMsg>,
    /// The schemas of the registered CRDs, keyed like `objects`.
    schemas: HashMap<(String, String), Arc<CrdSchema>>,
    /// Reads from the "watch cache" (lists at resourceVersion 0, watches) are this far behind.
    pub lag: Option<Duration>,
}

const MAX_SNAPSHOTS: usize = 64;
/// The manager the server itself writes as (namespaces at start, CRD registration).
pub const SERVER_MANAGER: &str = "fake-apiserver";

impl State {
    pub fn new(history_limit: usize, watch_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(watch_buffer.max(16));
        let mut state = Self {
            rv: 1,
            registry: Registry::with_builtins(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            floor: 0,
            snapshots: BTreeMap::new(),
            next_snapshot: 1,
            log: Vec::new(),
            faults: Vec::new(),
            events,
            schemas: HashMap::new(),
            lag: None,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            // The four namespaces every cluster has; creating them cannot fail.
            let _ = state.ensure_namespace(ns);
        }
        state
    }

    fn target_for(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Option<Target> {
        let rt = self.registry.find(group, plural)?;
        Some(Target {
            version: rt.storage_version().to_string(),
            rt,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: None,
        })
    }

    /// Creates a namespace as the server itself (not logged, not faulted).
    pub fn ensure_namespace(&mut self, name: &str) -> Result<(), ApiError> {
        let t = self
            .target_for("", "namespaces", None, None)
            .ok_or_else(ApiError::unknown_resource)?;
        if self.namespace_exists(name) {
            return Ok(());
        }
        let ctx = WriteCtx {
            default_manager: SERVER_MANAGER.to_string(),
            ..WriteCtx::default()
        };
        self.create_object(
            &t,
            json!({"metadata": {"name": name}}),
            Ownership::Update,
            &ctx,
        )?;
        Ok(())
    }

    /// Stores (or updates) a CRD as the server itself; registering its resource follows.
    pub fn put_crd(&mut self, crd: Value) -> Result<(), ApiError> {
        let name = meta_str(&crd, "name")
            .ok_or_else(|| ApiError::bad_request("the CRD has no metadata.name"))?
            .to_string();
        let mut t = self
            .target_for(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                Some(&name),
            )
            .ok_or_else(ApiError::unknown_resource)?;
        let ctx = WriteCtx {
            default_manager: SERVER_MANAGER.to_string(),
            ..WriteCtx::default()
        };
        match self.stored(&t) {
            Ok(old) => {
                let mut candidate = crd;
                if let Some(m) = candidate.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                self.commit_modify(&t, old, candidate, Ownership::Update, &ctx)?;
            }
            Err(_) => {
                t.name = None;
                self.create_object(&t, crd, Ownership::Update, &ctx)?;
            }
        }
        Ok(())
    }

    /// Consumes one armed fault matching `record`, if any, as the error to answer with.
    pub fn take_fault(&mut self, record: &RequestRecord) -> Option<ApiError> {
        let idx = self
            .faults
            .iter()
            .position(|f| f.remaining > 0 && (f.matches)(record))?;
        let fault = &mut self.faults[idx];
        fault.remaining -= 1;
        let message = fault.message.clone().unwrap_or_else(|| {
            format!(
                "injected fault: {} {} answered {}",
                record.verb, record.path, fault.status
            )
        });
        let err = ApiError::new(fault.status, ApiError::reason_for(fault.status), message);
        if fault.remaining == 0 {
            self.faults.remove(idx);
        }
        Some(err)
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    /// A stored object, read without logging (for tests that peek).
    pub fn peek(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.objects
            .get(&(group.to_string(), plural.to_string()))?
            .get(&(namespace.unwrap_or("").to_string(), name.to_string()))
            .map(|s| s.obj.clone())
    }

    fn stored(&self, t: &Target) -> Result<Stored, ApiError> {
        self.objects
            .get(&t.type_key())
            .and_then(|m| m.get(&t.key()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&t.rt, t.name()))
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(evicted) = self.history.pop_front() {
                self.floor = evicted.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(WatchMsg::Change(change));
    }

    /// Forgets the watch history: every open watch ends with 410 Gone, and resuming from any
    /// resourceVersion older than now answers 410 Gone, so clients must relist.
    pub fn compact(&mut self) {
        self.floor = self.rv;
        self.history.clear();
        self.snapshots.clear();
        let _ = self.events.send(WatchMsg::Compacted);
    }

    /// Objects of `t`'s type (in `t`'s namespace, if any) matching `sel`, in key order.
    pub fn matching(&self, t: &Target, sel: &Selectors) -> Vec<Value> {
        let Some(objects) = self.objects.get(&t.type_key()) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
            .map(|(_, s)| &s.obj)
            .filter(|o| sel.matches(o))
            .cloned()
            .collect()
    }

    fn finish(obj: &mut Value, managers: &[ManagerEntry], rv: Option<u64>) {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            if let Some(rv) = rv {
                meta.insert("resourceVersion".into(), json!(rv.to_string()));
            }
            if managers.is_empty() {
                meta.remove("managedFields");
            } else {
                meta.insert("managedFields".into(), ssa::render(managers));
            }
        }
    }

    /// Server-side rewrites of particular kinds.
    fn server_transforms(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        creating: bool,
    ) -> Result<(), ApiError> {
        if rt.group.is_empty() && rt.plural == "secrets" {
            let map = obj
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("not an object"))?;
            if let Some(string_data) = map.remove("stringData") {
                let entries = string_data
                    .as_object()
                    .ok_or_else(|| ApiError::bad_request("stringData must be a map of strings"))?
                    .clone();
                let data = map.entry("data").or_insert_with(|| json!({}));
                if data.is_null() {
                    *data = json!({});
                }
                let data = data
                    .as_object_mut()
                    .ok_or_else(|| ApiError::bad_request("data must be a map of strings"))?;
                for (k, v) in entries {
                    let s = v.as_str().ok_or_else(|| {
                        ApiError::bad_request(format!("stringData.{k} must be a string"))
                    })?;
                    data.insert(k, json!(STANDARD.encode(s)));
                }
            }
            if let Some(data) = map.get("data").and_then(Value::as_object) {
                for (k, v) in data {
                    let ok = v.as_str().is_some_and(|s| STANDARD.decode(s).is_ok());
                    if !ok {
                        return Err(ApiError::bad_request(format!(
                            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data.{k}"
                        )));
                    }
                }
            }
            if creating && !map.contains_key("type") {
                map.insert("type".into(), json!("Opaque"));
            }
        }
        if rt.group.is_empty() && rt.plural == "namespaces" && creating {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        if is_crd_type(rt) {
            let parsed = ResourceType::from_crd(obj).map_err(|e| {
                ApiError::invalid(
                    rt,
                    meta_str(obj, "name").unwrap_or(""),
                    &[("spec".into(), e)],
                )
            })?;
            let expected = format!("{}.{}", parsed.plural, parsed.group);
            if meta_str(obj, "name") != Some(expected.as_str()) {
                return Err(ApiError::invalid(
                    rt,
                    meta_str(obj, "name").unwrap_or(""),
                    &[(
                        "metadata.name".into(),
                        format!(
                            "Invalid value: must be spec.names.plural+\".\"+spec.group ({expected})"
                        ),
                    )],
                ));
            }
            if !is_deleting(obj) && !finalizers(obj).iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
                let meta = meta_mut(obj)?;
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(json!(CRD_CLEANUP_FINALIZER));
                }
            }
            let time = now();
            obj["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": time},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": time},
                ],
                "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or(Value::Null),
                "storedVersions": [parsed.storage_version()],
            });
        }
        Ok(())
    }

    fn after_commit(&mut self, rt: &ResourceType, obj: &Value) {
        if is_crd_type(rt)
            && let Ok(parsed) = ResourceType::from_crd(obj)
        {
            let key = (parsed.group.clone(), parsed.plural.clone());
            match CrdSchema::from_crd(obj) {
                Some(schema) => {
                    self.schemas.insert(key, Arc::new(schema));
                }
                None => {
                    self.schemas.remove(&key);
                }
            }
            self.registry.insert(parsed);
        }
    }

    pub fn schema_root(&self, group: &str, plural: &str) -> Option<Value> {
        self.schemas
            .get(&(group.to_string(), plural.to_string()))
            .map(|s| s.root.clone())
    }

    /// The schema writes to `rt` are admitted against, if its CRD has one.
    fn schema_for(&self, rt: &ResourceType) -> Option<Arc<CrdSchema>> {
        self.schemas
            .get(&(rt.group.clone(), rt.plural.clone()))
            .cloned()
    }

    fn namespace_terminating(&self, ns: &str) -> bool {
        self.peek("", "namespaces", None, ns)
            .is_some_and(|n| is_deleting(&n))
    }

    /// The CRD that defines `rt` is being deleted.
    fn type_terminating(&self, rt: &ResourceType) -> bool {
        !rt.group.is_empty()
            && self
                .peek(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    None,
                    &format!("{}.{}", rt.plural, rt.group),
                )
                .is_some_and(|c| is_deleting(&c))
    }

    /// Deletes an object as the server's own controllers do (namespace and CRD cleanup).
    fn server_delete(&mut self, group: &str, plural: &str, namespace: Option<&str>, name: &str) {
        let Some(t) = self.target_for(group, plural, namespace, Some(name)) else {
            return;
        };
        let ctx = WriteCtx {
            default_manager: SERVER_MANAGER.to_string(),
            ..WriteCtx::default()
        };
        // Already gone or already marked: nothing more to do for it.
        let _ = self.delete(&t, b"", &ctx);
    }

    /// Removes an object outright (the last step of a namespace's or a CRD's deletion).
    fn server_remove(&mut self, group: &str, plural: &str, key: (String, String)) {
        let Some(stored) = self
            .objects
            .get_mut(&(group.to_string(), plural.to_string()))
            .and_then(|m| m.remove(&key))
        else {
            return;
        };
        let rv = self.next_rv();
        let mut gone = stored.obj;
        Self::finish(&mut gone, &stored.managers, Some(rv));
        self.publish(Change {
            rv,
            group: group.to_string(),
            plural: plural.to_string(),
            namespace: key.0,
            kind: ChangeType::Deleted,
            old: None,
            object: gone,
            at: Instant::now(),
        });
    }

    /// The namespace controller: delete everything in `ns`; objects with finalizers wait for
    /// them, and the namespace goes once it is empty.
    fn sweep_namespace(&mut self, ns: &str) {
        let mut doomed = Vec::new();
        for ((group, plural), objects) in &self.objects {
            for (key, _) in objects.iter().filter(|((n, _), _)| n == ns) {
                doomed.push((group.clone(), plural.clone(), key.1.clone()));
            }
        }
        for (group, plural, name) in doomed {
            self.server_delete(&group, &plural, Some(ns), &name);
        }
        self.finish_namespace(ns);
    }

    fn finish_namespace(&mut self, ns: &str) {
        if !self.namespace_terminating(ns) {
            return;
        }
        let empty = self.objects.iter().all(|((g, p), objects)| {
            (g.is_empty() && p == "namespaces") || !objects.keys().any(|(n, _)| n == ns)
        });
        if empty {
            self.server_remove("", "namespaces", (String::new(), ns.to_string()));
        }
    }

    /// The CRD finalizer: delete every object of the type; the CRD goes once none is left,
    /// and with it the resource.
    fn sweep_type(&mut self, crd: &Value) {
        let Ok(rt) = ResourceType::from_crd(crd) else {
            return;
        };
        let doomed: Vec<(String, String)> = self
            .objects
            .get(&(rt.group.clone(), rt.plural.clone()))
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, name) in doomed {
            let ns = (!ns.is_empty()).then_some(ns);
            self.server_delete(&rt.group, &rt.plural, ns.as_deref(), &name);
        }
        self.finish_type(&rt.group, &rt.plural);
    }

    fn finish_type(&mut self, group: &str, plural: &str) {
        let crd_name = format!("{plural}.{group}");
        let terminating = self
            .peek(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                &crd_name,
            )
            .is_some_and(|c| is_deleting(&c));
        let key = (group.to_string(), plural.to_string());
        if !terminating || self.objects.get(&key).is_some_and(|m| !m.is_empty()) {
            return;
        }
        self.schemas.remove(&key);
        self.registry.remove(group, plural);
        self.server_remove(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            (String::new(), crd_name),
        );
    }

    /// After an object left the store: a namespace or a CRD waiting for it may go now.
    fn after_removal(&mut self, group: &str, plural: &str, namespace: &str) {
        if !namespace.is_empty() {
            self.finish_namespace(namespace);
        }
        if !group.is_empty() && !is_crd_type_key(group, plural) {
            self.finish_type(group, plural);
        }
    }

    pub fn get(&self, t: &Target) -> Result<Value, ApiError> {
        Ok(self.stored(t)?.obj)
    }

    /// What a lagging watch cache holds: the objects of `t` as they were `lag` ago, and the
    /// resourceVersion of that state (a watch from it replays what came after).
    fn stale_view(&self, t: &Target, sel: &Selectors, lag: Duration) -> (u64, Vec<Value>) {
        let cutoff = Instant::now().checked_sub(lag);
        let recent: Vec<&Arc<Change>> = self
            .history
            .iter()
            .filter(|c| cutoff.is_none_or(|cut| c.at > cut))
            .collect();
        let Some(first) = recent.first() else {
            return (self.rv, self.matching(t, sel));
        };
        let rv = first.rv - 1;
        let mut view: BTreeMap<(String, String), Value> = self
            .objects
            .get(&t.type_key())
            .map(|m| m.iter().map(|(k, s)| (k.clone(), s.obj.clone())).collect())
            .unwrap_or_default();
        for c in recent.iter().rev() {
            if c.group != t.rt.group || c.plural != t.rt.plural {
                continue;
            }
            let name = meta_str(&c.object, "name").unwrap_or("").to_string();
            let key = (c.namespace.clone(), name);
            match (c.kind, &c.old) {
                (ChangeType::Added, _) => {
                    view.remove(&key);
                }
                (ChangeType::Modified, Some(old)) => {
                    view.insert(key, old.clone());
                }
                (ChangeType::Modified, None) => {}
                (ChangeType::Deleted, _) => {
                    view.insert(key, c.object.clone());
                }
            }
        }
        let items = view
            .into_iter()
            .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
            .map(|(_, o)| o)
            .filter(|o| sel.matches(o))
            .collect();
        (rv, items)
    }

    pub fn list(&mut self, t: &Target, q: &ListQuery) -> Result<Value, ApiError> {
        let lagging = self
            .lag
            .filter(|_| q.continue_token.is_none() && q.resource_version.as_deref() == Some("0"));
        let (rv, items, continue_token, remaining) = match &q.continue_token {
            None if lagging.is_some() => {
                // The watch cache ignores `limit` for resourceVersion=0 and answers in one page.
                let lag = lagging.unwrap_or_default();
                let (rv, items) = self.stale_view(t, &q.selectors, lag);
                (rv, items.into(), None, None)
            }
            Some(token) => self.continue_list(t, token, q.limit)?,
            None => {
                if q.resource_version_match.as_deref() == Some("Exact")
                    && let Some(rv) = &q.resource_version
                    && rv != &self.rv.to_string()
                {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        self.rv
                    )));
                }
                let mut items: VecDeque<Value> = self.matching(t, &q.selectors).into();
                match q.limit {
                    Some(limit) if limit > 0 && items.len() > limit => {
                        let rest = items.split_off(limit);
                        let remaining = rest.len();
                        let id = self.next_snapshot;
                        self.next_snapshot += 1;
                        self.snapshots.insert(
                            id,
                            Snapshot {
                                rv: self.rv,
                                group: t.rt.group.clone(),
                                plural: t.rt.plural.clone(),
                                items: rest,
                            },
                        );
                        while self.snapshots.len() > MAX_SNAPSHOTS {
                            self.snapshots.pop_first();
                        }
                        (
                            self.rv,
                            items,
                            Some(Self::token(id, self.rv)),
                            Some(remaining),
                        )
                    }
                    _ => (self.rv, items, None, None),
                }
            }
        };
        let av = t.api_version();
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut o| {
                o["apiVersion"] = json!(av);
                o
            })
            .collect();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(c) = continue_token {
            metadata["continue"] = json!(c);
        }
        if let Some(r) = remaining {
            metadata["remainingItemCount"] = json!(r);
        }
        Ok(json!({"apiVersion": av, "kind": t.rt.list_kind, "metadata": metadata, "items": items}))
    }

    fn token(id: u64, rv: u64) -> String {
        URL_SAFE_NO_PAD.encode(json!({"id": id, "rv": rv}).to_string())
    }

    #[allow(clippy::type_complexity)]
    fn continue_list(
        &mut self,
        t: &Target,
        token: &str,
        limit: Option<usize>,
    ) -> Result<(u64, VecDeque<Value>, Option<String>, Option<usize>), ApiError> {
        let expired = || {
            ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            )
        };
        let id = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("id").and_then(Value::as_u64))
            .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
        let Some(mut snap) = self.snapshots.remove(&id) else {
            return Err(expired());
        };
        if snap.rv < self.floor {
            return Err(expired());
        }
        if snap.group != t.rt.group || snap.plural != t.rt.plural {
            return Err(ApiError::bad_request(
                "continue key is for another resource",
            ));
        }
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let page: VecDeque<Value> = if snap.items.len() > limit {
            let rest = snap.items.split_off(limit);
            std::mem::replace(&mut snap.items, rest)
        } else {
            std::mem::take(&mut snap.items)
        };
        let rv = snap.rv;
        if snap.items.is_empty() {
            Ok((rv, page, None, None))
        } else {
            let remaining = snap.items.len();
            self.snapshots.insert(id, snap);
            Ok((rv, page, Some(Self::token(id, rv)), Some(remaining)))
        }
    }

    fn check_type(t: &Target, obj: &mut Value, required: bool) -> Result<(), ApiError> {
        let expected_av = t.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            Some(av) if av != expected_av => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({expected_av})"
                )));
            }
            None if required => {
                return Err(ApiError::bad_request(format!(
                    "apiVersion must be set to {expected_av} in an apply patch"
                )));
            }
            _ => {}
        }
        match obj.get("kind").and_then(Value::as_str) {
            Some(k) if k != t.rt.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    t.rt.kind
                )));
            }
            None if required => {
                return Err(ApiError::bad_request(format!(
                    "Object 'Kind' is missing: kind must be set to {} in an apply patch",
                    t.rt.kind
                )));
            }
            _ => {}
        }
        Ok(())
    }

    fn check_body_name(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
        let url_name = t.name().to_string();
        let meta = meta_mut(obj)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != url_name => Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({url_name})"
            ))),
            _ => {
                meta.insert("name".into(), json!(url_name));
                Ok(())
            }
        }
    }

    pub fn create(&mut self, t: &Target, body: &[u8], ctx: &WriteCtx) -> Result<Value, ApiError> {
        let mut obj = parse_object(body)?;
        Self::check_type(t, &mut obj, false)?;
        self.create_object(t, obj, Ownership::Update, ctx)
    }

    fn create_object(
        &mut self,
        t: &Target,
        mut obj: Value,
        own: Ownership,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let rt = t.rt.clone();
        Self::check_type(t, &mut obj, false)?;
        let namespace = if rt.namespaced {
            let ns = t.namespace.clone().ok_or_else(|| {
                ApiError::bad_request(
                    "a namespaced object must be created through its namespace's path",
                )
            })?;
            Some(ns)
        } else {
            None
        };
        let meta = meta_mut(&mut obj)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(n) => n.to_string(),
            None => match meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(prefix) => {
                    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                    let suffix: String = (0..5)
                        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
                        .collect();
                    format!("{prefix}{suffix}")
                }
                None => {
                    return Err(ApiError::invalid(
                        &rt,
                        "",
                        &[(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            },
        };
        meta.insert("name".into(), json!(name));
        match &namespace {
            Some(ns) => {
                if let Some(body_ns) = meta.get("namespace").and_then(Value::as_str)
                    && !body_ns.is_empty()
                    && body_ns != ns
                {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta.insert("namespace".into(), json!(ns));
            }
            None => {
                meta.remove("namespace");
            }
        }
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
            "resourceVersion",
        ] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        if rt.tracks_generation {
            meta.insert("generation".into(), json!(1));
        }
        if let Some(ns) = &namespace
            && !self.namespace_exists(ns)
        {
            return Err(ApiError::namespace_not_found(ns));
        }
        if rt.status_subresource {
            set_or_remove(&mut obj, "status", None);
        }
        obj["apiVersion"] = json!(rt.api_version(rt.storage_version()));
        obj["kind"] = json!(rt.kind);
        self.server_transforms(&rt, &mut obj, true)?;
        let schema = self.schema_for(&rt);
        let mut causes = validate::validate(&rt, &obj, true);
        if let Some(schema) = &schema {
            causes.extend(schema.admit(&mut obj, None));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&rt, &name, &causes));
        }
        if let Some(ns) = &namespace
            && self.namespace_terminating(ns)
        {
            return Err(ApiError::namespace_terminating(&rt, &name, ns));
        }
        if self.type_terminating(&rt) {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "create not allowed while custom resource definition is terminating ({})",
                    rt.group_resource()
                ),
            ));
        }
        let key = (namespace.clone().unwrap_or_default(), name.clone());
        if self
            .objects
            .get(&t.type_key())
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(ApiError::already_exists(&rt, &name));
        }
        let managers = match own {
            Ownership::Update => ssa::record_update(
                None,
                &obj,
                &[],
                ctx.manager(),
                None,
                &t.api_version(),
                &now(),
                schema.as_ref().map(|s| &s.root),
            ),
            Ownership::Precomputed(mut m) => {
                ssa::prune(&mut m, &obj);
                m
            }
        };
        if ctx.dry_run {
            Self::finish(&mut obj, &managers, None);
            return Ok(obj);
        }
        let rv = self.next_rv();
        Self::finish(&mut obj, &managers, Some(rv));
        self.objects.entry(t.type_key()).or_default().insert(
            key.clone(),
            Stored {
                obj: obj.clone(),
                managers,
            },
        );
        self.publish(Change {
            rv,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: key.0,
            kind: ChangeType::Added,
            old: None,
            object: obj.clone(),
            at: Instant::now(),
        });
        self.after_commit(&rt, &obj);
        Ok(obj)
    }

    /// PUT.
    pub fn replace(&mut self, t: &Target, body: &[u8], ctx: &WriteCtx) -> Result<Value, ApiError> {
        let mut obj = parse_object(body)?;
        Self::check_type(t, &mut obj, false)?;
        Self::check_body_name(t, &mut obj)?;
        let old = self.stored(t)?;
        let current_rv = meta_str(&old.obj, "resourceVersion")
            .unwrap_or("")
            .to_string();
        match meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty()) {
            Some(rv) if rv != current_rv => return Err(ApiError::stale(&t.rt, t.name())),
            Some(_) => {}
            None if !t.rt.unconditional_update => {
                return Err(ApiError::invalid(
                    &t.rt,
                    t.name(),
                    &[(
                        "metadata.resourceVersion".into(),
                        "Invalid value: 0x0: must be specified for an update".into(),
                    )],
                ));
            }
            None => {}
        }
        if let Some(uid) = meta_str(&obj, "uid").filter(|s| !s.is_empty())
            && Some(uid) != meta_str(&old.obj, "uid")
        {
            return Err(ApiError::conflict(
                &t.rt,
                t.name(),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old.obj, "uid").unwrap_or("")
                ),
            ));
        }
        self.commit_modify(t, old, obj, Ownership::Update, ctx)
    }

    /// PATCH of any type; the status code is 201 when an apply created the object.
    pub fn patch(
        &mut self,
        t: &Target,
        ptype: PatchType,
        body: &[u8],
        ctx: &WriteCtx,
    ) -> Result<(u16, Value), ApiError> {
        if ptype == PatchType::Apply {
            return self.apply(t, body, ctx);
        }
        if ctx.force {
            return Err(ApiError::invalid(
                &t.rt,
                t.name(),
                &[(
                    "force".into(),
                    "Forbidden: may not be specified for non-apply patch".into(),
                )],
            ));
        }
        let old = self.stored(t)?;
        let mut candidate = old.obj.clone();
        match ptype {
            PatchType::Merge | PatchType::Strategic => {
                let p: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                if !p.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                json_patch::merge(&mut candidate, &p);
            }
            PatchType::Json => {
                let ops: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                apply_json_patch(&mut candidate, &ops)?;
            }
            PatchType::Apply => unreachable!("handled above"),
        }
        if !candidate.is_object() {
            return Err(ApiError::patch_unprocessable(
                "the patched document is not an object".into(),
            ));
        }
        // A resourceVersion in the patched object is an optimistic-concurrency precondition.
        if let Some(rv) = meta_str(&candidate, "resourceVersion")
            && Some(rv) != meta_str(&old.obj, "resourceVersion")
        {
            return Err(ApiError::stale(&t.rt, t.name()));
        }
        Ok((
            200,
            self.commit_modify(t, old, candidate, Ownership::Update, ctx)?,
        ))
    }

    fn apply(&mut self, t: &Target, body: &[u8], ctx: &WriteCtx) -> Result<(u16, Value), ApiError> {
        let Some(manager) = ctx.field_manager.clone() else {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the apply patch is not UTF-8"))?;
        let mut obj: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        };
        if !obj.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
        Self::check_type(t, &mut obj, true)?;
        Self::check_body_name(t, &mut obj)?;
        if let (Some(body_ns), Some(ns)) = (meta_str(&obj, "namespace"), &t.namespace)
            && !body_ns.is_empty()
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if obj
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(ApiError::bad_request(
                "metadata.managedFields must be nil in an apply patch",
            ));
        }
        let sub = t.subresource.as_deref();
        let mut applied = if sub == Some("status") {
            json!({"status": obj.get("status").cloned().unwrap_or_else(|| json!({}))})
        } else {
            let mut a = obj.clone();
            if t.rt.status_subresource {
                set_or_remove(&mut a, "status", None);
            }
            a
        };
        ssa::strip_nulls(&mut applied);
        let schema = self.schema_for(&t.rt);
        let av = t.api_version();
        let now = now();
        match self.stored(t) {
            Ok(old) => {
                if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty())
                    && Some(rv) != meta_str(&old.obj, "resourceVersion")
                {
                    return Err(ApiError::stale(&t.rt, t.name()));
                }
                let outcome = ssa::apply(
                    &old.obj,
                    &old.managers,
                    &applied,
                    &manager,
                    sub,
                    &av,
                    ctx.force,
                    &now,
                    schema.as_ref().map(|s| &s.root),
                )
                .map_err(|c| conflict_error(&t.rt, t.name(), &c))?;
                Ok((
                    200,
                    self.commit_modify(
                        t,
                        old,
                        outcome.object,
                        Ownership::Precomputed(outcome.managers),
                        ctx,
                    )?,
                ))
            }
            Err(not_found) => {
                if sub.is_some() {
                    return Err(not_found);
                }
                let mut base = json!({"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": {"name": t.name()}});
                if let Some(ns) = &t.namespace {
                    base["metadata"]["namespace"] = json!(ns);
                }
                let outcome = ssa::apply(
                    &base,
                    &[],
                    &applied,
                    &manager,
                    None,
                    &av,
                    ctx.force,
                    &now,
                    schema.as_ref().map(|s| &s.root),
                )
                .map_err(|c| conflict_error(&t.rt, t.name(), &c))?;
                Ok((
                    201,
                    self.create_object(
                        t,
                        outcome.object,
                        Ownership::Precomputed(outcome.managers),
                        ctx,
                    )?,
                ))
            }
        }
    }

    /// Every modification of an existing object ends here.
    fn commit_modify(
        &mut self,
        t: &Target,
        old: Stored,
        candidate: Value,
        own: Ownership,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let rt = t.rt.clone();
        let name = t.name().to_string();
        let mut new = candidate;
        if t.subresource.as_deref() == Some("status") {
            let status = new.get("status").cloned();
            new = old.obj.clone();
            set_or_remove(&mut new, "status", status);
        } else if rt.status_subresource {
            set_or_remove(&mut new, "status", old.obj.get("status").cloned());
        }
        {
            let old_meta = old
                .obj
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let meta = meta_mut(&mut new)?;
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "managedFields",
                "name",
                "namespace",
                "generateName",
                "selfLink",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        meta.insert(k.to_string(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
        }
        new["apiVersion"] = old.obj["apiVersion"].clone();
        new["kind"] = old.obj["kind"].clone();
        self.server_transforms(&rt, &mut new, false)?;
        if is_deleting(&old.obj) {
            let before = finalizers(&old.obj);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &rt,
                    &name,
                    &[(
                        "metadata.finalizers".into(),
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    )],
                ));
            }
        }
        let schema = self.schema_for(&rt);
        let mut causes = validate::validate(&rt, &new, false);
        if let Some(schema) = &schema {
            causes.extend(schema.admit(&mut new, Some(&old.obj)));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&rt, &name, &causes));
        }
        if rt.tracks_generation && generation_view(&rt, &new) != generation_view(&rt, &old.obj) {
            let generation = old
                .obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        let managers = match own {
            Ownership::Update => ssa::record_update(
                Some(&old.obj),
                &new,
                &old.managers,
                ctx.manager(),
                t.subresource.as_deref(),
                &t.api_version(),
                &now(),
                schema.as_ref().map(|s| &s.root),
            ),
            Ownership::Precomputed(mut m) => {
                ssa::prune(&mut m, &new);
                m
            }
        };
        // The real server does not write (nor bump resourceVersion) when nothing changed.
        if without_volatile(&new) == without_volatile(&old.obj)
            && ssa::same_ownership(&managers, &old.managers)
        {
            return Ok(old.obj);
        }
        if ctx.dry_run {
            Self::finish(&mut new, &managers, None);
            return Ok(new);
        }
        let rv = self.next_rv();
        Self::finish(&mut new, &managers, Some(rv));
        let key = t.key();
        let gone = is_deleting(&new) && finalizers(&new).is_empty();
        let objects = self.objects.entry(t.type_key()).or_default();
        let kind = if gone {
            objects.remove(&key);
            ChangeType::Deleted
        } else {
            objects.insert(
                key.clone(),
                Stored {
                    obj: new.clone(),
                    managers,
                },
            );
            ChangeType::Modified
        };
        self.publish(Change {
            rv,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: key.0.clone(),
            kind,
            old: (kind == ChangeType::Modified).then(|| old.obj.clone()),
            object: new.clone(),
            at: Instant::now(),
        });
        if gone {
            self.after_removal(&rt.group, &rt.plural, &key.0);
        } else {
            self.after_commit(&rt, &new);
        }
        Ok(new)
    }

    pub fn delete(&mut self, t: &Target, body: &[u8], ctx: &WriteCtx) -> Result<Value, ApiError> {
        let old = self.stored(t)?;
        let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        let dry_run = ctx.dry_run
            || opts
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v == "All"));
        if let Some(pre) = opts.get("preconditions") {
            for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
                if let Some(want) = pre.get(field).and_then(Value::as_str)
                    && Some(want) != meta_str(&old.obj, field)
                {
                    return Err(ApiError::conflict(
                        &t.rt,
                        t.name(),
                        &format!(
                            "Precondition failed: {label} in precondition: {want}, {label} in object meta: {}",
                            meta_str(&old.obj, field).unwrap_or("")
                        ),
                    ));
                }
            }
        }
        let rt = t.rt.clone();
        let key = t.key();
        // A namespace always waits for its content (its `spec.finalizers` hold it), as does
        // anything with finalizers.
        let namespace = is_namespace_type(&rt);
        if namespace || !finalizers(&old.obj).is_empty() {
            if is_deleting(&old.obj) {
                return Ok(old.obj);
            }
            let mut new = old.obj.clone();
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if namespace {
                new["status"] = json!({"phase": "Terminating"});
            }
            if rt.tracks_generation {
                // The real server bumps generation when it marks an object for deletion, which is
                // how generation-filtered controllers still see the deletion.
                let generation = old
                    .obj
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                new["metadata"]["generation"] = json!(generation + 1);
            }
            if dry_run {
                return Ok(new);
            }
            let rv = self.next_rv();
            Self::finish(&mut new, &old.managers, Some(rv));
            self.objects.entry(t.type_key()).or_default().insert(
                key.clone(),
                Stored {
                    obj: new.clone(),
                    managers: old.managers.clone(),
                },
            );
            self.publish(Change {
                rv,
                group: rt.group.clone(),
                plural: rt.plural.clone(),
                namespace: key.0,
                kind: ChangeType::Modified,
                old: Some(old.obj),
                object: new.clone(),
                at: Instant::now(),
            });
            if namespace {
                self.sweep_namespace(t.name());
            }
            if is_crd_type(&rt) {
                self.sweep_type(&new);
            }
            return Ok(self.stored(t).map(|s| s.obj).unwrap_or(new));
        }
        if dry_run {
            return Ok(old.obj);
        }
        let rv = self.next_rv();
        let mut gone = old.obj.clone();
        Self::finish(&mut gone, &old.managers, Some(rv));
        if let Some(m) = self.objects.get_mut(&t.type_key()) {
            m.remove(&key);
        }
        self.publish(Change {
            rv,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: key.0.clone(),
            kind: ChangeType::Deleted,
            old: None,
            object: gone.clone(),
            at: Instant::now(),
        });
        self.after_removal(&rt.group, &rt.plural, &key.0);
        Ok(gone)
    }
}
