//! The command line, run as the real binary: `plan`, `apply`, `import` and `check` against the
//! simulator over HTTP on loopback — either the embedded one (`--sim`) or one started here and
//! reached with `--gateway-url`, whose counters tell exactly what the binary sent.

mod sim_support;

use qpm_operator::sim::{self, SimConfig, SimHandle, SimUser};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use qpm_operator::qualys::routes::{AUTH, CREATE, DELETE, GET, LIST, STATUS, UPDATE};

const ANNOUNCE: &str = "using the embedded Qualys simulator (--sim); state: ";

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

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
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
    let mut cmd = command(args, env);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the binary runs");
    Run::from(out)
}

/// [`qpm`] for a run that used to hang: killed (by its pid) and failed when it has not ended
/// within `GUARD`, so a regression fails instead of stalling the suite.
async fn qpm_guarded(args: &[&str], env: &[(&str, &str)]) -> Run {
    const GUARD: std::time::Duration = std::time::Duration::from_secs(120);
    let mut cmd = command(args, env);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("the binary runs");
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(GUARD, waiting).await {
        Ok(out) => Run::from(out.unwrap().unwrap()),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("{args:?} did not finish within {GUARD:?}");
        }
    }
}

/// The command [`qpm`] runs.
fn command(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
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
    cmd
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
    sim::start(sim_support::config(SimConfig {
        users: vec![SimUser::new("sim", "sim"), bob],
        ..SimConfig::default()
    }))
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
async fn apply_of_the_examples_with_sim_uses_the_embedded_simulator() {
    let home = Dir::new("fresh");
    let run = qpm(
        &["apply", "--sim", "-f", &examples()],
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
    let other = sim::start(sim_support::config(SimConfig {
        users: vec![SimUser::new("other", password)],
        ..SimConfig::default()
    }))
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

    let embedded = qpm(&["check", "--sim"], &[]).await;
    assert_eq!(embedded.code, 0, "{embedded:?}");
    assert_eq!(embedded.stderr, format!("{ANNOUNCE}in memory\n"));
}

/// A gateway that clamps list pages at 200 (below the 1,000 the client asks for) with 1,000
/// jobs: `import --all` still finds every one, and an `apply` naming ten of the last page's
/// jobs without `spec.jobId` adopts them instead of creating duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_thousand_jobs_behind_a_200_clamp_import_finds_all_and_apply_creates_none() {
    let sim = sim::start(SimConfig {
        max_page_size: Some(200),
        users: vec![SimUser::new("sim", "sim")],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    for i in 0..1000 {
        sim.put_job(sim_support::stored_job(i, &format!("Job {i}")))
            .unwrap();
    }
    let dir = Dir::new("clamp200");
    let out = dir.s("imported");
    let import = qpm_gw(&sim, &["import", "--all", "-o", &out]).await;
    assert_eq!(import.code, 0, "{import:?}");
    assert_eq!(import.stderr.lines().last(), Some("1000 job(s) imported"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1000);
    assert_eq!(writes(&sim), 0, "import only reads");
    // Linux: five pages of 200 and the empty page that ends them; Windows: one empty page.
    assert_eq!((sim.count(LIST), sim.count(GET)), (7, 1000));

    // The last page's jobs, named in manifests that carry no spec.jobId.
    let manifests: String = (990..1000)
        .map(|i| {
            format!(
                "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata: {{name: job-{i}}}\n\
                 spec:\n  job: {{name: Job {i}, platform: Linux, scheduleType: On-demand}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    let file = dir.write("ten.yaml", &manifests);
    sim.reset_counters();
    let apply = qpm_gw(
        &sim,
        &["apply", "-f", &file, "--state", &dir.s("state.json")],
    )
    .await;
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(sim.count(CREATE), 0, "{:?}", sim.counters());
    // The jobs already say what the manifests say: read, matched, left alone.
    assert_eq!(writes(&sim), 0, "{:?}", sim.counters());
    assert_eq!((sim.count(LIST), sim.count(GET)), (6, 10));
    assert_eq!(sim.job_count(), 1000);
}

/// `n` small DeploymentJobs in one multi-document file.
fn many_jobs(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata: {{name: job-{i}}}\n\
                 spec:\n  job: {{name: Job {i}, platform: Linux, scheduleType: On-demand}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

const NOT_CONFIGURED: &str = "error: no Qualys gateway configured: set QUALYS_GATEWAY_URL (or --gateway-url) \
     with QUALYS_USERNAME (or --username) and QUALYS_PASSWORD (or --password-file), or pass --sim \
     to use the embedded simulator (nothing then reaches Qualys)\n";

/// No gateway and no --sim: every command fails with one line saying how to configure either;
/// a pipeline whose QUALYS_GATEWAY_URL went missing must not "succeed" against a simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gateway_or_sim_every_command_fails_and_says_what_to_set() {
    let dir = Dir::new("nogw");
    let (state, examples) = (dir.s("state.json"), examples());
    let runs = [
        vec!["plan", "-f", &examples, "--state", &state],
        vec!["apply", "-f", &examples, "--state", &state],
        vec!["import", "--all"],
        vec!["check"],
    ];
    for args in runs {
        let run = qpm(&args, &[("QUALYS_USERNAME", "u"), ("QUALYS_PASSWORD", "p")]).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert_eq!(run.stderr, NOT_CONFIGURED, "{args:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }
    assert!(!Path::new(&state).exists());
    // The simulator and a gateway flag together are a usage error.
    let both = qpm(
        &["check", "--sim", "--gateway-url", "https://gw.example"],
        &[],
    )
    .await;
    assert_eq!(both.code, 2, "{both:?}");
    assert!(both.stderr.contains("cannot be used with"), "{both:?}");
}

/// A CA bundle file that holds no certificate is named, with the flag (or variable), in the one
/// line that refuses it — for the commands and for the probe alike — before any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_bundle_without_certificates_is_refused_naming_its_file() {
    let dir = Dir::new("badca");
    let bad = dir.s("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let examples = examples();
    let env = [("QUALYS_USERNAME", "u"), ("QUALYS_PASSWORD", "p")];
    let want = format!(
        "error: --ca-bundle {bad}: holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)\n"
    );
    for args in [
        vec![
            "plan",
            "-f",
            &examples,
            "--gateway-url",
            "https://127.0.0.1:1",
            "--ca-bundle",
            &bad,
        ],
        vec![
            "probe",
            "--gateway-url",
            "https://127.0.0.1:1",
            "--ca-bundle",
            &bad,
        ],
    ] {
        let run = qpm(&args, &env).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert_eq!(run.stderr, want, "{args:?}");
    }
    // The same from the environment names the variable.
    let run = qpm(
        &["check", "--gateway-url", "https://127.0.0.1:1"],
        &[env[0], env[1], ("QUALYS_CA_BUNDLE_FILE", &bad)],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "error: QUALYS_CA_BUNDLE_FILE {bad}: holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)\n"
        )
    );
}

/// Single-file flags read only regular files, and only so much: a FIFO would block for ever and
/// `/dev/zero` never ends. Each is one line naming the flag and the file, exit 1, no call.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_file_flags_refuse_fifos_and_devices() {
    let dir = Dir::new("special");
    let fifo = dir.s("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let examples = examples();
    let env = [("QUALYS_USERNAME", "u"), ("QUALYS_PASSWORD", "p")];
    let gw = ["--gateway-url", "https://127.0.0.1:1"];
    for (flag, path, kind) in [
        ("--ca-bundle", fifo.as_str(), "a FIFO"),
        ("--ca-bundle", "/dev/zero", "a device"),
        ("--password-file", fifo.as_str(), "a FIFO"),
        ("--state", fifo.as_str(), "a FIFO"),
    ] {
        let mut args = vec!["plan", "-f", &examples];
        args.extend(gw);
        args.extend([flag, path]);
        let run = qpm_guarded(&args, &env).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        // The state file's errors name the file alone (its path may be the default).
        let named = if flag == "--state" {
            path.to_string()
        } else {
            format!("{flag} {path}")
        };
        assert_eq!(
            run.stderr,
            format!("error: {named}: {kind}: only regular files are read\n"),
            "{args:?}"
        );
    }
}

/// `plan -o json | head` closes the pipe early: no panic, no backtrace, the plan's own exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_output_quietly() {
    let dir = Dir::new("pipe");
    for (args, code) in [
        (vec!["plan", "--sim", "-o", "json"], 2),
        (vec!["plan", "--sim"], 2),
        (vec!["apply", "--sim"], 0),
    ] {
        let mut all = args.clone();
        let (examples, state) = (examples(), dir.s("state.json"));
        all.extend(["-f", &examples, "--state", &state]);
        let mut cmd = command(&all, &[("RUST_BACKTRACE", "1")]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        // The reader goes away before the first line is written, as `head` does after its lines.
        drop(child.stdout.take());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    }
}

/// Two applies sharing a state file: the second waits for the first's lock and then finds
/// every job recorded, so each job is created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applies_sharing_a_state_file_create_each_job_once() {
    let sim = gateway().await;
    let dir = Dir::new("twoapplies");
    let input = dir.write("jobs.yaml", &many_jobs(20));
    let state = dir.s("state.json");
    let args = ["apply", "-f", &input, "--state", &state];
    let (a, b) = tokio::join!(qpm_gw(&sim, &args), qpm_gw(&sim, &args));
    assert_eq!((a.code, b.code), (0, 0), "{a:?}\n{b:?}");
    assert_eq!(sim.job_count(), 20, "{a:?}\n{b:?}");
    assert_eq!(sim.count(CREATE), 20);
    let mut summaries = vec![a.last().to_string(), b.last().to_string()];
    summaries.sort();
    assert_eq!(
        summaries,
        [
            "0 created, 0 updated, 20 unchanged, 0 failed",
            "20 created, 0 updated, 0 unchanged, 0 failed"
        ]
    );
}

/// A lock held elsewhere: `--lock-timeout 0` fails at once naming the holder, with no API call;
/// otherwise the run says whom it waits for and goes on once the lock is released. A killed
/// run's temporary state file is removed by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_state_file_names_its_holder_and_is_waited_for() {
    use std::io::{BufRead, Write};
    let sim = gateway().await;
    let dir = Dir::new("lock");
    let state = dir.s("state.json");
    let leftover = dir.write("state.json.tmp4000000", "{half a state");
    let holder = std::fs::File::create(dir.join("state.json.lock")).unwrap();
    holder.try_lock().unwrap();
    (&holder)
        .write_all(br#"{"pid":4242,"host":"build-7","started":"2026-01-02T03:04:05Z"}"#)
        .unwrap();

    let at_once = qpm_gw(
        &sim,
        &[
            "apply",
            "-f",
            &examples(),
            "--state",
            &state,
            "--lock-timeout",
            "0",
        ],
    )
    .await;
    assert_eq!(at_once.code, 1, "{at_once:?}");
    assert_eq!(
        at_once.stderr,
        format!(
            "error: state file {state} is locked by pid 4242 on build-7 (started 2026-01-02T03:04:05Z): \
             another apply is using it; run again when it has finished, or wait longer with \
             --lock-timeout SECONDS (now 0s)\n"
        )
    );
    assert_eq!(sim.counters().total(), 0);
    assert!(Path::new(&leftover).exists(), "untouched without the lock");

    let mut args: Vec<String> = ["apply", "-f", &examples(), "--state", &state]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(gw(&sim));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = command(&refs, &SIM_USER);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stderr)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    assert_eq!(
        first,
        format!(
            "state file {state} is locked by pid 4242 on build-7 (started 2026-01-02T03:04:05Z); \
             waiting up to 60s (--lock-timeout)\n"
        )
    );
    drop(holder);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("4 created, 0 updated, 0 unchanged, 0 failed")
    );
    assert!(
        !Path::new(&leftover).exists(),
        "a killed run's temporary is removed"
    );
    // The lock file now names the run that held it last.
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json.lock")).unwrap())
            .unwrap();
    assert!(lock["pid"].is_u64() && lock["pid"] != 4242, "{lock}");
    assert!(
        lock["host"].is_string() && lock["started"].is_string(),
        "{lock}"
    );
}

/// `-f` reads regular files only, each folder once, and at most 256 MiB per file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_that_used_to_hang_are_refused_or_skipped() {
    let dir = Dir::new("inputs");
    let state = dir.s("state.json");
    let jobs = Dir::new("inputs-jobs");
    jobs.write("jobs.yaml", &many_jobs(2));
    // A folder holding two symlinks to itself, read with -R: each folder once.
    std::os::unix::fs::symlink(&jobs.0, jobs.join("self-a")).unwrap();
    std::os::unix::fs::symlink(".", jobs.join("self-b")).unwrap();
    let looped = qpm_guarded(
        &["plan", "--sim", "-R", "-f", &jobs.s(""), "--state", &state],
        &[],
    )
    .await;
    assert_eq!(looped.code, 2, "{looped:?}");
    assert_eq!(
        looped.last(),
        "2 to create, 0 to update, 0 unchanged, 0 error(s)"
    );

    // A FIFO or a device named directly: an error at once, naming it.
    let fifo = dir.s("fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, kind) in [(fifo.as_str(), "a FIFO"), ("/dev/zero", "a device")] {
        let run = qpm_guarded(&["plan", "--sim", "-f", path, "--state", &state], &[]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(
            run.stderr,
            format!(
                "error: {path}: {kind}: only regular files and folders are read\n\
                 1 problem(s) in the input; nothing was planned or applied\n"
            )
        );
    }

    // A stray FIFO inside a folder: skipped with a warning.
    jobs.write(
        "good.yaml",
        &many_jobs(1)
            .replace("job-0", "good")
            .replace("Job 0", "Good"),
    );
    std::fs::rename(&fifo, jobs.join("stray.yaml")).unwrap();
    let stray = qpm_guarded(
        &["plan", "--sim", "-f", &jobs.s(""), "--state", &state],
        &[],
    )
    .await;
    assert_eq!(stray.code, 2, "{stray:?}");
    assert!(
        stray.stderr.starts_with(&format!(
            "warning: {}: skipped: a FIFO, not a regular file\n",
            jobs.s("stray.yaml")
        )),
        "{stray:?}"
    );
    assert_eq!(
        stray.last(),
        "3 to create, 0 to update, 0 unchanged, 0 error(s)"
    );

    // Larger than the limit: refused unread, the limit in the message (a sparse file).
    let big = dir.join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(256 * 1024 * 1024 + 1)
        .unwrap();
    let run = qpm_guarded(
        &[
            "plan",
            "--sim",
            "-f",
            &big.display().to_string(),
            "--state",
            &state,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.lines().next(),
        Some(
            format!(
                "error: {}: larger than 256 MiB, the most read from one file (split it)",
                big.display()
            )
            .as_str()
        )
    );
}

/// More than 1,024 documents in a file plan fine (`import --all` of a big subscription read
/// back); a "billion laughs" document is still refused, in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_many_documents_plans_and_a_billion_laughs_is_refused_in_words() {
    let dir = Dir::new("many");
    let input = dir.write("all.yaml", &many_jobs(1_100));
    let run = qpm(
        &[
            "plan",
            "--sim",
            "-f",
            &input,
            "--state",
            &dir.s("state.json"),
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        run.last(),
        "1100 to create, 0 to update, 0 unchanged, 0 error(s)"
    );

    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .into_iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(", ");
        laughs.push_str(&format!("{next}: &{next} [{refs}]\n"));
    }
    let lol = dir.write("lol.yaml", &laughs);
    let run = qpm(
        &["plan", "--sim", "-f", &lol, "--state", &dir.s("state.json")],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "error: {lol}: not valid YAML: refused: aliases expand to more than 100,000 copied \
             values, as in a \"billion laughs\" document\n\
             1 problem(s) in the input; nothing was planned or applied\n"
        )
    );
}

/// A gateway nobody listens on: one /auth sequence for the whole run, one error line, exit 1,
/// no line per job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_fails_the_run_once() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let dir = Dir::new("closed");
    let input = dir.write("jobs.yaml", &many_jobs(20));
    for command in ["plan", "apply"] {
        let run = qpm(
            &[
                command,
                "-f",
                &input,
                "--state",
                &dir.s("state.json"),
                "--gateway-url",
                &url,
                "--stats",
            ],
            &SIM_USER,
        )
        .await;
        assert_eq!(run.code, 1, "{command}: {run:?}");
        assert_eq!(run.stdout, "", "{command}: {run:?}");
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{command}: {run:?}");
        assert!(
            errors[0].starts_with(&format!(
                "error: {url}: cannot reach the gateway (POST /auth): "
            )),
            "{command}: {run:?}"
        );
        assert!(
            errors[0].ends_with("; nothing was planned or applied"),
            "{command}: {run:?}"
        );
        // One /auth with the client's own retries (at most its 4 attempts), not one sequence
        // per job (20 jobs used to make hundreds).
        let total: u64 = run
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("  total "))
            .and_then(|t| t.strip_suffix(", writes 0"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{command}: no totals: {run:?}"));
        assert!(
            (1..=4).contains(&total),
            "{command}: {total} calls: {run:?}"
        );
    }
}

/// Names are data: control characters in a name, a namespace or a file name are shown
/// escaped, never sent to the terminal; such names are refused as the API server refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_the_input_are_escaped_and_bad_names_refused() {
    let dir = Dir::new("escape");
    let file = dir.write(
        "evil\n\u{1b}[2Jname.yaml",
        "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\n\
         metadata: {name: \"x\\e]0;pwned\\a\\nerror: forged line\", namespace: \"ns\\0\\x9b\"}\n\
         spec:\n  job: {name: X, platform: Linux, scheduleType: On-demand}\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\ndata: {a: b}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {name: ok, namespace: \"a\\u202eb\"}\n",
    );
    let run = qpm(
        &["plan", "--sim", "-f", &file, "--state", &dir.s("s.json")],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    for c in ['\u{1b}', '\u{7}', '\0', '\u{9b}', '\u{202e}'] {
        assert!(
            !run.stderr.contains(c),
            "{c:?} reached the terminal: {run:?}"
        );
    }
    let shown = dir.s("evil\\n\\u{1b}[2Jname.yaml");
    let resource = "DeploymentJob ns\\0\\u{9b}/x\\u{1b}]0;pwned\\u{7}\\nerror: forged line";
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "error: {shown}: {resource}: metadata.name: must be a Kubernetes object name: at most 253 \
                 lowercase letters, digits, '-' and '.' starting and ending with a letter or digit; \
                 got \"x\\u{{1b}}]0;pwned\\u{{7}}\\nerror: forged line\""
            ),
            format!(
                "error: {shown}: {resource}: metadata.namespace: must be a namespace name: at most 63 \
                 lowercase letters, digits, '-' starting and ending with a letter or digit; got \"ns\\0\\u{{9b}}\""
            ),
            format!(
                "error: {shown}: ConfigMap default/Bad_Name: metadata.name: must be a Kubernetes object \
                 name: at most 253 lowercase letters, digits, '-' and '.' starting and ending with a letter \
                 or digit; got \"Bad_Name\""
            ),
            format!(
                "error: {shown}: Secret a\\u{{202e}}b/ok: metadata.namespace: must be a namespace name: at \
                 most 63 lowercase letters, digits, '-' starting and ending with a letter or digit; got \
                 \"a\\u{{202e}}b\""
            ),
            "4 problem(s) in the input; nothing was planned or applied".to_string(),
        ]
    );
}

/// A runaway password in a connectionRef Secret is refused by length, before any call, and
/// never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_password_is_refused_by_its_length() {
    let sim = gateway().await;
    let dir = Dir::new("bigpw");
    let password = "p".repeat(10_000_000);
    let input = dir.write(
        "in.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: qualys}}\nstringData:\n  gatewayUrl: {}\n  \
             username: sim\n  password: {password}\n---\napiVersion: pm.qualys.io/v1alpha1\n\
             kind: DeploymentJob\nmetadata: {{name: a}}\nspec:\n  connectionRef: {{name: qualys}}\n  \
             job: {{name: A, platform: Linux, scheduleType: On-demand}}\n",
            sim.base_url()
        ),
    );
    let run = qpm(&["plan", "-f", &input, "--state", &dir.s("s.json")], &[]).await;
    assert_eq!(run.code, 1, "{}", &run.stderr[..run.stderr.len().min(500)]);
    assert_eq!(
        run.stderr,
        format!(
            "error: {input}: DeploymentJob default/a: spec.connectionRef: Secret default/qualys: \
             password too long (10000000 bytes; max 1024 bytes)\n\
             1 problem(s) in the input; nothing was planned or applied\n"
        )
    );
    assert_eq!(sim.counters().total(), 0);
}
