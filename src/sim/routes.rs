//! The API routes of the gateway and their handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Router, middleware};
use serde::Deserialize;

use super::admin;
use super::error::ApiError;
use super::gateway;
use super::job::{Caller, parse_request};
use super::render::{Rendered, Summary};
use super::state::SimState;
use crate::qualys::{IdList, values};

/// The API route templates: the keys of counters and the `route` of faults.
pub const ROUTES: [&str; 7] = [
    "POST /auth",
    "POST /pm/v1/deploymentjob",
    "GET /pm/v1/deploymentjob/{id}",
    "PATCH /pm/v1/deploymentjob/update/{id}",
    "GET /pm/v1/deploymentjobs/summary",
    "DELETE /pm/v1/deploymentjobs",
    "POST /pm/v1/deploymentjobs/update/status/{action}",
];

/// The most records a list call reaches (Qualys: "at most 10,000 records in total").
pub const RECORD_CAP: usize = 10_000;

/// The whole application: API routes behind the gateway layer, `/_sim/` admin routes, and a
/// Qualys-style 404 for everything else.
pub(crate) fn router(state: Arc<SimState>) -> Router {
    let api = Router::new()
        .route("/auth", post(auth))
        .route("/pm/v1/deploymentjob", post(create_job))
        .route("/pm/v1/deploymentjob/{id}", get(get_job))
        .route("/pm/v1/deploymentjob/update/{id}", patch(update_job))
        .route("/pm/v1/deploymentjobs/summary", get(list_summaries))
        .route("/pm/v1/deploymentjobs", delete(delete_jobs))
        .route(
            "/pm/v1/deploymentjobs/update/status/{action}",
            post(change_status),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gateway::gateway,
        ));
    Router::new()
        .merge(api)
        .nest("/_sim", admin::router())
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(state)
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

/// The caller, authenticated by the gateway layer.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("no authenticated caller"))
    }
}

/// A JSON response from bytes already serialised.
pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

fn job_response(status: StatusCode, job: &Rendered) -> Response {
    json(status, job.to_bytes())
}

/// Bodies must be JSON; a missing content type or `*/*` is taken as JSON.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime.is_empty() || mime == "application/json" || mime == "*/*" || mime.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Content-Type {mime} is not supported; send application/json"
        )))
    }
}

#[derive(Deserialize)]
struct AuthForm {
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    permissions: Option<String>,
}

/// `POST /auth`: a JWT as text/plain, 201.
async fn auth(
    State(st): State<Arc<SimState>>,
    form: Result<Form<AuthForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let Form(form) = form.map_err(|e| ApiError::bad_request(format!("form: {}", e.body_text())))?;
    if form.token.as_deref() != Some("true") {
        return Err(ApiError::bad_request("token: must be true"));
    }
    if form
        .permissions
        .as_deref()
        .is_some_and(|p| p != "true" && p != "false")
    {
        return Err(ApiError::bad_request("permissions: must be true or false"));
    }
    let (Some(username), Some(password)) = (form.username, form.password) else {
        return Err(ApiError::bad_request("username and password are required"));
    };
    let user = st
        .login(&username, &password)
        .ok_or_else(|| ApiError::unauthorized("Invalid username or password"))?;
    let token = st.issue_token(user);
    Ok((
        StatusCode::CREATED,
        [(CONTENT_TYPE, "text/plain;charset=UTF-8")],
        token,
    )
        .into_response())
}

/// `POST /pm/v1/deploymentjob`: 201 + the job.
async fn create_job(
    State(st): State<Arc<SimState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let req = parse_request(&body)?;
    let job = st.create_job(req, &caller)?;
    Ok(job_response(StatusCode::CREATED, &job))
}

/// `GET /pm/v1/deploymentjob/{id}`.
async fn get_job(
    State(st): State<Arc<SimState>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let job = st.get_job_as(&id, &caller)?;
    Ok(job_response(StatusCode::OK, &job))
}

/// `PATCH /pm/v1/deploymentjob/update/{id}`: 200 + the job after the update.
async fn update_job(
    State(st): State<Arc<SimState>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    ignored: Option<axum::Extension<super::fault::IgnoredFields>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    require_json(&headers)?;
    let mut req = parse_request(&body)?;
    if let Some(axum::Extension(super::fault::IgnoredFields(fields))) = ignored {
        for f in fields {
            req.map.remove(&f);
        }
    }
    let job = st.update_job(&id, req, &caller)?;
    Ok(job_response(StatusCode::OK, &job))
}

/// `GET /pm/v1/deploymentjobs/summary?platform=&pageNumber=&pageSize=`: a bare array.
async fn list_summaries(
    State(st): State<Arc<SimState>>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let platform = match query.get("platform").map(String::as_str) {
        None | Some("") => None,
        Some(p) if values::PLATFORMS.contains(&p) => Some(p),
        Some(p) => {
            return Err(ApiError::bad_request(format!(
                "platform: {p:?} is not one of Windows, Linux"
            )));
        }
    };
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                ApiError::bad_request(format!("{name}: {v:?} is not a non-negative integer"))
            }),
        }
    };
    let page_number = number("pageNumber", 0)?;
    let page_size = number("pageSize", 10)?;
    if page_size == 0 {
        return Err(ApiError::bad_request("pageSize must be at least 1"));
    }
    if page_size > RECORD_CAP {
        return Err(ApiError::result_limit(format!(
            "pageSize must not exceed {RECORD_CAP}: the API returns at most {RECORD_CAP} records"
        )));
    }
    // A capping gateway answers fewer than asked, and pages by what it really returns.
    let page_size = st
        .config
        .max_page_size
        .map_or(page_size, |max| page_size.min(max.max(1)));
    let offset = page_number.saturating_mul(page_size);
    let (total, page) = st.summary_page(platform, offset, page_size, &caller);
    let end = offset.saturating_add(page_size);
    if total > RECORD_CAP && end > RECORD_CAP {
        return Err(ApiError::result_limit(format!(
            "result limit reached: {total} records match but at most the first {RECORD_CAP} can be read; narrow the query"
        )));
    }
    let items: Vec<Summary<'_>> = page
        .iter()
        .map(|(job, refs)| Summary::of(job, *refs))
        .collect();
    let body = serde_json::to_vec(&items)
        .map_err(|e| ApiError::internal(format!("cannot serialise the page: {e}")))?;
    Ok(json(StatusCode::OK, body))
}

/// `{"ids": [...]}`, non-empty.
fn parse_ids(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, ApiError> {
    require_json(headers)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let list: IdList = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!(
            "{path}: {} (expected {{\"ids\": [\"<job id>\", ...]}})",
            e.into_inner()
        ))
    })?;
    if list.ids.is_empty() {
        return Err(ApiError::bad_request("ids must not be empty"));
    }
    Ok(list.ids)
}

/// `DELETE /pm/v1/deploymentjobs`: one result per id.
async fn delete_jobs(
    State(st): State<Arc<SimState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ids = parse_ids(&headers, &body)?;
    let results = st.delete_jobs(&ids, &caller)?;
    Ok((StatusCode::OK, axum::Json(results)).into_response())
}

/// `POST /pm/v1/deploymentjobs/update/status/{Enabled|Disabled}`: one result per id.
async fn change_status(
    State(st): State<Arc<SimState>>,
    caller: Caller,
    action: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path(action) = action?;
    let enable = match action.as_str() {
        values::ENABLED => true,
        values::DISABLED => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "action: {other:?} is not one of Enabled, Disabled"
            )));
        }
    };
    let ids = parse_ids(&headers, &body)?;
    let results = st.set_status(&ids, enable, &caller)?;
    Ok((StatusCode::OK, axum::Json(results)).into_response())
}
