//! Render → normalise → diff over the seed's bodies: the API's own transformations must never
//! show up as changes.

use super::import::spec_from_live;
use super::*;
use crate::api::{ActionSpec, JobSpec};
use crate::qualys::JobBody;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn seed(name: &str) -> JobBody {
    JobBody::from_json(&crate::seed_fixtures::bytes(name)).unwrap()
}

fn render_plain(spec: &JobSpec, linked: Option<&str>) -> Rendered {
    let inputs = RenderInputs {
        linked_job_id: linked,
        ..Default::default()
    };
    render(spec, &inputs).unwrap()
}

fn paths(changes: &[FieldDiff]) -> Vec<&str> {
    changes.iter().map(|c| c.path.as_str()).collect()
}

const PAIRS: [(&str, &str); 3] = [
    (
        "01-windows-install.request.json",
        "01-windows-install.response.json",
    ),
    (
        "02-linux-rollback.request.json",
        "02-linux-rollback.response.json",
    ),
    (
        "03-chained-job.request.json",
        "03-chained-job.response.json",
    ),
];

#[test]
fn an_imported_job_has_no_changes_against_itself() {
    for (req, resp) in PAIRS {
        for name in [req, resp] {
            let live = seed(name);
            let (spec, notes) = spec_from_live(&live).unwrap();
            assert!(notes.is_empty(), "{name}: {notes:?}");
            let rendered = render_plain(&spec, None);
            let changes = diff(
                &normalise_desired(&rendered),
                &normalise_live(&live, &BTreeMap::new()),
            );
            assert!(changes.is_empty(), "{name}: {changes:?}");
        }
    }
}

/// The naive diff flaps: what was sent (the request) differs from what comes back (the response)
/// in numbers-as-strings, onComplete, chainedJobRule and scripts. The semantic diff must not.
#[test]
fn what_was_sent_matches_what_came_back() {
    for (req, resp) in PAIRS {
        let sent = seed(req);
        let (mut spec, _) = spec_from_live(&sent).unwrap();
        // Manage the scripts the request carried as content.
        for (list, spec_list) in [
            (
                sent.pre_deploy_actions.get(),
                spec.pre_deploy_actions.as_mut(),
            ),
            (
                sent.post_deploy_actions.get(),
                spec.post_deploy_actions.as_mut(),
            ),
        ] {
            if let (Some(list), Some(spec_list)) = (list, spec_list) {
                for (a, s) in list.iter().zip(spec_list.iter_mut()) {
                    s.script = a
                        .script
                        .get()
                        .filter(|v| !crate::qualys::is_script_path(v))
                        .cloned();
                }
            }
        }
        let rendered = render_plain(&spec, None);
        let came_back = seed(resp);
        // What the operator records after the write: the digests of the scripts it sent.
        let recorded = rendered.scripts.clone();
        let changes = diff(
            &normalise_desired(&rendered),
            &normalise_live(&came_back, &recorded),
        );
        assert!(changes.is_empty(), "{req} → {resp}: {changes:?}");
        // …and a naive comparison does differ, so the test can fail.
        let naive_sent = serde_json::to_value(&sent).unwrap();
        let naive_back = serde_json::to_value(&came_back).unwrap();
        assert_ne!(naive_sent, naive_back, "{req}");
    }
}

#[test]
fn a_one_field_change_is_exactly_that_field() {
    let live = seed("02-linux-rollback.response.json");
    let (mut spec, _) = spec_from_live(&live).unwrap();
    spec.approved_patches = Some(vec!["9285e676-6340-3ba7-b124-31d84542c7bf".into()]);
    let changes = diff(
        &normalise_desired(&render_plain(&spec, None)),
        &normalise_live(&live, &BTreeMap::new()),
    );
    assert_eq!(paths(&changes), vec!["approvedPatches"]);
    assert_eq!(changes[0].from, json!([]));
    assert_eq!(
        changes[0].to,
        json!(["9285e676-6340-3ba7-b124-31d84542c7bf"])
    );

    let (mut spec, _) = spec_from_live(&live).unwrap();
    if let Some(actions) = spec.pre_deploy_actions.as_mut()
        && let Some(p) = actions[0].params.as_mut()
    {
        p.timeout = Some(240);
    }
    let changes = diff(
        &normalise_desired(&render_plain(&spec, None)),
        &normalise_live(&live, &BTreeMap::new()),
    );
    assert_eq!(paths(&changes), vec!["preDeployActions[0].params.timeout"]);
}

#[test]
fn reordered_ids_are_not_a_change() {
    let live = seed("01-windows-install.response.json");
    let (mut spec, _) = spec_from_live(&live).unwrap();
    if let Some(p) = spec.approved_patches.as_mut() {
        p.reverse();
    }
    let changes = diff(
        &normalise_desired(&render_plain(&spec, None)),
        &normalise_live(&live, &BTreeMap::new()),
    );
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn a_changed_script_is_seen_through_its_digest_and_an_unchanged_one_is_not() {
    let live = seed("02-linux-rollback.response.json");
    let (mut spec, _) = spec_from_live(&live).unwrap();
    let pre = &mut spec.pre_deploy_actions.as_mut().unwrap()[0];
    pre.script = Some("bHM=".into()); // ls
    let rendered = render_plain(&spec, None);
    let recorded = rendered.scripts.clone();
    assert!(
        diff(
            &normalise_desired(&rendered),
            &normalise_live(&live, &recorded)
        )
        .is_empty()
    );

    let pre: &mut ActionSpec = &mut spec.pre_deploy_actions.as_mut().unwrap()[0];
    pre.script = Some("bHMgLWw=".into()); // ls -l
    let changed = render_plain(&spec, None);
    let changes = diff(
        &normalise_desired(&changed),
        &normalise_live(&live, &recorded),
    );
    assert_eq!(paths(&changes), vec!["preDeployActions[0].script"]);
    // Scripts appear as digests, never as content.
    assert!(changes[0].to.as_str().unwrap().starts_with("sha256:"));
    assert!(!changes[0].to_status().to.unwrap().contains("bHM"));
}

#[test]
fn the_update_body_is_the_live_job_with_managed_fields_laid_over() {
    let live = seed("02-linux-rollback.response.json");
    let (mut spec, _) = spec_from_live(&live).unwrap();
    spec.pre_deploy_actions.as_mut().unwrap()[0].script = Some("bHM=".into());
    spec.post_deploy_actions.as_mut().unwrap()[0].script = Some("bHMgLWw=".into());
    spec.description = Some("changed".into());
    let rendered = render_plain(&spec, None);
    let mut recorded = BTreeMap::new();
    recorded.insert(
        "pre[0].script".to_string(),
        rendered.scripts["pre[0].script"].clone(),
    );
    recorded.insert("post[0].script".to_string(), "sha256:old".to_string());
    let body = serde_json::to_value(update_body(&live, &rendered, &recorded)).unwrap();
    let live_v = serde_json::to_value(&live).unwrap();
    assert_eq!(body["description"], "changed");
    // Unchanged script: its storage path goes back; changed: the new content.
    assert_eq!(
        body["preDeployActions"][0]["script"],
        live_v["preDeployActions"][0]["script"]
    );
    assert_eq!(body["postDeployActions"][0]["script"], "bHMgLWw=");
    // Live action ids and server fields are sent back; status is the live one.
    assert_eq!(
        body["preDeployActions"][0]["actionId"],
        live_v["preDeployActions"][0]["actionId"]
    );
    assert_eq!(body["customerId"], live_v["customerId"]);
    assert_eq!(body["status"], "Disabled");
    assert_eq!(body["createdBy"], live_v["createdBy"]);
}

#[test]
fn the_chained_rule_goes_back_at_the_top_level() {
    let live = seed("03-chained-job.response.json");
    let (spec, _) = spec_from_live(&live).unwrap();
    let rendered = render_plain(&spec, None);
    let body = serde_json::to_value(update_body(&live, &rendered, &BTreeMap::new())).unwrap();
    assert!(body.get("linkedToJob").is_none());
    assert_eq!(
        body["chainedJobRule"][0]["actionIds"],
        json!(["07eed865-d8e2-4cba-9c2a-27eeeef0598a"])
    );
    assert_eq!(body["chainedJobRule"][0]["threshold"], json!(100));
}

#[test]
fn action_refs_resolve_against_the_parent() {
    let live = seed("03-chained-job.response.json");
    let (mut spec, _) = spec_from_live(&live).unwrap();
    spec.linked_job_id = None;
    spec.linked_job_ref = Some(crate::api::DeploymentJobRef {
        name: "parent".into(),
    });
    let rule = &mut spec.chained_job_rule.as_mut().unwrap()[0];
    rule.action_ids = None;
    rule.action_refs = Some(vec![crate::api::ActionRef {
        action_item: "post".into(),
    }]);
    let parent = [(
        "post".to_string(),
        "07eed865-d8e2-4cba-9c2a-27eeeef0598a".to_string(),
    )];
    let inputs = RenderInputs {
        linked_job_id: Some("5b0fd130-52c8-473c-96b1-8f10ea7d4c13"),
        parent_post_actions: &parent,
        ..Default::default()
    };
    let rendered = render(&spec, &inputs).unwrap();
    assert!(
        diff(
            &normalise_desired(&rendered),
            &normalise_live(&live, &BTreeMap::new())
        )
        .is_empty()
    );

    let waiting = render(&spec, &RenderInputs::default()).unwrap_err();
    assert!(
        matches!(waiting, RenderError::WaitingForLinkedJob { .. }),
        "{waiting}"
    );
    let inputs = RenderInputs {
        linked_job_id: Some("5b0fd130-52c8-473c-96b1-8f10ea7d4c13"),
        ..Default::default()
    };
    let unknown = render(&spec, &inputs).unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "spec.job.chainedJobRule[0].actionRefs[0]: the parent job has no post-deploy action with actionItem \"post\" (it has: none)"
    );
}

#[test]
fn bad_scripts_and_times_are_render_errors() {
    let live = seed("02-linux-rollback.response.json");
    let (mut spec, _) = spec_from_live(&live).unwrap();
    spec.pre_deploy_actions.as_mut().unwrap()[0].script = Some("not base64!".into());
    let e = render(&spec, &RenderInputs::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.job.preDeployActions[0].script: not valid base64 (use scriptFrom for plain text)"
    );
    let (mut spec, _) = spec_from_live(&live).unwrap();
    spec.start_date_time = Some("2025-2-30 09:57:18 AM".into());
    assert!(matches!(
        render(&spec, &RenderInputs::default()),
        Err(RenderError::InvalidStartDateTime { .. })
    ));
}

#[test]
fn unmanaged_fields_are_never_compared() {
    let live = seed("01-windows-install.response.json");
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "Public API on demand Window job with specific patches updated",
        "platform": "Windows",
        "scheduleType": "On-demand"
    }))
    .unwrap();
    let desired: Value = normalise_desired(&render_plain(&spec, None));
    assert_eq!(desired.as_object().unwrap().len(), 3);
    assert!(diff(&desired, &normalise_live(&live, &BTreeMap::new())).is_empty());
}
