//! The command line, run as the real binary: `plan`, `apply`, `import` and `check` against the
//! simulator over HTTP on loopback — either the embedded one (no gateway configured) or one
//! started here and reached with `--gateway-url`, whose counters tell exactly what the binary
//! sent.

use qpm_operator::sim::{self, SimConfig, SimHandle, SimUser};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const AUTH: &str = "POST /auth";
const CREATE: &str = "POST /pm/v1/deploymentjob";
const GET: &str = "GET /pm/v1/deploymentjob/{id}";
const UPDATE: &str = "PATCH /pm/v1/deploymentjob/update/{id}";
const LIST: &str = "GET /pm/v1/deploymentjobs/summary";
const DELETE: &str = "DELETE /pm/v1/deploymentjobs";
const STATUS: &str = "POST /pm/v1/deploymentjobs/update/status/{action}";

const ANNOUNCE: &str = "using the embedded Qualys simulator (no gateway configured); state: ";

/// A scratch folder, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "qpm-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn s(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.join(name), text).unwrap();
        self.s(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
    fn last(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Run the binary with a clean environment for the Qualys settings (the test's own simulator
/// keeps serving on the runtime meanwhile).
async fn qpm(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qpm-operator"));
    cmd.args(args);
    for var in [
        "QUALYS_GATEWAY_URL",
        "QUALYS_USERNAME",
        "QUALYS_PASSWORD",
        "QUALYS_CA_BUNDLE_FILE",
        "XDG_STATE_HOME",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn examples() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples").to_string()
}

fn seed(name: &str) -> Value {
    let path = format!("{}/testdata/seed/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A simulator to point `--gateway-url` at: `sim`/`sim`, and `bob`/`pw` without PM.API.ACCESS.
async fn gateway() -> SimHandle {
    let bob = SimUser {
        pm_api_access: false,
        ..SimUser::new("bob", "pw")
    };
    sim::start(SimConfig {
        users: vec![SimUser::new("sim", "sim"), bob],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// `--gateway-url` and no client-side limits (the defaults are for a real gateway's quota).
fn gw(sim: &SimHandle) -> Vec<String> {
    vec![
        "--gateway-url".into(),
        sim.base_url(),
        "--qualys-rps".into(),
        "0".into(),
        "--qualys-concurrency".into(),
        "0".into(),
        "--qualys-budget".into(),
        "none".into(),
    ]
}

const SIM_USER: [(&str, &str); 2] = [("QUALYS_USERNAME", "sim"), ("QUALYS_PASSWORD", "sim")];

async fn qpm_gw(sim: &SimHandle, args: &[&str]) -> Run {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(gw(sim));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    qpm(&refs, &SIM_USER).await
}

fn writes(sim: &SimHandle) -> u64 {
    let c = sim.counters();
    c.count(CREATE) + c.count(UPDATE) + c.count(DELETE) + c.count(STATUS)
}

const EXAMPLE_KEYS: [&str; 4] = [
    "only-pre-post",
    "linux-rollback",
    "windows-install",
    "chained-job",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_the_examples_on_a_fresh_machine_uses_the_embedded_simulator() {
    let home = Dir::new("fresh");
    let run = qpm(
        &["apply", "-f", &examples()],
        &[("XDG_STATE_HOME", &home.s("state"))],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stderr.lines().next(),
        Some(format!("{ANNOUNCE}in memory").as_str())
    );
    let lines = run.lines();
    assert_eq!(lines.len(), 5, "{run:?}");
    for (line, name) in lines.iter().zip(EXAMPLE_KEYS) {
        assert!(
            line.starts_with(&format!("created default/{name}: job ")),
            "{line}"
        );
    }
    assert_eq!(run.last(), "4 created, 0 updated, 0 unchanged, 0 failed");
    // Nothing to remember about jobs that vanished with the in-memory simulator.
    assert!(!home.join("state/qpm-operator/state.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_with_sim_state_makes_no_write() {
    let dir = Dir::new("simstate");
    let (sim_state, state) = (dir.s("sim.json"), dir.s("state.json"));
    let args = [
        "apply",
        "-f",
        &examples(),
        "--sim-state",
        &sim_state,
        "--state",
        &state,
        "--stats",
    ];
    let first = qpm(&args, &[]).await;
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.last(), "4 created, 0 updated, 0 unchanged, 0 failed");
    assert!(
        first
            .stderr
            .starts_with(&format!("{ANNOUNCE}{sim_state}\n")),
        "{first:?}"
    );
    // /auth, one listing per platform, four creates, and the chained child reading its parent.
    assert!(
        first.stderr.ends_with("  total 8, writes 4\n"),
        "{}",
        first.stderr
    );

    let saved: Value = serde_json::from_slice(&std::fs::read(&sim_state).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["jobs"].as_array().unwrap().len(), 4);
    assert!(!saved.to_string().contains("eyJ"), "no token is saved");
    let memory: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let target = format!(
        "embedded:{}",
        Path::new(&sim_state).canonicalize().unwrap().display()
    );
    let remembered = memory["targets"][&target].as_object().unwrap();
    assert_eq!(remembered.len(), 4, "{memory}");
    for name in EXAMPLE_KEYS {
        assert!(remembered[&format!("default/{name}")]["jobId"].is_string());
    }

    let second = qpm(&args, &[]).await;
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.last(), "0 created, 0 updated, 4 unchanged, 0 failed");
    // /auth and one GET per job (the child reads its parent too): no listing, no write.
    assert!(
        second.stderr.ends_with("  total 6, writes 0\n"),
        "{}",
        second.stderr
    );

    let plan = qpm(
        &[
            "plan",
            "-f",
            &examples(),
            "--sim-state",
            &sim_state,
            "--state",
            &state,
        ],
        &[],
    )
    .await;
    assert_eq!(plan.code, 0, "{plan:?}");
    assert_eq!(
        plan.last(),
        "0 to create, 0 to update, 4 unchanged, 0 error(s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_gateway_the_second_apply_reads_each_job_once_and_writes_nothing() {
    let sim = gateway().await;
    let dir = Dir::new("gw");
    let state = dir.s("state.json");
    let first = qpm_gw(&sim, &["apply", "-f", &examples(), "--state", &state]).await;
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.last(), "4 created, 0 updated, 0 unchanged, 0 failed");
    assert!(!first.stderr.contains(ANNOUNCE), "{first:?}");
    assert_eq!(sim.count(CREATE), 4);
    assert_eq!(sim.count(LIST), 2, "one listing per platform for four jobs");
    assert_eq!(sim.job_count(), 4);

    sim.reset_counters();
    let second = qpm_gw(&sim, &["apply", "-f", &examples(), "--state", &state]).await;
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.last(), "0 created, 0 updated, 4 unchanged, 0 failed");
    let c = sim.counters();
    assert_eq!(writes(&sim), 0, "{c:?}");
    assert_eq!(c.count(LIST), 0, "recorded ids need no listing: {c:?}");
    assert_eq!(c.count(GET), 5, "{c:?}");
    assert_eq!(c.count(AUTH), 1, "{c:?}");
    assert_eq!(c.total(), 6, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_exit_codes_its_json_and_a_one_field_edit() {
    let sim = gateway().await;
    let dir = Dir::new("plan");
    let state = dir.s("state.json");

    let fresh = qpm_gw(
        &sim,
        &["plan", "-f", &examples(), "--state", &state, "-o", "json"],
    )
    .await;
    assert_eq!(fresh.code, 2, "{fresh:?}");
    let doc = fresh.json();
    assert_eq!(doc["apiVersion"], "qpm.plan/v1");
    assert_eq!(doc["target"], sim.base_url());
    let resources = doc["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 4);
    for (r, name) in resources.iter().zip(EXAMPLE_KEYS) {
        assert_eq!(
            *r,
            json!({"namespace": "default", "name": name, "action": "create",
                   "identifiedBy": "none", "jobId": null, "changes": [], "error": null})
        );
    }
    assert_eq!(writes(&sim), 0, "plan writes nothing");
    assert!(
        !Path::new(&state).exists(),
        "plan never writes the state file"
    );

    let apply = qpm_gw(&sim, &["apply", "-f", &examples(), "--state", &state]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    let state_bytes = std::fs::read(&state).unwrap();

    let same = qpm_gw(
        &sim,
        &["plan", "-f", &examples(), "--state", &state, "-o", "json"],
    )
    .await;
    assert_eq!(same.code, 0, "{same:?}");
    let ids: Vec<String> = sim
        .jobs()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    for r in same.json()["resources"].as_array().unwrap() {
        assert_eq!(r["action"], "none", "{r}");
        assert_eq!(r["identifiedBy"], "state", "{r}");
        assert!(ids.contains(&r["jobId"].as_str().unwrap().to_string()));
    }

    // One field edited: exactly that field.
    let edited = Dir::new("plan-edit");
    for f in std::fs::read_dir(examples()).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            let mut text = std::fs::read_to_string(&p).unwrap();
            if p.ends_with("linux-rollback.yaml") {
                assert_eq!(text.matches("    timeout: 6\n").count(), 1);
                text = text.replace("    timeout: 6\n", "    timeout: 8\n");
            }
            edited.write(p.file_name().unwrap().to_str().unwrap(), &text);
        }
    }
    sim.reset_counters();
    let change = qpm_gw(
        &sim,
        &["plan", "-f", &edited.s(""), "--state", &state, "-o", "json"],
    )
    .await;
    assert_eq!(change.code, 2, "{change:?}");
    for r in change.json()["resources"].as_array().unwrap() {
        if r["name"] == "linux-rollback" {
            assert_eq!(r["action"], "update");
            assert_eq!(
                r["changes"],
                json!([{"path": "timeout", "from": 6, "to": 8}])
            );
        } else {
            assert_eq!(r["action"], "none", "{r}");
        }
    }
    let human = qpm_gw(&sim, &["plan", "-f", &edited.s(""), "--state", &state]).await;
    assert_eq!(human.code, 2);
    assert!(human.stdout.contains("\n    timeout: 6 → 8\n"), "{human:?}");
    assert_eq!(
        human.last(),
        "0 to create, 1 to update, 3 unchanged, 0 error(s)"
    );
    assert_eq!(writes(&sim), 0);
    assert_eq!(
        std::fs::read(&state).unwrap(),
        state_bytes,
        "plan never writes the state file"
    );

    // An error outranks changes.
    let missing = uuid::Uuid::new_v4().to_string();
    edited.write(
        "adopt.yaml",
        &format!(
            "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata: {{name: adopt}}\n\
             spec:\n  jobId: {missing}\n  job: {{name: Adopted, platform: Linux, scheduleType: On-demand}}\n"
        ),
    );
    let error = qpm_gw(
        &sim,
        &["plan", "-f", &edited.s(""), "--state", &state, "-o", "json"],
    )
    .await;
    assert_eq!(error.code, 1, "{error:?}");
    let doc = error.json();
    let adopt = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "adopt")
        .unwrap();
    assert_eq!(adopt["action"], "error");
    assert_eq!(adopt["identifiedBy"], Value::Null);
    assert_eq!(
        adopt["error"],
        format!(
            "JobMissing: spec.jobId: job {missing} does not exist in Qualys; correct spec.jobId, or remove it to create a new job"
        )
    );
}

/// Every class of bad input: one line naming file, resource and field; exit 1; no API call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_per_problem_and_makes_no_call() {
    let sim = gateway().await;
    let dir = Dir::new("bad");
    let base = "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata: {name: bad}\nspec:\n  job:\n    name: Bad\n    platform: Windows\n    scheduleType: On-demand\n";
    let script_from = |cm: &str| {
        format!(
            "{base}    preDeployActions:\n    - action: Run Script\n      scriptType: ps\n      scriptFrom: {{configMapKeyRef: {{name: {cm}, key: a.ps1}}}}\n"
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax.yaml",
            "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata: {name: bad\nspec: [\n".into(),
            "not valid YAML: line 4 column 5: while parsing a flow mapping, did not find expected ',' or '}'",
        ),
        (
            "unknown.yaml",
            format!("{base}    timeoutt: 5\n"),
            "DeploymentJob default/bad: spec.job.timeoutt: unknown field (did you mean timeout?)",
        ),
        (
            "apiversion.yaml",
            base.replace("v1alpha1", "v1"),
            "DeploymentJob default/bad: apiVersion: must be \"pm.qualys.io/v1alpha1\"; got the string \"pm.qualys.io/v1\"",
        ),
        (
            "kind.yaml",
            base.replace("kind: DeploymentJob", "kind: DeploymentJobs"),
            "DeploymentJobs default/bad: kind \"DeploymentJobs\" does not exist in pm.qualys.io/v1alpha1 (the kind is DeploymentJob)",
        ),
        (
            "missing-configmap.yaml",
            script_from("nope"),
            "DeploymentJob default/bad: spec.job.preDeployActions[0].scriptFrom: ConfigMap default/nope is not in the input",
        ),
        (
            "missing-key.yaml",
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\ndata: {{b.ps1: x}}\n---\n{}",
                script_from("cm")
            ),
            "DeploymentJob default/bad: spec.job.preDeployActions[0].scriptFrom: ConfigMap default/cm has no key \"a.ps1\"",
        ),
        (
            "enum.yaml",
            base.replace("Windows", "Solaris"),
            "DeploymentJob default/bad: spec.job.platform: must be one of \"Windows\", \"Linux\"; got \"Solaris\"",
        ),
        (
            "action-ref.yaml",
            format!(
                "{}---\n{}    linkedJobRef: {{name: parent}}\n    chainedJobRule:\n    - actionRefs: [{{actionItem: nope}}]\n      threshold: 100\n",
                base.replace("name: bad}", "name: parent}").replace("name: Bad", "name: Parent")
                    + "    postDeployActions:\n    - action: Install Software\n      params: {actionItem: post}\n",
                base
            ),
            "DeploymentJob default/bad: spec.job.chainedJobRule[0].actionRefs[0]: the parent job has no post-deploy action with actionItem \"nope\" (it has: \"post\")",
        ),
        (
            "cel.yaml",
            format!("{base}    timeout: 5\n"),
            "DeploymentJob default/bad: spec.job.timeoutUnit: timeout and timeoutUnit are set together",
        ),
    ];
    for (file, text, message) in &cases {
        let path = dir.write(file, text);
        for command in ["plan", "apply"] {
            // A bad file among good ones: nothing of the set is applied.
            let run = qpm_gw(
                &sim,
                &[
                    command,
                    "-f",
                    &examples(),
                    "-f",
                    &path,
                    "--state",
                    &dir.s("state.json"),
                ],
            )
            .await;
            assert_eq!(run.code, 1, "{command} {file}: {run:?}");
            assert_eq!(
                run.stderr,
                format!(
                    "error: {path}: {message}\n1 problem(s) in the input; nothing was planned or applied\n"
                ),
                "{command} {file}"
            );
            assert_eq!(run.stdout, "", "{command} {file}");
        }
    }
    assert_eq!(sim.counters().total(), 0, "{:?}", sim.counters());
    assert_eq!(sim.job_count(), 0);

    // With the embedded simulator: not even started, so no call and no state file.
    let sim_state = dir.s("sim.json");
    let run = qpm(
        &[
            "apply",
            "-f",
            &dir.s("cel.yaml"),
            "--sim-state",
            &sim_state,
            "--state",
            &dir.s("state.json"),
            "--stats",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.contains(ANNOUNCE), "{run:?}");
    assert!(run.stderr.ends_with("  total 0, writes 0\n"), "{run:?}");
    assert!(!Path::new(&sim_state).exists());
    assert!(!dir.join("state.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ref_secret_wins_and_a_missing_one_is_an_error() {
    let default_gw = gateway().await;
    let password = "B-only-s3cret-pw";
    let other = sim::start(SimConfig {
        users: vec![SimUser::new("other", password)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = Dir::new("connref");
    let job = |name: &str, conn: bool| {
        format!(
            "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata: {{name: {name}, namespace: team}}\nspec:\n{}  job: {{name: {name}, platform: Linux, scheduleType: On-demand}}\n",
            if conn {
                "  connectionRef: {name: qualys}\n"
            } else {
                ""
            }
        )
    };
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: qualys, namespace: team}}\nstringData:\n  gatewayUrl: {}\n  username: other\n  password: {password}\n",
        other.base_url()
    );
    let input = dir.write(
        "in.yaml",
        &format!(
            "{secret}---\n{}---\n{}",
            job("via-secret", true),
            job("via-default", false)
        ),
    );
    let run = qpm_gw(
        &default_gw,
        &["apply", "-f", &input, "--state", &dir.s("state.json")],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.last(), "2 created, 0 updated, 0 unchanged, 0 failed");
    let names = |s: &SimHandle| -> Vec<String> {
        s.jobs()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&other), vec!["via-secret"]);
    assert_eq!(names(&default_gw), vec!["via-default"]);
    assert!(!run.stdout.contains(password) && !run.stderr.contains(password));
    // The state is kept per target: the Secret's gateway and user.
    let memory: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert!(
        memory["targets"][format!("{} other", other.base_url())]["team/via-secret"]["jobId"]
            .is_string(),
        "{memory}"
    );
    assert!(!memory.to_string().contains(password));

    // The Secret missing from the input: an error, never the default connection.
    other.reset_counters();
    default_gw.reset_counters();
    let lonely = dir.write("lonely.yaml", &job("via-secret", true));
    let run = qpm_gw(
        &default_gw,
        &["apply", "-f", &lonely, "--state", &dir.s("state.json")],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.lines().next(),
        Some(format!(
            "error: {lonely}: DeploymentJob team/via-secret: spec.connectionRef: Secret team/qualys is not in the input \
             (give its manifest with -f; a missing Secret never falls back to another connection)"
        ).as_str())
    );
    assert_eq!(other.counters().total() + default_gw.counters().total(), 0);
}

/// import writes manifests that plan reports as unchanged: for the seed's jobs (stored
/// verbatim, chained child and parent included) and for the examples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_plan_shows_no_changes_for_the_seed_and_the_examples() {
    let sim = gateway().await;
    let dir = Dir::new("import");
    let apply = qpm_gw(
        &sim,
        &[
            "apply",
            "-f",
            &examples(),
            "--state",
            &dir.s("apply-state.json"),
        ],
    )
    .await;
    assert_eq!(apply.code, 0, "{apply:?}");
    // Then the seed's jobs, stored as the gateway answered them (the examples share their
    // names, which import does not mind: the manifests carry spec.jobId). First the seed's
    // parent job ("only pre post", linkedToJob of example 03) with its `post` action.
    sim.put_job(json!({
        "id": "5b0fd130-52c8-473c-96b1-8f10ea7d4c13", "name": "only pre post", "type": "Install",
        "platform": "Windows", "status": "Disabled", "scheduleType": "On-demand",
        "customerId": "bc023fd7-4290-f28f-8181-95a46f519f52",
        "postDeployActions": [{"actionId": "07eed865-d8e2-4cba-9c2a-27eeeef0598a", "action": "Run Script",
            "actionType": "postdeploy", "params": {"actionItem": "post", "timeout": 180},
            "script": "bc023fd7-4290-f28f-8181-95a46f519f52/07eed865-d8e2-4cba-9c2a-27eeeef0598a/Script",
            "scriptType": "ps"}]
    }))
    .unwrap();
    for name in ["01-windows-install", "02-linux-rollback", "03-chained-job"] {
        let mut doc = seed(&format!("{name}.response.json"));
        // The server keeps the rule it was sent (it echoes it only under linkedToJob).
        if let Some(rule) = seed(&format!("{name}.request.json")).get("chainedJobRule") {
            doc["chainedJobRule"] = rule.clone();
        }
        sim.put_job(doc).unwrap();
    }
    assert_eq!(sim.job_count(), 8);

    sim.reset_counters();
    let out = dir.s("imported");
    let import = qpm_gw(&sim, &["import", "--all", "-o", &out]).await;
    assert_eq!(import.code, 0, "{import:?}");
    assert_eq!(import.stderr.lines().last(), Some("8 job(s) imported"));
    assert_eq!(writes(&sim), 0, "import only reads");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![
            "only-pre-post-2.yaml",
            "only-pre-post.yaml",
            "public-api-job-with-chained-job-and-alwaysshowcompletedprompt-2.yaml",
            "public-api-job-with-chained-job-and-alwaysshowcompletedprompt.yaml",
            "public-api-on-demand-linux-rollback-job-2.yaml",
            "public-api-on-demand-linux-rollback-job.yaml",
            "public-api-on-demand-window-job-with-specific-patches-updated-2.yaml",
            "public-api-on-demand-window-job-with-specific-patches-updated.yaml",
        ]
    );
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.contains("\n  deletionPolicy: Orphan\n"), "{text}");
        assert!(text.contains("\n  jobId: "), "{text}");
        if text.contains("chainedJobRule") {
            // The parent is imported too: named by manifest, its action by actionItem.
            assert!(
                text.contains("    linkedJobRef:\n      name: only-pre-post"),
                "{text}"
            );
            assert!(
                text.contains("      actionRefs:\n      - actionItem: post\n"),
                "{text}"
            );
            assert!(!text.contains("linkedJobId"), "{text}");
        }
        if text.contains("preDeployActions") {
            assert!(text.contains("# Scripts are left unmanaged"), "{text}");
        }
    }

    let plan = qpm_gw(
        &sim,
        &[
            "plan",
            "-f",
            &out,
            "--state",
            &dir.s("plan-state.json"),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(plan.code, 0, "{plan:?}");
    let resources = plan.json()["resources"].as_array().unwrap().clone();
    assert_eq!(resources.len(), 8);
    for r in &resources {
        assert_eq!(r["action"], "none", "{r}");
        assert_eq!(r["identifiedBy"], "jobId", "{r}");
    }
    // And apply agrees: nothing to write.
    let apply = qpm_gw(
        &sim,
        &["apply", "-f", &out, "--state", &dir.s("plan-state.json")],
    )
    .await;
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(apply.last(), "0 created, 0 updated, 8 unchanged, 0 failed");
    assert_eq!(writes(&sim), 0);

    // One job to stdout, planned from stdin-like input (a file of the stdout).
    let one = qpm_gw(
        &sim,
        &[
            "import",
            "--job-id",
            "c08769ba-aa65-4b77-b224-f2c789ce7970",
            "--namespace",
            "patching",
        ],
    )
    .await;
    assert_eq!(one.code, 0, "{one:?}");
    assert!(one.stdout.contains("\n  namespace: patching\n"), "{one:?}");
    assert_eq!(one.stdout.matches("kind: DeploymentJob").count(), 1);
    let file = dir.write("one.yaml", &one.stdout);
    let plan = qpm_gw(
        &sim,
        &["plan", "-f", &file, "--state", &dir.s("one-state.json")],
    )
    .await;
    assert_eq!(plan.code, 0, "{plan:?}");
    assert_eq!(
        plan.last(),
        "0 to create, 0 to update, 1 unchanged, 0 error(s)"
    );
}

/// The CLI's contract: a job without jobId or recorded id is found by exact name within its
/// platform; two such jobs are a NameConflict, and the conflict stops its children too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_found_by_name_and_two_of_a_name_are_a_conflict() {
    let sim = gateway().await;
    sim.put_job(seed("02-linux-rollback.response.json"))
        .unwrap();
    for id in [
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
    ] {
        sim.put_job(
            json!({"id": id, "name": "only pre post", "platform": "Windows",
                           "type": "Install", "status": "Disabled", "scheduleType": "On-demand"}),
        )
        .unwrap();
    }
    let dir = Dir::new("byname");
    let plan = qpm_gw(
        &sim,
        &[
            "plan",
            "-f",
            &examples(),
            "--state",
            &dir.s("state.json"),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(plan.code, 1, "{plan:?}");
    let doc = plan.json();
    let by_name = |n: &str| {
        doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    let parent = by_name("only-pre-post");
    assert_eq!(parent["action"], "error");
    assert_eq!(
        parent["error"],
        "NameConflict: 2 Windows job(s) named \"only pre post\" exist (11111111-1111-4111-8111-111111111111, \
         22222222-2222-4222-8222-222222222222); set spec.jobId to the one to adopt, or choose another name"
    );
    assert_eq!(
        by_name("chained-job")["error"],
        "not planned: its linkedJobRef parent default/only-pre-post could not be planned"
    );
    let rollback = by_name("linux-rollback");
    assert_eq!(rollback["identifiedBy"], "name");
    assert_eq!(rollback["jobId"], "ee2d6bd3-4944-4ea8-a384-c3f44a40b844");
    assert_eq!(by_name("windows-install")["action"], "create");

    let apply = qpm_gw(
        &sim,
        &["apply", "-f", &examples(), "--state", &dir.s("state.json")],
    )
    .await;
    assert_eq!(apply.code, 1, "{apply:?}");
    let lines = apply.lines();
    assert!(
        lines[0].starts_with("failed default/only-pre-post: NameConflict: 2 Windows job(s)"),
        "{apply:?}"
    );
    assert!(
        lines[1].starts_with(
            "updated default/linux-rollback: job ee2d6bd3-4944-4ea8-a384-c3f44a40b844: found job"
        ),
        "{apply:?}"
    );
    assert!(
        lines[2].starts_with("created default/windows-install: job "),
        "{apply:?}"
    );
    assert_eq!(
        lines[3],
        "failed default/chained-job: not applied: its linkedJobRef parent default/only-pre-post failed"
    );
    assert_eq!(apply.last(), "1 created, 1 updated, 0 unchanged, 2 failed");
    assert_eq!(sim.count(CREATE), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_against_the_simulator_and_says_plainly_what_fails() {
    let sim = gateway().await;
    let ok = qpm_gw(&sim, &["check"]).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    let lines = ok.lines();
    assert_eq!(lines.len(), 8, "{ok:?}");
    assert!(lines.iter().all(|l| l.starts_with("✓ ")), "{ok:?}");
    assert_eq!(
        lines[0],
        format!(
            "✓ credentials: {} issued a token to user \"sim\" (POST /auth)",
            sim.base_url()
        )
    );
    // Non-destructive: one call to each endpoint but create, nothing stored.
    let c = sim.counters();
    for route in [AUTH, GET, UPDATE, DELETE, STATUS] {
        assert_eq!(c.count(route), 1, "{route}: {c:?}");
    }
    assert_eq!(c.count(LIST), 2);
    assert_eq!(c.count(CREATE), 0);
    assert_eq!(sim.job_count(), 0);

    let wrong = "not-the-password-42";
    let mut args = vec!["check".to_string()];
    args.extend(gw(&sim));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bad = qpm(
        &refs,
        &[("QUALYS_USERNAME", "sim"), ("QUALYS_PASSWORD", wrong)],
    )
    .await;
    assert_eq!(bad.code, 1, "{bad:?}");
    let lines = bad.lines();
    assert_eq!(lines.len(), 8);
    assert!(
        lines[0].starts_with(&format!("✗ credentials: {}: ", sim.base_url())),
        "{bad:?}"
    );
    assert!(
        lines[0].contains("refused the username or password of user \"sim\""),
        "{bad:?}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.ends_with("not checked (needs working credentials)"))
    );
    assert!(!bad.stdout.contains(wrong) && !bad.stderr.contains(wrong));

    let forbidden = qpm(
        &refs,
        &[("QUALYS_USERNAME", "bob"), ("QUALYS_PASSWORD", "pw")],
    )
    .await;
    assert_eq!(forbidden.code, 1, "{forbidden:?}");
    let lines = forbidden.lines();
    assert!(lines[0].starts_with("✓ credentials"));
    assert!(
        lines[1].starts_with(
            "✗ PM.API.ACCESS: HTTP 403 for user \"bob\": the user lacks the PM.API.ACCESS permission, \
             or the subscription lacks Patch Management"
        ),
        "{forbidden:?}"
    );
    assert!(
        lines[2..]
            .iter()
            .all(|l| l.ends_with("not checked (needs PM.API.ACCESS)"))
    );

    // A password file instead of the environment; and no password flag at all.
    let dir = Dir::new("check");
    let file = dir.write("pw", "sim\n");
    let mut args = vec!["check".to_string(), "--password-file".into(), file];
    args.extend(gw(&sim));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let from_file = qpm(&refs, &[("QUALYS_USERNAME", "sim")]).await;
    assert_eq!(from_file.code, 0, "{from_file:?}");
    let flag = qpm(&["check", "--password", "sim"], &[]).await;
    assert_eq!(flag.code, 2, "{flag:?}");
    assert!(
        flag.stderr.contains("unexpected argument '--password'"),
        "{flag:?}"
    );

    let embedded = qpm(&["check"], &[]).await;
    assert_eq!(embedded.code, 0, "{embedded:?}");
    assert_eq!(embedded.stderr, format!("{ANNOUNCE}in memory\n"));
}
