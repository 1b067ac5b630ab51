//! One call as the retry loop sees it, and the classification of every failure: what is
//! retried, after how long, and what a create may never repeat.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use backon::ExponentialBuilder;
use reqwest::header::{self, HeaderMap};
use reqwest::{StatusCode, Url};
use tokio::time::Instant;

use super::budget::RateLimitInfo;
use super::endpoint::Endpoint;
use super::error::{Error, LIMIT_EXCEEDED_CODE, ServerMessage, transport_message};
use super::options::ClientOptions;

/// One API call, ready to be sent as many times as the retry rules allow.
pub(super) struct Call {
    pub(super) endpoint: Endpoint,
    pub(super) url: Url,
    pub(super) body: Option<Vec<u8>>,
    /// `Some(name)` for a create: not to be repeated once it may have reached the server.
    pub(super) create: Option<Option<String>>,
    /// What a 404 means, for the message.
    pub(super) what: String,
    /// The one job the call is about: a 403 then means that job, not the whole API.
    pub(super) job: Option<String>,
}

impl Call {
    pub(super) fn new(endpoint: Endpoint, url: Url) -> Self {
        Call {
            endpoint,
            url,
            body: None,
            create: None,
            what: String::new(),
            job: None,
        }
    }

    pub(super) fn json(mut self, body: &impl serde::Serialize) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Invalid {
            field: None,
            message: format!("the request body cannot be encoded as JSON: {e}"),
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    pub(super) fn create(mut self, name: Option<String>) -> Self {
        self.create = Some(name);
        self
    }

    pub(super) fn what(mut self, what: impl Into<String>) -> Self {
        self.what = what.into();
        self
    }

    pub(super) fn job(mut self, id: impl Into<String>) -> Self {
        self.job = Some(id.into());
        self
    }

    pub(super) fn outcome_unknown(&self, cause: String) -> Option<Error> {
        self.create.as_ref().map(|name| Error::OutcomeUnknown {
            name: name.clone(),
            cause,
        })
    }
}

#[derive(Default)]
pub(super) struct Progress {
    pub(super) attempts: AtomicU32,
    pub(super) reauthenticated: AtomicBool,
}

pub(super) struct Exchange {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) info: RateLimitInfo,
    /// The connection's pause after a 429 without rate-limit headers.
    pub(super) pause: Option<Duration>,
    pub(super) body: Vec<u8>,
}

/// A failed attempt: the error to report, whether another attempt may help, and how long the
/// gateway asked us to wait.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) retry: bool,
    pub(super) wait: Option<Duration>,
}

impl Failure {
    pub(super) fn fatal(error: Error) -> Self {
        Failure {
            error,
            retry: false,
            wait: None,
        }
    }

    pub(super) fn retry(error: Error, wait: Option<Duration>) -> Self {
        Failure {
            error,
            retry: true,
            wait,
        }
    }
}

/// Exponential backoff with jitter, `max_attempts` in all.
pub(super) fn backoff(opts: &ClientOptions) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(opts.min_backoff)
        .with_max_delay(opts.max_backoff)
        .with_jitter()
        .with_max_times(opts.max_attempts.saturating_sub(1) as usize)
}

/// The delay before the next attempt: the backoff's, or the server's wait when that is longer;
/// none once out of attempts (whatever the server asks for) or when the wait would end past
/// `max_retry_time` from now on.
pub(super) fn within(
    max_retry_time: Duration,
) -> impl FnMut(&Failure, Option<Duration>) -> Option<Duration> {
    let started = Instant::now();
    move |failure, delay| {
        let delay = delay?;
        let delay = failure.wait.map_or(delay, |w| w.max(delay));
        (started.elapsed() + delay <= max_retry_time).then_some(delay)
    }
}

pub(super) fn classify_transport(
    call: &Call,
    err: &reqwest::Error,
    opts: &ClientOptions,
) -> Failure {
    let endpoint = call.endpoint;
    if err.is_builder() {
        return Failure::fatal(Error::config(format!(
            "cannot build the request: {}",
            transport_message(err)
        )));
    }
    // Nothing was sent when the connection could not be made: even a create may try again.
    if err.is_connect() {
        return Failure::retry(
            Error::Transport {
                endpoint,
                message: transport_message(err),
            },
            None,
        );
    }
    let (error, cause) = if err.is_timeout() {
        (
            Error::Timeout {
                endpoint,
                after: opts.request_timeout,
            },
            format!(
                "no complete answer within {}s",
                opts.request_timeout.as_secs_f64()
            ),
        )
    } else {
        let message = transport_message(err);
        (
            Error::Transport {
                endpoint,
                message: message.clone(),
            },
            format!("the connection failed after the request was sent: {message}"),
        )
    };
    match call.outcome_unknown(cause) {
        Some(unknown) => Failure::fatal(unknown),
        None => Failure::retry(error, None),
    }
}

pub(super) fn classify_status(call: &Call, x: &Exchange, username: &str) -> Failure {
    let endpoint = call.endpoint;
    let status = x.status.as_u16();
    let server = ServerMessage::parse(&x.body);
    let message = server.or_status(status);
    match x.status {
        StatusCode::TOO_MANY_REQUESTS => {
            let wait = x.info.wait().or(x.pause);
            Failure::retry(Error::RateLimited { retry_after: wait }, wait)
        }
        // The classic API's concurrency (1960) and rate (1965) limits.
        StatusCode::CONFLICT if matches!(server.code.as_deref(), Some("1960" | "1965")) => {
            let wait = x.info.wait();
            Failure::retry(Error::RateLimited { retry_after: wait }, wait)
        }
        s if s.is_server_error() => {
            let cause = format!("HTTP {status} after the request was sent");
            match call.outcome_unknown(cause) {
                Some(unknown) => Failure::fatal(unknown),
                None => Failure::retry(
                    Error::Unavailable {
                        endpoint,
                        status,
                        message,
                    },
                    x.info.wait(),
                ),
            }
        }
        StatusCode::BAD_REQUEST if server.code.as_deref() == Some(LIMIT_EXCEEDED_CODE) => {
            Failure::fatal(Error::LimitExceeded { message })
        }
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            Failure::fatal(Error::Invalid {
                field: server.field,
                message,
            })
        }
        StatusCode::UNAUTHORIZED => Failure::fatal(Error::Unauthorized {
            message: if endpoint == Endpoint::Auth {
                format!(
                    "the gateway refused the username or password of user {username:?} \
                     (HTTP 401); check the credentials of the connection"
                )
            } else {
                format!(
                    "the gateway refused a freshly issued token of user {username:?} \
                     (HTTP 401 twice): {message}"
                )
            },
        }),
        // A 403 about one job, from a user the API otherwise admits, is that job's scope: PM
        // roles can limit a user to the jobs assigned to them.
        StatusCode::FORBIDDEN => Failure::fatal(Error::Forbidden {
            message: match &call.job {
                Some(id) => format!(
                    "job {id} is not accessible to user {username:?}: {message}; the job is \
                     probably outside the user's job scope (PM roles can limit a user to the \
                     jobs assigned to them): give the user access to it in Qualys, or leave the \
                     job (deletionPolicy: Orphan); if no job is accessible, the user lacks the \
                     PM.API.ACCESS permission or the subscription a Patch Management licence"
                ),
                None => format!(
                    "user {username:?}: {message}; the user needs the PM.API.ACCESS permission \
                     and the subscription a Patch Management licence (PM APIs are not available \
                     on the Free licence)"
                ),
            },
        }),
        StatusCode::NOT_FOUND => Failure::fatal(Error::NotFound {
            what: call.what.clone(),
        }),
        s if s.is_redirection() => {
            let location = x
                .headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| Url::parse(l).ok())
                .map(|mut u| {
                    // Only where it points, nothing it might carry.
                    let _ = u.set_username("");
                    let _ = u.set_password(None);
                    u.set_query(None);
                    u.to_string()
                })
                .unwrap_or_else(|| "elsewhere".to_owned());
            Failure::fatal(Error::Unexpected {
                endpoint,
                status,
                message: format!(
                    "redirected to {location}; set the gateway URL to the address that answers \
                     directly (redirects are not followed, so credentials stay where they belong)"
                ),
            })
        }
        _ => Failure::fatal(Error::Unexpected {
            endpoint,
            status,
            message,
        }),
    }
}

/// `Retry-After`, `X-RateLimit-*` and `X-ConcurrencyLimit-Limit` of an answer.
pub(super) fn rate_limit_info(headers: &HeaderMap) -> RateLimitInfo {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    let seconds = |name: &str| text(name).and_then(parse_seconds);
    RateLimitInfo {
        limit: number("x-ratelimit-limit"),
        window: seconds("x-ratelimit-window-sec"),
        remaining: number("x-ratelimit-remaining"),
        to_wait: seconds("x-ratelimit-towait-sec"),
        retry_after: text("retry-after").and_then(parse_retry_after),
        concurrency_limit: number("x-concurrencylimit-limit")
            .or_else(|| number("x-concurrency-limit-limit")),
    }
}

pub(super) fn parse_seconds(value: &str) -> Option<Duration> {
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Some(d) = parse_seconds(value) {
        return Some(d);
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(
        Duration::try_from(wait)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "3".parse().unwrap());
        h.insert("X-RateLimit-Limit", "300".parse().unwrap());
        h.insert("X-RateLimit-Window-Sec", "3600".parse().unwrap());
        h.insert("X-RateLimit-Remaining", "0".parse().unwrap());
        h.insert("X-RateLimit-ToWait-Sec", "12".parse().unwrap());
        h.insert("X-Concurrency-Limit-Limit", "2".parse().unwrap());
        let info = rate_limit_info(&h);
        assert_eq!(
            info,
            RateLimitInfo {
                limit: Some(300),
                window: Some(Duration::from_secs(3600)),
                remaining: Some(0),
                to_wait: Some(Duration::from_secs(12)),
                retry_after: Some(Duration::from_secs(3)),
                concurrency_limit: Some(2),
            }
        );
        assert_eq!(info.wait(), Some(Duration::from_secs(12)));
        assert!(rate_limit_info(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn retry_after_accepts_an_http_date() {
        let future = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&future)
            .unwrap();
        let wait = parse_retry_after(&date).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
