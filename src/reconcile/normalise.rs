//! `normalise`: put a job body (desired or live) into one comparable form, so that what the
//! API changes on its own is not mistaken for drift (DESIGN "Diff semantics"):
//! numbers sent as strings, `null` vs `[]` vs absent lists, `onComplete: null` vs the default
//! object, `startDateTime` re-padded by the server, id lists as sets, `chainedJobRule` echoed
//! under `linkedToJob[]`, and scripts (content going in, a storage path coming out) compared as
//! digests.
//!
//! [`normalise`] works on JSON values and is idempotent; the script step runs before it and
//! differs between the desired side (content → digest) and the live side (path → the digest
//! recorded when it was last written).

use super::digest::{ScriptKey, script_digest};
use super::render::Rendered;
use crate::qualys::{JobBody, ScriptKind, is_script_path, schedule};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Keys whose values are integers on the wire even when sent as strings.
const NUMERIC_KEYS: &[&str] = &[
    "patchTuesdayPlusXDays",
    "customPatchURLId",
    "dayOfMonth",
    "recurringDayOfMonth",
    "recurringWeekDayOfMonth",
    "monthlyRecurringType",
    "timeout",
    "downloadRandomizeTime",
    "dynamicQQLType",
    "additionalDynamicQQLType",
    "completedPercentage",
    "count",
    "interval",
    "threshold",
    "downloadProtocol",
    "installMethod",
];

/// Lists of ids: sets, compared sorted; `null` and absent mean empty.
const ID_SET_KEYS: &[&str] = &[
    "assetIds",
    "assetTagIds",
    "matchAllTagIds",
    "exclusionTagIds",
    "exclusionAssetIds",
    "coAuthorUserIds",
    "approvedPatches",
    "actionIds",
];

/// Ordered lists of objects: `null` means empty.
const OBJECT_LIST_KEYS: &[&str] = &["preDeployActions", "postDeployActions", "chainedJobRule"];

/// Strings where the API accepts `""` for "none" (the release-3.5 create sample sends them).
const EMPTY_MEANS_NULL: &[&str] = &[
    "linkedJobId",
    "additionalDynamicQQLType",
    "dynamicPatchesQQL",
    "additionalDynamicPatchesQQL",
];

/// The comparison token of a script the live job holds but whose content is unknown: a path
/// with no digest recorded (an adopted job), which never equals a digest.
pub const UNKNOWN_SCRIPT_PREFIX: &str = "stored:";

/// The desired body in comparable form.
pub fn normalise_desired(rendered: &Rendered) -> Value {
    let mut v = serde_json::to_value(&rendered.body).unwrap_or(Value::Null);
    tokenise_scripts(&mut v, |key, value| {
        if value.is_empty() {
            return Value::String(String::new());
        }
        match rendered.scripts.get(&key.to_string()) {
            Some(digest) => Value::String(digest.clone()),
            None => content_token(value),
        }
    });
    normalise(&mut v);
    v
}

/// The live body in comparable form; `recorded` holds the script digests last written.
pub fn normalise_live(live: &JobBody, recorded: &BTreeMap<String, String>) -> Value {
    let mut v = serde_json::to_value(live).unwrap_or(Value::Null);
    lift_chained_rules(&mut v);
    tokenise_scripts(&mut v, |key, value| {
        if value.is_empty() {
            Value::String(String::new())
        } else if is_script_path(value) {
            match recorded.get(&key.to_string()) {
                Some(digest) => Value::String(digest.clone()),
                None => Value::String(format!("{UNKNOWN_SCRIPT_PREFIX}{value}")),
            }
        } else {
            content_token(value)
        }
    });
    normalise(&mut v);
    v
}

/// A token for script text that is (or should be) base64 content.
fn content_token(value: &str) -> Value {
    if value.starts_with("sha256:") || value.starts_with(UNKNOWN_SCRIPT_PREFIX) {
        return Value::String(value.to_string());
    }
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    match BASE64.decode(compact.as_bytes()) {
        Ok(bytes) => Value::String(script_digest(&bytes)),
        Err(_) => Value::String(format!("{UNKNOWN_SCRIPT_PREFIX}{value}")),
    }
}

fn tokenise_scripts(v: &mut Value, mut token: impl FnMut(ScriptKey, &str) -> Value) {
    for list in ["preDeployActions", "postDeployActions"] {
        let Some(Value::Array(actions)) = v.get_mut(list) else {
            continue;
        };
        for (i, action) in actions.iter_mut().enumerate() {
            let Some(obj) = action.as_object_mut() else {
                continue;
            };
            for (field, kind) in [
                ("script", ScriptKind::Script),
                ("detectionScript", ScriptKind::DetectionScript),
            ] {
                if let Some(Value::String(s)) = obj.get(field) {
                    let t = token(ScriptKey::for_list(list, i, kind), s);
                    obj.insert(field.to_string(), t);
                }
            }
        }
    }
}

/// The live job reports `chainedJobRule` only under `linkedToJob[]`, with the parent's details;
/// bring the rules back to the top level in request form.
fn lift_chained_rules(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    if obj.get("chainedJobRule").is_some_and(|r| !r.is_null()) {
        return;
    }
    let mut rules = Vec::new();
    if let Some(Value::Array(linked)) = obj.get("linkedToJob") {
        for parent in linked {
            if let Some(Value::Array(rs)) = parent.get("chainedJobRule") {
                for r in rs {
                    let mut out = Map::new();
                    for key in ["field", "threshold", "actionIds", "condition"] {
                        if let Some(x) = r.get(key) {
                            out.insert(key.to_string(), x.clone());
                        }
                    }
                    rules.push(Value::Object(out));
                }
            }
        }
    }
    obj.insert("chainedJobRule".to_string(), Value::Array(rules));
}

/// The value-level rules shared by both sides. Idempotent.
pub fn normalise(v: &mut Value) {
    walk(v, None);
}

fn walk(v: &mut Value, key: Option<&str>) {
    if let Some(k) = key {
        if NUMERIC_KEYS.contains(&k)
            && let Value::String(s) = v
        {
            if let Ok(n) = s.trim().parse::<i64>() {
                *v = Value::from(n);
            } else if s.trim().is_empty() {
                *v = Value::Null;
            }
        }
        if EMPTY_MEANS_NULL.contains(&k) && v.as_str() == Some("") {
            *v = Value::Null;
        }
        if ID_SET_KEYS.contains(&k) {
            match v {
                Value::Null => *v = Value::Array(Vec::new()),
                Value::Array(items) => {
                    items.sort_by(|a, b| match (a.as_str(), b.as_str()) {
                        (Some(x), Some(y)) => x.cmp(y),
                        _ => a.to_string().cmp(&b.to_string()),
                    });
                    items.dedup();
                }
                _ => {}
            }
        }
        if OBJECT_LIST_KEYS.contains(&k) && v.is_null() {
            *v = Value::Array(Vec::new());
        }
        if k == "onComplete" {
            if v.is_null() {
                *v = Value::Object(Map::new());
            }
            if let Value::Object(o) = v {
                for (field, default) in [
                    ("userMessage", Value::String(String::new())),
                    ("description", Value::String(String::new())),
                    ("alwaysShowCompletedPrompt", Value::Bool(false)),
                ] {
                    if o.get(field).is_none_or(Value::is_null) {
                        o.insert(field.to_string(), default);
                    }
                }
            }
        }
        if k == "startDateTime"
            && let Value::String(s) = v
            && let Some(canonical) = schedule::canonical_start(s)
        {
            *s = canonical;
        }
    }
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                walk(child, Some(k));
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, None);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_quirks_normalise_away() {
        let mut sent = json!({
            "patchTuesdayPlusXDays": "-12",
            "approvedPatches": ["b", "a"],
            "assetIds": null,
            "postDeployment": {"onComplete": null},
            "startDateTime": "2025-07-01 09:57:18 AM",
            "notification": {"notificationConfigs": {"completedPercentage": "80"}},
            "linkedJobId": "",
        });
        let mut got = json!({
            "patchTuesdayPlusXDays": -12,
            "approvedPatches": ["a", "b"],
            "assetIds": [],
            "postDeployment": {"onComplete": {"userMessage": "", "description": "", "alwaysShowCompletedPrompt": false}},
            "startDateTime": "2025-7-01 09:57:18 AM",
            "notification": {"notificationConfigs": {"completedPercentage": 80}},
            "linkedJobId": null,
        });
        normalise(&mut sent);
        normalise(&mut got);
        assert_eq!(sent, got);
        let again = {
            let mut x = sent.clone();
            normalise(&mut x);
            x
        };
        assert_eq!(again, sent, "idempotent");
    }

    #[test]
    fn chained_rules_come_back_from_linked_to_job() {
        let bytes = std::fs::read(format!(
            "{}/testdata/seed/03-chained-job.response.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let live = JobBody::from_json(&bytes).unwrap();
        let v = normalise_live(&live, &BTreeMap::new());
        assert_eq!(
            v["chainedJobRule"],
            json!([{"field": "postDeployAction", "threshold": 100,
                    "actionIds": ["07eed865-d8e2-4cba-9c2a-27eeeef0598a"],
                    "condition": "Post Actions were successfully executed"}])
        );
        // A path with no recorded digest is unknown, never equal to a digest.
        let script = v["preDeployActions"][0]["script"].as_str().unwrap();
        assert!(script.starts_with(UNKNOWN_SCRIPT_PREFIX), "{script}");
        let recorded = BTreeMap::from([("pre[0].script".to_string(), "sha256:x".to_string())]);
        let v = normalise_live(&live, &recorded);
        assert_eq!(v["preDeployActions"][0]["script"], "sha256:x");
        assert_eq!(v["postDeployActions"][0]["detectionScript"], "");
    }
}
