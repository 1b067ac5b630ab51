//! The one way a DeploymentJob manifest is judged, by the CLI (`plan`/`apply` on files) and by
//! the controller alike: [`validate_manifest`].
//!
//! It runs what the API server runs at admission, in the same order, against the same generated
//! document ([`super::openapi_schema`]):
//! 1. the OpenAPI schema: apiVersion/kind, unknown fields (the Rust types tolerate them, see
//!    ARCHITECTURE.md, "Unknown is kept", so they are found here), types, required fields,
//!    enums, ranges, lengths, item counts, patterns, nulls, int-or-string, set uniqueness;
//! 2. deserialisation into [`DeploymentJob`];
//! 3. the CEL rules (`x-kubernetes-validations`), evaluated by kube's `cel` feature from the
//!    schema itself, so there is one rule set and no Rust copy of it.
//!
//! Messages name the field (`spec.job.preDeployActions[0].params.timeout`) and what is allowed.
//! They never quote a script: a value of a `script`/`detectionScript` field is described only by
//! its length.

use super::{
    BASE64_PATTERN, CONFIG_KEY_PATTERN, DNS_SUBDOMAIN_PATTERN, DeploymentJob,
    START_DATE_TIME_PATTERN, UUID_PATTERN, WEEK_DAYS_PATTERN, openapi_schema,
};
use kube::core::cel::{CompiledSchema, compile_schema, validate_compiled};
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

/// `apiVersion` of a DeploymentJob.
pub const API_VERSION: &str = "pm.qualys.io/v1alpha1";
/// `kind` of a DeploymentJob.
pub const KIND: &str = "DeploymentJob";

/// One thing wrong with a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecProblem {
    /// Where, e.g. `spec.job.preDeployActions[0].params.timeout`; empty for the whole document.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for SpecProblem {}

/// What to do with a field the schema does not declare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownFields {
    /// Report it (a typo would otherwise silently leave a field unmanaged). For files.
    #[default]
    Reject,
    /// Skip it: an object stored under a newer CRD may carry fields this binary does not know,
    /// and an older operator must tolerate them (the API server has already checked them).
    Ignore,
}

/// Judge a DeploymentJob manifest (a parsed YAML/JSON document) the way the API server would,
/// rejecting unknown fields, and return the typed resource.
///
/// All problems are reported at once, in document order. The CEL rules run only once the
/// document has the right shape (as in the API server, where schema errors stop admission first).
pub fn validate_manifest(raw: &Value) -> Result<DeploymentJob, Vec<SpecProblem>> {
    validate_manifest_with(raw, UnknownFields::Reject)
}

/// [`validate_manifest`], choosing what happens to undeclared fields.
pub fn validate_manifest_with(
    raw: &Value,
    unknown: UnknownFields,
) -> Result<DeploymentJob, Vec<SpecProblem>> {
    let mut check = Checker {
        unknown,
        problems: Vec::new(),
    };
    check.document(raw);
    if !check.problems.is_empty() {
        return Err(check.problems);
    }
    let job: DeploymentJob = serde_json::from_value(raw.clone()).map_err(|e| {
        vec![SpecProblem {
            path: String::new(),
            message: format!("cannot be read as a DeploymentJob: {e}"),
        }]
    })?;
    if let Err(errors) = validate_compiled(compiled_schema(), raw, None) {
        return Err(errors
            .into_iter()
            .map(|e| SpecProblem {
                path: e.field_path.clone(),
                message: e.message.clone(),
            })
            .collect());
    }
    Ok(job)
}

/// The CEL rules of the schema, compiled once per process.
fn compiled_schema() -> &'static CompiledSchema {
    static COMPILED: OnceLock<CompiledSchema> = OnceLock::new();
    COMPILED.get_or_init(|| compile_schema(openapi_schema()))
}

/// Every `pattern` of the schema, compiled once. A pattern that does not compile is missing
/// here and reported as a problem when used (fail closed); a test keeps that from happening.
fn patterns() -> &'static HashMap<String, Regex> {
    static PATTERNS: OnceLock<HashMap<String, Regex>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let mut found = Vec::new();
        collect_patterns(openapi_schema(), &mut found);
        found
            .into_iter()
            .chain([DNS_LABEL_PATTERN.to_string()])
            .filter_map(|p| Regex::new(&p).ok().map(|re| (p, re)))
            .collect()
    })
}

fn collect_patterns(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(node) => {
            for (key, child) in node {
                match (key.as_str(), child) {
                    ("pattern", Value::String(p)) => out.push(p.clone()),
                    ("enum" | "default" | "x-kubernetes-validations", _) => {}
                    _ => collect_patterns(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect_patterns(c, out)),
        _ => {}
    }
}

/// A namespace name (RFC 1123 label).
const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The ObjectMeta fields a manifest may carry.
const METADATA_FIELDS: &[&str] = &[
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// Fields of a Qualys job body (as "Get Deployment by Job ID" returns it) that the server owns;
/// pasted into `spec.job` they get a specific message, not "unknown field".
const SERVER_MANAGED: &[&str] = &[
    "id",
    "customerId",
    "schemaVersion",
    "createdBy",
    "updatedBy",
    "deletedBy",
    "disabledPatches",
    "patchCount",
    "assetCount",
    "taggedAssetCount",
    "applicableAssetCount",
    "jobCategory",
    "jobTriggerStatus",
    "completionPercent",
    "totalAssetCount",
    "assetResultReceivedCount",
    "jobSource",
    "readOnly",
    "linkedToJob",
    "linkedJobs",
    "jobStartCountdown",
    "passwordAction",
    "subCategory",
    "remediationQids",
    "actionId",
    "actionType",
    "actionLinkedToJob",
];

struct Checker {
    unknown: UnknownFields,
    problems: Vec<SpecProblem>,
}

impl Checker {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(SpecProblem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn document(&mut self, raw: &Value) {
        let Some(doc) = raw.as_object() else {
            self.report(
                "",
                format!(
                    "a DeploymentJob manifest is a mapping with apiVersion, kind, metadata and spec; got {}",
                    describe("", raw)
                ),
            );
            return;
        };
        let root = schema_object(openapi_schema());
        self.fixed_string(doc, "apiVersion", API_VERSION);
        self.fixed_string(doc, "kind", KIND);
        match doc.get("metadata") {
            Some(meta) => self.metadata(meta),
            None => self.report(
                "metadata",
                "required field is missing (metadata.name names the DeploymentJob)",
            ),
        }
        for (key, value) in doc {
            match key.as_str() {
                "apiVersion" | "kind" | "metadata" => {}
                _ => match root.get("properties").and_then(|p| p.get(key)) {
                    Some(schema) => self.node(schema, value, key),
                    None => self.unknown_field(root, "", key),
                },
            }
        }
        self.required(root, doc, "");
    }

    fn fixed_string(&mut self, doc: &Map<String, Value>, key: &str, expected: &str) {
        match doc.get(key) {
            Some(Value::String(s)) if s == expected => {}
            Some(other) => self.report(
                key,
                format!("must be \"{expected}\"; got {}", describe(key, other)),
            ),
            None => self.report(
                key,
                format!("required field is missing (it is \"{expected}\")"),
            ),
        }
    }

    fn metadata(&mut self, meta: &Value) {
        // (The name rules are shared with the CLI's ConfigMaps and Secrets: see name_problem.)
        let Some(meta) = meta.as_object() else {
            self.report(
                "metadata",
                format!("must be a mapping; got {}", describe("metadata", meta)),
            );
            return;
        };
        match meta.get("name") {
            Some(Value::String(name)) => self.name(
                "metadata.name",
                name,
                253,
                DNS_SUBDOMAIN_PATTERN,
                "a Kubernetes object name",
            ),
            Some(other) => self.report(
                "metadata.name",
                format!("must be a string; got {}", describe("metadata.name", other)),
            ),
            None => self.report(
                "metadata.name",
                "required field is missing (generateName is not enough: the operator and the CLI \
                 find a DeploymentJob by its name)",
            ),
        }
        match meta.get("namespace") {
            Some(Value::String(ns)) => self.name(
                "metadata.namespace",
                ns,
                63,
                DNS_LABEL_PATTERN,
                "a namespace name",
            ),
            Some(other) => self.report(
                "metadata.namespace",
                format!(
                    "must be a string; got {}",
                    describe("metadata.namespace", other)
                ),
            ),
            None => {}
        }
        for map in ["labels", "annotations"] {
            let path = format!("metadata.{map}");
            match meta.get(map) {
                None => {}
                Some(Value::Object(entries)) => {
                    for (key, value) in entries {
                        if !value.is_string() {
                            let at = format!("{path}.{key}");
                            let got = describe(&at, value);
                            self.report(
                                &at,
                                format!("{map} values are strings (quote them); got {got}"),
                            );
                        }
                    }
                }
                Some(other) => {
                    let got = describe(&path, other);
                    self.report(&path, format!("must be a mapping of strings; got {got}"));
                }
            }
        }
        if self.unknown == UnknownFields::Reject {
            for key in meta.keys() {
                if !METADATA_FIELDS.contains(&key.as_str()) {
                    let hint = suggest(key, METADATA_FIELDS.iter().copied())
                        .map(|s| format!(" (did you mean {s}?)"))
                        .unwrap_or_default();
                    self.report(&format!("metadata.{key}"), format!("unknown field{hint}"));
                }
            }
        }
    }

    fn name(&mut self, path: &str, name: &str, max: usize, pattern: &str, what: &str) {
        if let Some(message) = dns_name_problem(name, max, pattern, what) {
            self.report(path, message);
        }
    }

    /// Check `value` against the schema node `schema`, at `path`.
    fn node(&mut self, schema: &Value, value: &Value, path: &str) {
        let schema = schema_object(schema);
        if value.is_null() {
            if schema.get("nullable") != Some(&Value::Bool(true)) {
                let empty = if schema.get("type") == Some(&Value::from("array")) {
                    ", or [] to manage it as empty"
                } else {
                    ""
                };
                self.report(
                    path,
                    format!(
                        "null is not allowed: leave the field out to leave it unmanaged{empty}"
                    ),
                );
            }
            return;
        }
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            if !(value.is_i64() || value.is_u64() || value.is_string()) {
                self.report(
                    path,
                    format!(
                        "must be an integer or a string of digits (e.g. 1008 or \"1008\"); got {}",
                        describe(path, value)
                    ),
                );
            }
            return;
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => self.object(schema, value, path),
            Some("array") => self.array(schema, value, path),
            Some("string") => self.string(schema, value, path),
            Some("integer") => self.integer(schema, value, path),
            Some("number") => match value.as_f64() {
                Some(n) => self.range(schema, n, path),
                None => self.wrong_type(path, "a number", value),
            },
            Some("boolean") if !value.is_boolean() => self.wrong_type(path, "true or false", value),
            // No type: x-kubernetes-preserve-unknown-fields; anything goes.
            _ => {}
        }
    }

    fn wrong_type(&mut self, path: &str, expected: &str, value: &Value) {
        let got = describe(path, value);
        self.report(path, format!("must be {expected}; got {got}"));
    }

    fn object(&mut self, schema: &Map<String, Value>, value: &Value, path: &str) {
        let Some(fields) = value.as_object() else {
            self.wrong_type(path, "a mapping", value);
            return;
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve =
            schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for (key, child) in fields {
            let at = join(path, key);
            if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                self.node(child_schema, child, &at);
            } else if let Some(map_values) = additional.filter(|a| a.is_object()) {
                self.node(map_values, child, &at);
            } else if !(preserve || additional == Some(&Value::Bool(true))) {
                self.unknown_field(schema, path, key);
            }
        }
        self.required(schema, fields, path);
    }

    fn required(&mut self, schema: &Map<String, Value>, fields: &Map<String, Value>, path: &str) {
        let required = schema.get("required").and_then(Value::as_array);
        for name in required.into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                let at = join(path, name);
                let allowed = schema
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .and_then(|s| s.get("enum"))
                    .and_then(Value::as_array)
                    .map(|values| format!(" (one of {})", list(values)))
                    .unwrap_or_default();
                self.report(&at, format!("required field is missing{allowed}"));
            }
        }
    }

    fn unknown_field(&mut self, schema: &Map<String, Value>, path: &str, key: &str) {
        if self.unknown == UnknownFields::Ignore {
            return;
        }
        let at = join(path, key);
        let known: Vec<&str> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        // A job body pasted from "Get Deployment by Job ID" carries the server's fields.
        let in_job_body = path == "spec.job" || known.contains(&"action");
        let message = if in_job_body && SERVER_MANAGED.contains(&key) {
            "is set by Qualys and cannot be managed; remove it (the useful server fields are \
             reported in status)"
                .to_string()
        } else if let Some(name) = suggest(key, known.iter().copied()) {
            format!("unknown field (did you mean {name}?)")
        } else if path == "spec" && job_fields().any(|f| f == key) {
            format!("unknown field: the Qualys job's fields go under spec.job (spec.job.{key})")
        } else if path.is_empty() {
            "unknown field; a DeploymentJob has apiVersion, kind, metadata, spec and status".into()
        } else {
            format!(
                "unknown field; `kubectl explain deploymentjob.{}` lists the fields",
                strip_indexes(path)
            )
        };
        self.report(&at, message);
    }

    fn array(&mut self, schema: &Map<String, Value>, value: &Value, path: &str) {
        let Some(items) = value.as_array() else {
            self.wrong_type(path, "a list", value);
            return;
        };
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            self.report(
                path,
                format!("must have at most {max} items; got {}", items.len()),
            );
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            let noun = if min == 1 { "item" } else { "items" };
            self.report(
                path,
                format!(
                    "must have at least {min} {noun} (leave the field out instead of an empty list)"
                ),
            );
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.node(item_schema, item, &format!("{path}[{i}]"));
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        let at = format!("{path}[{i}]");
                        let got = describe(&at, item);
                        self.report(&at, format!("duplicate value {got}: a set lists each once"));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let id: Vec<String> = keys
                        .iter()
                        .map(|k| item.get(*k).map(Value::to_string).unwrap_or_default())
                        .collect();
                    if !seen.insert(id.clone()) {
                        self.report(
                            &format!("{path}[{i}]"),
                            format!(
                                "duplicate entry: {} must be unique in this list",
                                keys.join(", ")
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn string(&mut self, schema: &Map<String, Value>, value: &Value, path: &str) {
        let Some(s) = value.as_str() else {
            let expected = match schema.get("enum").and_then(Value::as_array) {
                Some(values) => format!("one of {}", list(values)),
                None => "a string".to_string(),
            };
            self.wrong_type(path, &expected, value);
            return;
        };
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            if !values.iter().any(|v| v.as_str() == Some(s)) {
                let names = values.iter().filter_map(Value::as_str);
                let hint = suggest(s, names)
                    .map(|n| format!(" (did you mean \"{n}\"?)"))
                    .unwrap_or_default();
                self.report(
                    path,
                    format!("must be one of {}; got {}{hint}", list(values), quote(s)),
                );
            }
            return;
        }
        let len = s.chars().count() as u64;
        let min = schema.get("minLength").and_then(Value::as_u64);
        let max = schema.get("maxLength").and_then(Value::as_u64);
        match (min, max) {
            (Some(1), _) if len == 0 => self.report(path, "must not be empty"),
            (Some(min), _) if len < min => self.report(
                path,
                format!("must be at least {min} characters long; got {len}"),
            ),
            (_, Some(max)) if len > max => self.report(
                path,
                format!("must be at most {max} characters long; got {len}"),
            ),
            _ => {
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                    && !matches(pattern, s)
                {
                    let got = describe(path, value);
                    self.report(path, format!("{}; got {got}", pattern_meaning(pattern)));
                }
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time")
            && s.parse::<jiff::Timestamp>().is_err()
        {
            self.report(
                path,
                format!(
                    "must be an RFC 3339 time such as 2025-07-01T09:57:18Z; got {}",
                    quote(s)
                ),
            );
        }
    }

    fn integer(&mut self, schema: &Map<String, Value>, value: &Value, path: &str) {
        let Some(n) = value.as_i64() else {
            let expected = if value.is_u64() {
                "an integer that fits 64 bits"
            } else {
                "an integer"
            };
            self.wrong_type(path, expected, value);
            return;
        };
        if schema.get("format").and_then(Value::as_str) == Some("int32")
            && i32::try_from(n).is_err()
        {
            self.report(path, format!("must be a 32-bit integer; got {n}"));
            return;
        }
        self.range(schema, n as f64, path);
    }

    fn range(&mut self, schema: &Map<String, Value>, n: f64, path: &str) {
        let min = schema.get("minimum").filter(|m| m.is_number());
        let max = schema.get("maximum").filter(|m| m.is_number());
        let below = min.and_then(Value::as_f64).is_some_and(|m| n < m);
        let above = max.and_then(Value::as_f64).is_some_and(|m| n > m);
        if !(below || above) {
            return;
        }
        let allowed = match (min, max) {
            (Some(min), Some(max)) => format!("from {min} to {max}"),
            (Some(min), None) => format!("at least {min}"),
            (None, Some(max)) => format!("at most {max}"),
            (None, None) => return,
        };
        self.report(path, format!("must be {allowed}; got {n}"));
    }
}

fn schema_object(schema: &Value) -> &Map<String, Value> {
    static EMPTY: OnceLock<Map<String, Value>> = OnceLock::new();
    schema
        .as_object()
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

fn job_fields() -> impl Iterator<Item = &'static str> {
    openapi_schema()
        .pointer("/properties/spec/properties/job/properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.keys().map(String::as_str))
}

fn matches(pattern: &str, s: &str) -> bool {
    patterns().get(pattern).is_some_and(|re| re.is_match(s))
}

/// What a schema pattern means, in words.
fn pattern_meaning(pattern: &str) -> String {
    let meaning = match pattern {
        p if p == UUID_PATTERN => "must be a UUID such as 9285e676-6340-3ba7-b124-31d84542c7bf",
        p if p == START_DATE_TIME_PATTERN => {
            "must be written yyyy-M-dd hh:mm:ss AM|PM, e.g. \"2025-7-01 09:57:18 AM\""
        }
        p if p == WEEK_DAYS_PATTERN => {
            "must be seven comma-separated 0/1 flags, Sunday first, e.g. \"0,1,0,0,0,0,0\" for \
             Mondays"
        }
        p if p == DNS_SUBDOMAIN_PATTERN => {
            "must be a Kubernetes object name: lowercase letters, digits, '-' and '.', starting \
             and ending with a letter or digit"
        }
        p if p == CONFIG_KEY_PATTERN => {
            "must be a ConfigMap or Secret key: letters, digits, '-', '_' and '.'"
        }
        p if p == BASE64_PATTERN => {
            "must be base64 (padded, on one line); for a plain-text script use scriptFrom"
        }
        p if patterns().contains_key(p) => return format!("must match the pattern {p}"),
        p => return format!("cannot be checked: the schema pattern {p} does not compile"),
    };
    meaning.to_string()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `spec.job.preDeployActions[0].params` → `spec.job.preDeployActions.params`, as
/// `kubectl explain` wants it.
fn strip_indexes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The closest of `candidates` to `given`, when it is close enough to be a typo of it.
fn suggest<'a>(given: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = given.to_lowercase();
    candidates
        .map(|c| (strsim::levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|(distance, c)| *distance <= (c.len() / 4).clamp(1, 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

fn list(values: &[Value]) -> String {
    let names: Vec<String> = values
        .iter()
        .map(|v| match v {
            Value::String(s) => format!("\"{s}\""),
            other => other.to_string(),
        })
        .collect();
    names.join(", ")
}

fn quote(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!(
            "\"{}…\" ({} characters)",
            head.escape_debug(),
            s.chars().count()
        )
    } else {
        format!("{s:?}")
    }
}

/// A value as a message shows it; scripts only by their length.
fn describe(path: &str, value: &Value) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    let secret = matches!(last, "script" | "detectionScript");
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if secret => format!("a string of {} characters", s.chars().count()),
        Value::String(s) => format!("the string {}", quote(s)),
        Value::Array(a) => format!("a list of {} items", a.len()),
        Value::Object(_) => "a mapping".into(),
    }
}

fn dns_name_problem(name: &str, max: usize, pattern: &str, what: &str) -> Option<String> {
    if !name.is_empty() && name.len() <= max && matches(pattern, name) {
        return None;
    }
    Some(format!(
        "must be {what}: at most {max} lowercase letters, digits, '-'{} starting and ending \
         with a letter or digit; got {}",
        if pattern == DNS_LABEL_PATTERN {
            ""
        } else {
            " and '.'"
        },
        quote(name)
    ))
}

/// What is wrong with `metadata.name` of an object, as the API server judges it (a DNS-1123
/// subdomain); `None` when nothing is. The message quotes the name escaped.
pub fn name_problem(name: &str) -> Option<String> {
    dns_name_problem(name, 253, DNS_SUBDOMAIN_PATTERN, "a Kubernetes object name")
}

/// What is wrong with `metadata.namespace` (a DNS-1123 label); `None` when nothing is.
pub fn namespace_problem(namespace: &str) -> Option<String> {
    dns_name_problem(namespace, 63, DNS_LABEL_PATTERN, "a namespace name")
}

/// The longest password a connection accepts. Qualys passwords are far shorter; the bound
/// keeps a pasted file or a runaway Secret from being sent to `/auth` (where it would fail as
/// an HTTP error that names no password problem).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// `password too long (… bytes; max 1024 bytes)` when `password` is longer than
/// [`MAX_PASSWORD_BYTES`]. For every reader of a connection's password (a connectionRef
/// Secret in the CLI or the controller, `--password-file`, `QUALYS_PASSWORD`); the message
/// gives lengths only.
pub fn password_problem(password: &[u8]) -> Option<String> {
    (password.len() > MAX_PASSWORD_BYTES).then(|| {
        format!(
            "password too long ({} bytes; max {MAX_PASSWORD_BYTES} bytes)",
            password.len()
        )
    })
}

/// The YAML reader's limits for one input file. Documents are sized for `import --all` of a
/// large subscription read back by `plan` (at least 100,000 jobs in one file); nodes, events
/// and text grow with them. The defenses against hostile YAML stay at serde-saphyr's defaults
/// (nesting depth, aliases and anchors, the alias-per-anchor ratio) or tighter: the values
/// aliases may copy ("billion laughs") are capped at a tenth of its default, which no manifest
/// comes near and which refuses such a document in a fraction of the time.
pub const YAML_MAX_DOCUMENTS: usize = 1_000_000;
const YAML_MAX_NODES: usize = 20_000_000;
const YAML_MAX_EVENTS: usize = 50_000_000;
const YAML_MAX_SCALAR_BYTES: usize = 256 * 1024 * 1024;
const YAML_MAX_ANCHOR_COPIES: usize = 100_000;

fn yaml_budget() -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = YAML_MAX_DOCUMENTS;
    budget.max_nodes = YAML_MAX_NODES;
    budget.max_events = YAML_MAX_EVENTS;
    budget.max_total_scalar_bytes = YAML_MAX_SCALAR_BYTES;
    budget.max_recorded_anchor_events = YAML_MAX_ANCHOR_COPIES;
    budget
}

/// Parse a file of one or more YAML documents into JSON values, the way manifests are read:
/// YAML 1.2 booleans only (`y`, `no`, `on` stay strings), duplicate keys refused, empty
/// documents skipped, within [`yaml_budget`]. [`yaml_error_message`] says what went wrong.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        budget: Some(yaml_budget()),
    };
    serde_saphyr::from_multiple_with_options(text, options)
}

/// The structural-schema problems of `value` against any OpenAPI v3 `schema` node: the checks
/// [`validate_manifest`] makes (types, enums, formats, ranges, lengths, item counts, required
/// fields, list-set and list-map uniqueness) without the DeploymentJob specifics. Undeclared
/// fields are skipped, as the API server prunes them before it validates. For a schema other
/// than this binary's own, such as the CRD installed in a cluster.
pub fn schema_problems(schema: &Value, value: &Value) -> Vec<SpecProblem> {
    let mut check = Checker {
        unknown: UnknownFields::Ignore,
        problems: Vec::new(),
    };
    check.node(schema, value, "");
    check.problems
}

/// A YAML error as one line of words: a budget refusal names the limit it hit (never the
/// parser's Debug text); other errors are the parser's first line.
pub fn yaml_error_message(error: &serde_saphyr::Error) -> String {
    let mut inner = error;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        return budget_message(breach, &yaml_budget());
    }
    let text = error.to_string();
    let first = text.lines().next().unwrap_or("parse error");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

fn budget_message(
    breach: &serde_saphyr::budget::BudgetBreach,
    budget: &serde_saphyr::Budget,
) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let n = thousands;
    let refused = match breach {
        B::Documents { .. } => format!(
            "more than {} documents in one file (split it)",
            n(budget.max_documents)
        ),
        B::Nodes { .. } => format!(
            "more than {} values (mappings, lists and scalars) in one file (split it)",
            n(budget.max_nodes)
        ),
        B::Events { .. } => format!(
            "more than {} YAML parser events in one file (split it)",
            n(budget.max_events)
        ),
        B::ScalarBytes { .. } => format!(
            "more than {} bytes of text in one file",
            n(budget.max_total_scalar_bytes)
        ),
        B::Depth { .. } => format!("nested deeper than {} levels", n(budget.max_depth)),
        B::Aliases { .. } => format!("more than {} aliases (*name)", n(budget.max_aliases)),
        B::Anchors { .. } => format!("more than {} anchors (&name)", n(budget.max_anchors)),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "{} aliases for {} anchors: more than {} uses per anchor, as in a \"billion laughs\" \
             document",
            n(*aliases),
            n(*anchors),
            n(budget.alias_anchor_ratio_multiplier)
        ),
        B::RecordedAnchorEvents { .. } => format!(
            "aliases expand to more than {} copied values, as in a \"billion laughs\" document",
            n(budget.max_recorded_anchor_events)
        ),
        B::RecordedAnchorBytes { .. } => format!(
            "aliases expand to more than {} bytes of copied text, as in a \"billion laughs\" \
             document",
            n(budget.max_recorded_anchor_bytes)
        ),
        B::MergeKeys { .. } => format!("more than {} merge keys (<<)", n(budget.max_merge_keys)),
        B::InputBytes { .. } => format!(
            "more than {} bytes",
            n(budget.max_reader_input_bytes.unwrap_or(usize::MAX))
        ),
        B::SequenceUnbalanced => "a collection closes that was never opened".to_string(),
        _ => "it exceeds a limit of the YAML reader".to_string(),
    };
    format!("refused: {refused}")
}

/// 1234567 → `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "apiVersion": "pm.qualys.io/v1alpha1",
            "kind": "DeploymentJob",
            "metadata": {"name": "monthly", "namespace": "patching"},
            "spec": {"job": {"name": "Monthly", "platform": "Windows", "scheduleType": "On-demand"}}
        })
    }

    /// The problems `validate_manifest` reports for `minimal()` changed by `edit`, as
    /// `path: message` lines.
    fn problems(edit: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut doc = minimal();
        edit(&mut doc);
        match validate_manifest(&doc) {
            Ok(_) => vec![],
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn set(doc: &mut Value, pointer: &str, value: Value) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        doc.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_string(), value);
    }

    fn remove(doc: &mut Value, pointer: &str) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        doc.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
    }

    #[test]
    fn a_minimal_manifest_is_valid_and_typed() {
        let job = validate_manifest(&minimal()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("monthly"));
        assert_eq!(job.spec.job.platform, crate::api::Platform::Windows);
        assert_eq!(job.spec.job.approved_patches, None);
    }

    #[test]
    fn display_is_path_colon_message() {
        let p = SpecProblem {
            path: "spec.job.timeout".into(),
            message: "must be from 1 to 10080; got 0".into(),
        };
        assert_eq!(
            p.to_string(),
            "spec.job.timeout: must be from 1 to 10080; got 0"
        );
        let whole = SpecProblem {
            path: String::new(),
            message: "bad".into(),
        };
        assert_eq!(whole.to_string(), "bad");
    }

    #[test]
    fn api_version_kind_and_metadata() {
        assert_eq!(
            problems(|d| set(d, "/apiVersion", json!("pm.qualys.io/v1"))),
            ["apiVersion: must be \"pm.qualys.io/v1alpha1\"; got the string \"pm.qualys.io/v1\""]
        );
        assert_eq!(
            problems(|d| remove(d, "/kind")),
            ["kind: required field is missing (it is \"DeploymentJob\")"]
        );
        assert_eq!(
            problems(|d| set(d, "/metadata/name", json!("Monthly_Job"))),
            [
                "metadata.name: must be a Kubernetes object name: at most 253 lowercase letters, \
              digits, '-' and '.' starting and ending with a letter or digit; got \"Monthly_Job\""
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/metadata/labels", json!({"tier": 1}))),
            ["metadata.labels.tier: labels values are strings (quote them); got the number 1"]
        );
        assert_eq!(
            problems(|d| set(d, "/metadata/namspace", json!("x"))),
            ["metadata.namspace: unknown field (did you mean namespace?)"]
        );
        assert_eq!(
            validate_manifest(&json!([1])).unwrap_err()[0].to_string(),
            "a DeploymentJob manifest is a mapping with apiVersion, kind, metadata and spec; got \
             a list of 1 items"
        );
    }

    #[test]
    fn unknown_fields_are_found_with_a_hint() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/aprovedPatches", json!([]))),
            ["spec.job.aprovedPatches: unknown field (did you mean approvedPatches?)"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/customPatchUrlId", json!(1))),
            ["spec.job.customPatchUrlId: unknown field (did you mean customPatchURLId?)"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/timeout", json!(6))),
            [
                "spec.timeout: unknown field: the Qualys job's fields go under spec.job \
              (spec.job.timeout)"
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/patchCount", json!(0))),
            [
                "spec.job.patchCount: is set by Qualys and cannot be managed; remove it (the useful \
              server fields are reported in status)"
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/postDeployment", json!({"colour": "red"}))),
            [
                "spec.job.postDeployment.colour: unknown field; `kubectl explain \
              deploymentjob.spec.job.postDeployment` lists the fields"
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/extra", json!(1))),
            [
                "extra: unknown field; a DeploymentJob has apiVersion, kind, metadata, spec and status"
            ]
        );
    }

    #[test]
    fn unknown_fields_can_be_ignored_for_objects_from_a_newer_crd() {
        let mut doc = minimal();
        set(&mut doc, "/spec/job/newerField", json!({"x": 1}));
        assert!(validate_manifest(&doc).is_err());
        let job = validate_manifest_with(&doc, UnknownFields::Ignore).unwrap();
        assert_eq!(job.spec.job.name, "Monthly");
    }

    #[test]
    fn types() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/timeout", json!("6"))),
            ["spec.job.timeout: must be an integer; got the string \"6\""]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/recurring", json!("yes"))),
            ["spec.job.recurring: must be true or false; got the string \"yes\""]
        );
        assert_eq!(
            problems(|d| set(
                d,
                "/spec/job/assetIds",
                json!("ac66e55a-efc6-4a8d-9f61-00d871572b96")
            )),
            [
                "spec.job.assetIds: must be a list; got the string \"ac66e55a-efc6-4a8d-9f61-00d871572b96\""
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/notification", json!(["email"]))),
            ["spec.job.notification: must be a mapping; got a list of 1 items"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/timeout", json!(2.5))),
            ["spec.job.timeout: must be an integer; got the number 2.5"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/dayOfMonth", json!(4_000_000_000i64))),
            ["spec.job.dayOfMonth: must be a 32-bit integer; got 4000000000"]
        );
    }

    #[test]
    fn int_or_string() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/customPatchURLId", json!("1008"))),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/customPatchURLId", json!(1008))),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/customPatchURLId", json!(true))),
            [
                "spec.job.customPatchURLId: must be an integer or a string of digits (e.g. 1008 or \
              \"1008\"); got true"
            ]
        );
    }

    #[test]
    fn required_fields_name_the_allowed_values() {
        assert_eq!(
            problems(|d| remove(d, "/spec/job/platform")),
            ["spec.job.platform: required field is missing (one of \"Windows\", \"Linux\")"]
        );
        assert_eq!(
            problems(|d| remove(d, "/spec/job")),
            ["spec.job: required field is missing"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/chainedJobRule", json!([{"actionIds": []}]))),
            [
                "spec.job.chainedJobRule[0].actionIds: must have at least 1 item (leave the field \
                 out instead of an empty list)",
                "spec.job.chainedJobRule[0].threshold: required field is missing"
            ]
        );
    }

    #[test]
    fn enums() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/platform", json!("windows"))),
            [
                "spec.job.platform: must be one of \"Windows\", \"Linux\"; got \"windows\" (did you \
              mean \"Windows\"?)"
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/scheduleType", json!("Hourly"))),
            [
                "spec.job.scheduleType: must be one of \"On-demand\", \"Once\", \"Daily\", \
              \"Weekly\", \"Monthly\"; got \"Hourly\""
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/timeoutUnit", json!(6))),
            ["spec.job.timeoutUnit: must be one of \"HOURS\", \"MINUTES\"; got the number 6"]
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/dayOfMonth", json!(32))),
            ["spec.job.dayOfMonth: must be from 1 to 31; got 32"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/patchTuesdayPlusXDays", json!(-28))),
            ["spec.job.patchTuesdayPlusXDays: must be from -27 to 27; got -28"]
        );
        assert_eq!(
            problems(|d| {
                set(
                    d,
                    "/spec/job/preDeployActions",
                    json!([{
                        "action": "Run Script", "script": "bHM=", "params": {"timeout": 0}
                    }]),
                )
            }),
            ["spec.job.preDeployActions[0].params.timeout: must be from 1 to 86400; got 0"]
        );
    }

    #[test]
    fn lengths_and_item_counts() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/name", json!(""))),
            ["spec.job.name: must not be empty"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/name", json!("x".repeat(257)))),
            ["spec.job.name: must be at most 256 characters long; got 257"]
        );
        // The console's limit: 5 pre- and 5 post-deploy actions.
        let actions: Vec<Value> = (0..6)
            .map(|_| json!({"action": "Install Software"}))
            .collect();
        assert_eq!(
            problems(|d| set(d, "/spec/job/postDeployActions", json!(actions))),
            ["spec.job.postDeployActions: must have at most 5 items; got 6"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/preDeployActions", json!(actions[..5]))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn patterns_are_explained() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/approvedPatches", json!(["KB5034441"]))),
            ["spec.job.approvedPatches[0]: must be a UUID such as \
              9285e676-6340-3ba7-b124-31d84542c7bf; got the string \"KB5034441\""]
        );
        assert_eq!(
            problems(|d| {
                set(d, "/spec/job/scheduleType", json!("Once"));
                set(d, "/spec/job/startDateTime", json!("2025-07-01T09:57:18Z"));
            }),
            [
                "spec.job.startDateTime: must be written yyyy-M-dd hh:mm:ss AM|PM, e.g. \"2025-7-01 \
              09:57:18 AM\"; got the string \"2025-07-01T09:57:18Z\""
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/recurringWeekDays", json!("Mon"))),
            [
                "spec.job.recurringWeekDays: must be seven comma-separated 0/1 flags, Sunday first, \
              e.g. \"0,1,0,0,0,0,0\" for Mondays; got the string \"Mon\""
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/connectionRef", json!({"name": "Qualys"}))),
            [
                "spec.connectionRef.name: must be a Kubernetes object name: lowercase letters, \
              digits, '-' and '.', starting and ending with a letter or digit; got the string \
              \"Qualys\""
            ]
        );
    }

    #[test]
    fn a_script_is_never_quoted() {
        let plain = "Write-Output 'secret-ish text'";
        let found = problems(|d| {
            set(
                d,
                "/spec/job/preDeployActions",
                json!([{"action": "Run Script", "script": plain}]),
            )
        });
        assert_eq!(
            found,
            [
                "spec.job.preDeployActions[0].script: must be base64 (padded, on one line); for a \
              plain-text script use scriptFrom; got a string of 30 characters"
            ]
        );
        assert!(!found[0].contains("secret-ish"));
    }

    #[test]
    fn nulls_are_refused_with_the_way_out() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/approvedPatches", Value::Null)),
            [
                "spec.job.approvedPatches: null is not allowed: leave the field out to leave it \
              unmanaged, or [] to manage it as empty"
            ]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/minimizeWindow", Value::Null)),
            [
                "spec.job.minimizeWindow: null is not allowed: leave the field out to leave it \
              unmanaged"
            ]
        );
    }

    #[test]
    fn set_duplicates() {
        let id = "9285e676-6340-3ba7-b124-31d84542c7bf";
        assert_eq!(
            problems(|d| set(d, "/spec/job/approvedPatches", json!([id, id]))),
            [format!(
                "spec.job.approvedPatches[1]: duplicate value the string \"{id}\": a set lists \
                 each once"
            )]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_in_document_order() {
        let found = problems(|d| {
            set(d, "/spec/job/timeout", json!(0));
            set(d, "/spec/job/platform", json!("macOS"));
            set(d, "/spec/bogus", json!(1));
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("spec.job.platform:"));
        assert!(found[1].starts_with("spec.job.timeout:"));
        assert!(found[2].starts_with("spec.bogus:"));
    }

    #[test]
    fn cel_rules_run_after_the_schema() {
        assert_eq!(
            problems(|d| set(d, "/spec/job/timeout", json!(6))),
            ["spec.job.timeoutUnit: timeout and timeoutUnit are set together"]
        );
        assert_eq!(
            problems(|d| set(d, "/spec/job/scheduleType", json!("Daily"))),
            ["spec.job.startDateTime: startDateTime is required unless scheduleType is On-demand"]
        );
    }

    #[test]
    fn every_schema_pattern_compiles() {
        let mut found = Vec::new();
        collect_patterns(openapi_schema(), &mut found);
        assert!(found.len() >= 10, "{found:?}");
        for p in &found {
            assert!(patterns().contains_key(p), "{p} does not compile");
            assert!(!pattern_meaning(p).contains("cannot be checked"));
        }
        assert_eq!(
            pattern_meaning("^x$"),
            "cannot be checked: the schema pattern ^x$ does not compile"
        );
    }

    #[test]
    fn many_documents_are_read_and_hostile_yaml_is_refused_in_words() {
        let many = "a: 1\n---\n".repeat(1_100);
        assert_eq!(yaml_documents(&many).unwrap().len(), 1_100);

        let mut laughs = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            laughs.push_str(&format!(
                "{next}: &{next} [{}]\n",
                vec![format!("*{prev}"); 9].join(",")
            ));
        }
        let message = yaml_error_message(&yaml_documents(&laughs).unwrap_err());
        assert!(message.starts_with("refused: "), "{message}");
        assert!(message.contains("billion laughs"), "{message}");

        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            yaml_error_message(&yaml_documents(&deep).unwrap_err()),
            "refused: nested deeper than 64 levels"
        );
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(64), "64");
    }

    #[test]
    fn names_passwords_and_their_messages() {
        assert_eq!(name_problem("weekly.patching-1"), None);
        assert_eq!(namespace_problem("team-a"), None);
        let bad = name_problem("a\u{1b}]0;x\u{7}\nb").unwrap();
        assert!(!bad.chars().any(char::is_control), "{bad}");
        assert!(namespace_problem("a.b").is_some());
        assert_eq!(password_problem(&[b'x'; MAX_PASSWORD_BYTES]), None);
        assert_eq!(
            password_problem(&[b'x'; 10_000_000]).unwrap(),
            "password too long (10000000 bytes; max 1024 bytes)"
        );
    }

    #[test]
    fn yaml_documents_keep_yaml_1_1_booleans_as_strings() {
        let docs = yaml_documents("a: y\nb: on\nc: true\n---\n---\nd: 1\n").unwrap();
        assert_eq!(
            docs,
            [json!({"a": "y", "b": "on", "c": true}), json!({"d": 1})]
        );
        assert!(
            yaml_documents("a: 1\na: 2\n").is_err(),
            "duplicate keys are refused"
        );
    }
}
