//! One reconcile of one DeploymentJob: the finalizer's Apply and Cleanup, each handing the
//! work to the engine and writing the outcome back as status and events. Thin on purpose: the
//! engine decides, this adapts it to Kubernetes.

use super::connections::{ConnectionError, Resolved};
use super::context::{Shared, display, display_order, key_of};
use super::status::{StatusWriter, compose, paused};
use crate::api::{
    ANNOTATION_FORCE_ORPHAN, ANNOTATION_PAUSED, DeploymentJob, DriftPolicy, FINALIZER, KeyRef,
    Reason, ScriptSource, ScriptStore, validate::UnknownFields, validate_manifest_with,
};
use crate::reconcile::engine::{self, CleanupOptions};
use crate::reconcile::{
    CacheSlot, Claims, Context, EngineState, Mode, NoticeType, Outcome, ScriptResolver,
};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Errors that make the controller retry with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A retryable outcome (rate limited, gateway unavailable, a conflict on status).
    #[error("{message}")]
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The API server refused a status write (422): retrying the same write cannot help, so
    /// the resource waits for a change (of its spec, or of the CRD).
    #[error("{0}")]
    Refused(String),
}

impl Error {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Retry { retry_after, .. } => *retry_after,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            Error::Kube(_) | Error::Refused(_) => None,
        }
    }

    /// The `error` label of `qpm_reconcile_errors_total`: the kind of failure, never its text
    /// (which may be long or name a resource).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Retry { .. } => "retry",
            Error::Refused(_) => "refused",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                kube::runtime::finalizer::Error::AddFinalizer(_)
                | kube::runtime::finalizer::Error::RemoveFinalizer(_) => "finalizer",
                kube::runtime::finalizer::Error::UnnamedObject => "unnamed",
                kube::runtime::finalizer::Error::InvalidFinalizer => "invalid_finalizer",
            },
        }
    }

    fn is_refused(&self) -> bool {
        match self {
            Error::Refused(_) => true,
            Error::Finalizer(inner) => matches!(
                inner.as_ref(),
                kube::runtime::finalizer::Error::ApplyFailed(Error::Refused(_))
                    | kube::runtime::finalizer::Error::CleanupFailed(Error::Refused(_))
            ),
            _ => false,
        }
    }
}

fn is_true(dj: &DeploymentJob, annotation: &str) -> bool {
    dj.annotations()
        .get(annotation)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The controller's reconcile function.
///
/// Boxed: kube's controller needs a `Send` future, and the compiler cannot prove it through
/// the finalizer helper's borrowed arguments without the concrete type erased here.
pub fn reconcile(
    dj: Arc<DeploymentJob>,
    ctx: Arc<Shared>,
) -> BoxFuture<'static, Result<Action, Error>> {
    Box::pin(reconcile_inner(dj, ctx))
}

// Every log line of the reconcile carries the resource and its job.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(
        namespace = %dj.namespace().unwrap_or_default(),
        name = %dj.name_any(),
        jobId = %dj.status.as_ref().and_then(|s| s.job_id.clone()).unwrap_or_default(),
    )
)]
async fn reconcile_inner(dj: Arc<DeploymentJob>, ctx: Arc<Shared>) -> Result<Action, Error> {
    let mut measurer = ctx.metrics.measure_reconcile();
    let key = key_of(&dj);
    let api: Api<DeploymentJob> =
        Api::namespaced(ctx.kube.clone(), &dj.namespace().unwrap_or_default());
    let inner = ctx.clone();
    let result = finalizer(&api, FINALIZER, dj, move |event| {
        let ctx = inner.clone();
        async move {
            match event {
                Finalizer::Apply(dj) => apply(dj, &ctx).await,
                Finalizer::Cleanup(dj) => cleanup(dj, &ctx).await,
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => {
            ctx.reset_backoff(&key);
            measurer.set_result(ctx.last_reason(&key).unwrap_or_else(|| "ok".to_string()));
        }
        Err(e) => measurer.set_failure(e.metric_label()),
    }
    result
}

/// Retries with per-resource exponential backoff and jitter, capped; honours Retry-After.
pub fn error_policy(dj: Arc<DeploymentJob>, error: &Error, ctx: Arc<Shared>) -> Action {
    let key = key_of(&dj);
    if error.is_refused() {
        tracing::error!(resource = %display(&key), error = %error, "status write refused; stopped until the resource or the CRD changes");
        return Action::await_change();
    }
    let backoff = ctx.next_retry_delay(&key);
    let delay = error.retry_after().map_or(backoff, |r| r.max(backoff));
    tracing::warn!(resource = %display(&key), error = %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

fn apply(dj: Arc<DeploymentJob>, ctx: &Shared) -> BoxFuture<'_, Result<Action, Error>> {
    Box::pin(apply_inner(dj, ctx))
}

async fn apply_inner(dj: Arc<DeploymentJob>, ctx: &Shared) -> Result<Action, Error> {
    let key = key_of(&dj);
    let namespace = dj.namespace().unwrap_or_default();
    let api: Api<DeploymentJob> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut writer = StatusWriter::new(api, &dj, ctx.metrics.clone()).checked(ctx.crd.clone());
    let previous = dj.status.clone().unwrap_or_default();

    if is_true(&dj, ANNOTATION_PAUSED) {
        let status = paused(&previous);
        ctx.set_reason(&key, Reason::Paused, ready_reason(&status));
        write(&mut writer, status).await?;
        return Ok(Action::await_change());
    }

    // Invalid specs make no API call at all. The controller tolerates fields a newer CRD adds.
    let raw = serde_json::to_value(dj.as_ref()).unwrap_or_default();
    if let Err(problems) = validate_manifest_with(&raw, UnknownFields::Ignore) {
        let message = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return stalled(ctx, &dj, &mut writer, Reason::InvalidSpec, message).await;
    }
    if let Some(cycle) = link_cycle(&ctx.store, &dj) {
        return stalled(
            ctx,
            &dj,
            &mut writer,
            Reason::InvalidSpec,
            format!("spec.job.linkedJobRef: the links form a cycle ({cycle})"),
        )
        .await;
    }

    if let Some(why) = ctx.crd.blocked() {
        return stalled(ctx, &dj, &mut writer, Reason::CrdMismatch, why).await;
    }

    let conn = match ctx.connections.resolve(&dj).await {
        Ok(c) => c,
        Err(e) if e.is_transient() => {
            return Err(Error::Retry {
                message: e.to_string(),
                retry_after: None,
            });
        }
        Err(e) => {
            let reason = match e {
                ConnectionError::NotAllowed { .. } => Reason::Forbidden,
                _ => Reason::InvalidSpec,
            };
            return stalled(ctx, &dj, &mut writer, reason, e.to_string()).await;
        }
    };
    // One attempt for all the resources on a gateway that could not be reached, not one each.
    if let Some(wait) = ctx.connections.gateway_wait(&conn.id) {
        let mut outcome = Outcome::new(
            Reason::GatewayUnavailable,
            format!(
                "the gateway of connection {} could not be reached; trying again in {}s (one attempt for every resource on it)",
                conn.id,
                wait.as_secs().max(1)
            ),
        );
        outcome.retry_after = Some(wait);
        return without_engine(ctx, &dj, &mut writer, &outcome).await;
    }
    let scripts = fetch_scripts(ctx, &namespace, &dj).await?;
    let linked = parent_job_id(&ctx.store, &dj);
    let claims = StoreClaims {
        store: &ctx.store,
        me: &dj,
    };
    let engine_ctx = engine_context(ctx, &dj, &conn, &claims, &scripts, linked.as_deref());
    let mut state = EngineState::from_status(dj.status.as_ref());
    let outcome = engine::apply(&dj.spec, &mut state, &mut writer, &engine_ctx).await;
    if outcome.gateway_unreachable {
        ctx.connections.gateway_unreachable(&conn.id);
    } else {
        ctx.connections.gateway_reached(&conn.id);
    }
    if !matches!(outcome.reason, Reason::Unauthorized | Reason::Forbidden)
        && !outcome.gateway_unreachable
    {
        ctx.connections.worked(&key, &conn);
    }
    let report = dj.spec.effective_drift_policy() == DriftPolicy::Report;
    let status = compose(
        &writer.current,
        &state,
        &outcome,
        dj.metadata.generation,
        report,
    );
    if outcome.drift_corrected {
        ctx.metrics.drift_corrections.inc();
    }
    if let (Some(id), Some(ms)) = (&state.job_id, outcome.live_updated_ms) {
        ctx.note_seen(&conn, id, ms);
    }
    finish(ctx, &dj, &mut writer, status, &outcome).await
}

/// Write the status and events of an outcome and choose what happens next.
async fn finish(
    ctx: &Shared,
    dj: &DeploymentJob,
    writer: &mut StatusWriter,
    status: crate::api::DeploymentJobStatus,
    outcome: &Outcome,
) -> Result<Action, Error> {
    let key = key_of(dj);
    let ready = ready_reason(&status);
    write(writer, status).await?;
    publish(ctx, dj, outcome).await;
    ctx.set_reason(&key, outcome.reason, ready);
    match outcome.reason {
        Reason::RateLimited | Reason::GatewayUnavailable | Reason::Creating | Reason::Deleting => {
            Err(Error::Retry {
                message: outcome.message.clone(),
                retry_after: outcome.retry_after,
            })
        }
        _ => Ok(Action::requeue(ctx.resync_delay())),
    }
}

/// The reason of a status's Ready condition (what `qpm_managed_jobs` counts): a resync that
/// finds nothing to do keeps a `Created`, and a retry keeps the Ready it had.
fn ready_reason(status: &crate::api::DeploymentJobStatus) -> Option<Reason> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition_type::READY)
        .and_then(|c| Reason::from_name(&c.reason))
}

async fn write(
    writer: &mut StatusWriter,
    status: crate::api::DeploymentJobStatus,
) -> Result<(), Error> {
    match writer.write(status).await {
        Ok(()) => Ok(()),
        // Someone (a newer generation, another replica) wrote since this reconcile read the
        // object: retry from the fresh object rather than overwrite it.
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Retry {
            message: format!("status changed while reconciling ({}); retrying", e.message),
            retry_after: Some(Duration::from_millis(500)),
        }),
        Err(kube::Error::Api(e)) if e.code == 422 => {
            let message = super::status::refusal(&e);
            writer.refused(&message).await;
            Err(Error::Refused(message))
        }
        Err(e) => Err(Error::Kube(e)),
    }
}

async fn stalled(
    ctx: &Shared,
    dj: &DeploymentJob,
    writer: &mut StatusWriter,
    reason: Reason,
    message: String,
) -> Result<Action, Error> {
    let mut outcome = Outcome::new(reason, message.clone());
    outcome.events.push(crate::reconcile::Notice {
        type_: NoticeType::Warning,
        reason: reason.as_str(),
        note: message,
    });
    without_engine(ctx, dj, writer, &outcome).await
}

/// Report an outcome decided before the engine ran (its memory in status stays as it was).
async fn without_engine(
    ctx: &Shared,
    dj: &DeploymentJob,
    writer: &mut StatusWriter,
    outcome: &Outcome,
) -> Result<Action, Error> {
    let state = EngineState::from_status(dj.status.as_ref());
    let status = compose(
        &writer.current,
        &state,
        outcome,
        dj.metadata.generation,
        false,
    );
    finish(ctx, dj, writer, status, outcome).await
}

fn cleanup(dj: Arc<DeploymentJob>, ctx: &Shared) -> BoxFuture<'_, Result<Action, Error>> {
    Box::pin(cleanup_inner(dj, ctx))
}

async fn cleanup_inner(dj: Arc<DeploymentJob>, ctx: &Shared) -> Result<Action, Error> {
    let key = key_of(&dj);
    let namespace = dj.namespace().unwrap_or_default();
    let api: Api<DeploymentJob> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut writer = StatusWriter::new(api, &dj, ctx.metrics.clone()).checked(ctx.crd.clone());
    let force_orphan = is_true(&dj, ANNOTATION_FORCE_ORPHAN);
    if is_true(&dj, ANNOTATION_PAUSED) {
        publish_one(
            ctx,
            &dj,
            EventType::Normal,
            "DeletingWhilePaused",
            "the resource is being deleted: deletion proceeds although pm.qualys.io/paused is set",
        )
        .await;
    }
    let mut state = EngineState::from_status(dj.status.as_ref());
    let children = children_of(&ctx.store, &dj);
    let options = CleanupOptions {
        force_orphan,
        children,
    };

    let conn: Option<Resolved> = match ctx.connections.resolve(&dj).await {
        Ok(c) => Some(c),
        Err(e) => match ctx.connections.last_good(&key) {
            Some(c) => {
                publish_one(
                    ctx,
                    &dj,
                    EventType::Normal,
                    "UsingLastGoodCredentials",
                    &format!(
                        "{e}; deleting with the credentials that last worked for this resource"
                    ),
                )
                .await;
                Some(c)
            }
            None => None,
        },
    };
    let claims = StoreClaims {
        store: &ctx.store,
        me: &dj,
    };
    let outcome = match &conn {
        Some(conn) => {
            let scripts = NoScriptsNeeded;
            let engine_ctx = engine_context(ctx, &dj, conn, &claims, &scripts, None);
            engine::cleanup(&dj.spec, &mut state, &mut writer, &engine_ctx, &options).await
        }
        None => engine::release_without_qualys(&dj.spec, &state, &claims, force_orphan)
            .unwrap_or_else(|| {
                Outcome::new(
                    Reason::DeletionBlocked,
                    format!(
                        "cannot delete job {}: no usable Qualys credentials (the connection Secret is gone and none worked before in this process); \
                         restore the Secret, or set the annotation pm.qualys.io/force-orphan: \"true\" (or deletionPolicy: Orphan) to leave the job",
                        state.job_id.clone().unwrap_or_default()
                    ),
                )
            }),
    };
    if outcome.finished {
        publish(ctx, &dj, &outcome).await;
        ctx.set_reason_gone(&key);
        ctx.connections.forget(&key);
        if let Some(uid) = &dj.metadata.uid {
            ctx.desired.forget(uid);
        }
        return Ok(Action::await_change());
    }
    let status = compose(
        &writer.current,
        &state,
        &outcome,
        dj.metadata.generation,
        false,
    );
    let result = finish(ctx, &dj, &mut writer, status, &outcome).await;
    match outcome.reason {
        // Keep the finalizer: re-evaluated when children go, credentials return or an annotation changes.
        Reason::DeletionBlocked => Err(Error::Retry {
            message: outcome.message.clone(),
            retry_after: Some(Duration::from_secs(30)),
        }),
        _ => result.and(Err(Error::Retry {
            message: outcome.message.clone(),
            retry_after: outcome.retry_after,
        })),
    }
}

/// The engine's view of one reconcile of `dj` through `conn`.
fn engine_context<'a>(
    ctx: &'a Shared,
    dj: &'a DeploymentJob,
    conn: &'a Resolved,
    claims: &'a dyn Claims,
    scripts: &'a dyn ScriptResolver,
    linked_job_id: Option<&'a str>,
) -> Context<'a> {
    Context {
        client: &conn.client,
        directory: &conn.directory,
        claims,
        scripts,
        linked_job_id,
        mode: Mode::Controller,
        generation: dj.metadata.generation,
        listing_max_age: ctx.settings.listing_max_age,
        desired_cache: dj.metadata.uid.as_deref().map(|key| CacheSlot {
            cache: &ctx.desired,
            key,
        }),
    }
}

struct NoScriptsNeeded;
impl ScriptResolver for NoScriptsNeeded {
    fn resolve(&self, _: &ScriptSource) -> Result<Vec<u8>, String> {
        Err("scripts are not read while deleting".into())
    }
}

/// Scripts read from the cluster before the engine runs (the engine's resolver is synchronous).
struct FetchedScripts(HashMap<(ScriptStore, KeyRef), Result<Vec<u8>, String>>);

impl ScriptResolver for FetchedScripts {
    fn resolve(&self, source: &ScriptSource) -> Result<Vec<u8>, String> {
        let (store, r) = source
            .target()
            .ok_or("names neither a ConfigMap nor a Secret")?;
        self.0
            .get(&(store, r.clone()))
            .cloned()
            .unwrap_or_else(|| Err("was not read".into()))
    }
}

async fn fetch_scripts(
    ctx: &Shared,
    namespace: &str,
    dj: &DeploymentJob,
) -> Result<FetchedScripts, Error> {
    let mut out = HashMap::new();
    // Collected first: an iterator of closures held across an await defeats the Send check.
    let targets: Vec<(ScriptStore, KeyRef)> = dj
        .spec
        .job
        .script_sources()
        .filter_map(|s| s.target().map(|(store, r)| (store, r.clone())))
        .collect();
    for (store, r) in targets {
        if out.contains_key(&(store, r.clone())) {
            continue;
        }
        let value = if store == ScriptStore::Secret {
            let api: Api<Secret> = Api::namespaced(ctx.kube.clone(), namespace);
            match api.get_opt(&r.name).await? {
                None => Err(format!("Secret {:?} does not exist", r.name)),
                Some(s) => super::connections::secret_data(&s)
                    .remove(&r.key)
                    .ok_or_else(|| format!("Secret {:?} has no key {:?}", r.name, r.key)),
            }
        } else {
            let api: Api<ConfigMap> = Api::namespaced(ctx.kube.clone(), namespace);
            match api.get_opt(&r.name).await? {
                None => Err(format!("ConfigMap {:?} does not exist", r.name)),
                Some(cm) => cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| {
                        cm.binary_data
                            .as_ref()
                            .and_then(|d| d.get(&r.key))
                            .map(|b| b.0.clone())
                    })
                    .ok_or_else(|| format!("ConfigMap {:?} has no key {:?}", r.name, r.key)),
            }
        };
        out.insert((store, r), value);
    }
    Ok(FetchedScripts(out))
}

/// The linkedJobRef parent's job id, when it has one.
fn parent_job_id(store: &Store<DeploymentJob>, dj: &DeploymentJob) -> Option<String> {
    let parent = dj.spec.job.linked_job_ref.as_ref()?;
    let r =
        ObjectRef::<DeploymentJob>::new(&parent.name).within(&dj.namespace().unwrap_or_default());
    store.get(&r)?.status.as_ref()?.job_id.clone()
}

/// A linkedJobRef chain that comes back to `dj`, as text.
fn link_cycle(store: &Store<DeploymentJob>, dj: &DeploymentJob) -> Option<String> {
    let namespace = dj.namespace().unwrap_or_default();
    let mut path = vec![dj.name_any()];
    let mut next = dj.spec.job.linked_job_ref.as_ref().map(|r| r.name.clone());
    while let Some(name) = next {
        if path.contains(&name) {
            path.push(name);
            return Some(path.join(" → "));
        }
        path.push(name.clone());
        if path.len() > 64 {
            return None;
        }
        next = store
            .get(&ObjectRef::new(&name).within(&namespace))
            .and_then(|p| p.spec.job.linked_job_ref.as_ref().map(|r| r.name.clone()));
    }
    None
}

/// Other resources whose linkedJobRef names `dj`, in the display form the engine names them by.
pub fn children_of(store: &Store<DeploymentJob>, dj: &DeploymentJob) -> Vec<String> {
    let namespace = dj.namespace().unwrap_or_default();
    let name = dj.name_any();
    let mut out: Vec<String> = store
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|c| {
            c.spec
                .job
                .linked_job_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        })
        .map(|c| display(&key_of(c)).to_string())
        .collect();
    out.sort();
    out
}

/// JobClaimed: another resource already manages the job. The one bound first (its status
/// holds the id) keeps it; between two that only name it in spec.jobId, the older one.
struct StoreClaims<'a> {
    store: &'a Store<DeploymentJob>,
    me: &'a DeploymentJob,
}

impl Claims for StoreClaims<'_> {
    fn claimed_by(&self, job_id: &str) -> Option<String> {
        let me = key_of(self.me);
        let mine = self.me.status.as_ref().and_then(|s| s.job_id.as_deref()) == Some(job_id);
        let my_age = self.me.creation_timestamp();
        self.store.state().iter().find_map(|o| {
            let other = key_of(o);
            if other == me || o.metadata.deletion_timestamp.is_some() {
                return None;
            }
            let bound = o.status.as_ref().and_then(|s| s.job_id.as_deref()) == Some(job_id);
            let named = o.spec.job_id.as_deref() == Some(job_id);
            // Equally old: the display forms decide, as they always have.
            let older = match o.creation_timestamp().partial_cmp(&my_age) {
                Some(Ordering::Equal) => display_order(&other, &me).is_lt(),
                by_age => by_age == Some(Ordering::Less),
            };
            (bound || (named && !mine && older)).then(|| display(&other).to_string())
        })
    }
}

async fn publish(ctx: &Shared, dj: &DeploymentJob, outcome: &Outcome) {
    for e in &outcome.events {
        let t = match e.type_ {
            NoticeType::Normal => EventType::Normal,
            NoticeType::Warning => EventType::Warning,
        };
        publish_one(ctx, dj, t, e.reason, &e.note).await;
    }
}

async fn publish_one(ctx: &Shared, dj: &DeploymentJob, type_: EventType, reason: &str, note: &str) {
    // Events are at most 1 KiB; messages never hold secrets, but may be long.
    let mut note = note.to_string();
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &dj.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an event");
    }
}
