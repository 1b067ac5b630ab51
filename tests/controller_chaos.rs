//! A short chaos run of the controller (the operator binary as its own process): 100
//! DeploymentJobs, 5 SIGKILLs at chosen moments with faults in the simulator, then the end
//! checks of `benches/support/chaos.rs`; and the leader of two replicas SIGKILLed mid-rollout,
//! or SIGSTOPped past its lease and resumed.
//! The full runs are `cargo bench --bench controller_chaos` (docs/PERFORMANCE.md).

#[path = "../benches/support/chaos.rs"]
mod chaos;
#[path = "../benches/support/operator.rs"]
mod operator;
mod support;

use std::time::Duration;

fn short() -> chaos::Config {
    chaos::Config {
        jobs: 100,
        kills: 5,
        rps: 100,
        poll_secs: 1,
        seed: 14,
        converge_timeout: Duration::from_secs(120),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_five_times_during_a_rollout_the_operator_loses_and_repeats_nothing() {
    let figures = chaos::kills(&short())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("{figures}");
    assert_eq!(figures.kills, 5);
    assert_eq!(figures.restarts, 5);
    assert_eq!(figures.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_sigkilled_leader_and_the_old_one_writes_nothing_after() {
    let figures = chaos::failover(&short(), false)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("{figures}");
    assert_eq!(figures.old_leader_writes_after_takeover, Some((0, 0)));
    assert_eq!(figures.duplicates, 0);
}

/// The leader SIGSTOPped until the standby holds the lease, then resumed: its reconciles in
/// flight find the lease's last renewal too old and write nothing to Qualys.
///
/// The fence is a check before each request, so a pause that lands between a check and the
/// bytes on the wire lets that one request out on resume. The Qualys client checks in the task
/// that sends, right before reqwest writes; kube's client hands the request to its buffer task
/// after the check, a wider gap, and one run in about five let one status patch and one
/// finalizer patch of the resumed leader through. So Kubernetes writes are bounded by the
/// reconciles in flight (`chaos::RECONCILES`), one each, not zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_resumed_after_losing_its_lease_writes_nothing_after_the_takeover() {
    let figures = chaos::failover(&short(), true)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("{figures}");
    let (kube, qualys) = figures
        .old_leader_writes_after_takeover
        .expect("the takeover was seen");
    assert_eq!(qualys, 0, "Qualys writes by the resumed leader");
    assert!(
        kube <= chaos::RECONCILES,
        "{kube} Kubernetes writes by the resumed leader"
    );
    assert_eq!(figures.duplicates, 0);
}
