//! The gateway layer in front of every API route, in this order:
//! latency → injected faults and `--error-rate` → token (401/403, not on `/auth`) → rate limit
//! (429, not on `/auth`) → the handler (wrapped by a commit-then-fail fault) → counters.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;

use super::RateLimitHeaders;
use super::auth::TokenError;
use super::error::ApiError;
use super::fault::FaultKind;
use super::state::SimState;

const AUTH_ROUTE: &str = "POST /auth";

/// The middleware (see the module doc for the order of checks).
pub(crate) async fn gateway(
    State(st): State<Arc<SimState>>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or(req.uri().path(), |m| m.as_str());
    let route = format!("{} {}", req.method(), path);
    let writer = (req.method() != axum::http::Method::GET && route != AUTH_ROUTE).then(|| {
        req.headers()
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let verdict = st.take_faults(&route);
    let delay = st.config.latency.saturating_add(verdict.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let response = 'answer: {
        match &verdict.action {
            Some(FaultKind::Status { status }) => break 'answer injected(*status),
            Some(FaultKind::RateLimited { retry_after_secs }) => {
                let limit = st.config.rate_limit;
                break 'answer too_many_requests(
                    limit.map_or(300, |l| l.limit),
                    limit.map_or(Duration::from_secs(3600), |l| l.window),
                    *retry_after_secs,
                    st.config.rate_limit_headers,
                );
            }
            Some(FaultKind::ExpireToken) => {
                break 'answer ApiError::unauthorized(TokenError::Expired.message())
                    .into_response();
            }
            _ => {}
        }
        if let Some(status) = st.roll_error() {
            break 'answer injected(status);
        }
        let mut remaining = None;
        if route != AUTH_ROUTE {
            match st.caller(req.headers()) {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                }
                Err(e) => break 'answer e.into_response(),
            }
            match st.admit() {
                Ok(r) => remaining = r,
                Err(wait) => {
                    let limit = st.config.rate_limit.map_or(0, |l| l.limit);
                    let window = st.config.rate_limit.map_or(Duration::ZERO, |l| l.window);
                    break 'answer too_many_requests(
                        limit,
                        window,
                        wait,
                        st.config.rate_limit_headers,
                    );
                }
            }
        }
        if let Some(FaultKind::IgnoreFields { fields }) = &verdict.action {
            req.extensions_mut()
                .insert(super::fault::IgnoredFields(fields.clone()));
        }
        let mut response = next.run(req).await;
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // axum's body limit answers in plain text; the gateway answers in its own shape.
            response = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body exceeds the limit of {} bytes",
                    super::BODY_LIMIT
                ),
            )
            .into_response();
        }
        if let (Some(remaining), Some(limit), RateLimitHeaders::Standard) = (
            remaining,
            st.config.rate_limit,
            st.config.rate_limit_headers,
        ) {
            let headers = response.headers_mut();
            for (name, value) in [
                ("x-ratelimit-limit", u64::from(limit.limit)),
                ("x-ratelimit-window-sec", limit.window.as_secs()),
                ("x-ratelimit-remaining", u64::from(remaining)),
            ] {
                headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
            }
        }
        if let Some(FaultKind::CommitThenFail { drop_connection }) = verdict.action {
            response = commit_then_fail(response, drop_connection).await;
        }
        response
    };
    st.count(&route, response.status().as_u16());
    if let Some(user_agent) = writer {
        st.record_write(super::handle::WriteRecord {
            at: jiff::Timestamp::now(),
            route,
            status: response.status().as_u16(),
            user_agent,
        });
    }
    match &st.config.error_keys {
        Some(keys)
            if response.status().is_client_error() || response.status().is_server_error() =>
        {
            reshape_error(response, keys).await
        }
        _ => response,
    }
}

/// An error answer re-rendered in another gateway's shape: every dotted path of `keys` is
/// created; a leaf whose name ends in `code` (any case) gets the error code, other leaves the
/// message.
async fn reshape_error(response: Response, keys: &[String]) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, super::BODY_LIMIT)
        .await
        .unwrap_or_default();
    let original: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let code = original["_error"]["errorCode"].clone();
    let message = original["_error"]["message"].clone();
    let mut out = serde_json::Value::Object(serde_json::Map::new());
    let leaves = keys
        .iter()
        .filter(|k| !keys.iter().any(|other| other.starts_with(&format!("{k}."))));
    for path in leaves {
        let value = if path.to_ascii_lowercase().ends_with("code") {
            code.clone()
        } else {
            message.clone()
        };
        let mut slot = &mut out;
        for segment in path.split('.') {
            if !slot.is_object() {
                *slot = serde_json::Value::Object(serde_json::Map::new());
            }
            slot = &mut slot[segment];
        }
        *slot = value;
    }
    let mut response = Response::from_parts(parts, Body::from(out.to_string()));
    response.headers_mut().remove(CONTENT_LENGTH);
    response
}

/// An injected error status with a Qualys body (nothing took effect).
fn injected(status: u16) -> Response {
    // Only error statuses make sense here (a 1xx or 204 cannot carry the error body).
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    ApiError::new(status, format!("{reason} (simulated fault)")).into_response()
}

/// 429 with the gateway's rate-limit headers, or with none.
fn too_many_requests(
    limit: u32,
    window: Duration,
    wait_secs: u64,
    headers: RateLimitHeaders,
) -> Response {
    if headers == RateLimitHeaders::None {
        return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded")
            .into_response();
    }
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "API rate limit exceeded ({limit} calls per {} s); retry in {wait_secs} s",
            window.as_secs()
        ),
    )
    .with_header("retry-after", wait_secs)
    .with_header("x-ratelimit-limit", limit)
    .with_header("x-ratelimit-window-sec", window.as_secs())
    .with_header("x-ratelimit-remaining", 0)
    .with_header("x-ratelimit-towait-sec", wait_secs)
    .into_response()
}

/// The request took effect; now fail. A body stream that errors makes hyper abort the
/// connection, so the client sees the head and half a body, then a broken connection.
async fn commit_then_fail(response: Response, drop_connection: bool) -> Response {
    if !drop_connection {
        return ApiError::internal("Internal Server Error (simulated fault)").into_response();
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(CONTENT_LENGTH);
    // The pause lets hyper flush the head and the first half before the stream fails.
    let broken = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated dropped connection",
        ))
    });
    let stream = futures::stream::iter([Ok(half)]).chain(broken);
    Response::from_parts(parts, Body::from_stream(stream))
}
