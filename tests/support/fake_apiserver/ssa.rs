//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! The model: every manager entry — keyed by (manager, operation, subresource), as the real
//! server keys them — owns a set of leaf paths. A leaf is a scalar, `null`, an empty object or
//! an atomic list. Lists the resource's schema marks `x-kubernetes-list-type: map` are merged
//! by their `x-kubernetes-list-map-keys`: each item is a node of its own (path segment
//! `k:{"type":"Ready"}`, as FieldsV1 names it) whose fields are owned one by one; `set` lists
//! are merged by value (segment `v:"value"`). Every other list (and every list of a kind
//! without a schema) is atomic: owned and replaced whole. Only `metadata.labels`,
//! `metadata.annotations`, `metadata.finalizers` and `metadata.ownerReferences` are tracked
//! under `metadata`; `apiVersion` and `kind` are not tracked.
//!
//! - An update (POST, PUT, merge/JSON/strategic patch) by M takes every leaf it changed or added
//!   away from the other entries and gives it to (M, Update); leaves it removed leave every entry.
//! - An apply by M sets the leaves it sends, removes the leaves M applied before and no longer
//!   sends unless another entry owns them, and fails with a conflict when it would change the
//!   value of a leaf another entry owns — unless forced, when ownership moves to M. Items of
//!   keyed lists that M does not send are left alone.
//! - `null` values in an applied object are dropped before anything else (they neither set nor
//!   own a field).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::schema::{ListKind, child, items, list_kind};

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

/// The path segment of one item of a keyed list: `k:{"type":"Ready"}` for a map, `v:"x"` for
/// a set; `None` when a map item lacks a key field (then the list is treated as atomic).
fn item_segment(kind: &ListKind, item: &Value) -> Option<String> {
    match kind {
        ListKind::Map(keys) if !keys.is_empty() => {
            let mut key = Map::new();
            for k in keys {
                key.insert(k.clone(), item.get(k)?.clone());
            }
            Some(format!("k:{}", Value::Object(key)))
        }
        ListKind::Set => Some(format!("v:{item}")),
        _ => None,
    }
}

fn keyed(kind: &ListKind, items: &[Value]) -> bool {
    !items.is_empty()
        && *kind != ListKind::Atomic
        && items.iter().all(|i| item_segment(kind, i).is_some())
}

fn collect(
    v: &Value,
    node: Option<&Value>,
    prefix: &mut FieldPath,
    out: &mut BTreeMap<FieldPath, Value>,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                prefix.push(k.clone());
                collect(c, child(node, k), prefix, out);
                prefix.pop();
            }
        }
        Value::Array(list) if keyed(&list_kind(node), list) => {
            let kind = list_kind(node);
            for item in list {
                let Some(seg) = item_segment(&kind, item) else {
                    continue;
                };
                prefix.push(seg);
                match kind {
                    // The item itself is owned (FieldsV1's "."), and so is each of its fields.
                    ListKind::Map(_) => {
                        out.insert(prefix.clone(), json!({}));
                        if let Value::Object(fields) = item {
                            for (k, c) in fields {
                                prefix.push(k.clone());
                                collect(c, child(items(node), k), prefix, out);
                                prefix.pop();
                            }
                        }
                    }
                    _ => {
                        out.insert(prefix.clone(), item.clone());
                    }
                }
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone(), v.clone());
        }
    }
}

/// The leaves whose ownership is tracked, with their values; `schema` is the resource's
/// `openAPIV3Schema`, which says which lists are keyed.
pub fn tracked_leaves(obj: &Value, schema: Option<&Value>) -> BTreeMap<FieldPath, Value> {
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
                            collect(mv, None, &mut prefix, &mut out);
                        } else {
                            out.insert(prefix, mv.clone());
                        }
                    }
                }
            }
            _ => collect(v, child(schema, k), &mut vec![k.clone()], &mut out),
        }
    }
    out
}

/// The item of `list` a `k:`/`v:` segment names.
fn find_item(list: &[Value], seg: &str) -> Option<usize> {
    if let Some(key) = seg.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        list.iter()
            .position(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))
    } else if let Some(value) = seg.strip_prefix("v:") {
        let value: Value = serde_json::from_str(value).ok()?;
        list.iter().position(|item| *item == value)
    } else {
        None
    }
}

fn step<'a>(v: &'a Value, seg: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(seg),
        Value::Array(list) => list.get(find_item(list, seg)?),
        _ => None,
    }
}

fn step_mut<'a>(v: &'a mut Value, seg: &str) -> Option<&'a mut Value> {
    match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(list) => {
            let i = find_item(list, seg)?;
            list.get_mut(i)
        }
        _ => None,
    }
}

/// Removes the child `seg` of `v` (a key of an object, an item of a keyed list).
fn remove_child(v: &mut Value, seg: &str) -> bool {
    match v {
        Value::Object(m) => m.remove(seg).is_some(),
        Value::Array(list) => match find_item(list, seg) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        },
        _ => false,
    }
}

pub fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| step(v, k))
}

/// Removes the leaf at `path`, then any parent object left empty that nobody owns.
fn remove_path(obj: &mut Value, path: &[String], owned: &dyn Fn(&[String]) -> bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let removed = parents
        .iter()
        .try_fold(&mut *obj, |v, k| step_mut(v, k))
        .is_some_and(|parent| remove_child(parent, last));
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
        if let Some(parent) = up.iter().try_fold(&mut *obj, |v, k| step_mut(v, k)) {
            remove_child(parent, leaf);
        }
    }
}

/// Objects merge key by key and keyed lists item by item (map items by key, set items by
/// value); everything else (scalars, atomic lists) replaces.
pub fn deep_merge(target: &mut Value, patch: &Value, node: Option<&Value>) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing)
                        if (existing.is_object() && v.is_object())
                            || (existing.is_array() && v.is_array()) =>
                    {
                        deep_merge(existing, v, child(node, k))
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p)) => {
            let kind = list_kind(node);
            if !(keyed(&kind, p) && (t.is_empty() || keyed(&kind, t))) {
                *t = p.clone();
                return;
            }
            for item in p {
                let seg = item_segment(&kind, item).expect("keyed() checked every item");
                match find_item(t, &seg) {
                    Some(i) if matches!(kind, ListKind::Map(_)) => {
                        deep_merge(&mut t[i], item, items(node))
                    }
                    Some(_) => {}
                    None => t.push(item.clone()),
                }
            }
        }
        (target, patch) => *target = patch.clone(),
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
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    managers: &[ManagerEntry],
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
    schema: Option<&Value>,
) -> Vec<ManagerEntry> {
    let old_leaves = old.map(|o| tracked_leaves(o, schema)).unwrap_or_default();
    let new_leaves = tracked_leaves(new, schema);
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
    schema: Option<&Value>,
) -> Result<Applied, Vec<Conflict>> {
    let applied_leaves = tracked_leaves(applied, schema);
    let mut merged = live.clone();
    deep_merge(&mut merged, applied, schema);
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
            let name = if k.starts_with("k:") || k.starts_with("v:") {
                k.clone()
            } else {
                format!("f:{k}")
            };
            m.insert(name, child.render());
        }
        Value::Object(m)
    }
}

/// `metadata.managedFields` as the server returns it (FieldsV1).
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
