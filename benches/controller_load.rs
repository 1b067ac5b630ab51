//! Load harness for the controller: N DeploymentJobs in a Kubernetes API server (the
//! in-process fake), the Qualys simulator, and the operator as its own process (the release
//! binary, `qpm-operator run`). Prints the time until every resource is Ready, Qualys calls by
//! endpoint, the operator's peak RSS, and, in steady state, Qualys calls and status writes per
//! poll. A benchmark, not a test: nothing here asserts a time.
//!
//! ```sh
//! cargo bench --bench controller_load                         # 1,000 jobs
//! QPM_LOAD_JOBS=10000 cargo bench --bench controller_load     # 10,000 jobs
//! ```
//! Knobs: QPM_LOAD_JOBS (1000), QPM_LOAD_RPS (200), QPM_LOAD_POLL_SECS (10), QPM_LOAD_POLLS (3).

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use qpm_operator::api::{self, DeploymentJob};
use qpm_operator::sim::{self, SimConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::fake_apiserver::FakeApiServer;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ready(dj: &DeploymentJob) -> bool {
    dj.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn calls(before: &BTreeMap<String, u64>, after: &sim::Counters) -> BTreeMap<String, u64> {
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

fn totals(c: &sim::Counters) -> BTreeMap<String, u64> {
    c.0.iter()
        .map(|(r, by)| (r.clone(), by.values().sum()))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = env_num("QPM_LOAD_JOBS", 1000) as usize;
    let rps = env_num("QPM_LOAD_RPS", 200);
    let poll = env_num("QPM_LOAD_POLL_SECS", 10);
    let polls = env_num("QPM_LOAD_POLLS", 3);
    let ns = "load";

    let sim = sim::start(SimConfig::default()).await?;
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
            &PatchParams::apply("load").force(),
            &Patch::Apply(&secret),
        )
        .await?;

    let dir = std::env::temp_dir().join(format!("qpm-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::File::create(&kubeconfig)?.write_all(
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            fake.url()
        )
        .as_bytes(),
    )?;

    println!("controller load: {n} DeploymentJobs, --qualys-rps {rps}, --poll-interval {poll}s");
    // QPM_LOAD_WRAP runs the operator under another program (e.g. valgrind's massif).
    let wrap: Vec<String> = std::env::var("QPM_LOAD_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_qpm-operator"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_qpm-operator")),
    };
    let mut operator = command
        .args([
            "run",
            "--leader-election=false",
            "--namespace",
            ns,
            "--listen",
            "127.0.0.1:0",
            "--qualys-budget",
            "none",
            "--qualys-rps",
            &rps.to_string(),
            "--qualys-concurrency",
            "16",
            "--concurrency",
            "32",
            "--poll-interval",
            &format!("{poll}s"),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;

    let jobs: Api<DeploymentJob> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let manifests: Vec<DeploymentJob> = (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
                "metadata": {"name": format!("job-{i:05}")},
                "spec": {"connectionRef": {"name": "qualys"}, "job": {
                    "name": format!("load job {i}"), "platform": if i % 2 == 0 { "Windows" } else { "Linux" },
                    "scheduleType": "Daily", "startDateTime": "2025-07-01 09:57:18 AM",
                    "timeout": 6, "timeoutUnit": "HOURS",
                    "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]}}
            }))
            .expect("manifest")
        })
        .collect();
    use futures::StreamExt;
    futures::stream::iter(manifests)
        .for_each_concurrent(32, |dj| {
            let jobs = jobs.clone();
            async move {
                if let Err(e) = jobs.create(&PostParams::default(), &dj).await {
                    eprintln!("create {}: {e}", dj.name_any());
                }
            }
        })
        .await;
    println!(
        "created {n} resources in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut peak_seen = 0;
    loop {
        let list = jobs.list(&Default::default()).await?;
        let done = list.items.iter().filter(|d| ready(d)).count();
        peak_seen = peak_seen.max(rss_kib(&operator).unwrap_or(0));
        if done == n {
            break;
        }
        if let Ok(Some(status)) = operator.try_wait() {
            anyhow::bail!("the operator exited: {status}");
        }
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("only {done}/{n} Ready after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let to_ready = started.elapsed();
    println!("all {n} Ready after {:.1}s", to_ready.as_secs_f64());
    println!("Qualys calls until Ready:");
    for (route, count) in calls(&BTreeMap::new(), &sim.counters()) {
        println!("  {route:<55} {count}");
    }
    println!(
        "operator peak RSS so far: {} MiB",
        peak_rss_kib(&operator).unwrap_or(peak_seen) / 1024
    );

    // Steady state: nothing changes; count what each poll costs.
    tokio::time::sleep(Duration::from_secs(poll + 2)).await;
    let before = totals(&sim.counters());
    let status_before = fake.writes_to("deploymentjobs", Some("status")).len();
    let window = Duration::from_secs(poll * polls);
    tokio::time::sleep(window).await;
    let steady = calls(&before, &sim.counters());
    let status_writes = fake.writes_to("deploymentjobs", Some("status")).len() - status_before;
    println!("steady state over {polls} polls ({}s):", window.as_secs());
    for (route, count) in &steady {
        println!(
            "  {route:<55} {count} ({:.1} per poll)",
            *count as f64 / polls as f64
        );
    }
    let writes: u64 = steady
        .iter()
        .filter(|(r, _)| {
            r.starts_with("POST /pm") || r.starts_with("PATCH") || r.starts_with("DELETE")
        })
        .map(|(_, n)| n)
        .sum();
    println!("  Qualys writes: {writes}; status writes: {status_writes}");
    println!(
        "operator peak RSS: {} MiB (VmHWM)",
        peak_rss_kib(&operator).unwrap_or(peak_seen) / 1024
    );

    // SIGTERM first: a graceful stop (and lets a wrapping profiler write its report).
    let _ = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while operator.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = operator.kill();
    let _ = operator.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
