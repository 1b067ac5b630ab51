//! What the controller harnesses share: a fake Kubernetes API server with the CRD, a namespace
//! and a connection Secret for the Qualys simulator; a kubeconfig for the fake; and the
//! operator binary started as its own process (`qpm-operator run`).
//!
//! Included with `#[path]` by `benches/controller_load.rs`, `benches/controller_chaos.rs` and
//! `tests/controller_chaos.rs`, next to `tests/support/mod.rs` as `support`.
#![allow(dead_code)] // Each harness uses a different part of it.

use crate::support::fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use qpm_operator::api::{self, DeploymentJob};
use qpm_operator::sim::{self, SimConfig, SimHandle};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status_kib(child: &Child, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `VmHWM` of a running process.
pub fn peak_rss_kib(child: &Child) -> Option<u64> {
    proc_status_kib(child, "VmHWM:")
}

/// `VmRSS` of a running process.
pub fn rss_kib(child: &Child) -> Option<u64> {
    proc_status_kib(child, "VmRSS:")
}

pub fn ready(dj: &DeploymentJob) -> bool {
    dj.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Calls per route since `before` (a [`totals`] snapshot), routes with none left out.
pub fn calls(before: &BTreeMap<String, u64>, after: &sim::Counters) -> BTreeMap<String, u64> {
    after
        .0
        .iter()
        .map(|(route, by)| {
            (
                route.clone(),
                by.values().sum::<u64>() - before.get(route).copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Calls per route, any status.
pub fn totals(c: &sim::Counters) -> BTreeMap<String, u64> {
    c.0.iter()
        .map(|(r, by)| (r.clone(), by.values().sum()))
        .collect()
}

/// Qualys writes (create, update, delete, status) among per-route counts.
pub fn qualys_writes(per_route: &BTreeMap<String, u64>) -> u64 {
    per_route
        .iter()
        .filter(|(r, _)| {
            r.starts_with("POST /pm") || r.starts_with("PATCH") || r.starts_with("DELETE")
        })
        .map(|(_, n)| n)
        .sum()
}

/// The simulator, the fake API server with the CRD, namespace `ns` with the Secret `qualys`
/// (the simulator's URL and user), and a temporary folder holding a kubeconfig for the fake.
pub struct Bed {
    pub sim: Arc<SimHandle>,
    pub fake: FakeApiServer,
    pub client: kube::Client,
    pub ns: String,
    pub dir: PathBuf,
}

impl Bed {
    pub async fn start(ns: &str, sim_config: SimConfig, tag: &str) -> anyhow::Result<Bed> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = Arc::new(sim::start(sim_config).await?);
        let fake = FakeApiServer::start().await;
        fake.register_crd(&api::crd()).map_err(anyhow::Error::msg)?;
        fake.create_namespace(ns).map_err(anyhow::Error::msg)?;
        let client = fake.client();
        let secret: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "qualys", "namespace": ns},
            "stringData": {"gatewayUrl": sim.base_url(), "username": "sim", "password": "sim"}}))?;
        Api::<Secret>::namespaced(client.clone(), ns)
            .patch(
                "qualys",
                &PatchParams::apply("harness").force(),
                &Patch::Apply(&secret),
            )
            .await?;
        let dir = std::env::temp_dir().join(format!(
            "qpm-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::File::create(dir.join("kubeconfig"))?.write_all(
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
                fake.url()
            )
            .as_bytes(),
        )?;
        Ok(Bed {
            sim,
            fake,
            client,
            ns: ns.to_string(),
            dir,
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `qpm-operator run --namespace NS --listen 127.0.0.1:0 --qualys-budget none ARGS…` (the
    /// harnesses pace the operator by `--qualys-rps`, not by the hourly default) with `KUBECONFIG` set,
    /// `RUST_LOG=warn` (unless set) and glibc limited to two malloc arenas (unless set).
    /// `wrap` runs it under another program (e.g. valgrind's massif).
    pub fn operator_command(&self, args: &[String], wrap: &[String]) -> Command {
        let mut command = match wrap.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_qpm-operator"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_qpm-operator")),
        };
        command
            .args(["run", "--namespace", &self.ns, "--listen", "127.0.0.1:0"])
            .args(["--qualys-budget", "none"])
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env(
                "MALLOC_ARENA_MAX",
                std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
            )
            .stdout(Stdio::null());
        command
    }

    /// Starts the operator with its stderr appended to `log` in the temporary folder.
    pub fn spawn_logged(
        &self,
        args: &[String],
        env: &[(&str, &str)],
        log: &str,
    ) -> anyhow::Result<Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))?;
        let mut command = self.operator_command(args, &[]);
        command.envs(env.iter().copied()).stderr(Stdio::from(file));
        Ok(command.spawn()?)
    }

    pub fn log_path(&self, log: &str) -> PathBuf {
        self.dir.join(log)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `lines` lines of a file (for failure reports).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
