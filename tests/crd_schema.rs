//! The generated DeploymentJob CRD against the rules the Kubernetes API server applies to it
//! (structural schema, list types, CEL compilation and cost), the CEL rules themselves (one
//! passing and one failing manifest each, through `validate_manifest`), `crds/`, and `examples/`.
//!
//! Structural-schema rules: "Specifying a structural schema" in the Kubernetes documentation
//! (Extend the Kubernetes API with CustomResourceDefinitions).

use kube::core::cel::{CompiledSchema, ScopeContext, WarningKind, analyze_rule, compile_schema};
use qpm_operator::api::validate::yaml_documents;
use qpm_operator::api::{BASE64_PATTERN, crd_value, crd_yaml, openapi_schema, validate_manifest};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Structural schema

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];
const SCALARS: &[&str] = &["string", "integer", "number", "boolean"];
const JUNCTORS: &[&str] = &["allOf", "anyOf", "oneOf"];
/// Keys a structural schema forbids inside allOf/anyOf/oneOf/not.
const NOT_IN_JUNCTORS: &[&str] = &[
    "description",
    "type",
    "default",
    "additionalProperties",
    "nullable",
];

fn obj(v: &Value) -> &Map<String, Value> {
    v.as_object().expect("a schema node is an object")
}

fn is_true(node: &Map<String, Value>, key: &str) -> bool {
    node.get(key) == Some(&Value::Bool(true))
}

fn structural_violations(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(n) = node.as_object() else {
        out.push(format!("{path}: a schema node must be an object"));
        return;
    };
    let int_or_string = is_true(n, "x-kubernetes-int-or-string");
    let preserve = is_true(n, "x-kubernetes-preserve-unknown-fields");
    if n.contains_key("x-kubernetes-preserve-unknown-fields") && !preserve {
        out.push(format!(
            "{path}: x-kubernetes-preserve-unknown-fields may only be true"
        ));
    }
    let ty = n.get("type").and_then(Value::as_str);
    if in_junctor {
        for key in NOT_IN_JUNCTORS {
            if n.contains_key(*key) {
                out.push(format!("{path}: `{key}` is not allowed inside a junctor"));
            }
        }
    } else {
        match ty {
            Some(t) if TYPES.contains(&t) => {}
            Some(t) => out.push(format!("{path}: unknown type {t}")),
            None if int_or_string || preserve => {}
            None => out.push(format!("{path}: every node needs a non-empty type")),
        }
    }
    if int_or_string && ty.is_some() {
        out.push(format!("{path}: an int-or-string node has no type"));
    }
    if n.contains_key("properties") && n.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties exclude each other"
        ));
    }
    if n.contains_key("properties") && ty != Some("object") && !in_junctor {
        out.push(format!("{path}: properties on a non-object"));
    }
    if n.contains_key("items") && ty != Some("array") && !in_junctor {
        out.push(format!("{path}: items on a non-array"));
    }
    if n.get("nullable") == Some(&Value::Bool(true)) {
        out.push(format!(
            "{path}: nullable: a null means what absence means, and would reach the CEL rules"
        ));
    }
    if let Some(values) = n.get("enum").and_then(Value::as_array) {
        for v in values {
            let ok = match ty {
                Some("string") => v.is_string(),
                Some("integer") => v.is_i64(),
                _ => true,
            };
            if !ok {
                out.push(format!("{path}: enum value {v} does not have type {ty:?}"));
            }
        }
    }
    for bound in ["minimum", "maximum"] {
        if ty == Some("integer") && n.get(bound).is_some_and(|b| !b.is_i64()) {
            out.push(format!(
                "{path}: {bound} of an integer is written as an integer"
            ));
        }
    }
    if let Some(default) = n.get("default") {
        let ok = match ty {
            Some("integer") => default.is_i64(),
            Some("string") => default.is_string(),
            Some("boolean") => default.is_boolean(),
            Some("object") => default.is_object(),
            Some("array") => default.is_array(),
            _ => true,
        };
        if !ok {
            out.push(format!(
                "{path}: default {default} does not have type {ty:?}"
            ));
        }
    }
    list_type_violations(n, ty, path, out);
    rule_violations(n, path, out);

    if let Some(props) = n.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural_violations(child, &format!("{path}.{name}"), in_junctor, out);
        }
    }
    if let Some(items) = n.get("items") {
        if items.is_array() {
            out.push(format!("{path}: items must be one schema, not a list"));
        } else {
            structural_violations(items, &format!("{path}[]"), in_junctor, out);
        }
    }
    if let Some(additional) = n.get("additionalProperties").filter(|a| a.is_object()) {
        structural_violations(additional, &format!("{path}{{}}"), in_junctor, out);
    }
    for junctor in JUNCTORS {
        for (i, branch) in n
            .get(*junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{path}.{junctor}[{i}]");
            // The one exception: int-or-string may say `anyOf: [{type: integer}, {type: string}]`.
            let int_or_string_branch = int_or_string
                && *junctor == "anyOf"
                && obj(branch).len() == 1
                && matches!(
                    branch.get("type").and_then(Value::as_str),
                    Some("integer" | "string")
                );
            if !int_or_string_branch {
                structural_violations(branch, &at, true, out);
            }
            junctor_fields_are_in_the_core(n, branch, &at, out);
        }
    }
    if let Some(not) = n.get("not") {
        let at = format!("{path}.not");
        structural_violations(not, &at, true, out);
        junctor_fields_are_in_the_core(n, not, &at, out);
    }
}

/// Every field a junctor mentions is specified outside it too.
fn junctor_fields_are_in_the_core(
    core: &Map<String, Value>,
    branch: &Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let core_props = core.get("properties").and_then(Value::as_object);
    for name in branch
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.keys())
    {
        if !core_props.is_some_and(|p| p.contains_key(name)) {
            out.push(format!(
                "{at}: field {name} is not specified outside the junctor"
            ));
        }
    }
    if branch.get("items").is_some() && !core.contains_key("items") {
        out.push(format!("{at}: items are not specified outside the junctor"));
    }
}

fn list_type_violations(
    n: &Map<String, Value>,
    ty: Option<&str>,
    path: &str,
    out: &mut Vec<String>,
) {
    let list_type = n.get("x-kubernetes-list-type").and_then(Value::as_str);
    let map_keys = n.get("x-kubernetes-list-map-keys");
    if ty != Some("array") {
        if list_type.is_some() || map_keys.is_some() {
            out.push(format!("{path}: list extensions on a non-array"));
        }
        return;
    }
    let items = n.get("items").and_then(Value::as_object);
    let item_type = items.and_then(|i| i.get("type")).and_then(Value::as_str);
    match list_type {
        None => out.push(format!("{path}: an array needs x-kubernetes-list-type")),
        Some("atomic") => {}
        Some("set") => {
            let int_or_string = items.is_some_and(|i| is_true(i, "x-kubernetes-int-or-string"));
            if !(int_or_string || item_type.is_some_and(|t| SCALARS.contains(&t))) {
                out.push(format!(
                    "{path}: a set needs scalar items, got {item_type:?}"
                ));
            }
        }
        Some("map") => {
            let keys: Vec<&str> = map_keys
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if keys.is_empty() {
                out.push(format!(
                    "{path}: a map list needs x-kubernetes-list-map-keys"
                ));
            }
            if item_type != Some("object") {
                out.push(format!("{path}: a map list needs object items"));
            }
            let required: Vec<&str> = items
                .and_then(|i| i.get("required"))
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for key in keys {
                let key_schema = items
                    .and_then(|i| i.get("properties"))
                    .and_then(|p| p.get(key))
                    .and_then(Value::as_object);
                let Some(key_schema) = key_schema else {
                    out.push(format!("{path}: map key {key} is not a field of the items"));
                    continue;
                };
                let scalar = key_schema
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| SCALARS.contains(&t));
                if !scalar {
                    out.push(format!("{path}: map key {key} is not a scalar"));
                }
                if !required.contains(&key) && !key_schema.contains_key("default") {
                    out.push(format!(
                        "{path}: map key {key} is neither required nor defaulted"
                    ));
                }
            }
        }
        Some(other) => out.push(format!("{path}: unknown x-kubernetes-list-type {other}")),
    }
    if map_keys.is_some() && list_type != Some("map") {
        out.push(format!(
            "{path}: x-kubernetes-list-map-keys needs list-type map"
        ));
    }
}

/// The API server refuses a rule with an empty expression, a message with a line break, a
/// fieldPath that does not name a field of the schema, or an unknown reason.
fn rule_violations(n: &Map<String, Value>, path: &str, out: &mut Vec<String>) {
    for rule in n
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
        if text.trim().is_empty() {
            out.push(format!("{path}: a rule without an expression"));
        }
        if let Some(message) = rule.get("message").and_then(Value::as_str)
            && (message.trim().is_empty() || message.contains('\n'))
        {
            out.push(format!(
                "{path}: rule `{text}`: message is empty or has a line break"
            ));
        }
        if let Some(field_path) = rule.get("fieldPath").and_then(Value::as_str)
            && resolve(n, field_path).is_none()
        {
            out.push(format!(
                "{path}: rule `{text}`: fieldPath {field_path} names no field"
            ));
        }
        if let Some(reason) = rule.get("reason").and_then(Value::as_str)
            && ![
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            ]
            .contains(&reason)
        {
            out.push(format!("{path}: rule `{text}`: unknown reason {reason}"));
        }
    }
}

/// Follow `.a.b` through `properties` (and through `items` of arrays, for JSONPath filters).
fn resolve<'a>(mut node: &'a Map<String, Value>, dotted: &str) -> Option<&'a Map<String, Value>> {
    for segment in dotted.split('.').filter(|s| !s.is_empty()) {
        while node.get("type").and_then(Value::as_str) == Some("array") {
            node = node.get("items")?.as_object()?;
        }
        node = node.get("properties")?.get(segment)?.as_object()?;
    }
    Some(node)
}

#[test]
fn the_schema_is_structural() {
    let schema = openapi_schema();
    let mut violations = Vec::new();
    structural_violations(schema, "", false, &mut violations);
    let root = obj(schema);
    if let Some(meta) = root.get("properties").and_then(|p| p.get("metadata")) {
        let meta = obj(meta);
        if meta.keys().any(|k| k != "type" && k != "properties") {
            violations.push("metadata: only name/generateName may be constrained".into());
        }
        if let Some(props) = meta.get("properties").and_then(Value::as_object)
            && props.keys().any(|k| k != "name" && k != "generateName")
        {
            violations.push("metadata: only name/generateName may be constrained".into());
        }
    }
    assert_eq!(root.get("type"), Some(&json!("object")));
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_structural_check_catches_what_it_should() {
    // A check that cannot fail proves nothing: feed it one instance of each rule broken.
    let bad = json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "x"},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "nullable": {"type": "string", "nullable": true},
            "noListType": {"type": "array", "items": {"type": "string"}},
            "setOfObjects": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "object"}},
            "mapOptionalKey": {
                "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
                "items": {"type": "object", "properties": {"k": {"type": "string"}}}
            },
            "junctor": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "anyOf": [{"type": "object", "properties": {"b": {"type": "string"}}}]
            },
            "floatBound": {"type": "integer", "maximum": 2.0},
            "badRule": {
                "type": "object", "properties": {},
                "x-kubernetes-validations": [{"rule": "true", "message": "a\nb", "fieldPath": ".nope"}]
            }
        }
    });
    let mut violations = Vec::new();
    structural_violations(&bad, "", false, &mut violations);
    let expected = [
        ".untyped: every node needs a non-empty type",
        ".both: properties and additionalProperties exclude each other",
        ".nullable: nullable: a null means what absence means, and would reach the CEL rules",
        ".noListType: an array needs x-kubernetes-list-type",
        ".setOfObjects: a set needs scalar items, got Some(\"object\")",
        ".mapOptionalKey: map key k is neither required nor defaulted",
        ".junctor.anyOf[0]: `type` is not allowed inside a junctor",
        ".junctor.anyOf[0].b: `type` is not allowed inside a junctor",
        ".junctor.anyOf[0]: field b is not specified outside the junctor",
        ".floatBound: maximum of an integer is written as an integer",
        ".badRule: rule `true`: message is empty or has a line break",
        ".badRule: rule `true`: fieldPath .nope names no field",
    ];
    assert_eq!(violations, expected);
}

#[test]
fn every_property_has_a_description_without_hard_wraps() {
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        let n = obj(node);
        if let Some(props) = n.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let at = format!("{path}.{name}");
                match child.get("description").and_then(Value::as_str) {
                    None | Some("") => out.push(format!("{at}: no description")),
                    Some(text) => {
                        // A single newline is rustdoc's wrapping; kubectl explain would print it.
                        let unwrapped = text.split("\n\n").all(|para| {
                            para.lines()
                                .skip(1)
                                .all(|l| l.starts_with("- ") || l.starts_with("* "))
                        });
                        if !unwrapped {
                            out.push(format!("{at}: description keeps rustdoc's line wraps"));
                        }
                    }
                }
                walk(child, &at, out);
            }
        }
        if let Some(items) = n.get("items") {
            walk(items, &format!("{path}[]"), out);
        }
    }
    let mut missing = Vec::new();
    walk(openapi_schema(), "", &mut missing);
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_crd_is_well_under_the_annotation_limit() {
    let json = serde_json::to_vec(&crd_value()).unwrap();
    let yaml = crd_yaml().unwrap();
    println!(
        "CRD size: {} bytes as JSON (what a client-side apply annotation holds), {} bytes as YAML; \
         limit 262144",
        json.len(),
        yaml.len()
    );
    assert!(json.len() < 256 * 1024 / 2, "{} bytes", json.len());
}

#[test]
fn printer_columns_name_fields_of_the_schema() {
    let crd = crd_value();
    let columns = crd
        .pointer("/spec/versions/0/additionalPrinterColumns")
        .and_then(Value::as_array)
        .unwrap();
    let names: Vec<&str> = columns
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Job ID", "Platform", "Type", "State", "Ready", "Synced", "Age"
        ]
    );
    for column in columns {
        let path = column["jsonPath"].as_str().unwrap();
        if path.starts_with(".metadata.") {
            continue;
        }
        // `.status.conditions[?(@.type=="Ready")].status` → `.status.conditions.status`
        let plain: String = {
            let mut depth = 0;
            path.chars()
                .filter(|c| {
                    match c {
                        '[' => depth += 1,
                        ']' => {
                            depth -= 1;
                            return false;
                        }
                        _ => {}
                    }
                    depth == 0
                })
                .collect()
        };
        assert!(
            resolve(obj(openapi_schema()), &plain).is_some(),
            "printer column {path} names no field"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CEL: compilation and the API server's cost rules

/// The variables a rule binds itself in a comprehension (`list.all(a, ...)`).
fn comprehension_variables(rule: &str) -> Vec<String> {
    let re = regex::Regex::new(
        r"\.(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,",
    )
    .unwrap();
    re.captures_iter(rule).map(|c| c[1].to_string()).collect()
}

fn analyse(node: &CompiledSchema, path: &str, rules: &mut usize, out: &mut Vec<String>) {
    for result in &node.validations {
        match result {
            Ok(compiled) => {
                *rules += 1;
                let rule = &compiled.rule.rule;
                let bound = comprehension_variables(rule);
                for warning in analyze_rule(rule, node, ScopeContext::CrdValidation) {
                    // kube-cel 0.8's scope check counts a comprehension's own variable as a free
                    // reference; those are in scope, anything else is a finding.
                    if warning.kind == WarningKind::WrongScope
                        && bound
                            .iter()
                            .any(|v| warning.message.starts_with(&format!("variable '{v}' ")))
                    {
                        continue;
                    }
                    out.push(format!(
                        "{path}: `{rule}`: {:?}: {}",
                        warning.kind, warning.message
                    ));
                }
            }
            Err(e) => out.push(format!("{path}: does not compile: {e:?}")),
        }
    }
    let mut names: Vec<&String> = node.properties.keys().collect();
    names.sort();
    for name in names {
        analyse(
            &node.properties[name],
            &format!("{path}.{name}"),
            rules,
            out,
        );
    }
    if let Some(items) = &node.items {
        analyse(items, &format!("{path}[]"), rules, out);
    }
    if let Some(additional) = &node.additional_properties {
        analyse(additional, &format!("{path}{{}}"), rules, out);
    }
    for branch in node.all_of.iter().chain(&node.one_of).chain(&node.any_of) {
        analyse(branch, path, rules, out);
    }
}

fn rule_count(node: &Value) -> usize {
    match node {
        Value::Object(n) => {
            n.get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                + n.iter()
                    .filter(|(k, _)| k.as_str() != "x-kubernetes-validations")
                    .map(|(_, v)| rule_count(v))
                    .sum::<usize>()
        }
        Value::Array(items) => items.iter().map(rule_count).sum(),
        _ => 0,
    }
}

#[test]
fn every_cel_rule_compiles_and_is_cheap_and_bounded() {
    let compiled = compile_schema(openapi_schema());
    let mut rules = 0;
    let mut warnings = Vec::new();
    analyse(&compiled, "", &mut rules, &mut warnings);
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
    // 2 on spec, 13 on spec.job, 1 on patchTuesdayPlusXDays, 2 deferments, 1 reboot countdown,
    // 6 on each of the 2 action lists, 1 on each of their 4 script sources, 1 on chainedJobRule.
    assert_eq!(rules, 36);
    assert_eq!(
        rules,
        rule_count(openapi_schema()),
        "the walk saw every rule of the schema"
    );
}

// ---------------------------------------------------------------------------------------------
// CEL: each rule, once passing and once failing, through validate_manifest

const UUID_A: &str = "07eed865-d8e2-4cba-9c2a-27eeeef0598a";
const UUID_B: &str = "5b0fd130-52c8-473c-96b1-8f10ea7d4c13";

fn minimal() -> Value {
    json!({
        "apiVersion": "pm.qualys.io/v1alpha1",
        "kind": "DeploymentJob",
        "metadata": {"name": "job", "namespace": "default"},
        "spec": {"job": {"name": "Job", "platform": "Windows", "scheduleType": "On-demand"}}
    })
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (key, value) in p {
                if value.is_null() {
                    t.remove(key);
                } else {
                    merge(t.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// `patch` applies to `spec.job` unless it names `spec` itself.
fn manifest(job_patch: Value) -> Value {
    let mut doc = minimal();
    merge(&mut doc["spec"]["job"], &job_patch);
    doc
}

fn outcome(doc: &Value) -> Vec<(String, String)> {
    match validate_manifest(doc) {
        Ok(_) => vec![],
        Err(problems) => problems.into_iter().map(|p| (p.path, p.message)).collect(),
    }
}

struct Case {
    rule: &'static str,
    pass: Value,
    fail: Value,
    expect: Vec<(&'static str, &'static str)>,
}

fn cases() -> Vec<Case> {
    let run_script = json!({"action": "Run Script", "params": {"actionItem": "a", "timeout": 180}});
    let with = |extra: Value| {
        let mut a = run_script.clone();
        merge(&mut a, &extra);
        a
    };
    let cm = json!({"configMapKeyRef": {"name": "scripts", "key": "a.ps1"}});
    let registry = json!({"action": "Change Registry Key", "params": {
        "actionItem": "Disable SMBv1",
        "registryKey": "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\LanmanServer\\Parameters",
        "registryAction": "Update", "valueName": "SMB1", "valueType": "REG_DWORD", "valueData": "0"}});
    let uninstall = json!({"action": "Uninstall Software", "params": {
        "actionItem": "Remove Acme", "softwareName": "Acme Agent",
        "uninstallCommand": "msiexec /x {0F3C2B1A-0000-4000-8000-000000000001} /qn"}});
    vec![
        Case {
            rule: "Run Script pre-deploy action needs a script (unless adopting)",
            pass: json!({"$spec": {"jobId": UUID_B}, "preDeployActions": [run_script.clone()]}),
            fail: json!({"preDeployActions": [run_script]}),
            expect: vec![(
                "spec.job.preDeployActions",
                "a Run Script pre-deploy action needs script, scriptFrom or defaultScriptType (scripts may be left unmanaged only when spec.jobId adopts an existing job)",
            )],
        },
        Case {
            rule: "Run Script post-deploy action needs a script",
            pass: json!({"postDeployActions": [with(json!({"defaultScriptType": "MakeCache"}))]}),
            fail: json!({"postDeployActions": [with(json!({}))]}),
            expect: vec![(
                "spec.job.postDeployActions",
                "a Run Script post-deploy action needs script, scriptFrom or defaultScriptType (scripts may be left unmanaged only when spec.jobId adopts an existing job)",
            )],
        },
        Case {
            rule: "Change Registry Key needs its key and what to do with it",
            pass: json!({"preDeployActions": [registry.clone()]}),
            fail: json!({"preDeployActions": [{"action": "Change Registry Key", "params": {"registryKey": "HKEY_LOCAL_MACHINE\\SOFTWARE\\Acme"}}]}),
            expect: vec![(
                "spec.job.preDeployActions[0].params",
                "a Change Registry Key action needs params.registryKey and params.registryAction",
            )],
        },
        Case {
            rule: "registry fields only on Change Registry Key",
            pass: json!({"postDeployActions": [registry.clone()]}),
            fail: json!({"postDeployActions": [{"action": "Install Software", "params": {"valueName": "Level"}}]}),
            expect: vec![(
                "spec.job.postDeployActions[0].params",
                "registryKey, registryAction, valueName, valueType and valueData are for Change Registry Key actions",
            )],
        },
        Case {
            rule: "Uninstall Software needs the software's name",
            pass: json!({"postDeployActions": [uninstall.clone()]}),
            fail: json!({"postDeployActions": [{"action": "Uninstall Software", "params": {"uninstallCommand": "x"}}]}),
            expect: vec![(
                "spec.job.postDeployActions[0].params",
                "an Uninstall Software action needs params.softwareName",
            )],
        },
        Case {
            rule: "uninstall fields only on Uninstall Software",
            pass: json!({"preDeployActions": [uninstall.clone()]}),
            fail: json!({"preDeployActions": [{"action": "Install Software", "params": {"softwareName": "Acme"}}]}),
            expect: vec![(
                "spec.job.preDeployActions[0].params",
                "softwareName and uninstallCommand are for Uninstall Software actions",
            )],
        },
        Case {
            rule: "Change Registry Key pre-deploy action only on Windows",
            pass: json!({"platform": "Linux", "preDeployActions": [uninstall.clone()]}),
            fail: json!({"platform": "Linux", "preDeployActions": [registry.clone()]}),
            expect: vec![(
                "spec.job.preDeployActions",
                "a Change Registry Key pre-deploy action needs platform Windows",
            )],
        },
        Case {
            rule: "Change Registry Key post-deploy action only on Windows",
            pass: json!({"platform": "Windows", "postDeployActions": [registry.clone()]}),
            fail: json!({"platform": "Linux", "postDeployActions": [registry]}),
            expect: vec![(
                "spec.job.postDeployActions",
                "a Change Registry Key post-deploy action needs platform Windows",
            )],
        },
        Case {
            rule: "startDateTime unless On-demand",
            pass: json!({"scheduleType": "Once", "startDateTime": "2025-7-01 09:57:18 AM"}),
            fail: json!({"scheduleType": "Once"}),
            expect: vec![(
                "spec.job.startDateTime",
                "startDateTime is required unless scheduleType is On-demand",
            )],
        },
        Case {
            rule: "linkedJobId or linkedJobRef, not both",
            pass: json!({"linkedJobRef": {"name": "parent"}}),
            fail: json!({"linkedJobRef": {"name": "parent"}, "linkedJobId": UUID_B}),
            expect: vec![(
                "spec.job.linkedJobRef",
                "set linkedJobId (a Qualys job UUID) or linkedJobRef (a DeploymentJob), not both",
            )],
        },
        Case {
            rule: "chainedJobRule needs a linked job",
            pass: json!({"chainedJobRule": []}),
            fail: json!({"chainedJobRule": [{"actionIds": [UUID_A], "threshold": 100}]}),
            expect: vec![
                (
                    "spec.job.chainedJobRule",
                    "chainedJobRule needs a linked job: set linkedJobRef or linkedJobId",
                ),
                (
                    "spec.job.chainedJobRule",
                    "chainedJobRule[].actionIds are raw Qualys action ids; they need linkedJobId (with linkedJobRef use actionRefs)",
                ),
            ],
        },
        Case {
            rule: "actionRefs need linkedJobRef",
            pass: json!({"linkedJobRef": {"name": "parent"}, "chainedJobRule": [{"actionRefs": [{"actionItem": "post"}], "threshold": 100}]}),
            fail: json!({"linkedJobId": UUID_B, "chainedJobRule": [{"actionRefs": [{"actionItem": "post"}], "threshold": 100}]}),
            expect: vec![(
                "spec.job.chainedJobRule",
                "chainedJobRule[].actionRefs name actions of the linkedJobRef parent; they need linkedJobRef",
            )],
        },
        Case {
            rule: "actionIds need linkedJobId",
            pass: json!({"linkedJobId": UUID_B, "chainedJobRule": [{"actionIds": [UUID_A], "threshold": 100}]}),
            fail: json!({"linkedJobRef": {"name": "parent"}, "chainedJobRule": [{"actionIds": [UUID_A], "threshold": 100}]}),
            expect: vec![(
                "spec.job.chainedJobRule",
                "chainedJobRule[].actionIds are raw Qualys action ids; they need linkedJobId (with linkedJobRef use actionRefs)",
            )],
        },
        Case {
            rule: "exactly one of actionRefs and actionIds",
            pass: json!({"linkedJobId": UUID_B, "chainedJobRule": [{"actionIds": [UUID_A], "threshold": 1}]}),
            fail: json!({"linkedJobRef": {"name": "parent"}, "chainedJobRule": [{"threshold": 100}]}),
            expect: vec![(
                "spec.job.chainedJobRule[0]",
                "set exactly one of actionRefs (with linkedJobRef) and actionIds (with linkedJobId)",
            )],
        },
        Case {
            rule: "timeout and timeoutUnit together",
            pass: json!({"timeout": 6, "timeoutUnit": "HOURS"}),
            fail: json!({"timeout": 6}),
            expect: vec![(
                "spec.job.timeoutUnit",
                "timeout and timeoutUnit are set together",
            )],
        },
        Case {
            rule: "timeout at most 168 HOURS",
            pass: json!({"timeout": 168, "timeoutUnit": "HOURS"}),
            fail: json!({"timeout": 169, "timeoutUnit": "HOURS"}),
            expect: vec![(
                "spec.job.timeout",
                "timeout is at most 168 HOURS or 10080 MINUTES",
            )],
        },
        Case {
            rule: "downloadRandomizeTime and its unit together",
            pass: json!({"downloadRandomizeTime": 0, "downloadRandomizeTimeUnit": "MINUTES"}),
            fail: json!({"downloadRandomizeTimeUnit": "MINUTES"}),
            expect: vec![(
                "spec.job.downloadRandomizeTimeUnit",
                "downloadRandomizeTime and downloadRandomizeTimeUnit are set together",
            )],
        },
        Case {
            rule: "downloadRandomizeTime at most 2 HOURS",
            pass: json!({"downloadRandomizeTime": 2, "downloadRandomizeTimeUnit": "HOURS"}),
            fail: json!({"downloadRandomizeTime": 3, "downloadRandomizeTimeUnit": "HOURS"}),
            expect: vec![(
                "spec.job.downloadRandomizeTime",
                "downloadRandomizeTime is at most 2 HOURS or 120 MINUTES",
            )],
        },
        Case {
            rule: "downloadRandomizeTime shorter than timeout",
            pass: json!({"timeout": 61, "timeoutUnit": "MINUTES", "downloadRandomizeTime": 1, "downloadRandomizeTimeUnit": "HOURS"}),
            fail: json!({"timeout": 60, "timeoutUnit": "MINUTES", "downloadRandomizeTime": 1, "downloadRandomizeTimeUnit": "HOURS"}),
            expect: vec![(
                "spec.job.downloadRandomizeTime",
                "downloadRandomizeTime must be shorter than timeout",
            )],
        },
        Case {
            rule: "Weekly needs recurringWeekDays",
            pass: json!({"scheduleType": "Weekly", "startDateTime": "2025-7-01 09:57:18 AM", "recurringWeekDays": "0,1,0,0,0,0,0"}),
            fail: json!({"scheduleType": "Weekly", "startDateTime": "2025-7-01 09:57:18 AM"}),
            expect: vec![(
                "spec.job.recurringWeekDays",
                "a Weekly job needs recurringWeekDays",
            )],
        },
        Case {
            rule: "patchTuesdayPlusXDays is not 0",
            pass: json!({"patchTuesdayPlusXDays": -12}),
            fail: json!({"patchTuesdayPlusXDays": 0}),
            expect: vec![(
                "spec.job.patchTuesdayPlusXDays",
                "patchTuesdayPlusXDays is −27…−1 or 1…27, not 0",
            )],
        },
        Case {
            rule: "deferment interval at most 24 HOURS (preDeployment)",
            pass: json!({"preDeployment": {"deferment": {"count": 3, "interval": 24, "intervalUnit": "HOURS"}}}),
            fail: json!({"preDeployment": {"deferment": {"count": 3, "interval": 25, "intervalUnit": "HOURS"}}}),
            expect: vec![(
                "spec.job.preDeployment.deferment.interval",
                "a deferment interval is at most 24 HOURS or 1440 MINUTES",
            )],
        },
        Case {
            rule: "deferment interval at most 24 HOURS (rebootOption)",
            pass: json!({"postDeployment": {"rebootOption": {"deferment": {"interval": 1440, "intervalUnit": "MINUTES"}}}}),
            fail: json!({"postDeployment": {"rebootOption": {"deferment": {"interval": 25, "intervalUnit": "HOURS"}}}}),
            expect: vec![(
                "spec.job.postDeployment.rebootOption.deferment.interval",
                "a deferment interval is at most 24 HOURS or 1440 MINUTES",
            )],
        },
        Case {
            rule: "reboot countdown at most 24 HOURS",
            pass: json!({"postDeployment": {"rebootCountdown": {"interval": 15, "intervalUnit": "MINUTES"}}}),
            fail: json!({"postDeployment": {"rebootCountdown": {"interval": 48, "intervalUnit": "HOURS"}}}),
            expect: vec![(
                "spec.job.postDeployment.rebootCountdown.interval",
                "a reboot countdown is at most 24 HOURS or 1440 MINUTES",
            )],
        },
        Case {
            rule: "script or scriptFrom, not both",
            pass: json!({"preDeployActions": [with(json!({"scriptFrom": cm.clone()}))]}),
            fail: json!({"preDeployActions": [with(json!({"script": "bHM=", "scriptFrom": cm.clone()}))]}),
            expect: vec![(
                "spec.job.preDeployActions[0].scriptFrom",
                "set script (base64) or scriptFrom, not both",
            )],
        },
        Case {
            rule: "detectionScript or detectionScriptFrom, not both",
            pass: json!({"postDeployActions": [{"action": "Install Software", "detectionScript": ""}]}),
            fail: json!({"postDeployActions": [{"action": "Install Software", "detectionScript": "bHM=", "detectionScriptFrom": cm.clone()}]}),
            expect: vec![(
                "spec.job.postDeployActions[0].detectionScriptFrom",
                "set detectionScript (base64) or detectionScriptFrom, not both",
            )],
        },
        Case {
            rule: "a script source names exactly one of a ConfigMap and a Secret key",
            pass: json!({"postDeployActions": [{"action": "Install Software", "detectionScriptFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
            fail: json!({"postDeployActions": [{"action": "Install Software", "detectionScriptFrom": {
                "secretKeyRef": {"name": "s", "key": "k"}, "configMapKeyRef": {"name": "c", "key": "k"}
            }}]}),
            expect: vec![(
                "spec.job.postDeployActions[0].detectionScriptFrom",
                "set exactly one of configMapKeyRef and secretKeyRef",
            )],
        },
        Case {
            rule: "an empty script source",
            pass: json!({"preDeployActions": [with(json!({"scriptFrom": cm}))]}),
            fail: json!({"preDeployActions": [with(json!({"scriptFrom": {}}))]}),
            expect: vec![(
                "spec.job.preDeployActions[0].scriptFrom",
                "set exactly one of configMapKeyRef and secretKeyRef",
            )],
        },
    ]
}

/// `{"$spec": {...}}` in a case patches `spec` rather than `spec.job`.
fn build(patch: &Value) -> Value {
    let mut patch = patch.clone();
    let spec_patch = patch.as_object_mut().and_then(|p| p.remove("$spec"));
    let mut doc = manifest(patch);
    if let Some(spec_patch) = spec_patch {
        merge(&mut doc["spec"], &spec_patch);
    }
    doc
}

#[test]
fn every_cel_rule_passes_and_fails_as_written() {
    for case in cases() {
        assert_eq!(
            outcome(&build(&case.pass)),
            vec![],
            "{}: the passing manifest",
            case.rule
        );
        let expected: Vec<(String, String)> = case
            .expect
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        assert_eq!(
            outcome(&build(&case.fail)),
            expected,
            "{}: the failing manifest",
            case.rule
        );
    }
}

#[test]
fn the_rule_cases_cover_every_rule_message() {
    let mut messages = Vec::new();
    fn collect(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(n) => {
                for rule in n
                    .get("x-kubernetes-validations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push(rule["message"].as_str().unwrap().to_string());
                }
                n.values().for_each(|v| collect(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(openapi_schema(), &mut messages);
    let covered: Vec<&str> = cases()
        .iter()
        .flat_map(|c| c.expect.iter().map(|(_, m)| *m).collect::<Vec<_>>())
        .collect();
    let uncovered: Vec<&String> = messages
        .iter()
        .filter(|m| !covered.contains(&m.as_str()))
        .collect();
    assert!(
        uncovered.is_empty(),
        "rules without a failing case: {uncovered:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// crds/

#[test]
fn crds_file_is_the_generated_crd() {
    let path = repo().join("crds/deploymentjob.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == crd_yaml().unwrap(),
        "{} differs from the generated CRD; run `cargo run -- crd > crds/deploymentjob.yaml`",
        path.display()
    );
    // And it reads back as the same document (the YAML writer's folding round-trips).
    assert_eq!(yaml_documents(&on_disk).unwrap(), [crd_value()]);
}

#[test]
fn crds_kustomization_lists_the_crd_and_renders() {
    let kustomization = std::fs::read_to_string(repo().join("crds/kustomization.yaml")).unwrap();
    let docs = yaml_documents(&kustomization).unwrap();
    assert_eq!(docs[0]["kind"], "Kustomization");
    assert_eq!(docs[0]["resources"], json!(["deploymentjob.yaml"]));

    let rendered = match std::process::Command::new("kubectl")
        .args(["kustomize", "crds"])
        .current_dir(repo())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("kubectl not usable ({e}); `kubectl kustomize crds/` not checked");
            return;
        }
    };
    assert!(
        rendered.status.success(),
        "kubectl kustomize crds/ failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    assert_eq!(yaml_documents(&rendered).unwrap(), [crd_value()]);
}

// ---------------------------------------------------------------------------------------------
// examples/

struct ExampleFile {
    name: String,
    docs: Vec<Value>,
}

fn examples() -> Vec<ExampleFile> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| ExampleFile {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            docs: yaml_documents(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        })
        .collect()
}

fn of_kind<'a>(file: &'a ExampleFile, kind: &str) -> Vec<&'a Value> {
    file.docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn by_name<'a>(file: &'a ExampleFile, kind: &str, name: &str) -> &'a Value {
    of_kind(file, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{}: no {kind} {name}", file.name))
}

#[test]
fn every_example_deployment_job_is_valid_and_self_contained() {
    let files = examples();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "chained-job.yaml",
            "linux-rollback.yaml",
            "windows-install.yaml"
        ]
    );
    let mut jobs = 0;
    for file in &files {
        for doc in &file.docs {
            assert_eq!(doc["metadata"]["namespace"], "default", "{}", file.name);
            assert!(
                doc["kind"] == "DeploymentJob" || doc["kind"] == "ConfigMap",
                "{}: only DeploymentJobs and their ConfigMaps",
                file.name
            );
        }
        for doc in of_kind(file, "DeploymentJob") {
            jobs += 1;
            let job = validate_manifest(doc).unwrap_or_else(|problems| {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                panic!("{}: {}", file.name, lines.join("\n"))
            });
            assert!(
                job.spec.connection_ref.is_none(),
                "examples use no real credentials"
            );
            // Every script source and parent is in the same file.
            let spec_job = &doc["spec"]["job"];
            for list in ["preDeployActions", "postDeployActions"] {
                for action in spec_job[list].as_array().into_iter().flatten() {
                    for source in ["scriptFrom", "detectionScriptFrom"] {
                        let Some(r) = action[source].get("configMapKeyRef") else {
                            continue;
                        };
                        let cm = by_name(file, "ConfigMap", r["name"].as_str().unwrap());
                        let key = r["key"].as_str().unwrap();
                        assert!(
                            cm["data"][key].is_string(),
                            "{}: ConfigMap key {key}",
                            file.name
                        );
                    }
                }
            }
            if let Some(parent) = spec_job["linkedJobRef"]["name"].as_str() {
                let parent = by_name(file, "DeploymentJob", parent);
                let items: Vec<&Value> = parent["spec"]["job"]["postDeployActions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| &a["params"]["actionItem"])
                    .collect();
                for rule in spec_job["chainedJobRule"].as_array().unwrap() {
                    for r in rule["actionRefs"].as_array().unwrap() {
                        assert!(
                            items.contains(&&r["actionItem"]),
                            "actionRef {r} names a parent action"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(jobs, 4);
}

fn seed(name: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("testdata/seed").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Equal, reading a string of digits and a number as the same (the seed sends `"-12"`, `"80"`).
fn same_scalar(a: &Value, b: &Value) -> bool {
    let number = |v: &Value| match v {
        Value::String(s) => s.parse::<i64>().ok(),
        other => other.as_i64(),
    };
    a == b || (a.is_number() != b.is_number() && number(a).is_some() && number(a) == number(b))
}

/// Every value the example sets is the seed's value at the same place.
fn example_values_are_the_seeds(example: &Value, seed: &Value, path: &str, out: &mut Vec<String>) {
    const NOT_IN_SEED: &[&str] = &[
        "scriptFrom",
        "detectionScriptFrom",
        "linkedJobRef",
        "chainedJobRule",
    ];
    match (example, seed) {
        (Value::Object(e), Value::Object(s)) => {
            for (key, value) in e {
                if NOT_IN_SEED.contains(&key.as_str()) {
                    continue;
                }
                match s.get(key) {
                    Some(seed_value) => example_values_are_the_seeds(
                        value,
                        seed_value,
                        &format!("{path}.{key}"),
                        out,
                    ),
                    None => out.push(format!("{path}.{key}: not in the seed")),
                }
            }
        }
        (Value::Array(e), Value::Array(s)) if e.len() == s.len() => {
            for (i, (ev, sv)) in e.iter().zip(s).enumerate() {
                example_values_are_the_seeds(ev, sv, &format!("{path}[{i}]"), out);
            }
        }
        (e, s) if same_scalar(e, s) => {}
        (e, s) => out.push(format!("{path}: example {e}, seed {s}")),
    }
}

/// Every writable field the seed sets (not null) is in the example. A script the seed gives as a
/// storage path has unknown content; one the example takes from a ConfigMap is checked apart.
fn seed_values_are_in_the_example(
    seed: &Value,
    example: &Value,
    schema: &Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let base64 = regex::Regex::new(BASE64_PATTERN).unwrap();
    match (seed, example) {
        (Value::Object(s), Value::Object(e)) => {
            for (key, value) in s {
                let Some(field_schema) = schema.get("properties").and_then(|p| p.get(key)) else {
                    continue; // server-managed or not in the CRD
                };
                let from_elsewhere = match key.as_str() {
                    "script" | "detectionScript" => {
                        !base64.is_match(value.as_str().unwrap_or_default())
                            || e.contains_key(&format!("{key}From"))
                    }
                    "linkedJobId" => e.contains_key("linkedJobRef"),
                    "actionIds" => e.contains_key("actionRefs"),
                    _ => false,
                };
                match e.get(key) {
                    _ if value.is_null() || from_elsewhere => {}
                    Some(ev) => seed_values_are_in_the_example(
                        value,
                        ev,
                        field_schema,
                        &format!("{path}.{key}"),
                        out,
                    ),
                    None => out.push(format!(
                        "{path}.{key}: the seed sets it, the example does not"
                    )),
                }
            }
        }
        (Value::Array(s), Value::Array(e)) => {
            for (i, (sv, ev)) in s.iter().zip(e).enumerate() {
                seed_values_are_in_the_example(
                    sv,
                    ev,
                    &schema["items"],
                    &format!("{path}[{i}]"),
                    out,
                );
            }
        }
        _ => {}
    }
}

#[test]
fn examples_are_faithful_to_the_seed_requests() {
    let files = examples();
    let file = |name: &str| files.iter().find(|f| f.name == name).unwrap();
    let job_schema = &openapi_schema()["properties"]["spec"]["properties"]["job"];
    for (example_file, job_name, seed_file) in [
        (
            "windows-install.yaml",
            "windows-install",
            "01-windows-install.request.json",
        ),
        (
            "linux-rollback.yaml",
            "linux-rollback",
            "02-linux-rollback.request.json",
        ),
        (
            "chained-job.yaml",
            "chained-job",
            "03-chained-job.request.json",
        ),
    ] {
        let example = &by_name(file(example_file), "DeploymentJob", job_name)["spec"]["job"];
        let seed = seed(seed_file);
        let mut differences = Vec::new();
        example_values_are_the_seeds(example, &seed, "spec.job", &mut differences);
        seed_values_are_in_the_example(&seed, example, job_schema, "spec.job", &mut differences);
        assert!(
            differences.is_empty(),
            "{example_file}:\n{}",
            differences.join("\n")
        );
    }

    // Example 03: the chain, and the script decoded from the seed's base64.
    let chained = file("chained-job.yaml");
    let child = &by_name(chained, "DeploymentJob", "chained-job")["spec"]["job"];
    assert_eq!(
        child["chainedJobRule"],
        json!([{"field": "postDeployAction", "actionRefs": [{"actionItem": "post"}], "threshold": 100,
                "condition": "Post Actions were successfully executed"}])
    );
    assert_eq!(child["linkedJobRef"], json!({"name": "only-pre-post"}));
    let parent = &by_name(chained, "DeploymentJob", "only-pre-post")["spec"]["job"];
    assert_eq!(parent["name"], "only pre post");
    assert_eq!(parent["postDeployActions"][0]["action"], "Run Script");
    let seed03 = seed("03-chained-job.request.json");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(seed03["preDeployActions"][0]["script"].as_str().unwrap())
        .unwrap();
    let decoded = String::from_utf8(decoded).unwrap();
    let in_configmap =
        by_name(chained, "ConfigMap", "notepad-scripts")["data"]["notepad-detection.ps1"]
            .as_str()
            .unwrap();
    assert_eq!(in_configmap.trim_end(), decoded.trim_end());
    assert!(in_configmap.contains("Notepad++ is already installed on your machine."));

    // Example 02: `ls` both ways.
    let linux = file("linux-rollback.yaml");
    let job = &by_name(linux, "DeploymentJob", "linux-rollback")["spec"]["job"];
    assert_eq!(job["preDeployActions"][0]["script"], "bHM=");
    let cm = by_name(linux, "ConfigMap", "linux-rollback-scripts");
    assert_eq!(
        cm["data"]["post-deploy.sh"], "ls",
        "exactly the bytes of base64 bHM="
    );
}

#[test]
fn the_credentials_example_is_apart_and_holds_placeholders() {
    let path = repo().join("examples/credentials/qualys-credentials.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = yaml_documents(&text).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"], "Secret");
    let data = docs[0]["stringData"].as_object().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["gatewayUrl", "username", "password"]);
    assert!(data["password"].as_str().unwrap().starts_with("REPLACE-"));
    assert!(text.contains("kubectl create secret generic qualys-credentials"));
    assert!(!Path::new(&repo().join("examples/qualys-credentials.yaml")).exists());
}

#[test]
fn the_example_in_the_docs_is_valid() {
    let doc = std::fs::read_to_string(repo().join("docs/crd.md")).unwrap();
    let start = doc.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let manifests = yaml_documents(&doc[start..end]).unwrap();
    assert_eq!(manifests.len(), 1);
    let job = validate_manifest(&manifests[0]).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(job.spec.job.patch_tuesday_plus_x_days, Some(2));
}
