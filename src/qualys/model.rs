//! The wire model: a deployment job exactly as the Qualys PM API sends and receives it.
//!
//! Every struct keeps keys it does not know in `extra`, and every member is a [`Field`] that
//! remembers absent vs `null`, so a document read from the API serialises back to the same
//! JSON value (a test checks this over the seed's six bodies). Enumerations stay strings here:
//! the server has values the docs do not list (`status: "Prepared"`), and a client that refused
//! to read a job because of one would be worse than useless. The CRD (`crate::api`) is where
//! values are typed and checked.
//!
//! Struct members are declared in the canonical order of the API's current responses (the seed's
//! examples 02 and 03), so serialising gives that order too; the simulator relies on it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use super::field::{Field, LooseInt};

/// Declares a wire struct: camelCase keys, every member optional and tri-state, unknown keys
/// kept in `extra`. One place for the attributes means no member can forget them.
///
/// `lean` declares a read-only document the operator never sends back: unknown keys are
/// dropped, which keeps a 10,000-job listing small in memory.
macro_rules! wire_struct {
    (lean $($rest:tt)*) => {
        wire_struct!(@emit [] $($rest)*);
    };
    (@emit [$($extra:tt)*]
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(default, skip_serializing_if = "Field::is_absent")]
                pub $field: Field<$ty>,
            )*
            $($extra)*
        }
    };
    ($($rest:tt)*) => {
        wire_struct!(@emit [
            /// Keys this version does not know; kept so nothing is lost on a round trip.
            #[serde(flatten)]
            pub extra: Map<String, Value>,
        ] $($rest)*);
    };
}

wire_struct! {
    /// A deployment job document (create/get/update bodies and responses).
    pub struct JobBody {
        customer_id: String,
        id: String,
        schema_version: String,
        name: String,
        r#type: String,
        status: String,
        asset_ids: Vec<String>,
        asset_tag_ids: Vec<String>,
        match_all_tag_ids: Vec<String>,
        exclusion_tag_ids: Vec<String>,
        exclusion_asset_ids: Vec<String>,
        co_author_user_ids: Vec<String>,
        approved_patches: Vec<String>,
        disabled_patches: Vec<String>,
        patch_count: LooseInt,
        schedule_type: String,
        start_date_time: String,
        recurring: bool,
        recurring_week_days: String,
        day_of_month: LooseInt,
        recurring_day_of_month: LooseInt,
        recurring_week_day_of_month: LooseInt,
        timezone_type: String,
        timezone: String,
        timeout: LooseInt,
        timeout_unit: String,
        pre_deployment: DeferrablePrompt,
        during_deployment: Prompt,
        post_deployment: PostDeployment,
        description: String,
        created_by: Audit,
        updated_by: Audit,
        deleted_by: Audit,
        asset_count: LooseInt,
        opportunistic_downloads: bool,
        filter_type: String,
        exclusion_filter_type: String,
        tagged_asset_count: LooseInt,
        minimize_window: bool,
        #[serde(rename = "dynamicPatchesQQL")]
        dynamic_patches_qql: String,
        #[serde(rename = "isDynamicPatchesQQL")]
        is_dynamic_patches_qql: bool,
        #[serde(rename = "dynamicQQLType")]
        dynamic_qql_type: LooseInt,
        platform: String,
        continue_on_patch_failure: bool,
        #[serde(deserialize_with = "lenient_actions")]
        pre_deploy_actions: Vec<Action>,
        #[serde(deserialize_with = "lenient_actions")]
        post_deploy_actions: Vec<Action>,
        applicable_asset_count: LooseInt,
        monthly_recurring_type: LooseInt,
        patch_tuesday_plus_x_days: LooseInt,
        recurring_last_day_of_month: bool,
        job_category: LooseInt,
        job_trigger_status: Value,
        completion_percent: Value,
        total_asset_count: LooseInt,
        asset_result_received_count: LooseInt,
        job_source: LooseInt,
        read_only: bool,
        notification: Notification,
        linked_job_id: String,
        /// Request-only: the server stores it and reports it under `linkedToJob[].chainedJobRule`.
        chained_job_rule: Vec<ChainedJobRule>,
        linked_to_job: Vec<LinkedJob>,
        linked_jobs: Value,
        job_start_countdown: Value,
        password_action: Value,
        sub_category: String,
        #[serde(rename = "additionalDynamicQQLType")]
        additional_dynamic_qql_type: LooseInt,
        #[serde(rename = "additionalDynamicPatchesQQL")]
        additional_dynamic_patches_qql: String,
        download_randomize_time: LooseInt,
        download_randomize_time_unit: String,
        #[serde(rename = "customPatchURLId")]
        custom_patch_url_id: LooseInt,
        is_vuln_context: bool,
        remediation_qids: Vec<Value>,
        is_asset_imported: bool,
    }
}

wire_struct! {
    /// `preDeployment` and `postDeployment.rebootOption`: a prompt the user may defer.
    pub struct DeferrablePrompt {
        user_message: String,
        description: String,
        deferment: Deferment,
    }
}

wire_struct! {
    /// How often and how long a user may postpone.
    pub struct Deferment {
        count: LooseInt,
        interval: LooseInt,
        interval_unit: String,
    }
}

wire_struct! {
    /// `duringDeployment`: a message shown while patches install.
    pub struct Prompt {
        user_message: String,
        description: String,
    }
}

wire_struct! {
    /// `postDeployment`: reboot handling and the completion prompt.
    pub struct PostDeployment {
        suppress_reboots: bool,
        reboot_honor_on_user_login: bool,
        reboot_option: DeferrablePrompt,
        reboot_countdown: RebootCountdown,
        on_complete: OnComplete,
    }
}

wire_struct! {
    /// `postDeployment.rebootCountdown`.
    pub struct RebootCountdown {
        interval: LooseInt,
        interval_unit: String,
        user_message: String,
        description: String,
    }
}

wire_struct! {
    /// `postDeployment.onComplete`; a request may send `null`, the server answers with
    /// `{"userMessage":"","description":"","alwaysShowCompletedPrompt":false}`.
    pub struct OnComplete {
        user_message: String,
        description: String,
        always_show_completed_prompt: bool,
    }
}

wire_struct! {
    /// A pre- or post-deploy action. Read leniently (see [`Action::from_value_lenient`]): an
    /// action of a kind this version does not know, or with members of unexpected types, is
    /// kept whole and sent back as it came.
    pub struct Action {
        action_id: String,
        action: String,
        action_type: String,
        params: ActionParams,
        /// Base64 content in a request; a storage path `<customerId>/<actionId>/Script` in a response.
        script: String,
        script_type: String,
        /// Like `script`, stored at `<customerId>/<actionId>/DetectionScript`.
        detection_script: String,
        detection_script_type: String,
        action_linked_to_job: bool,
        default_script_type: String,
    }
}

wire_struct! {
    /// `params` of an action.
    pub struct ActionParams {
        action_item: String,
        #[serde(rename = "downloadURL")]
        download_url: String,
        download_protocol: LooseInt,
        install_method: LooseInt,
        file_checksum: String,
        timeout: LooseInt,
        remediation_scope: bool,
        // Change Registry Key and Uninstall Software: the console's fields under names this
        // project chose, the API's spelling being undocumented (docs/crd.md says so).
        /// Change Registry Key: the key's full path, hive first.
        registry_key: String,
        /// Change Registry Key: `Create`, `Update` or `Delete`.
        registry_action: String,
        /// Change Registry Key: the value's name.
        value_name: String,
        /// Change Registry Key: the value's type (`REG_SZ`, `REG_DWORD`, ...).
        value_type: String,
        /// Change Registry Key: the value's data.
        value_data: String,
        /// Uninstall Software: the software's name as Windows lists it.
        software_name: String,
        /// Uninstall Software: the command that uninstalls it.
        uninstall_command: String,
    }
}

wire_struct! {
    /// `notification`.
    pub struct Notification {
        notification_types: NotificationTypes,
        notification_configs: NotificationConfigs,
        notification_events: NotificationEvents,
    }
}

wire_struct! {
    /// `notification.notificationTypes`.
    pub struct NotificationTypes {
        email: bool,
    }
}

wire_struct! {
    /// `notification.notificationConfigs`.
    pub struct NotificationConfigs {
        recipient_emails: String,
        completed_percentage: LooseInt,
    }
}

wire_struct! {
    /// `notification.notificationEvents`.
    pub struct NotificationEvents {
        on_job_start: bool,
        on_job_complete: bool,
    }
}

wire_struct! {
    /// A `chainedJobRule[]` item: run this job only when enough of the parent's post-deploy
    /// actions succeeded. Responses add `id` and `actionDetails` (under `linkedToJob[]`).
    pub struct ChainedJobRule {
        id: Value,
        field: String,
        threshold: LooseInt,
        action_ids: Vec<String>,
        condition: String,
        #[serde(deserialize_with = "lenient_actions")]
        action_details: Vec<Action>,
    }
}

wire_struct! {
    /// A `linkedToJob[]` item: the server's summary of the parent job.
    pub struct LinkedJob {
        customer_id: String,
        id: String,
        name: String,
        r#type: String,
        status: String,
        created_by: Audit,
        linked_job_reference_count: LooseInt,
        schedule: String,
        previous_run: Value,
        next_run: Value,
        chained_job_rule: Vec<ChainedJobRule>,
    }
}

wire_struct! {
    /// `createdBy` / `updatedBy` / `deletedBy` (and `created` / `updated` in summaries).
    pub struct Audit {
        user: AuditUser,
        /// Epoch milliseconds.
        date: LooseInt,
    }
}

wire_struct! {
    /// The user of an audit record.
    pub struct AuditUser {
        id: String,
        name: String,
    }
}

wire_struct! {
    lean
    /// An item of `GET /pm/v1/deploymentjobs/summary`. Its shape differs from the job document:
    /// `created`/`updated` rather than `createdBy`/`updatedBy`, `isRecurring`, `triggerStatus`.
    pub struct JobSummary {
        id: String,
        name: String,
        customer_id: String,
        platform: String,
        r#type: String,
        status: String,
        schedule_type: String,
        start_date_time: String,
        timezone: String,
        timezone_type: String,
        is_recurring: bool,
        created: Audit,
        updated: Audit,
        linked_job_id: String,
        linked_job_reference_count: LooseInt,
        patch_count: LooseInt,
        asset_count: LooseInt,
        completion_percent: Value,
        trigger_status: Value,
        deleted: bool,
    }
}

wire_struct! {
    /// One item of a bulk response (delete, status change).
    pub struct BulkItemResult {
        id: String,
        name: String,
        /// `success` or `failure`.
        status: String,
        error: String,
    }
}

/// Body of the bulk endpoints: `{"ids": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdList {
    pub ids: Vec<String>,
}

/// The error document of the gateway: `{"_error": {"errorCode": "...", "message": "..."}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "_error")]
    pub error: ErrorDetail,
}

wire_struct! {
    /// The inside of [`ErrorBody`].
    pub struct ErrorDetail {
        /// A string in the evidence (`"2501"`); numbers are accepted too.
        error_code: Value,
        message: String,
    }
}

impl ErrorDetail {
    /// The error code as text, whatever JSON type it came as.
    pub fn code(&self) -> Option<String> {
        match self.error_code.get()? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

impl BulkItemResult {
    pub fn succeeded(&self) -> bool {
        self.status
            .get()
            .is_some_and(|s| s.eq_ignore_ascii_case("success"))
    }
}

/// Every top-level key of a current job document, in the order the gateway sends them
/// (the seed's example 02/03 responses). New jobs carry all of them.
pub const CANONICAL_KEYS: [&str; 72] = [
    "customerId",
    "id",
    "schemaVersion",
    "name",
    "type",
    "status",
    "assetIds",
    "assetTagIds",
    "matchAllTagIds",
    "exclusionTagIds",
    "exclusionAssetIds",
    "coAuthorUserIds",
    "approvedPatches",
    "disabledPatches",
    "patchCount",
    "scheduleType",
    "startDateTime",
    "recurring",
    "recurringWeekDays",
    "dayOfMonth",
    "recurringDayOfMonth",
    "recurringWeekDayOfMonth",
    "timezoneType",
    "timezone",
    "timeout",
    "timeoutUnit",
    "preDeployment",
    "duringDeployment",
    "postDeployment",
    "description",
    "createdBy",
    "updatedBy",
    "deletedBy",
    "assetCount",
    "opportunisticDownloads",
    "filterType",
    "exclusionFilterType",
    "taggedAssetCount",
    "minimizeWindow",
    "dynamicPatchesQQL",
    "isDynamicPatchesQQL",
    "dynamicQQLType",
    "platform",
    "continueOnPatchFailure",
    "preDeployActions",
    "postDeployActions",
    "applicableAssetCount",
    "monthlyRecurringType",
    "patchTuesdayPlusXDays",
    "recurringLastDayOfMonth",
    "jobCategory",
    "jobTriggerStatus",
    "completionPercent",
    "totalAssetCount",
    "assetResultReceivedCount",
    "jobSource",
    "readOnly",
    "notification",
    "linkedJobId",
    "linkedToJob",
    "linkedJobs",
    "jobStartCountdown",
    "passwordAction",
    "subCategory",
    "additionalDynamicQQLType",
    "additionalDynamicPatchesQQL",
    "downloadRandomizeTime",
    "downloadRandomizeTimeUnit",
    "customPatchURLId",
    "isVulnContext",
    "remediationQids",
    "isAssetImported",
];

/// Values the API uses; the wire model keeps strings, these name the known ones.
pub mod values {
    pub const INSTALL: &str = "Install";
    pub const ROLLBACK: &str = "Rollback";
    pub const WINDOWS: &str = "Windows";
    pub const LINUX: &str = "Linux";
    pub const ENABLED: &str = "Enabled";
    pub const DISABLED: &str = "Disabled";
    pub const ON_DEMAND: &str = "On-demand";
    pub const ONCE: &str = "Once";
    pub const DAILY: &str = "Daily";
    pub const WEEKLY: &str = "Weekly";
    pub const MONTHLY: &str = "Monthly";
    pub const RUN_SCRIPT: &str = "Run Script";
    pub const INSTALL_SOFTWARE: &str = "Install Software";
    pub const CHANGE_REGISTRY_KEY: &str = "Change Registry Key";
    pub const UNINSTALL_SOFTWARE: &str = "Uninstall Software";
    /// The action kinds the Qualys console offers; a job may still carry others.
    pub const ACTION_KINDS: [&str; 4] = [
        RUN_SCRIPT,
        INSTALL_SOFTWARE,
        CHANGE_REGISTRY_KEY,
        UNINSTALL_SOFTWARE,
    ];
    pub const PREDEPLOY: &str = "predeploy";
    pub const POSTDEPLOY: &str = "postdeploy";
    pub const CHAINED_FIELD: &str = "postDeployAction";
    pub const CHAINED_CONDITION: &str = "Post Actions were successfully executed";
    pub const PLATFORMS: [&str; 2] = [WINDOWS, LINUX];
    pub const SCHEDULE_TYPES: [&str; 5] = [ON_DEMAND, ONCE, DAILY, WEEKLY, MONTHLY];
}

/// Which script of an action a storage path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    Script,
    DetectionScript,
}

impl ScriptKind {
    pub fn suffix(self) -> &'static str {
        match self {
            ScriptKind::Script => "Script",
            ScriptKind::DetectionScript => "DetectionScript",
        }
    }
}

/// The storage path the server returns in place of a script: `<customerId>/<actionId>/Script`.
pub fn script_path(customer_id: &str, action_id: &str, kind: ScriptKind) -> String {
    format!("{customer_id}/{action_id}/{}", kind.suffix())
}

/// True when `value` has the shape of a storage path rather than base64 content.
/// The two leading segments must be UUIDs: base64 has no `-`, so no script content can pass.
pub fn is_script_path(value: &str) -> bool {
    let mut parts = value.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(a), Some(kind), None) => {
            (kind == "Script" || kind == "DetectionScript")
                && uuid::Uuid::try_parse(c).is_ok()
                && uuid::Uuid::try_parse(a).is_ok()
        }
        _ => false,
    }
}

/// The members of [`Action`] as the API spells them. A key of this list found in
/// `Action::extra` is one the typed view could not read (a test keeps the list complete).
pub const ACTION_KEYS: [&str; 10] = [
    "actionId",
    "action",
    "actionType",
    "params",
    "script",
    "scriptType",
    "detectionScript",
    "detectionScriptType",
    "actionLinkedToJob",
    "defaultScriptType",
];

impl Action {
    /// Read one action without refusing it: members whose value has a type this version does
    /// not expect (say a console-made kind with `params.timeout: true`) are kept verbatim in
    /// `extra` instead of failing the whole job, so the job can still be read, diffed and sent
    /// back unchanged. Only a value that is not a JSON object is refused.
    pub fn from_value_lenient(value: &Value) -> Result<Action, String> {
        let Value::Object(map) = value else {
            return Err(format!(
                "an action must be a JSON object, not {}",
                kind_of(value)
            ));
        };
        if let Ok(action) = Action::deserialize(value) {
            return Ok(action);
        }
        // Members are independent of each other, so a member that fails alone is exactly
        // one that fails in the whole.
        let (mut readable, mut kept) = (Map::new(), Map::new());
        for (key, member) in map {
            let alone = Value::Object(Map::from_iter([(key.clone(), member.clone())]));
            if Action::deserialize(&alone).is_ok() {
                readable.insert(key.clone(), member.clone());
            } else {
                kept.insert(key.clone(), member.clone());
            }
        }
        let mut action = Action::deserialize(Value::Object(readable)).map_err(|e| e.to_string())?;
        action.extra.extend(kept);
        Ok(action)
    }

    /// The action's kind (`Run Script`, ...), also when the typed view could not read it.
    pub fn kind(&self) -> Option<&str> {
        match self.action.get() {
            Some(kind) => Some(kind),
            None => self.extra.get("action").and_then(Value::as_str),
        }
    }

    /// Keys of this action that the typed view could not read and kept verbatim in `extra`.
    pub fn unreadable_keys(&self) -> impl Iterator<Item = &str> {
        self.extra
            .keys()
            .map(String::as_str)
            .filter(|k| ACTION_KEYS.contains(k))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `deserialize_with` of every action list: each item through [`Action::from_value_lenient`].
fn lenient_actions<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Field<Vec<Action>>, D::Error> {
    let Some(items) = Option::<Vec<Value>>::deserialize(deserializer)? else {
        return Ok(Field::Null);
    };
    items
        .iter()
        .map(Action::from_value_lenient)
        .collect::<Result<Vec<_>, _>>()
        .map(Field::Value)
        .map_err(serde::de::Error::custom)
}

impl JobBody {
    /// Parse a job document.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    /// The job id, when the document has one.
    pub fn job_id(&self) -> Option<&str> {
        self.id.get().map(String::as_str)
    }

    /// The post-deploy actions as (actionItem, actionId), those with both: what a chained
    /// child's `actionRefs` name.
    pub fn post_action_ids(&self) -> Vec<(String, String)> {
        self.post_deploy_actions
            .get()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a.params.get()?.action_item.get()?.clone(),
                    a.action_id.get()?.clone(),
                ))
            })
            .collect()
    }

    pub fn job_name(&self) -> Option<&str> {
        self.name.get().map(String::as_str)
    }

    pub fn job_platform(&self) -> Option<&str> {
        self.platform.get().map(String::as_str)
    }

    /// All actions, pre-deploy first, each with its list name.
    pub fn actions(&self) -> impl Iterator<Item = (&'static str, usize, &Action)> {
        let pre = self.pre_deploy_actions.get().into_iter().flatten();
        let post = self.post_deploy_actions.get().into_iter().flatten();
        pre.enumerate()
            .map(|(i, a)| ("preDeployActions", i, a))
            .chain(post.enumerate().map(|(i, a)| ("postDeployActions", i, a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_paths_are_recognised() {
        assert!(is_script_path(
            "bc023fd7-4290-f28f-8181-95a46f519f52/24fcade7-85c1-41c1-8168-0c34509f722e/Script"
        ));
        assert!(is_script_path(
            "bc023fd7-4290-f28f-8181-95a46f519f52/fbef9851-2703-4ae7-b179-910f203796ac/DetectionScript"
        ));
        // Valid base64 of the same outline is content, not a path.
        assert!(!is_script_path("ab/cd/Script"));
        assert!(!is_script_path("bHM="));
        assert!(!is_script_path(""));
        assert!(!is_script_path("a/b/c/Script"));
        assert!(!is_script_path("/a/Script"));
    }

    #[test]
    fn action_keys_name_every_member() {
        let full = Action {
            action_id: "a".to_string().into(),
            action: "a".to_string().into(),
            action_type: "a".to_string().into(),
            params: ActionParams::default().into(),
            script: "a".to_string().into(),
            script_type: "a".to_string().into(),
            detection_script: "a".to_string().into(),
            detection_script_type: "a".to_string().into(),
            action_linked_to_job: false.into(),
            default_script_type: "a".to_string().into(),
            extra: Map::new(),
        };
        let value = serde_json::to_value(&full).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ACTION_KEYS);
    }

    #[test]
    fn an_action_of_unexpected_shape_is_kept_whole() {
        let odd = serde_json::json!({
            "actionId": "0b7c7f5e-1d2b-4c1e-9f1a-3f6f2b8a9c01",
            "action": "Set Wallpaper",
            "params": {"actionItem": 7, "timeout": true, "colour": "teal"},
            "script": {"inline": true},
            "steps": [1, 2, 3],
        });
        let job = serde_json::json!({"name": "j", "preDeployActions": [odd.clone()]});
        let body: JobBody = serde_json::from_value(job.clone()).unwrap();
        let action = &body.pre_deploy_actions.get().unwrap()[0];
        assert_eq!(action.kind(), Some("Set Wallpaper"));
        assert_eq!(
            action.action_id.get().map(String::as_str),
            Some("0b7c7f5e-1d2b-4c1e-9f1a-3f6f2b8a9c01")
        );
        let mut unreadable: Vec<&str> = action.unreadable_keys().collect();
        unreadable.sort_unstable();
        assert_eq!(unreadable, ["params", "script"]);
        assert_eq!(serde_json::to_value(&body).unwrap(), job);
        // Through bytes as well (how the client reads a GET).
        let bytes = serde_json::to_vec(&job).unwrap();
        assert_eq!(
            serde_json::to_value(JobBody::from_json(&bytes).unwrap()).unwrap(),
            job
        );
        // Only a non-object is refused.
        let err = serde_json::from_value::<JobBody>(serde_json::json!({"postDeployActions": [5]}))
            .unwrap_err();
        assert!(
            err.to_string().contains("an action must be a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn error_code_reads_strings_and_numbers() {
        let e: ErrorBody =
            serde_json::from_str(r#"{"_error":{"errorCode":"2501","message":"cap"}}"#).unwrap();
        assert_eq!(e.error.code().as_deref(), Some("2501"));
        let e: ErrorBody = serde_json::from_str(r#"{"_error":{"errorCode":2501}}"#).unwrap();
        assert_eq!(e.error.code().as_deref(), Some("2501"));
    }
}
