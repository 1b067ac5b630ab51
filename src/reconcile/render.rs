//! `render`: a DeploymentJob spec plus its resolved references → the desired job body in wire
//! form. Only fields the spec sets are present (absent = not managed); scripts are carried as
//! the base64 the API takes, and their digests are returned beside the body.

use super::digest::{ScriptKey, script_digest};
use crate::api::{
    ActionParamsSpec, ActionSpec, ChainedRuleCondition, ChainedRuleField, DeferrablePromptSpec,
    JobSpec, ScriptSource,
};
use crate::qualys::{self, Field, JobBody, LooseInt, schedule, values};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Why a spec cannot be turned into a body. Each names the field, in spec terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A `scriptFrom` names a ConfigMap/Secret key that cannot be read.
    #[error("{path}: {message}")]
    ScriptUnavailable { path: String, message: String },
    /// `script`/`detectionScript` is not valid base64.
    #[error("{path}: not valid base64 (use scriptFrom for plain text)")]
    InvalidBase64 { path: String },
    /// The linkedJobRef parent has no job id yet.
    #[error("spec.job.linkedJobRef: DeploymentJob {name:?} has no Qualys job id yet")]
    WaitingForLinkedJob { name: String },
    /// An `actionRefs` entry names no post-deploy action of the parent.
    #[error(
        "{path}: the parent job has no post-deploy action with actionItem {action_item:?} (it has: {available})"
    )]
    UnknownActionRef {
        path: String,
        action_item: String,
        available: String,
    },
    /// The scripts of one job would make a body larger than a gateway accepts.
    #[error(
        "{path}: the scripts of this job come to {total} bytes with this one; one job's scripts may total at most {limit} bytes (1 MiB), as larger bodies are refused by the gateway"
    )]
    ScriptsTooLarge {
        path: String,
        total: usize,
        limit: usize,
    },
    /// `startDateTime` has the right shape but is not a real time (e.g. February 30).
    #[error("spec.job.startDateTime: {value:?} is not a valid `yyyy-M-dd hh:mm:ss AM|PM` time")]
    InvalidStartDateTime { value: String },
}

/// The most script content (decoded bytes, all actions of a job together) a job may carry.
/// Scripts travel base64-encoded (4/3 of their size) inside the JSON body, and the gateway
/// refuses bodies beyond its limit (the simulator's is 2 MB; Qualys publishes none): 1 MiB of
/// scripts keeps the whole body well under it.
pub const MAX_SCRIPT_BYTES: usize = 1024 * 1024;

/// Reads the plain text behind a `scriptFrom`. The CLI reads ConfigMaps/Secrets from its input
/// files, the controller from the cluster.
pub trait ScriptResolver: Sync {
    /// The bytes, or a message saying what is missing (never the content of anything).
    fn resolve(&self, source: &ScriptSource) -> Result<Vec<u8>, String>;
}

/// A resolver for specs that use no `scriptFrom`.
pub struct NoScripts;

impl ScriptResolver for NoScripts {
    fn resolve(&self, source: &ScriptSource) -> Result<Vec<u8>, String> {
        let (store, r) = source
            .target()
            .ok_or("names neither a ConfigMap nor a Secret")?;
        Err(format!(
            "{} {:?} key {:?} is not available",
            store.kind(),
            r.name,
            r.key
        ))
    }
}

/// What `render` needs beyond the spec.
pub struct RenderInputs<'a> {
    /// The parent's job id, when the spec uses `linkedJobRef` and the parent has one.
    pub linked_job_id: Option<&'a str>,
    /// The parent's live post-deploy actions as (actionItem, actionId), for `actionRefs`.
    pub parent_post_actions: &'a [(String, String)],
    pub scripts: &'a dyn ScriptResolver,
}

impl Default for RenderInputs<'_> {
    fn default() -> Self {
        RenderInputs {
            linked_job_id: None,
            parent_post_actions: &[],
            scripts: &NoScripts,
        }
    }
}

/// The desired body and the digests of its scripts.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub body: JobBody,
    /// `sha256:` digest of each managed script's decoded bytes, by key (`pre[0].script`).
    pub scripts: BTreeMap<String, String>,
}

/// Render `spec` into the managed part of a job body.
pub fn render(spec: &JobSpec, inputs: &RenderInputs<'_>) -> Result<Rendered, RenderError> {
    let mut scripts = BTreeMap::new();
    let mut script_bytes = 0;
    let mut body = JobBody {
        name: spec.name.clone().into(),
        r#type: opt(spec.job_type.map(|t| t.as_str().to_string())),
        platform: spec.platform.as_str().to_string().into(),
        status: opt(spec.status.map(|s| s.as_str().to_string())),
        asset_ids: opt(spec.asset_ids.clone()),
        asset_tag_ids: opt(spec.asset_tag_ids.clone()),
        match_all_tag_ids: opt(spec.match_all_tag_ids.clone()),
        exclusion_tag_ids: opt(spec.exclusion_tag_ids.clone()),
        exclusion_asset_ids: opt(spec.exclusion_asset_ids.clone()),
        co_author_user_ids: opt(spec.co_author_user_ids.clone()),
        approved_patches: opt(spec.approved_patches.clone()),
        schedule_type: spec.schedule_type.as_str().to_string().into(),
        start_date_time: opt(spec.start_date_time.clone()),
        recurring: opt(spec.recurring),
        recurring_week_days: opt(spec.recurring_week_days.clone()),
        day_of_month: int(spec.day_of_month),
        recurring_day_of_month: int(spec.recurring_day_of_month),
        recurring_week_day_of_month: int(spec.recurring_week_day_of_month),
        recurring_last_day_of_month: opt(spec.recurring_last_day_of_month),
        monthly_recurring_type: int(spec.monthly_recurring_type),
        patch_tuesday_plus_x_days: int(spec.patch_tuesday_plus_x_days),
        timezone_type: opt(spec.timezone_type.map(|t| t.as_str().to_string())),
        timezone: opt(spec.timezone.clone()),
        timeout: int(spec.timeout),
        timeout_unit: opt(spec.timeout_unit.map(|u| u.as_str().to_string())),
        download_randomize_time: int(spec.download_randomize_time),
        download_randomize_time_unit: opt(spec
            .download_randomize_time_unit
            .map(|u| u.as_str().to_string())),
        pre_deployment: opt(spec.pre_deployment.as_deref().map(deferrable)),
        during_deployment: opt(spec.during_deployment.as_ref().map(|p| qualys::Prompt {
            user_message: opt(p.user_message.clone()),
            description: opt(p.description.clone()),
            ..Default::default()
        })),
        post_deployment: opt(spec
            .post_deployment
            .as_ref()
            .map(|p| qualys::PostDeployment {
                suppress_reboots: opt(p.suppress_reboots),
                reboot_honor_on_user_login: opt(p.reboot_honor_on_user_login),
                reboot_option: opt(p.reboot_option.as_ref().map(deferrable)),
                reboot_countdown: opt(p.reboot_countdown.as_ref().map(|c| {
                    qualys::RebootCountdown {
                        interval: int(c.interval),
                        interval_unit: opt(c.interval_unit.map(|u| u.as_str().to_string())),
                        user_message: opt(c.user_message.clone()),
                        description: opt(c.description.clone()),
                        ..Default::default()
                    }
                })),
                on_complete: opt(p.on_complete.as_ref().map(|c| qualys::OnComplete {
                    user_message: opt(c.user_message.clone()),
                    description: opt(c.description.clone()),
                    always_show_completed_prompt: opt(c.always_show_completed_prompt),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        description: opt(spec.description.clone()),
        opportunistic_downloads: opt(spec.opportunistic_downloads),
        filter_type: opt(spec.filter_type.map(|f| f.as_str().to_string())),
        exclusion_filter_type: opt(spec.exclusion_filter_type.map(|f| f.as_str().to_string())),
        minimize_window: opt(spec.minimize_window),
        dynamic_patches_qql: opt(spec.dynamic_patches_qql.clone()),
        is_dynamic_patches_qql: opt(spec.is_dynamic_patches_qql),
        dynamic_qql_type: int(spec.dynamic_qql_type),
        additional_dynamic_patches_qql: opt(spec.additional_dynamic_patches_qql.clone()),
        additional_dynamic_qql_type: int(spec.additional_dynamic_qql_type),
        continue_on_patch_failure: opt(spec.continue_on_patch_failure),
        notification: opt(spec.notification.as_ref().map(|n| qualys::Notification {
            notification_types: opt(n.notification_types.as_ref().map(|t| {
                qualys::NotificationTypes {
                    email: opt(t.email),
                    ..Default::default()
                }
            })),
            notification_configs: opt(n.notification_configs.as_ref().map(|c| {
                qualys::NotificationConfigs {
                    recipient_emails: opt(c.recipient_emails.clone()),
                    completed_percentage: int(c.completed_percentage),
                    ..Default::default()
                }
            })),
            notification_events: opt(n.notification_events.as_ref().map(|e| {
                qualys::NotificationEvents {
                    on_job_start: opt(e.on_job_start),
                    on_job_complete: opt(e.on_job_complete),
                    ..Default::default()
                }
            })),
            ..Default::default()
        })),
        custom_patch_url_id: opt(spec.custom_patch_url_id.as_ref().map(|v| match v {
            IntOrString::Int(i) => LooseInt::from(i64::from(*i)),
            IntOrString::String(s) => LooseInt::Text(s.clone()),
        })),
        is_vuln_context: opt(spec.is_vuln_context),
        is_asset_imported: opt(spec.is_asset_imported),
        ..Default::default()
    };

    if let Some(start) = &spec.start_date_time
        && schedule::parse_start(start).is_none()
    {
        return Err(RenderError::InvalidStartDateTime {
            value: start.clone(),
        });
    }

    body.pre_deploy_actions = match &spec.pre_deploy_actions {
        Some(list) => Field::Value(actions(
            list,
            Phase::Pre,
            inputs,
            &mut scripts,
            &mut script_bytes,
        )?),
        None => Field::Absent,
    };
    body.post_deploy_actions = match &spec.post_deploy_actions {
        Some(list) => Field::Value(actions(
            list,
            Phase::Post,
            inputs,
            &mut scripts,
            &mut script_bytes,
        )?),
        None => Field::Absent,
    };

    body.linked_job_id = match (&spec.linked_job_id, &spec.linked_job_ref) {
        (Some(id), _) => Field::Value(id.clone()),
        (None, Some(parent)) => match inputs.linked_job_id {
            Some(id) => Field::Value(id.to_string()),
            None => {
                return Err(RenderError::WaitingForLinkedJob {
                    name: parent.name.clone(),
                });
            }
        },
        (None, None) => Field::Absent,
    };

    if let Some(rules) = &spec.chained_job_rule {
        let mut out = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let action_ids = match (&rule.action_ids, &rule.action_refs) {
                (Some(ids), _) => ids.clone(),
                (None, Some(refs)) => refs
                    .iter()
                    .enumerate()
                    .map(|(j, r)| {
                        resolve_action_ref(i, j, &r.action_item, inputs.parent_post_actions)
                    })
                    .collect::<Result<_, _>>()?,
                (None, None) => Vec::new(),
            };
            out.push(qualys::ChainedJobRule {
                field: rule
                    .field
                    .unwrap_or(ChainedRuleField::PostDeployAction)
                    .as_str()
                    .to_string()
                    .into(),
                action_ids: action_ids.into(),
                threshold: LooseInt::from(i64::from(rule.threshold)).into(),
                condition: rule
                    .condition
                    .unwrap_or(ChainedRuleCondition::PostActionsSucceeded)
                    .as_str()
                    .to_string()
                    .into(),
                ..Default::default()
            });
        }
        body.chained_job_rule = Field::Value(out);
    }

    Ok(Rendered { body, scripts })
}

#[derive(Clone, Copy)]
enum Phase {
    Pre,
    Post,
}

impl Phase {
    fn list_name(self) -> &'static str {
        match self {
            Phase::Pre => "preDeployActions",
            Phase::Post => "postDeployActions",
        }
    }
}

fn actions(
    list: &[ActionSpec],
    phase: Phase,
    inputs: &RenderInputs<'_>,
    digests: &mut BTreeMap<String, String>,
    script_bytes: &mut usize,
) -> Result<Vec<qualys::Action>, RenderError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let path = |field: &str| format!("spec.job.{}[{i}].{field}", phase.list_name());
        let key = |kind| match phase {
            Phase::Pre => ScriptKey::pre(i, kind),
            Phase::Post => ScriptKey::post(i, kind),
        };
        let main_script = script(
            &a.script,
            &a.script_from,
            &path("script"),
            inputs.scripts,
            script_bytes,
        )?;
        let detection = script(
            &a.detection_script,
            &a.detection_script_from,
            &path("detectionScript"),
            inputs.scripts,
            script_bytes,
        )?;
        if let Some((_, digest)) = &main_script {
            digests.insert(key(qualys::ScriptKind::Script).to_string(), digest.clone());
        }
        if let Some((_, digest)) = &detection {
            digests.insert(
                key(qualys::ScriptKind::DetectionScript).to_string(),
                digest.clone(),
            );
        }
        out.push(qualys::Action {
            action: a.action.as_str().to_string().into(),
            action_type: match phase {
                Phase::Pre => values::PREDEPLOY,
                Phase::Post => values::POSTDEPLOY,
            }
            .to_string()
            .into(),
            params: opt(a.params.as_ref().map(|p| qualys::ActionParams {
                action_item: opt(p.action_item.clone()),
                download_url: opt(p.download_url.clone()),
                download_protocol: int(p.download_protocol),
                install_method: int(p.install_method),
                file_checksum: opt(p.file_checksum.clone()),
                timeout: int(p.timeout),
                ..registry_and_uninstall(p)
            })),
            script: opt(main_script.map(|(b64, _)| b64)),
            script_type: opt(a.script_type.map(|t| t.as_str().to_string())),
            detection_script: opt(detection.map(|(b64, _)| b64)),
            detection_script_type: opt(a.detection_script_type.map(|t| t.as_str().to_string())),
            default_script_type: opt(a.default_script_type.clone()),
            ..Default::default()
        });
    }
    Ok(out)
}

/// The `params` members of Change Registry Key and Uninstall Software actions.
fn registry_and_uninstall(p: &ActionParamsSpec) -> qualys::ActionParams {
    qualys::ActionParams {
        registry_key: opt(p.registry_key.clone()),
        registry_action: opt(p.registry_action.map(|a| a.as_str().to_string())),
        value_name: opt(p.value_name.clone()),
        value_type: opt(p.value_type.map(|t| t.as_str().to_string())),
        value_data: opt(p.value_data.clone()),
        software_name: opt(p.software_name.clone()),
        uninstall_command: opt(p.uninstall_command.clone()),
        ..Default::default()
    }
}

/// The base64 to send and the digest of the decoded bytes, for a managed script; `used` adds
/// up the job's script bytes against [`MAX_SCRIPT_BYTES`].
fn script(
    inline: &Option<String>,
    from: &Option<ScriptSource>,
    path: &str,
    resolver: &dyn ScriptResolver,
    used: &mut usize,
) -> Result<Option<(String, String)>, RenderError> {
    let mut count = |bytes: &[u8], path: String| {
        *used = used.saturating_add(bytes.len());
        if *used > MAX_SCRIPT_BYTES {
            return Err(RenderError::ScriptsTooLarge {
                path,
                total: *used,
                limit: MAX_SCRIPT_BYTES,
            });
        }
        Ok(())
    };
    match (inline, from) {
        (Some(b64), _) => {
            // A blank script is what the API's own MakeCache pre-action sends.
            let compact: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes =
                BASE64
                    .decode(compact.as_bytes())
                    .map_err(|_| RenderError::InvalidBase64 {
                        path: path.to_string(),
                    })?;
            count(&bytes, path.to_string())?;
            Ok(Some((compact, script_digest(&bytes))))
        }
        (None, Some(source)) => {
            let bytes =
                resolver
                    .resolve(source)
                    .map_err(|message| RenderError::ScriptUnavailable {
                        path: format!("{path}From"),
                        message,
                    })?;
            count(&bytes, format!("{path}From"))?;
            Ok(Some((BASE64.encode(&bytes), script_digest(&bytes))))
        }
        (None, None) => Ok(None),
    }
}

fn resolve_action_ref(
    rule: usize,
    index: usize,
    action_item: &str,
    parent: &[(String, String)],
) -> Result<String, RenderError> {
    parent
        .iter()
        .find(|(item, _)| item == action_item)
        .map(|(_, id)| id.clone())
        .ok_or_else(|| RenderError::UnknownActionRef {
            path: format!("spec.job.chainedJobRule[{rule}].actionRefs[{index}]"),
            action_item: action_item.to_string(),
            available: if parent.is_empty() {
                "none".to_string()
            } else {
                parent
                    .iter()
                    .map(|(item, _)| format!("{item:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

fn deferrable(p: &DeferrablePromptSpec) -> qualys::DeferrablePrompt {
    qualys::DeferrablePrompt {
        user_message: opt(p.user_message.clone()),
        description: opt(p.description.clone()),
        deferment: opt(p.deferment.as_ref().map(|d| qualys::Deferment {
            count: int(d.count),
            interval: int(d.interval),
            interval_unit: opt(d.interval_unit.map(|u| u.as_str().to_string())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A spec `Option` is "managed or not": `None` is absent, never `null`.
fn opt<T>(value: Option<T>) -> Field<T> {
    match value {
        Some(v) => Field::Value(v),
        None => Field::Absent,
    }
}

fn int(value: Option<i32>) -> Field<LooseInt> {
    opt(value.map(|v| LooseInt::from(i64::from(v))))
}
