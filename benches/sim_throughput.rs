//! Simulator throughput: with 10,000 jobs stored, N concurrent clients drive GET, PATCH and
//! list calls over loopback HTTP for a few seconds each, and the requests per second are
//! printed. A harness that prints figures, not a test: nothing here asserts a speed.
//!
//! `cargo bench --bench sim_throughput` (env: SIM_BENCH_CLIENTS, default 1,8,32;
//! SIM_BENCH_SECS, default 3; SIM_BENCH_JOBS, default 10000).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qpm_operator::sim::{self, SimConfig, SimHandle};
use serde_json::{Value, json};

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn seed_job() -> Value {
    let path = format!(
        "{}/testdata/seed/02-linux-rollback.response.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).expect("seed fixture")).expect("JSON")
}

fn job_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// A stored job per index: the seed's Linux job with its own id, name, actions and platform.
fn job_doc(template: &Value, customer: &str, i: usize) -> Value {
    let mut doc = template.clone();
    doc["id"] = json!(job_id(i));
    doc["customerId"] = json!(customer);
    doc["name"] = json!(format!("bench job {i}"));
    doc["platform"] = json!(if i.is_multiple_of(2) {
        "Windows"
    } else {
        "Linux"
    });
    for (list, n) in [("preDeployActions", 1), ("postDeployActions", 2)] {
        let action = format!("00000000-0000-4000-{n:04}-{i:012}");
        doc[list][0]["actionId"] = json!(action);
        doc[list][0]["script"] = json!(format!("{customer}/{action}/Script"));
    }
    doc
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Patch,
    List,
}

struct Figures {
    ok: u64,
    failed: u64,
    elapsed: Duration,
}

/// What every run shares.
struct Setup {
    base: String,
    token: String,
    template: Value,
    jobs: usize,
    customer: String,
    secs: u64,
}

async fn drive(op: Op, clients: usize, setup: &Setup) -> Figures {
    let Setup {
        base,
        token,
        template,
        jobs,
        customer,
        secs,
    } = setup;
    let (jobs, secs) = (*jobs, *secs);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (ok, failed) = (ok.clone(), failed.clone());
        let http = reqwest::Client::new();
        let base = base.to_string();
        let auth = format!("Bearer {token}");
        let template = template.clone();
        let customer = customer.to_string();
        tasks.push(tokio::spawn(async move {
            // A cheap deterministic spread over the jobs, different per client.
            let mut k = (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while Instant::now() < deadline {
                k ^= k << 13;
                k ^= k >> 7;
                k ^= k << 17;
                let i = (k % jobs as u64) as usize;
                let request = match op {
                    Op::Get => http.get(format!("{base}/pm/v1/deploymentjob/{}", job_id(i))),
                    Op::Patch => http
                        .patch(format!("{base}/pm/v1/deploymentjob/update/{}", job_id(i)))
                        .json(&job_doc(&template, &customer, i)),
                    Op::List => {
                        let page = (k % 50) as usize;
                        http.get(format!(
                            "{base}/pm/v1/deploymentjobs/summary?platform=Linux&pageNumber={page}&pageSize=100"
                        ))
                    }
                };
                let good = match request.header("authorization", &auth).send().await {
                    Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Figures {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

async fn token(sim: &SimHandle) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{}/auth", sim.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=sim&password=sim&token=true&permissions=true")
        .send()
        .await
        .expect("auth");
    resp.text().await.expect("token")
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clients = env_list("SIM_BENCH_CLIENTS", &[1, 8, 32]);
    let secs = env_list("SIM_BENCH_SECS", &[3])[0] as u64;
    let jobs = env_list("SIM_BENCH_JOBS", &[10_000])[0].max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let sim = sim::start(SimConfig::default())
            .await
            .expect("the simulator");
        let template = seed_job();
        let customer = sim.customer_id().to_string();
        let load = Instant::now();
        for i in 0..jobs {
            sim.put_job(job_doc(&template, &customer, i)).expect("put");
        }
        println!(
            "simulator throughput: {jobs} jobs stored in {:.2?}; {} s per run; {} on {} CPUs",
            load.elapsed(),
            secs,
            std::env::consts::ARCH,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let setup = Setup {
            base: sim.base_url(),
            token: token(&sim).await,
            template,
            jobs,
            customer,
            secs,
        };
        println!(
            "{:<28} {:>8} {:>12} {:>8}",
            "operation", "clients", "requests/s", "errors"
        );
        for (op, label) in [
            (Op::Get, "GET deploymentjob/{id}"),
            (Op::Patch, "PATCH update/{id} (full)"),
            (Op::List, "GET summary (100/page)"),
        ] {
            for &n in &clients {
                let f = drive(op, n, &setup).await;
                println!(
                    "{label:<28} {n:>8} {:>12.0} {:>8}",
                    f.ok as f64 / f.elapsed.as_secs_f64(),
                    f.failed
                );
            }
        }
        assert_eq!(sim.job_count(), jobs);
        sim.shutdown().await;
    });
}
