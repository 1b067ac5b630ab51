//! The HTTP face: parse the path the way the API server lays resources out, log the request,
//! inject armed faults, dispatch to the store or the watch.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::error::ApiError;
use super::log::{PatchType, RequestRecord, Verb};
use super::registry::Registry;
use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::store::{ListQuery, Target, WriteCtx};
use super::watch::{self, WatchQuery, present};

enum Route {
    Version,
    CoreVersions,
    GroupList,
    ResourceList { group: String, version: String },
    Collection(Target),
    Object(Target),
    Unknown,
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn resource_route(registry: &Registry, group: &str, version: &str, rest: &[&str]) -> Route {
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && registry
            .lookup(group, version, rest[2])
            .is_some_and(|rt| rt.namespaced);
    let (namespace, rest) = if namespaced_path {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let Some((plural, rest)) = rest.split_first() else {
        return Route::Unknown;
    };
    let Some(rt) = registry.lookup(group, version, plural) else {
        return Route::Unknown;
    };
    let target = |name: Option<&str>, subresource: Option<&str>| Target {
        rt: rt.clone(),
        version: version.to_string(),
        namespace: namespace.clone(),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
    };
    match rest {
        [] if rt.namespaced || namespace.is_none() => Route::Collection(target(None, None)),
        [name] if rt.namespaced == namespace.is_some() => Route::Object(target(Some(name), None)),
        [name, "status"] if rt.status_subresource && rt.namespaced == namespace.is_some() => {
            Route::Object(target(Some(name), Some("status")))
        }
        _ => Route::Unknown,
    }
}

fn route(registry: &Registry, path: &str) -> Route {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::GroupList,
        ["api", "v1"] => Route::ResourceList {
            group: String::new(),
            version: "v1".into(),
        },
        ["apis", g, v] if registry.group_version_served(g, v) => Route::ResourceList {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["api", v, rest @ ..] => resource_route(registry, "", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(registry, g, v, rest),
        _ => Route::Unknown,
    }
}

fn verb_of(method: &Method, route: &Route, params: &Params) -> Verb {
    match route {
        Route::Version | Route::CoreVersions | Route::GroupList | Route::ResourceList { .. } => {
            Verb::Discovery
        }
        Route::Unknown => Verb::Unknown,
        Route::Collection(_) => match *method {
            Method::GET if params.flag("watch") => Verb::Watch,
            Method::GET => Verb::List,
            Method::POST => Verb::Create,
            Method::DELETE => Verb::DeleteCollection,
            _ => Verb::Unknown,
        },
        Route::Object(_) => match *method {
            Method::GET => Verb::Get,
            Method::PUT => Verb::Update,
            Method::PATCH => Verb::Patch,
            Method::DELETE => Verb::Delete,
            _ => Verb::Unknown,
        },
    }
}

fn json_response(code: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (status, axum::Json(body)).into_response()
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-qpm-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "none (fake API server)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

fn selectors(params: &Params, t: &Target) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(params.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(params.get("fieldSelector").unwrap_or(""), &t.rt)?,
    })
}

fn accepts_metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// The single handler behind every path.
pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params(
        Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map(|q| q.0)
            .unwrap_or_default(),
    );
    let route = route(&shared.lock().registry, uri.path());
    let verb = verb_of(&method, &route, &params);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let target = match &route {
        Route::Collection(t) | Route::Object(t) => Some(t),
        _ => None,
    };
    let mut record = RequestRecord {
        verb,
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        group: target.map(|t| t.rt.group.clone()).unwrap_or_default(),
        version: target.map(|t| t.version.clone()).unwrap_or_default(),
        resource: target.map(|t| t.rt.plural.clone()).unwrap_or_default(),
        subresource: target.and_then(|t| t.subresource.clone()),
        namespace: target.and_then(|t| t.namespace.clone()),
        name: target.and_then(|t| t.name.clone()),
        field_manager: params.get("fieldManager").map(str::to_string),
        patch_type: (verb == Verb::Patch)
            .then(|| PatchType::from_content_type(content_type))
            .flatten(),
        force: params.flag("force"),
        dry_run: params.get("dryRun") == Some("All"),
        user_agent,
        status: 0,
    };

    let fault = shared.lock().take_fault(&record);
    let response = match fault {
        Some(err) => err.into_response(),
        None => dispatch(
            &shared,
            route,
            &record,
            &params,
            &headers,
            content_type,
            &body,
        )
        .unwrap_or_else(IntoResponse::into_response),
    };
    record.status = response.status().as_u16();
    if shared.opts.record_requests {
        shared.lock().log.push(record);
    }
    response
}

fn dispatch(
    shared: &Arc<Shared>,
    route: Route,
    record: &RequestRecord,
    params: &Params,
    headers: &HeaderMap,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let meta_only = accepts_metadata_only(headers);
    let ctx = WriteCtx {
        field_manager: record.field_manager.clone(),
        default_manager: record
            .user_agent
            .as_deref()
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string(),
        dry_run: record.dry_run,
        force: record.force,
    };
    if ctx.field_manager.as_ref().is_some_and(|m| m.len() > 128) {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    match (route, record.verb) {
        (Route::Version, _) => Ok(json_response(200, version_info())),
        (Route::CoreVersions, _) => Ok(json_response(
            200,
            shared.lock().registry.core_versions(&shared.address),
        )),
        (Route::GroupList, _) => Ok(json_response(200, shared.lock().registry.group_list())),
        (Route::ResourceList { group, version }, _) => Ok(json_response(
            200,
            shared.lock().registry.resource_list(&group, &version),
        )),
        (Route::Unknown, _) => Err(ApiError::unknown_resource()),
        (Route::Collection(t), Verb::Watch) => {
            let q = WatchQuery {
                selectors: selectors(params, &t)?,
                resource_version: params.get("resourceVersion").map(str::to_string),
                timeout: params
                    .get("timeoutSeconds")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_secs),
                bookmarks: params.flag("allowWatchBookmarks"),
                send_initial_events: params.flag("sendInitialEvents"),
                meta_only,
            };
            watch::start(shared, t, q)
        }
        (Route::Collection(t), Verb::List) => {
            let q = ListQuery {
                selectors: selectors(params, &t)?,
                limit: params.get("limit").and_then(|s| s.parse().ok()),
                continue_token: params
                    .get("continue")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                resource_version: params.get("resourceVersion").map(str::to_string),
                resource_version_match: params.get("resourceVersionMatch").map(str::to_string),
            };
            let mut list = shared.lock().list(&t, &q)?;
            if let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    *item = present(item, &t, meta_only);
                }
            }
            if meta_only {
                list["apiVersion"] = json!("meta.k8s.io/v1");
                list["kind"] = json!("PartialObjectMetadataList");
            }
            Ok(json_response(200, list))
        }
        (Route::Collection(t), Verb::Create) => {
            if t.namespace.is_none() && t.rt.namespaced {
                return Err(ApiError::method_not_allowed(
                    "creating a namespaced object without a namespace in the path",
                ));
            }
            let obj = shared.lock().create(&t, body, &ctx)?;
            Ok(json_response(201, present(&obj, &t, meta_only)))
        }
        (Route::Object(t), Verb::Get) => {
            let obj = shared.lock().get(&t)?;
            Ok(json_response(200, present(&obj, &t, meta_only)))
        }
        (Route::Object(t), Verb::Update) => {
            let obj = shared.lock().replace(&t, body, &ctx)?;
            Ok(json_response(200, present(&obj, &t, meta_only)))
        }
        (Route::Object(t), Verb::Patch) => {
            let ptype = PatchType::from_content_type(content_type).ok_or_else(|| {
                ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"),
                )
            })?;
            let (code, obj) = shared.lock().patch(&t, ptype, body, &ctx)?;
            Ok(json_response(code, present(&obj, &t, meta_only)))
        }
        (Route::Object(t), Verb::Delete) => {
            let obj = shared.lock().delete(&t, body, &ctx)?;
            Ok(json_response(200, present(&obj, &t, meta_only)))
        }
        (_, Verb::DeleteCollection) => Err(ApiError::method_not_allowed("deletecollection")),
        _ => Err(ApiError::method_not_allowed("this method on this path")),
    }
}
