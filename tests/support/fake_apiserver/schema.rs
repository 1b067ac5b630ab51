//! A CRD's structural schema, applied to every write of its resources the way the API server
//! applies it: prune unknown fields (keeping those under `x-kubernetes-preserve-unknown-fields`)
//! and `null`s of non-nullable fields, apply defaults, validate the structure, then run the
//! `x-kubernetes-validations` CEL rules (with the stored object as `oldSelf`).
//!
//! Pruning is the operator's own (`controller::crd_check::prune`, which it uses to compare
//! status as the server keeps it), the structural checks are the CLI's
//! (`api::validate::schema_problems`) and the CEL rules run on kube's `cel` feature — the same
//! code paths, fed the schema of whichever CRD the test installed.

use kube::core::cel::{CompiledSchema, apply_defaults, compile_schema, validate_compiled};
use serde_json::Value;

/// One CRD's schema (the storage version's `openAPIV3Schema`), with its CEL rules compiled.
pub struct CrdSchema {
    pub root: Value,
    compiled: CompiledSchema,
}

impl std::fmt::Debug for CrdSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdSchema").finish_non_exhaustive()
    }
}

/// How a list merges under server-side apply (`x-kubernetes-list-type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListKind {
    Atomic,
    Set,
    /// `map`, with its `x-kubernetes-list-map-keys`.
    Map(Vec<String>),
}

/// The list kind a schema node declares (atomic when it is not an array or says nothing).
pub fn list_kind(node: Option<&Value>) -> ListKind {
    let Some(node) = node else {
        return ListKind::Atomic;
    };
    match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListKind::Set,
        Some("map") => ListKind::Map(
            node.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListKind::Atomic,
    }
}

/// The schema of a child: a declared property, or the map values of `additionalProperties`.
pub fn child<'a>(node: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let node = node?;
    node.get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
}

/// The schema of a list's items.
pub fn items(node: Option<&Value>) -> Option<&Value> {
    node?.get("items")
}

impl CrdSchema {
    /// The storage version's schema of a CRD (as JSON), if it declares one.
    pub fn from_crd(crd: &Value) -> Option<CrdSchema> {
        let versions = crd.pointer("/spec/versions")?.as_array()?;
        let version = versions
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .or_else(|| versions.first())?;
        let root = version.pointer("/schema/openAPIV3Schema")?.clone();
        let compiled = compile_schema(&root);
        Some(CrdSchema { root, compiled })
    }

    /// Prunes and defaults `obj` in place, then validates it; the causes, as `(field,
    /// message)` in the API server's wording, are empty when the object may be stored.
    pub fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Vec<(String, String)> {
        if let Some(map) = obj.as_object_mut() {
            for (key, value) in map.iter_mut() {
                // apiVersion, kind and metadata are the server's, not the schema's.
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(node) = child(Some(&self.root), key) {
                    qpm_operator::controller::crd_check::prune(node, value);
                }
            }
            let declared = self.root.get("properties").and_then(Value::as_object);
            map.retain(|k, v| {
                matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    || declared.is_some_and(|d| d.contains_key(k)) && !v.is_null()
            });
        }
        let metadata = obj.get("metadata").cloned();
        let mut defaulted = apply_defaults(&self.root, obj);
        // Defaults never reach into metadata (the schema's `metadata` node has none anyway).
        if let (Some(m), Some(map)) = (metadata, defaulted.as_object_mut()) {
            map.insert("metadata".into(), m);
        }
        *obj = defaulted;
        let structural: Vec<(String, String)> =
            qpm_operator::api::validate::schema_problems(&self.root, obj)
                .into_iter()
                .filter(|p| !p.path.starts_with("metadata"))
                .map(|p| (p.path, server_wording(&p.message)))
                .collect();
        if !structural.is_empty() {
            return structural;
        }
        match validate_compiled(&self.compiled, obj, old) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| {
                    (
                        e.field_path.clone(),
                        format!("Invalid value: \"object\": {}", e.message),
                    )
                })
                .collect(),
        }
    }
}

/// The operator's messages, prefixed the way the API server words its causes (`Required
/// value`, `Unsupported value`, `Invalid value`), which is also what decides their reason.
fn server_wording(message: &str) -> String {
    if message.starts_with("required field is missing") {
        format!("Required value: {message}")
    } else if message.starts_with("must be one of") {
        format!("Unsupported value: {message}")
    } else if message.starts_with("must have at most") {
        format!("Too many: {message}")
    } else if message.starts_with("must be at most") && message.contains("characters") {
        format!("Too long: {message}")
    } else if message.starts_with("duplicate") {
        format!("Duplicate value: {message}")
    } else {
        format!("Invalid value: {message}")
    }
}
