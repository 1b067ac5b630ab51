//! `?watch=true`: newline-delimited `WatchEvent`s from a resourceVersion, with bookmarks,
//! timeouts, initial events, selectors, and 410 Gone when the history no longer reaches back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::error::ApiError;
use super::selector::Selectors;
use super::store::{Change, ChangeType, Target, WatchMsg};

/// Watch query parameters.
#[derive(Clone, Debug, Default)]
pub struct WatchQuery {
    pub selectors: Selectors,
    pub resource_version: Option<String>,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub meta_only: bool,
}

/// How objects are shown to this client: the requested apiVersion, or metadata only.
pub fn present(obj: &Value, t: &Target, meta_only: bool) -> Value {
    if meta_only {
        json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })
    } else {
        let mut o = obj.clone();
        o["apiVersion"] = json!(t.rt.api_version(&t.version));
        o
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn event_line(kind: &str, object: Value) -> Bytes {
    line(&json!({"type": kind, "object": object}))
}

fn gone_line(message: String) -> Bytes {
    event_line("ERROR", ApiError::gone(message).status_body())
}

fn bookmark_line(t: &Target, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        json!({"kind": t.rt.kind, "apiVersion": t.rt.api_version(&t.version), "metadata": metadata}),
    )
}

/// What this watch shows of a change, if anything: a modification that moves an object into
/// or out of the selectors is ADDED or DELETED, as the real watch cache reports it.
fn render_change(c: &Change, t: &Target, q: &WatchQuery) -> Option<Bytes> {
    if c.group != t.rt.group || c.plural != t.rt.plural {
        return None;
    }
    if t.namespace.as_ref().is_some_and(|ns| *ns != c.namespace) {
        return None;
    }
    let now = q.selectors.matches(&c.object);
    let before = c.old.as_ref().map(|o| q.selectors.matches(o));
    let (kind, object) = match (c.kind, before, now) {
        (ChangeType::Added, _, true) => ("ADDED", c.object.clone()),
        (ChangeType::Modified, Some(true), true) => ("MODIFIED", c.object.clone()),
        (ChangeType::Modified, Some(false) | None, true) => ("ADDED", c.object.clone()),
        (ChangeType::Modified, Some(true), false) => {
            // The previous state, at this change's resourceVersion.
            let mut old = c.old.clone().unwrap_or(Value::Null);
            old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
            ("DELETED", old)
        }
        (ChangeType::Deleted, _, true) => ("DELETED", c.object.clone()),
        _ => return None,
    };
    Some(event_line(kind, present(&object, t, q.meta_only)))
}

/// Starts a watch: the initial lines are worked out under the lock, together with the
/// subscription to later changes, so nothing falls between them.
pub fn start(shared: &Arc<Shared>, t: Target, q: WatchQuery) -> Result<Response, ApiError> {
    let (initial, gone, mut rx, mut last_seen, lag) = {
        let state = shared.lock();
        let rx = state.events.subscribe();
        let current = state.rv;
        let mut initial = Vec::new();
        let mut gone = None;
        let rv = q.resource_version.as_deref().filter(|s| !s.is_empty());
        if q.send_initial_events {
            if !q.bookmarks {
                return Err(ApiError::invalid(
                    &t.rt,
                    "",
                    &[(
                        "allowWatchBookmarks".into(),
                        "Required value: sendInitialEvents requires allowWatchBookmarks".into(),
                    )],
                ));
            }
            for obj in state.matching(&t, &q.selectors) {
                initial.push(event_line("ADDED", present(&obj, &t, q.meta_only)));
            }
            initial.push(bookmark_line(&t, current, true));
        } else {
            match rv {
                None | Some("0") => {
                    for obj in state.matching(&t, &q.selectors) {
                        initial.push(event_line("ADDED", present(&obj, &t, q.meta_only)));
                    }
                }
                Some(s) => {
                    let from: u64 = s.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version: {s:?}"))
                    })?;
                    if from < state.floor {
                        gone = Some(format!("too old resource version: {from} ({current})"));
                    } else {
                        for c in state.history.iter().filter(|c| c.rv > from) {
                            if let Some(l) = render_change(c, &t, &q) {
                                initial.push(l);
                            }
                        }
                    }
                }
            }
        }
        (initial, gone, rx, current, state.lag)
    };

    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let bookmark_every = shared.opts.bookmark_interval;
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        if let Some(message) = gone {
            let _ = tx.send(gone_line(message)).await;
            return;
        }
        let deadline = q.timeout.map(|d| Instant::now() + d);
        let mut ticker = tokio::time::interval_at(Instant::now() + bookmark_every, bookmark_every);
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(WatchMsg::Change(c)) => {
                        if let Some(lag) = lag {
                            // A lagging cache: each event arrives `lag` after it happened.
                            tokio::time::sleep_until(Instant::from_std(c.at + lag)).await;
                        }
                        if let Some(l) = render_change(&c, &t, &q)
                            && tx.send(l).await.is_err()
                        {
                            return;
                        }
                        // Only once delivered: a bookmark must not promise what was not sent.
                        last_seen = last_seen.max(c.rv);
                    }
                    Ok(WatchMsg::Compacted) => {
                        let _ = tx.send(gone_line(format!("too old resource version: {last_seen} (compacted)"))).await;
                        return;
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx.send(gone_line(format!("too old resource version: {last_seen} (watcher fell behind)"))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = ticker.tick(), if q.bookmarks => {
                    if tx.send(bookmark_line(&t, last_seen, false)).await.is_err() {
                        return;
                    }
                }
                _ = until_deadline => {
                    if q.bookmarks {
                        let _ = tx.send(bookmark_line(&t, last_seen, false)).await;
                    }
                    return;
                }
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
            }
        }
    });

    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
