//! The polish pass over the generated CRD schema, so that what the API server stores, what
//! `kubectl explain` prints and what [`super::validate`] checks are one and the same document.
//!
//! schemars and kube-derive produce a correct schema with three blemishes this pass removes:
//! - rustdoc's hard line wraps end up inside descriptions, so `kubectl explain` prints ragged
//!   text;
//! - every `Option` field is `nullable: true` (and an optional enum lists `null` as a value). In a
//!   DeploymentJob null means nothing that absence does not already mean, and a stored null
//!   breaks the CEL rules: `has(self.timeout)` is true for `timeout: null`, after which
//!   `self.timeout <= 168` fails with a type error instead of the rule's message. Without
//!   `nullable`, the API server prunes a null before validation, so the rules only ever see
//!   absent fields;
//! - `range(min = 1, max = 31)` is written as `1.0`/`31.0`.

use serde_json::Value;

/// Polish every schema node below (and including) `schema` in place.
pub(crate) fn polish(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::String(text)) = node.get_mut("description") {
        *text = reflow(text);
    }
    if node.get("nullable") == Some(&Value::Bool(true)) {
        // shift_remove keeps the key order (remove would swap the last key into its place).
        node.shift_remove("nullable");
    }
    if let Some(Value::Array(values)) = node.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    for bound in ["minimum", "maximum"] {
        if let Some(v) = node.get_mut(bound) {
            integral(v);
        }
    }
    for key in ["properties", "patternProperties", "definitions"] {
        if let Some(Value::Object(children)) = node.get_mut(key) {
            children.values_mut().for_each(polish);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = node.get_mut(key) {
            polish(child);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(children)) = node.get_mut(key) {
            children.iter_mut().for_each(polish);
        }
    }
}

/// Polish the `openAPIV3Schema` of every version of a CRD given as JSON.
pub(crate) fn polish_crd(crd: &mut Value) {
    let versions = crd
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut);
    for version in versions.into_iter().flatten() {
        if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
            polish(schema);
        }
    }
}

/// `2.0` → `2`, leaving real fractions alone.
fn integral(v: &mut Value) {
    if let Some(f) = v.as_f64()
        && v.is_f64()
        && f.fract() == 0.0
        && f.abs() < 9.0e15
    {
        // Exact: |f| < 2^53 and f has no fraction.
        *v = Value::from(f as i64);
    }
}

/// Undo rustdoc's hard wrapping: the lines of a paragraph become one line, paragraphs stay
/// apart, and a line that starts a list item keeps its own line.
pub(crate) fn reflow(text: &str) -> String {
    let mut paragraphs = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut out = String::new();
        for line in paragraph.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !out.is_empty() {
                out.push(if starts_list_item(line) { '\n' } else { ' ' });
            }
            out.push_str(line);
        }
        if !out.is_empty() {
            paragraphs.push(out);
        }
    }
    paragraphs.join("\n\n")
}

fn starts_list_item(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") {
        return true;
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && line[digits..].starts_with(". ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reflow_joins_lines_and_keeps_paragraphs_and_lists() {
        assert_eq!(
            reflow("A Secret in this namespace\nholding the connection.\n\nAbsent: the default."),
            "A Secret in this namespace holding the connection.\n\nAbsent: the default."
        );
        assert_eq!(
            reflow("Values:\n- `Delete` it\n- `Orphan` it\n1. first"),
            "Values:\n- `Delete` it\n- `Orphan` it\n1. first"
        );
        assert_eq!(reflow("one line"), "one line");
    }

    #[test]
    fn polish_drops_nullable_and_null_enum_values_and_makes_bounds_integers() {
        let mut schema = json!({
            "type": "object",
            "description": "An\nobject.",
            "properties": {
                "unit": {"type": "string", "nullable": true, "enum": ["HOURS", "MINUTES", null]},
                "count": {"type": "integer", "nullable": true, "minimum": 1.0, "maximum": 99.0},
                "ratio": {"type": "number", "maximum": 0.5},
                "list": {"type": "array", "items": {"type": "integer", "minimum": -27.0}}
            }
        });
        polish(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "description": "An object.",
                "properties": {
                    "unit": {"type": "string", "enum": ["HOURS", "MINUTES"]},
                    "count": {"type": "integer", "minimum": 1, "maximum": 99},
                    "ratio": {"type": "number", "maximum": 0.5},
                    "list": {"type": "array", "items": {"type": "integer", "minimum": -27}}
                }
            })
        );
    }
}
