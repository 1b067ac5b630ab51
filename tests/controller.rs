//! The controller's scenarios: a Kubernetes API server (the in-process fake, or the cluster
//! named by QPM_TEST_KUBECONFIG) plus the Qualys simulator over HTTP. Every scenario asserts on
//! the simulator's counters and on the resource's status and events.

mod sim_support;
mod support;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use qpm_operator::api::{self, DeploymentJob};
use qpm_operator::controller::{self, LeaderConfig, Operator, OperatorConfig};
use qpm_operator::qualys::Connection;
use qpm_operator::sim::{
    self, Fault, FaultKind, RateLimit, RateLimitHeaders, SimConfig, SimHandle,
};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestCluster, wait_for};

use qpm_operator::qualys::routes::{CREATE, DELETE, GET, STATUS, UPDATE};
const WAIT: Duration = Duration::from_secs(20);
/// The operator's requests carry this User-Agent, so the fake's log tells them from the test's.
const OPERATOR_AGENT: &str = "qpm-operator-under-test";

struct Env {
    cluster: TestCluster,
    sim: SimHandle,
    jobs: Api<DeploymentJob>,
}

impl Env {
    async fn start() -> Env {
        Self::start_with(SimConfig::default()).await
    }

    async fn start_with(sim_config: SimConfig) -> Env {
        let cluster = TestCluster::start().await;
        cluster.register_crd(api::crd()).await;
        let sim = sim::start(sim_support::config(sim_config))
            .await
            .expect("simulator");
        let env = Env {
            jobs: Api::namespaced(cluster.client(), cluster.namespace()),
            cluster,
            sim,
        };
        env.put_secret("qualys", "sim").await;
        env
    }

    fn ns(&self) -> &str {
        self.cluster.namespace()
    }

    async fn put_secret(&self, name: &str, password: &str) {
        let secrets: Api<Secret> = Api::namespaced(self.cluster.client(), self.ns());
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"gatewayUrl": self.sim.base_url(), "username": "sim", "password": password}
        }))
        .unwrap();
        secrets
            .patch(
                name,
                &PatchParams::apply("tests").force(),
                &Patch::Apply(&secret),
            )
            .await
            .expect("secret");
    }

    fn config(&self, instance: &str) -> OperatorConfig {
        support::operator::operator_config(self.ns(), instance)
    }

    /// Leader election with a short lease (3 s, renewed 1 s before it runs out).
    fn leader(&self, identity: &str) -> LeaderConfig {
        LeaderConfig {
            lease_name: "qpm-operator".into(),
            lease_namespace: self.ns().to_string(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(3),
            renew_grace: Duration::from_secs(1),
        }
    }

    async fn operator(&self) -> Operator {
        controller::start(self.operator_client(), self.config("op-1"))
            .await
            .expect("operator starts")
    }

    /// Resources "deleted" (deletionPolicy Delete) and "orphaned" (Orphan), once Created:
    /// their job ids.
    async fn one_of_each_deletion_policy(&self) -> (String, String) {
        self.create("deleted", spec("delete me")).await;
        let mut orphan = spec("keep me");
        orphan["deletionPolicy"] = json!("Orphan");
        self.create("orphaned", orphan).await;
        (
            job_id(&self.wait_reason("deleted", "Created").await),
            job_id(&self.wait_reason("orphaned", "Created").await),
        )
    }

    /// An operator that resyncs every resource every `every`.
    async fn operator_resyncing(&self, every: Duration) -> Operator {
        let mut config = self.config("op-1");
        config.settings.resync = every;
        controller::start(self.operator_client(), config)
            .await
            .expect("operator starts")
    }

    /// A client for an operator instance (its own connection pool, its own User-Agent).
    fn operator_client(&self) -> kube::Client {
        match self.cluster.fake() {
            Some(fake) => {
                let mut config = fake.config();
                config.headers.push((
                    http::header::USER_AGENT,
                    http::HeaderValue::from_static(OPERATOR_AGENT),
                ));
                kube::Client::try_from(config).expect("client")
            }
            None => self.cluster.new_client(),
        }
    }

    async fn create(&self, name: &str, spec: Value) -> DeploymentJob {
        let dj: DeploymentJob = serde_json::from_value(json!({
            "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("a DeploymentJob");
        self.jobs
            .create(&PostParams::default(), &dj)
            .await
            .expect("created")
    }

    async fn get(&self, name: &str) -> DeploymentJob {
        self.jobs.get(name).await.expect("get")
    }

    async fn patch_spec(&self, name: &str, patch: Value) {
        self.jobs
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
    }

    /// A resource whose job exists and whose deletion is blocked: created by one operator, then
    /// its credentials Secret deleted and the resource deleted under a fresh operator, which has
    /// no credentials in memory. Returns that operator, the job id and the resource.
    async fn deletion_blocked(&self, name: &str) -> (Operator, String, DeploymentJob) {
        let op = self.operator().await;
        self.create(name, spec(name)).await;
        let id = job_id(&self.wait_reason(name, "Created").await);
        op.shutdown().await;
        let secrets: Api<Secret> = Api::namespaced(self.cluster.client(), self.ns());
        secrets
            .delete("qualys", &DeleteParams::default())
            .await
            .unwrap();
        let op = self.operator().await;
        self.jobs
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        let dj = self.wait_reason(name, "DeletionBlocked").await;
        (op, id, dj)
    }

    /// Wait until the Ready condition's reason is `reason` for the current generation; on a
    /// timeout, say what the conditions were.
    async fn wait_reason(&self, name: &str, reason: &str) -> DeploymentJob {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        loop {
            // Paused and the retrying reasons leave Ready as it was; Reconciling carries them.
            let ty = if matches!(reason, "Paused" | "RateLimited" | "GatewayUnavailable") {
                "Reconciling"
            } else {
                "Ready"
            };
            if let Ok(dj) = self.jobs.get(name).await {
                if let Some(c) = condition(&dj, ty)
                    && c.reason == reason
                    && (reason == "Paused" || c.observed_generation == dj.metadata.generation)
                {
                    return dj;
                }
                last = Some(dj);
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = last
                    .and_then(|d| d.status)
                    .map(|s| serde_json::to_string_pretty(&s.conditions).unwrap_or_default());
                panic!(
                    "timed out waiting for {name} to report {reason}; last conditions: {seen:?}; sim: {:?}",
                    self.sim.counters()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the current generation has been observed and the resource is Ready.
    async fn wait_observed(&self, name: &str) -> DeploymentJob {
        let jobs = self.jobs.clone();
        let name = name.to_string();
        wait_for(WAIT, &format!("{name} to observe its generation"), || {
            let jobs = jobs.clone();
            let name = name.clone();
            async move {
                let dj = jobs.get(&name).await.ok()?;
                let c = condition(&dj, "Ready")?;
                (c.status == "True" && c.observed_generation == dj.metadata.generation)
                    .then_some(dj)
            }
        })
        .await
    }

    async fn wait_gone(&self, name: &str) {
        let jobs = self.jobs.clone();
        let name = name.to_string();
        wait_for(WAIT, &format!("{name} to be gone"), || {
            let jobs = jobs.clone();
            let name = name.clone();
            async move { matches!(jobs.get_opt(&name).await, Ok(None)).then_some(()) }
        })
        .await
    }

    /// (reason, note) of the events about `name`.
    async fn events(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.cluster.client(), self.ns());
        let mut out: Vec<(String, String)> = api
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        out.sort();
        out
    }

    async fn wait_event(&self, name: &str, reason: &str) -> String {
        wait_for(WAIT, &format!("event {reason} on {name}"), || async {
            self.events(name)
                .await
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, n)| n)
        })
        .await
    }
}

/// Every scenario ends by checking that each request the operator made is one its RBAC
/// (generated from `controller::rbac::RULES`, as installed by deploy/) allows.
impl Drop for Env {
    fn drop(&mut self) {
        let Some(fake) = self.cluster.fake() else {
            return;
        };
        if std::thread::panicking() {
            return;
        }
        let install = qpm_operator::controller::rbac::Install {
            operator_namespace: self.ns().to_string(),
            service_account: "qpm-operator".to_string(),
            watched_namespace: None,
        };
        let mine: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|r| r.user_agent.as_deref() == Some(OPERATOR_AGENT))
            .collect();
        assert!(
            !mine.is_empty(),
            "the operator's requests are recognisable in the log"
        );
        let denied: Vec<String> = mine
            .iter()
            .filter(|r| r.verb != support::Verb::Discovery && !r.resource.is_empty())
            .filter(|r| {
                // RBAC reads a list's or watch's `metadata.name` field selector as its name.
                let selected = r.query.split('&').find_map(|kv| {
                    let v = kv.strip_prefix("fieldSelector=")?;
                    let v = v.replace("%3D", "=").replace("%3d", "=");
                    v.strip_prefix("metadata.name=").map(str::to_string)
                });
                !install.allows_named(
                    &r.group,
                    &r.resource,
                    r.subresource.as_deref(),
                    &r.verb.to_string(),
                    r.namespace.as_deref(),
                    r.name.as_deref().or(selected.as_deref()),
                )
            })
            .map(|r| r.to_string())
            .collect();
        assert!(
            denied.is_empty(),
            "requests the operator's RBAC does not allow: {denied:#?}"
        );
    }
}

fn condition<'a>(dj: &'a DeploymentJob, ty: &str) -> Option<&'a Condition> {
    dj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
}

/// The value of one metric series (`name{labels}`) in the operator's metrics text.
fn sample(op: &Operator, name: &str) -> Option<f64> {
    op.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
        .and_then(|v| v.parse::<f64>().ok())
}

fn job_id(dj: &DeploymentJob) -> String {
    dj.status
        .as_ref()
        .and_then(|s| s.job_id.clone())
        .expect("a job id")
}

/// A recurring Windows job using the namespace's `qualys` Secret.
fn spec(name: &str) -> Value {
    json!({
        "connectionRef": {"name": "qualys"},
        "job": {
            "name": name, "platform": "Windows", "scheduleType": "Daily",
            "startDateTime": "2025-07-01 09:57:18 AM", "timeout": 6, "timeoutUnit": "HOURS",
            "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]
        }
    })
}

#[tokio::test]
async fn a_new_resource_becomes_ready_with_one_create() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("weekly", spec("Weekly patching")).await;
    let dj = env.wait_reason("weekly", "Created").await;
    let id = job_id(&dj);
    assert_eq!(condition(&dj, "Synced").unwrap().status, "True");
    assert_eq!(condition(&dj, "Reconciling").unwrap().status, "False");
    assert_eq!(condition(&dj, "Stalled").unwrap().status, "False");
    assert_eq!(
        dj.status.as_ref().unwrap().observed_generation,
        dj.metadata.generation
    );
    assert!(dj.finalizers().contains(&api::FINALIZER.to_string()));
    assert_eq!(env.sim.count(CREATE), 1);
    assert_eq!(env.sim.job(&id).unwrap()["name"], "Weekly patching");
    assert!(env.wait_event("weekly", "Created").await.contains(&id));
    op.shutdown().await;
}

#[tokio::test]
async fn a_spec_edit_is_exactly_one_patch_with_the_expected_body() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("edit", spec("Edited job")).await;
    let dj = env.wait_reason("edit", "Created").await;
    let id = job_id(&dj);
    let before = env.sim.job(&id).unwrap();
    env.sim.reset_counters();
    env.patch_spec("edit", json!({"spec": {"job": {"timeout": 8, "approvedPatches": ["ca0d50b1-df21-31ef-aa9b-eec805b3a517"]}}})).await;
    env.wait_reason("edit", "Updated").await;
    assert_eq!(env.sim.count(UPDATE), 1);
    assert_eq!(env.sim.count(CREATE), 0);
    let after = env.sim.job(&id).unwrap();
    assert_eq!(after["timeout"], 8);
    assert_eq!(
        after["approvedPatches"],
        json!(["ca0d50b1-df21-31ef-aa9b-eec805b3a517"])
    );
    // Everything else is the live job sent back.
    for field in [
        "createdBy",
        "customerId",
        "startDateTime",
        "scheduleType",
        "status",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    let note = env.wait_event("edit", "Updated").await;
    assert!(
        note.contains("timeout") && note.contains("approvedPatches"),
        "{note}"
    );
    op.shutdown().await;
}

#[tokio::test]
async fn an_out_of_band_change_is_corrected_after_the_next_poll_reading_only_that_job() {
    let env = Env::start().await;
    let op = env.operator().await;
    for n in ["a", "b", "c"] {
        env.create(n, spec(&format!("job {n}"))).await;
    }
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        ids.push(job_id(&env.wait_reason(n, "Created").await));
    }
    // Let a poll pass record everything, then change one job in the "console".
    let polls = env
        .sim
        .count(qpm_operator::qualys::Endpoint::ListSummaries.as_str());
    wait_for(WAIT, "a poll", || async {
        (env.sim
            .count(qpm_operator::qualys::Endpoint::ListSummaries.as_str())
            > polls + 2)
            .then_some(())
    })
    .await;
    env.sim.reset_counters();
    env.sim
        .console_edit(&ids[1], json!({"approvedPatches": []}))
        .unwrap();
    wait_for(WAIT, "drift corrected", || async {
        (env.sim.job(&ids[1])?["approvedPatches"]
            == json!(["9285e676-6340-3ba7-b124-31d84542c7bf"]))
        .then_some(())
    })
    .await;
    env.wait_event("b", "DriftCorrected").await;
    // Let more polls pass: nothing else is read or written.
    let polls = env
        .sim
        .count(qpm_operator::qualys::Endpoint::ListSummaries.as_str());
    wait_for(WAIT, "two more polls", || async {
        (env.sim
            .count(qpm_operator::qualys::Endpoint::ListSummaries.as_str())
            > polls + 4)
            .then_some(())
    })
    .await;
    assert_eq!(
        env.sim.count(GET),
        1,
        "exactly one GET, for the changed job: {:?}",
        env.sim.counters()
    );
    assert_eq!(env.sim.count(UPDATE), 1);
    let b = env.get("b").await;
    let drift = b.status.as_ref().unwrap().drift.clone().unwrap();
    assert_eq!(
        (drift.fields, drift.corrections),
        (vec!["approvedPatches".to_string()], 1)
    );
    op.shutdown().await;
}

/// The issue's "less kind gateway" in every run, not only under QPM_TEST_SIM_UNKIND: list
/// pages clamped at 50 with 120 jobs already there (three pages), and no rate-limit headers.
#[tokio::test]
async fn a_clamping_headerless_gateway_with_three_pages_of_jobs_serves_a_whole_lifecycle() {
    let env = Env::start_with(SimConfig {
        max_page_size: Some(50),
        rate_limit_headers: RateLimitHeaders::None,
        ..Default::default()
    })
    .await;
    for i in 0..120 {
        env.sim
            .put_job(sim_support::stored_job(i, &format!("existing {i}")))
            .unwrap();
    }
    let op = env.operator().await;
    // A name on the third page is found: a conflict, not a duplicate.
    env.create(
        "late",
        json!({
            "connectionRef": {"name": "qualys"},
            "job": {"name": "existing 110", "platform": "Linux", "scheduleType": "On-demand"}
        }),
    )
    .await;
    let dj = env.wait_reason("late", "NameConflict").await;
    let message = &condition(&dj, "Ready").unwrap().message;
    assert!(
        message.contains("00000000-0000-4000-8000-000000000110"),
        "{message}"
    );
    assert_eq!(env.sim.count(CREATE), 0);

    env.create("fresh", spec("fresh job")).await;
    let id = job_id(&env.wait_reason("fresh", "Created").await);
    assert_eq!((env.sim.count(CREATE), env.sim.job_count()), (1, 121));

    env.sim
        .console_edit(&id, json!({"approvedPatches": []}))
        .unwrap();
    wait_for(WAIT, "drift corrected", || async {
        (env.sim.job(&id)?["approvedPatches"] == json!(["9285e676-6340-3ba7-b124-31d84542c7bf"]))
            .then_some(())
    })
    .await;
    env.wait_event("fresh", "DriftCorrected").await;
    assert_eq!(env.sim.count(UPDATE), 1, "{:?}", env.sim.counters());

    env.jobs
        .delete("fresh", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("fresh").await;
    assert!(env.sim.job(&id).is_none());
    assert_eq!(
        (
            env.sim.count(DELETE),
            env.sim.count(CREATE),
            env.sim.job_count()
        ),
        (1, 1, 120)
    );
    op.shutdown().await;
}

#[tokio::test]
async fn deleting_deletes_the_job_or_orphans_it() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("gone", spec("to delete")).await;
    let mut orphan = spec("to keep");
    orphan["deletionPolicy"] = json!("Orphan");
    env.create("kept", orphan).await;
    let gone = job_id(&env.wait_reason("gone", "Created").await);
    let kept = job_id(&env.wait_reason("kept", "Created").await);
    env.jobs
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    env.jobs
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("gone").await;
    env.wait_gone("kept").await;
    assert!(env.sim.job(&gone).is_none());
    assert!(env.sim.job(&kept).is_some());
    assert_eq!(env.sim.count(DELETE), 1);
    op.shutdown().await;
}

#[tokio::test]
async fn deleting_a_paused_resource_still_deletes_the_job() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("paused", spec("paused job")).await;
    let id = job_id(&env.wait_reason("paused", "Created").await);
    env.patch_spec(
        "paused",
        json!({"metadata": {"annotations": {api::ANNOTATION_PAUSED: "true"}}}),
    )
    .await;
    env.wait_reason("paused", "Paused").await;
    // While paused, spec edits are not applied and observedGeneration stays.
    env.patch_spec("paused", json!({"spec": {"job": {"timeout": 9}}}))
        .await;
    env.sim.reset_counters();
    let dj = env.wait_reason("paused", "Paused").await;
    assert_ne!(
        dj.status.as_ref().unwrap().observed_generation,
        dj.metadata.generation
    );
    env.jobs
        .delete("paused", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("paused").await;
    assert!(env.sim.job(&id).is_none());
    assert_eq!(env.sim.count(UPDATE), 0);
    op.shutdown().await;
}

#[tokio::test]
async fn deleting_after_the_credentials_secret_is_gone_uses_the_last_good_credentials() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("orphaned-secret", spec("secret gone")).await;
    let id = job_id(&env.wait_reason("orphaned-secret", "Created").await);
    let secrets: Api<Secret> = Api::namespaced(env.cluster.client(), env.ns());
    secrets
        .delete("qualys", &DeleteParams::default())
        .await
        .unwrap();
    env.jobs
        .delete("orphaned-secret", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("orphaned-secret").await;
    assert!(env.sim.job(&id).is_none());
    op.shutdown().await;

    // A fresh operator has no credentials in memory: DeletionBlocked until force-orphan.
    let env2 = Env::start().await;
    let (op, id, dj) = env2.deletion_blocked("blocked").await;
    assert_eq!(condition(&dj, "Stalled").unwrap().status, "True");
    assert!(
        condition(&dj, "Ready")
            .unwrap()
            .message
            .contains("force-orphan")
    );
    env2.patch_spec(
        "blocked",
        json!({"metadata": {"annotations": {api::ANNOTATION_FORCE_ORPHAN: "true"}}}),
    )
    .await;
    env2.wait_gone("blocked").await;
    assert!(env2.sim.job(&id).is_some(), "orphaned, not deleted");
    op.shutdown().await;
}

/// A resource whose deletion was stuck and whose finalizer was then removed by hand leaves the
/// cache without a last reconcile: the operator still forgets it (its reason no longer counts
/// in qpm_managed_jobs).
#[tokio::test]
async fn a_resource_whose_finalizer_was_removed_by_hand_no_longer_counts() {
    let env = Env::start().await;
    let (op, ..) = env.deletion_blocked("stuck").await;
    let metric = |name: &str| sample(&op, name).unwrap_or(0.0);
    let blocked = r#"qpm_managed_jobs{reason="DeletionBlocked"}"#;
    wait_for(
        WAIT,
        "the stuck resource counted as DeletionBlocked",
        || async { (metric(blocked) == 1.0).then_some(()) },
    )
    .await;
    env.patch_spec("stuck", json!({"metadata": {"finalizers": null}}))
        .await;
    env.wait_gone("stuck").await;
    wait_for(WAIT, "the vanished resource forgotten", || async {
        (metric(blocked) == 0.0).then_some(())
    })
    .await;
    let text = op.metrics.encode();
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("qpm_managed_jobs{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 0.0, "{text}");
    op.shutdown().await;
}

#[tokio::test]
async fn an_existing_job_is_adopted_by_job_id_and_not_enabled() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("first", spec("adoptable")).await;
    let id = job_id(&env.wait_reason("first", "Created").await);
    // Hand the job over: orphan the first resource, adopt with a second.
    env.patch_spec("first", json!({"spec": {"deletionPolicy": "Orphan"}}))
        .await;
    env.wait_observed("first").await;
    env.jobs
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("first").await;
    env.sim.reset_counters();
    let mut adopt = spec("adoptable");
    adopt["jobId"] = json!(id);
    adopt["job"]["status"] = json!("Enabled");
    env.create("second", adopt).await;
    let dj = env.wait_reason("second", "Adopted").await;
    assert_eq!(job_id(&dj), id);
    assert_eq!((env.sim.count(CREATE), env.sim.count(STATUS)), (0, 0));
    assert_eq!(env.sim.job(&id).unwrap()["status"], "Disabled");
    assert!(env.wait_event("second", "Adopted").await.contains(&id));
    op.shutdown().await;
}

#[tokio::test]
async fn a_foreign_job_with_the_same_name_is_a_conflict_and_a_claimed_job_is_not_shared() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("original", spec("shared name")).await;
    let id = job_id(&env.wait_reason("original", "Created").await);
    env.create("copycat", spec("shared name")).await;
    let dj = env.wait_reason("copycat", "NameConflict").await;
    assert_eq!(condition(&dj, "Stalled").unwrap().status, "True");
    assert!(condition(&dj, "Ready").unwrap().message.contains(&id));
    let mut claim = spec("shared name");
    claim["jobId"] = json!(id);
    env.create("claimer", claim).await;
    let dj = env.wait_reason("claimer", "JobClaimed").await;
    assert!(
        condition(&dj, "Ready")
            .unwrap()
            .message
            .contains("original")
    );
    assert_eq!(env.sim.count(CREATE), 1);
    op.shutdown().await;
}

#[tokio::test]
async fn deleting_a_resource_stalled_at_job_claimed_leaves_the_other_resources_job() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("owner", spec("owned job")).await;
    let id = job_id(&env.wait_reason("owner", "Created").await);
    let mut claim = spec("owned job");
    claim["jobId"] = json!(id);
    claim["deletionPolicy"] = json!("Delete");
    env.create("claimer", claim).await;
    let dj = env.wait_reason("claimer", "JobClaimed").await;
    assert_eq!(
        dj.status.as_ref().and_then(|s| s.job_id.clone()),
        None,
        "a claimer never records the job as its own"
    );
    env.sim.reset_counters();
    env.jobs
        .delete("claimer", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("claimer").await;
    assert_eq!(env.sim.count(DELETE), 0, "{:?}", env.sim.counters());
    assert!(env.sim.job(&id).is_some(), "the owner's job still exists");
    let note = env.wait_event("claimer", "OrphanedNotOwned").await;
    assert!(note.contains(&id) && note.contains("owner"), "{note}");
    // The owner still manages it, and deleting the owner deletes it.
    env.jobs
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("owner").await;
    assert_eq!(env.sim.count(DELETE), 1);
    assert!(env.sim.job(&id).is_none());
    op.shutdown().await;
}

#[tokio::test]
async fn an_invalid_spec_is_stalled_without_any_qualys_call() {
    let env = Env::start().await;
    let mut bad = spec("invalid");
    bad["job"]["timeoutUnit"] = json!("MINUTES");
    bad["job"]["timeout"] = json!(20000);
    // The API server refuses it at admission, naming the field.
    let dj: DeploymentJob = serde_json::from_value(json!({
        "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
        "metadata": {"name": "invalid"}, "spec": bad
    }))
    .unwrap();
    match env.jobs.create(&PostParams::default(), &dj).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422);
            assert!(e.message.contains("spec.job.timeout"), "{}", e.message);
        }
        other => panic!("the API server admits an invalid spec: {other:?}"),
    }
    // The operator checks again, for what a looser (older, edited) CRD lets through.
    let Some(fake) = env.cluster.fake() else {
        eprintln!("the rest is skipped on a real cluster: it would install a looser CRD");
        return;
    };
    let mut looser = api::crd_value();
    let job = looser
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/job")
        .and_then(Value::as_object_mut)
        .expect("spec.job in the schema");
    job.remove("x-kubernetes-validations");
    job["properties"]["timeout"]
        .as_object_mut()
        .expect("spec.job.timeout in the schema")
        .remove("maximum");
    fake.register_crd(&serde_json::from_value(looser).unwrap())
        .expect("the looser CRD");
    let op = env.operator().await;
    env.create("invalid", bad).await;
    let dj = env.wait_reason("invalid", "InvalidSpec").await;
    let message = &condition(&dj, "Ready").unwrap().message;
    assert!(message.contains("spec.job.timeout"), "{message}");
    assert_eq!(condition(&dj, "Stalled").unwrap().status, "True");
    assert_eq!(env.sim.counters().total(), 0, "{:?}", env.sim.counters());
    env.wait_event("invalid", "InvalidSpec").await;
    op.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_storm_is_waited_out_within_the_budget() {
    // The gateway allows 10 calls a second; the operator is configured far above that.
    let limit = RateLimit {
        limit: 10,
        window: Duration::from_secs(1),
    };
    let env = Env::start_with(SimConfig {
        rate_limit: Some(limit),
        ..Default::default()
    })
    .await;
    let mut config = env.config("op-1");
    config.client_options.rps = Some(100.0);
    config.client_options.concurrency = Some(4);
    // A gateway without rate-limit headers (QPM_TEST_SIM_UNKIND) gives the client nothing to
    // learn from: each bare 429 pauses the whole connection for this long instead.
    config.client_options.pause_on_429 = Duration::from_secs(1);
    let op = controller::start(env.operator_client(), config)
        .await
        .unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("storm-{i}")).collect();
    for n in &names {
        env.create(n, spec(n)).await;
    }
    for n in &names {
        env.wait_observed(n).await;
    }
    assert_eq!(env.sim.job_count(), 12);
    assert_eq!(
        env.sim.count(CREATE),
        env.sim.count_status(CREATE, 201) + env.sim.count_status(CREATE, 429)
    );
    let refused: u64 = env
        .sim
        .counters()
        .0
        .values()
        .filter_map(|by| by.get(&429))
        .sum();
    let served: u64 = env
        .sim
        .counters()
        .0
        .iter()
        .filter(|(r, _)| r.as_str() != qpm_operator::qualys::Endpoint::Auth.as_str())
        .flat_map(|(_, by)| by.iter().filter(|(s, _)| **s != 429).map(|(_, n)| *n))
        .sum();
    // The client learns the limit from the headers, or pauses the connection on a bare 429,
    // instead of hammering: few refusals.
    assert!(refused >= 1, "the storm happened");
    assert!(
        refused <= 8,
        "{refused} refusals for {served} served calls: the budget did not adapt"
    );

    // A Retry-After is honoured (without headers: the one-second pause): four refusals of one
    // second each.
    env.sim.set_fault(
        Fault::on(
            CREATE,
            FaultKind::RateLimited {
                retry_after_secs: 1,
            },
        )
        .times(4),
    );
    let started = std::time::Instant::now();
    env.create("patient", spec("patient")).await;
    env.wait_observed("patient").await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "Retry-After not honoured: {:?}",
        started.elapsed()
    );
    op.shutdown().await;
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_leaves_exactly_one_job_after_a_restart() {
    let env = Env::start().await;
    env.sim.set_fault(
        Fault::on(
            CREATE,
            FaultKind::CommitThenFail {
                drop_connection: true,
            },
        )
        .times(1),
    );
    let op = env.operator().await;
    env.create("lost", spec("lost answer")).await;
    let dj = wait_for(WAIT, "a recorded pending create", || async {
        let dj = env.get("lost").await;
        dj.status.as_ref()?.pending_create.as_ref()?;
        (env.sim.job_count() == 1).then_some(dj)
    })
    .await;
    assert!(dj.status.as_ref().unwrap().job_id.is_none());
    op.kill();
    let op = env.operator().await;
    let dj = wait_for(WAIT, "recovered", || async {
        let dj = env.get("lost").await;
        let r = condition(&dj, "Ready")?;
        (r.status == "True").then_some(dj)
    })
    .await;
    assert_eq!(env.sim.job_count(), 1, "exactly one job");
    assert_eq!(env.sim.count(CREATE), 1);
    assert_eq!(job_id(&dj), env.sim.jobs()[0]["id"].as_str().unwrap());
    assert!(dj.status.as_ref().unwrap().pending_create.is_none());
    op.shutdown().await;
}

#[tokio::test]
async fn a_job_deleted_in_qualys_is_missing_until_recreate_is_chosen() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("vanish", spec("vanishing")).await;
    let first = job_id(&env.wait_reason("vanish", "Created").await);
    assert!(env.sim.console_delete(&first));
    let dj = env.wait_reason("vanish", "JobMissing").await;
    assert_eq!(condition(&dj, "Stalled").unwrap().status, "True");
    assert_eq!(env.sim.count(CREATE), 1);
    env.patch_spec("vanish", json!({"spec": {"recreatePolicy": "Recreate"}}))
        .await;
    let dj = env.wait_reason("vanish", "Created").await;
    assert_ne!(job_id(&dj), first);
    assert_eq!(env.sim.count(CREATE), 2);
    op.shutdown().await;
}

#[tokio::test]
async fn a_linked_child_waits_for_its_parent_then_links() {
    let env = Env::start().await;
    let op = env.operator().await;
    let mut child = spec("child");
    child["job"]["linkedJobRef"] = json!({"name": "parent"});
    child["job"]["chainedJobRule"] =
        json!([{"actionRefs": [{"actionItem": "post"}], "threshold": 100}]);
    env.create("child", child).await;
    let dj = env.wait_reason("child", "WaitingForLinkedJob").await;
    assert_eq!(condition(&dj, "Reconciling").unwrap().status, "True");
    assert_eq!(env.sim.count(CREATE), 0);
    let mut parent = spec("parent");
    parent["job"]["postDeployActions"] = json!([{"action": "Run Script", "scriptType": "ps", "script": "bHM=", "params": {"actionItem": "post", "timeout": 180}}]);
    env.create("parent", parent).await;
    let parent_id = job_id(&env.wait_reason("parent", "Created").await);
    let child = env.wait_reason("child", "Created").await;
    let live = env.sim.job(&job_id(&child)).unwrap();
    assert_eq!(live["linkedJobId"], json!(parent_id));
    let post_id = env.sim.job(&parent_id).unwrap()["postDeployActions"][0]["actionId"].clone();
    assert_eq!(
        live["linkedToJob"][0]["chainedJobRule"][0]["actionIds"],
        json!([post_id])
    );
    op.shutdown().await;
}

#[tokio::test]
async fn report_mode_writes_nothing_and_shows_pending_changes() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("source", spec("observed job")).await;
    let id = job_id(&env.wait_reason("source", "Created").await);
    env.patch_spec("source", json!({"spec": {"deletionPolicy": "Orphan"}}))
        .await;
    env.wait_observed("source").await;
    env.jobs
        .delete("source", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("source").await;
    env.sim.reset_counters();
    let mut observe = spec("observed job");
    observe["jobId"] = json!(id);
    observe["driftPolicy"] = json!("Report");
    observe["job"]["timeout"] = json!(12);
    env.create("observer", observe).await;
    let dj = env.wait_reason("observer", "DriftDetected").await;
    let pending = &dj.status.as_ref().unwrap().pending_changes;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].path.as_str(),
            pending[0].from.as_deref(),
            pending[0].to.as_deref()
        ),
        ("timeout", Some("6"), Some("12"))
    );
    // Observed on every poll (two list calls each, one per platform); never written.
    let gets = env.sim.count(GET);
    let lists = env
        .sim
        .count(qpm_operator::qualys::Endpoint::ListSummaries.as_str());
    wait_for(WAIT, "three polls", || async {
        (env.sim
            .count(qpm_operator::qualys::Endpoint::ListSummaries.as_str())
            >= lists + 6)
            .then_some(())
    })
    .await;
    wait_for(WAIT, "a read per poll", || async {
        (env.sim.count(GET) >= gets + 2).then_some(())
    })
    .await;
    assert_eq!(
        env.sim.count(UPDATE) + env.sim.count(CREATE) + env.sim.count(STATUS),
        0
    );
    op.shutdown().await;
}

#[tokio::test]
async fn nothing_changing_means_no_status_write_over_many_resyncs() {
    let env = Env::start().await;
    let op = env.operator_resyncing(Duration::from_millis(100)).await;
    env.create("steady", spec("steady")).await;
    let dj = env.wait_reason("steady", "Created").await;
    let writes = op.metrics.status_writes.get();
    let reconciles = || {
        op.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("qpm_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = reconciles();
    wait_for(WAIT, "five more reconciles", || async {
        (reconciles() >= before + 5.0).then_some(())
    })
    .await;
    assert_eq!(
        op.metrics.status_writes.get(),
        writes,
        "no status write when nothing changed:\nbefore {}\nafter {}\nwrites {:?}",
        serde_json::to_string(&dj.status).unwrap(),
        serde_json::to_string(&env.get("steady").await.status).unwrap(),
        env.cluster.fake().map(|f| f
            .writes_to("deploymentjobs", Some("status"))
            .iter()
            .map(|r| (r.status, r.query.clone()))
            .collect::<Vec<_>>())
    );
    assert_eq!(
        env.get("steady").await.resource_version(),
        dj.resource_version()
    );
    assert_eq!(env.sim.count(UPDATE), 0);
    op.shutdown().await;
}

#[tokio::test]
async fn managed_jobs_counts_the_ready_reason_a_resync_keeps() {
    let env = Env::start().await;
    let op = env.operator_resyncing(Duration::from_millis(100)).await;
    env.create("kept", spec("kept")).await;
    env.wait_reason("kept", "Created").await;
    let metric = |name: &str| sample(&op, name);
    let up_to_date = r#"qpm_reconciles_total{result="UpToDate"}"#;
    wait_for(WAIT, "three resyncs that find nothing to do", || async {
        (metric(up_to_date)? >= 3.0).then_some(())
    })
    .await;
    assert_eq!(metric(r#"qpm_managed_jobs{reason="Created"}"#), Some(1.0));
    assert_ne!(
        metric(r#"qpm_managed_jobs{reason="UpToDate"}"#).unwrap_or(0.0),
        1.0,
        "{}",
        op.metrics.encode()
    );
    assert_eq!(
        condition(&env.get("kept").await, "Ready").unwrap().reason,
        "Created"
    );
    op.shutdown().await;
}

#[tokio::test]
async fn with_two_instances_only_the_leader_writes() {
    let env = Env::start().await;
    let mut a = env.config("op-a");
    a.leader = Some(env.leader("op-a"));
    let mut b = env.config("op-b");
    b.leader = Some(env.leader("op-b"));
    let op_a = controller::start(env.operator_client(), a).await.unwrap();
    let op_b = controller::start(env.operator_client(), b).await.unwrap();
    wait_for(WAIT, "one leader", || async {
        (op_a.is_leader() != op_b.is_leader()).then_some(())
    })
    .await;
    env.create("led", spec("led")).await;
    env.wait_reason("led", "Created").await;
    let (leading, standby) = if op_a.is_leader() {
        (op_a, op_b)
    } else {
        (op_b, op_a)
    };
    assert!(leading.metrics.status_writes.get() > 0);
    assert_eq!(standby.metrics.status_writes.get(), 0);
    assert!(
        standby.is_ready(),
        "a standby replica is ready (readiness is not leadership)"
    );
    // The leader steps down (releasing the lease); the standby takes over.
    leading.shutdown().await;
    wait_for(WAIT, "the standby to lead", || async {
        standby.is_leader().then_some(())
    })
    .await;
    env.patch_spec("led", json!({"spec": {"job": {"timeout": 7}}}))
        .await;
    env.wait_reason("led", "Updated").await;
    assert!(standby.metrics.status_writes.get() > 0);
    assert_eq!(env.sim.count(CREATE), 1);
    standby.shutdown().await;
}

/// A leader whose lease renewals fail keeps believing it leads (so does one resumed after a
/// pause, until its lease task runs): once the lease may have passed to another replica, it
/// writes nothing, neither to Qualys nor to Kubernetes; once a renewal succeeds again, it does.
#[tokio::test]
async fn a_leader_that_cannot_renew_its_lease_writes_nothing() {
    let env = Env::start().await;
    let Some(fake) = env.cluster.fake() else {
        eprintln!("skipped on a real cluster: it makes the API server refuse the lease's renewals");
        return;
    };
    let mut config = env.config("op-a");
    config.leader = Some(env.leader("op-a"));
    let op = controller::start(env.operator_client(), config)
        .await
        .unwrap();
    wait_for(WAIT, "the lead", || async {
        op.may_write_to_qualys().then_some(())
    })
    .await;
    env.create("fenced", spec("fenced")).await;
    env.wait_reason("fenced", "Created").await;

    fake.fail_next(usize::MAX, 500, |r| {
        r.resource == "leases" && r.method == "PATCH"
    });
    wait_for(WAIT, "the lease to be possibly lost", || async {
        (!op.may_write_to_qualys()).then_some(())
    })
    .await;
    assert!(op.is_leader(), "the lease manager has not noticed yet");
    let operator_writes = || {
        fake.requests()
            .into_iter()
            .filter(|r| {
                r.is_write()
                    && r.resource != "leases"
                    && r.user_agent.as_deref() == Some(OPERATOR_AGENT)
            })
            .count()
    };
    let refused = || {
        op.metrics
            .reconcile_errors
            .get_or_create(&controller::metrics::ErrorLabel {
                error: "kube".into(),
            })
            .get()
    };
    let (writes_before, refused_before) = (operator_writes(), refused());
    env.patch_spec("fenced", json!({"spec": {"job": {"timeout": 7}}}))
        .await;
    wait_for(WAIT, "a reconcile whose writes were refused", || async {
        (refused() > refused_before).then_some(())
    })
    .await;
    assert_eq!(env.sim.count(UPDATE), 0);
    assert_eq!(operator_writes(), writes_before);

    fake.clear_faults();
    env.wait_reason("fenced", "Updated").await;
    assert_eq!(env.sim.count(UPDATE), 1);
    assert_eq!(env.sim.count(CREATE), 1);
    op.shutdown().await;
}

#[tokio::test]
async fn a_referenced_configmap_change_re_queues_its_readers_and_is_applied() {
    let env = Env::start().await;
    let op = env.operator().await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(env.cluster.client(), env.ns());
    let mut with_script = spec("scripted");
    with_script["job"]["preDeployActions"] = json!([{"action": "Run Script", "scriptType": "ps",
        "scriptFrom": {"configMapKeyRef": {"name": "scripts", "key": "pre.ps1"}}, "params": {"actionItem": "pre", "timeout": 60}}]);
    env.create("scripted", with_script).await;
    // The ConfigMap does not exist yet: invalid, stalled, no Qualys call.
    let dj = env.wait_reason("scripted", "InvalidSpec").await;
    assert!(
        condition(&dj, "Ready")
            .unwrap()
            .message
            .contains("ConfigMap \"scripts\"")
    );
    assert_eq!(env.sim.count(CREATE), 0);
    let cm = |text: &str| -> k8s_openapi::api::core::v1::ConfigMap {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "scripts"}, "data": {"pre.ps1": text}})).unwrap()
    };
    cms.patch(
        "scripts",
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&cm("Write-Output 1")),
    )
    .await
    .unwrap();
    let id = job_id(&env.wait_reason("scripted", "Created").await);
    let path = env.sim.job(&id).unwrap()["preDeployActions"][0]["script"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.sim.script(&path).as_deref(),
        Some(&b"Write-Output 1"[..])
    );
    cms.patch(
        "scripts",
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&cm("Write-Output 2")),
    )
    .await
    .unwrap();
    wait_for(WAIT, "the new script in Qualys", || async {
        (env.sim.script(&path)? == b"Write-Output 2").then_some(())
    })
    .await;
    assert_eq!(env.sim.count(UPDATE), 1);
    op.shutdown().await;
}

#[tokio::test]
async fn a_missing_connection_secret_is_an_error_until_it_appears() {
    let env = Env::start().await;
    let op = env.operator().await;
    let mut s = spec("late secret");
    s["connectionRef"] = json!({"name": "later"});
    env.create("late", s).await;
    let dj = env.wait_reason("late", "InvalidSpec").await;
    assert!(condition(&dj, "Ready").unwrap().message.contains("Secret"));
    assert_eq!(
        env.sim.counters().total(),
        0,
        "never a fall-back to another connection"
    );
    env.put_secret("later", "sim").await;
    env.wait_reason("late", "Created").await;
    op.shutdown().await;
}

#[tokio::test]
async fn a_retired_identity_stops_polling_after_its_secret_is_rotated() {
    let mut sim_config = SimConfig::default();
    sim_config
        .users
        .push(sim::SimUser::new("rotated", "rotated-password"));
    let env = Env::start_with(sim_config).await;
    let op = env.operator().await;
    env.create("rotating", spec("rotating")).await;
    env.wait_reason("rotating", "Created").await;
    // Requests of one identity, from the operator's own metrics; `list` counts summary listings.
    let requests = |user: &str, list: bool| -> f64 {
        op.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("qpm_qualys_requests_total{"))
            .filter(|l| l.contains(&format!("connection=\"{user}@")))
            .filter(|l| !list || l.contains("endpoint=\"list_summaries\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    wait_for(WAIT, "the first identity to poll", || async {
        (requests("sim", true) > 0.0).then_some(())
    })
    .await;

    let secrets: Api<Secret> = Api::namespaced(env.cluster.client(), env.ns());
    let rotated: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "qualys"},
        "stringData": {"gatewayUrl": env.sim.base_url(), "username": "rotated", "password": "rotated-password"}
    }))
    .unwrap();
    secrets
        .patch(
            "qualys",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&rotated),
        )
        .await
        .unwrap();
    // The Secret poller notices the change too; asking makes the test independent of when it
    // first read the Secret.
    env.patch_spec(
        "rotating",
        json!({"metadata": {"annotations": {api::ANNOTATION_RECONCILE_REQUESTED_AT: "rotated"}}}),
    )
    .await;
    wait_for(WAIT, "the old connection to be evicted", || async {
        (requests("rotated", false) > 0.0 && op.metrics.connections.get() == 1).then_some(())
    })
    .await;
    // Two more listings of both platforms by the new identity: a poll pass that began before
    // the eviction (and may still list with the old identity) has ended.
    let since = requests("rotated", true);
    wait_for(
        WAIT,
        "a poll pass that began after the eviction",
        || async { (requests("rotated", true) >= since + 4.0).then_some(()) },
    )
    .await;
    let retired = requests("sim", false);
    let polls = requests("rotated", true);
    wait_for(WAIT, "three more polls by the new identity", || async {
        (requests("rotated", true) >= polls + 6.0).then_some(())
    })
    .await;
    assert_eq!(
        requests("sim", false),
        retired,
        "the retired identity makes no request after the rotation:\n{}",
        op.metrics.encode()
    );
    op.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_gateway_is_tried_once_per_connection_not_once_per_resource() {
    let env = Env::start().await;
    // A port nothing listens on: every connection attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let secrets: Api<Secret> = Api::namespaced(env.cluster.client(), env.ns());
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "nowhere"},
        "stringData": {"gatewayUrl": url, "username": "sim", "password": "sim"}
    }))
    .unwrap();
    secrets
        .patch(
            "nowhere",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
    let op = env.operator().await;
    const RESOURCES: usize = 8;
    for i in 0..RESOURCES {
        let mut s = spec(&format!("unreachable {i}"));
        s["connectionRef"] = json!({"name": "nowhere"});
        env.create(&format!("unreachable-{i}"), s).await;
    }
    for i in 0..RESOURCES {
        env.wait_reason(&format!("unreachable-{i}"), "GatewayUnavailable")
            .await;
    }
    let auth_attempts: f64 = op
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("qpm_qualys_requests_total{") && l.contains("endpoint=\"auth\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Reconciles already in flight (4 at a time, 3 attempts each) try before the first failure
    // is known, and at most one probe may follow; one attempt per resource would be 8 × 3.
    assert!(
        auth_attempts > 0.0 && auth_attempts <= 15.0,
        "{auth_attempts} /auth attempts for {RESOURCES} resources"
    );
    let dj = env.get("unreachable-7").await;
    assert!(
        condition(&dj, "Reconciling")
            .unwrap()
            .message
            .contains("could not be reached")
            || condition(&dj, "Reconciling")
                .unwrap()
                .message
                .contains("cannot reach")
    );
    op.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_are_stalled_and_never_leak() {
    let env = Env::start().await;
    env.put_secret("bad", "not-the-password").await;
    let op = env.operator().await;
    let mut s = spec("bad credentials");
    s["connectionRef"] = json!({"name": "bad"});
    env.create("bad", s).await;
    let dj = env.wait_reason("bad", "Unauthorized").await;
    let status = serde_json::to_string(&dj.status).unwrap();
    assert!(!status.contains("not-the-password"));
    for (_, note) in env.events("bad").await {
        assert!(!note.contains("not-the-password"));
    }
    assert_eq!(env.sim.count(CREATE), 0);
    op.shutdown().await;
}

#[tokio::test]
async fn the_default_connection_serves_only_allowed_namespaces() {
    let env = Env::start().await;
    let mut config = env.config("op-1");
    config.default_connection = Some(Connection::new(env.sim.base_url(), "sim", "sim"));
    config.default_connection_namespaces =
        Some(["somewhere-else".to_string()].into_iter().collect());
    let op = controller::start(env.operator_client(), config)
        .await
        .unwrap();
    let mut s = spec("default connection");
    s.as_object_mut().unwrap().remove("connectionRef");
    env.create("default-conn", s).await;
    let dj = env.wait_reason("default-conn", "Forbidden").await;
    assert!(
        condition(&dj, "Ready")
            .unwrap()
            .message
            .contains("--default-connection-namespaces")
    );
    assert_eq!(env.sim.counters().total(), 0);
    op.shutdown().await;
}

#[tokio::test]
async fn a_requested_reconcile_re_evaluates_a_stalled_resource() {
    let env = Env::start().await;
    let op = env.operator().await;
    env.create("first", spec("contested name")).await;
    let first = job_id(&env.wait_reason("first", "Created").await);
    env.create("second", spec("contested name")).await;
    env.wait_reason("second", "NameConflict").await;
    // The conflict goes away in Qualys; a stalled resource waits for a person to say so.
    assert!(env.sim.console_delete(&first));
    env.patch_spec(
        "second",
        json!({"metadata": {"annotations": {api::ANNOTATION_RECONCILE_REQUESTED_AT: "2026-11-26T14:00:00Z"}}}),
    )
    .await;
    let dj = env.wait_reason("second", "Created").await;
    assert_ne!(job_id(&dj), first);
    op.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// What only a real cluster does: an older CRD, another manager's condition, namespace and CRD
// deletion, a lagging cache.

/// The generated CRD without the status fields an older operator version did not have.
fn older_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = api::crd_value();
    let status = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties")
        .and_then(Value::as_object_mut)
        .expect("the CRD has status properties");
    status.remove("pendingCreate");
    status.remove("lastEnabledTime");
    serde_json::from_value(crd).expect("still a CRD")
}

fn reconciles(op: &Operator) -> f64 {
    op.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("qpm_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn gauge(op: &Operator, name: &str) -> Option<f64> {
    op.metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn an_older_crd_stops_creates_without_a_loop_until_it_is_upgraded() {
    let env = Env::start().await;
    let Some(fake) = env.cluster.fake() else {
        eprintln!("skipped on a real cluster: it would install an older CRD cluster-wide");
        return;
    };
    fake.register_crd(&older_crd()).expect("the older CRD");
    let op = env.operator_resyncing(Duration::from_millis(100)).await;
    env.create("early", spec("installed too early")).await;
    let dj = env.wait_reason("early", "CrdMismatch").await;
    let message = &condition(&dj, "Ready").unwrap().message;
    assert!(
        message.contains("status.pendingCreate") && message.contains("status.lastEnabledTime"),
        "{message}"
    );
    assert_eq!(
        env.sim.count(CREATE),
        0,
        "no create whose record would be pruned"
    );
    assert_eq!(gauge(&op, "qpm_crd_missing_fields"), Some(2.0));
    assert!(op.is_ready(), "/readyz stays ready so deletion still works");
    // No loop: further reconciles write nothing.
    let writes = op.metrics.status_writes.get();
    let before = reconciles(&op);
    wait_for(WAIT, "five more reconciles", || async {
        (reconciles(&op) >= before + 5.0).then_some(())
    })
    .await;
    assert_eq!(op.metrics.status_writes.get(), writes);
    assert_eq!(
        env.get("early").await.resource_version(),
        dj.resource_version()
    );
    assert_eq!(env.sim.count(CREATE), 0);

    // The CRD is upgraded: the operator notices by itself and creates the job, once.
    fake.register_crd(&api::crd()).expect("the current CRD");
    let dj = env.wait_reason("early", "Created").await;
    assert!(dj.status.as_ref().unwrap().job_id.is_some());
    assert_eq!(env.sim.count(CREATE), 1);
    assert_eq!(gauge(&op, "qpm_crd_missing_fields"), Some(0.0));
    op.shutdown().await;
}

#[tokio::test]
async fn a_condition_of_another_manager_is_kept_and_causes_no_write() {
    let env = Env::start().await;
    let op = env.operator_resyncing(Duration::from_millis(100)).await;
    env.create("audited", spec("audited")).await;
    env.wait_reason("audited", "Created").await;
    let foreign = env
        .jobs
        .patch_status(
            "audited",
            &PatchParams::apply("auditor").force(),
            &Patch::Apply(json!({
                "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
                "status": {"conditions": [{
                    "type": "example.com/Audited", "status": "True", "reason": "Reviewed",
                    "message": "reviewed by the audit controller",
                    "lastTransitionTime": "2025-01-01T00:00:00Z"
                }]},
            })),
        )
        .await
        .expect("another manager adds its condition");
    assert!(
        condition(&foreign, "Ready").is_some(),
        "merged by type, not replaced"
    );
    let writes = op.metrics.status_writes.get();
    let before = reconciles(&op);
    wait_for(WAIT, "five more reconciles", || async {
        (reconciles(&op) >= before + 5.0).then_some(())
    })
    .await;
    let now = env.get("audited").await;
    assert_eq!(now.resource_version(), foreign.resource_version());
    assert_eq!(op.metrics.status_writes.get(), writes);
    assert_eq!(
        condition(&now, "example.com/Audited").unwrap().reason,
        "Reviewed"
    );
    // A change of the operator's own keeps the other condition.
    env.patch_spec("audited", json!({"spec": {"job": {"timeout": 7}}}))
        .await;
    let updated = env.wait_reason("audited", "Updated").await;
    assert_eq!(
        condition(&updated, "example.com/Audited").unwrap().reason,
        "Reviewed"
    );
    op.shutdown().await;
}

#[tokio::test]
async fn a_namespace_deleted_while_the_operator_is_stopped_ends_each_resource_clearly() {
    let env = Env::start().await;
    let op = env.operator().await;
    let (deleted, orphaned) = env.one_of_each_deletion_policy().await;
    op.shutdown().await;

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.cluster.client());
    namespaces
        .delete(env.ns(), &DeleteParams::default())
        .await
        .expect("namespace deleted");
    // The Secret goes with the namespace; the DeploymentJobs wait for their finalizer.
    let secrets: Api<Secret> = Api::namespaced(env.cluster.client(), env.ns());
    wait_for(WAIT, "the Secret to go with its namespace", || async {
        matches!(secrets.get_opt("qualys").await, Ok(None)).then_some(())
    })
    .await;

    let op = env.operator().await;
    // Orphan: the finalizer goes, the job stays in Qualys.
    env.wait_gone("orphaned").await;
    assert!(env.sim.job(&orphaned).is_some());
    // Delete, without credentials (a fresh process has none): a clear DeletionBlocked.
    let dj = env.wait_reason("deleted", "DeletionBlocked").await;
    assert!(
        condition(&dj, "Ready")
            .unwrap()
            .message
            .contains("force-orphan")
    );
    assert!(env.sim.job(&deleted).is_some());
    env.patch_spec(
        "deleted",
        json!({"metadata": {"annotations": {api::ANNOTATION_FORCE_ORPHAN: "true"}}}),
    )
    .await;
    env.wait_gone("deleted").await;
    wait_for(WAIT, "the namespace to be gone", || async {
        matches!(namespaces.get_opt(env.ns()).await, Ok(None)).then_some(())
    })
    .await;
    assert_eq!(env.sim.count(DELETE), 0);
    op.shutdown().await;
}

#[tokio::test]
async fn deleting_the_crd_deletes_or_orphans_each_job_per_its_policy() {
    let env = Env::start().await;
    if !env.cluster.is_fake() {
        eprintln!("skipped on a real cluster: it would delete the CRD cluster-wide");
        return;
    }
    let op = env.operator().await;
    let (deleted, orphaned) = env.one_of_each_deletion_policy().await;
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(env.cluster.client());
    crds.delete("deploymentjobs.pm.qualys.io", &DeleteParams::default())
        .await
        .expect("CRD deleted");
    wait_for(WAIT, "the CRD to be gone", || async {
        matches!(crds.get_opt("deploymentjobs.pm.qualys.io").await, Ok(None)).then_some(())
    })
    .await;
    assert!(env.sim.job(&deleted).is_none(), "Delete: deleted in Qualys");
    assert!(env.sim.job(&orphaned).is_some(), "Orphan: left in Qualys");
    assert_eq!(env.sim.count(DELETE), 1);
    op.shutdown().await;
}

/// Reconciles that ended with `result` (a reason, `ok` or `error`); `None` counts every one.
fn reconciled(op: &Operator, result: Option<&str>) -> f64 {
    op.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("qpm_reconciles_total"))
        .filter(|l| result.is_none_or(|r| l.contains(&format!("result=\"{r}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_lagging_cache_with_a_thousand_resources_creates_each_job_once() {
    const N: usize = 1000;
    let env = Env::start().await;
    let Some(fake) = env.cluster.fake() else {
        eprintln!("skipped on a real cluster: the lag is the fake's");
        return;
    };
    let started = std::time::Instant::now();
    let mut config = env.config("op-1");
    config.concurrency = 16;
    config.settings.poll_interval = Duration::from_secs(60);
    config.settings.secret_poll_interval = Duration::from_secs(60);
    // The operator's cache is 300 ms late.
    fake.set_lag(Some(Duration::from_millis(300)));
    let op = controller::start(env.operator_client(), config)
        .await
        .unwrap();
    for i in 0..N {
        env.create(&format!("job-{i:04}"), spec(&format!("job {i:04}")))
            .await;
    }
    let created_in = started.elapsed();
    wait_for(
        Duration::from_secs(900),
        "every resource Created",
        || async { (reconciled(&op, Some("Created")) >= N as f64).then_some(()) },
    )
    .await;
    let ready_in = started.elapsed();
    let phase = |from: usize| {
        // The operator's writes only (the other controller's are counted out).
        let writes: Vec<_> = fake
            .writes_to("deploymentjobs", Some("status"))
            .into_iter()
            .skip(from)
            .filter(|r| r.user_agent.as_deref() == Some(OPERATOR_AGENT))
            .collect();
        (
            writes.iter().filter(|r| r.status == 200).count(),
            writes.iter().filter(|r| r.status == 409).count(),
        )
    };
    let (ok1, conflicts1) = phase(0);
    let all1 = fake.writes_to("deploymentjobs", Some("status")).len();
    // One reconcile per edit ends well: Updated, or UpToDate when a retry after a conflict
    // finds the job already updated.
    let settled = || reconciled(&op, Some("Updated")) + reconciled(&op, Some("UpToDate"));
    let settled_before = settled();

    // Another controller writes status right after each spec edit. The operator learns of the
    // edit only from its cache, 300 ms late, after that write: it acts on an old object, its
    // status write meets 409, and it must retry without repeating the update in Qualys.
    for i in 0..N {
        let name = format!("job-{i:04}");
        env.patch_spec(&name, json!({"spec": {"job": {"timeout": 7}}}))
            .await;
        env.jobs
            .patch_status(
                &name,
                &PatchParams::apply("auditor").force(),
                &Patch::Apply(json!({
                    "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
                    "status": {"conditions": [{
                        "type": "example.com/Audited", "status": "True", "reason": "Reviewed",
                        "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"
                    }]},
                })),
            )
            .await
            .expect("the other controller's status write");
    }
    wait_for(Duration::from_secs(900), "every edit applied", || async {
        (settled() >= settled_before + N as f64).then_some(())
    })
    .await;
    let (ok2, conflicts2) = phase(all1);
    eprintln!(
        "lagging cache (300 ms), {N} resources: created in {created_in:.1?}, all Created at \
         {ready_in:.1?}, all edits applied at {:.1?}; creates: {ok1} status writes, {conflicts1} \
         conflicts (409); spec edits racing another controller's status writes: {ok2} status \
         writes, {conflicts2} conflicts; in Qualys: {} creates, {} updates",
        started.elapsed(),
        env.sim.count(CREATE),
        env.sim.count(UPDATE)
    );
    let list = env.jobs.list(&Default::default()).await.unwrap().items;
    let ids: std::collections::BTreeSet<String> = list.iter().map(job_id).collect();
    assert_eq!(ids.len(), N, "each resource has its own job");
    assert_eq!(env.sim.count(CREATE), N as u64, "no duplicate create");
    assert_eq!(env.sim.count(UPDATE), N as u64, "no duplicate update");
    assert!(conflicts2 > 0, "the conflict path ran");
    assert!(
        conflicts1 + conflicts2 <= 3 * N,
        "conflicts are bounded: {conflicts1} + {conflicts2}"
    );
    for dj in &list {
        assert_eq!(
            condition(dj, "example.com/Audited").map(|c| c.reason.as_str()),
            Some("Reviewed")
        );
    }
    op.shutdown().await;
}

#[tokio::test]
async fn a_status_write_refused_with_422_stops_that_resource_without_retrying() {
    let env = Env::start().await;
    let Some(fake) = env.cluster.fake() else {
        eprintln!("skipped on a real cluster: it would install a stricter CRD cluster-wide");
        return;
    };
    // A CRD that refuses a job id in the status of the resource named "refused" only.
    let mut crd = api::crd_value();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] = json!([{
        "rule": "self.metadata.name != 'refused' || !has(self.status) || !has(self.status.jobId)",
        "fieldPath": ".status.jobId",
        "message": "this cluster refuses a job id here"
    }]);
    fake.register_crd(&serde_json::from_value(crd).unwrap())
        .expect("the stricter CRD");
    let op = env.operator_resyncing(Duration::from_millis(100)).await;
    env.create("refused", spec("refused")).await;
    env.create("fine", spec("fine")).await;
    let dj = env.wait_reason("refused", "CrdMismatch").await;
    let message = &condition(&dj, "Ready").unwrap().message;
    assert!(
        message.contains("status.jobId") && message.contains("refuses a job id"),
        "{message}"
    );
    env.wait_reason("fine", "Created").await;
    let attempts = || {
        fake.writes_to("deploymentjobs", Some("status"))
            .iter()
            .filter(|r| r.name.as_deref() == Some("refused"))
            .count()
    };
    // The summary poller may requeue the refused resource once more (its create is in Qualys,
    // its pending record not yet resolved): let ten resyncs pass (several polls) before
    // counting, so what is measured is a loop, not that one bounded round.
    let settle = reconciles(&op);
    wait_for(WAIT, "ten reconciles to settle", || async {
        (reconciles(&op) >= settle + 10.0).then_some(())
    })
    .await;
    let before = attempts();
    // Thirty resyncs of the other resource; the refused one is not retried meanwhile.
    let start = reconciles(&op);
    wait_for(WAIT, "thirty more reconciles", || async {
        (reconciles(&op) >= start + 30.0).then_some(())
    })
    .await;
    assert_eq!(attempts(), before, "no retry of the refused write");
    assert_eq!(env.sim.count(CREATE), 2, "one create each, none repeated");
    op.shutdown().await;
}
