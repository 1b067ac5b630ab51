//! `--stats`: API calls by endpoint, counted by the client's [`Observer`], so a user (or the
//! 1,000-job harness) sees what a run cost against the gateway's quota.

use crate::qualys::{Endpoint, Observer};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Calls by endpoint and status (`None`: no complete answer). Shared by every client of a run.
#[derive(Debug, Default)]
pub struct Stats {
    calls: Mutex<BTreeMap<(usize, Option<u16>), u64>>,
}

fn index(endpoint: Endpoint) -> usize {
    Endpoint::ALL
        .iter()
        .position(|e| *e == endpoint)
        .unwrap_or(usize::MAX)
}

impl Observer for Stats {
    fn on_response(&self, endpoint: Endpoint, status: Option<u16>, _elapsed: Duration) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((index(endpoint), status)).or_default() += 1;
        }
    }
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls to `endpoint`, whatever their answer.
    pub fn count(&self, endpoint: Endpoint) -> u64 {
        let i = index(endpoint);
        self.calls
            .lock()
            .map(|c| c.iter().filter(|((e, _), _)| *e == i).map(|(_, n)| n).sum())
            .unwrap_or(0)
    }

    /// Every call.
    pub fn total(&self) -> u64 {
        self.calls.lock().map(|c| c.values().sum()).unwrap_or(0)
    }

    /// Calls that change something in Qualys: create, update, delete, status.
    pub fn writes(&self) -> u64 {
        [
            Endpoint::Create,
            Endpoint::Update,
            Endpoint::Delete,
            Endpoint::SetStatus,
        ]
        .into_iter()
        .map(|e| self.count(e))
        .sum()
    }

    /// The report `--stats` prints: one line per endpoint called, then the totals.
    ///
    /// ```text
    /// API calls by endpoint:
    ///   POST /auth                                           1  (201: 1)
    ///   GET /pm/v1/deploymentjobs/summary                    2  (200: 2)
    ///   total 3, writes 0
    /// ```
    pub fn report(&self) -> String {
        let calls = self.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let mut out = String::from("API calls by endpoint:\n");
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            let by_status: Vec<(Option<u16>, u64)> = calls
                .iter()
                .filter(|((e, _), _)| *e == i)
                .map(|((_, s), n)| (*s, *n))
                .collect();
            if by_status.is_empty() {
                continue;
            }
            let sum: u64 = by_status.iter().map(|(_, n)| n).sum();
            let detail: Vec<String> = by_status
                .iter()
                .map(|(s, n)| match s {
                    Some(s) => format!("{s}: {n}"),
                    None => format!("no answer: {n}"),
                })
                .collect();
            let _ = writeln!(
                out,
                "  {:<52} {sum:>6}  ({})",
                endpoint.as_str(),
                detail.join(", ")
            );
        }
        let _ = writeln!(out, "  total {}, writes {}", self.total(), self.writes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_endpoint_and_status() {
        let s = Stats::new();
        s.on_response(Endpoint::Auth, Some(201), Duration::ZERO);
        s.on_response(Endpoint::Get, Some(200), Duration::ZERO);
        s.on_response(Endpoint::Get, Some(404), Duration::ZERO);
        s.on_response(Endpoint::Update, None, Duration::ZERO);
        assert_eq!(s.count(Endpoint::Get), 2);
        assert_eq!(s.total(), 4);
        assert_eq!(s.writes(), 1);
        let report = s.report();
        assert!(report.contains("GET /pm/v1/deploymentjob/{id}"), "{report}");
        assert!(report.contains("(200: 1, 404: 1)"), "{report}");
        assert!(report.contains("(no answer: 1)"), "{report}");
        assert!(report.ends_with("  total 4, writes 1\n"), "{report}");
    }
}
