//! The reconcile engine against the simulator over real HTTP, without a cluster: every
//! assertion is on the simulator's counters (what reached the "gateway") and on outcomes.

#[path = "sim_support/mod.rs"]
mod sim_support;

use qpm_operator::api::{DeploymentJobSpec, DriftPolicy, JobState, Reason, RecreatePolicy};
use qpm_operator::cli::manifests::{InputScripts, Inputs, JobManifest, load};
use qpm_operator::qualys::Client;
use qpm_operator::reconcile::engine::{self, CleanupOptions};
use qpm_operator::reconcile::render::NoScripts;
use qpm_operator::reconcile::{
    Claims, Context, Directory, EngineState, IdentifiedBy, MemoryStore, Mode, NoClaims,
};
use qpm_operator::sim::{Fault, FaultKind, SimHandle};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use qpm_operator::qualys::routes::{CREATE, DELETE, GET, LIST, STATUS, UPDATE};

async fn start() -> (SimHandle, Client) {
    sim_support::sim_and_client().await
}

fn examples() -> Inputs {
    load(
        &[PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples"
        ))],
        false,
    )
    .expect("examples load")
}

fn ctx<'a>(
    client: &'a Client,
    directory: &'a Directory,
    scripts: &'a (dyn qpm_operator::reconcile::ScriptResolver + Sync),
    linked: Option<&'a str>,
    mode: Mode,
) -> Context<'a> {
    Context {
        client,
        directory,
        claims: &NoClaims,
        scripts,
        linked_job_id: linked,
        mode,
        generation: Some(1),
        listing_max_age: Duration::from_secs(60),
        desired_cache: None,
    }
}

/// A minimal recurring Windows job.
fn spec(name: &str) -> DeploymentJobSpec {
    serde_json::from_value(json!({
        "job": {
            "name": name,
            "platform": "Windows",
            "scheduleType": "Daily",
            "startDateTime": "2025-07-01 09:57:18 AM",
            "timeout": 6, "timeoutUnit": "HOURS",
            "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"],
            "preDeployActions": [{"action": "Run Script", "scriptType": "ps", "script": "bHM=",
                                  "params": {"actionItem": "S1", "timeout": 180}}]
        }
    }))
    .expect("spec")
}

/// Apply every example (parents first), then resync three times: the second and later passes
/// write nothing.
#[tokio::test]
async fn examples_are_created_once_and_stay_converged() {
    let (sim, client) = start().await;
    let inputs = examples();
    assert!(inputs.jobs.len() >= 4, "three seed jobs and a parent");
    let directory = Directory::new();
    let mut states: HashMap<String, EngineState> = HashMap::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for pass in 0..4 {
        for m in &inputs.jobs {
            let scripts = InputScripts {
                inputs: &inputs,
                namespace: &m.namespace,
            };
            let linked = linked_id(m, &ids);
            let c = ctx(
                &client,
                &directory,
                &scripts,
                linked.as_deref(),
                Mode::Controller,
            );
            let state = states.entry(m.key()).or_default();
            let out = engine::apply(&m.job.spec, state, &mut MemoryStore::default(), &c).await;
            let expected = if pass == 0 {
                Reason::Created
            } else {
                Reason::UpToDate
            };
            assert_eq!(
                out.reason,
                expected,
                "pass {pass} {}: {}",
                m.key(),
                out.message
            );
            ids.insert(m.key(), state.job_id.clone().expect("job id"));
        }
        if pass == 0 {
            sim.reset_counters();
        }
    }
    let n = inputs.jobs.len() as u64;
    assert_eq!(sim.job_count() as u64, n);
    let counters = sim.counters();
    assert_eq!(counters.count(CREATE), 0);
    assert_eq!(
        counters.count(UPDATE),
        0,
        "no PATCH over three resyncs: {counters:?}"
    );
    assert_eq!(counters.count(STATUS), 0);
    // Each resync reads each job once; a child with actionRefs also reads its parent.
    let with_refs = inputs
        .jobs
        .iter()
        .filter(|m| m.job.spec.job.linked_job_ref.is_some())
        .count() as u64;
    assert_eq!(counters.count(GET), 3 * (n + with_refs));
}

fn linked_id(m: &JobManifest, ids: &HashMap<String, String>) -> Option<String> {
    let parent = m.job.spec.job.linked_job_ref.as_ref()?;
    ids.get(&format!("{}/{}", m.namespace, parent.name))
        .cloned()
}

#[tokio::test]
async fn a_one_field_spec_change_is_one_patch_of_that_field() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut s = spec("one-field");
    let mut state = EngineState::default();
    assert_eq!(
        engine::apply(&s, &mut state, &mut MemoryStore::default(), &c)
            .await
            .reason,
        Reason::Created
    );
    let id = state.job_id.clone().unwrap();
    let before = sim.job(&id).unwrap();

    s.job.timeout = Some(8);
    let obs = engine::observe(&s, &state, &c).await.unwrap();
    let paths: Vec<_> = obs.all_changes().iter().map(|c| c.path.clone()).collect();
    assert_eq!(paths, vec!["timeout"]);

    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Updated, "{}", out.message);
    assert_eq!(sim.count(UPDATE), 1);
    assert_eq!(
        out.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        vec!["Updated"]
    );
    let after = sim.job(&id).unwrap();
    assert_eq!(after["timeout"], 8);
    // Live action ids and the unchanged script path were sent back: same action, same script.
    assert_eq!(
        after["preDeployActions"][0]["actionId"],
        before["preDeployActions"][0]["actionId"]
    );
    assert_eq!(
        after["preDeployActions"][0]["script"],
        before["preDeployActions"][0]["script"]
    );
    let path = after["preDeployActions"][0]["script"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sim.script(&path).as_deref(), Some(&b"ls"[..]));
}

#[tokio::test]
async fn a_changed_script_is_sent_as_content_and_recorded() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut s = spec("script-change");
    let mut state = EngineState::default();
    engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    s.job.pre_deploy_actions.as_mut().unwrap()[0].script = Some("bHMgLWw=".into());
    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Updated, "{}", out.message);
    assert_eq!(sim.count(UPDATE), 1);
    let job = sim.job(state.job_id.as_deref().unwrap()).unwrap();
    let path = job["preDeployActions"][0]["script"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sim.script(&path).as_deref(), Some(&b"ls -l"[..]));
    // Converged: the next pass writes nothing.
    sim.reset_counters();
    assert_eq!(
        engine::apply(&s, &mut state, &mut MemoryStore::default(), &c)
            .await
            .reason,
        Reason::UpToDate
    );
    assert_eq!(sim.count(UPDATE), 0);
}

#[tokio::test]
async fn an_out_of_band_change_is_exactly_that_field_and_is_corrected() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let s = spec("drift");
    let mut state = EngineState::default();
    engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    let id = state.job_id.clone().unwrap();
    sim.console_edit(&id, json!({"approvedPatches": ["ca0d50b1-df21-31ef-aa9b-eec805b3a517"], "description": "edited in the console"}))
        .unwrap();
    let obs = engine::observe(&s, &state, &c).await.unwrap();
    let paths: Vec<_> = obs.all_changes().iter().map(|c| c.path.clone()).collect();
    assert_eq!(paths, vec!["approvedPatches"], "description is not managed");

    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Updated);
    assert!(out.drift_corrected);
    assert_eq!(out.drift_fields, vec!["approvedPatches"]);
    assert_eq!(out.events[0].reason, "DriftCorrected");
    assert_eq!(sim.count(UPDATE), 1);
    let job = sim.job(&id).unwrap();
    assert_eq!(
        job["approvedPatches"],
        json!(["9285e676-6340-3ba7-b124-31d84542c7bf"])
    );
    assert_eq!(
        job["description"], "edited in the console",
        "unmanaged fields are left alone"
    );
}

/// Keeps the last state saved, as a crash would leave it.
#[derive(Default)]
struct LastSaved(Option<EngineState>);
impl qpm_operator::reconcile::StateStore for LastSaved {
    fn save<'a>(
        &'a mut self,
        state: &'a EngineState,
    ) -> futures::future::BoxFuture<'a, Result<(), qpm_operator::reconcile::StoreError>> {
        self.0 = Some(state.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_recovered_not_repeated() {
    for drop_connection in [false, true] {
        let (sim, client) = start().await;
        let s = spec(&format!("lost-answer-{drop_connection}"));
        sim.set_fault(Fault::on(CREATE, FaultKind::CommitThenFail { drop_connection }).times(1));
        let mut state = EngineState::default();
        let mut store = LastSaved::default();
        {
            let directory = Directory::new();
            let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
            let out = engine::apply(&s, &mut state, &mut store, &c).await;
            assert_eq!(out.reason, Reason::GatewayUnavailable, "{}", out.message);
            assert!(out.message.contains("unknown"), "{}", out.message);
        }
        assert_eq!(sim.count(CREATE), 1, "never retried blindly");
        assert_eq!(sim.job_count(), 1, "the create took effect");
        // The pending create was recorded before the POST.
        let saved = store.0.clone().expect("saved");
        assert!(saved.pending_create.is_some() && saved.job_id.is_none());

        // "Restart": a fresh process with only the saved state.
        let mut state = saved;
        let directory = Directory::new();
        let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
        let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
        assert_eq!(out.reason, Reason::Adopted, "{}", out.message);
        assert_eq!(sim.count(CREATE), 1);
        assert_eq!(sim.job_count(), 1, "still exactly one job");
        assert!(state.pending_create.is_none());
        assert_eq!(state.job_id.as_deref(), sim.jobs()[0]["id"].as_str());
    }
}

#[tokio::test]
async fn adoption_by_job_id_never_enables() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut original = spec("adopt-me");
    let mut st = EngineState::default();
    engine::apply(&original, &mut st, &mut MemoryStore::default(), &c).await;
    let id = st.job_id.unwrap();

    original.job_id = Some(id.clone());
    original.job.status = Some(JobState::Enabled);
    sim.reset_counters();
    let mut state = EngineState::default();
    let out = engine::apply(&original, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Adopted, "{}", out.message);
    assert!(out.message.contains("never enables"), "{}", out.message);
    assert_eq!(sim.count(STATUS), 0);
    assert_eq!(sim.count(CREATE), 0);
    assert_eq!(sim.job(&id).unwrap()["status"], "Disabled");
    assert_eq!(state.adopted_generation, Some(1));
    assert_eq!(
        original.effective_deletion_policy(),
        qpm_operator::api::DeletionPolicy::Orphan
    );

    // A later spec change (generation 2) may enable it.
    let directory2 = Directory::new();
    let mut c2 = ctx(&client, &directory2, &NoScripts, None, Mode::Controller);
    c2.generation = Some(2);
    let out = engine::apply(&original, &mut state, &mut MemoryStore::default(), &c2).await;
    assert_eq!(out.reason, Reason::Updated, "{}", out.message);
    assert_eq!(sim.count(STATUS), 1);
    assert_eq!(sim.job(&id).unwrap()["status"], "Enabled");
}

#[tokio::test]
async fn a_foreign_job_with_the_same_name_is_a_conflict_for_the_controller_and_the_target_for_the_cli()
 {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let s = spec("same-name");
    let mut first = EngineState::default();
    engine::apply(&s, &mut first, &mut MemoryStore::default(), &c).await;

    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let out = engine::apply(
        &s,
        &mut EngineState::default(),
        &mut MemoryStore::default(),
        &c,
    )
    .await;
    assert_eq!(out.reason, Reason::NameConflict);
    assert!(
        out.message.contains(first.job_id.as_deref().unwrap()),
        "{}",
        out.message
    );
    assert_eq!(sim.job_count(), 1);

    let cli = ctx(&client, &directory, &NoScripts, None, Mode::Cli);
    let obs = engine::observe(&s, &EngineState::default(), &cli)
        .await
        .unwrap();
    assert_eq!(obs.identified_by, IdentifiedBy::Name);
    assert_eq!(obs.job_id(), first.job_id.as_deref());
}

struct ClaimedBy(String);
impl Claims for ClaimedBy {
    fn claimed_by(&self, _: &str) -> Option<String> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn a_job_claimed_by_another_resource_is_not_touched() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut s = spec("claimed");
    let mut st = EngineState::default();
    engine::apply(&s, &mut st, &mut MemoryStore::default(), &c).await;
    s.job_id = st.job_id.clone();
    s.job.timeout = Some(9);
    let claims = ClaimedBy("patching/first".into());
    let mut c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    c.claims = &claims;
    sim.reset_counters();
    let out = engine::apply(
        &s,
        &mut EngineState::default(),
        &mut MemoryStore::default(),
        &c,
    )
    .await;
    assert_eq!(out.reason, Reason::JobClaimed);
    assert!(out.message.contains("patching/first"));
    assert_eq!(sim.counters().total(), 0, "writes nothing, reads nothing");
}

/// The CLI path: a resource deletes only a job it created or adopted (here by the CLI's name
/// match); a job it names but another resource claims, or never observed, stays in Qualys.
#[tokio::test]
async fn cleanup_deletes_only_a_job_the_resource_has_proven_its_own() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Cli);
    let s = spec("owned-by-cli");
    let mut owner = EngineState::default();
    engine::apply(&s, &mut owner, &mut MemoryStore::default(), &c).await;
    let id = owner.job_id.clone().unwrap();

    let mut claimer_spec = s.clone();
    claimer_spec.job_id = Some(id.clone());
    claimer_spec.deletion_policy = Some(qpm_operator::api::DeletionPolicy::Delete);
    let claims = ClaimedBy("default/owner".into());
    let mut claimed = ctx(&client, &directory, &NoScripts, None, Mode::Cli);
    claimed.claims = &claims;
    let mut claimer = EngineState::default();
    let out = engine::apply(
        &claimer_spec,
        &mut claimer,
        &mut MemoryStore::default(),
        &claimed,
    )
    .await;
    assert_eq!(out.reason, Reason::JobClaimed, "{}", out.message);
    assert_eq!(claimer.job_id, None, "a claimer never records the job");
    sim.reset_counters();
    for c in [&claimed, &c] {
        let out = engine::cleanup(
            &claimer_spec,
            &mut claimer,
            &mut MemoryStore::default(),
            c,
            &CleanupOptions::default(),
        )
        .await;
        assert!(out.finished, "{}", out.message);
        assert_eq!(out.events[0].reason, "OrphanedNotOwned");
        assert!(out.message.contains(&id), "{}", out.message);
    }
    assert_eq!(sim.counters().total(), 0, "no Qualys call at all");
    assert!(sim.job(&id).is_some());

    // Found by its name (the CLI's contract) and recorded: its own, so deleted.
    let mut by_name = EngineState::default();
    let fresh = Directory::new();
    let c = ctx(&client, &fresh, &NoScripts, None, Mode::Cli);
    let out = engine::apply(&s, &mut by_name, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Adopted, "{}", out.message);
    let out = engine::cleanup(
        &s,
        &mut by_name,
        &mut MemoryStore::default(),
        &c,
        &CleanupOptions::default(),
    )
    .await;
    assert!(out.finished, "{}", out.message);
    assert_eq!(sim.count(DELETE), 1);
    assert!(sim.job(&id).is_none());
}

#[tokio::test]
async fn a_non_recurring_job_cannot_be_disabled_and_is_not_enabled_twice() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut s: DeploymentJobSpec = serde_json::from_value(json!({"job": {
        "name": "on-demand", "platform": "Linux", "scheduleType": "On-demand", "status": "Enabled"}}))
    .unwrap();
    let mut state = EngineState::default();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Created, "{}", out.message);
    assert_eq!(sim.count(STATUS), 1, "created Disabled, then enabled");
    let id = state.job_id.clone().unwrap();
    assert_eq!(sim.job(&id).unwrap()["status"], "Enabled");

    s.job.status = Some(JobState::Disabled);
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::CannotDisable, "{}", out.message);
    assert!(out.reason.is_stalled());

    // The job ran and was disabled in the console: not "corrected" back to Enabled.
    sim.console_edit(&id, json!({"status": "Disabled"}))
        .unwrap();
    s.job.status = Some(JobState::Enabled);
    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::UpToDate, "{}", out.message);
    assert!(out.message.contains("run it again"), "{}", out.message);
    assert_eq!(sim.count(STATUS), 0);
}

#[tokio::test]
async fn a_vanished_job_is_missing_unless_recreate_is_chosen() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut s = spec("vanishing");
    let mut state = EngineState::default();
    engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    let first = state.job_id.clone().unwrap();
    assert!(sim.console_delete(&first));
    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::JobMissing);
    assert!(out.message.contains("recreatePolicy"), "{}", out.message);
    assert_eq!(sim.count(CREATE), 0);

    s.recreate_policy = Some(RecreatePolicy::Recreate);
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Created, "{}", out.message);
    assert!(out.message.contains("re-created"));
    assert_eq!(sim.count(CREATE), 1);
    assert_ne!(state.job_id.as_deref(), Some(first.as_str()));
}

#[tokio::test]
async fn delete_removes_the_job_and_orphan_leaves_it() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let s = spec("to-delete");
    let mut state = EngineState::default();
    engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    let id = state.job_id.clone().unwrap();
    let out = engine::cleanup(
        &s,
        &mut state,
        &mut MemoryStore::default(),
        &c,
        &CleanupOptions::default(),
    )
    .await;
    assert!(out.finished, "{}", out.message);
    assert_eq!(out.events[0].reason, "Deleted");
    assert!(sim.job(&id).is_none());
    assert_eq!(sim.count(DELETE), 1);

    // Already gone (a per-item failure), confirmed by a GET's 404: done.
    let mut gone = EngineState {
        job_id: Some(id.clone()),
        ..Default::default()
    };
    sim.reset_counters();
    let out = engine::cleanup(
        &s,
        &mut gone,
        &mut MemoryStore::default(),
        &c,
        &CleanupOptions::default(),
    )
    .await;
    assert!(out.finished, "{}", out.message);
    assert_eq!((sim.count(DELETE), sim.count(GET)), (1, 1));

    let mut kept = EngineState::default();
    let s2 = spec("to-orphan");
    engine::apply(&s2, &mut kept, &mut MemoryStore::default(), &c).await;
    let mut orphan = s2.clone();
    orphan.deletion_policy = Some(qpm_operator::api::DeletionPolicy::Orphan);
    sim.reset_counters();
    let out = engine::cleanup(
        &orphan,
        &mut kept,
        &mut MemoryStore::default(),
        &c,
        &CleanupOptions::default(),
    )
    .await;
    assert!(out.finished);
    assert_eq!(out.events[0].reason, "Orphaned");
    assert_eq!(sim.counters().total(), 0);
    assert_eq!(sim.job_count(), 1);

    // A parent with children is not deleted in Qualys.
    let opts = CleanupOptions {
        force_orphan: false,
        children: vec!["default/child".into()],
    };
    let out = engine::cleanup(&s2, &mut kept, &mut MemoryStore::default(), &c, &opts).await;
    assert_eq!(out.reason, Reason::DeletionBlocked);
    assert!(!out.finished);
    assert_eq!(sim.count(DELETE), 0);
}

#[tokio::test]
async fn report_mode_writes_nothing_and_lists_the_differences() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut s = spec("observed");
    s.drift_policy = Some(DriftPolicy::Report);
    let mut state = EngineState::default();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::DriftDetected);
    assert_eq!(sim.count(CREATE), 0);

    s.drift_policy = None;
    engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    s.drift_policy = Some(DriftPolicy::Report);
    s.job.timeout = Some(12);
    s.job.pre_deploy_actions.as_mut().unwrap()[0].script = Some("bHMgLWw=".into());
    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::DriftDetected, "{}", out.message);
    let paths: Vec<_> = out
        .pending_changes
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(paths, vec!["timeout", "preDeployActions[0].script"]);
    let status_form = out.pending_changes[1].to_status();
    assert!(
        status_form.to.unwrap().starts_with("\"sha256:"),
        "scripts as digests, never content"
    );
    assert_eq!(sim.count(UPDATE) + sim.count(CREATE) + sim.count(STATUS), 0);
}

#[tokio::test]
async fn report_mode_lists_a_state_difference_and_why_it_would_not_change_it() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut original = spec("disabled-and-adopted");
    // No script: an adopted job's scripts are unknown, and would differ too.
    original.job.pre_deploy_actions = None;
    let mut st = EngineState::default();
    engine::apply(&original, &mut st, &mut MemoryStore::default(), &c).await;
    let id = st.job_id.unwrap();

    // Adopted while Disabled; the spec says Enabled.
    original.job_id = Some(id.clone());
    original.job.status = Some(JobState::Enabled);
    original.drift_policy = Some(DriftPolicy::Report);
    sim.reset_counters();
    let mut state = EngineState::default();
    let out = engine::apply(&original, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::DriftDetected, "{}", out.message);
    let pending: Vec<_> = out
        .pending_changes
        .iter()
        .map(|c| (c.path.as_str(), c.from.clone(), c.to.clone()))
        .collect();
    assert_eq!(
        pending,
        vec![("status", json!("Disabled"), json!("Enabled"))]
    );
    assert!(
        out.message.contains("never enables a job it adopts"),
        "{}",
        out.message
    );
    assert_eq!(sim.count(STATUS) + sim.count(UPDATE), 0);

    // A one-shot job enabled once, then disabled in the console: Report says it would not
    // re-enable it.
    let mut once: DeploymentJobSpec = serde_json::from_value(json!({"job": {
        "name": "one-shot-report", "platform": "Linux", "scheduleType": "On-demand", "status": "Enabled"}}))
    .unwrap();
    let mut state = EngineState::default();
    let out = engine::apply(&once, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Created, "{}", out.message);
    let once_id = state.job_id.clone().unwrap();
    sim.console_edit(&once_id, json!({"status": "Disabled"}))
        .unwrap();
    once.drift_policy = Some(DriftPolicy::Report);
    sim.reset_counters();
    let out = engine::apply(&once, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::DriftDetected, "{}", out.message);
    assert_eq!(out.pending_changes.len(), 1);
    assert_eq!(out.pending_changes[0].path, "status");
    assert!(out.message.contains("run it again"), "{}", out.message);
    assert_eq!(sim.count(STATUS), 0);
}

#[tokio::test]
async fn an_unrenderable_spec_makes_zero_api_calls() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let s: DeploymentJobSpec = serde_json::from_value(json!({"job": {
        "name": "bad", "platform": "Windows", "scheduleType": "On-demand",
        "preDeployActions": [{"action": "Run Script", "scriptFrom": {"configMapKeyRef": {"name": "missing", "key": "x.ps1"}}}]
    }}))
    .unwrap();
    let out = engine::apply(
        &s,
        &mut EngineState::default(),
        &mut MemoryStore::default(),
        &c,
    )
    .await;
    assert_eq!(out.reason, Reason::InvalidSpec);
    assert_eq!(
        out.message,
        "spec.job.preDeployActions[0].scriptFrom: ConfigMap \"missing\" key \"x.ps1\" is not available"
    );
    assert_eq!(sim.counters().total(), 0);
}

/// A ConfigMap holding `size` bytes for every key.
struct BigScripts(usize);
impl qpm_operator::reconcile::ScriptResolver for BigScripts {
    fn resolve(&self, _: &qpm_operator::api::ScriptSource) -> Result<Vec<u8>, String> {
        Ok(vec![b'#'; self.0])
    }
}

#[tokio::test]
async fn scripts_over_the_limit_are_refused_before_any_api_call() {
    use qpm_operator::reconcile::render::MAX_SCRIPT_BYTES;
    let (sim, client) = start().await;
    let directory = Directory::new();
    let s: DeploymentJobSpec = serde_json::from_value(json!({"job": {
        "name": "huge script", "platform": "Windows", "scheduleType": "On-demand",
        "preDeployActions": [
            {"action": "Run Script", "scriptType": "ps", "params": {"actionItem": "a", "timeout": 60},
             "scriptFrom": {"configMapKeyRef": {"name": "scripts", "key": "a.ps1"}}},
            {"action": "Run Script", "scriptType": "ps", "params": {"actionItem": "b", "timeout": 60},
             "scriptFrom": {"configMapKeyRef": {"name": "scripts", "key": "b.ps1"}}}
        ]
    }}))
    .unwrap();
    // Each script alone fits; together they are one byte over.
    let scripts = BigScripts(MAX_SCRIPT_BYTES / 2 + 1);
    let c = ctx(&client, &directory, &scripts, None, Mode::Cli);
    let mut state = EngineState::default();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::InvalidSpec, "{}", out.message);
    assert!(
        out.message
            .starts_with("spec.job.preDeployActions[1].scriptFrom:")
            && out.message.contains(&MAX_SCRIPT_BYTES.to_string()),
        "{}",
        out.message
    );
    assert_eq!(sim.counters().total(), 0);
    assert_eq!(state, EngineState::default());

    let fits = BigScripts(MAX_SCRIPT_BYTES / 2);
    let c = ctx(&client, &directory, &fits, None, Mode::Cli);
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(
        out.reason,
        Reason::Created,
        "1 MiB of scripts fits the gateway: {}",
        out.message
    );
}

#[tokio::test]
async fn a_create_refused_as_too_large_clears_its_pending_record() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let s = spec("refused-413");
    sim.set_fault(Fault::on(CREATE, FaultKind::Status { status: 413 }).times(1));
    let mut state = EngineState::default();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::InvalidSpec, "{}", out.message);
    assert!(
        out.message.contains("too large") && out.message.contains("413"),
        "{}",
        out.message
    );
    assert_eq!(state.pending_create, None, "nothing was created");
    assert_eq!(sim.job_count(), 0);
    // The next run creates once, without a recovery lookup.
    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Created, "{}", out.message);
    assert_eq!((sim.count(CREATE), sim.job_count()), (1, 1));
}

#[tokio::test]
async fn a_child_waits_for_its_parent_without_calling_the_api() {
    let (sim, client) = start().await;
    let inputs = examples();
    let child = inputs
        .jobs
        .iter()
        .find(|m| m.job.spec.job.linked_job_ref.is_some())
        .expect("a chained example");
    let directory = Directory::new();
    let scripts = InputScripts {
        inputs: &inputs,
        namespace: &child.namespace,
    };
    let c = ctx(&client, &directory, &scripts, None, Mode::Controller);
    let out = engine::apply(
        &child.job.spec,
        &mut EngineState::default(),
        &mut MemoryStore::default(),
        &c,
    )
    .await;
    assert_eq!(out.reason, Reason::WaitingForLinkedJob);
    assert_eq!(sim.counters().total(), 0);
    let _ = LIST;
}

#[tokio::test]
async fn an_update_that_does_not_take_stops_instead_of_looping() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let c = ctx(&client, &directory, &NoScripts, None, Mode::Controller);
    let mut s = spec("stubborn");
    let mut state = EngineState::default();
    engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    // The gateway accepts the update but keeps its timeout.
    sim.set_fault(Fault::on(
        UPDATE,
        FaultKind::IgnoreFields {
            fields: vec!["timeout".into()],
        },
    ));
    s.job.timeout = Some(9);
    s.job.description = Some("applied".into());
    sim.reset_counters();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::NotConverging, "{}", out.message);
    assert!(out.reason.is_stalled());
    assert!(
        out.message.contains("timeout") && !out.message.contains("description"),
        "{}",
        out.message
    );
    assert_eq!(sim.count(UPDATE), 1, "sent once, not again and again");
    assert_eq!(
        sim.job(state.job_id.as_deref().unwrap()).unwrap()["description"],
        "applied"
    );
}

/// For every example manifest and every seed job: create, stay converged over three resyncs,
/// and report exactly the one field that changed — in the spec, or in the "console".
#[tokio::test]
async fn every_example_and_seed_job_reports_exactly_the_field_that_changed() {
    use qpm_operator::qualys::JobBody;
    use qpm_operator::reconcile::import::spec_from_live;
    let (sim, client) = start().await;
    let inputs = examples();
    let mut specs: Vec<(String, DeploymentJobSpec, String)> = inputs
        .jobs
        .iter()
        .map(|m| (m.key(), m.job.spec.clone(), m.namespace.clone()))
        .collect();
    for seed in ["01-windows-install", "02-linux-rollback"] {
        let path = format!(
            "{}/testdata/seed/{seed}.request.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = JobBody::from_json(&std::fs::read(path).unwrap()).unwrap();
        let (mut job, _) = spec_from_live(&body).unwrap();
        job.name = format!("seed {seed}");
        for actions in [
            job.pre_deploy_actions.as_mut(),
            job.post_deploy_actions.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            for a in actions {
                if a.action == qpm_operator::api::ActionKind::RunScript {
                    a.script = Some("bHM=".into());
                }
            }
        }
        let spec = DeploymentJobSpec {
            connection_ref: None,
            job_id: None,
            deletion_policy: None,
            drift_policy: None,
            recreate_policy: None,
            job,
        };
        specs.push((format!("seed/{seed}"), spec, "default".into()));
    }
    let directory = Directory::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for (key, spec, ns) in &specs {
        let scripts = InputScripts {
            inputs: &inputs,
            namespace: ns,
        };
        let linked = spec
            .job
            .linked_job_ref
            .as_ref()
            .and_then(|p| ids.get(&format!("{ns}/{}", p.name)).cloned());
        let c = ctx(
            &client,
            &directory,
            &scripts,
            linked.as_deref(),
            Mode::Controller,
        );
        let mut state = EngineState::default();
        assert_eq!(
            engine::apply(spec, &mut state, &mut MemoryStore::default(), &c)
                .await
                .reason,
            Reason::Created,
            "{key}"
        );
        sim.reset_counters();
        for _ in 0..3 {
            assert_eq!(
                engine::apply(spec, &mut state, &mut MemoryStore::default(), &c)
                    .await
                    .reason,
                Reason::UpToDate,
                "{key}"
            );
        }
        assert_eq!(
            sim.count(UPDATE) + sim.count(CREATE) + sim.count(STATUS),
            0,
            "{key}"
        );
        let id = state.job_id.clone().unwrap();
        ids.insert(key.clone(), id.clone());

        // A one-field spec change is exactly that field.
        let mut edited = spec.clone();
        edited.job.description = Some(format!(
            "{} (edited)",
            spec.job.description.clone().unwrap_or_default()
        ));
        let obs = engine::observe(&edited, &state, &c).await.unwrap();
        let paths: Vec<_> = obs.all_changes().into_iter().map(|c| c.path).collect();
        assert_eq!(paths, vec!["description"], "{key}");

        // An out-of-band change of a managed field is exactly that field.
        sim.console_edit(&id, json!({"timeout": 99, "timeoutUnit": "HOURS"}))
            .unwrap();
        let obs = engine::observe(spec, &state, &c).await.unwrap();
        let paths: Vec<_> = obs.all_changes().into_iter().map(|c| c.path).collect();
        let expected: Vec<&str> = if spec.job.timeout.is_some() {
            vec!["timeout"]
        } else {
            vec![]
        };
        assert_eq!(paths, expected, "{key}");
    }
}

/// The engine's logic without HTTP: the in-memory gateway behind the same seam.
#[tokio::test]
async fn the_engine_runs_against_an_in_memory_gateway() {
    use qpm_operator::reconcile::MemoryGateway;
    let gateway = MemoryGateway::new();
    let directory = Directory::new();
    let c = Context {
        client: &gateway,
        directory: &directory,
        claims: &NoClaims,
        scripts: &NoScripts,
        linked_job_id: None,
        mode: Mode::Controller,
        generation: Some(1),
        listing_max_age: Duration::ZERO,
        desired_cache: None,
    };
    let mut s = spec("in memory");
    s.job.pre_deploy_actions = None;
    let mut state = EngineState::default();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Created, "{}", out.message);
    let id = state.job_id.clone().unwrap();
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::UpToDate, "{}", out.message);
    s.job.timeout = Some(9);
    let out = engine::apply(&s, &mut state, &mut MemoryStore::default(), &c).await;
    assert_eq!(out.reason, Reason::Updated, "{}", out.message);
    assert_eq!(out.updated_fields, vec!["timeout"]);
    assert_eq!((gateway.calls("create"), gateway.calls("update")), (1, 1));

    // A resource that names the job but never adopted it deletes nothing.
    let mut other = s.clone();
    other.job_id = Some(id.clone());
    other.deletion_policy = Some(qpm_operator::api::DeletionPolicy::Delete);
    let before = gateway.total_calls();
    let out = engine::cleanup(
        &other,
        &mut EngineState::default(),
        &mut MemoryStore::default(),
        &c,
        &CleanupOptions::default(),
    )
    .await;
    assert_eq!(out.events[0].reason, "OrphanedNotOwned");
    assert_eq!(gateway.total_calls(), before);
    let out = engine::cleanup(
        &s,
        &mut state,
        &mut MemoryStore::default(),
        &c,
        &CleanupOptions::default(),
    )
    .await;
    assert!(out.finished, "{}", out.message);
    assert!(gateway.job(&id).is_none());
}

/// A ConfigMap script the test edits between reconciles.
struct EditableScript(std::sync::Mutex<Vec<u8>>);

impl qpm_operator::reconcile::ScriptResolver for EditableScript {
    fn resolve(&self, _: &qpm_operator::api::ScriptSource) -> Result<Vec<u8>, String> {
        Ok(self.0.lock().map_err(|e| e.to_string())?.clone())
    }
}

/// With the controller's cache of desired bodies: an unchanged resync is served from it and
/// writes nothing; an edit of the ConfigMap behind `scriptFrom`, with the spec unchanged, is
/// seen and sent (a stale cached body would report UpToDate and send nothing).
#[tokio::test]
async fn a_cached_desired_body_never_hides_a_script_edit() {
    let (sim, client) = start().await;
    let directory = Directory::new();
    let scripts = EditableScript(std::sync::Mutex::new(b"Write-Host one".to_vec()));
    let cache = qpm_operator::reconcile::DesiredCache::new();
    let mut c = ctx(&client, &directory, &scripts, None, Mode::Controller);
    c.desired_cache = Some(qpm_operator::reconcile::CacheSlot {
        cache: &cache,
        key: "uid-1",
    });
    let s: DeploymentJobSpec = serde_json::from_value(json!({"job": {
        "name": "cached-script", "platform": "Windows", "scheduleType": "Daily",
        "startDateTime": "2025-07-01 09:57:18 AM", "timeout": 6, "timeoutUnit": "HOURS",
        "preDeployActions": [{"action": "Run Script", "scriptType": "ps",
            "scriptFrom": {"configMapKeyRef": {"name": "scripts", "key": "pre.ps1"}},
            "params": {"actionItem": "S1", "timeout": 180}}]}}))
    .expect("spec");
    let mut state = EngineState::default();
    let mut store = MemoryStore::default();
    let out = engine::apply(&s, &mut state, &mut store, &c).await;
    assert_eq!(out.reason, Reason::Created, "{}", out.message);
    assert_eq!(cache.len(), 1);
    let first = state.digests.clone();

    sim.reset_counters();
    for _ in 0..2 {
        let out = engine::apply(&s, &mut state, &mut store, &c).await;
        assert_eq!(out.reason, Reason::UpToDate, "{}", out.message);
    }
    assert_eq!(sim.count(UPDATE), 0);
    assert_eq!(state.digests, first);

    *scripts.0.lock().expect("lock") = b"Write-Host two".to_vec();
    let obs = engine::observe(&s, &state, &c).await.expect("observe");
    let paths: Vec<_> = obs.all_changes().iter().map(|c| c.path.clone()).collect();
    assert_eq!(paths, vec!["preDeployActions[0].script"]);
    let out = engine::apply(&s, &mut state, &mut store, &c).await;
    assert_eq!(out.reason, Reason::Updated, "{}", out.message);
    assert_eq!(sim.count(UPDATE), 1);
    assert_ne!(state.digests, first);
    assert_eq!(
        state
            .digests
            .scripts
            .get("pre[0].script")
            .map(String::as_str),
        Some(qpm_operator::reconcile::digest::script_digest(b"Write-Host two").as_str())
    );
    let out = engine::apply(&s, &mut state, &mut store, &c).await;
    assert_eq!(out.reason, Reason::UpToDate, "{}", out.message);
    assert_eq!(sim.count(UPDATE), 1);
}

/// The typed comparison equals the JSON diff on what the simulator answers for every example
/// (ConfigMap scripts, the chained child), unchanged and with each managed member changed in
/// turn (removed, null, another value of each type) and each member inside it nulled. Resyncs
/// through the controller's cache of desired bodies stay converged.
#[tokio::test]
async fn the_typed_comparison_equals_the_json_diff_on_the_examples() {
    use qpm_operator::reconcile::{
        CacheSlot, DesiredCache, RenderInputs, diff, diff_live, normalise_desired,
        normalise_live_managed, render,
    };
    let (_sim, client) = start().await;
    let inputs = examples();
    let directory = Directory::new();
    let cache = DesiredCache::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut compared = 0;
    for m in &inputs.jobs {
        let scripts = InputScripts {
            inputs: &inputs,
            namespace: &m.namespace,
        };
        let linked = linked_id(m, &ids);
        let key = m.key();
        let mut c = ctx(
            &client,
            &directory,
            &scripts,
            linked.as_deref(),
            Mode::Controller,
        );
        c.desired_cache = Some(CacheSlot {
            cache: &cache,
            key: &key,
        });
        let mut state = EngineState::default();
        for expected in [Reason::Created, Reason::UpToDate, Reason::UpToDate] {
            let out = engine::apply(&m.job.spec, &mut state, &mut MemoryStore::default(), &c).await;
            assert_eq!(out.reason, expected, "{key}: {}", out.message);
        }
        let id = state.job_id.clone().expect("job id");
        ids.insert(key.clone(), id.clone());

        let live = client.get_job(&id).await.expect("live job");
        let parent_post_actions: Vec<(String, String)> = match &linked {
            Some(parent) => client
                .get_job(parent)
                .await
                .expect("parent")
                .post_action_ids(),
            None => Vec::new(),
        };
        let rendered = render(
            &m.job.spec.job,
            &RenderInputs {
                linked_job_id: linked.as_deref(),
                parent_post_actions: &parent_post_actions,
                scripts: &scripts,
            },
        )
        .expect("renders");
        let desired = normalise_desired(&rendered);
        let recorded = &state.digests.scripts;
        let base = serde_json::to_value(&live).expect("json");
        let mut variants = vec![base.clone()];
        for (k, v) in desired.as_object().expect("object") {
            for replacement in [
                None,
                Some(json!(null)),
                Some(json!("x")),
                Some(json!(7)),
                Some(json!([])),
                Some(json!({})),
            ] {
                let mut changed = base.clone();
                match replacement {
                    None => {
                        changed.as_object_mut().expect("object").shift_remove(k);
                    }
                    Some(r) => changed[k] = r,
                }
                variants.push(changed);
            }
            let inner: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            for i in inner {
                let mut changed = base.clone();
                changed[k][&i] = json!(null);
                variants.push(changed);
            }
        }
        for variant in variants {
            let Ok(live) = serde_json::from_value::<qpm_operator::qualys::JobBody>(variant) else {
                continue;
            };
            assert_eq!(
                diff_live(&desired, &live, recorded),
                diff(&desired, &normalise_live_managed(&live, recorded, &desired)),
                "{key}"
            );
            compared += 1;
        }
    }
    assert!(compared > 100, "{compared}");
    assert_eq!(cache.len(), inputs.jobs.len());
}
