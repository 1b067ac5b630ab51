//! The job transformations of the gateway (docs/simulator.md, "What the server does to a job"), on create and update.
//!
//! A request is turned into the document the server stores: server-managed fields keep the
//! server's values, actions get ids, scripts become storage paths, numbers sent as strings are
//! coerced where the gateway coerces them, defaults fill what a create leaves out. Nothing here
//! touches the store: the result is a [`Prepared`] job plus the script writes it implies, and
//! it is committed only when the whole request is valid.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::state::{StoreView, link_of};
use super::validate;
use crate::qualys::{
    Action, Audit, Field, JobBody, OnComplete, ScriptKind, is_script_path, script_path, values,
};

pub use crate::qualys::model::CANONICAL_KEYS;

/// The six keys the 2022 document format lacks; a job that has any of them is "new format".
const NEW_FORMAT_KEYS: [&str; 6] = [
    "jobStartCountdown",
    "passwordAction",
    "subCategory",
    "isVulnContext",
    "remediationQids",
    "isAssetImported",
];

/// The caller of an API request (from its token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub name: String,
}

/// A parsed request body: the object as sent (which keys are present matters to an update).
pub struct RequestDoc {
    pub map: Map<String, Value>,
}

/// What a create or update needs from the server.
pub struct Ctx<'a> {
    pub customer_id: &'a str,
    pub caller: &'a Caller,
    pub now_ms: i64,
    pub new_id: &'a mut dyn FnMut() -> String,
    /// See `SimConfig::accept_unset_timeout`.
    pub accept_unset_timeout: bool,
}

/// A job ready to store, and the script writes that go with it.
pub struct Prepared {
    pub job: JobBody,
    pub put_scripts: Vec<(String, Vec<u8>)>,
    pub drop_scripts: Vec<String>,
}

/// Read a request body as a JSON object: 400 when it is not one, never a panic. Field types are
/// checked when the body is read as a job (`typed`), after it is merged with what the server
/// holds — one typed reading per request.
pub fn parse_request(bytes: &[u8]) -> Result<RequestDoc, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object (a deployment job document)",
        ));
    };
    Ok(RequestDoc { map })
}

/// The typed reading of a document, with the path of the first field of the wrong type.
fn typed(doc: &Value) -> Result<JobBody, ApiError> {
    let job: JobBody = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!("{path}: {}", e.into_inner()))
    })?;
    // The model reads actions leniently; members of the wrong type in an action of a kind the
    // gateway defines are still the client's mistake (an unknown kind is judged by its owner).
    for (list, i, action) in job.actions() {
        if action
            .kind()
            .is_some_and(|k| !values::ACTION_KINDS.contains(&k))
        {
            continue;
        }
        if let Some(key) = action.unreadable_keys().next() {
            let alone = Value::Object(Map::from_iter([(
                key.to_string(),
                action.extra.get(key).cloned().unwrap_or(Value::Null),
            )]));
            let message = match serde_path_to_error::deserialize::<_, Action>(&alone) {
                Err(e) => {
                    let path = e.path().to_string();
                    format!("{list}[{i}].{path}: {}", e.into_inner())
                }
                Ok(_) => format!("{list}[{i}].{key}: invalid type"),
            };
            return Err(ApiError::bad_request(message));
        }
    }
    Ok(job)
}

/// A document stored as it is (admin PUT, console edits, the state file).
pub fn parse_verbatim(doc: Value) -> Result<JobBody, ApiError> {
    match doc {
        doc @ Value::Object(_) => typed(&doc),
        _ => Err(ApiError::bad_request(
            "the document must be a JSON object (a deployment job)",
        )),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn empty_audit() -> Audit {
    Audit {
        user: Field::Null,
        date: Field::Null,
        ..Default::default()
    }
}

fn set_default<T>(field: &mut Field<T>, value: T) {
    if field.is_unset() {
        *field = Field::Value(value);
    }
}

fn to_map(job: &JobBody) -> Result<Map<String, Value>, ApiError> {
    match serde_json::to_value(job) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::internal("cannot read the stored job")),
    }
}

fn list_len(list: &Field<Vec<String>>) -> i64 {
    list.get().map_or(0, |l| l.len() as i64)
}

/// `POST /pm/v1/deploymentjob`.
pub fn prepare_create(
    ctx: &mut Ctx<'_>,
    store: &StoreView<'_>,
    req: RequestDoc,
) -> Result<Prepared, ApiError> {
    // Every key a current document has, null unless sent.
    let mut map: Map<String, Value> = CANONICAL_KEYS
        .iter()
        .map(|k| (k.to_string(), Value::Null))
        .collect();
    map.extend(req.map);
    let mut job = typed(&Value::Object(map))?;

    // Server-managed: the server's values, whatever was sent.
    job.id = Field::Value((ctx.new_id)());
    job.customer_id = Field::Value(ctx.customer_id.to_string());
    job.created_by = Field::Value(ctx.caller.audit(ctx.now_ms));
    job.updated_by = Field::Value(empty_audit());
    job.deleted_by = Field::Value(empty_audit());
    job.disabled_patches = Field::Null;
    job.patch_count = Field::Value(list_len(&job.approved_patches).into());
    job.asset_count = Field::Null;
    job.tagged_asset_count = Field::Value(0.into());
    job.applicable_asset_count = Field::Value(list_len(&job.asset_ids).into());
    job.total_asset_count = Field::Null;
    job.asset_result_received_count = Field::Null;
    job.completion_percent = Field::Null;
    job.job_trigger_status = Field::Null;
    job.job_category = Field::Value(3.into());
    job.job_source = Field::Value(3.into());
    job.read_only = Field::Value(false);
    job.sub_category = Field::Value("Patch".into());
    job.linked_to_job = Field::Null;
    job.linked_jobs = Field::Null;
    job.remediation_qids = Field::Value(Vec::new());

    // Client fields the server fills when left out.
    set_default(&mut job.r#type, values::INSTALL.to_string());
    set_default(&mut job.status, values::DISABLED.to_string());
    set_default(&mut job.filter_type, "Any".to_string());
    set_default(&mut job.exclusion_filter_type, "Any".to_string());
    set_default(&mut job.schema_version, "1.0".to_string());
    set_default(&mut job.is_asset_imported, false);
    set_default(&mut job.timezone_type, "SPECIFIC_TZ".to_string());
    set_default(&mut job.timezone, "UTC".to_string());

    let mut out = Prepared {
        job,
        put_scripts: Vec::new(),
        drop_scripts: Vec::new(),
    };
    finish(ctx, store, &mut out, &HashSet::new(), true, true)?;
    Ok(out)
}

/// `PATCH /pm/v1/deploymentjob/update/{id}`: keys absent from the body keep their stored
/// values; keys present (even `null`) replace them.
pub fn prepare_update(
    ctx: &mut Ctx<'_>,
    store: &StoreView<'_>,
    id: &str,
    stored: &JobBody,
    req: RequestDoc,
) -> Result<Prepared, ApiError> {
    let rule_sent = req.map.contains_key("chainedJobRule");
    let approved_sent = req.map.contains_key("approvedPatches");
    let mut map = to_map(stored)?;
    map.extend(req.map);
    let new_format = NEW_FORMAT_KEYS.iter().any(|k| map.contains_key(*k));
    let mut job = typed(&Value::Object(map))?;

    // The path id wins; status changes only through the status endpoint.
    job.id = Field::Value(id.to_string());
    job.status = stored.status.clone();
    // Server-managed fields keep the stored values (and the stored key set).
    job.customer_id = stored.customer_id.clone();
    job.created_by = stored.created_by.clone();
    job.disabled_patches = stored.disabled_patches.clone();
    job.asset_count = stored.asset_count.clone();
    job.tagged_asset_count = stored.tagged_asset_count.clone();
    job.applicable_asset_count = stored.applicable_asset_count.clone();
    job.total_asset_count = stored.total_asset_count.clone();
    job.asset_result_received_count = stored.asset_result_received_count.clone();
    job.completion_percent = stored.completion_percent.clone();
    job.job_trigger_status = stored.job_trigger_status.clone();
    job.job_category = stored.job_category.clone();
    job.job_source = stored.job_source.clone();
    job.read_only = stored.read_only.clone();
    job.sub_category = stored.sub_category.clone();
    job.linked_jobs = stored.linked_jobs.clone();
    job.linked_to_job = Field::Null;
    job.remediation_qids = match &stored.remediation_qids {
        Field::Absent => Field::Absent,
        Field::Null => Field::Value(Vec::new()),
        v => v.clone(),
    };
    // The count follows the approved patches only when they change (the seed's 2022 job
    // keeps `patchCount: null` with two patches across an update that leaves them alone).
    job.patch_count = if approved_sent && !same_set(&job.approved_patches, &stored.approved_patches)
    {
        Field::Value(list_len(&job.approved_patches).into())
    } else {
        stored.patch_count.clone()
    };
    job.updated_by = Field::Value(ctx.caller.audit(ctx.now_ms));
    job.deleted_by = Field::Null;
    // A stored rule belongs to the link: unlinking without mentioning the rule drops it.
    if !rule_sent && link_of(&job).is_none() {
        job.chained_job_rule = Field::Absent;
    }

    let known: HashSet<String> = stored
        .actions()
        .filter_map(|(_, _, a)| a.action_id.get().cloned())
        .collect();
    let mut out = Prepared {
        job,
        put_scripts: Vec::new(),
        drop_scripts: Vec::new(),
    };
    finish(ctx, store, &mut out, &known, new_format, false)?;

    // Scripts of actions that are gone, or whose script was cleared, are deleted.
    let customer = stored.customer_id.get().map(String::as_str).unwrap_or("");
    let kept: HashSet<&str> = out
        .job
        .actions()
        .flat_map(|(_, _, a)| [a.script.get(), a.detection_script.get()])
        .flatten()
        .map(String::as_str)
        .collect();
    for action in &known {
        for kind in [ScriptKind::Script, ScriptKind::DetectionScript] {
            let path = script_path(customer, action, kind);
            if !kept.contains(path.as_str()) {
                out.drop_scripts.push(path);
            }
        }
    }
    Ok(out)
}

fn same_set(a: &Field<Vec<String>>, b: &Field<Vec<String>>) -> bool {
    let set = |f: &Field<Vec<String>>| -> HashSet<String> {
        f.get()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    };
    set(a) == set(b)
}

/// The transformations common to create and update, then validation.
fn finish(
    ctx: &mut Ctx<'_>,
    store: &StoreView<'_>,
    out: &mut Prepared,
    known_actions: &HashSet<String>,
    new_format: bool,
    create: bool,
) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let customer = out
        .job
        .customer_id
        .get()
        .cloned()
        .unwrap_or_else(|| ctx.customer_id.to_string());
    actions(ctx, &customer, out, known_actions, &mut errors);

    if let Field::Value(n) = &out.job.patch_tuesday_plus_x_days
        && let Some(number) = n.to_number()
    {
        out.job.patch_tuesday_plus_x_days = Field::Value(number);
    }
    on_complete(&mut out.job, new_format);
    for field in [&mut out.job.filter_type, &mut out.job.exclusion_filter_type] {
        canonical_case(field, &["Any", "All"]);
    }
    start_date_time(&mut out.job, ctx.now_ms, &mut errors);
    validate::job(
        &out.job,
        store,
        validate::Options {
            create,
            accept_unset_timeout: ctx.accept_unset_timeout,
        },
        &mut errors,
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(errors.join("; ")))
    }
}

/// Action ids and scripts. Known ids are kept (the first action that names one keeps it);
/// new actions get new ids. Scripts: base64 content is decoded, stored, and replaced by the
/// storage path; the action's own path keeps what is stored; `""` stays `""`.
fn actions(
    ctx: &mut Ctx<'_>,
    customer: &str,
    out: &mut Prepared,
    known: &HashSet<String>,
    errors: &mut Vec<String>,
) {
    let mut used: HashSet<String> = HashSet::new();
    let lists = [
        (
            "preDeployActions",
            values::PREDEPLOY,
            &mut out.job.pre_deploy_actions,
        ),
        (
            "postDeployActions",
            values::POSTDEPLOY,
            &mut out.job.post_deploy_actions,
        ),
    ];
    for (list_name, action_type, list) in lists {
        let Field::Value(list) = list else { continue };
        for (i, action) in list.iter_mut().enumerate() {
            let at = format!("{list_name}[{i}]");
            let id = match action.action_id.get() {
                Some(id) if known.contains(id) && !used.contains(id) => id.clone(),
                _ => (ctx.new_id)(),
            };
            used.insert(id.clone());
            action.action_id = Field::Value(id.clone());
            match action.action_type.get() {
                None => action.action_type = Field::Value(action_type.to_string()),
                Some(t) if t == action_type => {}
                Some(t) => errors.push(format!(
                    "{at}.actionType: {t:?} is not allowed in {list_name}; use {action_type:?}"
                )),
            }
            script(
                action,
                customer,
                &id,
                ScriptKind::Script,
                &at,
                &mut out.put_scripts,
                errors,
            );
            script(
                action,
                customer,
                &id,
                ScriptKind::DetectionScript,
                &at,
                &mut out.put_scripts,
                errors,
            );
        }
    }
}

fn script(
    action: &mut Action,
    customer: &str,
    action_id: &str,
    kind: ScriptKind,
    at: &str,
    writes: &mut Vec<(String, Vec<u8>)>,
    errors: &mut Vec<String>,
) {
    let (field, name) = match kind {
        ScriptKind::Script => (&mut action.script, "script"),
        ScriptKind::DetectionScript => (&mut action.detection_script, "detectionScript"),
    };
    let Field::Value(value) = field else { return };
    if value.is_empty() {
        return;
    }
    let own = script_path(customer, action_id, kind);
    if is_script_path(value) {
        if *value != own {
            errors.push(format!(
                "{at}.{name}: {value:?} is not this action's storage path ({own}); send the script base64-encoded"
            ));
        }
        return;
    }
    // The content is never echoed in errors: a script may come from a Secret.
    match STANDARD_PAD_INDIFFERENT.decode(value.as_bytes()) {
        Ok(bytes) => {
            writes.push((own.clone(), bytes));
            *value = own;
        }
        Err(_) => errors.push(format!(
            "{at}.{name}: not valid base64 (send the script content base64-encoded, or this action's storage path)"
        )),
    }
}

/// qualysdk documents `filterType` as `"any"`/`"all"` and sends it as given; the gateway's
/// values are `Any`/`All`. Any case is read, the gateway's spelling is stored.
fn canonical_case(field: &mut Field<String>, allowed: &[&str]) {
    if let Field::Value(value) = field
        && let Some(canonical) = allowed.iter().find(|a| a.eq_ignore_ascii_case(value))
    {
        *value = (*canonical).to_string();
    }
}

/// `postDeployment.onComplete: null` becomes the default prompt; current-format jobs always
/// carry `alwaysShowCompletedPrompt`.
fn on_complete(job: &mut JobBody, new_format: bool) {
    let Field::Value(post) = &mut job.post_deployment else {
        return;
    };
    let default = || OnComplete {
        user_message: Field::Value(String::new()),
        description: Field::Value(String::new()),
        always_show_completed_prompt: if new_format {
            Field::Value(false)
        } else {
            Field::Absent
        },
        ..Default::default()
    };
    match &mut post.on_complete {
        Field::Value(oc) => {
            if new_format {
                set_default(&mut oc.always_show_completed_prompt, false);
            }
        }
        Field::Null => post.on_complete = Field::Value(default()),
        Field::Absent if new_format => post.on_complete = Field::Value(default()),
        Field::Absent => {}
    }
}

/// `startDateTime` in the gateway's format; now (UTC) when an On-demand job has none.
fn start_date_time(job: &mut JobBody, now_ms: i64, errors: &mut Vec<String>) {
    let given = job
        .start_date_time
        .get()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    match given {
        Some(text) => match parse_start(text) {
            Some(dt) => job.start_date_time = Field::Value(format_start(dt)),
            None => errors.push(format!(
                "startDateTime: {text:?} is not a date and time like \"2025-7-01 09:57:18 AM\""
            )),
        },
        None => match job.schedule_type.get().map(String::as_str) {
            Some(values::ON_DEMAND) => {
                let now = jiff::Timestamp::from_millisecond(now_ms)
                    .unwrap_or_else(|_| jiff::Timestamp::now())
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .datetime();
                job.start_date_time = Field::Value(format_start(now));
            }
            Some(s) if values::SCHEDULE_TYPES.contains(&s) => {
                errors.push(format!(
                    "startDateTime is required when scheduleType is {s}"
                ));
            }
            _ => {}
        },
    }
}

/// Read a start time leniently: the gateway's `yyyy-M-dd hh:mm:ss AM/PM` (any padding, any
/// case), 24-hour forms, and RFC 3339 timestamps (taken in UTC).
pub fn parse_start(text: &str) -> Option<jiff::civil::DateTime> {
    const FORMATS: [&str; 6] = [
        "%Y-%m-%d %I:%M:%S %p",
        "%Y-%m-%d %I:%M %p",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ];
    let upper = text.trim().to_ascii_uppercase();
    for format in FORMATS {
        if let Ok(dt) = jiff::civil::DateTime::strptime(format, &upper) {
            return Some(dt);
        }
    }
    text.trim()
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC).datetime())
}

/// The gateway's format (month not padded, day padded, 12-hour clock) is the operator's too.
pub use crate::qualys::schedule::format_start;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_keys_match_the_seed_and_the_model() {
        let path = format!(
            "{}/testdata/seed/03-chained-job.response.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let seed: Map<String, Value> =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let seed_keys: Vec<&str> = seed.keys().map(String::as_str).collect();
        assert_eq!(seed_keys, CANONICAL_KEYS);
        // Serialising an all-null document through the model gives the same order.
        let nulls: Map<String, Value> = CANONICAL_KEYS
            .iter()
            .rev()
            .map(|k| (k.to_string(), Value::Null))
            .collect();
        let body: JobBody = serde_json::from_value(Value::Object(nulls)).unwrap();
        let back = to_map(&body).unwrap();
        assert_eq!(
            back.keys().map(String::as_str).collect::<Vec<_>>(),
            CANONICAL_KEYS
        );
    }

    #[test]
    fn start_times_are_read_leniently_and_written_like_the_gateway() {
        for (input, expected) in [
            ("2025-07-01 09:57:18 AM", "2025-7-01 09:57:18 AM"),
            ("2025-7-1 9:57:18 pm", "2025-7-01 09:57:18 PM"),
            ("2024-12-31 10:25:52 AM", "2024-12-31 10:25:52 AM"),
            ("2022-2-20 01:18:30 PM", "2022-2-20 01:18:30 PM"),
            ("2025-07-01 21:05:00", "2025-7-01 09:05:00 PM"),
            ("2025-07-01T00:05:00", "2025-7-01 12:05:00 AM"),
            ("2025-07-01T12:00:00Z", "2025-7-01 12:00:00 PM"),
            ("2025-07-01 09:57 AM", "2025-7-01 09:57:00 AM"),
        ] {
            let dt = parse_start(input).unwrap_or_else(|| panic!("{input}"));
            assert_eq!(format_start(dt), expected, "{input}");
        }
        for bad in [
            "tomorrow",
            "2025-13-01 09:00:00 AM",
            "2025-02-30 09:00:00",
            "",
        ] {
            assert!(parse_start(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge_patch(&mut doc, &json!({"a": [3], "n": {"x": null, "y": 1}}));
        assert_eq!(doc, json!({"a": [3], "n": {"y": 1}}));
    }

    #[test]
    fn bad_types_name_the_field() {
        let doc = json!({"postDeployActions": [{"params": {"timeout": true}}]});
        let err = typed(&doc).err().unwrap();
        assert!(
            err.message
                .starts_with("postDeployActions[0].params.timeout:"),
            "{}",
            err.message
        );
        assert!(parse_request(b"[1]").is_err());
        assert!(parse_request(b"{").is_err());
    }
}
