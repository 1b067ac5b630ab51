//! The controller's chaos runs: DeploymentJobs rolled out by the operator (its own process)
//! while it is SIGKILLed and restarted again and again, or while the leader of two replicas is
//! SIGKILLed, against a simulator that commits writes and then fails their answers and answers
//! 429 to a share of requests. Then the end checks: one Qualys job per resource, nothing enabled
//! twice, children linked to their parent's job, no job left for a deleted `Delete` resource,
//! every `Orphan` job kept, and a quiet period with no write at all.
//!
//! Used by `benches/controller_chaos.rs` (1,000 jobs, 20 kills) and `tests/controller_chaos.rs`
//! (a short run). The checks return an error naming every violation; figures are printed, no
//! time is asserted.
#![allow(dead_code)] // The test uses a part of it.

use crate::operator::{Bed, calls, qualys_writes, ready, tail, totals};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use qpm_operator::api::DeploymentJob;
use qpm_operator::sim::{Fault, FaultKind, RateLimit, SimConfig, SimHandle};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CREATE: &str = "POST /pm/v1/deploymentjob";
pub const UPDATE: &str = "PATCH /pm/v1/deploymentjob/update/{id}";
pub const DELETE: &str = "DELETE /pm/v1/deploymentjobs";
pub const STATUS: &str = "POST /pm/v1/deploymentjobs/update/status/{action}";
const LIST: &str = "GET /pm/v1/deploymentjobs/summary";
const NS: &str = "chaos";
const LEASE: &str = "qpm-operator";

/// One chaos run.
#[derive(Clone, Debug)]
pub struct Config {
    pub jobs: usize,
    /// SIGKILLs of the single operator (the failover run kills its leader once).
    pub kills: usize,
    pub poll_secs: u64,
    /// The operator's `--qualys-rps`; the simulator admits three quarters of it per second.
    pub rps: u64,
    pub seed: u64,
    /// How long the operator gets to converge after the last kill before the run fails.
    pub converge_timeout: Duration,
}

/// What a resource is for: plain; the parent or the chained child of a pair; deleted mid-run
/// with `deletionPolicy: Delete` or `Orphan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Plain,
    Parent,
    Child,
    Delete,
    Orphan,
}

fn role(i: usize) -> Role {
    match i % 10 {
        8 => Role::Parent,
        9 => Role::Child,
        _ => match i % 50 {
            3 | 13 | 23 => Role::Delete,
            5 | 15 => Role::Orphan,
            _ => Role::Plain,
        },
    }
}

fn resource_name(i: usize) -> String {
    format!("chaos-{i:05}")
}

fn job_name(i: usize) -> String {
    format!("Chaos job {i:05}")
}

/// Whether job `i` is to be `status: Enabled`, and whether it is a one-shot (On-demand) job.
fn enabled(i: usize) -> (bool, bool) {
    match i % 4 {
        0 => (i.is_multiple_of(20), true),
        1 => (true, false),
        2 => (i % 8 == 2, false),
        _ => (false, false),
    }
}

/// Windows jobs take their scripts from a ConfigMap, Linux jobs inline; a pair shares a
/// platform (i % 10 = 8, 9 are Linux).
fn manifest(i: usize) -> Value {
    let windows = i % 10 < 6;
    let (platform, script_type, script) = if windows {
        (
            "Windows",
            "ps",
            json!({"scriptFrom": {"configMapKeyRef": {"name": "chaos-scripts", "key": "check.ps1"}}}),
        )
    } else {
        ("Linux", "sh", json!({"script": "bHM="}))
    };
    let action = |item: &str| {
        let mut a = json!({"action": "Run Script", "params": {"actionItem": item, "timeout": 180},
            "scriptType": script_type});
        for (k, v) in script.as_object().into_iter().flatten() {
            a[k] = v.clone();
        }
        a
    };
    let (on, _) = enabled(i);
    let mut job = json!({
        "name": job_name(i), "type": "Install", "platform": platform,
        "status": if on { "Enabled" } else { "Disabled" },
        "timeout": 6, "timeoutUnit": "HOURS",
        "approvedPatches": [format!("00000000-0000-4000-8000-{i:012}")],
        "preDeployActions": [action("pre")], "postDeployActions": [action("post")],
    });
    match i % 4 {
        0 => job["scheduleType"] = json!("On-demand"),
        1 => {
            job["scheduleType"] = json!("Daily");
            job["startDateTime"] = json!("2025-07-01 09:57:18 AM");
        }
        2 => {
            job["scheduleType"] = json!("Weekly");
            job["startDateTime"] = json!("2025-07-01 09:57:18 AM");
            job["recurringWeekDays"] = json!("0,1,0,0,0,0,0");
        }
        _ => {
            job["scheduleType"] = json!("Monthly");
            job["startDateTime"] = json!("2025-07-01 09:57:18 AM");
            job["dayOfMonth"] = json!(15);
        }
    }
    let mut spec = json!({"connectionRef": {"name": "qualys"}});
    match role(i) {
        Role::Child => {
            job["linkedJobRef"] = json!({"name": resource_name(i - 1)});
            job["chainedJobRule"] =
                json!([{"actionRefs": [{"actionItem": "post"}], "threshold": 100}]);
        }
        Role::Delete => spec["deletionPolicy"] = json!("Delete"),
        Role::Orphan => spec["deletionPolicy"] = json!("Orphan"),
        Role::Plain | Role::Parent => {}
    }
    spec["job"] = job;
    json!({"apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
        "metadata": {"name": resource_name(i)}, "spec": spec})
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub scenario: String,
    pub jobs: usize,
    pub kills: usize,
    /// Kills by the moment chosen: "create", "status write", "delete", or "idle" when the awaited
    /// counter did not move in time.
    pub kills_by_moment: BTreeMap<String, usize>,
    pub restarts: usize,
    /// (resource, kill) pairs where the resource had a pending create right after the kill, and
    /// of those, the ones whose job already existed in Qualys (the answer was lost or not yet
    /// recorded): all must end Ready with one job.
    pub pending_creates: usize,
    pub pending_with_job: usize,
    pub deleted_delete: usize,
    pub deleted_orphan: usize,
    pub commit_then_fail: u64,
    pub rate_limited: u64,
    pub duplicates: usize,
    pub max_enables: u64,
    pub converge_after_last_kill: Duration,
    pub takeover: Option<Duration>,
    pub qualys_calls: BTreeMap<String, u64>,
    pub status_writes: usize,
    pub quiet_qualys_writes: u64,
    pub quiet_status_writes: usize,
    pub quiet_secs: u64,
    /// In the poll after convergence, before the quiet period.
    pub settle_qualys_calls: BTreeMap<String, u64>,
    pub settle_status_writes: usize,
    pub old_leader_writes_after_takeover: Option<(usize, usize)>,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} DeploymentJobs", self.scenario, self.jobs)?;
        writeln!(
            f,
            "  kills: {} {:?}; restarts: {}",
            self.kills, self.kills_by_moment, self.restarts
        )?;
        if let Some(t) = self.takeover {
            writeln!(
                f,
                "  takeover (lease acquired by the standby) after the leader's kill/pause: {:.1}s",
                t.as_secs_f64()
            )?;
        }
        if let Some((kube, qualys)) = self.old_leader_writes_after_takeover {
            writeln!(
                f,
                "  writes by the old leader after the takeover: Kubernetes {kube}, Qualys {qualys}"
            )?;
        }
        writeln!(
            f,
            "  pending creates caught by a kill (resource × kill): {} (job already in Qualys: {}), all recovered",
            self.pending_creates, self.pending_with_job
        )?;
        writeln!(
            f,
            "  deleted mid-run: {} Delete, {} Orphan",
            self.deleted_delete, self.deleted_orphan
        )?;
        writeln!(
            f,
            "  faults served: commit-then-fail {}, 429 {}",
            self.commit_then_fail, self.rate_limited
        )?;
        writeln!(
            f,
            "  duplicates: {}; most enables of one job: {}",
            self.duplicates, self.max_enables
        )?;
        writeln!(
            f,
            "  converged {:.1}s after the last kill",
            self.converge_after_last_kill.as_secs_f64()
        )?;
        let calls: Vec<String> = self
            .qualys_calls
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        writeln!(f, "  Qualys calls: {}", calls.join(", "))?;
        writeln!(f, "  status writes: {}", self.status_writes)?;
        writeln!(
            f,
            "  in the poll after convergence: status writes {}, Qualys calls {:?}",
            self.settle_status_writes, self.settle_qualys_calls
        )?;
        write!(
            f,
            "  quiet period ({}s, 3 polls): Qualys writes {}, status writes {}",
            self.quiet_secs, self.quiet_qualys_writes, self.quiet_status_writes
        )
    }
}

/// Arms commit-then-fail and 429 faults on the simulator every 100 ms while it runs, and
/// counts what it armed.
struct Monkey {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    armed: Arc<Mutex<(u64, u64)>>,
}

impl Monkey {
    fn start(sim: Arc<SimHandle>, seed: u64) -> Monkey {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let armed = Arc::new(Mutex::new((0u64, 0u64)));
        let (s, a) = (stop.clone(), armed.clone());
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if sim.faults().len() >= 6 {
                    continue;
                }
                let roll = rng.random_range(0..10u32);
                let route = match roll {
                    0..=2 => CREATE,
                    3 | 4 => STATUS,
                    5 => DELETE,
                    6 => UPDATE,
                    _ => [CREATE, LIST, STATUS, UPDATE][rng.random_range(0..4usize)],
                };
                let kind = if roll < 7 {
                    FaultKind::CommitThenFail {
                        drop_connection: rng.random_bool(0.5),
                    }
                } else {
                    FaultKind::RateLimited {
                        retry_after_secs: 1,
                    }
                };
                let mut counts = a.lock().unwrap_or_else(|e| e.into_inner());
                if roll < 7 {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
                sim.set_fault(Fault::on(route, kind).times(1));
            }
        });
        Monkey { stop, task, armed }
    }

    /// Stops arming; returns (commit-then-fail, 429) armed and since served, counting those
    /// still waiting as not served (they are cleared).
    async fn finish(self, sim: &SimHandle) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
        let left = sim.faults();
        sim.clear_faults();
        let (ctf, rl) = *self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let left_ctf = left
            .iter()
            .filter(|f| matches!(f.kind, FaultKind::CommitThenFail { .. }))
            .count() as u64;
        let left_rl = left.len() as u64 - left_ctf;
        (ctf - left_ctf, rl - left_rl)
    }
}

/// The bed plus what the run did to it.
struct Run {
    bed: Bed,
    sim: Arc<SimHandle>,
    jobs: Api<DeploymentJob>,
    cfg: Config,
    created: BTreeSet<usize>,
    /// Deleted resources; for Orphan ones the job id they had.
    deleted: BTreeMap<usize, Option<String>>,
    pending_seen: BTreeSet<(usize, usize)>,
    pending_with_job: usize,
    /// What the quiet period saw written, for the failure report.
    quiet_detail: Vec<String>,
    figures: Figures,
    rng: StdRng,
}

impl Run {
    async fn start(cfg: &Config, scenario: &str) -> anyhow::Result<Run> {
        let sim_config = SimConfig {
            rate_limit: Some(RateLimit {
                limit: (cfg.rps * 3 / 4).max(1) as u32,
                window: Duration::from_secs(1),
            }),
            seed: cfg.seed,
            ..SimConfig::default()
        };
        let bed = Bed::start(NS, sim_config, "chaos").await?;
        let scripts: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1",
            "kind": "ConfigMap", "metadata": {"name": "chaos-scripts"},
            "data": {"check.ps1": "$drive = Get-PSDrive -Name C\nif ($drive.Free -lt 10GB) { exit 1 }\n"}}))?;
        Api::<ConfigMap>::namespaced(bed.client.clone(), NS)
            .create(&PostParams::default(), &scripts)
            .await?;
        Ok(Run {
            jobs: Api::namespaced(bed.client.clone(), NS),
            sim: bed.sim.clone(),
            bed,
            cfg: cfg.clone(),
            created: BTreeSet::new(),
            deleted: BTreeMap::new(),
            pending_seen: BTreeSet::new(),
            pending_with_job: 0,
            quiet_detail: Vec::new(),
            figures: Figures {
                scenario: scenario.to_string(),
                jobs: cfg.jobs,
                ..Figures::default()
            },
            rng: StdRng::seed_from_u64(cfg.seed),
        })
    }

    fn operator_args(&self, leader_election: bool) -> Vec<String> {
        [
            &format!("--leader-election={leader_election}"),
            "--qualys-rps",
            &self.cfg.rps.to_string(),
            "--qualys-concurrency",
            "8",
            "--concurrency",
            &RECONCILES.to_string(),
            "--poll-interval",
            &format!("{}s", self.cfg.poll_secs),
        ]
        .map(String::from)
        .to_vec()
    }

    fn spawn(&self, identity: &str, leader_election: bool) -> anyhow::Result<Child> {
        self.bed.spawn_logged(
            &self.operator_args(leader_election),
            &[("POD_NAME", identity)],
            "operator.log",
        )
    }

    async fn create_resources(&mut self, indices: &[usize]) -> anyhow::Result<()> {
        let manifests: Vec<DeploymentJob> = indices
            .iter()
            .map(|&i| serde_json::from_value(manifest(i)))
            .collect::<Result<_, _>>()?;
        let results: Vec<_> = futures::stream::iter(manifests)
            .map(|dj| {
                let jobs = self.jobs.clone();
                async move { jobs.create(&PostParams::default(), &dj).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r?;
        }
        self.created.extend(indices.iter().copied());
        Ok(())
    }

    /// Waits until `counter` reaches `target` (polling every 2 ms), at most `timeout`.
    async fn wait_counter(
        &self,
        target: u64,
        timeout: Duration,
        counter: impl Fn(&Run) -> u64,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if counter(self) >= target {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    fn status_writes(&self) -> u64 {
        self.bed.fake.count(|r| {
            r.is_write()
                && r.resource == "deploymentjobs"
                && r.subresource.as_deref() == Some("status")
        }) as u64
    }

    /// 429 answers so far (the rate limit's and the injected ones).
    fn answered_429(&self) -> u64 {
        self.sim
            .counters()
            .0
            .values()
            .map(|by| by.get(&429).copied().unwrap_or(0))
            .sum()
    }

    fn job_index(name: &str) -> Option<usize> {
        name.strip_prefix("chaos-")?.parse().ok()
    }

    /// SIGKILL, then note which resources were caught with a pending create.
    async fn kill(&mut self, child: &mut Child, moment: &str) -> anyhow::Result<()> {
        child.kill()?;
        child.wait()?;
        self.figures.kills += 1;
        *self
            .figures
            .kills_by_moment
            .entry(moment.to_string())
            .or_default() += 1;
        let names: BTreeSet<String> = self
            .sim
            .jobs()
            .iter()
            .filter_map(|j| j["name"].as_str().map(str::to_string))
            .collect();
        for dj in self.jobs.list(&Default::default()).await?.items {
            let pending = dj.status.as_ref().and_then(|s| s.pending_create.as_ref());
            if let (Some(p), Some(i)) = (pending, Self::job_index(&dj.name_any())) {
                self.pending_seen.insert((i, self.figures.kills));
                if names.contains(&p.name) {
                    self.pending_with_job += 1;
                }
            }
        }
        Ok(())
    }

    /// Deletes a share of the `Delete` resources (whatever their state) and of the `Orphan`
    /// ones that are Ready (their job id is kept to check it survives).
    async fn delete_some(&mut self, share: usize) -> anyhow::Result<usize> {
        // An Orphan resource is deleted once Ready; give one of them a moment to get there.
        let deadline = Instant::now() + Duration::from_secs(10);
        let list = loop {
            let list = self.jobs.list(&Default::default()).await?.items;
            let orphan_ready = list.iter().any(|dj| {
                Self::job_index(&dj.name_any()).is_some_and(|i| {
                    role(i) == Role::Orphan && !self.deleted.contains_key(&i) && ready(dj)
                })
            });
            let orphans_left = self
                .created
                .iter()
                .any(|&i| role(i) == Role::Orphan && !self.deleted.contains_key(&i));
            if orphan_ready || !orphans_left || Instant::now() > deadline {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut batch = Vec::new();
        for (wanted, policy) in [(Role::Delete, "Delete"), (Role::Orphan, "Orphan")] {
            let mut picked = 0;
            for dj in &list {
                let Some(i) = Self::job_index(&dj.name_any()) else {
                    continue;
                };
                if role(i) != wanted || self.deleted.contains_key(&i) || picked >= share {
                    continue;
                }
                let id = dj.status.as_ref().and_then(|s| s.job_id.clone());
                if wanted == Role::Orphan && !(ready(dj) && id.is_some()) {
                    continue;
                }
                picked += 1;
                batch.push((i, policy, id));
            }
        }
        for (i, policy, id) in &batch {
            self.jobs
                .delete(&resource_name(*i), &DeleteParams::default())
                .await?;
            self.deleted
                .insert(*i, (*policy == "Orphan").then(|| id.clone()).flatten());
        }
        Ok(batch.len())
    }

    /// Polls until every created resource not deleted is Ready and every deleted one is gone.
    async fn converge(&self, child: &mut Child, log: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.cfg.converge_timeout;
        // Resources Stalled (no retry until something changes) for this long end the wait early.
        let stall_limit = Duration::from_secs((5 * self.cfg.poll_secs).max(10));
        let mut stalled_since: Option<Instant> = None;
        loop {
            let list = self.jobs.list(&Default::default()).await?.items;
            let mut not_ready: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
            // Stalled resources, and children waiting for a parent (whose stall they share).
            let mut stalled = BTreeSet::new();
            let mut waiting = Vec::new();
            let mut lingering = Vec::new();
            for dj in &list {
                let name = dj.name_any();
                let Some(i) = Self::job_index(&name) else {
                    continue;
                };
                if self.deleted.contains_key(&i) {
                    lingering.push(name);
                } else if !ready(dj) {
                    let conditions = dj.status.as_ref().map(|s| s.conditions.as_slice());
                    let find = |ty: &str| {
                        conditions
                            .unwrap_or_default()
                            .iter()
                            .find(|c| c.type_ == ty)
                    };
                    let (reason, message) = find("Ready").map_or_else(
                        || ("no Ready condition".to_string(), String::new()),
                        |c| (c.reason.clone(), c.message.clone()),
                    );
                    if find("Stalled").is_some_and(|c| c.status == "True") {
                        stalled.insert(i);
                    } else if reason == "WaitingForLinkedJob" && role(i) == Role::Child {
                        waiting.push(i - 1);
                    } else {
                        waiting.push(usize::MAX);
                    }
                    let entry = not_ready
                        .entry(reason)
                        .or_insert_with(|| (message, Vec::new()));
                    entry.1.push(name);
                }
            }
            let present = list.len() - lingering.len();
            let expected = self.created.len() - self.deleted.len();
            if not_ready.is_empty() && lingering.is_empty() && present == expected {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!(
                    "the operator exited: {status}\n{}",
                    tail(&self.bed.log_path(log), 30)
                );
            }
            let all_stalled = waiting.iter().all(|parent| stalled.contains(parent));
            stalled_since = match stalled_since {
                Some(t) if all_stalled && !not_ready.is_empty() => Some(t),
                _ if all_stalled && !not_ready.is_empty() => Some(Instant::now()),
                _ => None,
            };
            let stuck = stalled_since.is_some_and(|t| t.elapsed() > stall_limit);
            if stuck || Instant::now() > deadline {
                let reasons: Vec<String> = not_ready
                    .iter()
                    .map(|(reason, (example, names))| {
                        format!(
                            "  {} not Ready ({reason}), e.g. {}: {example}",
                            names.len(),
                            names.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
                        )
                    })
                    .collect();
                anyhow::bail!(
                    "not converged{} after the last kill: {} present of {expected}; still there after deletion: {:?}\n{}\noperator log (tail):\n{}",
                    if stuck {
                        format!(
                            ": every resource not Ready is Stalled (or waits for a Stalled parent), for {}s",
                            stall_limit.as_secs()
                        )
                    } else {
                        format!(" {}s", self.cfg.converge_timeout.as_secs())
                    },
                    present,
                    lingering,
                    reasons.join("\n"),
                    tail(&self.bed.log_path(log), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Three polls with nothing written, to Qualys or to status.
    async fn quiet_period(&mut self) -> anyhow::Result<()> {
        // One poll (and a margin) to settle first: an enable's answer carries no `updated`
        // date, so the next poll reads each job enabled last and records its new date.
        let before = totals(&self.sim.counters());
        let status_before = self.status_writes();
        tokio::time::sleep(Duration::from_secs(self.cfg.poll_secs + 2)).await;
        self.figures.settle_qualys_calls = calls(&before, &self.sim.counters());
        self.figures.settle_status_writes = (self.status_writes() - status_before) as usize;
        let before = totals(&self.sim.counters());
        let log_before = self.bed.fake.requests().len();
        let statuses: BTreeMap<String, Value> = self
            .jobs
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|dj| {
                (
                    dj.name_any(),
                    serde_json::to_value(&dj.status).unwrap_or_default(),
                )
            })
            .collect();
        let secs = self.cfg.poll_secs * 3;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        self.figures.quiet_secs = secs;
        let qualys = calls(&before, &self.sim.counters());
        self.figures.quiet_qualys_writes = qualys_writes(&qualys);
        let written: Vec<String> = self.bed.fake.requests()[log_before..]
            .iter()
            .filter(|r| {
                r.is_write()
                    && r.resource == "deploymentjobs"
                    && r.subresource.as_deref() == Some("status")
            })
            .filter_map(|r| r.name.clone())
            .collect();
        self.figures.quiet_status_writes = written.len();
        // What changed, to tell a needless write from a late one.
        for name in written.iter().take(5) {
            let now = self.jobs.get(name).await?;
            self.quiet_detail.push(format!(
                "{name}: status before {}\n    after {}",
                statuses.get(name).cloned().unwrap_or_default(),
                serde_json::to_value(&now.status)?
            ));
        }
        if self.figures.quiet_qualys_writes > 0 {
            self.quiet_detail.push(format!("Qualys calls: {qualys:?}"));
        }
        Ok(())
    }

    /// The end checks; every violation is listed.
    async fn check(&mut self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let live = self.sim.jobs();
        let mut by_name: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for job in &live {
            if let Some(name) = job["name"].as_str() {
                by_name.entry(name.to_string()).or_default().push(job);
            }
        }
        let list = self.jobs.list(&Default::default()).await?.items;
        let job_ids: BTreeMap<usize, String> = list
            .iter()
            .filter_map(|dj| {
                let i = Self::job_index(&dj.name_any())?;
                Some((i, dj.status.as_ref()?.job_id.clone()?))
            })
            .collect();
        self.figures.duplicates = by_name.values().map(|v| v.len().saturating_sub(1)).sum();
        for (name, jobs) in &by_name {
            if jobs.len() > 1 {
                problems.push(format!("{} Qualys jobs named {name:?}", jobs.len()));
            }
        }
        let changes = self.sim.status_changes();
        self.figures.max_enables = changes.values().map(|c| c.enabled).max().unwrap_or(0);
        for (id, c) in &changes {
            if c.enabled > 1 {
                problems.push(format!("job {id} enabled {} times", c.enabled));
            }
            if c.disabled > 0 {
                problems.push(format!("job {id} disabled {} times", c.disabled));
            }
        }
        for &i in &self.created {
            let name = job_name(i);
            let found = by_name.get(&name).map_or(0, Vec::len);
            match (self.deleted.get(&i), role(i)) {
                (Some(_), Role::Delete) => {
                    if found > 0 {
                        problems.push(format!(
                            "{} (deleted, deletionPolicy Delete) still has {found} Qualys job(s)",
                            resource_name(i)
                        ));
                    }
                }
                (Some(Some(id)), _) => {
                    if self.sim.job(id).is_none() {
                        problems.push(format!(
                            "{} (deleted, deletionPolicy Orphan): its job {id} is gone",
                            resource_name(i)
                        ));
                    }
                }
                (Some(None), _) => problems.push(format!(
                    "{} was deleted without a job id to keep",
                    resource_name(i)
                )),
                (None, _) => {
                    let Some(id) = job_ids.get(&i) else {
                        problems.push(format!("{} has no job id", resource_name(i)));
                        continue;
                    };
                    let Some(job) = self.sim.job(id) else {
                        problems.push(format!("{}: its job {id} does not exist", resource_name(i)));
                        continue;
                    };
                    if found != 1 {
                        problems.push(format!(
                            "{}: {found} Qualys jobs named {name:?}",
                            resource_name(i)
                        ));
                    }
                    let (on, one_shot) = enabled(i);
                    let want = if on { "Enabled" } else { "Disabled" };
                    if job["status"].as_str() != Some(want) {
                        problems.push(format!(
                            "{}: job {id} is {} (want {want})",
                            resource_name(i),
                            job["status"]
                        ));
                    }
                    let enables = changes.get(id).map_or(0, |c| c.enabled);
                    if on && enables != 1 || !on && enables != 0 || one_shot && enables > 1 {
                        problems.push(format!(
                            "{}: job {id} enabled {enables} times",
                            resource_name(i)
                        ));
                    }
                    if role(i) == Role::Child {
                        let parent = job_ids.get(&(i - 1));
                        if parent.is_none()
                            || job["linkedJobId"].as_str() != parent.map(String::as_str)
                        {
                            problems.push(format!(
                                "{}: linked to {} but its parent's job is {parent:?}",
                                resource_name(i),
                                job["linkedJobId"]
                            ));
                        }
                    }
                }
            }
        }
        let orphans_kept = self.deleted.values().flatten().count();
        let surviving = self.created.len() - self.deleted.len();
        if live.len() != surviving + orphans_kept {
            problems.push(format!(
                "{} Qualys jobs; expected {surviving} for the resources and {orphans_kept} orphaned",
                live.len()
            ));
        }
        if self.figures.quiet_qualys_writes != 0 || self.figures.quiet_status_writes != 0 {
            problems.push(format!(
                "quiet period: {} Qualys writes, {} status writes:\n    {}",
                self.figures.quiet_qualys_writes,
                self.figures.quiet_status_writes,
                self.quiet_detail.join("\n    ")
            ));
        }
        self.figures.pending_creates = self.pending_seen.len();
        self.figures.pending_with_job = self.pending_with_job;
        self.figures.deleted_delete = self
            .deleted
            .keys()
            .filter(|&&i| role(i) == Role::Delete)
            .count();
        self.figures.deleted_orphan = self.deleted.len() - self.figures.deleted_delete;
        self.figures.qualys_calls = totals(&self.sim.counters());
        self.figures.status_writes = self.status_writes() as usize;
        if problems.is_empty() {
            Ok(())
        } else {
            let n = problems.len();
            problems.truncate(40);
            anyhow::bail!(
                "{n} end check(s) failed:\n  {}\n{}",
                problems.join("\n  "),
                self.figures
            )
        }
    }
}

/// One operator, SIGKILLed `cfg.kills` times: in turn when the simulator's create counter
/// moves (after a wave of new resources), when the status writes move, and when a Qualys
/// delete comes (after deleting a share of the `Delete`/`Orphan` resources); restarted at once
/// each time.
pub async fn kills(cfg: &Config) -> anyhow::Result<Figures> {
    let mut run = Run::start(cfg, "SIGKILL during the rollout").await?;
    let monkey = Monkey::start(run.sim.clone(), cfg.seed ^ 0x5eed);
    let waves = cfg.kills.div_ceil(3).max(1);
    let delete_phases = (cfg.kills / 3).max(1);
    let deletable = (0..cfg.jobs)
        .filter(|&i| matches!(role(i), Role::Delete | Role::Orphan))
        .count();
    let share = (deletable / 2).div_ceil(delete_phases).max(1);
    let all: Vec<usize> = (0..cfg.jobs).collect();
    let mut waves = all.chunks(cfg.jobs.div_ceil(waves).max(1));
    let mut operator = run.spawn("solo", false)?;
    let patience = Duration::from_secs(15);
    for k in 0..cfg.kills {
        let moment = match k % 3 {
            0 => {
                let wave = waves.next().unwrap_or(&[]);
                let base = run.sim.count(CREATE);
                run.create_resources(wave).await?;
                let step = run.rng.random_range(1..=(wave.len() as u64 / 3).max(1));
                run.wait_counter(base + step, patience, |r| r.sim.count(CREATE))
                    .await
                    .then_some("create")
            }
            1 => {
                let base = run.status_writes();
                let step = run.rng.random_range(1..=10);
                run.wait_counter(base + step, patience, Run::status_writes)
                    .await
                    .then_some("status write")
            }
            _ => {
                let base = run.sim.count(DELETE);
                if run.delete_some(share).await? > 0 {
                    run.wait_counter(base + 1, patience, |r| r.sim.count(DELETE))
                        .await
                        .then_some("delete")
                } else {
                    None
                }
            }
        };
        run.kill(&mut operator, moment.unwrap_or("idle")).await?;
        operator = run.spawn("solo", false)?;
        run.figures.restarts += 1;
    }
    let last_kill = Instant::now();
    // Whatever waves the kills did not reach: in before the end, like the rest.
    let rest: Vec<usize> = waves.flatten().copied().collect();
    run.create_resources(&rest).await?;
    let (ctf, rl) = monkey.finish(&run.sim).await;
    run.figures.commit_then_fail = ctf;
    run.figures.rate_limited = run.answered_429().max(rl);
    let converged = run.converge(&mut operator, "operator.log").await;
    run.figures.converge_after_last_kill = last_kill.elapsed();
    if let Err(e) = converged {
        let _ = operator.kill();
        let _ = operator.wait();
        return Err(e);
    }
    run.quiet_period().await?;
    let checked = run.check().await;
    let _ = operator.kill();
    let _ = operator.wait();
    checked.map(|()| run.figures)
}

fn signal(child: &Child, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} failed: {status}");
    Ok(())
}

async fn holder(leases: &Api<Lease>) -> Option<(String, jiff::Timestamp)> {
    let lease = leases.get_opt(LEASE).await.ok()??;
    let spec = lease.spec?;
    Some((spec.holder_identity?, spec.acquire_time?.0))
}

/// Two replicas with leader election; the leader is SIGKILLed once a third of the creates are
/// done and replaced by a new pod (a third identity). The standby must take over, converge as
/// in [`kills`], and no write may come from the old leader after the new one acquired the lease
/// (by the User-Agent each replica sends, in the fake API server's log and the simulator's).
///
/// With `pause`, the leader is SIGSTOPped instead, until the standby holds the lease, then
/// SIGCONTinued (a frozen node or a long GC pause): the same checks, with the old leader alive.
/// The operator's `--concurrency` in these scenarios.
pub const RECONCILES: usize = 16;

pub async fn failover(cfg: &Config, pause: bool) -> anyhow::Result<Figures> {
    let scenario = if pause {
        "leader SIGSTOPped mid-rollout past its lease, then resumed"
    } else {
        "leader SIGKILLed mid-rollout"
    };
    let mut run = Run::start(cfg, scenario).await?;
    let monkey = Monkey::start(run.sim.clone(), cfg.seed ^ 0xfa11);
    let leases: Api<Lease> = Api::namespaced(run.bed.client.clone(), NS);
    let mut replicas = vec![
        ("replica-a", run.spawn("replica-a", true)?),
        ("replica-b", run.spawn("replica-b", true)?),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let (first, _) = loop {
        if let Some(h) = holder(&leases).await {
            break h;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no replica took the lease within 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all: Vec<usize> = (0..cfg.jobs).collect();
    run.create_resources(&all).await?;
    let target = (cfg.jobs / 3) as u64;
    run.wait_counter(target, Duration::from_secs(120), |r| r.sim.count(CREATE))
        .await;
    let position = replicas
        .iter()
        .position(|(id, _)| *id == first)
        .ok_or_else(|| anyhow::anyhow!("the lease names {first}, not a replica"))?;
    let (old, mut leader) = replicas.remove(position);
    let killed_at = jiff::Timestamp::now();
    // The new leader's acquisition is its first successful Lease write after this point (before
    // it, it may have created the Lease, empty, at start).
    let log_at_kill = run.bed.fake.requests().len();
    let kill_clock = Instant::now();
    if pause {
        signal(&leader, "STOP")?;
        run.figures
            .kills_by_moment
            .insert("leader paused".into(), 1);
    } else {
        run.kill(&mut leader, "leader").await?;
        replicas.push(("replica-c", run.spawn("replica-c", true)?));
        run.figures.restarts += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let (new, acquired) = loop {
        if let Some((h, at)) = holder(&leases).await
            && h != old
        {
            break (h, at);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no replica took over within 90s of the leader's SIGKILL/SIGSTOP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    run.figures.takeover = Some(Duration::try_from(acquired - killed_at).unwrap_or_default());
    if pause {
        signal(&leader, "CONT")?;
        replicas.push((old, leader));
    }
    let (ctf, rl) = monkey.finish(&run.sim).await;
    run.figures.commit_then_fail = ctf;
    run.figures.rate_limited = run.answered_429().max(rl);
    let index = replicas
        .iter()
        .position(|(id, _)| *id == new)
        .ok_or_else(|| anyhow::anyhow!("the lease names {new}, not a replica"))?;
    let converged = run.converge(&mut replicas[index].1, "operator.log").await;
    run.figures.converge_after_last_kill = kill_clock.elapsed();
    if let Err(e) = converged {
        for (_, mut c) in replicas {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(e);
    }
    run.quiet_period().await?;
    let checked = run.check().await;
    for (_, c) in &mut replicas {
        let _ = c.kill();
        let _ = c.wait();
    }

    // Who wrote when: the new leader's first successful Lease write after the kill is its
    // acquisition.
    let of = |agent: &Option<String>, id: &str| {
        agent
            .as_deref()
            .is_some_and(|a| a.ends_with(&format!("({id})")))
    };
    let log = run.bed.fake.requests();
    let acquired_at = log_at_kill
        + log[log_at_kill..]
            .iter()
            .position(|r| {
                r.resource == "leases" && r.is_write() && r.status < 300 && of(&r.user_agent, &new)
            })
            .ok_or_else(|| anyhow::anyhow!("no Lease write by {new} after the kill"))?;
    let kube_late: Vec<String> = log[acquired_at..]
        .iter()
        .filter(|r| r.is_write() && of(&r.user_agent, old))
        .map(|r| r.to_string())
        .collect();
    let writes = run.sim.writes();
    let qualys_late: Vec<String> = writes
        .iter()
        .filter(|w| w.at > acquired && of(&w.user_agent, old))
        .map(|w| format!("{} {} at {}", w.status, w.route, w.at))
        .collect();
    let by_new = writes.iter().filter(|w| of(&w.user_agent, &new)).count();
    let by_old = writes.iter().filter(|w| of(&w.user_agent, old)).count();
    run.figures.old_leader_writes_after_takeover = Some((kube_late.len(), qualys_late.len()));
    checked?;
    // The fence is a check before each request: a pause landing between a check and the bytes
    // on the wire lets that one request out on resume. kube's client hands requests to a buffer
    // task after the check, so a resumed leader may finish one Kubernetes request per reconcile
    // in flight; Qualys writes are checked in the sending task, and a killed leader sends none.
    let kube_allowed = if pause { RECONCILES } else { 0 };
    anyhow::ensure!(
        kube_late.len() <= kube_allowed && qualys_late.is_empty(),
        "the old leader {old} wrote after {new} acquired the lease (at {acquired}):\n  Kubernetes: {}\n  Qualys: {}\n{}",
        kube_late.join("; "),
        qualys_late.join("; "),
        run.figures
    );
    anyhow::ensure!(
        by_new > 0 && by_old > 0,
        "the simulator's write log does not tell the replicas apart ({old}: {by_old}, {new}: {by_new})"
    );
    Ok(run.figures)
}
