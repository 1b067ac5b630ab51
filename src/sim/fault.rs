//! Injectable faults: how tests make the gateway fail on purpose.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fault applied to API requests (never to `/_sim/` requests).
///
/// As JSON (`POST /_sim/faults`) it is flat, with `kind` as the tag:
/// `{"route": "PATCH /pm/v1/deploymentjob/update/{id}", "times": 1, "kind": "status", "status": 503}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// A route template such as `GET /pm/v1/deploymentjob/{id}` (see [`super::ROUTES`]);
    /// `None` means every API route, `/auth` included.
    #[serde(default)]
    pub route: Option<String>,
    /// Apply to this many matching requests, then clear; `None` = until cleared.
    #[serde(default)]
    pub times: Option<u32>,
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// What a [`Fault`] does to a matching request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum FaultKind {
    /// Answer this status (e.g. 500, 503) with a Qualys error body; nothing takes effect.
    Status { status: u16 },
    /// Answer 429 with `Retry-After` and `X-RateLimit-*` headers; nothing takes effect.
    RateLimited { retry_after_secs: u64 },
    /// Delay the request, then serve it normally.
    Latency { ms: u64 },
    /// Treat the request's token as expired: 401.
    ExpireToken,
    /// Let the request take effect, then answer 500 — or, with `drop_connection`, abort the
    /// connection in the middle of the response body. The only honest way to test an outcome
    /// the client cannot know.
    CommitThenFail {
        #[serde(default)]
        drop_connection: bool,
    },
    /// Accept an update but leave these top-level fields as they were: a gateway that says
    /// yes and does not do it (how a client's "did it converge?" check is tested).
    IgnoreFields { fields: Vec<String> },
}

/// Set on a request by the gateway layer when an [`FaultKind::IgnoreFields`] fault applies.
#[derive(Clone, Debug)]
pub(crate) struct IgnoredFields(pub Vec<String>);

impl Fault {
    /// A fault on every API route until cleared.
    pub fn always(kind: FaultKind) -> Self {
        Fault {
            route: None,
            times: None,
            kind,
        }
    }

    /// A fault on one route template.
    pub fn on(route: impl Into<String>, kind: FaultKind) -> Self {
        Fault {
            route: Some(route.into()),
            times: None,
            kind,
        }
    }

    /// Limit the fault to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Why this fault cannot be applied as given, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if let Some(route) = &self.route
            && !super::ROUTES.contains(&route.as_str())
        {
            return Some(format!(
                "route: {route:?} is not one of: {}",
                super::ROUTES.join(", ")
            ));
        }
        match self.kind {
            FaultKind::Status { status } if !(400..=599).contains(&status) => {
                Some(format!("status: {status} is not an error status (400-599)"))
            }
            _ => None,
        }
    }

    fn matches(&self, route: &str) -> bool {
        self.route.as_deref().is_none_or(|r| r == route)
    }
}

/// What the active faults decided for one request.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Added latency (all matching latency faults add up).
    pub delay: Duration,
    /// The first matching fault of another kind, if any.
    pub action: Option<FaultKind>,
}

/// The active faults, in the order they were set.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    active: Vec<Fault>,
}

impl Faults {
    pub fn push(&mut self, fault: Fault) {
        if fault.times != Some(0) {
            self.active.push(fault);
        }
    }

    pub fn clear(&mut self) {
        self.active.clear();
    }

    pub fn list(&self) -> Vec<Fault> {
        self.active.clone()
    }

    /// Decide what happens to a request on `route`, consuming one use of every fault that
    /// applies: all latency faults, and the first fault of any other kind (later ones wait).
    pub fn take(&mut self, route: &str) -> Verdict {
        let mut verdict = Verdict::default();
        for fault in self.active.iter_mut().filter(|f| f.matches(route)) {
            match &fault.kind {
                FaultKind::Latency { ms } => {
                    verdict.delay = verdict.delay.saturating_add(Duration::from_millis(*ms));
                }
                other if verdict.action.is_none() => verdict.action = Some(other.clone()),
                _ => continue,
            }
            if let Some(n) = fault.times.as_mut() {
                *n = n.saturating_sub(1);
            }
        }
        self.active.retain(|f| f.times != Some(0));
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_flat_with_a_kind_tag() {
        let f = Fault::on(
            "POST /auth",
            FaultKind::RateLimited {
                retry_after_secs: 7,
            },
        )
        .times(2);
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            json!({"route": "POST /auth", "times": 2, "kind": "rateLimited", "retryAfterSecs": 7})
        );
        let back: Fault = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
        let f: Fault = serde_json::from_value(json!({"kind": "commitThenFail"})).unwrap();
        assert_eq!(
            f,
            Fault::always(FaultKind::CommitThenFail {
                drop_connection: false
            })
        );
        let f: Fault = serde_json::from_value(json!({"kind": "expireToken"})).unwrap();
        assert_eq!(f.kind, FaultKind::ExpireToken);
        assert!(serde_json::from_value::<Fault>(json!({"kind": "explode"})).is_err());
    }

    #[test]
    fn times_counts_down_and_later_faults_wait() {
        let mut faults = Faults::default();
        faults.push(Fault::on("GET /a", FaultKind::Status { status: 503 }).times(2));
        faults.push(Fault::always(FaultKind::Status { status: 500 }).times(1));
        faults.push(Fault::always(FaultKind::Latency { ms: 5 }).times(1));
        let v = faults.take("GET /a");
        assert_eq!(v.action, Some(FaultKind::Status { status: 503 }));
        assert_eq!(v.delay, Duration::from_millis(5));
        let v = faults.take("GET /b");
        assert_eq!(v.action, Some(FaultKind::Status { status: 500 }));
        assert_eq!(v.delay, Duration::ZERO);
        let v = faults.take("GET /a");
        assert_eq!(v.action, Some(FaultKind::Status { status: 503 }));
        let v = faults.take("GET /a");
        assert_eq!(v.action, None);
        assert!(faults.list().is_empty());
    }
}
