//! Starting a simulator in-process, and the handle tests and benchmarks drive it with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::error::ApiError;
use super::fault::Fault;
use super::state::SimState;
use super::{SimConfig, persist, routes};

/// Request counts: `"METHOD /route/template"` → status → count. Admin routes are not counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters(pub BTreeMap<String, BTreeMap<u16, u64>>);

impl Counters {
    /// Requests to `route`, any status.
    pub fn count(&self, route: &str) -> u64 {
        self.0.get(route).map_or(0, |m| m.values().sum())
    }

    /// Requests to `route` answered with `status`.
    pub fn count_status(&self, route: &str, status: u16) -> u64 {
        self.0
            .get(route)
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// All counted requests.
    pub fn total(&self) -> u64 {
        self.0.values().flat_map(|m| m.values()).sum()
    }
}

/// How often `POST …/update/status/{action}` changed one job's status, per direction (a
/// request that finds the job already in the target status changes nothing and is not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChanges {
    pub enabled: u64,
    pub disabled: u64,
}

/// One API write (any method but GET, `/auth` excluded) as the gateway answered it, with the
/// caller's `User-Agent`: which client wrote what, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// When the answer was ready.
    pub at: jiff::Timestamp,
    pub route: String,
    pub status: u16,
    pub user_agent: Option<String>,
}

/// A running simulator. Dropping it (or [`SimHandle::shutdown`]) stops the server.
pub struct SimHandle {
    state: Arc<SimState>,
    addr: SocketAddr,
    router: axum::Router,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    saver: Option<JoinHandle<()>>,
    persistence: Option<Persistence>,
}

/// Saves the state file; one writer at a time.
#[derive(Clone)]
struct Persistence {
    path: PathBuf,
    saved: Arc<AtomicU64>,
    lock: Arc<Mutex<()>>,
}

impl Persistence {
    /// Write the file if anything changed since the last write.
    fn save(&self, state: &SimState) -> anyhow::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let revision = state.revision();
        if revision == self.saved.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (jobs, scripts) = state.snapshot();
        persist::write_atomic(&self.path, &persist::encode(&jobs, &scripts)?)?;
        self.saved.store(revision, Ordering::SeqCst);
        Ok(())
    }
}

/// Start a simulator on `config.listen` inside the current tokio runtime.
pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
    let state = Arc::new(SimState::new(config.clone())?);
    let persistence = match &config.state_file {
        Some(path) => {
            let loaded = persist::load(path)?;
            state.restore(loaded.jobs, loaded.scripts);
            Some(Persistence {
                path: path.clone(),
                saved: Arc::new(AtomicU64::new(state.revision())),
                lock: Arc::new(Mutex::new(())),
            })
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let router = routes::router(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router.clone(),
        config.idle_timeout,
        stopped,
    ));
    let saver = persistence.clone().map(|p| {
        let state = state.clone();
        tokio::spawn(async move {
            // At most about once a second while something changed.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (p, st) = (p.clone(), state.clone());
                match tokio::task::spawn_blocking(move || p.save(&st)).await {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot save the simulator state")
                    }
                    Err(e) => tracing::warn!(error = %e, "the state saver failed"),
                    Ok(Ok(())) => {}
                }
            }
        })
    });
    Ok(SimHandle {
        state,
        addr,
        router,
        stop: Some(stop),
        server: Some(server),
        saver,
        persistence,
    })
}

/// Accept connections until `stop`, then let open connections finish their requests.
///
/// The simulator's own loop rather than `axum::serve`: HTTP/1 connections waiting longer than
/// `idle` for a request head are closed (hyper's header-read timeout also runs between
/// keep-alive requests, never while a request is being served).
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    idle: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let (closing, close_rx) = tokio::sync::watch::channel(());
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "the simulator cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let mut close = close_rx.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            if !idle.is_zero() {
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(idle);
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = close.changed() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    drop(close_rx);
    let _ = closing.send(());
    // Every connection task holds a receiver: all dropped = all connections finished.
    closing.closed().await;
}

fn anyhow_of(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{} ({})", e.message, e.status)
}

impl SimHandle {
    /// `http://127.0.0.1:PORT` (the listening address; an unspecified address becomes loopback).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}")
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The subscription id (`customerId`, first segment of script paths).
    pub fn customer_id(&self) -> &str {
        &self.state.config.customer_id
    }

    /// The application itself, sharing this simulator's state — for in-process requests with
    /// `tower::ServiceExt::oneshot` where a socket is not the point.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// A token for a configured user, as `POST /auth` would issue it (not counted).
    pub fn token_for(&self, user: &str) -> Option<String> {
        let user = self.state.config.users.iter().find(|u| u.name == user)?;
        Some(self.state.issue_token(user))
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        Counters(self.state.counters())
    }

    /// Requests to `route` (e.g. `"PATCH /pm/v1/deploymentjob/update/{id}"`), any status.
    pub fn count(&self, route: &str) -> u64 {
        self.counters().count(route)
    }

    /// Requests to `route` answered with `status`.
    pub fn count_status(&self, route: &str, status: u16) -> u64 {
        self.counters().count_status(route, status)
    }

    /// Clears the counters, the status changes and the write log.
    pub fn reset_counters(&self) {
        self.state.reset_counters();
    }

    /// Per job id, its status changes so far.
    pub fn status_changes(&self) -> BTreeMap<String, StatusChanges> {
        self.state.status_changes()
    }

    /// The API writes so far (the latest 100,000), oldest first.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.state.writes()
    }

    /// Add a fault (see [`Fault`]). A route that is not one of [`super::ROUTES`] never matches;
    /// a `Status` outside 400–599 answers 500.
    pub fn set_fault(&self, fault: Fault) {
        if let Some(problem) = fault.problem() {
            tracing::warn!(problem = %problem, "a fault that will not work as given");
        }
        self.state.set_fault(fault);
    }

    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    /// The faults still active (a fault with `times` leaves once used up).
    pub fn faults(&self) -> Vec<Fault> {
        self.state.faults()
    }

    /// Invalidate every token issued so far.
    pub fn expire_tokens(&self) {
        self.state.expire_tokens();
    }

    /// Empty the simulator: jobs, scripts, tokens, faults, counters.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Store a job document verbatim, server fields included (its `id` is required).
    pub fn put_job(&self, doc: Value) -> anyhow::Result<()> {
        self.state.put_job(doc, None).map(|_| ()).map_err(anyhow_of)
    }

    /// The job as GET would return it.
    pub fn job(&self, id: &str) -> Option<Value> {
        self.state.get_job(id).map(|j| j.to_value())
    }

    /// All jobs as GET would return them, in creation order.
    pub fn jobs(&self) -> Vec<Value> {
        self.state.jobs().iter().map(|j| j.to_value()).collect()
    }

    pub fn job_count(&self) -> usize {
        self.state.job_count()
    }

    /// The decoded script stored at `"<customerId>/<actionId>/Script"` (or `/DetectionScript`).
    pub fn script(&self, path: &str) -> Option<Vec<u8>> {
        self.state.script(path)
    }

    /// An out-of-band edit as the Qualys console would make it: an RFC 7386 merge patch on the
    /// stored job, stamped `updatedBy` = the `console` user, now.
    pub fn console_edit(&self, id: &str, merge_patch: Value) -> anyhow::Result<()> {
        self.state
            .console_edit(id, merge_patch)
            .map(|_| ())
            .map_err(anyhow_of)
    }

    /// The job vanishes (the JobMissing scenario); false if there was no such job.
    pub fn console_delete(&self, id: &str) -> bool {
        self.state.console_delete(id)
    }

    /// Stop gracefully: in-flight requests finish (up to 5 s), then the state file is written.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(saver) = self.saver.take() {
            saver.abort();
        }
        if let Some(p) = self.persistence.take() {
            let state = self.state.clone();
            match tokio::task::spawn_blocking(move || p.save(&state)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot save the simulator state")
                }
                Err(e) => tracing::error!(error = %e, "the final state save failed"),
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(saver) = self.saver.take() {
            saver.abort();
        }
        // Best effort: a dropped handle still leaves the state file current.
        if let Some(p) = self.persistence.take()
            && let Err(e) = p.save(&self.state)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot save the simulator state");
        }
    }
}
