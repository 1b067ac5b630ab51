//! `diff`: compare a normalised desired body with a normalised live body, over the fields the
//! desired side manages (its keys), and say which differ.

use serde_json::Value;

/// One field whose live value differs from the desired one.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDiff {
    /// Path in the job body: `approvedPatches`, `preDeployActions[0].params.timeout`.
    pub path: String,
    /// The live value (`null` when unset).
    pub from: Value,
    /// The desired value; scripts appear as `sha256:` digests, never content.
    pub to: Value,
}

impl FieldDiff {
    /// The form kept in `status.pendingChanges`.
    pub fn to_status(&self) -> crate::api::FieldChange {
        let show = |v: &Value| {
            if v.is_null() {
                None
            } else {
                Some(v.to_string())
            }
        };
        crate::api::FieldChange {
            path: self.path.clone(),
            from: show(&self.from),
            to: show(&self.to),
        }
    }
}

/// Differences between `desired` and `live`, both normalised. Keys absent from `desired` are
/// not managed and never reported.
pub fn diff(desired: &Value, live: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk(desired, live, &mut String::new(), &mut out);
    out
}

/// [`diff`] of one top-level member, appended to `out` (paths start with `key`).
pub(super) fn diff_member(key: &str, desired: &Value, live: &Value, out: &mut Vec<FieldDiff>) {
    walk(desired, live, &mut key.to_string(), out);
}

fn walk(desired: &Value, live: &Value, path: &mut String, out: &mut Vec<FieldDiff>) {
    match desired {
        Value::Object(d) => {
            let empty = serde_json::Map::new();
            let l = live.as_object().unwrap_or(&empty);
            for (k, dv) in d {
                let lv = l.get(k).unwrap_or(&Value::Null);
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(dv, lv, path, out);
                path.truncate(len);
            }
        }
        // Lists of objects (actions, chained rules) are compared item by item, by position;
        // lists of scalars (id sets, already sorted) as a whole.
        Value::Array(d) if d.iter().any(Value::is_object) || live_has_objects(live) => {
            let empty = Vec::new();
            let l = live.as_array().unwrap_or(&empty);
            for i in 0..d.len().max(l.len()) {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                match (d.get(i), l.get(i)) {
                    (Some(dv), Some(lv)) => walk(dv, lv, path, out),
                    (Some(dv), None) => out.push(change(path, &Value::Null, dv)),
                    (None, Some(lv)) => out.push(change(path, lv, &Value::Null)),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        _ => {
            if desired != live {
                out.push(change(path, live, desired));
            }
        }
    }
}

fn live_has_objects(live: &Value) -> bool {
    live.as_array()
        .is_some_and(|l| l.iter().any(Value::is_object))
}

fn change(path: &str, from: &Value, to: &Value) -> FieldDiff {
    FieldDiff {
        path: path.to_string(),
        from: from.clone(),
        to: to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_desired_keys_are_compared() {
        let desired = json!({"name": "a", "timeout": 6, "pre": {"x": 1}});
        let live = json!({"name": "a", "timeout": 7, "pre": {"x": 1, "y": 2}, "unmanaged": true});
        let changes = diff(&desired, &live);
        assert_eq!(
            changes,
            vec![FieldDiff {
                path: "timeout".into(),
                from: json!(7),
                to: json!(6)
            }]
        );
    }

    #[test]
    fn object_lists_compare_by_position() {
        let desired = json!({"a": [{"k": 1}, {"k": 2}]});
        let live = json!({"a": [{"k": 1, "id": "x"}, {"k": 3}, {"k": 4}]});
        let paths: Vec<_> = diff(&desired, &live).into_iter().map(|c| c.path).collect();
        assert_eq!(paths, vec!["a[1].k", "a[2]"]);
    }

    #[test]
    fn scalar_lists_compare_whole() {
        let changes = diff(&json!({"ids": ["a", "b"]}), &json!({"ids": ["a"]}));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "ids");
        assert_eq!(changes[0].to_status().from.as_deref(), Some("[\"a\"]"));
    }
}
