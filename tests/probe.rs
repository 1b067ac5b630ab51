//! `qpm-operator probe` and `sim --profile`, over real loopback HTTP: every simulator mode
//! round-trips (mode → probe → report → profile → probe → the same findings), the report holds
//! no secret, the probe's calls are counted, and an interrupted probe deletes its throwaway job.

mod sim_support;

use std::time::{Duration, Instant};

use clap::Parser;
use qpm_operator::probe::report::{Report, key_paths};
use qpm_operator::probe::{ProbeOptions, probe, probe_until};
use qpm_operator::qualys::Connection;
use qpm_operator::sim::profile::config_from_report;
use qpm_operator::sim::{
    DeleteMode, DeleteUnknown, Fault, FaultKind, ListOrder, RateLimit, RateLimitHeaders, Scope,
    SimArgs, SimConfig, SimHandle, SimUser,
};
use serde_json::{Value, json};
use sim_support::{Api, start};

const PASSWORD: &str = "pw-Probe-s3cret-7731";
const WRITES: ProbeOptions = ProbeOptions {
    allow_writes: true,
    include_names: false,
    budget: None,
};

fn config(edit: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut c = SimConfig {
        users: vec![SimUser::new("sim", PASSWORD)],
        ..SimConfig::default()
    };
    edit(&mut c);
    c
}

/// The same jobs in every simulator: 30 Windows jobs whose names are not in creation order,
/// two of them updated later, and 3 Linux jobs.
async fn populate(sim: &SimHandle) {
    let api = Api::login(&sim.base_url(), "sim", PASSWORD).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let a = api
            .create(
                &json!({"name": format!("job-{:02}", (i * 7) % 30), "platform": "Windows",
                "scheduleType": "On-demand"}),
            )
            .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        ids.push(a.body["id"].as_str().unwrap().to_string());
    }
    for i in [5, 12] {
        let a = api.update(&ids[i], &json!({"description": "later"})).await;
        assert_eq!(a.status, 200);
    }
    for i in 0..3 {
        let a = api
            .create(&json!({"name": format!("linux-{i}"), "platform": "Linux",
                "scheduleType": "On-demand"}))
            .await;
        assert_eq!(a.status, 201);
    }
}

async fn probe_sim(config: SimConfig, opts: ProbeOptions) -> (SimHandle, Report) {
    let sim = start(config).await;
    populate(&sim).await;
    sim.reset_counters();
    let conn = Connection::new(sim.base_url(), "sim", PASSWORD);
    let report = probe(&conn, opts).await.expect("the probe runs");
    // Every call the probe made is counted, and the count fits a 300-per-hour budget.
    assert_eq!(u64::from(report.calls), sim.counters().total());
    assert!(report.calls <= 40, "{} calls", report.calls);
    (sim, report)
}

/// Probe a simulator in `mode`, replay the report as a profile, probe again: same findings.
async fn round_trip(mode: SimConfig) -> Report {
    let (_sim, first) = probe_sim(mode, WRITES).await;
    let replayed = config_from_report(&first, config(|_| {}));
    let (_sim2, second) = probe_sim(replayed, WRITES).await;
    assert_eq!(first.findings(), second.findings());
    first
}

fn writes(r: &Report) -> &qpm_operator::probe::report::WriteFindings {
    r.writes.as_ref().expect("write findings")
}

#[tokio::test]
async fn the_default_simulator_round_trips() {
    let r = round_trip(config(|_| {})).await;
    assert_eq!(r.token.lifetime_secs, Some(4 * 3600));
    assert_eq!(r.token.status, 201);
    assert_eq!(r.paging.platform, "Windows");
    let sizes: Vec<(usize, Option<usize>)> = r
        .paging
        .page_sizes
        .iter()
        .map(|p| (p.requested, p.returned))
        .collect();
    assert_eq!(
        sizes,
        vec![
            (1, Some(1)),
            (10, Some(10)),
            (200, Some(30)),
            (1000, Some(30)),
            (10000, Some(30))
        ]
    );
    assert_eq!(r.paging.max_page_size, None);
    assert_eq!(r.paging.stable_across_pages, Some(true));
    assert!(r.paging.order.contains(&"created".to_string()));
    assert_eq!(r.paging.job_document_keys, Some(72));
    assert!(!r.rate_limit.headers_seen);
    assert_eq!(r.errors.unknown_job.status, 404);
    assert_eq!(
        r.errors.unknown_job.keys,
        vec!["_error", "_error.errorCode", "_error.message"]
    );
    // 33 jobs: a page past the 10,000th record is just empty.
    assert_eq!(
        (
            r.errors.beyond_cap.status,
            r.errors.beyond_cap.body.as_str()
        ),
        (200, "array")
    );
    let w = writes(&r);
    assert_eq!(w.create.status, 201);
    assert_eq!(w.update.as_ref().map(|a| a.status), Some(200));
    assert_eq!(w.update_unset_timeout.as_ref().map(|a| a.status), Some(200));
    assert_eq!(w.delete_item_status.as_deref(), Some("success"));
    assert_eq!(w.get_after_delete.as_ref().map(|a| a.status), Some(404));
    assert_eq!(w.listed_after_delete, Some(false));
    assert_eq!(w.delete_unknown.as_ref().map(|a| a.status), Some(200));
    assert_eq!(w.delete_unknown_item_status.as_deref(), Some("failure"));
    assert!(w.cleaned_up);
}

#[tokio::test]
async fn a_page_clamp_round_trips() {
    let r = round_trip(config(|c| c.max_page_size = Some(7))).await;
    assert_eq!(r.paging.max_page_size, Some(7));
    assert_eq!(r.paging.second_page_jobs, Some(7));
    assert_eq!(r.paging.page_sizes[1].returned, Some(7));
    assert_eq!(r.paging.stable_across_pages, Some(true));
}

#[tokio::test]
async fn list_orders_round_trip() {
    let r = round_trip(config(|c| c.list_order = ListOrder::Name)).await;
    assert_eq!(r.paging.order, vec!["name"]);
    let r = round_trip(config(|c| c.list_order = ListOrder::Id)).await;
    assert_eq!(r.paging.order, vec!["id"]);
    let r = round_trip(config(|c| c.list_order = ListOrder::Updated)).await;
    assert_eq!(r.paging.order, vec!["updated"]);
}

#[tokio::test]
async fn rate_limit_headers_round_trip() {
    let limit = Some(RateLimit {
        limit: 300,
        window: Duration::from_secs(3600),
    });
    let r = round_trip(config(|c| c.rate_limit = limit)).await;
    assert!(r.rate_limit.headers_seen);
    assert_eq!(
        (r.rate_limit.limit, r.rate_limit.window_sec),
        (Some(300), Some(3600))
    );
    assert!(
        r.header_names
            .contains(&"x-ratelimit-remaining".to_string())
    );
    let r = round_trip(config(|c| {
        c.rate_limit = limit;
        c.rate_limit_headers = RateLimitHeaders::None;
    }))
    .await;
    assert!(!r.rate_limit.headers_seen);
    assert!(!r.header_names.iter().any(|h| h.starts_with("x-ratelimit")));
}

#[tokio::test]
async fn delete_semantics_round_trip() {
    let r = round_trip(config(|c| c.delete_mode = DeleteMode::Soft)).await;
    let w = writes(&r);
    assert_eq!(w.get_after_delete.as_ref().map(|a| a.status), Some(200));
    assert!(w.deleted_by_after_delete);
    assert_eq!(
        (w.listed_after_delete, w.listed_deleted_flag),
        (Some(true), Some(true))
    );
    let r = round_trip(config(|c| c.delete_unknown = DeleteUnknown::NotFound)).await;
    let w = writes(&r);
    assert_eq!(w.delete_unknown.as_ref().map(|a| a.status), Some(404));
    assert_eq!(w.delete_unknown_item_status, None);
}

#[tokio::test]
async fn token_lifetime_error_shape_and_timeout_strictness_round_trip() {
    let r = round_trip(config(|c| c.token_ttl = Duration::from_secs(900))).await;
    assert_eq!(r.token.lifetime_secs, Some(900));
    let keys = vec![
        "fault".to_string(),
        "fault.code".into(),
        "fault.text".into(),
    ];
    let r = round_trip(config(|c| c.error_keys = Some(keys.clone()))).await;
    assert_eq!(r.errors.unknown_job.keys, keys);
    let r = round_trip(config(|c| c.accept_unset_timeout = false)).await;
    assert_eq!(
        writes(&r).update_unset_timeout.as_ref().map(|a| a.status),
        Some(400)
    );
}

#[tokio::test]
async fn modes_a_probe_cannot_observe_still_round_trip() {
    // The probe never enables a job and sees only its own user's jobs: scope and refused edits
    // of enabled one-shot jobs leave no trace in the report (docs/first-contact.md says so).
    round_trip(config(|c| c.scope = Scope::Own)).await;
    round_trip(config(|c| c.strict_enabled_edits = true)).await;
}

#[tokio::test]
async fn the_report_holds_no_secret_and_names_only_when_asked() {
    let (sim, r) = probe_sim(config(|_| {}), WRITES).await;
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains(PASSWORD));
    assert!(!text.contains("eyJ"), "a JWT in the report");
    assert!(!text.contains("job-"), "a job name in the report");
    assert!(
        !text.contains("qpm-probe-"),
        "the throwaway job's name in the report"
    );
    assert!(!text.contains(sim.customer_id()));
    assert_eq!(r.api_version, "qpm.probe/v1");
    assert!(r.names.is_none());
    // Error answers are recorded as key paths, never messages.
    assert!(!text.contains("not found"));

    let (_sim, r) = probe_sim(
        config(|_| {}),
        ProbeOptions {
            allow_writes: false,
            include_names: true,
            budget: None,
        },
    )
    .await;
    let names = r.names.expect("names with --include-names");
    assert_eq!(names.len(), 30);
    assert!(r.writes.is_none());
    assert!(!r.writes_allowed);
    // Read-only: nothing was created, changed or deleted.
    assert_eq!(r.calls, 13, "{:?}", r.timings);
}

#[tokio::test]
async fn an_interrupted_probe_deletes_its_throwaway_job() {
    let sim = start(config(|_| {})).await;
    populate(&sim).await;
    // The first edit hangs, so the interrupt comes while the throwaway job exists.
    sim.set_fault(
        Fault::on(
            "PATCH /pm/v1/deploymentjob/update/{id}",
            FaultKind::Latency { ms: 60_000 },
        )
        .times(1),
    );
    let conn = Connection::new(sim.base_url(), "sim", PASSWORD);
    let throwaway_exists = || {
        sim.jobs().iter().any(|j| {
            j["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("qpm-probe-"))
        })
    };
    // The fault is used up once the edit is in flight: the probe knows its job's id by then.
    let interrupted = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(throwaway_exists() && sim.faults().is_empty()) {
            assert!(Instant::now() < deadline, "the probe never created its job");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let err = probe_until(&conn, WRITES, interrupted)
        .await
        .expect_err("an interrupted probe fails");
    assert_eq!(
        err.to_string(),
        "interrupted: the throwaway job was deleted"
    );
    assert!(!throwaway_exists());
    assert_eq!(sim.job_count(), 33);
    assert_eq!(sim.count_status("DELETE /pm/v1/deploymentjobs", 200), 1);
    assert_eq!(
        sim.count("POST /pm/v1/deploymentjobs/update/status/{action}"),
        0
    );
}

#[derive(Parser)]
struct SimCommand {
    #[command(flatten)]
    sim: SimArgs,
}

#[tokio::test]
async fn sim_profile_reads_a_report_and_explicit_flags_win() {
    let (_sim, report) = probe_sim(config(|c| c.max_page_size = Some(7)), WRITES).await;
    let dir = std::env::temp_dir().join(format!("qpm-probe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    let p = path.to_str().unwrap();

    let args = SimCommand::parse_from(["sim", "--profile", p]).sim;
    let c = args.resolve().unwrap();
    assert_eq!(c.max_page_size, Some(7));
    assert_eq!(c.rate_limit_headers, RateLimitHeaders::None);
    assert_eq!(c.delete_mode, DeleteMode::Hard);
    let args = SimCommand::parse_from([
        "sim",
        "--profile",
        p,
        "--max-page-size",
        "3",
        "--delete",
        "soft",
    ])
    .sim;
    let c = args.resolve().unwrap();
    assert_eq!(
        (c.max_page_size, c.delete_mode),
        (Some(3), DeleteMode::Soft)
    );

    let mut other: Value = serde_json::to_value(&report).unwrap();
    other["apiVersion"] = json!("qpm.probe/v2");
    std::fs::write(&path, other.to_string()).unwrap();
    let err = SimCommand::parse_from(["sim", "--profile", p])
        .sim
        .resolve()
        .unwrap_err();
    assert!(format!("{err:#}").contains("qpm.probe/v1"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(key_paths(&json!({"a": {"b": 1}})).contains(&"a.b".to_string()));
}

#[test]
fn the_probe_command_writes_a_report_against_a_simulator() {
    let dir = std::env::temp_dir().join(format!("qpm-probe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("r.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_qpm-operator"))
        .args([
            "probe",
            "--sim=--max-page-size 5 --delete soft",
            "--allow-writes",
            "-o",
        ])
        .arg(&out)
        .env_remove("QUALYS_GATEWAY_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("probe: 18 API calls"), "{stderr}");
    let report: Report = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report.calls, 18);
    assert!(writes(&report).deleted_by_after_delete);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_probe_keeps_to_its_call_budget() {
    let dir = std::env::temp_dir().join(format!("qpm-probe-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("r.json");
    let run = |sim: &str, budget: &str| -> Report {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_qpm-operator"))
            .args([
                "probe",
                sim,
                "--allow-writes",
                "--qualys-budget",
                budget,
                "-o",
            ])
            .arg(&out)
            .env_remove("QUALYS_GATEWAY_URL")
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
    };
    // Paced to the gateway's limit: no 429, every step done.
    let paced = run("--sim=--rate-limit 6/1 --rate-limit-headers none", "6/1s");
    assert!(!paced.rate_limit.throttled, "{:?}", paced.timings);
    assert!(paced.timings.iter().all(|t| t.status != 429));
    assert!(writes(&paced).cleaned_up);
    // The default budget (300 per hour) is more than this gateway allows; a 429 on the
    // throwaway job's delete is waited out (Retry-After: 1 s here), the job still goes.
    let unpaced = run("--sim=--rate-limit 6/1", "300/1h");
    assert!(unpaced.rate_limit.throttled);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_deletes_the_throwaway_job_before_the_probe_exits() {
    let dir = std::env::temp_dir().join(format!("qpm-probe-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("sim.json");
    // Slow calls, and the embedded simulator's state file shows what exists (saved about once a
    // second and at exit).
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_qpm-operator"))
        .arg("probe")
        .arg(format!(
            "--sim=--latency-ms 800 --state {}",
            state.display()
        ))
        .args(["--allow-writes", "-o"])
        .arg(dir.join("r.json"))
        .env_remove("QUALYS_GATEWAY_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("qpm-probe-")) {
        assert!(
            Instant::now() < deadline,
            "the throwaway job never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("deleted the throwaway job"), "{stderr}");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains("qpm-probe-"), "{saved}");
    assert!(!dir.join("r.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
