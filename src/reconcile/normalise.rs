//! `normalise`: put a job body (desired or live) into one comparable form, so that what the
//! API changes on its own is not mistaken for drift (docs/crd.md, "Absent, empty and null"):
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
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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
    if let Value::Object(o) = &mut v
        && o.get("chainedJobRule").is_none_or(Value::is_null)
    {
        o.insert("chainedJobRule".into(), Value::Array(linked_rules(live)));
    }
    tokenise_live(&mut v, recorded);
    normalise(&mut v);
    v
}

/// [`normalise_live`] restricted to the top-level fields `desired` (normalised) manages: the
/// diff reads nothing else, and skipping the rest is most of the cost of a reconcile.
pub fn normalise_live_managed(
    live: &JobBody,
    recorded: &BTreeMap<String, String>,
    desired: &Value,
) -> Value {
    let Some(managed) = desired.as_object() else {
        return normalise_live(live, recorded);
    };
    normalise_live_keys(live, recorded, &|k: &str| managed.contains_key(k))
}

/// [`normalise_live`] restricted to the top-level members `keep` accepts. Each member is
/// normalised on its own, so the result for a member does not depend on which others are kept.
pub(super) fn normalise_live_keys(
    live: &JobBody,
    recorded: &BTreeMap<String, String>,
    keep: &dyn Fn(&str) -> bool,
) -> Value {
    // Building a JSON value is most of the cost of a reconcile: build only the managed fields.
    let mut v = match live.serialize(filtered::Top { keep }) {
        Ok(v) => v,
        Err(_) => serde_json::to_value(live).unwrap_or(Value::Null),
    };
    // The rule comes back under linkedToJob; lift it from the typed job rather than turning
    // the whole parent summary (with its action details) into JSON.
    if let Value::Object(o) = &mut v
        && keep("chainedJobRule")
        && o.get("chainedJobRule").is_none_or(Value::is_null)
    {
        o.insert("chainedJobRule".into(), Value::Array(linked_rules(live)));
    }
    tokenise_live(&mut v, recorded);
    normalise(&mut v);
    v
}

pub(super) use filtered::Unsupported;

/// The `Serializer` methods of a serializer that reads only some shapes: each is an error, so
/// the caller takes another path.
macro_rules! unsupported_rest {
    (compound $ok:ty) => {
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Unsupported> {
            Err(Unsupported)
        }
    };
    ($ok:ty) => {
        fn serialize_bool(self, _: bool) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i8(self, _: i8) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i16(self, _: i16) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i32(self, _: i32) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_i64(self, _: i64) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u8(self, _: u8) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u16(self, _: u16) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u32(self, _: u32) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_u64(self, _: u64) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_f32(self, _: f32) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_f64(self, _: f64) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_char(self, _: char) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_none(self) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_unit(self) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<$ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
            Err(Unsupported)
        }
        unsupported_rest!(compound $ok);
    };
}
pub(super) use unsupported_rest;

/// A serializer for the top level of a job body that turns only the kept members into JSON
/// values. It accepts exactly what serde's derive produces for a struct with a flattened
/// member (a map of entries); anything else is an error and the caller falls back.
mod filtered {
    use serde::ser::{self, Impossible, Serialize, SerializeMap};
    use serde_json::{Map, Value};

    #[derive(Debug)]
    pub struct Unsupported;

    impl std::fmt::Display for Unsupported {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("not a map of members")
        }
    }

    impl std::error::Error for Unsupported {}

    impl ser::Error for Unsupported {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Unsupported
        }
    }

    pub struct Top<'a> {
        pub keep: &'a dyn Fn(&str) -> bool,
    }

    pub struct Members<'a> {
        keep: &'a dyn Fn(&str) -> bool,
        map: Map<String, Value>,
        key: Option<String>,
    }

    fn key_of<K: ?Sized + Serialize>(key: &K) -> Result<String, Unsupported> {
        match serde_json::to_value(key) {
            Ok(Value::String(s)) => Ok(s),
            _ => Err(Unsupported),
        }
    }

    impl SerializeMap for Members<'_> {
        type Ok = Value;
        type Error = Unsupported;

        fn serialize_key<K: ?Sized + Serialize>(&mut self, key: &K) -> Result<(), Unsupported> {
            self.key = Some(key_of(key)?);
            Ok(())
        }

        fn serialize_value<V: ?Sized + Serialize>(&mut self, value: &V) -> Result<(), Unsupported> {
            let key = self.key.take().ok_or(Unsupported)?;
            if (self.keep)(&key) {
                self.map
                    .insert(key, serde_json::to_value(value).map_err(|_| Unsupported)?);
            }
            Ok(())
        }

        fn serialize_entry<K: ?Sized + Serialize, V: ?Sized + Serialize>(
            &mut self,
            key: &K,
            value: &V,
        ) -> Result<(), Unsupported> {
            self.serialize_key(key)?;
            self.serialize_value(value)
        }

        fn end(self) -> Result<Value, Unsupported> {
            Ok(Value::Object(self.map))
        }
    }

    impl<'a> ser::Serializer for Top<'a> {
        type Ok = Value;
        type Error = Unsupported;
        type SerializeSeq = Impossible<Value, Unsupported>;
        type SerializeTuple = Impossible<Value, Unsupported>;
        type SerializeTupleStruct = Impossible<Value, Unsupported>;
        type SerializeTupleVariant = Impossible<Value, Unsupported>;
        type SerializeMap = Members<'a>;
        type SerializeStruct = Impossible<Value, Unsupported>;
        type SerializeStructVariant = Impossible<Value, Unsupported>;

        fn serialize_map(self, len: Option<usize>) -> Result<Members<'a>, Unsupported> {
            Ok(Members {
                keep: self.keep,
                map: Map::with_capacity(len.unwrap_or(64)),
                key: None,
            })
        }

        fn serialize_str(self, _: &str) -> Result<Value, Unsupported> {
            Err(Unsupported)
        }

        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Value, Unsupported> {
            Err(Unsupported)
        }

        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<Value, Unsupported> {
            Err(Unsupported)
        }

        super::unsupported_rest!(Value);
    }
}

fn tokenise_live(v: &mut Value, recorded: &BTreeMap<String, String>) {
    tokenise_scripts(v, |key, value| {
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
}

/// A token for script text that is (or should be) base64 content.
pub(super) fn content_token(value: &str) -> Value {
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

/// The live job reports `chainedJobRule` only under `linkedToJob[]`, with the parent's details:
/// the rules in request form (`field`, `threshold`, `actionIds`, `condition`), read from the
/// typed job.
pub(crate) fn linked_rules(live: &JobBody) -> Vec<Value> {
    let mut out = Vec::new();
    for parent in live.linked_to_job.get().into_iter().flatten() {
        for r in parent.chained_job_rule.get().into_iter().flatten() {
            let mut m = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            };
            put("field", r.field.get().map(|f| Value::String(f.clone())));
            put(
                "threshold",
                r.threshold.get().and_then(|t| serde_json::to_value(t).ok()),
            );
            put(
                "actionIds",
                r.action_ids
                    .get()
                    .map(|ids| ids.iter().cloned().map(Value::String).collect()),
            );
            put(
                "condition",
                r.condition.get().map(|c| Value::String(c.clone())),
            );
            out.push(Value::Object(m));
        }
    }
    out
}

/// The value-level rules shared by both sides. Idempotent.
pub fn normalise(v: &mut Value) {
    walk(v, None);
}

/// What the value-level rules do with a key (one `match`, not a scan of each list per key:
/// this runs on every node of both bodies on every reconcile).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Numeric,
    EmptyMeansNull,
    NumericOrEmpty,
    IdSet,
    ObjectList,
    OnComplete,
    StartDateTime,
    Other,
}

pub(super) fn classify(k: &str) -> Class {
    match k {
        "additionalDynamicQQLType" => Class::NumericOrEmpty,
        "patchTuesdayPlusXDays"
        | "customPatchURLId"
        | "dayOfMonth"
        | "recurringDayOfMonth"
        | "recurringWeekDayOfMonth"
        | "monthlyRecurringType"
        | "timeout"
        | "downloadRandomizeTime"
        | "dynamicQQLType"
        | "completedPercentage"
        | "count"
        | "interval"
        | "threshold"
        | "downloadProtocol"
        | "installMethod" => Class::Numeric,
        "linkedJobId" | "dynamicPatchesQQL" | "additionalDynamicPatchesQQL" => {
            Class::EmptyMeansNull
        }
        "assetIds" | "assetTagIds" | "matchAllTagIds" | "exclusionTagIds" | "exclusionAssetIds"
        | "coAuthorUserIds" | "approvedPatches" | "actionIds" => Class::IdSet,
        "preDeployActions" | "postDeployActions" | "chainedJobRule" => Class::ObjectList,
        "onComplete" => Class::OnComplete,
        "startDateTime" => Class::StartDateTime,
        _ => Class::Other,
    }
}

/// The members of `onComplete` the server fills in when they are null or missing.
const ON_COMPLETE_DEFAULTS: [&str; 3] = ["userMessage", "description", "alwaysShowCompletedPrompt"];

/// What the server answers for a null or missing `onComplete` member.
pub(super) fn on_complete_default(field: &str) -> Option<Value> {
    match field {
        "userMessage" | "description" => Some(Value::String(String::new())),
        "alwaysShowCompletedPrompt" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// The value rules applied to one value found under `key` (None: a list item).
pub(super) fn normalise_value(v: &mut Value, key: Option<&str>) {
    walk(v, key);
}

fn walk(v: &mut Value, key: Option<&str>) {
    let class = key.map_or(Class::Other, classify);
    if matches!(class, Class::Numeric | Class::NumericOrEmpty)
        && let Value::String(s) = v
    {
        if let Ok(n) = s.trim().parse::<i64>() {
            *v = Value::from(n);
        } else if s.trim().is_empty() {
            *v = Value::Null;
        }
    }
    match class {
        Class::EmptyMeansNull | Class::NumericOrEmpty if v.as_str() == Some("") => *v = Value::Null,
        Class::IdSet => match v {
            Value::Null => *v = Value::Array(Vec::new()),
            Value::Array(items) => {
                items.sort_by(|a, b| match (a.as_str(), b.as_str()) {
                    (Some(x), Some(y)) => x.cmp(y),
                    _ => a.to_string().cmp(&b.to_string()),
                });
                items.dedup();
            }
            _ => {}
        },
        Class::ObjectList if v.is_null() => *v = Value::Array(Vec::new()),
        Class::OnComplete => {
            if v.is_null() {
                *v = Value::Object(Map::new());
            }
            if let Value::Object(o) = v {
                for field in ON_COMPLETE_DEFAULTS {
                    if o.get(field).is_none_or(Value::is_null) {
                        let default = on_complete_default(field).unwrap_or(Value::Null);
                        o.insert(field.to_string(), default);
                    }
                }
            }
        }
        Class::StartDateTime => {
            if let Value::String(s) = v
                && let Some(canonical) = schedule::canonical_start(s)
            {
                *s = canonical;
            }
        }
        _ => {}
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
    fn the_filtered_serializer_builds_exactly_the_kept_members() {
        for name in [
            "01-windows-install.request.json",
            "03-chained-job.response.json",
        ] {
            let bytes = std::fs::read(format!(
                "{}/testdata/seed/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let live = JobBody::from_json(&bytes).unwrap();
            let all = live
                .serialize(filtered::Top { keep: &|_| true })
                .expect("no fallback");
            assert_eq!(all, serde_json::to_value(&live).unwrap());
            let some = live
                .serialize(filtered::Top {
                    keep: &|k| k == "name" || k == "timeout",
                })
                .unwrap();
            assert_eq!(
                some,
                json!({"name": all["name"], "timeout": all["timeout"]})
            );
            // The managed normalisation equals the full one restricted to the managed keys.
            let desired =
                json!({"name": "x", "timeout": 1, "chainedJobRule": [], "preDeployActions": []});
            // (lift_chained_rules and linked_rules must agree: compared through the full path.)
            let managed = normalise_live_managed(&live, &BTreeMap::new(), &desired);
            let full = normalise_live(&live, &BTreeMap::new());
            for k in ["name", "timeout", "chainedJobRule", "preDeployActions"] {
                assert_eq!(managed.get(k), full.get(k), "{name} {k}");
            }
            assert_eq!(managed.as_object().unwrap().len(), 4, "{name}");
        }
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
