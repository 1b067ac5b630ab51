//! Test support shared by the integration tests: a Kubernetes API server to run against —
//! a real cluster when `QPM_TEST_KUBECONFIG` names a kubeconfig, else the in-process fake —
//! and a deadline-bound poll helper.
//!
//! Include it with `mod support;` from a file in `tests/`, or from a bench with
//! `#[path = "../tests/support/mod.rs"] mod support;`.
#![allow(dead_code)] // Each test binary uses a different part of it.

pub mod fake_apiserver;
pub mod operator;

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};

#[allow(unused_imports)] // Re-exported for scenarios; each test binary uses some.
pub use fake_apiserver::{FakeApiServer, FakeOptions, PatchType, RequestRecord, Verb};

/// The environment variable naming a kubeconfig to run against instead of the fake.
pub const KUBECONFIG_ENV: &str = "QPM_TEST_KUBECONFIG";

/// The field manager the harness applies CRDs with on a real cluster.
const HARNESS_MANAGER: &str = "qpm-operator-tests";

enum Backend {
    Fake(FakeApiServer),
    Real(Box<kube::Config>),
}

/// A Kubernetes API server for one test, with a namespace of its own.
pub struct TestCluster {
    backend: Backend,
    client: Client,
    namespace: String,
}

fn unique_namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("qpm-test-{}", &id[..10])
}

fn expand_home(path: &str) -> std::path::PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => std::path::PathBuf::from(path),
    }
}

impl TestCluster {
    /// `QPM_TEST_KUBECONFIG` set (and non-empty) → that cluster, with a fresh namespace
    /// created for this test; otherwise a fresh fake API server and namespace.
    pub async fn start() -> TestCluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let namespace = unique_namespace();
        match std::env::var(KUBECONFIG_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            None => {
                let fake = FakeApiServer::start().await;
                fake.create_namespace(&namespace).unwrap_or_else(|e| {
                    panic!("cannot create namespace {namespace} in the fake: {e}")
                });
                let mut config = fake.config();
                config.default_namespace = namespace.clone();
                let client = Client::try_from(config).expect("a kube client for the fake builds");
                TestCluster {
                    backend: Backend::Fake(fake),
                    client,
                    namespace,
                }
            }
            Some(path) => {
                let path = expand_home(path.trim());
                let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
                    panic!("{KUBECONFIG_ENV}={}: cannot read it: {e}", path.display())
                });
                let mut config =
                    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "{KUBECONFIG_ENV}={}: not a usable kubeconfig: {e}",
                                path.display()
                            )
                        });
                config.default_namespace = namespace.clone();
                let client = Client::try_from(config.clone()).unwrap_or_else(|e| {
                    panic!("cannot build a client for {}: {e}", path.display())
                });
                let ns = Namespace {
                    metadata: kube::api::ObjectMeta {
                        name: Some(namespace.clone()),
                        labels: Some(
                            [("qpm-operator-test".to_string(), "true".to_string())].into(),
                        ),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &ns)
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test namespace {namespace}: {e}"));
                TestCluster {
                    backend: Backend::Real(Box::new(config)),
                    client,
                    namespace,
                }
            }
        }
    }

    /// A client whose default namespace is [`namespace`](Self::namespace).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Another client with its own connection pool (a second replica, say).
    pub fn new_client(&self) -> Client {
        let mut config = match &self.backend {
            Backend::Fake(fake) => fake.config(),
            Backend::Real(config) => (**config).clone(),
        };
        config.default_namespace = self.namespace.clone();
        Client::try_from(config).expect("a second kube client builds from a config that built one")
    }

    /// The namespace this test owns (unique per test).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn is_fake(&self) -> bool {
        matches!(self.backend, Backend::Fake(_))
    }

    /// The fake server (request log, faults, compaction), when running on the fake.
    /// Scenarios should also assert something portable (e.g. an unchanged resourceVersion
    /// proves no write) so they prove the same on a real cluster.
    pub fn fake(&self) -> Option<&FakeApiServer> {
        match &self.backend {
            Backend::Fake(fake) => Some(fake),
            Backend::Real(_) => None,
        }
    }

    /// Fake: registers the CRD's resource. Real cluster: applies the CRD (server-side, forced)
    /// and waits until it is Established.
    pub async fn register_crd(&self, crd: CustomResourceDefinition) {
        match &self.backend {
            Backend::Fake(fake) => fake
                .register_crd(&crd)
                .unwrap_or_else(|e| panic!("the fake refused CRD {}: {e}", crd.name_any())),
            Backend::Real(_) => {
                let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
                let name = crd.name_any();
                let mut crd = crd;
                crd.metadata.managed_fields = None;
                crd.metadata.resource_version = None;
                crd.status = None;
                api.patch(
                    &name,
                    &PatchParams::apply(HARNESS_MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .unwrap_or_else(|e| panic!("cannot apply CRD {name}: {e}"));
                wait_for(
                    Duration::from_secs(60),
                    &format!("CRD {name} to be Established"),
                    || {
                        let api = api.clone();
                        let name = name.clone();
                        async move {
                            let crd = api.get(&name).await.ok()?;
                            crd.status?
                                .conditions?
                                .iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                                .then_some(())
                        }
                    },
                )
                .await;
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let Backend::Real(config) = &self.backend else {
            return;
        };
        // Best effort, on a runtime of its own: the test's runtime may be single-threaded and
        // is blocked in this drop, so the test's client cannot make progress here.
        let config = (**config).clone();
        let namespace = self.namespace.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let api: Api<Namespace> = Api::all(client);
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    api.delete(&namespace, &DeleteParams::background()),
                )
                .await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Polls `f` until it yields `Some`, and returns that; panics naming `what` if `timeout`
/// passes first. The poll interval starts at 5 ms and backs off to 100 ms.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(
            interval.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
