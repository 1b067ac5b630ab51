//! The installed CRD, compared with this binary's own.
//!
//! The API server prunes whatever the installed schema does not declare, silently. When the
//! installed CRD is older than the operator (the common upgrade mistake), what the operator
//! must read back — `status.pendingCreate` above all, the guard against a duplicate create —
//! would vanish on every write. So the operator reads the installed CRD (one object, by name)
//! at start and follows its changes, and while a status field it writes is missing:
//! - it says so: a warning in the log, the gauge `qpm_crd_missing_fields`, and the reason
//!   `CrdMismatch` on every resource it would otherwise change in Qualys;
//! - it changes nothing in Qualys (no create, no update); deletion still proceeds, and
//!   `/readyz` stays ready so that it can;
//! - it compares status only as the installed schema keeps it, so it never rewrites a status
//!   the server keeps pruning;
//! - once the CRD is upgraded, it re-queues every resource and carries on by itself.

use super::metrics::Metrics;
use crate::api::{DeploymentJob, DeploymentJobStatus};
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Map, Value};
use std::sync::{Arc, RwLock};

/// The name of the DeploymentJob CRD.
pub const CRD_NAME: &str = "deploymentjobs.pm.qualys.io";

/// What is known of the installed CRD.
#[derive(Debug, Default)]
pub struct InstalledCrd {
    view: RwLock<View>,
}

#[derive(Debug, Default)]
struct View {
    /// The installed `status` schema; `None` until read (or when it cannot be read), and then
    /// status is compared as this binary writes it.
    status_schema: Option<Arc<Value>>,
    /// Status fields this binary writes that the installed schema would prune.
    missing: Vec<String>,
}

impl InstalledCrd {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes in the installed CRD; true when the set of missing fields changed.
    pub fn update(&self, installed: &Value) -> bool {
        let schema = served_schema(installed);
        let ours = crate::api::openapi_schema();
        let mut missing = match schema {
            Some(s) => missing_fields(
                ours.pointer("/properties/status"),
                s.pointer("/properties/status"),
                "status",
            ),
            None => Vec::new(),
        };
        missing.sort();
        let status_schema = schema
            .and_then(|s| s.pointer("/properties/status"))
            .cloned()
            .map(Arc::new);
        let Ok(mut view) = self.view.write() else {
            return false;
        };
        let changed = view.missing != missing;
        view.missing = missing;
        view.status_schema = status_schema;
        changed
    }

    /// Status fields this binary writes that the installed CRD lacks.
    pub fn missing(&self) -> Vec<String> {
        self.view
            .read()
            .map(|v| v.missing.clone())
            .unwrap_or_default()
    }

    /// Why nothing may be changed in Qualys for now, if something is missing.
    pub fn blocked(&self) -> Option<String> {
        let missing = self.missing();
        (!missing.is_empty()).then(|| {
            format!(
                "the installed CRD {CRD_NAME} is older than this operator: it lacks {}, which the API server would drop from every status write \
                 (and with status.pendingCreate the guard against a duplicate create); nothing is created or changed in Qualys until the CRD \
                 of this operator version is applied (kubectl apply --server-side -f crds/deploymentjob.yaml); deletion still works",
                missing.join(", ")
            )
        })
    }

    /// `status` as the API server would store it under the installed schema.
    pub fn as_stored(&self, status: &DeploymentJobStatus) -> DeploymentJobStatus {
        let schema = self.view.read().ok().and_then(|v| v.status_schema.clone());
        let Some(schema) = schema else {
            return status.clone();
        };
        let Ok(mut value) = serde_json::to_value(status) else {
            return status.clone();
        };
        prune(&schema, &mut value);
        serde_json::from_value(value).unwrap_or_else(|_| status.clone())
    }
}

/// The `openAPIV3Schema` of the version objects are stored in.
fn served_schema(crd: &Value) -> Option<&Value> {
    let versions = crd.pointer("/spec/versions")?.as_array()?;
    versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .or_else(|| versions.first())?
        .pointer("/schema/openAPIV3Schema")
}

fn preserves_unknown(node: &Value) -> bool {
    node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || node.get("additionalProperties") == Some(&Value::Bool(true))
}

/// The fields `ours` declares below `path` that `installed` would prune, as dotted paths
/// (`[]` for list items). A field missing as a whole is named once, not its children.
pub fn missing_fields(ours: Option<&Value>, installed: Option<&Value>, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(ours), Some(installed)) = (ours, installed) else {
        if ours.is_some() {
            out.push(path.to_string());
        }
        return out;
    };
    if preserves_unknown(installed) {
        return out;
    }
    if let Some(props) = ours.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            let theirs = installed.get("properties").and_then(|p| p.get(key));
            out.extend(missing_fields(
                Some(child),
                theirs,
                &format!("{path}.{key}"),
            ));
        }
    }
    if let (Some(a), Some(b)) = (
        ours.get("additionalProperties").filter(|a| a.is_object()),
        installed
            .get("additionalProperties")
            .filter(|a| a.is_object()),
    ) {
        out.extend(missing_fields(Some(a), Some(b), &format!("{path}.*")));
    }
    if let Some(items) = ours.get("items") {
        out.extend(missing_fields(
            Some(items),
            installed.get("items"),
            &format!("{path}[]"),
        ));
    }
    out
}

/// Drops what a structural schema node does not declare (keeping what it marks
/// `x-kubernetes-preserve-unknown-fields`), and `null`s of fields that are not nullable: the
/// pruning the API server applies to every write of a custom resource.
pub fn prune(node: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                return;
            }
            let preserve = preserves_unknown(node);
            let additional = node.get("additionalProperties").filter(|a| a.is_object());
            let properties = node.get("properties").and_then(Value::as_object);
            let mut kept = Map::new();
            for (key, mut child) in std::mem::take(map) {
                match properties.and_then(|p| p.get(&key)).or(additional) {
                    Some(schema) => {
                        if child.is_null() && schema.get("nullable") != Some(&Value::Bool(true)) {
                            continue;
                        }
                        prune(schema, &mut child);
                        kept.insert(key, child);
                    }
                    None if preserve => {
                        kept.insert(key, child);
                    }
                    None => {}
                }
            }
            *map = kept;
        }
        Value::Array(list) => {
            if let Some(items) = node.get("items") {
                for item in list.iter_mut() {
                    prune(items, item);
                }
            }
        }
        _ => {}
    }
}

/// Takes in the installed CRD; when what is missing changed, says so, and once nothing is
/// missing any more re-queues every resource so they carry on by themselves.
fn take(
    crd: &CustomResourceDefinition,
    installed: &InstalledCrd,
    metrics: &Metrics,
    store: Option<&Store<DeploymentJob>>,
    trigger: &dyn Fn(ObjectRef<DeploymentJob>),
) {
    let Ok(value) = serde_json::to_value(crd) else {
        return;
    };
    if !installed.update(&value) {
        return;
    }
    let missing = installed.missing();
    metrics.crd_missing_fields.set(missing.len() as i64);
    match installed.blocked() {
        Some(why) => tracing::error!(missing = ?missing, "{why}"),
        None => {
            tracing::info!(
                "the installed CRD {CRD_NAME} now has every field this operator writes; carrying on"
            );
            for dj in store.map(Store::state).unwrap_or_default() {
                trigger(super::context::key_of(&dj));
            }
        }
    }
}

/// Reads the installed CRD (a get of that one object), before anything is reconciled.
pub async fn read(kube: kube::Client, installed: &InstalledCrd, metrics: &Metrics) {
    let api: Api<CustomResourceDefinition> = Api::all(kube);
    match api.get_opt(CRD_NAME).await {
        Ok(Some(crd)) => take(&crd, installed, metrics, None, &|_| {}),
        Ok(None) => tracing::warn!("the CRD {CRD_NAME} is not installed"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot read the CRD {CRD_NAME}; status is written unchecked (grant get on it so the operator can compare schemas)"
        ),
    }
}

/// Follows the installed CRD (a watch selecting it by name) for as long as the controller runs.
pub async fn follow(
    kube: kube::Client,
    installed: Arc<InstalledCrd>,
    metrics: Arc<Metrics>,
    store: Store<DeploymentJob>,
    trigger: impl Fn(ObjectRef<DeploymentJob>) + Send + 'static,
) {
    let api: Api<CustomResourceDefinition> = Api::all(kube);
    let config = watcher::Config::default().fields(&format!("metadata.name={CRD_NAME}"));
    let mut changes = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    while let Some(event) = changes.next().await {
        match event {
            Ok(crd) => take(&crd, &installed, &metrics, Some(&store), &trigger),
            Err(e) => tracing::debug!(error = %e, "watching the CRD {CRD_NAME}"),
        }
    }
}

/// The status fields the operator owns and compares: everything but conditions of types it
/// does not write (another controller's conditions are left alone and never cause a write).
pub fn owned(status: &DeploymentJobStatus) -> DeploymentJobStatus {
    let mut s = status.clone();
    s.conditions
        .retain(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()));
    s
}

const OWNED_CONDITIONS: &[&str] = &[
    crate::api::condition_type::READY,
    crate::api::condition_type::SYNCED,
    crate::api::condition_type::RECONCILING,
    crate::api::condition_type::STALLED,
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_generated_crd_misses_nothing_and_an_older_one_is_named() {
        let crd = crate::api::crd_value();
        let installed = InstalledCrd::new();
        assert!(!installed.update(&crd));
        assert_eq!(installed.missing(), Vec::<String>::new());
        let mut older = crd.clone();
        let status = older
            .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties")
            .and_then(Value::as_object_mut)
            .unwrap();
        status.remove("pendingCreate");
        status.remove("lastEnabledTime");
        assert!(installed.update(&older));
        assert_eq!(
            installed.missing(),
            vec!["status.lastEnabledTime", "status.pendingCreate"]
        );
        assert!(
            installed
                .blocked()
                .unwrap()
                .contains("status.pendingCreate")
        );
        let full = DeploymentJobStatus {
            job_id: Some("j".into()),
            pending_create: Some(Box::new(crate::api::PendingCreate {
                name: "n".into(),
                platform: "WINDOWS".into(),
                body_digest: "d".into(),
                started_at: "t".into(),
            })),
            ..Default::default()
        };
        let stored = installed.as_stored(&full);
        assert_eq!(stored.job_id.as_deref(), Some("j"));
        assert!(stored.pending_create.is_none());
    }

    #[test]
    fn prune_keeps_preserved_and_drops_undeclared_and_nulls() {
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "string"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "n": {"type": "string", "nullable": true},
            "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}}
        }});
        let mut v =
            json!({"a": null, "b": 1, "free": {"x": 1}, "n": null, "list": [{"k": "1", "z": 2}]});
        prune(&schema, &mut v);
        assert_eq!(
            v,
            json!({"free": {"x": 1}, "n": null, "list": [{"k": "1"}]})
        );
    }

    #[test]
    fn foreign_conditions_are_not_compared() {
        let c = |t: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: t.into(),
            status: "True".into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: crate::controller::status::now(),
        };
        let s = DeploymentJobStatus {
            conditions: vec![c("Ready"), c("example.com/Audited")],
            ..Default::default()
        };
        assert_eq!(owned(&s).conditions.len(), 1);
    }
}
