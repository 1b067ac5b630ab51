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

#[path = "support/operator.rs"]
mod operator;
#[path = "../tests/support/mod.rs"]
mod support;

use kube::api::PostParams;
use kube::{Api, ResourceExt};
use operator::{Bed, calls, env_num, peak_rss_kib, qualys_writes, ready, rss_kib, totals};
use qpm_operator::api::DeploymentJob;
use qpm_operator::sim::SimConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = env_num("QPM_LOAD_JOBS", 1000) as usize;
    let rps = env_num("QPM_LOAD_RPS", 200);
    let poll = env_num("QPM_LOAD_POLL_SECS", 10);
    let polls = env_num("QPM_LOAD_POLLS", 3);
    let ns = "load";

    let bed = Bed::start(ns, SimConfig::default(), "load").await?;
    let (sim, fake, client) = (&bed.sim, &bed.fake, bed.client.clone());

    println!("controller load: {n} DeploymentJobs, --qualys-rps {rps}, --poll-interval {poll}s");
    // QPM_LOAD_WRAP runs the operator under another program (e.g. valgrind's massif).
    let wrap: Vec<String> = std::env::var("QPM_LOAD_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut operator = bed
        .operator_command(
            &[
                "--leader-election=false",
                "--qualys-rps",
                &rps.to_string(),
                "--qualys-concurrency",
                "16",
                "--concurrency",
                "32",
                "--poll-interval",
                &format!("{poll}s"),
            ]
            .map(String::from),
            &wrap,
        )
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
    let writes = qualys_writes(&steady);
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
    Ok(())
}
