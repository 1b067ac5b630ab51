//! `qpm-operator sim --profile REPORT.json`: a simulator that behaves as a probe report says.
//!
//! Each finding maps to one setting; what a probe cannot observe (job scope, refused edits of
//! enabled one-shot jobs — the probe never enables anything) keeps the value it had.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::{DeleteMode, DeleteUnknown, ListOrder, RateLimit, RateLimitHeaders, SimConfig};
use crate::probe::report::{API_VERSION, Report};

/// The error body shape the simulator uses unless told otherwise.
pub const QUALYS_ERROR_KEYS: [&str; 3] = ["_error", "_error.errorCode", "_error.message"];

/// The gateway documentation's example limit, assumed when a gateway sends no headers.
pub const DOCUMENTED_RATE_LIMIT: RateLimit = RateLimit {
    limit: 300,
    window: Duration::from_secs(3600),
};

/// Read a probe report, refusing other formats and versions.
pub fn read_report(path: &Path) -> anyhow::Result<Report> {
    let bytes = crate::files::read_regular(path, 64 << 20)
        .map_err(|e| anyhow::anyhow!("--profile {}: {e}", path.display()))?;
    let report: Report = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "--profile {}: not a qpm-operator probe report",
            path.display()
        )
    })?;
    if report.api_version != API_VERSION {
        anyhow::bail!(
            "--profile {}: apiVersion {:?}; this simulator reads {API_VERSION}",
            path.display(),
            report.api_version
        );
    }
    Ok(report)
}

/// `base` with every setting the report has evidence for replaced by what the report saw.
pub fn config_from_report(report: &Report, base: SimConfig) -> SimConfig {
    let mut config = base;
    if let Some(secs) = report.token.lifetime_secs.filter(|s| *s > 0) {
        config.token_ttl = Duration::from_secs(secs.unsigned_abs());
    }
    config.max_page_size = report.paging.max_page_size;
    config.list_order = list_order(&report.paging.order);

    let rate = &report.rate_limit;
    if rate.headers_seen {
        config.rate_limit_headers = RateLimitHeaders::Standard;
        if let (Some(limit), Some(window)) = (rate.limit, rate.window_sec)
            && limit > 0
            && window > 0
        {
            config.rate_limit = Some(RateLimit {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                window: Duration::from_secs(window),
            });
        }
    } else {
        config.rate_limit_headers = RateLimitHeaders::None;
        // A gateway without headers still has a limit; the documented example is the best guess.
        config.rate_limit = Some(config.rate_limit.unwrap_or(DOCUMENTED_RATE_LIMIT));
    }

    let unknown = &report.errors.unknown_job;
    config.error_keys =
        (unknown.body == "object" && !unknown.keys.is_empty() && unknown.keys != QUALYS_ERROR_KEYS)
            .then(|| unknown.keys.clone());

    if let Some(w) = &report.writes {
        let soft = w.deleted_by_after_delete || w.listed_deleted_flag == Some(true);
        config.delete_mode = if soft {
            DeleteMode::Soft
        } else {
            DeleteMode::Hard
        };
        if let Some(answer) = &w.delete_unknown {
            config.delete_unknown = if answer.status == 404 {
                DeleteUnknown::NotFound
            } else {
                DeleteUnknown::Failure
            };
        }
        if let Some(answer) = &w.update_unset_timeout {
            config.accept_unset_timeout = (200..300).contains(&answer.status);
        }
    }
    config
}

/// The first order the list was consistent with, preferring creation order (the simulator's
/// default) when the evidence cannot tell.
fn list_order(seen: &[String]) -> ListOrder {
    [
        ("created", ListOrder::Created),
        ("updated", ListOrder::Updated),
        ("name", ListOrder::Name),
        ("id", ListOrder::Id),
    ]
    .into_iter()
    .find(|(name, _)| seen.iter().any(|s| s == name))
    .map_or(ListOrder::Created, |(_, order)| order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::report::{Answer, WriteFindings};

    #[test]
    fn findings_map_to_settings() {
        let mut report = Report {
            api_version: API_VERSION.into(),
            ..Default::default()
        };
        report.token.lifetime_secs = Some(900);
        report.paging.max_page_size = Some(50);
        report.paging.order = vec!["name".into(), "id".into()];
        report.errors.unknown_job = Answer {
            status: 404,
            body: "object".into(),
            keys: vec!["error".into()],
            error_code: None,
        };
        report.writes = Some(WriteFindings {
            listed_deleted_flag: Some(true),
            delete_unknown: Some(Answer {
                status: 404,
                ..Default::default()
            }),
            update_unset_timeout: Some(Answer {
                status: 400,
                ..Default::default()
            }),
            ..Default::default()
        });
        let c = config_from_report(&report, SimConfig::default());
        assert_eq!(c.token_ttl, Duration::from_secs(900));
        assert_eq!(c.max_page_size, Some(50));
        assert_eq!(c.list_order, ListOrder::Name);
        assert_eq!(c.rate_limit_headers, RateLimitHeaders::None);
        assert_eq!(c.rate_limit, Some(DOCUMENTED_RATE_LIMIT));
        assert_eq!(c.error_keys, Some(vec!["error".to_string()]));
        assert_eq!(c.delete_mode, DeleteMode::Soft);
        assert_eq!(c.delete_unknown, DeleteUnknown::NotFound);
        assert!(!c.accept_unset_timeout);

        report.rate_limit.headers_seen = true;
        report.rate_limit.limit = Some(20);
        report.rate_limit.window_sec = Some(30);
        report.errors.unknown_job.keys = QUALYS_ERROR_KEYS.map(String::from).to_vec();
        let c = config_from_report(&report, SimConfig::default());
        assert_eq!(c.rate_limit_headers, RateLimitHeaders::Standard);
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                limit: 20,
                window: Duration::from_secs(30)
            })
        );
        assert_eq!(c.error_keys, None);
    }
}
