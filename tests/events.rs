//! The controller's event recorder against the fake API server: what it creates, and how a
//! repeat becomes a series on the first event.

mod support;

use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::{Event as Recorded, EventType, Reporter};
use kube::{Api, Resource};
use qpm_operator::api::{self, DeploymentJob};
use qpm_operator::controller::events::Recorder;
use serde_json::json;
use support::{FakeApiServer, PatchType, Verb};

fn recorded(type_: EventType, reason: &str, note: &str) -> Recorded {
    Recorded {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    }
}

#[tokio::test]
async fn a_repeat_within_six_minutes_is_a_series_on_the_first_event() {
    let fake = FakeApiServer::start().await;
    fake.register_crd(&api::crd()).unwrap();
    fake.create_namespace("ev").unwrap();
    let jobs: Api<DeploymentJob> = Api::namespaced(fake.client(), "ev");
    let dj: DeploymentJob = serde_json::from_value(json!({
        "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
        "metadata": {"name": "noisy"},
        "spec": {"job": {"name": "noisy", "platform": "Linux", "scheduleType": "On-demand",
            "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]}}
    }))
    .unwrap();
    let dj = jobs.create(&PostParams::default(), &dj).await.unwrap();
    let recorder = Recorder::new(
        fake.client(),
        Reporter {
            controller: "qpm-operator".into(),
            instance: Some("test-0".into()),
        },
    );
    let reference = dj.object_ref(&());
    let created = recorded(EventType::Normal, "Created", "created Qualys job 42");
    recorder.publish(&created, &reference).await.unwrap();
    recorder.publish(&created, &reference).await.unwrap();
    recorder.publish(&created, &reference).await.unwrap();
    // Another reason is another event.
    let warning = recorded(EventType::Warning, "RateLimited", "rate limited");
    recorder.publish(&warning, &reference).await.unwrap();

    let events: Api<Event> = Api::namespaced(fake.client(), "ev");
    let mut listed = events.list(&ListParams::default()).await.unwrap().items;
    listed.sort_by(|a, b| a.reason.cmp(&b.reason));
    assert_eq!(listed.len(), 2);
    let first = &listed[0];
    assert_eq!(first.reason.as_deref(), Some("Created"));
    assert_eq!(first.note.as_deref(), Some("created Qualys job 42"));
    assert_eq!(first.type_.as_deref(), Some("Normal"));
    assert_eq!(first.action.as_deref(), Some("Reconcile"));
    assert_eq!(first.reporting_controller.as_deref(), Some("qpm-operator"));
    assert_eq!(first.reporting_instance.as_deref(), Some("test-0"));
    assert_eq!(first.regarding.as_ref(), Some(&reference));
    assert!(first.event_time.is_some());
    assert_eq!(first.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(listed[1].reason.as_deref(), Some("RateLimited"));
    assert_eq!(listed[1].type_.as_deref(), Some("Warning"));
    assert!(listed[1].series.is_none());

    // One create per distinct event; each repeat a merge patch; none refused.
    let log = fake.writes_to("events", None);
    assert!(log.iter().all(|r| (200..300).contains(&r.status)));
    let verbs: Vec<(Verb, Option<PatchType>)> =
        log.iter().map(|r| (r.verb, r.patch_type)).collect();
    let patch = (Verb::Patch, Some(PatchType::Merge));
    assert_eq!(
        verbs,
        [(Verb::Create, None), patch, patch, (Verb::Create, None)]
    );
}
