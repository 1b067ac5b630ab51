//! Which Qualys connection a DeploymentJob uses, and one client (one token cache, one budget,
//! one job directory) per connection identity.
//!
//! A resource names a Secret in its own namespace (`spec.connectionRef`, read by name — the
//! operator never lists or watches Secrets), or uses the operator-wide connection when its
//! namespace is allowed to. A named Secret that is missing is an error, never a fall-back.
//! The last connection that worked for each resource is kept in memory, so a resource whose
//! namespace is being deleted (taking its Secret with it) can still delete its job.
//!
//! A connection no resource uses any more (neither as the one it resolves to now nor as its
//! last good one) is evicted: its client, token cache and job directory are dropped, and the
//! summary poller, which polls only the connections held here, stops polling it.

use super::metrics::Metrics;
use crate::api::DeploymentJob;
use crate::qualys::{Client, ClientOptions, Connection, ConnectionId, Secret};
use crate::reconcile::Directory;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first wait after a gateway could not be reached; it doubles up to the maximum.
const UNREACHABLE_MIN: Duration = Duration::from_secs(2);
const UNREACHABLE_MAX: Duration = Duration::from_secs(300);
/// How long one reconcile may probe an unreachable gateway before another may.
const PROBE_WINDOW: Duration = Duration::from_secs(60);

/// A usable connection for one resource.
#[derive(Clone)]
pub struct Resolved {
    /// Scoped to the resource's namespace (fair sharing of the connection's budget).
    pub client: Client,
    pub directory: Arc<Directory>,
    pub id: ConnectionId,
}

/// Why no connection could be used; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(
        "spec.connectionRef: Secret {namespace}/{name} does not exist; create it (keys gatewayUrl, username, password) or remove connectionRef"
    )]
    SecretMissing { namespace: String, name: String },
    #[error(
        "spec.connectionRef: Secret {namespace}/{name} has no key {key:?} (it needs gatewayUrl, username and password; caBundle is optional)"
    )]
    KeyMissing {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error(
        "no Qualys connection: set spec.connectionRef to a Secret in this namespace, or give the operator QUALYS_GATEWAY_URL, QUALYS_USERNAME and QUALYS_PASSWORD"
    )]
    NotConfigured,
    #[error(
        "namespace {namespace} may not use the operator-wide Qualys connection (--default-connection-namespaces); set spec.connectionRef to a Secret in this namespace"
    )]
    NotAllowed { namespace: String },
    #[error("reading Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("spec.connectionRef: Secret {namespace}/{name}: {message}")]
    Invalid {
        namespace: String,
        name: String,
        message: String,
    },
}

impl ConnectionError {
    /// Whether waiting (not a person) can fix it.
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectionError::Kube { .. })
    }
}

struct Entry {
    /// Shared by every resource of `last_good` that uses this connection.
    id: Arc<ConnectionId>,
    client: Client,
    directory: Arc<Directory>,
}

/// A connection whose gateway could not be reached (connection refused, DNS): until `until`,
/// reconciles of the resources on it wait instead of each trying again; then one probes.
struct Unreachable {
    until: Instant,
    delays: ExponentialBackoff,
}

/// All connections of one operator process.
pub struct Connections {
    kube: kube::Client,
    operator_wide: Option<Connection>,
    /// `None`: every namespace may use the operator-wide connection.
    allowed: Option<HashSet<String>>,
    options: ClientOptions,
    metrics: Arc<Metrics>,
    entries: Mutex<HashMap<ConnectionId, Entry>>,
    /// The connection each resource resolved to last (ids shared with `entries`).
    current: Mutex<HashMap<ObjectRef<DeploymentJob>, Arc<ConnectionId>>>,
    /// The connection each resource last used successfully.
    last_good: Mutex<HashMap<ObjectRef<DeploymentJob>, Arc<ConnectionId>>>,
    unreachable: Mutex<HashMap<ConnectionId, Unreachable>>,
}

impl Connections {
    pub fn new(
        kube: kube::Client,
        operator_wide: Option<Connection>,
        allowed: Option<HashSet<String>>,
        options: ClientOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Connections {
            kube,
            operator_wide,
            allowed,
            options,
            metrics,
            entries: Mutex::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
            last_good: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
        }
    }

    /// The connection `dj` uses now.
    pub async fn resolve(&self, dj: &DeploymentJob) -> Result<Resolved, ConnectionError> {
        let namespace = dj.namespace().unwrap_or_default();
        let connection = self.connection_of(dj, &namespace).await;
        let resolved = {
            // Held while the client is found or made, so an eviction cannot drop it before
            // the resource is recorded as its user.
            let mut current = self.current.lock().map_err(|_| ConnectionError::Invalid {
                namespace: namespace.clone(),
                name: String::new(),
                message: "connection cache poisoned".into(),
            })?;
            let key = super::context::key_of(dj);
            let resolved = connection.and_then(|c| {
                self.client_for(c, &namespace)
                    .map_err(|message| ConnectionError::Invalid {
                        namespace: namespace.clone(),
                        name: dj
                            .spec
                            .connection_ref
                            .as_ref()
                            .map(|r| r.name.clone())
                            .unwrap_or_default(),
                        message,
                    })
            });
            // Only a resource that moves off a connection can leave it unused; checking every
            // resource on every reconcile would cost O(resources) per reconcile.
            let moved_off = match &resolved {
                Ok(r) => current
                    .insert(key, self.shared_id(&r.id))
                    .is_some_and(|old| *old != r.id),
                Err(_) => current.remove(&key).is_some(),
            };
            (resolved, moved_off)
        };
        let (resolved, moved_off) = resolved;
        if moved_off {
            self.evict_unused();
        }
        resolved
    }

    /// The connection settings `dj` names (its Secret, or the operator-wide connection).
    async fn connection_of(
        &self,
        dj: &DeploymentJob,
        namespace: &str,
    ) -> Result<Connection, ConnectionError> {
        match &dj.spec.connection_ref {
            Some(r) => self.read_secret(namespace, &r.name).await,
            None => {
                let Some(c) = &self.operator_wide else {
                    return Err(ConnectionError::NotConfigured);
                };
                if let Some(allowed) = &self.allowed
                    && !allowed.contains(namespace)
                {
                    return Err(ConnectionError::NotAllowed {
                        namespace: namespace.to_string(),
                    });
                }
                Ok(c.clone())
            }
        }
    }

    /// The one shared copy of `id` (resources keep an `Arc`, not a copy each).
    fn shared_id(&self, id: &ConnectionId) -> Arc<ConnectionId> {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(id).map(|e| e.id.clone()))
            .unwrap_or_else(|| Arc::new(id.clone()))
    }

    /// Remember that `resolved` worked for the resource `key`.
    pub fn worked(&self, key: &ObjectRef<DeploymentJob>, resolved: &Resolved) {
        let shared = self.shared_id(&resolved.id);
        let moved_off = self
            .last_good
            .lock()
            .is_ok_and(|mut m| match m.get_mut(key) {
                // A resource already known keeps its key: no copy of it per reconcile.
                Some(known) => *std::mem::replace(known, shared) != resolved.id,
                None => {
                    m.insert(key.clone(), shared);
                    false
                }
            });
        if moved_off {
            self.evict_unused();
        }
    }

    /// Every resource with a connection assignment.
    pub fn keys(&self) -> Vec<ObjectRef<DeploymentJob>> {
        let mut keys = Vec::new();
        for map in [&self.current, &self.last_good] {
            if let Ok(m) = map.lock() {
                keys.extend(m.keys().cloned());
            }
        }
        keys
    }

    /// The resource `key` is gone: it uses no connection any more.
    pub fn forget(&self, key: &ObjectRef<DeploymentJob>) {
        if let Ok(mut m) = self.current.lock() {
            m.remove(key);
        }
        if let Ok(mut m) = self.last_good.lock() {
            m.remove(key);
        }
        self.evict_unused();
    }

    /// How long a reconcile on `id` should wait because its gateway could not be reached;
    /// `None` lets it call the gateway (then it is the one probe until it reports back).
    pub fn gateway_wait(&self, id: &ConnectionId) -> Option<Duration> {
        let mut m = self.unreachable.lock().ok()?;
        let u = m.get_mut(id)?;
        let now = Instant::now();
        if u.until > now {
            return Some(u.until - now);
        }
        u.until = now + PROBE_WINDOW;
        None
    }

    /// A reconcile on `id` could not reach its gateway: every resource on it waits, longer
    /// each time.
    pub fn gateway_unreachable(&self, id: &ConnectionId) {
        if let Ok(mut m) = self.unreachable.lock() {
            let u = m.entry(id.clone()).or_insert_with(|| Unreachable {
                until: Instant::now(),
                delays: ExponentialBuilder::new()
                    .with_min_delay(UNREACHABLE_MIN)
                    .with_max_delay(UNREACHABLE_MAX)
                    .with_factor(2.0)
                    .with_jitter()
                    .without_max_times()
                    .build(),
            });
            u.until = Instant::now() + u.delays.next().unwrap_or(UNREACHABLE_MAX);
        }
    }

    /// The gateway of `id` answered.
    pub fn gateway_reached(&self, id: &ConnectionId) {
        if let Ok(mut m) = self.unreachable.lock() {
            m.remove(id);
        }
    }

    /// Drop every connection that no resource resolves to or last used successfully. Locks
    /// are taken in one order (current, last_good, entries, unreachable).
    fn evict_unused(&self) {
        let (Ok(current), Ok(last_good)) = (self.current.lock(), self.last_good.lock()) else {
            return;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|id, _| {
            let used = current
                .values()
                .chain(last_good.values())
                .any(|u| u.as_ref() == id);
            if !used {
                tracing::info!(connection = %id, "no resource uses this Qualys connection any more; dropping it");
            }
            used
        });
        self.metrics.connections.set(gauge_value(entries.len()));
        if let Ok(mut m) = self.unreachable.lock() {
            m.retain(|id, _| entries.contains_key(id));
        }
    }

    /// The connection that last worked for `key`, if its client is still known.
    pub fn last_good(&self, key: &ObjectRef<DeploymentJob>) -> Option<Resolved> {
        let namespace = key.namespace.as_deref().unwrap_or_default();
        let id = self.last_good.lock().ok()?.get(key).cloned()?;
        let entries = self.entries.lock().ok()?;
        let e = entries.get(id.as_ref())?;
        Some(Resolved {
            client: e.client.for_tenant(namespace),
            directory: e.directory.clone(),
            id: ConnectionId::clone(&id),
        })
    }

    /// The resource `key`'s last good connection id, if any.
    pub fn assignment(&self, key: &ObjectRef<DeploymentJob>) -> Option<ConnectionId> {
        self.last_good
            .lock()
            .ok()?
            .get(key)
            .map(|id| ConnectionId::clone(id))
    }

    /// Every connection in use, for the pollers.
    pub fn active(&self) -> Vec<(ConnectionId, Client, Arc<Directory>)> {
        self.entries
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(id, e)| (id.clone(), e.client.clone(), e.directory.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn client_for(&self, connection: Connection, namespace: &str) -> Result<Resolved, String> {
        let id = connection.identity();
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| "connection cache poisoned".to_string())?;
        if let Some(e) = entries.get(&id) {
            return Ok(Resolved {
                client: e.client.for_tenant(namespace),
                directory: e.directory.clone(),
                id,
            });
        }
        let mut options = self.options.clone();
        options.observer = Some(self.metrics.observer(id.to_string()));
        let client = Client::new(connection, options).map_err(|e| e.to_string())?;
        self.metrics.watch_budget(id.to_string(), client.budget());
        let directory = Arc::new(Directory::new());
        let resolved = Resolved {
            client: client.for_tenant(namespace),
            directory: directory.clone(),
            id: id.clone(),
        };
        entries.insert(
            id.clone(),
            Entry {
                id: Arc::new(id),
                client,
                directory,
            },
        );
        self.metrics.connections.set(gauge_value(entries.len()));
        Ok(resolved)
    }

    async fn read_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Connection, ConnectionError> {
        let api: Api<KubeSecret> = Api::namespaced(self.kube.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|source| ConnectionError::Kube {
                namespace: namespace.into(),
                name: name.into(),
                source,
            })?
            .ok_or_else(|| ConnectionError::SecretMissing {
                namespace: namespace.into(),
                name: name.into(),
            })?;
        let data = secret_data(&secret);
        let get = |key: &'static str| -> Result<String, ConnectionError> {
            data.get(key)
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or(ConnectionError::KeyMissing {
                    namespace: namespace.into(),
                    name: name.into(),
                    key,
                })
        };
        let mut connection = Connection::new(
            get("gatewayUrl")?,
            get("username")?,
            Secret::new(get("password")?),
        );
        connection.ca_bundle = data.get("caBundle").cloned().filter(|b| !b.is_empty());
        Ok(connection)
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A Secret's data (and stringData, which a server folds into data).
pub fn secret_data(secret: &KubeSecret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.as_bytes().to_vec());
    }
    out
}
