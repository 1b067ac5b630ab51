//! The Argo CD health check (docs/argocd/health.lua), run by Debian's `lua5.1` (Argo CD runs
//! Lua 5.1) against sample DeploymentJobs: one per condition reason, its conditions built by
//! `api::conditions_for` (so the samples follow the real reason table), plus the no-status and
//! stale-generation cases. Without `lua5.1` these tests fail naming the package, unless
//! `QPM_SKIP_LUA=1`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use qpm_operator::api::validate::yaml_documents;
use qpm_operator::api::{DeploymentJobStatus, Reason, conditions_for};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn health_lua() -> PathBuf {
    repo().join("docs/argocd/health.lua")
}

/// A Lua 5.1 expression for a JSON value, as Argo CD hands the object to the script: objects
/// and arrays become tables (arrays 1-based), null becomes nil. Strings are escaped byte by byte,
/// so any content round-trips.
fn to_lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for b in s.bytes() {
                match b {
                    b'\\' => out.push_str("\\\\"),
                    b'"' => out.push_str("\\\""),
                    0x20..=0x7e => out.push(b as char),
                    _ => out.push_str(&format!("\\{b:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(to_lua).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("[{}] = {}", to_lua(&Value::String(k.clone())), to_lua(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Whether `lua5.1` can run; panics naming the package unless `QPM_SKIP_LUA=1`.
fn lua_available() -> bool {
    match Command::new("lua5.1").arg("-v").output() {
        Ok(out) if out.status.success() => true,
        other => {
            if std::env::var("QPM_SKIP_LUA").as_deref() == Ok("1") {
                eprintln!(
                    "lua5.1 not usable; QPM_SKIP_LUA=1, so the Argo CD health check is not run"
                );
                false
            } else {
                panic!(
                    "the Argo CD health check is tested with Lua 5.1: install Debian's `lua5.1` \
                     package (apt-get install -y lua5.1), or set QPM_SKIP_LUA=1 ({other:?})"
                )
            }
        }
    }
}

/// Run the health check on `obj`; `(hs.status, hs.message)`.
fn health(obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        to_lua(obj),
        to_lua(&Value::String(health_lua().to_string_lossy().into_owned()))
    );
    let mut child = Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(program.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lua5.1 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap();
    (status.to_string(), message.to_string())
}

fn at(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(secs).unwrap())
}

/// A DeploymentJob at `generation` whose status is `status` (absent when `None`).
fn resource(generation: i64, status: Option<DeploymentJobStatus>) -> Value {
    let mut obj = json!({
        "apiVersion": "pm.qualys.io/v1alpha1",
        "kind": "DeploymentJob",
        "metadata": {"name": "windows-monthly", "namespace": "patching", "generation": generation},
        "spec": {"job": {"name": "Windows monthly", "platform": "Windows", "scheduleType": "On-demand"}}
    });
    if let Some(status) = status {
        obj["status"] = serde_json::to_value(status).unwrap();
    }
    obj
}

fn status(observed: i64, conditions: Vec<Condition>) -> DeploymentJobStatus {
    DeploymentJobStatus {
        observed_generation: Some(observed),
        job_id: Some("0e3e6f0c-4a40-4bd4-9f3a-bf7f46b30f59".into()),
        conditions,
        ..DeploymentJobStatus::default()
    }
}

/// What Argo CD must show for a resource whose latest reason is `reason` with `message`.
/// Exhaustive on purpose: a new reason does not compile until its health is decided here.
fn expected(reason: Reason, message: &str) -> (&'static str, String) {
    use Reason::*;
    let described = format!("{reason}: {message}");
    match reason {
        Created | Updated | Adopted | UpToDate => ("Healthy", described),
        Creating | Deleting | WaitingForLinkedJob | RateLimited | GatewayUnavailable => {
            ("Progressing", described)
        }
        DriftDetected => (
            "Degraded",
            format!("live job differs from spec; driftPolicy Report: {message}"),
        ),
        InvalidSpec | Unauthorized | Forbidden | NameConflict | JobClaimed | NotConverging
        | CannotDisable | JobMissing | DeletionBlocked | CrdMismatch => ("Degraded", described),
        Paused => (
            "Suspended",
            "Reconciling is paused by the pm.qualys.io/paused annotation".into(),
        ),
    }
}

#[test]
fn every_reason_maps_to_its_health() {
    if !lua_available() {
        return;
    }
    assert_eq!(Reason::ALL.len(), 21, "a new reason needs a sample here");
    // Each reason after a fresh resource (no earlier conditions) and after a healthy one (so
    // reasons that leave Ready unchanged keep Ready=True, as they do in a cluster).
    let healthy = conditions_for(&[], Reason::UpToDate, "in sync", Some(3), &at(1_000));
    for previous in [vec![], healthy] {
        for &reason in Reason::ALL {
            let message = format!("sample message for {reason} with \"quotes\", a \\ and ü");
            let conditions = conditions_for(&previous, reason, &message, Some(3), &at(2_000));
            let obj = resource(3, Some(status(3, conditions.clone())));
            let (want_status, want_message) = expected(reason, &message);
            assert_eq!(
                health(&obj),
                (want_status.to_string(), want_message),
                "{reason} after {} earlier conditions: {conditions:?}",
                previous.len()
            );
        }
    }
}

#[test]
fn no_status_and_stale_generation_are_progressing() {
    if !lua_available() {
        return;
    }
    let waiting = (
        "Progressing".to_string(),
        "Waiting for the operator to report status".to_string(),
    );
    assert_eq!(health(&resource(1, None)), waiting);
    assert_eq!(health(&resource(1, Some(status(1, vec![])))), waiting);

    // A Stalled status for generation 3 says nothing about generation 4.
    let stalled = conditions_for(&[], Reason::InvalidSpec, "bad", Some(3), &at(1_000));
    assert_eq!(
        health(&resource(4, Some(status(3, stalled.clone())))),
        (
            "Progressing".into(),
            "Waiting for the operator to observe generation 4".into()
        )
    );
    assert_eq!(health(&resource(3, Some(status(3, stalled)))).0, "Degraded");
    let ready = conditions_for(&[], Reason::UpToDate, "ok", Some(3), &at(1_000));
    let mut no_observed = status(3, ready.clone());
    no_observed.observed_generation = None;
    assert_eq!(health(&resource(3, Some(no_observed))).0, "Progressing");
    assert_eq!(health(&resource(3, Some(status(3, ready)))).0, "Healthy");
}

#[test]
fn paused_is_suspended_even_with_spec_changes_waiting() {
    if !lua_available() {
        return;
    }
    let healthy = conditions_for(&[], Reason::UpToDate, "ok", Some(3), &at(1_000));
    let paused = conditions_for(&healthy, Reason::Paused, "paused", Some(3), &at(2_000));
    assert_eq!(
        health(&resource(5, Some(status(3, paused)))),
        (
            "Suspended".into(),
            "Reconciling is paused by the pm.qualys.io/paused annotation; spec changes \
             (generation 5) wait until it is removed"
                .into()
        )
    );
}

#[test]
fn the_lua_literal_round_trips_awkward_strings() {
    if !lua_available() {
        return;
    }
    // A message holding Lua syntax, newlines and non-ASCII reaches the script unchanged.
    let message = "line1\nline2 ]] \" \\ ' -- ü ✓ \t end";
    let conditions = conditions_for(&[], Reason::JobMissing, message, Some(1), &at(1));
    let (s, m) = health(&resource(1, Some(status(1, conditions))));
    assert_eq!(s, "Degraded");
    assert_eq!(m, format!("JobMissing: {message}"));
}

/// argocd-cm.yaml is its header plus health.lua, indented under the key.
fn argocd_cm(lua: &str) -> String {
    let mut out = String::from(
        "# The DeploymentJob health check for Argo CD, as an argocd-cm entry. Merge it into your argocd-cm
# (docs/gitops.md), e.g.
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file docs/argocd/argocd-cm.yaml
# or, with the Argo CD Helm chart, put the key under configs.cm. The script is docs/argocd/health.lua
# verbatim; a test fails when the two differ (`QPM_REGENERATE=1 cargo test --test argocd_health`).
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
  resource.customizations.health.pm.qualys.io_DeploymentJob: |
",
    );
    for line in lua.lines() {
        if !line.is_empty() {
            out.push_str("    ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn argocd_cm_holds_the_script_verbatim() {
    let lua = std::fs::read_to_string(health_lua()).unwrap();
    let path = repo().join("docs/argocd/argocd-cm.yaml");
    let expected = argocd_cm(&lua);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != expected && std::env::var("QPM_REGENERATE").as_deref() == Ok("1") {
        std::fs::write(&path, &expected).unwrap();
    } else {
        assert!(
            on_disk == expected,
            "docs/argocd/argocd-cm.yaml differs from docs/argocd/health.lua; regenerate with \
             `QPM_REGENERATE=1 cargo test --test argocd_health`"
        );
    }
    // And a YAML parser reads the key back as the script, byte for byte.
    let docs = yaml_documents(&expected).unwrap();
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(docs[0].clone()).unwrap();
    assert_eq!(
        cm.data.unwrap()["resource.customizations.health.pm.qualys.io_DeploymentJob"],
        lua
    );
}
