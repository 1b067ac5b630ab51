//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! The model: every manager entry — keyed by (manager, operation, subresource), as the real
//! server keys them — owns a set of leaf paths. A leaf is a scalar, `null`, an empty object,
//! or a **list: every list is atomic** (owned and replaced whole, including lists the schema
//! marks `x-kubernetes-list-type: map` or `set`). Only `metadata.labels`,
//! `metadata.annotations`, `metadata.finalizers` and `metadata.ownerReferences` are tracked
//! under `metadata`; `apiVersion` and `kind` are not tracked.
//!
//! - An update (POST, PUT, merge/JSON/strategic patch) by M takes every leaf it changed or added
//!   away from the other entries and gives it to (M, Update); leaves it removed leave every entry.
//! - An apply by M sets the leaves it sends, removes the leaves M applied before and no longer
//!   sends unless another entry owns them, and fails with a conflict when it would change the
//!   value of a leaf another entry owns — unless forced, when ownership moves to M.
//! - `null` values in an applied object are dropped before anything else (they neither set nor
//!   own a field).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

pub type FieldPath = Vec<String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagerEntry {
    pub manager: String,
    pub operation: Operation,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<FieldPath>,
}

impl ManagerEntry {
    fn is(&self, manager: &str, operation: Operation, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// Same owners and fields, ignoring timestamps: what decides whether a write changed anything.
pub fn same_ownership(a: &[ManagerEntry], b: &[ManagerEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.manager == y.manager
                && x.operation == y.operation
                && x.subresource == y.subresource
                && x.api_version == y.api_version
                && x.fields == y.fields
        })
}

/// A field the applier would change that another manager owns.
#[derive(Clone, Debug)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: FieldPath,
}

/// `.spec.holderIdentity` style, as conflict messages print paths.
pub fn dotted(path: &FieldPath) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

fn collect(v: &Value, prefix: &mut FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                collect(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone(), v.clone());
        }
    }
}

/// The leaves whose ownership is tracked, with their values.
pub fn tracked_leaves(obj: &Value) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(mv) = v.get(mk) {
                        let mut prefix = vec!["metadata".to_string(), mk.to_string()];
                        if mv.is_object() {
                            collect(mv, &mut prefix, &mut out);
                        } else {
                            out.insert(prefix, mv.clone());
                        }
                    }
                }
            }
            _ => collect(v, &mut vec![k.clone()], &mut out),
        }
    }
    out
}

pub fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.as_object()?.get(k))
}

/// Removes the leaf at `path`, then any parent object left empty that nobody owns.
fn remove_path(obj: &mut Value, path: &[String], owned: &dyn Fn(&[String]) -> bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let removed = parents
        .iter()
        .try_fold(&mut *obj, |v, k| v.as_object_mut()?.get_mut(k))
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(last))
        .is_some();
    if !removed {
        return;
    }
    for depth in (1..parents.len() + 1).rev() {
        let prefix = &parents[..depth];
        if prefix == ["metadata"] || owned(prefix) {
            break;
        }
        let empty = get_path(obj, prefix)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty);
        if !empty {
            break;
        }
        let (leaf, up) = prefix.split_last().expect("depth >= 1");
        if let Some(m) = up
            .iter()
            .try_fold(&mut *obj, |v, k| v.as_object_mut()?.get_mut(k))
            .and_then(Value::as_object_mut)
        {
            m.remove(leaf);
        }
    }
}

/// Objects merge key by key; everything else (scalars, lists) replaces.
pub fn deep_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Drops `null` members of objects, recursively (list elements are left alone: lists are atomic).
pub fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, child| !child.is_null());
        for child in m.values_mut() {
            strip_nulls(child);
        }
    }
}

fn path_related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Keeps only owned paths that still exist; drops entries left with nothing.
pub fn prune(managers: &mut Vec<ManagerEntry>, obj: &Value) {
    for e in managers.iter_mut() {
        e.fields.retain(|p| get_path(obj, p).is_some());
    }
    managers.retain(|e| !e.fields.is_empty());
}

/// Ownership after an update by `manager` that turned `old` (None on create) into `new`.
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    managers: &[ManagerEntry],
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) -> Vec<ManagerEntry> {
    let old_leaves = old.map(tracked_leaves).unwrap_or_default();
    let new_leaves = tracked_leaves(new);
    let changed: BTreeSet<FieldPath> = new_leaves
        .iter()
        .filter(|(p, v)| old_leaves.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    let removed: BTreeSet<FieldPath> = old_leaves
        .keys()
        .filter(|p| !new_leaves.contains_key(*p))
        .cloned()
        .collect();
    let mut out: Vec<ManagerEntry> = managers.to_vec();
    for e in &mut out {
        let mine = e.is(manager, Operation::Update, subresource);
        e.fields.retain(|p| {
            !removed.contains(p) && (mine || !changed.iter().any(|c| path_related(c, p)))
        });
    }
    if !changed.is_empty() {
        match out
            .iter_mut()
            .find(|e| e.is(manager, Operation::Update, subresource))
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
            None => out.push(ManagerEntry {
                manager: manager.to_string(),
                operation: Operation::Update,
                subresource: subresource.map(str::to_string),
                api_version: api_version.to_string(),
                time: now.to_string(),
                fields: changed,
            }),
        }
    }
    prune(&mut out, new);
    out
}

/// The result of a successful apply.
pub struct Applied {
    pub object: Value,
    pub managers: Vec<ManagerEntry>,
}

/// Server-side apply of `applied` (already reduced to what this endpoint may change, nulls
/// stripped) by `manager` onto `live`.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: &Value,
    managers: &[ManagerEntry],
    applied: &Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    force: bool,
    now: &str,
) -> Result<Applied, Vec<Conflict>> {
    let applied_leaves = tracked_leaves(applied);
    let mut merged = live.clone();
    deep_merge(&mut merged, applied);
    let mut out: Vec<ManagerEntry> = managers.to_vec();

    let mut conflicts = Vec::new();
    for e in out
        .iter()
        .filter(|e| !e.is(manager, Operation::Apply, subresource))
    {
        for p in &e.fields {
            if get_path(live, p) != get_path(&merged, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        for e in out
            .iter_mut()
            .filter(|e| !e.is(manager, Operation::Apply, subresource))
        {
            e.fields
                .retain(|p| get_path(live, p) == get_path(&merged, p));
        }
    }

    let previous: BTreeSet<FieldPath> = out
        .iter()
        .find(|e| e.is(manager, Operation::Apply, subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: Vec<&ManagerEntry> = out
        .iter()
        .filter(|e| !e.is(manager, Operation::Apply, subresource))
        .collect();
    let owned_by_others = |p: &[String]| {
        others
            .iter()
            .any(|e| e.fields.iter().any(|q| path_related(q, p)))
    };
    let owned_leaf = |p: &[String]| {
        others
            .iter()
            .any(|e| e.fields.iter().any(|q| q.as_slice() == p))
            || applied_leaves.contains_key(p)
    };
    for p in previous.iter().filter(|p| !applied_leaves.contains_key(*p)) {
        if !owned_by_others(p) {
            remove_path(&mut merged, p, &owned_leaf);
        }
    }

    let fields: BTreeSet<FieldPath> = applied_leaves.into_keys().collect();
    match out
        .iter_mut()
        .find(|e| e.is(manager, Operation::Apply, subresource))
    {
        Some(e) => {
            if e.fields != fields {
                e.time = now.to_string();
            }
            e.fields = fields;
            e.api_version = api_version.to_string();
        }
        None => out.push(ManagerEntry {
            manager: manager.to_string(),
            operation: Operation::Apply,
            subresource: subresource.map(str::to_string),
            api_version: api_version.to_string(),
            time: now.to_string(),
            fields,
        }),
    }
    prune(&mut out, &merged);
    Ok(Applied {
        object: merged,
        managers: out,
    })
}

#[derive(Default)]
struct Node {
    leaf: bool,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.leaf = true,
            Some((head, rest)) => self.children.entry(head.clone()).or_default().insert(rest),
        }
    }

    fn render(&self) -> Value {
        let mut m = Map::new();
        if self.leaf && !self.children.is_empty() {
            m.insert(".".to_string(), json!({}));
        }
        for (k, child) in &self.children {
            m.insert(format!("f:{k}"), child.render());
        }
        Value::Object(m)
    }
}

/// `metadata.managedFields` as the server returns it (FieldsV1, simplified: lists are leaves).
pub fn render(managers: &[ManagerEntry]) -> Value {
    Value::Array(
        managers
            .iter()
            .map(|e| {
                let mut root = Node::default();
                for p in &e.fields {
                    root.insert(p);
                }
                let mut entry = json!({
                    "manager": e.manager,
                    "operation": e.operation.as_str(),
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": root.render(),
                });
                if let Some(sub) = &e.subresource {
                    entry["subresource"] = json!(sub);
                }
                entry
            })
            .collect(),
    )
}
