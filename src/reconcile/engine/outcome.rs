//! What a reconcile did and found ([`Outcome`], its events), and the one mapping from a
//! client error to a condition reason.

use crate::api::{LiveJobSummary, Reason};
use crate::qualys::{self, Error as QError, JobBody};
use crate::reconcile::diff::FieldChange;
use jiff::Timestamp;
use serde_json::Value;
use std::time::Duration;

/// Normal or Warning, as Kubernetes events are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something worth telling a person (a Kubernetes event in the controller, a line in the CLI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    /// Created, Adopted, Updated, DriftCorrected, DriftDetected, Enabled, Disabled, Deleted,
    /// Orphaned, or a failure reason.
    pub reason: &'static str,
    pub note: String,
}

impl Event {
    pub(super) fn normal(reason: &'static str, note: impl Into<String>) -> Self {
        Event {
            type_: EventType::Normal,
            reason,
            note: note.into(),
        }
    }
    pub(super) fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Event {
            type_: EventType::Warning,
            reason,
            note: note.into(),
        }
    }
}

/// What a reconcile did and found.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub reason: Reason,
    pub message: String,
    pub events: Vec<Event>,
    /// Report mode: the differences (scripts as digests).
    pub pending_changes: Vec<FieldChange>,
    /// Fields found drifted from a spec that had not changed (corrected or reported).
    pub drift_fields: Vec<String>,
    pub drift_corrected: bool,
    pub live: Option<LiveJobSummary>,
    /// From a 429: when to try again.
    pub retry_after: Option<Duration>,
    /// Whether anything was written to Qualys.
    pub wrote: bool,
    /// Deletion only: the Qualys side is done and the finalizer may go.
    pub finished: bool,
    /// The live job's last-change date (epoch ms, as the summary list's `updated` reports it),
    /// so a poller does not mistake the operator's own write for a change.
    pub live_updated_ms: Option<i64>,
    /// The gateway could not be reached at all (nothing answered): the controller then waits
    /// once for the whole connection rather than once per resource.
    pub gateway_unreachable: bool,
    /// The body fields an update wrote (a spec change or corrected drift).
    pub updated_fields: Vec<String>,
    /// The Enabled/Disabled state the operator set.
    pub state_set: Option<qualys::JobState>,
}

impl Outcome {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Outcome {
            reason,
            message: message.into(),
            events: Vec::new(),
            pending_changes: Vec::new(),
            drift_fields: Vec::new(),
            drift_corrected: false,
            live: None,
            retry_after: None,
            wrote: false,
            finished: false,
            live_updated_ms: None,
            gateway_unreachable: false,
            updated_fields: Vec::new(),
            state_set: None,
        }
    }

    /// Deletion done without touching Qualys (deletionPolicy Orphan, force-orphan, or no job).
    pub fn finished_orphan(job_id: Option<String>, force_orphan: bool) -> Self {
        let what = job_id
            .map(|id| format!("job {id}"))
            .unwrap_or_else(|| "no job".into());
        let why = if force_orphan {
            "pm.qualys.io/force-orphan"
        } else {
            "deletionPolicy Orphan"
        };
        let mut o = Outcome::new(Reason::Deleting, format!("left {what} in Qualys ({why})"));
        o.finished = true;
        o.events.push(Event::normal("Orphaned", o.message.clone()));
        o
    }

    pub(super) fn event(mut self, event: Event) -> Self {
        self.events.push(event);
        self
    }
}

pub(super) fn finished(message: &str) -> Outcome {
    let mut o = Outcome::new(Reason::Deleting, message);
    o.finished = true;
    o
}

/// The outcome of a failed call: the reason from the error's kind, a message that names what
/// was being done.
pub fn api_failure(e: &QError, doing: &str) -> Outcome {
    let reason = reason_for(e);
    let mut o = Outcome::new(reason, format!("{doing}: {e}"));
    if let QError::RateLimited { retry_after } = e {
        o.retry_after = *retry_after;
    }
    o.gateway_unreachable = matches!(e, QError::Transport { .. });
    if reason.is_stalled() {
        o.events
            .push(Event::warning(reason.as_str(), o.message.clone()));
    }
    o
}

/// Whether a failed create certainly made nothing: it was never sent, or the gateway refused
/// it (a 413 too large, any 4xx). A 408 or 409 may follow a create that took effect, and an
/// unknown outcome may have too: their pending-create record stays, for recovery.
pub(super) fn refused_outright(e: &QError) -> bool {
    match e {
        QError::OutcomeUnknown { .. } => false,
        QError::Unexpected { status, .. } => !matches!(status, 408 | 409),
        _ => true,
    }
}

/// The one mapping from a client error to a condition reason.
pub fn reason_for(e: &QError) -> Reason {
    match e {
        QError::Unauthorized { .. } => Reason::Unauthorized,
        QError::Forbidden { .. } => Reason::Forbidden,
        QError::Invalid { .. } | QError::Config { .. } => Reason::InvalidSpec,
        // Any other refusal of the request itself (413 too large, 415, …): sending it again
        // cannot help.
        QError::Unexpected { status, .. }
            if (400..500).contains(status) && !matches!(status, 408 | 409) =>
        {
            Reason::InvalidSpec
        }
        QError::NotFound { .. } => Reason::JobMissing,
        QError::RateLimited { .. } => Reason::RateLimited,
        _ => Reason::GatewayUnavailable,
    }
}

pub(super) fn with_live(mut o: Outcome, live: &JobBody) -> Outcome {
    o.live = Some(live_summary(live));
    o.live_updated_ms = last_change_ms(live);
    o
}

/// The later of a job's creation and last update (what the summary list calls `updated`).
pub fn last_change_ms(job: &JobBody) -> Option<i64> {
    later_date_ms(&job.created_by, &job.updated_by)
}

/// The later of two audit dates (epoch ms): a job's last change, from a job or a summary.
pub fn later_date_ms(
    created: &qualys::Field<qualys::Audit>,
    updated: &qualys::Field<qualys::Audit>,
) -> Option<i64> {
    let date = |a: &qualys::Field<qualys::Audit>| {
        a.get().and_then(|a| a.date.get()).and_then(|d| d.as_i64())
    };
    date(updated).max(date(created))
}

/// The brief of a live job kept in status.
pub fn live_summary(live: &JobBody) -> LiveJobSummary {
    let text = |v: &qualys::Field<Value>| match v.get() {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let updated = live.updated_by.get();
    LiveJobSummary {
        state: live.status.get().cloned(),
        job_trigger_status: text(&live.job_trigger_status),
        completion_percent: text(&live.completion_percent),
        updated_by: updated
            .and_then(|u| u.user.get())
            .and_then(|u| u.name.get())
            .cloned(),
        updated_at: updated
            .and_then(|u| u.date.get())
            .and_then(|d| d.as_i64())
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string()),
    }
}
