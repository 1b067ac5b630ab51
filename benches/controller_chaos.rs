//! Chaos for the controller: N DeploymentJobs (plain ones, chained parent/child pairs, ConfigMap
//! scripts, `status: Enabled` recurring and one-shot jobs, `Delete` and `Orphan` resources
//! deleted mid-run) rolled out by the operator — its own process, the binary — which is
//! SIGKILLed at chosen moments (creates, status writes, deletions) and restarted each time,
//! against a simulator that commits writes and then fails their answers and answers 429 to a
//! share of requests. Then two replicas with leader election whose leader is SIGKILLed
//! mid-rollout. Each run ends with the end checks of `support/chaos.rs` (one job per resource,
//! nothing enabled twice, children linked, deletions honoured, three quiet polls) and prints its
//! figures. A benchmark, not a test: nothing here asserts a time.
//!
//! ```sh
//! cargo bench --bench controller_chaos                          # 1,000 jobs, 20 kills
//! QPM_CHAOS_JOBS=200 QPM_CHAOS_KILLS=30 cargo bench --bench controller_chaos
//! ```
//! Knobs: QPM_CHAOS_JOBS (1000), QPM_CHAOS_KILLS (20), QPM_CHAOS_RPS (100),
//! QPM_CHAOS_POLL_SECS (2), QPM_CHAOS_SEED (1), QPM_CHAOS_SCENARIO (`kills`, `failover`, both by default; or `pause`:
//! the leader SIGSTOPped past its lease and resumed).

#[path = "support/chaos.rs"]
mod chaos;
#[path = "support/operator.rs"]
mod operator;
#[path = "../tests/support/mod.rs"]
mod support;

use operator::env_num;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cfg = chaos::Config {
        jobs: env_num("QPM_CHAOS_JOBS", 1000) as usize,
        kills: env_num("QPM_CHAOS_KILLS", 20) as usize,
        rps: env_num("QPM_CHAOS_RPS", 100),
        poll_secs: env_num("QPM_CHAOS_POLL_SECS", 2),
        seed: env_num("QPM_CHAOS_SEED", 1),
        converge_timeout: Duration::from_secs(600),
    };
    let scenario = std::env::var("QPM_CHAOS_SCENARIO").unwrap_or_default();
    if scenario.is_empty() || scenario == "kills" {
        println!("{}", chaos::kills(&cfg).await?);
    }
    if scenario.is_empty() || scenario == "failover" {
        println!("{}", chaos::failover(&cfg, false).await?);
    }
    // Not part of the default run (tests/controller_chaos.rs has a short one); docs/PERFORMANCE.md.
    if scenario == "pause" {
        println!("{}", chaos::failover(&cfg, true).await?);
    }
    Ok(())
}
