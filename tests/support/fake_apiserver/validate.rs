//! The object-metadata validation every real API server applies, and the events.k8s.io/v1
//! Event rules a recorder can trip over. Schema (OpenAPI/CEL) validation is not modelled.

use serde_json::Value;

use super::registry::ResourceType;

type Causes = Vec<(String, String)>;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn is_qualified_part(s: &str) -> bool {
    let edge = |b: u8| b.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.bytes().next().is_some_and(edge)
        && s.bytes().last().is_some_and(edge)
}

fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(key),
    }
}

fn check_name(rt: &ResourceType, name: &str, causes: &mut Causes) {
    let ok = if rt.plural == "namespaces" && rt.group.is_empty() {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !ok {
        causes.push((
            "metadata.name".into(),
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.'",
                if rt.plural == "namespaces" { "label" } else { "subdomain" }
            ),
        ));
    }
}

fn check_labels(meta: &Value, causes: &mut Causes) {
    let Some(labels) = meta.get("labels") else {
        return;
    };
    let Some(labels) = labels.as_object() else {
        causes.push((
            "metadata.labels".into(),
            "Invalid value: must be a map of strings".into(),
        ));
        return;
    };
    for (k, v) in labels {
        if !is_qualified_name(k) {
            causes.push(("metadata.labels".into(), format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)")));
        }
        match v.as_str() {
            Some("") => {}
            Some(s) if is_qualified_part(s) => {}
            _ => causes.push((
                format!("metadata.labels.{k}"),
                format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)"),
            )),
        }
    }
}

fn check_annotations(meta: &Value, causes: &mut Causes) {
    let Some(annotations) = meta.get("annotations") else {
        return;
    };
    let Some(annotations) = annotations.as_object() else {
        causes.push((
            "metadata.annotations".into(),
            "Invalid value: must be a map of strings".into(),
        ));
        return;
    };
    let mut total = 0usize;
    for (k, v) in annotations {
        if !is_qualified_name(k) {
            causes.push(("metadata.annotations".into(), format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
        }
        match v.as_str() {
            Some(s) => total += k.len() + s.len(),
            None => causes.push((
                format!("metadata.annotations.{k}"),
                "Invalid value: must be a string".into(),
            )),
        }
    }
    if total > 256 * 1024 {
        causes.push((
            "metadata.annotations".into(),
            format!("Too long: must have at most 262144 bytes, has {total}"),
        ));
    }
}

fn check_finalizers(meta: &Value, causes: &mut Causes) {
    let Some(finalizers) = meta.get("finalizers") else {
        return;
    };
    match finalizers.as_array() {
        Some(list) => {
            for f in list {
                if !f.as_str().is_some_and(is_qualified_name) {
                    causes.push((
                        "metadata.finalizers".into(),
                        format!("Invalid value: {f}: must be a qualified name"),
                    ));
                }
            }
        }
        None => causes.push((
            "metadata.finalizers".into(),
            "Invalid value: must be a list of strings".into(),
        )),
    }
}

/// The checks `events.k8s.io/v1` applies to a new Event.
fn check_event_v1(obj: &Value, causes: &mut Causes) {
    let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    if obj.get("eventTime").is_none_or(Value::is_null) {
        causes.push(("eventTime".into(), "Required value".into()));
    }
    for (field, limit) in [
        ("reportingController", 253),
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
    ] {
        let value = text(field);
        if value.is_empty() {
            causes.push((field.into(), "Required value".into()));
        } else if value.len() > limit {
            causes.push((
                field.into(),
                format!("Too long: may not be more than {limit} bytes"),
            ));
        }
    }
    match text("type") {
        "Normal" | "Warning" => {}
        other => causes.push((
            "type".into(),
            format!("Unsupported value: {other:?}: supported values: \"Normal\", \"Warning\""),
        )),
    }
    if text("note").len() > 1024 {
        causes.push((
            "note".into(),
            "Too long: may not be more than 1024 bytes".into(),
        ));
    }
}

/// Validation errors for an object about to be stored (create or update).
pub fn validate(rt: &ResourceType, obj: &Value, creating: bool) -> Causes {
    let mut causes = Causes::new();
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    check_name(rt, name, &mut causes);
    check_labels(&meta, &mut causes);
    check_annotations(&meta, &mut causes);
    check_finalizers(&meta, &mut causes);
    if creating && rt.group == "events.k8s.io" && rt.plural == "events" {
        check_event_v1(obj, &mut causes);
    }
    causes
}
