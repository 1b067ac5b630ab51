//! Load harness for the controller: N DeploymentJobs in a Kubernetes API server (the
//! in-process fake), the Qualys simulator, and the operator as its own process (the release
//! binary, `qpm-operator run`). Prints, as figures and as ratios within the run (this machine's
//! speed varies): the time until every resource is Ready against the ideal N / rps, Qualys calls
//! per new job, the operator's RSS idle and at 1,000, 5,000 and N resources with the slope per
//! resource, Qualys calls and status writes per poll in steady state, the latency from a spec
//! edit to the PATCH on the wire, and from a change made in Qualys to its correction as a share
//! of the poll interval. A benchmark, not a test: nothing here asserts a time.
//!
//! ```sh
//! cargo bench --bench controller_load                         # 1,000 jobs
//! QPM_LOAD_JOBS=10000 cargo bench --bench controller_load     # 10,000 jobs
//! ```
//! Knobs: QPM_LOAD_JOBS (1000), QPM_LOAD_RPS (200), QPM_LOAD_POLL_SECS (10), QPM_LOAD_POLLS (3),
//! QPM_LOAD_EDITS (200), QPM_LOAD_DRIFTS (5), QPM_LOAD_WRAP (a profiler to run the operator under).

#[path = "support/operator.rs"]
mod operator;
#[path = "../tests/support/mod.rs"]
mod support;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use operator::{Bed, calls, env_num, peak_rss_kib, qualys_writes, ready, rss_kib, totals};
use qpm_operator::api::DeploymentJob;
use qpm_operator::sim::{self, SimConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn manifest(i: usize) -> DeploymentJob {
    serde_json::from_value(json!({
        "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
        "metadata": {"name": format!("job-{i:05}")},
        "spec": {"connectionRef": {"name": "qualys"}, "job": {
            "name": format!("load job {i}"), "platform": if i.is_multiple_of(2) { "Windows" } else { "Linux" },
            "scheduleType": "Daily", "startDateTime": "2025-07-01 09:57:18 AM",
            "timeout": 6, "timeoutUnit": "HOURS",
            "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]}}
    }))
    .expect("manifest")
}

async fn create_jobs(jobs: &Api<DeploymentJob>, range: std::ops::Range<usize>) {
    use futures::StreamExt;
    futures::stream::iter(range.map(manifest))
        .for_each_concurrent(32, |dj| {
            let jobs = jobs.clone();
            async move {
                if let Err(e) = jobs.create(&PostParams::default(), &dj).await {
                    eprintln!("create {}: {e}", dj.name_any());
                }
            }
        })
        .await;
}

/// Wait until `target` resources are Ready; returns the highest RSS seen meanwhile.
async fn wait_for(
    jobs: &Api<DeploymentJob>,
    operator: &mut Child,
    target: usize,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut peak = 0;
    loop {
        let list = jobs.list(&Default::default()).await?;
        let done = list.items.iter().filter(|d| ready(d)).count();
        peak = peak.max(rss_kib(operator).unwrap_or(0));
        if done >= target {
            return Ok(peak);
        }
        if let Ok(Some(status)) = operator.try_wait() {
            anyhow::bail!("the operator exited: {status}");
        }
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("only {done}/{target} Ready after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Spec edit → PATCH on the wire, and out-of-band change in Qualys → its correction.
async fn latency(
    jobs: &Api<DeploymentJob>,
    sim: &sim::SimHandle,
    n: usize,
    poll: u64,
) -> anyhow::Result<()> {
    const PATCH_ROUTE: &str = "PATCH /pm/v1/deploymentjob/update/{id}";
    let edits = env_num("QPM_LOAD_EDITS", 200) as usize;
    let drifts = env_num("QPM_LOAD_DRIFTS", 5) as usize;
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut pick = move || {
        // xorshift: a fixed sequence, so runs edit the same resources.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state % n as u64) as usize
    };
    let wait_patch = |before: u64, limit: Duration| async move {
        let started = Instant::now();
        while sim.count(PATCH_ROUTE) <= before {
            if started.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Some(started.elapsed())
    };
    let mut seen = Vec::new();
    for k in 0..edits {
        let name = format!("job-{:05}", pick());
        let before = sim.count(PATCH_ROUTE);
        let patch = json!({"spec": {"job": {"timeout": 7 + (k % 5)}}});
        jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        match wait_patch(before, Duration::from_secs(30)).await {
            Some(t) => seen.push(t),
            None => eprintln!("edit of {name}: no PATCH within 30s"),
        }
    }
    seen.sort();
    if !seen.is_empty() {
        println!(
            "spec edit → PATCH over {} edits of {n} resources: p50 {:.1} ms, p99 {:.1} ms (goal p50 ≤ 100 ms)",
            seen.len(),
            percentile(&seen, 0.5).as_secs_f64() * 1e3,
            percentile(&seen, 0.99).as_secs_f64() * 1e3
        );
    }
    let mut corrected = Vec::new();
    let interval = Duration::from_secs(poll);
    for k in 0..drifts {
        let Some(job) = sim.jobs().into_iter().nth(pick()) else {
            continue;
        };
        let Some(id) = job.get("id").and_then(|v| v.as_str()).map(String::from) else {
            continue;
        };
        let before = sim.count(PATCH_ROUTE);
        sim.console_edit(&id, json!({"timeout": 20 + k}))?;
        match wait_patch(before, interval * 3).await {
            Some(t) => corrected.push(t),
            None => eprintln!("drift on {id}: not corrected within 3 polls"),
        }
    }
    corrected.sort();
    if !corrected.is_empty() {
        println!(
            "out-of-band change → correction over {} changes: p50 {:.2}, max {:.2} of the poll interval ({poll}s)",
            corrected.len(),
            percentile(&corrected, 0.5).as_secs_f64() / interval.as_secs_f64(),
            percentile(&corrected, 1.0).as_secs_f64() / interval.as_secs_f64()
        );
    }
    Ok(())
}

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
    // The idle process: started, caches synced on an empty namespace, nothing to do yet.
    wait_for(&jobs, &mut operator, 0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = rss_kib(&operator).unwrap_or(0);
    println!("operator RSS idle: {:.1} MiB", idle_kib as f64 / 1024.0);

    // Resources arrive in stages so that RSS can be read at 1,000, 5,000 and N resources.
    let stages: Vec<usize> = [1000, 5000]
        .into_iter()
        .filter(|&s| s < n)
        .chain([n])
        .collect();
    let mut created = 0;
    let mut busy = Duration::ZERO;
    let mut rss_at: Vec<(usize, u64)> = Vec::new();
    let mut peak_seen = 0;
    for &target in &stages {
        let stage_start = Instant::now();
        create_jobs(&jobs, created..target).await;
        created = target;
        peak_seen = peak_seen.max(wait_for(&jobs, &mut operator, target).await?);
        busy += stage_start.elapsed();
        let rss = rss_kib(&operator).unwrap_or(0);
        rss_at.push((target, rss));
        println!(
            "{target} Ready after {:.1}s of work; operator RSS {:.1} MiB",
            busy.as_secs_f64(),
            rss as f64 / 1024.0
        );
    }
    let ideal = n as f64 / rps as f64;
    println!(
        "all {n} Ready after {:.1}s; ideal N/rps = {ideal:.1}s; ratio {:.2} (goal ≤ 1.10)",
        busy.as_secs_f64(),
        busy.as_secs_f64() / ideal
    );
    let rollout = calls(&BTreeMap::new(), &sim.counters());
    println!("Qualys calls until Ready:");
    for (route, count) in &rollout {
        println!("  {route:<55} {count}");
    }
    let sum = |pred: &dyn Fn(&str) -> bool| -> u64 {
        rollout
            .iter()
            .filter(|(r, _)| pred(r))
            .map(|(_, c)| c)
            .sum()
    };
    let writes = qualys_writes(&rollout);
    let reads = sum(&|r| r.starts_with("GET /pm"));
    println!(
        "per new job: {:.3} writes (goal 1), {:.3} reads; reads in all {reads}",
        writes as f64 / n as f64,
        reads as f64 / n as f64
    );
    if let (Some(&(first_n, first)), Some(&(last_n, last))) = (rss_at.first(), rss_at.last())
        && last_n > first_n
    {
        println!(
            "RSS slope {:.2} KiB per resource between {first_n} and {last_n}; {:.2} KiB per resource above idle at {last_n} (goal ≤ 6)",
            (last as f64 - first as f64) / (last_n - first_n) as f64,
            (last as f64 - idle_kib as f64) / last_n as f64
        );
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

    latency(&jobs, sim, n, poll).await?;

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
