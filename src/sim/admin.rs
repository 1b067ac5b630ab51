//! `/_sim/`: the HTTP mirror of [`super::SimHandle`]. No token, not counted, no faults — the
//! simulator is for loopback only.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::error::ApiError;
use super::fault::Fault;
use super::routes::{json, require_json};
use super::state::SimState;

type St = State<Arc<SimState>>;

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/counters", get(counters).delete(reset_counters))
        .route("/faults", get(faults).post(set_fault).delete(clear_faults))
        .route("/reset", post(reset))
        .route("/expire-tokens", post(expire_tokens))
        .route("/jobs", get(jobs))
        .route(
            "/jobs/{id}",
            get(job)
                .put(put_job)
                .patch(console_edit)
                .delete(console_delete),
        )
        .route("/scripts/{customer}/{action}/{kind}", get(script))
}

fn json_value(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    require_json(headers)?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

async fn counters(State(st): St) -> Response {
    (StatusCode::OK, axum::Json(st.counters())).into_response()
}

async fn reset_counters(State(st): St) -> StatusCode {
    st.reset_counters();
    StatusCode::NO_CONTENT
}

async fn faults(State(st): St) -> Response {
    (StatusCode::OK, axum::Json(st.faults())).into_response()
}

async fn set_fault(State(st): St, headers: HeaderMap, body: Bytes) -> Result<StatusCode, ApiError> {
    let value = json_value(&headers, &body)?;
    let fault: Fault = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("not a fault: {e}")))?;
    if let Some(problem) = fault.problem() {
        return Err(ApiError::bad_request(problem));
    }
    st.set_fault(fault);
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_faults(State(st): St) -> StatusCode {
    st.clear_faults();
    StatusCode::NO_CONTENT
}

async fn reset(State(st): St) -> StatusCode {
    st.reset();
    StatusCode::NO_CONTENT
}

async fn expire_tokens(State(st): St) -> StatusCode {
    st.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn jobs(State(st): St) -> Response {
    let mut body = Vec::from(&b"["[..]);
    for (i, job) in st.jobs().iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend(job.to_bytes());
    }
    body.push(b']');
    json(StatusCode::OK, body)
}

async fn job(State(st): St, id: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let job = st
        .get_job(&id)
        .ok_or_else(|| ApiError::job_not_found(&id))?;
    Ok(json(StatusCode::OK, job.to_bytes()))
}

/// Store the document verbatim; answers the job as GET renders it.
async fn put_job(
    State(st): St,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let doc = json_value(&headers, &body)?;
    let job = st.put_job(doc, Some(&id))?;
    Ok(json(StatusCode::OK, job.to_bytes()))
}

/// A console edit: an RFC 7386 merge patch, stamped by the console user.
async fn console_edit(
    State(st): St,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let patch = json_value(&headers, &body)?;
    let job = st.console_edit(&id, patch)?;
    Ok(json(StatusCode::OK, job.to_bytes()))
}

async fn console_delete(
    State(st): St,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    if st.console_delete(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::job_not_found(&id))
    }
}

/// The decoded content stored at `<customerId>/<actionId>/<Script|DetectionScript>`.
async fn script(
    State(st): St,
    parts: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((customer, action, kind)) = parts?;
    let path = format!("{customer}/{action}/{kind}");
    let content = st
        .script(&path)
        .ok_or_else(|| ApiError::not_found(format!("no script stored at {path}")))?;
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/octet-stream")],
        content,
    )
        .into_response())
}
