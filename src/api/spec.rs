//! `spec` of a DeploymentJob: what the operator needs (`connectionRef`, `jobId`, policies) beside
//! the Qualys job body (`job`), whose field names are exactly the API's.
//!
//! Every member of `job` is optional except `name`, `platform` and `scheduleType`: an absent
//! field is not managed (the live value is left alone), `[]` means "managed and empty".
//! Server-managed fields (ids, counts, audit records, `linkedToJob`, action ids) never appear
//! here; the useful ones are reported in `status`.
//!
//! The schema refuses bad values at admission: enums, ranges and patterns on fields, and CEL
//! rules (`x-kubernetes-validations`) across fields. `plan`/`apply` evaluate the very same rules
//! client-side (`DeploymentJob::validate_cel`), so there is one rule set.

use super::enums::*;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A UUID as Qualys writes its ids.
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// `startDateTime` as the API writes it: `yyyy-M-dd hh:mm:ss AM|PM`.
pub const START_DATE_TIME_PATTERN: &str =
    "^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2} [0-9]{1,2}:[0-9]{2}:[0-9]{2} (AM|PM)$";
/// `recurringWeekDays`: seven 0/1 flags, Sunday first.
pub const WEEK_DAYS_PATTERN: &str = "^[01](,[01]){6}$";
/// A Kubernetes object name (RFC 1123 subdomain), as Secrets, ConfigMaps and DeploymentJobs have.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key of a ConfigMap or Secret.
pub const CONFIG_KEY_PATTERN: &str = "^[-._a-zA-Z0-9]+$";
/// Standard padded base64 on one line, as the API takes scripts (`""` included: the blank
/// script of a MakeCache action). Plain text here would be sent as garbage, so it is refused.
pub const BASE64_PATTERN: &str = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// A DeploymentJob declares one Qualys Patch Management deployment job. The operator creates
/// it in Qualys, keeps it matching `spec.job`, and deletes it (per `deletionPolicy`) when the
/// resource is deleted.
// Every printer column repeats `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pm.qualys.io",
    version = "v1alpha1",
    kind = "DeploymentJob",
    plural = "deploymentjobs",
    shortname = "qdj",
    category = "qualys",
    namespaced,
    status = "super::status::DeploymentJobStatus",
    derive = "PartialEq",
    cel,
    doc = "A Qualys Patch Management deployment job, managed declaratively.",
    printcolumn(name = "Job ID", type_ = "string", json_path = ".status.jobId"),
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.job.platform"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.job.type"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.job.state"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Synced\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.jobId) || !has(self.job.preDeployActions) || self.job.preDeployActions.all(a, a.action != 'Run Script' || has(a.script) || has(a.scriptFrom) || has(a.defaultScriptType))"
).message("a Run Script pre-deploy action needs script, scriptFrom or defaultScriptType (scripts may be left unmanaged only when spec.jobId adopts an existing job)").field_path(".job.preDeployActions"))]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.jobId) || !has(self.job.postDeployActions) || self.job.postDeployActions.all(a, a.action != 'Run Script' || has(a.script) || has(a.scriptFrom) || has(a.defaultScriptType))"
).message("a Run Script post-deploy action needs script, scriptFrom or defaultScriptType (scripts may be left unmanaged only when spec.jobId adopts an existing job)").field_path(".job.postDeployActions"))]
#[serde(rename_all = "camelCase")]
pub struct DeploymentJobSpec {
    /// A Secret in this namespace holding the Qualys connection: keys `gatewayUrl` (e.g.
    /// https://gateway.qg1.apps.qualys.com), `username`, `password`, and optionally `caBundle`
    /// (PEM). Absent: the operator's own connection, if this namespace may use it. A named
    /// Secret that is missing is an error, never a fall-back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<SecretRef>,

    /// Adopt this existing Qualys job (its UUID) instead of creating one. The durable binding
    /// between this resource and the job: status is lost by backup/restore tools, the spec is
    /// not. Adoption never enables a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = UUID_PATTERN))]
    pub job_id: Option<String>,

    /// What happens to the Qualys job when this resource is deleted: `Delete` it, or `Orphan`
    /// it (leave it in Qualys). Default: `Delete`, but `Orphan` when `jobId` adopts a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// `Correct` (default): make the live job match the spec. `Report`: only observe; create,
    /// update and enable nothing, and list the differences in `status.pendingChanges`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_policy: Option<DriftPolicy>,

    /// What to do when the managed job has vanished from Qualys: `Never` (default) reports
    /// JobMissing and waits for a person, because a re-created enabled job re-patches and may
    /// reboot machines; `Recreate` creates it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreate_policy: Option<RecreatePolicy>,

    /// The Qualys deployment job, with the API's field names. Absent fields are not managed.
    pub job: JobSpec,
}

impl DeploymentJobSpec {
    pub fn effective_deletion_policy(&self) -> DeletionPolicy {
        match (self.deletion_policy, &self.job_id) {
            (Some(p), _) => p,
            (None, Some(_)) => DeletionPolicy::Orphan,
            (None, None) => DeletionPolicy::Delete,
        }
    }

    pub fn effective_drift_policy(&self) -> DriftPolicy {
        self.drift_policy.unwrap_or(DriftPolicy::Correct)
    }

    pub fn effective_recreate_policy(&self) -> RecreatePolicy {
        self.recreate_policy.unwrap_or(RecreatePolicy::Never)
    }
}

/// A Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// Another DeploymentJob in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct DeploymentJobRef {
    /// Name of the DeploymentJob.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// The writable fields of a Qualys deployment job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.scheduleType == 'On-demand' || has(self.startDateTime)")
    .message("startDateTime is required unless scheduleType is On-demand").field_path(".startDateTime"))]
#[x_kube(validation = kube::core::Rule::new("!(has(self.linkedJobId) && has(self.linkedJobRef))")
    .message("set linkedJobId (a Qualys job UUID) or linkedJobRef (a DeploymentJob), not both").field_path(".linkedJobRef"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.chainedJobRule) || size(self.chainedJobRule) == 0 || has(self.linkedJobId) || has(self.linkedJobRef)")
    .message("chainedJobRule needs a linked job: set linkedJobRef or linkedJobId").field_path(".chainedJobRule"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.chainedJobRule) || self.chainedJobRule.all(r, !has(r.actionRefs) || has(self.linkedJobRef))")
    .message("chainedJobRule[].actionRefs name actions of the linkedJobRef parent; they need linkedJobRef").field_path(".chainedJobRule"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.chainedJobRule) || self.chainedJobRule.all(r, !has(r.actionIds) || has(self.linkedJobId))")
    .message("chainedJobRule[].actionIds are raw Qualys action ids; they need linkedJobId (with linkedJobRef use actionRefs)").field_path(".chainedJobRule"))]
#[x_kube(validation = kube::core::Rule::new("has(self.timeout) == has(self.timeoutUnit)")
    .message("timeout and timeoutUnit are set together").field_path(".timeoutUnit"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.timeout) || !has(self.timeoutUnit) || (self.timeoutUnit == 'HOURS' ? self.timeout <= 168 : self.timeout <= 10080)")
    .message("timeout is at most 168 HOURS or 10080 MINUTES").field_path(".timeout"))]
#[x_kube(validation = kube::core::Rule::new("has(self.downloadRandomizeTime) == has(self.downloadRandomizeTimeUnit)")
    .message("downloadRandomizeTime and downloadRandomizeTimeUnit are set together").field_path(".downloadRandomizeTimeUnit"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.downloadRandomizeTime) || !has(self.downloadRandomizeTimeUnit) || (self.downloadRandomizeTimeUnit == 'HOURS' ? self.downloadRandomizeTime <= 2 : self.downloadRandomizeTime <= 120)")
    .message("downloadRandomizeTime is at most 2 HOURS or 120 MINUTES").field_path(".downloadRandomizeTime"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.downloadRandomizeTime) || !has(self.downloadRandomizeTimeUnit) || !has(self.timeout) || !has(self.timeoutUnit) || self.downloadRandomizeTime * (self.downloadRandomizeTimeUnit == 'HOURS' ? 60 : 1) < self.timeout * (self.timeoutUnit == 'HOURS' ? 60 : 1)")
    .message("downloadRandomizeTime must be shorter than timeout").field_path(".downloadRandomizeTime"))]
#[x_kube(validation = kube::core::Rule::new("self.scheduleType != 'Weekly' || has(self.recurringWeekDays)")
    .message("a Weekly job needs recurringWeekDays").field_path(".recurringWeekDays"))]
#[x_kube(validation = kube::core::Rule::new("self.platform == 'Windows' || !has(self.preDeployActions) || self.preDeployActions.all(a, a.action != 'Change Registry Key')")
    .message("a Change Registry Key pre-deploy action needs platform Windows").field_path(".preDeployActions"))]
#[x_kube(validation = kube::core::Rule::new("self.platform == 'Windows' || !has(self.postDeployActions) || self.postDeployActions.all(a, a.action != 'Change Registry Key')")
    .message("a Change Registry Key post-deploy action needs platform Windows").field_path(".postDeployActions"))]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// The job's name in Qualys; also how `apply` without a cluster finds an existing job
    /// (exact name within its platform).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// Install patches (default on the Qualys side) or roll them back.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub job_type: Option<JobType>,

    /// Windows or Linux. Cannot change once the job exists.
    pub platform: Platform,

    /// Enabled or Disabled. Applied through the status endpoint. The operator never enables a
    /// job it adopted, and never re-enables a non-recurring job (that would run it again).
    /// Absent: the state is not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobState>,

    /// Target assets (Qualys asset UUIDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10000), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub asset_ids: Option<Vec<String>>,

    /// Target asset tags, combined per `filterType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub asset_tag_ids: Option<Vec<String>>,

    /// Tags that must all match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub match_all_tag_ids: Option<Vec<String>>,

    /// Excluded asset tags, combined per `exclusionFilterType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub exclusion_tag_ids: Option<Vec<String>>,

    /// Excluded assets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10000), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub exclusion_asset_ids: Option<Vec<String>>,

    /// Users (UUIDs) who may co-author the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub co_author_user_ids: Option<Vec<String>>,

    /// Patches to deploy (Qualys patch UUIDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10000), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub approved_patches: Option<Vec<String>>,

    /// On-demand, Once, Daily, Weekly or Monthly.
    pub schedule_type: ScheduleType,

    /// First run, as `yyyy-M-dd hh:mm:ss AM|PM` (e.g. `2025-7-01 09:57:18 AM`), in `timezone`.
    /// Required unless scheduleType is On-demand. Compared as a time, not as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = START_DATE_TIME_PATTERN), length(max = 32))]
    pub start_date_time: Option<String>,

    /// Whether the schedule repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring: Option<bool>,

    /// Weekly runs: seven comma-separated 0/1 flags, Sunday first (`0,1,0,0,0,0,0` = Mondays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WEEK_DAYS_PATTERN), length(max = 13))]
    pub recurring_week_days: Option<String>,

    /// Monthly runs on this day of the month (1–31).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31))]
    pub day_of_month: Option<i32>,

    /// Monthly runs on the n-th week of the month (1–5), with `recurringWeekDayOfMonth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub recurring_day_of_month: Option<i32>,

    /// Monthly runs on this weekday (0 = Sunday … 6 = Saturday) of the `recurringDayOfMonth`-th week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 6))]
    pub recurring_week_day_of_month: Option<i32>,

    /// Monthly runs on the last day of the month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring_last_day_of_month: Option<bool>,

    /// 0 = a normal monthly schedule, 1 = relative to Patch Tuesday (see patchTuesdayPlusXDays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub monthly_recurring_type: Option<i32>,

    /// Days before (−27…−1) or after (1…27) Patch Tuesday.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -27, max = 27))]
    #[x_kube(validation = kube::core::Rule::new("self != 0").message("patchTuesdayPlusXDays is −27…−1 or 1…27, not 0"))]
    pub patch_tuesday_plus_x_days: Option<i32>,

    /// SPECIFIC_TZ (use `timezone`) or AGENT_TZ (each agent's local time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone_type: Option<TimezoneType>,

    /// A zone name such as `UTC` or `America/New_York`, used with SPECIFIC_TZ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub timezone: Option<String>,

    /// How long the deployment window stays open: 1–168 HOURS or 1–10080 MINUTES.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10080))]
    pub timeout: Option<i32>,

    /// Unit of `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_unit: Option<TimeUnit>,

    /// Spread downloads over this much time (0–2 HOURS or 0–120 MINUTES), shorter than `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 120))]
    pub download_randomize_time: Option<i32>,

    /// Unit of `downloadRandomizeTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_randomize_time_unit: Option<TimeUnit>,

    // The blocks below are rarely set and large: boxed, an unset one costs 8 bytes instead of
    // up to 200 in every cached resource.
    /// The prompt shown before deployment, and how often users may defer it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_deployment: Option<Box<DeferrablePromptSpec>>,

    /// The message shown during deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub during_deployment: Option<Box<PromptSpec>>,

    /// Reboot handling and the completion prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_deployment: Option<Box<PostDeploymentSpec>>,

    /// Free text shown in the Qualys UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,

    /// Let Windows agents download patches ahead of the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opportunistic_downloads: Option<bool>,

    /// How `assetTagIds` combine: Any or All.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_type: Option<FilterType>,

    /// How `exclusionTagIds` combine: Any or All.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion_filter_type: Option<FilterType>,

    /// Let users minimise the deployment pop-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimize_window: Option<bool>,

    /// Select patches with a QQL query instead of (or beside) approvedPatches.
    #[serde(
        default,
        rename = "dynamicPatchesQQL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 8192))]
    pub dynamic_patches_qql: Option<String>,

    /// Whether `dynamicPatchesQQL` is in use.
    #[serde(
        default,
        rename = "isDynamicPatchesQQL",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_dynamic_patches_qql: Option<bool>,

    /// 0 = no QQL, 1 = patch QQL, 2 = vulnerability QQL.
    #[serde(
        default,
        rename = "dynamicQQLType",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 2))]
    pub dynamic_qql_type: Option<i32>,

    /// An additional QQL query.
    #[serde(
        default,
        rename = "additionalDynamicPatchesQQL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 8192))]
    pub additional_dynamic_patches_qql: Option<String>,

    /// 1 = patch QQL, 2 = vulnerability QQL, for `additionalDynamicPatchesQQL`.
    #[serde(
        default,
        rename = "additionalDynamicQQLType",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 2))]
    pub additional_dynamic_qql_type: Option<i32>,

    /// Keep deploying the remaining patches when one fails (meaningful on Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_patch_failure: Option<bool>,

    /// Actions run before patches are deployed, in order (at most 5, as in the Qualys console).
    /// Matched to the live job's actions by position; their ids are the server's. Absent: the
    /// live job's pre-deploy actions are left as they are, whatever their kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5), extend("x-kubernetes-list-type" = "atomic"))]
    pub pre_deploy_actions: Option<Vec<ActionSpec>>,

    /// Actions run after patches are deployed, in order (at most 5). A chained child job names
    /// them by `params.actionItem` (`chainedJobRule[].actionRefs`). Absent: left as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5), extend("x-kubernetes-list-type" = "atomic"))]
    pub post_deploy_actions: Option<Vec<ActionSpec>>,

    /// E-mail notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Box<NotificationSpec>>,

    /// The parent job (a Qualys job UUID) whose patches this job takes. Prefer linkedJobRef
    /// when the parent is a DeploymentJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = UUID_PATTERN))]
    pub linked_job_id: Option<String>,

    /// The parent job as a DeploymentJob in this namespace; resolved to its job id. This job
    /// waits (WaitingForLinkedJob) until the parent has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_job_ref: Option<DeploymentJobRef>,

    /// Run this job only when enough of the parent's post-deploy actions succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10), extend("x-kubernetes-list-type" = "atomic"))]
    pub chained_job_rule: Option<Vec<ChainedJobRuleSpec>>,

    /// The `id` from the Qualys "Fetch Custom Patch Download URLs" API (a number or a string of digits).
    #[serde(
        default,
        rename = "customPatchURLId",
        skip_serializing_if = "Option::is_none"
    )]
    pub custom_patch_url_id: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,

    /// Whether the job's patches come from vulnerability context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_vuln_context: Option<bool>,

    /// Whether the target assets were imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_asset_imported: Option<bool>,
}

/// A message with a title.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptSpec {
    /// The message shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub user_message: Option<String>,
    /// The prompt's title/description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,
}

/// A prompt the user may defer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeferrablePromptSpec {
    /// The message shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub user_message: Option<String>,
    /// The prompt's title/description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,
    /// How often and for how long the user may defer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferment: Option<DefermentSpec>,
}

/// How often and how long a user may postpone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!has(self.interval) || !has(self.intervalUnit) || (self.intervalUnit == 'HOURS' ? self.interval <= 24 : self.interval <= 1440)")
    .message("a deferment interval is at most 24 HOURS or 1440 MINUTES").field_path(".interval"))]
#[serde(rename_all = "camelCase")]
pub struct DefermentSpec {
    /// How many times the user may defer (1–99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub count: Option<i32>,
    /// How long each deferment lasts (1–24 HOURS or 1–1440 MINUTES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1440))]
    pub interval: Option<i32>,
    /// Unit of `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_unit: Option<TimeUnit>,
}

/// Reboot handling and the completion prompt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostDeploymentSpec {
    /// Never reboot after deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_reboots: Option<bool>,
    /// Wait for the logged-in user before rebooting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_honor_on_user_login: Option<bool>,
    /// The reboot prompt and its deferments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_option: Option<DeferrablePromptSpec>,
    /// The countdown before a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_countdown: Option<RebootCountdownSpec>,
    /// The prompt shown when deployment completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_complete: Option<OnCompleteSpec>,
}

/// The countdown before a reboot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!has(self.interval) || !has(self.intervalUnit) || (self.intervalUnit == 'HOURS' ? self.interval <= 24 : self.interval <= 1440)")
    .message("a reboot countdown is at most 24 HOURS or 1440 MINUTES").field_path(".interval"))]
#[serde(rename_all = "camelCase")]
pub struct RebootCountdownSpec {
    /// Length of the countdown (1–24 HOURS or 1–1440 MINUTES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1440))]
    pub interval: Option<i32>,
    /// Unit of `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_unit: Option<TimeUnit>,
    /// The message shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub user_message: Option<String>,
    /// The prompt's title/description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,
}

/// The prompt shown when deployment completes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnCompleteSpec {
    /// The message shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub user_message: Option<String>,
    /// The prompt's title/description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,
    /// Windows: always show the completion pop-up, whether patches failed, were skipped or
    /// succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_show_completed_prompt: Option<bool>,
}

/// A pre- or post-deploy action. Carries no action id: actions are matched to the live job's
/// by position within their list, and the server's ids are sent back on update.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!(has(self.script) && has(self.scriptFrom))")
    .message("set script (base64) or scriptFrom, not both").field_path(".scriptFrom"))]
#[x_kube(validation = kube::core::Rule::new("!(has(self.detectionScript) && has(self.detectionScriptFrom))")
    .message("set detectionScript (base64) or detectionScriptFrom, not both").field_path(".detectionScriptFrom"))]
#[x_kube(validation = kube::core::Rule::new("self.action != 'Change Registry Key' || (has(self.params) && has(self.params.registryKey) && has(self.params.registryAction))")
    .message("a Change Registry Key action needs params.registryKey and params.registryAction").field_path(".params"))]
#[x_kube(validation = kube::core::Rule::new("self.action == 'Change Registry Key' || !has(self.params) || !(has(self.params.registryKey) || has(self.params.registryAction) || has(self.params.valueName) || has(self.params.valueType) || has(self.params.valueData))")
    .message("registryKey, registryAction, valueName, valueType and valueData are for Change Registry Key actions").field_path(".params"))]
#[x_kube(validation = kube::core::Rule::new("self.action != 'Uninstall Software' || (has(self.params) && has(self.params.softwareName))")
    .message("an Uninstall Software action needs params.softwareName").field_path(".params"))]
#[x_kube(validation = kube::core::Rule::new("self.action == 'Uninstall Software' || !has(self.params) || !(has(self.params.softwareName) || has(self.params.uninstallCommand))")
    .message("softwareName and uninstallCommand are for Uninstall Software actions").field_path(".params"))]
#[serde(rename_all = "camelCase")]
pub struct ActionSpec {
    /// Run Script, Install Software, Change Registry Key (Windows) or Uninstall Software.
    pub action: ActionKind,
    /// Name, timeout and download details of the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<ActionParamsSpec>,
    /// The script, base64-encoded, as the API takes it. Prefer scriptFrom for readable manifests.
    /// Scripts cannot be read back from Qualys, so a change made in the Qualys console is not
    /// detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576), regex(pattern = BASE64_PATTERN))]
    pub script: Option<String>,
    /// The script as plain text in a ConfigMap or Secret key; the operator base64-encodes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_from: Option<ScriptSource>,
    /// The script's interpreter: ps or sh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_type: Option<ScriptType>,
    /// A built-in script instead of your own, e.g. `MakeCache` (Linux package-cache update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub default_script_type: Option<String>,
    /// Install Software: a script that tells whether the software is already there, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576), regex(pattern = BASE64_PATTERN))]
    pub detection_script: Option<String>,
    /// The detection script as plain text in a ConfigMap or Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_script_from: Option<ScriptSource>,
    /// The detection script's interpreter: ps or sh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_script_type: Option<ScriptType>,
}

/// `params` of an action.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionParamsSpec {
    /// The action's display name; chained child jobs refer to post-deploy actions by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub action_item: Option<String>,
    /// How long the action may run, in seconds (Qualys samples use 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout: Option<i32>,
    /// Install Software: where to download the installer.
    #[serde(
        default,
        rename = "downloadURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 2048))]
    pub download_url: Option<String>,
    /// Install Software: download protocol (0 in every Qualys sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub download_protocol: Option<i32>,
    /// Install Software: install method (0 in every Qualys sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub install_method: Option<i32>,
    /// Install Software: the installer's checksum (SHA-256 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub file_checksum: Option<String>,
    /// Change Registry Key: the key's full path, hive first, e.g. `HKEY_LOCAL_MACHINE\SOFTWARE\Vendor\App`. The API's spelling of this field is undocumented; this name is the operator's (see docs/crd.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub registry_key: Option<String>,
    /// Change Registry Key: Create, Update or Delete the value (or the key, when valueName is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_action: Option<RegistryAction>,
    /// Change Registry Key: the name of the value; absent for the key's default value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16383))]
    pub value_name: Option<String>,
    /// Change Registry Key: the value's type, REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ, REG_DWORD, REG_QWORD or REG_BINARY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<RegistryValueType>,
    /// Change Registry Key: the value's data as text (a number in decimal for REG_DWORD and REG_QWORD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub value_data: Option<String>,
    /// Uninstall Software: the software's name as Windows lists it under installed programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub software_name: Option<String>,
    /// Uninstall Software: the command that uninstalls it (absent: the software's own uninstaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub uninstall_command: Option<String>,
}

/// Where a script's plain text lives: exactly one of a ConfigMap key or a Secret key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new("has(self.configMapKeyRef) != has(self.secretKeyRef)")
    .message("set exactly one of configMapKeyRef and secretKeyRef"))]
#[serde(rename_all = "camelCase")]
pub struct ScriptSource {
    /// A key of a ConfigMap in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// A key of a Secret in this namespace (its content never appears in status, events or logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// Where a [`ScriptSource`] points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScriptStore {
    ConfigMap,
    Secret,
}

impl ScriptStore {
    pub fn kind(self) -> &'static str {
        match self {
            ScriptStore::ConfigMap => "ConfigMap",
            ScriptStore::Secret => "Secret",
        }
    }
}

impl ScriptSource {
    /// The object and key this source names (`None` only for a source the schema refuses).
    pub fn target(&self) -> Option<(ScriptStore, &KeyRef)> {
        match (&self.config_map_key_ref, &self.secret_key_ref) {
            (Some(r), _) => Some((ScriptStore::ConfigMap, r)),
            (None, Some(r)) => Some((ScriptStore::Secret, r)),
            (None, None) => None,
        }
    }
}

impl JobSpec {
    /// Every `scriptFrom` and `detectionScriptFrom` of the pre- and post-deploy actions.
    pub fn script_sources(&self) -> impl Iterator<Item = &ScriptSource> {
        self.pre_deploy_actions
            .iter()
            .flatten()
            .chain(self.post_deploy_actions.iter().flatten())
            .flat_map(|a| [a.script_from.as_ref(), a.detection_script_from.as_ref()])
            .flatten()
    }
}

/// A key of a ConfigMap or Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct KeyRef {
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// The key within it.
    #[schemars(length(min = 1, max = 253), regex(pattern = CONFIG_KEY_PATTERN))]
    pub key: String,
}

/// E-mail notifications, nested as in the API.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSpec {
    /// Which channels notify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_types: Option<NotificationTypesSpec>,
    /// Recipients and thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_configs: Option<NotificationConfigsSpec>,
    /// Which events notify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_events: Option<NotificationEventsSpec>,
}

/// `notification.notificationTypes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NotificationTypesSpec {
    /// Notify by e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<bool>,
}

/// `notification.notificationConfigs`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationConfigsSpec {
    /// Comma-separated e-mail addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub recipient_emails: Option<String>,
    /// Notify when this percentage of assets completed (1–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub completed_percentage: Option<i32>,
}

/// `notification.notificationEvents`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEventsSpec {
    /// Notify when the job starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_job_start: Option<bool>,
    /// Notify when the job completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_job_complete: Option<bool>,
}

/// Run this (child) job only when enough of the parent's post-deploy actions succeeded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.actionIds) != has(self.actionRefs)")
    .message("set exactly one of actionRefs (with linkedJobRef) and actionIds (with linkedJobId)"))]
#[serde(rename_all = "camelCase")]
pub struct ChainedJobRuleSpec {
    /// Always `postDeployAction` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<ChainedRuleField>,
    /// The parent's post-deploy actions, by their `params.actionItem`; resolved against the
    /// parent's live job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), extend("x-kubernetes-list-type" = "atomic"))]
    pub action_refs: Option<Vec<ActionRef>>,
    /// Raw Qualys action ids of the parent's post-deploy actions (only with linkedJobId).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), inner(regex(pattern = UUID_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub action_ids: Option<Vec<String>>,
    /// Success percentage (1–100) of those actions needed to run this job.
    #[schemars(range(min = 1, max = 100))]
    pub threshold: i32,
    /// Always `Post Actions were successfully executed` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ChainedRuleCondition>,
}

/// A parent's post-deploy action, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionRef {
    /// The `params.actionItem` of one of the parent's post-deploy actions.
    #[schemars(length(min = 1, max = 256))]
    pub action_item: String,
}
