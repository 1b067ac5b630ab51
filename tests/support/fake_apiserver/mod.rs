//! An in-process fake Kubernetes API server that speaks the real wire protocol (JSON over
//! plain HTTP/1.1 on 127.0.0.1) for what the operator touches, so kube-rs clients — `Api`,
//! `watcher`, `Controller`, `finalizer`, `events::Recorder`, `kube_lease_manager` — run
//! against it unchanged.
//!
//! It serves the core group at `/api/v1/...` and groups at `/apis/{group}/{version}/...`:
//! namespaced and cluster-scoped collections and objects, all-namespaces lists and watches,
//! and the `status` subresource. ConfigMap, Secret, Namespace, Lease, core/v1 Event,
//! events.k8s.io/v1 Event and CustomResourceDefinition are registered at start; custom
//! resources are registered from their CRD ([`FakeApiServer::register_crd`], or by creating
//! the CRD through the API). Verbs: get, list (label and field selectors, `limit`/`continue`
//! over a consistent snapshot), watch (from a resourceVersion, bookmarks, timeouts,
//! `sendInitialEvents`, 410 Gone past the bounded history or after [`FakeApiServer::compact`]),
//! create (`generateName`, 409 AlreadyExists), update (409 on a stale resourceVersion), merge /
//! JSON / strategic(-as-merge) patches and server-side apply with per-manager field ownership
//! and conflicts (see `ssa.rs`), delete (finalizers → `deletionTimestamp`, gone when the last
//! finalizer goes; preconditions), `metadata.generation` (bumped by spec changes and by
//! marking for deletion), global resourceVersions, `managedFields`, and minimal discovery.
//! A CRD's schema is enforced on every write (`schema.rs`: pruning, defaults, structural
//! validation, CEL rules; 422 with a cause per field), keyed lists merge item by item under
//! server-side apply, namespaces go Terminating and cascade (403 on create meanwhile), deleting a
//! CRD deletes its objects, and reads can come from a lagging cache ([`FakeOptions::read_lag`]).
//! Tests get a request log and fault hooks. docs/testing.md lists what is modelled and what is
//! not, point by point.
//!
//! # What it does not model
//! - **Security**: no authentication, no authorization (RBAC is not checked: every request is
//!   allowed, so RBAC manifests must be proven on a real cluster), no impersonation, no TLS.
//! - **Admission**: no webhooks, no ValidatingAdmissionPolicy, no ResourceQuota or LimitRange.
//! - **Schema, partly**: no `fieldValidation=Strict`, no validation ratcheting, CEL by kube-cel
//!   rather than cel-go (no cost limits; macros it lacks fail closed). Built-in kinds are
//!   validated only for metadata, Secret `data` and events.k8s.io/v1 Events.
//! - **Versions**: no conversion; an object is stored once and shown under whichever served
//!   version is asked for.
//! - **Wire formats**: JSON only — no protobuf, no CBOR, no YAML responses, no Table output,
//!   no response compression; no aggregated discovery (apidiscovery.k8s.io/v2), no OpenAPI
//!   documents (`/openapi/v2`, `/openapi/v3`), no HTTP/2-specific behaviour, no TLS.
//! - **Lifecycle and garbage collection**: no ownerReference garbage collection; no grace
//!   periods; namespace and CRD cleanup happen at once; no `deletecollection`.
//! - **Server-side apply is simplified**: ownership is of leaf fields and keyed-list items;
//!   `null` in an applied object is ignored; conflict messages follow the real format only
//!   approximately. Strategic merge patch is a plain JSON merge patch (no merge keys, no
//!   `$patch` directives).
//! - **Reads**: current unless the lag is on; then the whole cache lags by one duration.
//! - **Watch**: history is in memory and bounded ([`FakeOptions::history_limit`]); bookmarks come
//!   every [`FakeOptions::bookmark_interval`] (far more often than a real server's ~1 min);
//!   timeouts are exact (no jitter); a watcher that falls [`FakeOptions::watch_buffer`] events
//!   behind gets 410 Gone; no legacy `/watch/` paths.
//! - **Events**: core/v1 and events.k8s.io/v1 Events are separate stores (a real server shows
//!   one set of events through both APIs); no event TTL.
//! - **Everything else**: only the `status` subresource (no `scale`, `finalize`, `eviction`,
//!   `log`, …); no other built-in kinds (Pods, Services, Deployments…) unless registered with
//!   [`FakeApiServer::register_resource`]; no API priority and fairness or 429s unless injected
//!   with [`FakeApiServer::fail_next`]; `dryRun=All` only skips the write; no controllers run
//!   (no ServiceAccount tokens, no Endpoints, no Pod scheduling); Leases give no fencing (as on
//!   a real server).

mod error;
mod http;
mod log;
mod registry;
mod schema;
mod selector;
mod ssa;
mod store;
mod validate;
mod watch;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use tokio::sync::watch as signal;

pub use log::{PatchType, RequestRecord, Verb};
pub use registry::ResourceType;

use store::State;

/// Tuning for one fake server.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// Watch events kept for resuming watches; resuming from before them answers 410 Gone.
    pub history_limit: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How far a watcher may fall behind before it is cut off with 410 Gone.
    pub watch_buffer: usize,
    /// Keep the request log (turn off for long benchmark runs, where it only grows).
    pub record_requests: bool,
    /// Serve reads from a lagging watch cache: lists at `resourceVersion=0` show the state of
    /// this long ago, and watches deliver each event this long after it happened (see
    /// [`FakeApiServer::set_lag`]). `None`: every read is current.
    pub read_lag: Option<Duration>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
            watch_buffer: 4096,
            record_requests: true,
            read_lag: None,
        }
    }
}

/// State shared by the handlers and the test-facing API.
pub struct Shared {
    state: Mutex<State>,
    opts: FakeOptions,
    shutdown: signal::Receiver<bool>,
    address: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every later request down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: signal::Sender<bool>,
}

impl FakeApiServer {
    /// Starts a fresh server with default options on 127.0.0.1 and an ephemeral port.
    pub async fn start() -> Self {
        Self::start_with(FakeOptions::default()).await
    }

    /// Starts a fresh server with `opts`.
    pub async fn start_with(opts: FakeOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake API server cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has a local address");
        let (stop, shutdown) = signal::channel(false);
        let mut state = State::new(opts.history_limit, opts.watch_buffer);
        state.lag = opts.read_lag;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            opts,
            shutdown: shutdown.clone(),
            address: addr.to_string(),
        });
        let app = axum::Router::new()
            .fallback(http::handle)
            .with_state(shared.clone());
        let mut on_stop = shutdown;
        tokio::spawn(async move {
            let graceful = async move {
                let _ = on_stop.wait_for(|stopped| *stopped).await;
            };
            // Watch events are small writes: without TCP_NODELAY, Nagle's algorithm would hold
            // them back behind delayed ACKs.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await;
        });
        Self { shared, addr, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client configuration pointing at this server (default namespace `default`).
    pub fn config(&self) -> kube::Config {
        let uri = self.url().parse().expect("the server URL is a valid URI");
        kube::Config::new(uri)
    }

    /// A new kube client for this server (each call has its own connection pool).
    pub fn client(&self) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        kube::Client::try_from(self.config()).expect("a kube client for a plain-HTTP URL builds")
    }

    /// Registers the resource a CRD defines (group, served versions, plural, kind, scope,
    /// status subresource, selectable fields) and stores the CRD itself as Established, as
    /// if it had been applied. Idempotent.
    pub fn register_crd(&self, crd: &CustomResourceDefinition) -> Result<(), String> {
        let value =
            serde_json::to_value(crd).map_err(|e| format!("the CRD does not serialize: {e}"))?;
        ResourceType::from_crd(&value)?;
        self.shared.lock().put_crd(value).map_err(|e| e.message)
    }

    /// Starts (`Some`) or stops (`None`) serving reads from a lagging cache; watches opened
    /// before keep the lag they started with.
    pub fn set_lag(&self, lag: Option<Duration>) {
        self.shared.lock().lag = lag;
    }

    /// The `openAPIV3Schema` writes of this type are admitted against, if any.
    pub fn schema_of(&self, group: &str, plural: &str) -> Option<Value> {
        self.shared.lock().schema_root(group, plural)
    }

    /// Registers any other resource type (a built-in kind the fake does not carry).
    pub fn register_resource(&self, rt: ResourceType) {
        self.shared.lock().registry.insert(rt);
    }

    /// Creates a namespace directly (not logged, not subject to faults).
    pub fn create_namespace(&self, name: &str) -> Result<(), String> {
        self.shared
            .lock()
            .ensure_namespace(name)
            .map_err(|e| e.message)
    }

    /// Every request so far, in arrival order of their answers.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// How many requests so far satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&RequestRecord) -> bool) -> usize {
        self.shared.lock().log.iter().filter(|r| pred(r)).count()
    }

    /// The writes (create, update, patch, delete) to `resource` (plural) and `subresource`
    /// (`None` for the main resource, `Some("status")`), whatever their outcome.
    pub fn writes_to(&self, resource: &str, subresource: Option<&str>) -> Vec<RequestRecord> {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| {
                r.is_write() && r.resource == resource && r.subresource.as_deref() == subresource
            })
            .cloned()
            .collect()
    }

    /// Forgets the request log (faults stay armed).
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// The next `n` requests for which `matches` is true fail with `status` (a `Status` body
    /// with the reason the real server uses for that code) and change nothing. The predicate
    /// sees the request with `status == 0`; it runs under the server's lock, so it must not
    /// call back into this server. Note that kube's client retries 429, 503 and 504 by itself.
    pub fn fail_next(
        &self,
        n: usize,
        status: u16,
        matches: impl Fn(&RequestRecord) -> bool + Send + Sync + 'static,
    ) {
        self.fail_next_with(n, status, None, matches);
    }

    /// [`fail_next`](Self::fail_next) with a chosen `Status` message.
    pub fn fail_next_with(
        &self,
        n: usize,
        status: u16,
        message: Option<String>,
        matches: impl Fn(&RequestRecord) -> bool + Send + Sync + 'static,
    ) {
        if n == 0 {
            return;
        }
        self.shared.lock().faults.push(log::Fault {
            remaining: n,
            status,
            message,
            matches: Arc::new(matches),
        });
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Forgets the watch history, as etcd compaction does: open watches end with an ERROR
    /// event carrying 410 Gone, and resuming from any older resourceVersion (or continuing a
    /// paginated list) answers 410, so clients must relist.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// A stored object as JSON, read directly (not logged): `group` is `""` for core.
    pub fn object(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.shared.lock().peek(group, plural, namespace, name)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        // Ends every open watch and stops accepting connections.
        let _ = self.stop.send(true);
    }
}
