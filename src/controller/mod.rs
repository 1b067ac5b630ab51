//! The Kubernetes adapter: watches, finalizer, status, events, pollers, leader election,
//! metrics and health endpoints around the engine (`qpm-operator run`).

pub mod connections;
pub mod context;
pub mod crd_check;
pub mod events;
pub mod fence;
pub mod metrics;
pub mod rbac;
pub mod reconciler;
pub mod status;
pub mod triggers;

use crate::api::DeploymentJob;
use crate::qualys::{ClientOptions, Connection, Secret};
use clap::{ArgAction, Args, ValueEnum};
use context::{Settings, Shared};
use events::Recorder;
use futures::StreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, ResourceExt};
use metrics::Metrics;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// `qpm-operator run`: the controller.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch only this namespace (then only namespaced permissions are needed). Default: all.
    #[arg(long, env = "QPM_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// How often each connection's job summaries are listed to find jobs changed in Qualys.
    #[arg(long, default_value = "2m", value_parser = crate::qualys::parse_duration)]
    pub poll_interval: Duration,
    /// Safety resync of every resource (jittered ±10%).
    #[arg(long, default_value = "1h", value_parser = crate::qualys::parse_duration)]
    pub resync: Duration,
    /// How often referenced Secrets are re-read by name to notice changes.
    #[arg(long, default_value = "30s", value_parser = crate::qualys::parse_duration)]
    pub secret_poll_interval: Duration,
    /// The Qualys budget per connection (--qualys-budget, --qualys-concurrency, …).
    #[command(flatten)]
    pub budget: crate::qualys::BudgetArgs,
    /// The share of each connection's budget the summary poller may spend; the poll interval
    /// stretches beyond --poll-interval when the listing needs more pages.
    #[arg(long, default_value_t = 0.25)]
    pub poll_budget_share: f64,
    /// Namespaces allowed to use the operator-wide connection (comma-separated). Default: all
    /// (a multi-tenancy risk: any namespace can then act with the operator's Qualys account).
    #[arg(long, value_delimiter = ',')]
    pub default_connection_namespaces: Vec<String>,
    /// Leader election (`--leader-election=false` to disable).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "qpm-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Serves /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// On SIGTERM, how long in-flight reconciles may take before the lease is released
    /// (shorter than the lease's 15 s).
    #[arg(long, default_value = "10s", value_parser = crate::qualys::parse_duration)]
    pub shutdown_deadline: Duration,
    /// The operator-wide gateway, e.g. https://gateway.qg1.apps.qualys.com.
    #[arg(long, env = "QUALYS_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// The operator-wide user.
    #[arg(long, env = "QUALYS_USERNAME")]
    pub username: Option<String>,
    /// PEM file of extra CA certificates for the operator-wide gateway.
    #[arg(long, env = "QUALYS_CA_BUNDLE_FILE")]
    pub ca_bundle_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_grace: Duration,
}

/// Everything the controller needs, independent of how it was started (CLI or a test).
#[derive(Clone)]
pub struct OperatorConfig {
    pub namespace: Option<String>,
    pub settings: Settings,
    pub client_options: ClientOptions,
    pub default_connection: Option<Connection>,
    pub default_connection_namespaces: Option<HashSet<String>>,
    pub leader: Option<LeaderConfig>,
    pub concurrency: u16,
    pub shutdown_deadline: Duration,
    pub listen: Option<SocketAddr>,
    /// Reporter instance for events, lease identity.
    pub instance: String,
}

/// A running operator.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    pub http_addr: Option<SocketAddr>,
    leader: Arc<AtomicBool>,
    fence: Option<Arc<fence::LeaseFence>>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Whether this replica may write to Qualys now: it leads and, with leader election, its
    /// lease was renewed recently enough that no other replica can hold it.
    pub fn may_write_to_qualys(&self) -> bool {
        self.is_leader() && self.fence.as_ref().is_none_or(|f| f.is_open())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Graceful stop: in-flight reconciles finish (within the deadline), the lease is released.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(h) = self.http {
            h.abort();
        }
    }

    /// Stop at once, as a crash would (tests of restarts).
    pub fn kill(self) {
        self.task.abort();
        if let Some(h) = self.http {
            h.abort();
        }
    }
}

/// Start the operator on `kube`.
pub async fn start(kube: kube::Client, config: OperatorConfig) -> anyhow::Result<Operator> {
    let metrics = Arc::new(Metrics::new());
    let leader = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let fence = config
        .leader
        .as_ref()
        .map(|lc| fence::LeaseFence::new(lc.lease_duration, effective_grace(lc)));

    let (http_addr, http) = match config.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            let app = http_router(metrics.clone(), ready.clone());
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (Some(bound), Some(task))
        }
        None => (None, None),
    };

    let task = tokio::spawn(supervise(
        kube,
        config,
        metrics.clone(),
        (leader.clone(), fence.clone()),
        ready.clone(),
        shutdown_rx,
    ));
    Ok(Operator {
        metrics,
        http_addr,
        leader,
        fence,
        ready,
        shutdown,
        task,
        http,
    })
}

fn http_router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                    }
                }
            }),
        )
}

/// Wait for leadership, run the controller while leading, stop at once when the lease is lost,
/// and on shutdown let in-flight work finish within the deadline, then release the lease.
async fn supervise(
    kube: kube::Client,
    mut config: OperatorConfig,
    metrics: Arc<Metrics>,
    (leader, fence): (Arc<AtomicBool>, Option<Arc<fence::LeaseFence>>),
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Ready means "can read DeploymentJobs" (the caches of a leader follow quickly); it is not
    // "is leader", or a one-replica rolling update would never become ready.
    let probe: Api<DeploymentJob> = scoped_api(&kube, config.namespace.as_deref());
    loop {
        match probe
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list DeploymentJobs yet (is the CRD installed?)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
    ready.store(true, Ordering::Relaxed);

    let (Some(lc), Some(fence)) = (config.leader.clone(), fence) else {
        leader.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        run_controller(kube, config, metrics.clone(), shutdown).await;
        metrics.leader.set(0);
        return;
    };

    let manager = loop {
        let params = kube_lease_manager::LeaseParams::new(
            lc.identity.clone(),
            lc.lease_duration.as_secs().max(2),
            effective_grace(&lc).as_secs(),
        )
        .with_field_manager(format!("qpm-operator-{}", lc.identity));
        match kube_lease_manager::LeaseManager::new(
            fence::tracking(kube.clone(), &lc.lease_name, fence.clone()),
            lc.lease_name.clone(),
            lc.lease_namespace.clone(),
            params,
            kube_lease_manager::LeaseCreateMode::default(),
        )
        .await
        {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up leader election; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let (mut leading, lease_task) = manager.watch().await;
    config.client_options.write_fence = Some(fence.clone());
    loop {
        // Standby until this replica holds the lease.
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => {
                    drop(leading);
                    let _ = lease_task.await;
                    return;
                }
            }
        }
        tracing::info!(identity = %lc.identity, "acquired the leader lease");
        leader.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut controller = tokio::spawn(run_controller(
            fence::fenced(kube.clone(), fence.clone()),
            config.clone(),
            metrics.clone(),
            stop_rx,
        ));
        let graceful = tokio::select! {
            _ = leading.changed() => false,
            _ = shutdown.changed() => true,
            _ = &mut controller => false,
        };
        leader.store(false, Ordering::Relaxed);
        metrics.leader.set(0);
        if graceful {
            let _ = stop_tx.send(true);
            if tokio::time::timeout(config.shutdown_deadline, &mut controller)
                .await
                .is_err()
            {
                tracing::warn!("in-flight reconciles did not finish within the shutdown deadline");
                controller.abort();
            }
            drop(leading);
            let _ = lease_task.await;
            return;
        }
        // Lost the lease: stop at once; another replica leads now.
        tracing::warn!(identity = %lc.identity, "lost the leader lease; stopping");
        controller.abort();
        let _ = controller.await;
    }
}

/// The renewal grace the lease manager works with (whole seconds, shorter than the lease).
fn effective_grace(lc: &LeaderConfig) -> Duration {
    Duration::from_secs(
        lc.renew_grace
            .as_secs()
            .clamp(1, lc.lease_duration.as_secs().max(2) - 1),
    )
}

fn scoped_api(kube: &kube::Client, namespace: Option<&str>) -> Api<DeploymentJob> {
    match namespace {
        Some(ns) => Api::namespaced(kube.clone(), ns),
        None => Api::all(kube.clone()),
    }
}

/// The reconcile triggers: generation, annotations, finalizers and deletion — not status.
fn spec_or_meta_changed(dj: &DeploymentJob) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(dj).hash(&mut h);
    predicates::annotations(dj).hash(&mut h);
    predicates::finalizers(dj).hash(&mut h);
    dj.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

async fn run_controller(
    kube: kube::Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let api = scoped_api(&kube, config.namespace.as_deref());
    let (reader, writer) = reflector::store::<DeploymentJob>();
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded::<ObjectRef<DeploymentJob>>();

    let tap_tx = trigger_tx.clone();
    let mut links = triggers::LinkTap::new(Arc::new(move |r| {
        let _ = tap_tx.unbounded_send(r);
    }));
    let jobs = watcher(api, watcher::Config::default())
        .default_backoff()
        // Neither is read, and each can be as large as the rest of the object.
        .modify(|dj: &mut DeploymentJob| {
            dj.managed_fields_mut().clear();
            if let Some(a) = dj.metadata.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                links.observe(event);
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_meta_changed, Default::default());

    // Metadata only: the operator caches no ConfigMap content, just notices changes.
    type ConfigMapMeta = kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::ConfigMap>;
    let configmaps: Api<ConfigMapMeta> = match config.namespace.as_deref() {
        Some(ns) => Api::namespaced(kube.clone(), ns),
        None => Api::all(kube.clone()),
    };
    let cm_reader = reader.clone();
    let cm_stream = watcher(configmaps, watcher::Config::default())
        .default_backoff()
        .touched_objects();

    let recorder = Recorder::new(
        kube.clone(),
        Reporter {
            controller: "qpm-operator".into(),
            instance: Some(config.instance.clone()),
        },
    );
    let connections = connections::Connections::new(
        kube.clone(),
        config.default_connection.clone(),
        config.default_connection_namespaces.clone(),
        config.client_options.clone(),
        metrics.clone(),
    );
    // Read before anything is reconciled: a create under an older CRD would lose its record.
    let installed = crd_check::InstalledCrd::new();
    crd_check::read(kube.clone(), &installed, &metrics).await;
    let crd_tx = trigger_tx.clone();
    let crd_follow = tokio::spawn(crd_check::follow(
        kube.clone(),
        installed.clone(),
        metrics.clone(),
        reader.clone(),
        move |r| {
            let _ = crd_tx.unbounded_send(r);
        },
    ));
    let ctx = Arc::new(
        Shared::new(
            kube.clone(),
            reader.clone(),
            connections,
            metrics.clone(),
            recorder,
            config.settings.clone(),
            trigger_tx,
        )
        .with_crd(installed),
    );

    let pollers = {
        let a = tokio::spawn(triggers::poll_summaries(ctx.clone()));
        let b = tokio::spawn(triggers::poll_secrets(ctx.clone()));
        let c = tokio::spawn(triggers::forget_vanished(ctx.clone()));
        (a, b, c)
    };

    let stop_signal = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    Controller::for_stream(jobs, reader)
        .with_config(ControllerConfig::default().concurrency(config.concurrency))
        .watches_stream(cm_stream, move |cm| {
            triggers::configmap_readers(&cm_reader, &cm)
        })
        .reconcile_on(trigger_rx)
        .graceful_shutdown_on(stop_signal)
        .run(reconciler::reconcile, reconciler::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    pollers.0.abort();
    pollers.1.abort();
    pollers.2.abort();
    crd_follow.abort();
}

/// `qpm-operator run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let instance = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("qpm-operator-{}", uuid::Uuid::new_v4()));
    // The replica's name in every User-Agent: audit logs (the API server's, the gateway's) then
    // tell which replica wrote what, e.g. across a leader change.
    let user_agent = format!("qpm-operator/{} ({instance})", env!("CARGO_PKG_VERSION"));
    let mut kube_config = kube::Config::infer().await?;
    if let Ok(value) = axum::http::HeaderValue::from_str(&user_agent) {
        kube_config
            .headers
            .push((axum::http::header::USER_AGENT, value));
    }
    let kube = kube::Client::try_from(kube_config)?;
    let password = std::env::var("QUALYS_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let default_connection = match (&args.gateway_url, &args.username, password) {
        (Some(url), Some(user), Some(pw)) => {
            let mut c = Connection::new(url.clone(), user.clone(), Secret::new(pw));
            if let Some(path) = &args.ca_bundle_file {
                c.ca_bundle = Some(
                    crate::files::read_regular(path, crate::files::MAX_CA_BUNDLE_BYTES)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                );
            }
            Some(c)
        }
        (None, None, None) => None,
        _ => anyhow::bail!(
            "the operator-wide connection needs QUALYS_GATEWAY_URL, QUALYS_USERNAME and QUALYS_PASSWORD together (or none of them)"
        ),
    };
    let leader = if args.leader_election {
        let lease_namespace = args
            .lease_namespace
            .clone()
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| kube.default_namespace().to_string());
        Some(LeaderConfig {
            lease_name: args.lease_name.clone(),
            lease_namespace,
            identity: instance.clone(),
            lease_duration: Duration::from_secs(15),
            renew_grace: Duration::from_secs(5),
        })
    } else {
        None
    };
    let config = OperatorConfig {
        namespace: args.namespace.clone(),
        settings: Settings {
            resync: args.resync,
            poll_interval: args.poll_interval,
            secret_poll_interval: args.secret_poll_interval,
            listing_max_age: args.poll_interval.saturating_mul(2),
        },
        client_options: {
            let mut opts = ClientOptions {
                poll_share: args.poll_budget_share,
                user_agent,
                ..Default::default()
            };
            args.budget.apply(&mut opts);
            opts
        },
        default_connection,
        default_connection_namespaces: if args.default_connection_namespaces.is_empty() {
            None
        } else {
            Some(args.default_connection_namespaces.iter().cloned().collect())
        },
        leader,
        concurrency: args.concurrency,
        shutdown_deadline: args.shutdown_deadline,
        listen: Some(args.listen),
        instance,
    };
    let operator = start(kube, config).await?;
    tracing::info!(listen = ?operator.http_addr, "qpm-operator started");
    shutdown_signal().await;
    tracing::info!("shutting down");
    operator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
