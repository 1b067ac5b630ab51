//! Every action kind the Qualys console makes, against the simulator over real HTTP: a job
//! made in the console with Change Registry Key, Uninstall Software and a kind this version
//! has never heard of is adopted, updated, imported and planned without losing or refusing
//! any of its actions.

#[path = "sim_support/mod.rs"]
mod sim_support;

use qpm_operator::api::validate::{validate_manifest, yaml_documents};
use qpm_operator::api::{DeploymentJob, DeploymentJobSpec, Reason};
use qpm_operator::cli::import::manifests;
use qpm_operator::qualys::{Client, JobBody};
use qpm_operator::reconcile::engine;
use qpm_operator::reconcile::render::{NoScripts, RenderInputs, render};
use qpm_operator::reconcile::{Context, Directory, EngineState, MemoryStore, Mode, NoClaims};
use qpm_operator::sim::SimHandle;
use serde_json::{Value, json};
use std::time::Duration;

use qpm_operator::qualys::routes::UPDATE;
const CUSTOMER: &str = "bc023fd7-4290-f28f-8181-95a46f519f52";
const JOB: &str = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b";
const SMB_KEY: &str =
    r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Services\LanmanServer\Parameters";

async fn start() -> (SimHandle, Client) {
    sim_support::sim_and_client().await
}

fn ctx<'a>(client: &'a Client, directory: &'a Directory) -> Context<'a> {
    Context {
        client,
        directory,
        claims: &NoClaims,
        scripts: &NoScripts,
        linked_job_id: None,
        mode: Mode::Controller,
        generation: Some(1),
        listing_max_age: Duration::from_secs(60),
        desired_cache: None,
    }
}

fn pre_actions() -> Value {
    json!([
        {"actionId": "0a1b2c3d-0000-4000-8000-000000000001", "action": "Change Registry Key",
         "actionType": "predeploy",
         "params": {"actionItem": "Disable SMBv1", "registryKey": SMB_KEY, "registryAction": "Update",
                    "valueName": "SMB1", "valueType": "REG_DWORD", "valueData": "0", "timeout": 180},
         "actionLinkedToJob": false},
        {"actionId": "0a1b2c3d-0000-4000-8000-000000000002", "action": "Uninstall Software",
         "actionType": "predeploy",
         "params": {"actionItem": "Remove Acme", "softwareName": "Acme Agent",
                    "uninstallCommand": "msiexec /x {0F3C2B1A-0000-4000-8000-000000000001} /qn",
                    "bypassExecutionPolicy": true}}
    ])
}

/// A kind this version does not know, whose members even reuse known names with other types.
fn post_actions() -> Value {
    json!([
        {"actionId": "0a1b2c3d-0000-4000-8000-000000000003", "action": "Set Wallpaper",
         "actionType": "postdeploy",
         "params": {"actionItem": 7, "timeout": true, "colour": "teal"},
         "script": {"inline": true, "lines": ["a", "b"]},
         "steps": [1, 2.5, {"k": null}], "actionLinkedToJob": false}
    ])
}

/// The job as the console would have stored it.
fn console_job() -> Value {
    json!({
        "customerId": CUSTOMER, "id": JOB, "name": "console job", "type": "Install",
        "status": "Disabled", "platform": "Windows", "scheduleType": "On-demand",
        "description": "made in the console",
        "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"],
        "preDeployActions": pre_actions(),
        "postDeployActions": post_actions(),
    })
}

async fn put_console_job(sim: &SimHandle) {
    let response = reqwest::Client::new()
        .put(format!("{}/_sim/jobs/{JOB}", sim.base_url()))
        .json(&console_job())
        .send()
        .await
        .expect("admin PUT");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

fn adopting(description: &str) -> DeploymentJobSpec {
    serde_json::from_value(json!({
        "jobId": JOB,
        "job": {"name": "console job", "platform": "Windows", "scheduleType": "On-demand",
                "description": description}
    }))
    .expect("spec")
}

#[tokio::test]
async fn an_update_of_another_field_sends_every_action_back_unchanged() {
    let (sim, client) = start().await;
    put_console_job(&sim).await;

    // GET through the client: the typed view reads the kinds it knows and keeps the rest.
    let live = client.get_job(JOB).await.expect("GET");
    let kinds: Vec<Option<&str>> = live.actions().map(|(_, _, a)| a.kind()).collect();
    assert_eq!(
        kinds,
        [
            Some("Change Registry Key"),
            Some("Uninstall Software"),
            Some("Set Wallpaper")
        ]
    );
    let live_json = serde_json::to_value(&live).unwrap();
    assert_eq!(live_json["preDeployActions"], pre_actions());
    assert_eq!(live_json["postDeployActions"], post_actions());

    // Adopt it managing one other field: one PATCH, and every action comes back as it was;
    // then converged: nothing written.
    let directory = Directory::new();
    let c = ctx(&client, &directory);
    let spec = adopting("managed by the operator");
    let mut state = EngineState::default();
    for (pass, reason, patches) in [(0, Reason::Adopted, 1), (1, Reason::UpToDate, 0)] {
        sim.reset_counters();
        let out = engine::apply(&spec, &mut state, &mut MemoryStore::default(), &c).await;
        assert_eq!(out.reason, reason, "pass {pass}: {}", out.message);
        assert_eq!(sim.count(UPDATE), patches, "pass {pass}");
        let after = sim.job(JOB).expect("job kept");
        assert_eq!(after["description"], "managed by the operator");
        assert_eq!(after["preDeployActions"], pre_actions(), "pass {pass}");
        assert_eq!(after["postDeployActions"], post_actions(), "pass {pass}");
    }
}

#[tokio::test]
async fn the_simulator_takes_back_an_unknown_kind_only_as_it_stored_it() {
    let (sim, client) = start().await;
    put_console_job(&sim).await;
    let live = client.get_job(JOB).await.expect("GET");

    // A new action of that kind (no id of the stored job) is the client's invention: refused.
    let mut doc = serde_json::to_value(&live).unwrap();
    doc["postDeployActions"][0]["actionId"] = json!("0a1b2c3d-0000-4000-8000-0000000000ff");
    let body: JobBody = serde_json::from_value(doc).unwrap();
    let err = client.update_job(JOB, &body).await.unwrap_err().to_string();
    assert!(
        err.contains(
            "postDeployActions[0].action: \"Set Wallpaper\" is not one of Run Script, Install Software, Change Registry Key, Uninstall Software"
        ),
        "{err}"
    );

    // Six actions in one list: refused, as the console refuses them.
    let mut doc = serde_json::to_value(&live).unwrap();
    let six: Vec<Value> = (0..6)
        .map(|i| {
            json!({"action": "Run Script", "scriptType": "ps", "script": "bHM=",
                         "params": {"actionItem": format!("s{i}")}})
        })
        .collect();
    doc["preDeployActions"] = json!(six);
    let body: JobBody = serde_json::from_value(doc).unwrap();
    let err = client.update_job(JOB, &body).await.unwrap_err().to_string();
    assert!(
        err.contains("preDeployActions: at most 5 actions (got 6)"),
        "{err}"
    );
    assert_eq!(
        sim.job(JOB).unwrap()["postDeployActions"],
        post_actions(),
        "nothing stored"
    );
}

#[tokio::test]
async fn import_leaves_unknown_actions_unmanaged_and_plans_as_no_op() {
    let (sim, client) = start().await;
    put_console_job(&sim).await;
    let live = client.get_job(JOB).await.expect("GET");

    let (imported, failures) = manifests(std::slice::from_ref(&live), "default");
    assert_eq!(failures, Vec::<String>::new());
    assert_eq!(imported.len(), 1);
    let manifest = &imported[0];
    assert_eq!(
        manifest.notes,
        [
            "postDeployActions[0] is a \"Set Wallpaper\" action, a kind this version does not know; \
             postDeployActions left unmanaged (the job keeps its actions as they are)"
        ]
    );
    let docs = yaml_documents(&manifest.yaml).expect("YAML");
    assert_eq!(docs.len(), 1);
    let dj: DeploymentJob = validate_manifest(&docs[0]).expect("a valid manifest");
    assert_eq!(dj.spec.job_id.as_deref(), Some(JOB));
    assert_eq!(dj.spec.job.post_deploy_actions, None);
    assert_eq!(
        serde_json::to_value(&docs[0]["spec"]["job"]["preDeployActions"]).unwrap(),
        json!([
            {"action": "Change Registry Key",
             "params": {"actionItem": "Disable SMBv1", "timeout": 180, "registryKey": SMB_KEY,
                        "registryAction": "Update", "valueName": "SMB1", "valueType": "REG_DWORD",
                        "valueData": "0"}},
            {"action": "Uninstall Software",
             "params": {"actionItem": "Remove Acme", "softwareName": "Acme Agent",
                        "uninstallCommand": "msiexec /x {0F3C2B1A-0000-4000-8000-000000000001} /qn"}}
        ])
    );

    // Planned as plan plans it: no change, and applying writes nothing.
    let directory = Directory::new();
    let c = ctx(&client, &directory);
    let state = EngineState::default();
    let obs = engine::observe(&dj.spec, &state, &c)
        .await
        .unwrap_or_else(|o| panic!("observe: {}", o.message));
    assert_eq!(obs.all_changes(), Vec::new());
    sim.reset_counters();
    let mut state = EngineState::default();
    let out = engine::apply(&dj.spec, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Adopted, "{}", out.message);
    assert_eq!(sim.count(UPDATE), 0);
    assert_eq!(sim.job(JOB).unwrap()["postDeployActions"], post_actions());
}

#[test]
fn a_list_of_six_actions_is_refused_by_the_schema() {
    let action = json!({"action": "Uninstall Software", "params": {"softwareName": "Acme"}});
    let manifest = |n: usize| {
        json!({
            "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
            "metadata": {"name": "six", "namespace": "default"},
            "spec": {"job": {"name": "Six", "platform": "Windows", "scheduleType": "On-demand",
                             "preDeployActions": vec![action.clone(); n]}}
        })
    };
    assert!(validate_manifest(&manifest(5)).is_ok());
    let problems: Vec<String> = validate_manifest(&manifest(6))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        ["spec.job.preDeployActions: must have at most 5 items; got 6"]
    );
    let crd = qpm_operator::api::crd_value();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["job"]["properties"];
    assert_eq!(schema["preDeployActions"]["maxItems"], 5);
    assert_eq!(schema["postDeployActions"]["maxItems"], 5);
}

#[test]
fn render_gives_each_new_kind_its_wire_shape() {
    let spec: DeploymentJobSpec = serde_json::from_value(json!({"job": {
        "name": "kinds", "platform": "Windows", "scheduleType": "On-demand",
        "preDeployActions": [
            {"action": "Change Registry Key",
             "params": {"actionItem": "Disable SMBv1", "registryKey": SMB_KEY,
                        "registryAction": "Update", "valueName": "SMB1",
                        "valueType": "REG_DWORD", "valueData": "0"}}
        ],
        "postDeployActions": [
            {"action": "Uninstall Software",
             "params": {"actionItem": "Remove Acme", "softwareName": "Acme Agent",
                        "uninstallCommand": "msiexec /x {0F3C2B1A-0000-4000-8000-000000000001} /qn",
                        "timeout": 600}},
            {"action": "Change Registry Key",
             "params": {"registryKey": r"HKEY_CURRENT_USER\Software\Acme", "registryAction": "Delete"}}
        ]
    }}))
    .expect("spec");
    let rendered = render(&spec.job, &RenderInputs::default()).expect("render");
    let body = serde_json::to_value(&rendered.body).unwrap();
    assert_eq!(
        body["preDeployActions"],
        json!([{"action": "Change Registry Key", "actionType": "predeploy",
                "params": {"actionItem": "Disable SMBv1", "registryKey": SMB_KEY,
                           "registryAction": "Update", "valueName": "SMB1",
                           "valueType": "REG_DWORD", "valueData": "0"}}])
    );
    assert_eq!(
        body["postDeployActions"],
        json!([
            {"action": "Uninstall Software", "actionType": "postdeploy",
             "params": {"actionItem": "Remove Acme", "timeout": 600, "softwareName": "Acme Agent",
                        "uninstallCommand": "msiexec /x {0F3C2B1A-0000-4000-8000-000000000001} /qn"}},
            {"action": "Change Registry Key", "actionType": "postdeploy",
             "params": {"registryKey": r"HKEY_CURRENT_USER\Software\Acme", "registryAction": "Delete"}}
        ])
    );
    assert!(rendered.scripts.is_empty());
}

#[test]
fn the_registry_and_uninstall_example_in_the_docs_is_valid() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/crd.md")).unwrap();
    let block = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("Change Registry Key"))
        .expect("the docs show both kinds");
    let manifest = format!(
        "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata:\n  name: kinds\n  namespace: default\n\
         spec:\n  job:\n    name: kinds\n    platform: Windows\n    scheduleType: On-demand\n{block}"
    );
    let docs = yaml_documents(&manifest).expect("YAML");
    let job = validate_manifest(&docs[0]).unwrap_or_else(|p| panic!("{p:?}"));
    let kinds: Vec<&str> = job
        .spec
        .job
        .post_deploy_actions
        .iter()
        .flatten()
        .map(|a| a.action.as_str())
        .collect();
    assert_eq!(kinds, ["Change Registry Key", "Uninstall Software"]);
}
