//! `plan --from-cluster`: the binary reads the DeploymentJobs (and the Secrets they name) of the
//! fake API server through a kubeconfig, plans each as the operator would against the
//! simulator, and writes nothing: no request of the fake is a write, no Qualys write reaches the
//! simulator, and no state file appears.

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use qpm_operator::api::{self, DeploymentJob};
use qpm_operator::controller;
use qpm_operator::sim::{self, SimConfig};
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::time::Duration;
use support::operator::{operator_config, put_connection_secret};
use support::{TestCluster, wait_for};

const WAIT: Duration = Duration::from_secs(30);
/// The Qualys calls that change something.
const WRITES: [&str; 4] = [
    "POST /pm/v1/deploymentjob",
    "PATCH /pm/v1/deploymentjob/update/{id}",
    "DELETE /pm/v1/deploymentjobs",
    "POST /pm/v1/deploymentjobs/update/status/{action}",
];

fn spec(name: &str, connection: Option<&str>) -> Value {
    let mut spec = json!({
        "job": {
            "name": name, "platform": "Windows", "scheduleType": "Daily",
            "startDateTime": "2025-07-01 09:57:18 AM", "timeout": 6, "timeoutUnit": "HOURS",
            "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]
        }
    });
    if let Some(c) = connection {
        spec["connectionRef"] = json!({"name": c});
    }
    spec
}

async fn create(jobs: &Api<DeploymentJob>, name: &str, spec: Value) {
    let dj: DeploymentJob = serde_json::from_value(json!({
        "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &dj)
        .await
        .expect("created");
}

fn kubeconfig(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters: [{{name: fake, cluster: {{server: \"{server}\"}}}}]\n\
         users: [{{name: tester, user: {{}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: tester, namespace: {namespace}}}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_plans_the_cluster_as_the_operator_would_and_writes_nothing() {
    let cluster = TestCluster::start().await;
    let Some(fake) = cluster.fake() else {
        eprintln!("SKIPPED: counts the fake API server's requests; a real cluster has no log");
        return;
    };
    cluster.register_crd(api::crd()).await;
    let sim = sim::start(SimConfig::default()).await.expect("simulator");
    let ns = cluster.namespace().to_string();
    put_connection_secret(&cluster.client(), &ns, "qualys", &sim.base_url()).await;
    let jobs: Api<DeploymentJob> = Api::namespaced(cluster.client(), &ns);

    // Two resources the operator created jobs for; then it stops, and one spec changes.
    let op = controller::start(
        cluster.new_client(),
        operator_config(&ns, "from-cluster-test"),
    )
    .await
    .expect("operator starts");
    // Its script comes from a ConfigMap: planned unchanged only if the ConfigMap is read and
    // the digests in its status are used.
    let config_map: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "scripts"},
        "data": {"pre.ps1": "Write-Output 'before patching'"}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(cluster.client(), &ns)
        .create(&PostParams::default(), &config_map)
        .await
        .expect("ConfigMap");
    let mut kept = spec("Kept job", Some("qualys"));
    kept["job"]["preDeployActions"] = json!([{
        "action": "Run Script", "params": {"actionItem": "pre", "timeout": 180},
        "scriptFrom": {"configMapKeyRef": {"name": "scripts", "key": "pre.ps1"}},
        "scriptType": "ps"
    }]);
    create(&jobs, "kept", kept).await;
    create(&jobs, "edited", spec("Edited job", Some("qualys"))).await;
    let mut ids = Vec::new();
    for name in ["kept", "edited"] {
        let id = wait_for(WAIT, &format!("{name} to get a job id"), || {
            let jobs = jobs.clone();
            async move { jobs.get(name).await.ok()?.status?.job_id }
        })
        .await;
        ids.push(id);
    }
    op.shutdown().await;
    jobs.patch(
        "edited",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"job": {"timeout": 8}}})),
    )
    .await
    .expect("spec edited");
    // One without connectionRef (the command line's connection), one whose Secret is missing.
    create(&jobs, "fresh", spec("Fresh job", None)).await;
    create(&jobs, "lost-secret", spec("Lost job", Some("nope"))).await;
    let jobs_before: Vec<_> = sim_jobs(&sim).await;

    fake.clear_requests();
    sim.reset_counters();
    let dir = std::env::temp_dir().join(format!("qpm-from-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("kubeconfig");
    std::fs::write(&config_path, kubeconfig(&fake.url(), &ns)).unwrap();
    let state_home = dir.join("state");
    std::fs::create_dir_all(&state_home).unwrap();
    let gateway = sim.base_url();
    let out: Output = tokio::task::spawn_blocking({
        let (config_path, state_home) = (config_path.clone(), state_home.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_qpm-operator"))
                .args(["plan", "--from-cluster", "--gateway-url", &gateway])
                .env("KUBECONFIG", &config_path)
                .env("XDG_STATE_HOME", &state_home)
                .env("HOME", &state_home)
                .env("QUALYS_USERNAME", "sim")
                .env("QUALYS_PASSWORD", "sim")
                .env_remove("QUALYS_GATEWAY_URL")
                .env_remove("KUBERNETES_SERVICE_HOST")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let (kept, edited) = (&ids[0], &ids[1]);
    let target = stdout.lines().next().unwrap_or_default().to_string();
    assert!(
        target.starts_with("target: http://127.0.0.1:"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout,
        format!(
            "{target}\n\
             ~ {ns}/edited: update job {edited} (identified by state)\n\
             \x20   timeout: 6 → 8\n\
             + {ns}/fresh: create\n\
             = {ns}/kept: no changes (job {kept}, identified by state)\n\
             ! {ns}/lost-secret: error: InvalidSpec: spec.connectionRef: Secret {ns}/nope does not exist\n\
             1 to create, 1 to update, 1 unchanged, 1 error(s)\n"
        ),
        "stderr: {stderr}"
    );
    // An error outranks changes.
    assert_eq!(out.status.code(), Some(1), "{stderr}");

    // It read the cluster, and wrote nothing to it.
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.resource == "deploymentjobs" && !r.is_write()),
        "{requests:?}"
    );
    let writes: Vec<String> = requests
        .iter()
        .filter(|r| r.is_write())
        .map(|r| r.to_string())
        .collect();
    assert_eq!(writes, Vec::<String>::new());
    // It read Qualys (each managed job by id), and wrote nothing there.
    assert_eq!(sim.count("GET /pm/v1/deploymentjob/{id}"), 2);
    for route in WRITES {
        assert_eq!(sim.count(route), 0, "{route}");
    }
    assert_eq!(sim_jobs(&sim).await, jobs_before);
    // And no state file.
    assert_eq!(std::fs::read_dir(&state_home).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// The simulator's jobs, through its admin API.
async fn sim_jobs(sim: &sim::SimHandle) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{}/_sim/jobs", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn from_cluster_and_files_exclude_each_other() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qpm-operator"))
            .args(args)
            .output()
            .unwrap()
    };
    let both = run(&["plan", "--from-cluster", "-f", "examples/"]);
    assert_eq!(both.status.code(), Some(2));
    let err = String::from_utf8(both.stderr).unwrap();
    assert!(err.contains("cannot be used with"), "{err}");
    let namespace_alone = run(&["plan", "-n", "default", "-f", "examples/"]);
    assert_eq!(namespace_alone.status.code(), Some(1));
    let err = String::from_utf8(namespace_alone.stderr).unwrap();
    assert!(err.contains("--from-cluster"), "{err}");
}
