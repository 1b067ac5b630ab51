//! Prometheus metrics of the controller (served on `/metrics`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `qpm_reconciles_total` | counter | `result` (a condition reason, or `error`) |
//! | `qpm_reconcile_duration_seconds` | histogram | |
//! | `qpm_reconcile_errors_total` | counter | `error` (the kind of failure, `Error::metric_label`) |
//! | `qpm_qualys_requests_total` | counter | `connection`, `endpoint`, `code` (`transport` when no answer) |
//! | `qpm_qualys_request_duration_seconds` | histogram | `endpoint` |
//! | `qpm_qualys_rate_limit_limit`, `_remaining`, `_window_seconds` | gauge | `connection` |
//! | `qpm_qualys_budget_limit`, `_window_seconds` | gauge | `connection` (the configured budget) |
//! | `qpm_qualys_budget_used` | gauge | `connection` (calls in the budget's window now) |
//! | `qpm_qualys_pauses_total` | counter | `connection` (429s without rate-limit headers) |
//! | `qpm_qualys_paused_until_timestamp_seconds` | gauge | `connection` |
//! | `qpm_drift_corrections_total` | counter | |
//! | `qpm_status_writes_total` | counter | |
//! | `qpm_managed_jobs` | gauge | `reason` (the Ready condition's reason of each resource) |
//! | `qpm_qualys_connections` | gauge | |
//! | `qpm_leader` | gauge | |
//! | `qpm_last_successful_poll_timestamp_seconds` | gauge | `connection` |
//! | `qpm_last_reconcile_timestamp_seconds` | gauge | |
//! | `qpm_crd_missing_fields` | gauge | |

use crate::api::DeploymentJob;
use crate::qualys::{Budget, Endpoint, Observer, Pause, RateLimitInfo};
use kube::runtime::reflector::ObjectRef;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub connection: String,
    pub endpoint: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    pub connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

/// Every metric of one operator process.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub qualys_requests: Family<RequestLabels, Counter>,
    pub qualys_request_duration: Family<EndpointLabel, Histogram>,
    pub rate_limit_limit: Family<ConnectionLabel, Gauge>,
    pub rate_limit_remaining: Family<ConnectionLabel, Gauge>,
    pub rate_limit_window: Family<ConnectionLabel, Gauge>,
    pub pauses: Family<ConnectionLabel, Counter>,
    pub paused_until: Family<ConnectionLabel, Gauge<f64, AtomicU64>>,
    pub budget_limit: Family<ConnectionLabel, Gauge>,
    pub budget_window: Family<ConnectionLabel, Gauge<f64, AtomicU64>>,
    pub budget_used: Family<ConnectionLabel, Gauge>,
    /// The budget of each connection in use, read at every scrape: a call leaves the window
    /// as time passes, not at an event the operator sees. Weak, so a dropped connection's
    /// series go with it.
    budgets: Mutex<Vec<(ConnectionLabel, Weak<Budget>)>>,
    pub drift_corrections: Counter,
    pub status_writes: Counter,
    pub managed_jobs: Family<ReasonLabel, Gauge>,
    pub connections: Gauge,
    pub leader: Gauge,
    pub last_poll: Family<ConnectionLabel, Gauge<f64, AtomicU64>>,
    pub last_reconcile: Gauge<f64, AtomicU64>,
    /// Status fields the operator writes that the installed CRD lacks (0 when it is current).
    pub crd_missing_fields: Gauge,
    /// Per resource, the one map of reasons: its last reconcile's outcome (the `result` of
    /// `qpm_reconciles_total`) and its Ready reason (`qpm_managed_jobs`).
    reasons: Mutex<HashMap<ObjectRef<DeploymentJob>, Reasons>>,
}

/// The two reasons kept per resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reasons {
    pub outcome: &'static str,
    pub ready: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("qpm");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let reconcile_errors = Family::<ErrorLabel, Counter>::default();
        let qualys_requests = Family::<RequestLabels, Counter>::default();
        let qualys_request_duration =
            Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 12))
            });
        let rate_limit_limit = Family::<ConnectionLabel, Gauge>::default();
        let rate_limit_remaining = Family::<ConnectionLabel, Gauge>::default();
        let rate_limit_window = Family::<ConnectionLabel, Gauge>::default();
        let pauses = Family::<ConnectionLabel, Counter>::default();
        let paused_until = Family::<ConnectionLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "qualys_pauses",
            "Pauses of a connection after a 429 without rate-limit headers",
            pauses.clone(),
        );
        registry.register(
            "qualys_paused_until_timestamp_seconds",
            "When the last pause of a connection ends",
            paused_until.clone(),
        );
        let budget_limit = Family::<ConnectionLabel, Gauge>::default();
        let budget_window = Family::<ConnectionLabel, Gauge<f64, AtomicU64>>::default();
        let budget_used = Family::<ConnectionLabel, Gauge>::default();
        registry.register(
            "qualys_budget_limit",
            "Calls a connection may make per window (--qualys-budget)",
            budget_limit.clone(),
        );
        registry.register(
            "qualys_budget_window_seconds",
            "The window of a connection's call budget (--qualys-budget)",
            budget_window.clone(),
        );
        registry.register(
            "qualys_budget_used",
            "Calls of a connection counted against its budget now: in flight, or answered less than a window ago",
            budget_used.clone(),
        );
        let drift_corrections = Counter::default();
        let status_writes = Counter::default();
        let managed_jobs = Family::<ReasonLabel, Gauge>::default();
        let connections = Gauge::default();
        let leader = Gauge::default();
        let last_poll = Family::<ConnectionLabel, Gauge<f64, AtomicU64>>::default();
        let last_reconcile = Gauge::<f64, AtomicU64>::default();
        let crd_missing_fields = Gauge::default();
        registry.register(
            "crd_missing_fields",
            "Status fields the operator writes that the installed CRD lacks (nothing is changed in Qualys while above 0)",
            crd_missing_fields.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by result (condition reason)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind of failure",
            reconcile_errors.clone(),
        );
        registry.register(
            "qualys_requests",
            "Requests to the Qualys PM API by connection, endpoint and HTTP status",
            qualys_requests.clone(),
        );
        registry.register(
            "qualys_request_duration_seconds",
            "Duration of Qualys PM API requests",
            qualys_request_duration.clone(),
        );
        registry.register(
            "qualys_rate_limit_limit",
            "X-RateLimit-Limit last seen",
            rate_limit_limit.clone(),
        );
        registry.register(
            "qualys_rate_limit_remaining",
            "X-RateLimit-Remaining last seen",
            rate_limit_remaining.clone(),
        );
        registry.register(
            "qualys_rate_limit_window_seconds",
            "X-RateLimit-Window-Sec last seen",
            rate_limit_window.clone(),
        );
        registry.register(
            "drift_corrections",
            "Drift corrected in Qualys",
            drift_corrections.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes to the Kubernetes API",
            status_writes.clone(),
        );
        registry.register(
            "managed_jobs",
            "DeploymentJobs by the reason of their Ready condition",
            managed_jobs.clone(),
        );
        registry.register(
            "qualys_connections",
            "Qualys connections in use (each with its own client, token and summary poll)",
            connections.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "last_successful_poll_timestamp_seconds",
            "When the job summaries of a connection were last listed successfully",
            last_poll.clone(),
        );
        registry.register(
            "last_reconcile_timestamp_seconds",
            "When a reconcile last finished (the operator's 'last checked')",
            last_reconcile.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            reconcile_errors,
            qualys_requests,
            qualys_request_duration,
            rate_limit_limit,
            rate_limit_remaining,
            rate_limit_window,
            pauses,
            paused_until,
            budget_limit,
            budget_window,
            budget_used,
            budgets: Mutex::new(Vec::new()),
            drift_corrections,
            status_writes,
            managed_jobs,
            connections,
            leader,
            last_poll,
            last_reconcile,
            crd_missing_fields,
            reasons: Mutex::new(HashMap::new()),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.read_budgets();
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A guard that records one reconcile when dropped; see [`ReconcileMeasurer`].
    pub fn measure_reconcile(self: &Arc<Self>) -> ReconcileMeasurer {
        ReconcileMeasurer {
            started: Instant::now(),
            metrics: self.clone(),
            result: None,
        }
    }

    fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        self.last_reconcile.set(now_seconds());
    }

    /// Every resource with recorded reasons.
    pub fn reason_keys(&self) -> Vec<ObjectRef<DeploymentJob>> {
        self.reasons
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Record the reasons of a resource (`None` when it is gone).
    pub fn set_reason(&self, key: &ObjectRef<DeploymentJob>, reasons: Option<Reasons>) {
        let Ok(mut map) = self.reasons.lock() else {
            return;
        };
        let old = match (reasons, map.get_mut(key)) {
            // A resource already known keeps its key: no copy of it per reconcile.
            (Some(r), Some(known)) => Some(std::mem::replace(known, r)),
            (Some(r), None) => map.insert(key.clone(), r),
            (None, _) => map.remove(key),
        };
        let (old, reason) = (old.map(|r| r.ready), reasons.map(|r| r.ready));
        if old == reason {
            return;
        }
        if let Some(old) = old {
            self.managed_jobs
                .get_or_create(&ReasonLabel {
                    reason: old.to_string(),
                })
                .dec();
        }
        if let Some(new) = reason {
            self.managed_jobs
                .get_or_create(&ReasonLabel {
                    reason: new.to_string(),
                })
                .inc();
        }
    }

    /// The outcome of the resource's last reconcile.
    pub fn outcome(&self, key: &ObjectRef<DeploymentJob>) -> Option<&'static str> {
        self.reasons.lock().ok()?.get(key).map(|r| r.outcome)
    }

    /// Report the call budget of the connection labelled `connection` (the label its requests
    /// carry) at every scrape, while the budget lives. Without a configured window there is
    /// nothing to report.
    pub fn watch_budget(&self, connection: String, budget: &Arc<Budget>) {
        if budget.call_budget().is_none() {
            return;
        }
        let label = ConnectionLabel { connection };
        if let Ok(mut budgets) = self.budgets.lock() {
            // A connection made again after it was dropped replaces its old entry.
            budgets.retain(|(l, _)| *l != label);
            budgets.push((label, Arc::downgrade(budget)));
        }
    }

    fn read_budgets(&self) {
        let Ok(mut budgets) = self.budgets.lock() else {
            return;
        };
        budgets.retain(|(label, budget)| {
            let now = budget
                .upgrade()
                .and_then(|b| Some((b.call_budget()?, b.calls_in_window()?)));
            let Some((limit, used)) = now else {
                self.budget_limit.remove(label);
                self.budget_window.remove(label);
                self.budget_used.remove(label);
                return false;
            };
            self.budget_limit
                .get_or_create(label)
                .set(i64::from(limit.calls));
            self.budget_window
                .get_or_create(label)
                .set(limit.window.as_secs_f64());
            self.budget_used
                .get_or_create(label)
                .set(i64::try_from(used).unwrap_or(i64::MAX));
            true
        });
    }

    pub fn polled(&self, connection: &str) {
        self.last_poll
            .get_or_create(&ConnectionLabel {
                connection: connection.to_string(),
            })
            .set(now_seconds());
    }

    /// An observer for the client of one connection.
    pub fn observer(self: &Arc<Self>, connection: String) -> Arc<dyn Observer> {
        Arc::new(ConnectionObserver {
            metrics: self.clone(),
            connection,
        })
    }
}

/// Records one reconcile (`qpm_reconciles_total`, its duration, the last-reconcile time) when
/// dropped, so that no path out of a reconcile — an early `?` included — goes uncounted. A
/// reconcile that never set its result counts as `error`.
pub struct ReconcileMeasurer {
    started: Instant,
    metrics: Arc<Metrics>,
    result: Option<String>,
}

impl ReconcileMeasurer {
    /// The `result` label: the outcome's reason on success.
    pub fn set_result(&mut self, result: String) {
        self.result = Some(result);
    }

    /// A failure: counted under `error`, and by its kind in `qpm_reconcile_errors_total`.
    pub fn set_failure(&mut self, kind: &'static str) {
        self.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabel {
                error: kind.to_owned(),
            })
            .inc();
        self.result = Some("error".to_owned());
    }
}

impl Drop for ReconcileMeasurer {
    fn drop(&mut self) {
        let result = self.result.as_deref().unwrap_or("error");
        self.metrics.reconciled(result, self.started.elapsed());
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

struct ConnectionObserver {
    metrics: Arc<Metrics>,
    connection: String,
}

impl Observer for ConnectionObserver {
    fn on_response(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration) {
        let code = status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "transport".to_string());
        self.metrics
            .qualys_requests
            .get_or_create(&RequestLabels {
                connection: self.connection.clone(),
                endpoint: endpoint.label().to_string(),
                code,
            })
            .inc();
        self.metrics
            .qualys_request_duration
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.label().to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn on_pause(&self, pause: &Pause) {
        let label = ConnectionLabel {
            connection: self.connection.clone(),
        };
        self.metrics.pauses.get_or_create(&label).inc();
        let left = pause
            .until
            .saturating_duration_since(tokio::time::Instant::now());
        self.metrics
            .paused_until
            .get_or_create(&label)
            .set(now_seconds() + left.as_secs_f64());
    }

    fn on_rate_limit(&self, info: &RateLimitInfo) {
        let label = ConnectionLabel {
            connection: self.connection.clone(),
        };
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(limit) = info.limit {
            self.metrics
                .rate_limit_limit
                .get_or_create(&label)
                .set(as_i64(limit));
        }
        if let Some(remaining) = info.remaining {
            self.metrics
                .rate_limit_remaining
                .get_or_create(&label)
                .set(as_i64(remaining));
        }
        if let Some(window) = info.window {
            self.metrics
                .rate_limit_window
                .get_or_create(&label)
                .set(as_i64(window.as_secs()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn the_measurer_counts_once_when_dropped_with_its_result() {
        let metrics = Arc::new(Metrics::new());
        let mut ok = metrics.measure_reconcile();
        ok.set_result("UpToDate".to_owned());
        drop(ok);
        let mut failed = metrics.measure_reconcile();
        failed.set_failure("retry");
        drop(failed);
        // A reconcile that ended before it said how counts as an error.
        drop(metrics.measure_reconcile());

        let text = metrics.encode();
        assert_eq!(
            line(&text, "qpm_reconciles_total{result=\"UpToDate\"}"),
            Some("qpm_reconciles_total{result=\"UpToDate\"} 1")
        );
        assert_eq!(
            line(&text, "qpm_reconciles_total{result=\"error\"}"),
            Some("qpm_reconciles_total{result=\"error\"} 2")
        );
        assert_eq!(
            line(&text, "qpm_reconcile_errors_total{"),
            Some("qpm_reconcile_errors_total{error=\"retry\"} 1")
        );
        assert_eq!(
            line(&text, "qpm_reconcile_duration_seconds_count"),
            Some("qpm_reconcile_duration_seconds_count 3")
        );
    }
}
