//! The probe's report: one versioned JSON document, free of secrets.
//!
//! It holds what the gateway did (statuses, sizes, header names, body shapes as key paths, the
//! token's lifetime) and never a value that identifies or authenticates: no token, no password,
//! no job or asset name (unless `--include-names`), no error message text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `apiVersion` of the report format.
pub const API_VERSION: &str = "qpm.probe/v1";
pub const KIND: &str = "ProbeReport";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: String,
    pub kind: String,
    /// `qpm-operator <version>`.
    pub tool: String,
    /// RFC 3339, when the probe started.
    pub started_at: String,
    /// Scheme and host of the gateway (no path, no user info).
    pub gateway: String,
    /// Whether `--allow-writes` was given.
    pub writes_allowed: bool,
    /// API calls made, `/auth` included.
    pub calls: u32,
    pub token: TokenFinding,
    pub paging: PagingFinding,
    pub rate_limit: RateLimitFinding,
    /// Every response header name seen (lower case, sorted).
    pub header_names: Vec<String>,
    pub errors: ErrorFindings,
    /// Present with `--allow-writes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<WriteFindings>,
    /// Milliseconds per call, in call order.
    pub timings: Vec<Timing>,
    /// Names of the jobs seen, only with `--include-names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Problems that stopped part of the probe (messages without response bodies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenFinding {
    /// Status of `POST /auth`.
    pub status: u16,
    /// The media type of the answer (`text/plain` per the docs).
    pub content_type: Option<String>,
    /// `exp - iat` from the JWT payload (read, not verified); `None` when it is not a JWT.
    pub lifetime_secs: Option<i64>,
    /// The claim names of the payload (never their values).
    pub claim_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PagingFinding {
    /// The platform the page-size experiments used (the one with more jobs).
    pub platform: String,
    /// Jobs on the first page at pageSize 10,000, per platform.
    pub first_page_jobs: BTreeMap<String, usize>,
    /// What each requested pageSize really returned on page 0.
    pub page_sizes: Vec<PageSize>,
    /// Jobs on page 1 at pageSize 10,000; more than 0 means the gateway returns fewer than asked.
    pub second_page_jobs: Option<usize>,
    /// The page size the gateway caps at, when a cap was observed.
    pub max_page_size: Option<usize>,
    /// Pages 0–2 at pageSize 10 give the same ids in the same order as one large page;
    /// `None` when there were too few jobs to tell.
    pub stable_across_pages: Option<bool>,
    /// The list orders the large page is consistent with (`created`, `updated`, `name`, `id`).
    pub order: Vec<String>,
    /// Summaries with `deleted: true` on the large page.
    pub deleted_listed: usize,
    /// How many keys a job document has (GET of the first listed job), when one was listed.
    pub job_document_keys: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageSize {
    pub requested: usize,
    pub status: u16,
    /// Items returned (`None` when the answer was not an array).
    pub returned: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitFinding {
    /// Whether any answer carried an `X-RateLimit-*` header.
    pub headers_seen: bool,
    pub limit: Option<u64>,
    pub window_sec: Option<u64>,
    /// The lowest `X-RateLimit-Remaining` seen.
    pub lowest_remaining: Option<u64>,
    pub concurrency_limit: Option<u64>,
    /// Whether any call was answered 429.
    pub throttled: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFindings {
    /// `GET /pm/v1/deploymentjob/<random uuid>`.
    pub unknown_job: Answer,
    /// A list page past the 10,000-record cap (pageSize 1,000, at the page that starts at the
    /// 10,000th record in the real page size).
    pub beyond_cap: Answer,
}

/// The shape of one answer: its status, the key paths of a JSON object body (or `array`),
/// and an `_error.errorCode` when there is one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub status: u16,
    /// `object`, `array`, `text`, `empty`.
    pub body: String,
    /// Dotted key paths of an object body, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// `_error.errorCode`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteFindings {
    pub create: Answer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<Answer>,
    /// PATCH of the description (the GET's body sent back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Answer>,
    /// PATCH with `"timeout": -1` and no `timeoutUnit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_unset_timeout: Option<Answer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<Answer>,
    /// The per-item `status` of the delete (`success`, `failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_item_status: Option<String>,
    /// GET of the job after the delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_after_delete: Option<Answer>,
    /// Whether that GET showed a `deletedBy` with a date.
    pub deleted_by_after_delete: bool,
    /// Whether the list still showed the job after the delete, and with `deleted: true`.
    pub listed_after_delete: Option<bool>,
    pub listed_deleted_flag: Option<bool>,
    /// `DELETE {"ids": [<random uuid>]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_unknown: Option<Answer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_unknown_item_status: Option<String>,
    /// Whether the throwaway job is gone (or marked deleted) at the end.
    pub cleaned_up: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    /// `METHOD /route/template`.
    pub route: String,
    pub status: u16,
    pub ms: u64,
}

impl Report {
    /// What the gateway did, without what differs from run to run (timings, dates, the
    /// remaining budget, the call count): two probes of gateways that behave alike give equal
    /// findings.
    pub fn findings(&self) -> Value {
        let mut rate = self.rate_limit.clone();
        rate.lowest_remaining = None;
        serde_json::json!({
            "token": self.token,
            "paging": self.paging,
            "rateLimit": rate,
            "headerNames": self.header_names,
            "errors": self.errors,
            "writes": self.writes,
        })
    }
}

/// The dotted key paths of a JSON object (`["_error", "_error.errorCode", ...]`), sorted.
pub fn key_paths(value: &Value) -> Vec<String> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                walk(&path, v, out);
            }
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_paths_name_nested_keys_and_never_values() {
        let v = json!({"_error": {"errorCode": "404", "message": "secret-name not found"}});
        assert_eq!(
            key_paths(&v),
            vec!["_error", "_error.errorCode", "_error.message"]
        );
        assert!(key_paths(&json!([1, 2])).is_empty());
    }
}
