//! What can go wrong talking to the Qualys PM gateway, as values a caller can act on.
//!
//! Every variant is built from facts the client saw (status, error body, transport failure),
//! never from the request: bodies can carry script content, and the password and token are never
//! part of any message. Messages are written for the person who has to fix the problem.

use std::fmt;
use std::time::Duration;

use super::endpoint::Endpoint;
use super::model::ErrorBody;

/// The `errorCode` the gateway uses when a list would pass the 10,000-record cap.
pub const LIMIT_EXCEEDED_CODE: &str = "2501";

/// Longest piece of a server message kept in an error; a misbehaving gateway or proxy could
/// answer with a whole HTML page.
const MAX_SERVER_MESSAGE: usize = 300;

/// An error of the Qualys PM client.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// The credentials were refused, or a freshly issued token was refused again.
    #[error("authentication failed: {message}")]
    Unauthorized { message: String },

    /// HTTP 403 from the API: for the whole API (the message names PM.API.ACCESS and the
    /// licence), or for one job (the message names the job and its likely cause, job scope).
    #[error("access denied (HTTP 403): {message}")]
    Forbidden { message: String },

    /// HTTP 404: the job (or, for other endpoints, the route) does not exist.
    #[error("not found: {what}")]
    NotFound { what: String },

    /// HTTP 400 (or another refusal of the request itself): fix the request, do not retry.
    #[error("the gateway refused the request{}: {message}", field_suffix(field))]
    Invalid {
        /// The job field the gateway named, e.g. `preDeployActions[0].script`.
        field: Option<String>,
        message: String,
    },

    /// `errorCode` 2501: the PM APIs return at most 10,000 records.
    #[error(
        "the gateway's 10,000-record limit was reached (errorCode 2501): {message}; \
         the API cannot list past it"
    )]
    LimitExceeded { message: String },

    /// HTTP 429 (or a classic-API rate-limit code) after the retries allowed.
    #[error(
        "rate limited by the gateway (HTTP 429){}",
        retry_after_suffix(retry_after)
    )]
    RateLimited { retry_after: Option<Duration> },

    /// HTTP 5xx after the retries allowed.
    #[error("the gateway is unavailable: {endpoint} answered HTTP {status}: {message}")]
    Unavailable {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },

    /// A status the API does not use (a redirect, 405, 409 …).
    #[error("unexpected answer from the gateway: {endpoint} answered HTTP {status}: {message}")]
    Unexpected {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },

    /// The request could not be sent or its answer could not be received.
    #[error("cannot reach the gateway ({endpoint}): {message}")]
    Transport { endpoint: Endpoint, message: String },

    /// No complete answer within the request timeout.
    #[error("the gateway did not answer {endpoint} within {}s", after.as_secs_f64())]
    Timeout { endpoint: Endpoint, after: Duration },

    /// A create may have reached the server but its answer was lost. It is never retried
    /// blindly: the caller must look the job up by name.
    #[error(
        "the outcome of creating job {} is unknown ({cause}): the job may or may not exist; \
         look it up by name and platform before creating it again",
        name.as_deref().map(|n| format!("{n:?}")).unwrap_or_else(|| "(unnamed)".to_owned())
    )]
    OutcomeUnknown { name: Option<String>, cause: String },

    /// One item of a bulk call (delete, status change) failed.
    #[error("job {id}: {message}")]
    ItemFailed { id: String, message: String },

    /// A 2xx answer that is not what the API documents.
    #[error("cannot read the gateway's answer to {endpoint}: {message}")]
    Decode { endpoint: Endpoint, message: String },

    /// The connection settings or client options are unusable.
    #[error("invalid connection configuration: {message}")]
    Config { message: String },

    /// A write that was not sent because the caller may no longer act (the controller's leader
    /// lease may have passed to another replica). Nothing reached the gateway.
    #[error("{endpoint} was not sent: {reason}")]
    Fenced { endpoint: Endpoint, reason: String },
}

fn field_suffix(field: &Option<String>) -> String {
    field
        .as_deref()
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default()
}

fn retry_after_suffix(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!("; retry after {}s", d.as_secs_f64()))
        .unwrap_or_default()
}

impl Error {
    /// True when the same request may succeed later without anyone changing anything
    /// (the client has already retried as far as its options allow).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Unavailable { .. }
                | Error::Transport { .. }
                | Error::Timeout { .. }
                | Error::Fenced { .. }
        )
    }

    /// A stable, machine-readable name of the variant (for metrics labels and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unauthorized { .. } => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::Invalid { .. } => "invalid",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::Unexpected { .. } => "unexpected",
            Error::Transport { .. } => "transport",
            Error::Timeout { .. } => "timeout",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::ItemFailed { .. } => "item_failed",
            Error::Decode { .. } => "decode",
            Error::Config { .. } => "config",
            Error::Fenced { .. } => "fenced",
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }
}

/// What the gateway said in an error answer: its `_error` document when there is one, else a
/// short, single-line excerpt of whatever came back.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ServerMessage {
    pub code: Option<String>,
    pub message: String,
    /// The job field the message names, if any.
    pub field: Option<String>,
}

impl ServerMessage {
    pub fn parse(body: &[u8]) -> Self {
        if let Ok(doc) = serde_json::from_slice::<ErrorBody>(body) {
            let message = doc.error.message.get().cloned().unwrap_or_default();
            // A gateway that names the field outright beats any reading of the prose.
            let named = ["field", "fieldName", "path"].iter().find_map(|k| {
                doc.error
                    .extra
                    .get(*k)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            });
            let field = named.or_else(|| find_field(&message));
            return ServerMessage {
                code: doc.error.code(),
                message: excerpt(&message),
                field,
            };
        }
        let text = String::from_utf8_lossy(body);
        ServerMessage {
            code: None,
            message: excerpt(&text),
            field: None,
        }
    }

    /// The message, or a stand-in when the body said nothing.
    pub fn or_status(&self, status: u16) -> String {
        if self.message.is_empty() {
            format!("no error message (HTTP {status})")
        } else {
            self.message.clone()
        }
    }
}

/// One line, at most [`MAX_SERVER_MESSAGE`] characters.
fn excerpt(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_SERVER_MESSAGE {
        one_line
    } else {
        let cut: String = one_line.chars().take(MAX_SERVER_MESSAGE).collect();
        format!("{cut}…")
    }
}

/// A word of an error message that starts with a top-level key of a job document (or the
/// request-only `chainedJobRule`) names the field at fault.
fn is_job_field(word: &str) -> bool {
    word == "chainedJobRule" || super::model::CANONICAL_KEYS.contains(&word)
}

/// The first word of `message` that is a job field or a path into one
/// (`preDeployActions[0].script`, `postDeployment.rebootCountdown.interval`).
///
/// Words that are plain English (`name`, `type`, `status`, `id`, `description`, `timeout`) only
/// count when quoted or written as a path, so "the name is too long" does not blame `name`
/// unless nothing better is found.
fn find_field(message: &str) -> Option<String> {
    const PROSE: &[&str] = &[
        "id",
        "name",
        "type",
        "status",
        "description",
        "timeout",
        "notification",
        "recurring",
        "timezone",
        "platform",
        "ids",
    ];
    let mut weak = None;
    for raw in message.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')')) {
        let quoted = raw.starts_with(['\'', '"', '`']);
        let word =
            raw.trim_matches(|c: char| matches!(c, '\'' | '"' | '`' | ':' | '.' | '!' | '?'));
        let head = word.split(['.', '[']).next().unwrap_or_default();
        if !is_job_field(head) || !word.chars().all(path_char) {
            continue;
        }
        let is_path = word.len() > head.len();
        if quoted || is_path || !PROSE.contains(&head) {
            return Some(word.to_owned());
        }
        weak.get_or_insert_with(|| word.to_owned());
    }
    weak
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_')
}

/// A reqwest error as text: the chain of causes, without the URL (the caller adds which
/// endpoint of which gateway it was).
pub(crate) fn transport_message(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts = Vec::new();
    let top = DisplayWithoutUrl(err).to_string();
    parts.push(top);
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last().is_none_or(|p| !p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    excerpt(&parts.join(": "))
}

struct DisplayWithoutUrl<'a>(&'a reqwest::Error);

impl fmt::Display for DisplayWithoutUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.0.is_connect() {
            "connection failed"
        } else if self.0.is_timeout() {
            "timed out"
        } else if self.0.is_body() || self.0.is_decode() {
            "the answer was cut off"
        } else if self.0.is_request() {
            "the request failed"
        } else {
            "HTTP error"
        };
        f.write_str(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "hunter2-Secret!";
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    /// One example of every variant, with its exact Display text.
    fn every_variant() -> Vec<(Error, &'static str)> {
        vec![
            (
                Error::Unauthorized {
                    message: "the gateway refused the username or password of user \"alice\""
                        .into(),
                },
                "authentication failed: the gateway refused the username or password of user \"alice\"",
            ),
            (
                Error::Forbidden {
                    message: "user lacks permission".into(),
                },
                "access denied (HTTP 403): user lacks permission",
            ),
            (
                Error::NotFound {
                    what: "deployment job 42".into(),
                },
                "not found: deployment job 42",
            ),
            (
                Error::Invalid {
                    field: Some("preDeployActions[0].script".into()),
                    message: "not base64".into(),
                },
                "the gateway refused the request (field preDeployActions[0].script): not base64",
            ),
            (
                Error::Invalid {
                    field: None,
                    message: "bad".into(),
                },
                "the gateway refused the request: bad",
            ),
            (
                Error::LimitExceeded {
                    message: "cap".into(),
                },
                "the gateway's 10,000-record limit was reached (errorCode 2501): cap; the API \
                 cannot list past it",
            ),
            (
                Error::RateLimited {
                    retry_after: Some(Duration::from_secs(30)),
                },
                "rate limited by the gateway (HTTP 429); retry after 30s",
            ),
            (
                Error::RateLimited { retry_after: None },
                "rate limited by the gateway (HTTP 429)",
            ),
            (
                Error::Unavailable {
                    endpoint: Endpoint::Get,
                    status: 503,
                    message: "maintenance".into(),
                },
                "the gateway is unavailable: GET /pm/v1/deploymentjob/{id} answered HTTP 503: maintenance",
            ),
            (
                Error::Unexpected {
                    endpoint: Endpoint::Auth,
                    status: 302,
                    message: "redirected".into(),
                },
                "unexpected answer from the gateway: POST /auth answered HTTP 302: redirected",
            ),
            (
                Error::Transport {
                    endpoint: Endpoint::Create,
                    message: "connection failed".into(),
                },
                "cannot reach the gateway (POST /pm/v1/deploymentjob): connection failed",
            ),
            (
                Error::Timeout {
                    endpoint: Endpoint::ListSummaries,
                    after: Duration::from_millis(1500),
                },
                "the gateway did not answer GET /pm/v1/deploymentjobs/summary within 1.5s",
            ),
            (
                Error::OutcomeUnknown {
                    name: Some("Windows monthly".into()),
                    cause: "HTTP 500 after the request was sent".into(),
                },
                "the outcome of creating job \"Windows monthly\" is unknown (HTTP 500 after the \
                 request was sent): the job may or may not exist; look it up by name and platform \
                 before creating it again",
            ),
            (
                Error::ItemFailed {
                    id: "j1".into(),
                    message: "Job not found".into(),
                },
                "job j1: Job not found",
            ),
            (
                Error::Decode {
                    endpoint: Endpoint::Delete,
                    message: "expected an array".into(),
                },
                "cannot read the gateway's answer to DELETE /pm/v1/deploymentjobs: expected an array",
            ),
            (
                Error::Config {
                    message: "caBundle holds no certificate".into(),
                },
                "invalid connection configuration: caBundle holds no certificate",
            ),
        ]
    }

    #[test]
    fn every_variant_displays_exactly_and_leaks_nothing() {
        let examples = every_variant();
        let mut kinds = std::collections::BTreeSet::new();
        for (error, expected) in &examples {
            let display = error.to_string();
            let debug = format!("{error:?}");
            assert_eq!(display, *expected);
            for text in [&display, &debug] {
                assert!(!text.contains(PASSWORD), "{text}");
                assert!(!text.contains(TOKEN), "{text}");
                assert!(!text.contains("eyJ"), "{text}");
            }
            kinds.insert(error.kind());
        }
        assert_eq!(kinds.len(), 14, "every variant has its own kind");
    }

    #[test]
    fn retryable_variants_are_exactly_the_transient_ones() {
        let retryable: Vec<&str> = every_variant()
            .into_iter()
            .filter(|(e, _)| e.is_retryable())
            .map(|(e, _)| e.kind())
            .collect();
        assert_eq!(
            retryable,
            [
                "rate_limited",
                "rate_limited",
                "unavailable",
                "transport",
                "timeout"
            ]
        );
    }

    #[test]
    fn qualys_error_bodies_are_parsed_with_their_field() {
        let m = ServerMessage::parse(
            br#"{"_error":{"errorCode":"400","message":"Invalid base64 content in preDeployActions[0].script"}}"#,
        );
        assert_eq!(m.code.as_deref(), Some("400"));
        assert_eq!(m.field.as_deref(), Some("preDeployActions[0].script"));

        let m = ServerMessage::parse(
            br#"{"_error":{"errorCode":"400","message":"'scheduleType' must be one of On-demand, Once"}}"#,
        );
        assert_eq!(m.field.as_deref(), Some("scheduleType"));

        let m = ServerMessage::parse(
            br#"{"_error":{"errorCode":"400","message":"the name is too long; linkedJobId: unknown job"}}"#,
        );
        assert_eq!(
            m.field.as_deref(),
            Some("linkedJobId"),
            "prose words lose to real fields"
        );

        let m = ServerMessage::parse(
            br#"{"_error":{"errorCode":"400","message":"name is mandatory"}}"#,
        );
        assert_eq!(
            m.field.as_deref(),
            Some("name"),
            "a prose word is the fall-back"
        );

        let m = ServerMessage::parse(
            br#"{"_error":{"errorCode":"400","message":"value out of range","field":"timeout"}}"#,
        );
        assert_eq!(m.field.as_deref(), Some("timeout"));

        let m = ServerMessage::parse(br#"{"_error":{"errorCode":2501,"message":"cap"}}"#);
        assert_eq!(m.code.as_deref(), Some(LIMIT_EXCEEDED_CODE));
        assert_eq!(m.field, None);
    }

    #[test]
    fn other_bodies_become_a_short_single_line() {
        let html = format!("<html>\n<body>{}</body></html>", "x".repeat(1000));
        let m = ServerMessage::parse(html.as_bytes());
        assert_eq!(m.code, None);
        assert!(!m.message.contains('\n'));
        assert_eq!(m.message.chars().count(), MAX_SERVER_MESSAGE + 1);
        assert_eq!(
            ServerMessage::parse(b"").or_status(502),
            "no error message (HTTP 502)"
        );
    }
}
