//! What the gateway sends back: a stored job as GET renders it, and list summaries.
//!
//! `chainedJobRule` is stored but never echoed at the top level; it appears under
//! `linkedToJob[0].chainedJobRule`, built from the parent's current state at read time
//! (docs/simulator.md, "What the server does to a job").

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::state::{Store, link_of};
use crate::qualys::{Action, Audit, ChainedJobRule, Field, JobBody, LinkedJob, LooseInt, values};

/// A job as the API returns it. Unlinked jobs are served from the stored `Arc` unchanged.
pub enum Rendered {
    Shared(Arc<JobBody>),
    Owned(Box<JobBody>),
}

impl Rendered {
    pub fn body(&self) -> &JobBody {
        match self {
            Rendered::Shared(job) => job,
            Rendered::Owned(job) => job,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A JobBody holds only strings, numbers, booleans and JSON values: it always serialises.
        serde_json::to_vec(self.body()).unwrap_or_default()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self.body()).unwrap_or(Value::Null)
    }
}

/// Render a stored job against the rest of the store.
pub fn render(store: &Store, job: &Arc<JobBody>) -> Rendered {
    let link = link_of(job);
    if link.is_none() && job.chained_job_rule.is_absent() {
        return Rendered::Shared(job.clone());
    }
    let mut out = (**job).clone();
    out.chained_job_rule = Field::Absent;
    out.linked_to_job = match link {
        None => Field::Null,
        // A parent deleted behind the API's back (console) leaves an empty list.
        Some(pid) => Field::Value(
            store
                .get(pid)
                .map(|parent| {
                    vec![linked_job(
                        parent,
                        &job.chained_job_rule,
                        store.children_of(pid),
                    )]
                })
                .unwrap_or_default(),
        ),
    };
    Rendered::Owned(Box::new(out))
}

/// `linkedToJob[0]`: the parent's summary with the child's rules resolved against it.
fn linked_job(parent: &JobBody, rules: &Field<Vec<ChainedJobRule>>, refs: usize) -> LinkedJob {
    LinkedJob {
        customer_id: parent.customer_id.clone(),
        id: parent.id.clone(),
        name: parent.name.clone(),
        r#type: parent.r#type.clone(),
        status: parent.status.clone(),
        created_by: parent.created_by.clone(),
        linked_job_reference_count: Field::Value(LooseInt::from(refs as i64)),
        schedule: parent
            .schedule_type
            .as_ref()
            .map(|s| schedule_label(s).to_string()),
        previous_run: Field::Null,
        next_run: Field::Null,
        chained_job_rule: match rules {
            Field::Value(rules) => Field::Value(
                rules
                    .iter()
                    .map(|rule| resolved_rule(rule, parent))
                    .collect(),
            ),
            _ => Field::Null,
        },
        ..Default::default()
    }
}

/// The linked-job `schedule` label: the same as `scheduleType` except `On-Demand`.
fn schedule_label(schedule_type: &str) -> &str {
    if schedule_type == values::ON_DEMAND {
        "On-Demand"
    } else {
        schedule_type
    }
}

fn resolved_rule(rule: &ChainedJobRule, parent: &JobBody) -> ChainedJobRule {
    let posts: &[Action] = parent
        .post_deploy_actions
        .get()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let details = rule
        .action_ids
        .get()
        .into_iter()
        .flatten()
        .filter_map(|id| {
            posts
                .iter()
                .find(|a| a.action_id.get() == Some(id))
                .cloned()
        })
        .collect();
    ChainedJobRule {
        id: Field::Null,
        field: rule.field.clone(),
        threshold: rule
            .threshold
            .as_ref()
            .map(|t| t.to_number().unwrap_or_else(|| t.clone())),
        action_ids: rule.action_ids.clone(),
        condition: rule.condition.clone(),
        action_details: Field::Value(details),
        extra: rule.extra.clone(),
    }
}

/// An item of `GET /pm/v1/deploymentjobs/summary`, borrowed from the stored job (the list
/// serialises only the page it returns).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary<'a> {
    id: &'a Field<String>,
    name: &'a Field<String>,
    customer_id: &'a Field<String>,
    platform: &'a Field<String>,
    r#type: &'a Field<String>,
    status: &'a Field<String>,
    schedule_type: &'a Field<String>,
    start_date_time: &'a Field<String>,
    timezone: &'a Field<String>,
    timezone_type: &'a Field<String>,
    is_recurring: &'a Field<bool>,
    recurring_week_days: &'a Field<String>,
    day_of_month: &'a Field<LooseInt>,
    recurring_day_of_month: &'a Field<LooseInt>,
    recurring_week_day_of_month: &'a Field<LooseInt>,
    recurring_last_day_of_month: &'a Field<bool>,
    monthly_recurring_type: &'a Field<LooseInt>,
    patch_tuesday_plus_x_days: &'a Field<LooseInt>,
    next_schedule_date_time: Option<i64>,
    last_schedule_date_time: Option<i64>,
    created: &'a Field<Audit>,
    updated: &'a Field<Audit>,
    co_author_user_ids: &'a Field<Vec<String>>,
    tags: Option<Vec<TagRef<'a>>>,
    exclusion_tags: &'a Field<Vec<String>>,
    match_all_tags: &'a Field<Vec<String>>,
    exclusion_asset_ids: &'a Field<Vec<String>>,
    filter_type: &'a Field<String>,
    exclusion_filter_type: &'a Field<String>,
    #[serde(rename = "dynamicQQLType")]
    dynamic_qql_type: &'a Field<LooseInt>,
    #[serde(rename = "isDynamicPatchesQQL")]
    is_dynamic_patches_qql: &'a Field<bool>,
    #[serde(rename = "dynamicPatchesQQL")]
    dynamic_patches_qql: &'a Field<String>,
    #[serde(rename = "additionalQQLS")]
    additional_qqls: Option<()>,
    disabled_patches: &'a Field<Vec<String>>,
    patch_count: &'a Field<LooseInt>,
    asset_count: &'a Field<LooseInt>,
    tagged_asset_count: &'a Field<LooseInt>,
    applicable_asset_count: &'a Field<LooseInt>,
    total_asset_count: &'a Field<LooseInt>,
    asset_result_received_count: &'a Field<LooseInt>,
    completion_percent: &'a Field<Value>,
    trigger_status: &'a Field<Value>,
    job_source: &'a Field<LooseInt>,
    read_only: &'a Field<bool>,
    category: &'a Field<LooseInt>,
    sub_category: &'a Field<String>,
    linked_job_id: &'a Field<String>,
    linked_job_reference_count: usize,
    custom_patch_url_configured: bool,
    mitigation_action_count: u32,
    is_priority_job: bool,
    deleted: bool,
    schema_version: &'a Field<String>,
    is_vuln_context: &'a Field<bool>,
    is_asset_imported: &'a Field<bool>,
    remediation_qids: &'a Field<Vec<Value>>,
}

#[derive(Serialize)]
struct TagRef<'a> {
    id: &'a str,
}

impl<'a> Summary<'a> {
    /// The summary of `job`, which `refs` other jobs link to.
    pub fn of(job: &'a JobBody, refs: usize) -> Self {
        // `updated` falls back to the creation record while the job was never updated, so a
        // poller comparing `updated.date` sees every change.
        let ever_updated = job.updated_by.get().is_some_and(|u| !u.date.is_unset());
        Summary {
            id: &job.id,
            name: &job.name,
            customer_id: &job.customer_id,
            platform: &job.platform,
            r#type: &job.r#type,
            status: &job.status,
            schedule_type: &job.schedule_type,
            start_date_time: &job.start_date_time,
            timezone: &job.timezone,
            timezone_type: &job.timezone_type,
            is_recurring: &job.recurring,
            recurring_week_days: &job.recurring_week_days,
            day_of_month: &job.day_of_month,
            recurring_day_of_month: &job.recurring_day_of_month,
            recurring_week_day_of_month: &job.recurring_week_day_of_month,
            recurring_last_day_of_month: &job.recurring_last_day_of_month,
            monthly_recurring_type: &job.monthly_recurring_type,
            patch_tuesday_plus_x_days: &job.patch_tuesday_plus_x_days,
            next_schedule_date_time: None,
            last_schedule_date_time: None,
            created: &job.created_by,
            updated: if ever_updated {
                &job.updated_by
            } else {
                &job.created_by
            },
            co_author_user_ids: &job.co_author_user_ids,
            tags: job
                .asset_tag_ids
                .get()
                .map(|ids| ids.iter().map(|id| TagRef { id }).collect()),
            exclusion_tags: &job.exclusion_tag_ids,
            match_all_tags: &job.match_all_tag_ids,
            exclusion_asset_ids: &job.exclusion_asset_ids,
            filter_type: &job.filter_type,
            exclusion_filter_type: &job.exclusion_filter_type,
            dynamic_qql_type: &job.dynamic_qql_type,
            is_dynamic_patches_qql: &job.is_dynamic_patches_qql,
            dynamic_patches_qql: &job.dynamic_patches_qql,
            additional_qqls: None,
            disabled_patches: &job.disabled_patches,
            patch_count: &job.patch_count,
            asset_count: &job.asset_count,
            tagged_asset_count: &job.tagged_asset_count,
            applicable_asset_count: &job.applicable_asset_count,
            total_asset_count: &job.total_asset_count,
            asset_result_received_count: &job.asset_result_received_count,
            completion_percent: &job.completion_percent,
            trigger_status: &job.job_trigger_status,
            job_source: &job.job_source,
            read_only: &job.read_only,
            category: &job.job_category,
            sub_category: &job.sub_category,
            linked_job_id: &job.linked_job_id,
            linked_job_reference_count: refs,
            custom_patch_url_configured: job
                .custom_patch_url_id
                .get()
                .is_some_and(|v| !matches!(v, LooseInt::Text(s) if s.is_empty())),
            mitigation_action_count: 0,
            is_priority_job: false,
            deleted: super::state::is_deleted(job),
            schema_version: &job.schema_version,
            is_vuln_context: &job.is_vuln_context,
            is_asset_imported: &job.is_asset_imported,
            remediation_qids: &job.remediation_qids,
        }
    }
}
