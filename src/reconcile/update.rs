//! The bodies the operator sends: a create body from the desired fields, and an update body
//! that is the live job with the managed fields laid over it (as the seed recommends: the body
//! from "Get Deployment by Job ID", edited), live action ids kept and unchanged scripts sent
//! back as their storage paths.

use super::digest::ScriptKey;
use super::render::Rendered;
use crate::qualys::{Field, JobBody, ScriptKind, is_script_path, values};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The body of a create: the managed fields, created Disabled (the operator enables it through
/// the status endpoint afterwards, so a job recovered after a crash has not started running).
pub fn create_body(rendered: &Rendered) -> JobBody {
    let mut body = rendered.body.clone();
    body.status = Field::Value(values::DISABLED.to_string());
    body
}

/// The body of an update: `live` with `rendered`'s managed fields laid over it.
///
/// `recorded` holds the script digests last written; a script whose digest is unchanged is
/// sent back as the live storage path, so the server keeps it.
pub fn update_body(
    live: &JobBody,
    rendered: &Rendered,
    recorded: &BTreeMap<String, String>,
) -> JobBody {
    let mut base = serde_json::to_value(live).unwrap_or(Value::Null);
    let mut desired = serde_json::to_value(&rendered.body).unwrap_or(Value::Null);
    if let (Some(base_obj), Some(desired_obj)) = (base.as_object_mut(), desired.as_object_mut()) {
        // The state changes only through the status endpoint; send the live one back.
        desired_obj.remove("status");
        // The server reports the rule under linkedToJob; a request carries it at the top level.
        let live_rules = super::normalise::linked_rules(live);
        base_obj.remove("linkedToJob");
        base_obj.remove("linkedJobs");
        if !desired_obj.contains_key("chainedJobRule") && !live_rules.is_empty() {
            base_obj.insert("chainedJobRule".into(), Value::Array(live_rules));
        }
        for (key, value) in desired_obj.iter() {
            match key.as_str() {
                "preDeployActions" | "postDeployActions" => {
                    let merged = merge_actions(key, base_obj.get(key), value, rendered, recorded);
                    base_obj.insert(key.clone(), merged);
                }
                _ => {
                    let slot = base_obj.entry(key.clone()).or_insert(Value::Null);
                    overlay(slot, value);
                }
            }
        }
    }
    serde_json::from_value(base).unwrap_or_else(|_| live.clone())
}

/// Lay `desired` over `base`: objects merge key by key (absent keys are unmanaged and keep the
/// live value), everything else is replaced.
fn overlay(base: &mut Value, desired: &Value) {
    match (base, desired) {
        (Value::Object(b), Value::Object(d)) => {
            for (k, dv) in d {
                overlay(b.entry(k.clone()).or_insert(Value::Null), dv);
            }
        }
        (b, d) => *b = d.clone(),
    }
}

fn merge_actions(
    list: &str,
    live: Option<&Value>,
    desired: &Value,
    rendered: &Rendered,
    recorded: &BTreeMap<String, String>,
) -> Value {
    let empty = Vec::new();
    let live = live.and_then(Value::as_array).unwrap_or(&empty);
    let Some(desired) = desired.as_array() else {
        return desired.clone();
    };
    let mut out = Vec::with_capacity(desired.len());
    for (i, d) in desired.iter().enumerate() {
        let same_kind = live
            .get(i)
            .is_some_and(|l| l.get("action") == d.get("action"));
        let mut action = if same_kind {
            live[i].clone()
        } else {
            Value::Object(Map::new())
        };
        overlay(&mut action, d);
        if same_kind && let Some(obj) = action.as_object_mut() {
            for (field, kind) in [
                ("script", ScriptKind::Script),
                ("detectionScript", ScriptKind::DetectionScript),
            ] {
                let key = ScriptKey::for_list(list, i, kind).to_string();
                let unchanged = match (rendered.scripts.get(&key), recorded.get(&key)) {
                    (Some(now), Some(before)) => now == before,
                    _ => false,
                };
                let live_path = live[i]
                    .get(field)
                    .and_then(Value::as_str)
                    .filter(|p| is_script_path(p));
                if unchanged && let Some(path) = live_path {
                    obj.insert(field.to_string(), Value::String(path.to_string()));
                }
            }
        }
        out.push(action);
    }
    Value::Array(out)
}
