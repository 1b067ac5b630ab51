//! Proves the fake API server behaves like a real one for what kube-rs does: plain `Api`
//! calls and their errors, pagination, watches, the runtime's `watcher`, `Controller`,
//! `finalizer` and `events::Recorder`, server-side apply, the status subresource, and two
//! `kube_lease_manager` replicas contending for one Lease.
//!
//! Tests that only need portable behaviour run through `TestCluster`, so
//! `QPM_TEST_KUBECONFIG=~/.kube/config cargo test --test fake_apiserver` runs them against a
//! real cluster too; tests of the fake's own hooks (request log, faults, compaction) are
//! skipped there.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{GroupVersionKind, Status};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use support::{FakeApiServer, FakeOptions, PatchType, TestCluster, Verb, wait_for};

/// A small namespaced resource with a status subresource, standing in for any CRD.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fake.qpm.test",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct WidgetSpec {
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

const WAIT: Duration = Duration::from_secs(10);

async fn cluster() -> (TestCluster, Api<Widget>) {
    let cluster = TestCluster::start().await;
    cluster.register_crd(Widget::crd()).await;
    let api = Api::namespaced(cluster.client(), cluster.namespace());
    (cluster, api)
}

fn widget(name: &str, size: i64) -> Widget {
    Widget::new(name, WidgetSpec { size, color: None })
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(obj: &impl Resource) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .expect("a stored object has a resourceVersion")
        .parse()
        .expect("resourceVersions are integers on this server")
}

#[tokio::test]
async fn crud_answers_like_the_api_server() {
    let (cluster, api) = cluster().await;
    let created = api
        .create(&PostParams::default(), &widget("w1", 1))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(
        created.metadata.namespace.as_deref(),
        Some(cluster.namespace())
    );
    let got = api.get("w1").await.unwrap();
    assert_eq!(got, created);
    let meta = api.get_metadata("w1").await.unwrap();
    assert_eq!(meta.metadata, created.metadata);
    let metas = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(
        metas.items.iter().map(|m| m.name_any()).collect::<Vec<_>>(),
        ["w1"]
    );
    // All namespaces: the same object, seen through the cluster-wide collection.
    let everywhere: Api<Widget> = Api::all(cluster.client());
    let mine: Vec<String> = everywhere
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|w| w.namespace().as_deref() == Some(cluster.namespace()))
        .map(|w| w.name_any())
        .collect();
    assert_eq!(mine, ["w1"]);

    let dup = api_error(api.create(&PostParams::default(), &widget("w1", 2)).await);
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(dup.message, "widgets.fake.qpm.test \"w1\" already exists");

    let missing = api_error(api.get("missing").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        missing.message,
        "widgets.fake.qpm.test \"missing\" not found"
    );

    let mut generated = widget("", 1);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let name = generated.name_any();
    assert!(
        name.starts_with("gen-") && name.len() == "gen-".len() + 5,
        "{name}"
    );

    // PUT with the current resourceVersion succeeds; with a stale one it is a 409 Conflict.
    let mut update = got.clone();
    update.spec.size = 2;
    let updated = api
        .replace("w1", &PostParams::default(), &update)
        .await
        .unwrap();
    assert!(rv(&updated) > rv(&created));
    assert_eq!(updated.metadata.generation, Some(2));
    let stale = api_error(api.replace("w1", &PostParams::default(), &update).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    assert!(
        stale.message.contains("the object has been modified"),
        "{}",
        stale.message
    );

    let bad = api_error(
        api.create(&PostParams::default(), &widget("Not_A_Name", 1))
            .await,
    );
    assert_eq!((bad.code, bad.reason.as_str()), (422, "Invalid"));

    let elsewhere: Api<Widget> = Api::namespaced(cluster.client(), "qpm-no-such-namespace");
    let no_ns = api_error(
        elsewhere
            .create(&PostParams::default(), &widget("w2", 1))
            .await,
    );
    assert_eq!((no_ns.code, no_ns.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        no_ns.message,
        "namespaces \"qpm-no-such-namespace\" not found"
    );

    // No finalizers: gone at once.
    let deleted = api.delete("w1", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left());
    assert_eq!(api_error(api.get("w1").await).code, 404);
    assert_eq!(
        api_error(api.delete("w1", &DeleteParams::default()).await).code,
        404
    );

    // Preconditions on delete.
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    let pre = api_error(api.delete(&name, &dp).await);
    assert_eq!((pre.code, pre.reason.as_str()), (409, "Conflict"));

    // Secrets: stringData becomes base64 data, as the real server stores it.
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), cluster.namespace());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("creds".into()),
            ..Default::default()
        },
        string_data: Some([("password".to_string(), "hunter2".to_string())].into()),
        ..Default::default()
    };
    let stored = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert!(stored.string_data.is_none());
    let data = stored.data.unwrap();
    assert_eq!(data["password"].0, b"hunter2".to_vec());
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
}

#[tokio::test]
async fn list_pages_are_a_consistent_snapshot() {
    let cluster = TestCluster::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), cluster.namespace());
    for i in 0..5 {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(
            "parity".to_string(),
            if i % 2 == 0 { "even" } else { "odd" }.to_string(),
        );
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("cm-{i}")),
                labels: Some(labels),
                ..Default::default()
            },
            data: Some([("i".to_string(), i.to_string())].into()),
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let page1 = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |l: &kube::core::ObjectList<ConfigMap>| {
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(names(&page1), ["cm-0", "cm-1"]);
    let token = page1.metadata.continue_.clone().expect("a continue token");
    assert_eq!(page1.metadata.remaining_item_count, Some(3));

    // A change between pages does not show in the rest of this list.
    cms.delete("cm-3", &DeleteParams::default()).await.unwrap();
    let page2 = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&page2), ["cm-2", "cm-3"]);
    assert_eq!(
        page2.metadata.resource_version,
        page1.metadata.resource_version
    );
    let token = page2.metadata.continue_.clone().expect("a continue token");
    let page3 = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&page3), ["cm-4"]);
    assert!(page3.metadata.continue_.as_deref().unwrap_or("").is_empty());

    let odd = cms
        .list(&ListParams::default().labels("parity=odd"))
        .await
        .unwrap();
    assert_eq!(names(&odd), ["cm-1"]);
    let not_odd = cms
        .list(&ListParams::default().labels("parity!=odd"))
        .await
        .unwrap();
    assert_eq!(names(&not_odd), ["cm-0", "cm-2", "cm-4"]);
    let set = cms
        .list(&ListParams::default().labels("parity in (odd,even),!missing"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 4);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-2"))
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["cm-2"]);
    let bad = api_error(cms.list(&ListParams::default().fields("data.i=2")).await);
    assert_eq!(bad.code, 400);

    if let Some(fake) = cluster.fake() {
        // Compaction expires continue tokens.
        let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
        fake.compact();
        let token = page.metadata.continue_.unwrap();
        let expired = api_error(
            cms.list(&ListParams::default().limit(1).continue_token(&token))
                .await,
        );
        assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
    }
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_honours_selectors() {
    let (cluster, api) = cluster().await;
    let a = api
        .create(&PostParams::default(), &widget("a", 1))
        .await
        .unwrap();
    let from = a.resource_version().unwrap();
    let mut a_labelled = widget("a", 2);
    a_labelled.metadata.labels = Some([("team".to_string(), "blue".to_string())].into());
    api.patch("a", &PatchParams::default(), &Patch::Merge(&a_labelled))
        .await
        .unwrap();
    api.create(&PostParams::default(), &widget("b", 1))
        .await
        .unwrap();

    let wp = WatchParams::default().timeout(30);
    let mut stream = api.watch(&wp, &from).await.unwrap().boxed();
    let mut next = async || loop {
        match stream.try_next().await.unwrap().expect("the watch is open") {
            WatchEvent::Bookmark(_) => continue,
            other => return other,
        }
    };
    match next().await {
        WatchEvent::Modified(w) => assert_eq!((w.name_any().as_str(), w.spec.size), ("a", 2)),
        other => panic!("expected MODIFIED a, got {other:?}"),
    }
    match next().await {
        WatchEvent::Added(w) => assert_eq!(w.name_any(), "b"),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    api.delete("b", &DeleteParams::default()).await.unwrap();
    match next().await {
        WatchEvent::Deleted(w) => assert_eq!(w.name_any(), "b"),
        other => panic!("expected DELETED b, got {other:?}"),
    }

    // A labelled watch sees an object leave its selection as DELETED.
    let now = api.get("a").await.unwrap().resource_version().unwrap();
    let wp = WatchParams::default().labels("team=blue").timeout(30);
    let mut labelled = api.watch(&wp, &now).await.unwrap().boxed();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": null}}})),
    )
    .await
    .unwrap();
    loop {
        match labelled
            .try_next()
            .await
            .unwrap()
            .expect("the watch is open")
        {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Deleted(w) => {
                assert_eq!(w.name_any(), "a");
                break;
            }
            other => panic!("expected DELETED a, got {other:?}"),
        }
    }

    // The fake ends a watch at its timeout with a bookmark (a real server's bookmark timing is
    // its own).
    if !cluster.is_fake() {
        return;
    }
    let wp = WatchParams::default().timeout(1);
    let events: Vec<_> = api
        .watch(&wp, &now)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match events.last() {
        Some(WatchEvent::Bookmark(b)) => {
            assert!(b.metadata.resource_version.parse::<u64>().unwrap() > 0)
        }
        other => panic!("expected a closing bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_gets_410_gone() {
    let fake = FakeApiServer::start().await;
    fake.register_crd(&Widget::crd()).unwrap();
    let api: Api<Widget> = Api::namespaced(fake.client(), "default");
    let old = api
        .create(&PostParams::default(), &widget("a", 1))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    // Compaction keeps the latest resourceVersion resumable, not the ones before it.
    fake.compact();
    let mut stream = api
        .watch(
            &WatchParams::default().timeout(5),
            &old.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected an ERROR 410 event, got {other:?}"),
    }
    assert!(
        stream.try_next().await.unwrap().is_none(),
        "the watch ends after the error"
    );

    // A bounded history forgets old events by itself.
    let small = FakeApiServer::start_with(FakeOptions {
        history_limit: 2,
        ..FakeOptions::default()
    })
    .await;
    small.register_crd(&Widget::crd()).unwrap();
    let api: Api<Widget> = Api::namespaced(small.client(), "default");
    let first = api
        .create(&PostParams::default(), &widget("a", 1))
        .await
        .unwrap();
    for size in 2..5 {
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": size}})),
        )
        .await
        .unwrap();
    }
    let mut stream = api
        .watch(
            &WatchParams::default().timeout(5),
            &first.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected an ERROR 410 event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_come_periodically_and_watches_span_namespaces() {
    let fake = FakeApiServer::start_with(FakeOptions {
        bookmark_interval: Duration::from_millis(50),
        ..FakeOptions::default()
    })
    .await;
    fake.create_namespace("other").unwrap();
    let client = fake.client();
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    let start = fake.resource_version().to_string();
    let mut stream = everywhere
        .watch(&WatchParams::default().timeout(30), &start)
        .await
        .unwrap()
        .boxed();
    let cm = |name: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    for ns in ["default", "other"] {
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &cm("c"))
            .await
            .unwrap();
    }
    let mut added = Vec::new();
    while added.len() < 2 {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(c) => added.push(c.namespace().unwrap()),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, ["default", "other"]);

    // A write to another resource moves the latest resourceVersion; the next bookmark on this
    // (idle) watch carries it, so a resumed watch need not replay anything.
    Api::<Secret>::namespaced(client, "default")
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("s".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let latest = fake.resource_version().to_string();
    loop {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Bookmark(b) if b.metadata.resource_version == latest => break,
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// What the test saw from a raw `watcher` stream, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String, i64),
    Delete(String),
    Gone,
}

#[tokio::test]
async fn watcher_sees_changes_and_relists_after_410() {
    let (cluster, api) = cluster().await;
    let Some(fake) = cluster.fake() else {
        eprintln!("skipped: forcing a 410 needs the fake's compact()");
        return;
    };
    api.create(&PostParams::default(), &widget("before", 1))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let task = tokio::spawn(
        watcher(api.clone(), watcher::Config::default()).for_each(move |ev| {
            let s = match ev {
                Ok(watcher::Event::Init) => Seen::Init,
                Ok(watcher::Event::InitApply(w)) => Seen::InitApply(w.name_any()),
                Ok(watcher::Event::InitDone) => Seen::InitDone,
                Ok(watcher::Event::Apply(w)) => Seen::Apply(w.name_any(), w.spec.size),
                Ok(watcher::Event::Delete(w)) => Seen::Delete(w.name_any()),
                Err(watcher::Error::WatchError(s)) if s.code == 410 => Seen::Gone,
                Err(e) => panic!("unexpected watcher error: {e}"),
            };
            sink.lock().unwrap().push(s);
            std::future::ready(())
        }),
    );
    let seen_len = |n: usize| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move { (seen.lock().unwrap().len() >= n).then_some(()) }
        }
    };
    wait_for(WAIT, "the initial list", seen_len(3)).await;
    api.create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    wait_for(WAIT, "create, modify and delete", seen_len(6)).await;
    let lists_before = fake.count(|r| r.verb == Verb::List && r.resource == "widgets");

    fake.compact();
    wait_for(WAIT, "the relist after 410", seen_len(10)).await;
    api.create(&PostParams::default(), &widget("after", 3))
        .await
        .unwrap();
    wait_for(WAIT, "an event after the relist", seen_len(11)).await;
    task.abort();

    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Seen::Init,
            Seen::InitApply("before".into()),
            Seen::InitDone,
            Seen::Apply("w".into(), 1),
            Seen::Apply("w".into(), 2),
            Seen::Delete("w".into()),
            Seen::Gone,
            Seen::Init,
            Seen::InitApply("before".into()),
            Seen::InitDone,
            Seen::Apply("after".into(), 3),
        ]
    );
    assert_eq!(
        fake.count(|r| r.verb == Verb::List && r.resource == "widgets"),
        lists_before + 1,
        "exactly one relist"
    );
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let (cluster, api) = cluster().await;
    if !cluster.is_fake() {
        eprintln!(
            "skipped: streaming lists need the WatchList feature, which clusters may not enable"
        );
        return;
    }
    api.create(&PostParams::default(), &widget("one", 1))
        .await
        .unwrap();
    api.create(&PostParams::default(), &widget("two", 2))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match stream.try_next().await.unwrap().unwrap() {
            watcher::Event::Init => seen.push("init".to_string()),
            watcher::Event::InitApply(w) => seen.push(w.name_any()),
            watcher::Event::InitDone => seen.push("done".to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["init", "one", "two", "done"]);
    api.create(&PostParams::default(), &widget("three", 3))
        .await
        .unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        watcher::Event::Apply(w) => assert_eq!(w.name_any(), "three"),
        other => panic!("unexpected {other:?}"),
    }
}

struct Counters {
    api: Api<Widget>,
    reconciles: Mutex<HashMap<String, usize>>,
}

async fn reconcile_and_write_status(
    w: Arc<Widget>,
    ctx: Arc<Counters>,
) -> Result<Action, kube::Error> {
    *ctx.reconciles
        .lock()
        .unwrap()
        .entry(w.name_any())
        .or_default() += 1;
    let status = json!({"status": {"observedGeneration": w.metadata.generation, "phase": "Ready"}});
    ctx.api
        .patch_status(
            &w.name_any(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await?;
    Ok(Action::await_change())
}

fn retry_soon<E>(_: Arc<Widget>, _: &E, _: Arc<Counters>) -> Action {
    Action::requeue(Duration::from_millis(50))
}

#[tokio::test]
async fn controller_with_generation_predicate_ignores_its_status_writes() {
    let (cluster, api) = cluster().await;
    let passed = Arc::new(Mutex::new(Vec::<String>::new()));
    let ctx = Arc::new(Counters {
        api: api.clone(),
        reconciles: Mutex::default(),
    });
    let (reader, writer) = reflector::store();
    let sink = passed.clone();
    let triggers = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default())
        .inspect_ok(move |w: &Widget| sink.lock().unwrap().push(w.name_any()));
    let controller = tokio::spawn(
        Controller::for_stream(triggers, reader)
            .run(reconcile_and_write_status, retry_soon, ctx.clone())
            .for_each(|_| std::future::ready(())),
    );
    let observed = |name: &'static str, generation: i64| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move {
                let w = api.get(name).await.ok()?;
                (w.status?.observed_generation == Some(generation)).then_some(())
            }
        }
    };
    // Everything the watch delivered before `name` has passed or been filtered by then.
    let fence = |name: &'static str| {
        let api = api.clone();
        let passed = passed.clone();
        async move {
            api.create(&PostParams::default(), &widget(name, 0))
                .await
                .unwrap();
            wait_for(WAIT, name, || {
                let passed = passed.clone();
                async move {
                    passed
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|n| n == name)
                        .then_some(())
                }
            })
            .await;
            wait_for(WAIT, "the fence's status", observed(name, 1)).await;
        }
    };
    let passes = |name: &str| passed.lock().unwrap().iter().filter(|n| *n == name).count();

    api.create(&PostParams::default(), &widget("alpha", 1))
        .await
        .unwrap();
    wait_for(
        WAIT,
        "alpha reconciled at generation 1",
        observed("alpha", 1),
    )
    .await;
    // A label change is metadata: no new generation, no reconcile either.
    api.patch(
        "alpha",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    fence("fence-1").await;
    assert_eq!(
        passes("alpha"),
        1,
        "the status write and the label change were filtered"
    );
    assert_eq!(ctx.reconciles.lock().unwrap()["alpha"], 1);

    api.patch(
        "alpha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    wait_for(
        WAIT,
        "alpha reconciled at generation 2",
        observed("alpha", 2),
    )
    .await;
    fence("fence-2").await;
    assert_eq!(passes("alpha"), 2);
    assert_eq!(ctx.reconciles.lock().unwrap()["alpha"], 2);
    controller.abort();

    if let Some(fake) = cluster.fake() {
        // alpha twice, each fence once, and nothing else.
        assert_eq!(fake.writes_to("widgets", Some("status")).len(), 4);
    }
}

const CLEANUP: &str = "fake.qpm.test/cleanup";

struct Cleanups {
    api: Api<Widget>,
    cleaned: Mutex<Vec<String>>,
}

async fn reconcile_with_finalizer(
    w: Arc<Widget>,
    ctx: Arc<Cleanups>,
) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
    finalizer(&ctx.api, CLEANUP, w, |event| async {
        if let Finalizer::Cleanup(w) = event {
            ctx.cleaned.lock().unwrap().push(w.name_any());
        }
        Ok::<_, kube::Error>(Action::await_change())
    })
    .await
}

#[tokio::test]
async fn finalizer_helper_adds_and_removes_its_finalizer_around_a_delete() {
    let (cluster, api) = cluster().await;
    let ctx = Arc::new(Cleanups {
        api: api.clone(),
        cleaned: Mutex::default(),
    });
    let controller = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(
                reconcile_with_finalizer,
                |_, _, _| Action::requeue(Duration::from_millis(50)),
                ctx.clone(),
            )
            .for_each(|_| std::future::ready(())),
    );
    // Another finalizer is already there: the helper must append after it (its `test` op
    // compares the whole list) and remove its own by index.
    let mut w = widget("doomed", 1);
    w.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();
    let with_both = wait_for(WAIT, "the finalizer to be added", || {
        let api = api.clone();
        async move {
            let w = api.get("doomed").await.ok()?;
            (w.finalizers() == ["example.com/keep", CLEANUP]).then_some(w)
        }
    })
    .await;

    let deleted = api
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let marked = deleted
        .left()
        .expect("with finalizers the object is returned, not a Status");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata.generation,
        Some(2),
        "marking for deletion bumps generation"
    );
    let after_cleanup = wait_for(WAIT, "the finalizer to be removed", || {
        let api = api.clone();
        async move {
            let w = api.get("doomed").await.ok()?;
            (w.finalizers() == ["example.com/keep"]).then_some(w)
        }
    })
    .await;
    assert!(after_cleanup.metadata.deletion_timestamp.is_some());
    assert_eq!(*ctx.cleaned.lock().unwrap(), ["doomed"]);
    assert!(rv(&after_cleanup) > rv(&with_both));

    // No new finalizers while deleting.
    let refused = api_error(
        api.patch(
            "doomed",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/keep", "example.com/late"]}}),
            ),
        )
        .await,
    );
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));
    // The last finalizer goes: so does the object.
    api.patch(
        "doomed",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(api.get("doomed").await).code, 404);
    controller.abort();

    if let Some(fake) = cluster.fake() {
        let json_patches: Vec<u16> = fake
            .writes_to("widgets", None)
            .iter()
            .filter(|r| r.patch_type == Some(PatchType::Json))
            .map(|r| r.status)
            .collect();
        assert_eq!(
            json_patches,
            [200, 200],
            "one JSON patch adds the finalizer, one removes it"
        );
    }
}

#[tokio::test]
async fn merge_and_json_patches_with_test_ops() {
    let (_cluster, api) = cluster().await;
    let start = api
        .create(&PostParams::default(), &widget("p", 1))
        .await
        .unwrap();
    let red = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "red"}})),
        )
        .await
        .unwrap();
    assert_eq!(red.spec.color.as_deref(), Some("red"));
    let cleared = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": null}})),
        )
        .await
        .unwrap();
    assert_eq!(cleared.spec.color, None);

    let ops = |v: serde_json::Value| -> json_patch::Patch { serde_json::from_value(v).unwrap() };
    let five = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::<()>::Json(ops(json!([
                {"op": "test", "path": "/spec/size", "value": 1},
                {"op": "replace", "path": "/spec/size", "value": 5},
            ]))),
        )
        .await
        .unwrap();
    assert_eq!(five.spec.size, 5);

    let failed = api_error(
        api.patch(
            "p",
            &PatchParams::default(),
            &Patch::<()>::Json(ops(json!([
                {"op": "test", "path": "/spec/size", "value": 1},
                {"op": "replace", "path": "/spec/size", "value": 6},
            ]))),
        )
        .await,
    );
    assert_eq!((failed.code, failed.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        api.get("p").await.unwrap().resource_version(),
        five.resource_version(),
        "nothing written"
    );

    // A `test` of null on a missing path succeeds, as kube's finalizer helper expects.
    let with_finalizer = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::<()>::Json(ops(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/f"]},
            ]))),
        )
        .await
        .unwrap();
    assert_eq!(with_finalizer.finalizers(), ["example.com/f"]);
    let bad_path = api_error(
        api.patch(
            "p",
            &PatchParams::default(),
            &Patch::<()>::Json(ops(json!([{"op": "remove", "path": "/spec/nothing"}]))),
        )
        .await,
    );
    assert_eq!(bad_path.code, 422);

    // A resourceVersion in a merge patch is a precondition.
    let stale = api_error(
        api.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": start.resource_version()}, "spec": {"size": 9}})),
        )
        .await,
    );
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

    // A patch that changes nothing writes nothing.
    let current = api.get("p").await.unwrap();
    let same = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(same.resource_version(), current.resource_version());
}

fn apply_body(spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "fake.qpm.test/v1", "kind": "Widget", "metadata": {"name": "s"}, "spec": spec})
}

/// The managers whose FieldsV1 contain `pointer` (e.g. `/f:spec/f:size`).
fn owners_of(w: &Widget, pointer: &str) -> Vec<String> {
    w.managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer(pointer).is_some())
        })
        .map(|m| m.manager.clone().unwrap_or_default())
        .collect()
}

fn managers_of(w: &Widget) -> Vec<(String, String)> {
    w.managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn server_side_apply_tracks_field_ownership() {
    let (cluster, api) = cluster().await;
    let a = PatchParams::apply("manager-a");
    let created = api
        .patch(
            "s",
            &a,
            &Patch::Apply(apply_body(json!({"size": 1, "color": "red"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        (created.spec.size, created.spec.color.as_deref()),
        (1, Some("red"))
    );
    assert_eq!(
        managers_of(&created),
        [("manager-a".to_string(), "Apply".to_string())]
    );
    if cluster.is_fake() {
        // The fake records leaves only (a real server also marks some parent nodes with ".").
        let fields = created.managed_fields()[0].fields_v1.clone().unwrap().0;
        assert_eq!(fields, json!({"f:spec": {"f:size": {}, "f:color": {}}}));
    }

    // Applying the same again is a no-op: no new resourceVersion.
    let again = api
        .patch(
            "s",
            &a,
            &Patch::Apply(apply_body(json!({"size": 1, "color": "red"}))),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), created.resource_version());

    // Re-applying without a field removes it.
    let without_color = api
        .patch("s", &a, &Patch::Apply(apply_body(json!({"size": 1}))))
        .await
        .unwrap();
    assert_eq!(without_color.spec.color, None);

    // Another manager changing a field manager-a owns: 409 naming manager-a and the field.
    let b = PatchParams::apply("manager-b");
    let conflict = api_error(
        api.patch("s", &b, &Patch::Apply(apply_body(json!({"size": 2}))))
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("conflict with \"manager-a\"")
            && conflict.message.contains(".spec.size"),
        "{}",
        conflict.message
    );
    // The same value is shared ownership, not a conflict.
    let shared = api
        .patch("s", &b, &Patch::Apply(apply_body(json!({"size": 1}))))
        .await
        .unwrap();
    assert_eq!(
        owners_of(&shared, "/f:spec/f:size"),
        ["manager-a", "manager-b"]
    );

    // Forced, ownership moves to manager-b: manager-a dropping size no longer removes it.
    let forced = api
        .patch(
            "s",
            &b.clone().force(),
            &Patch::Apply(apply_body(json!({"size": 3}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.size, 3);
    assert_eq!(owners_of(&forced, "/f:spec/f:size"), ["manager-b"]);
    let a_gave_up = api
        .patch("s", &a, &Patch::Apply(apply_body(json!({"color": "blue"}))))
        .await
        .unwrap();
    assert_eq!(
        (a_gave_up.spec.size, a_gave_up.spec.color.as_deref()),
        (3, Some("blue"))
    );

    // An update (merge patch) takes ownership of what it changes.
    let merged = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "green"}})),
        )
        .await
        .unwrap();
    assert!(managers_of(&merged).iter().any(|(_, op)| op == "Update"));
    let conflict = api_error(
        api.patch("s", &a, &Patch::Apply(apply_body(json!({"color": "blue"}))))
            .await,
    );
    assert_eq!(conflict.code, 409);

    // Status by apply: the whole status each time; what is left out is removed.
    let status = |s: serde_json::Value| json!({"apiVersion": "fake.qpm.test/v1", "kind": "Widget", "metadata": {"name": "s"}, "status": s});
    let op = PatchParams::apply("operator").force();
    let st = api
        .patch_status(
            "s",
            &op,
            &Patch::Apply(status(json!({"observedGeneration": 1, "phase": "Ready"}))),
        )
        .await
        .unwrap();
    assert_eq!(st.status.as_ref().unwrap().observed_generation, Some(1));
    let st = api
        .patch_status(
            "s",
            &op,
            &Patch::Apply(status(json!({"phase": "Degraded"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        st.status,
        Some(WidgetStatus {
            observed_generation: None,
            phase: Some("Degraded".into())
        })
    );
    let entry = st
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("operator"))
        .unwrap()
        .clone();
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    assert_eq!(entry.fields_type.as_deref(), Some("FieldsV1"));

    // kubectl sends apply patches as YAML.
    let yaml =
        "apiVersion: fake.qpm.test/v1\nkind: Widget\nmetadata:\n  name: s\nspec:\n  color: blue\n";
    let request = http::Request::patch(format!(
        "/apis/fake.qpm.test/v1/namespaces/{}/widgets/s?fieldManager=kubectl&force=true",
        st.namespace().unwrap()
    ))
    .header("content-type", "application/apply-patch+yaml")
    .body(yaml.as_bytes().to_vec())
    .unwrap();
    let from_yaml: Widget = cluster.client().request(request).await.unwrap();
    assert_eq!(from_yaml.spec.color.as_deref(), Some("blue"));

    // Apply needs a field manager.
    let nameless = PatchParams::default();
    assert_eq!(
        api_error(
            api.patch(
                "s",
                &nameless,
                &Patch::Apply(apply_body(json!({"size": 1})))
            )
            .await
        )
        .code,
        422
    );
}

#[tokio::test]
async fn status_subresource_isolation_and_generation() {
    let (_cluster, api) = cluster().await;
    let created = api
        .create(&PostParams::default(), &widget("g", 1))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // The main resource ignores status.
    let main = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "Hacked"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            main.spec.size,
            main.status.clone(),
            main.metadata.generation
        ),
        (2, None, Some(2))
    );

    // /status ignores everything else, and does not bump generation.
    let status = api
        .patch_status(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 99}, "metadata": {"labels": {"sneaky": "yes"}}, "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.spec.size, 2);
    assert_eq!(status.labels().get("sneaky"), None);
    assert_eq!(
        status.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Ready")
    );
    assert_eq!(status.metadata.generation, Some(2));
    assert!(rv(&status) > rv(&main));

    // Metadata changes do not bump generation; spec changes do.
    let labelled = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));
    let mut replaced = labelled.clone();
    replaced.status = None;
    replaced.spec.size = 3;
    let replaced = api
        .replace("g", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(3));
    assert_eq!(
        replaced.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Ready"),
        "PUT kept status"
    );

    // PUT /status.
    let mut st = replaced.clone();
    st.status = Some(WidgetStatus {
        observed_generation: Some(3),
        phase: Some("Done".into()),
    });
    st.spec.size = 100;
    let st = api
        .replace_status("g", &PostParams::default(), &st)
        .await
        .unwrap();
    assert_eq!((st.spec.size, st.metadata.generation), (3, Some(3)));
    assert_eq!(st.status.unwrap().phase.as_deref(), Some("Done"));
}

#[tokio::test]
async fn two_lease_managers_elect_exactly_one_leader_and_hand_over() {
    let cluster = TestCluster::start().await;
    let manager = |identity: &str| {
        LeaseManagerBuilder::new(cluster.new_client(), "qpm-operator-leader")
            .with_namespace(cluster.namespace())
            .with_parameters(LeaseParams::new(identity, 2, 1))
            .build()
    };
    let a = manager("replica-a").await.unwrap();
    let b = manager("replica-b").await.unwrap();
    let (rx_a, task_a) = a.watch().await;
    let (rx_b, task_b) = b.watch().await;
    let leader = wait_for(WAIT, "a leader", || {
        let (a, b) = (*rx_a.borrow(), *rx_b.borrow());
        async move {
            match (a, b) {
                (true, false) => Some("replica-a"),
                (false, true) => Some("replica-b"),
                (false, false) => None,
                (true, true) => panic!("two leaders"),
            }
        }
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), cluster.namespace());
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get("qpm-operator-leader").await.unwrap()).as_deref(),
        Some(leader)
    );

    // What the other replica would send to grab the lease conflicts with the holder's fields.
    let (follower, rx_leader, task_leader, rx_follower, task_follower) = if leader == "replica-a" {
        ("replica-b", rx_a, task_a, rx_b, task_b)
    } else {
        ("replica-a", rx_b, task_b, rx_a, task_a)
    };
    let grab = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": follower}});
    let conflict = api_error(
        leases
            .patch(
                "qpm-operator-leader",
                &PatchParams::apply(&format!("kube-lease-manager-{follower}")),
                &Patch::Apply(grab),
            )
            .await,
    );
    assert_eq!(conflict.code, 409);
    assert!(
        conflict
            .message
            .contains(&format!("kube-lease-manager-{leader}"))
            && conflict.message.contains(".spec.holderIdentity"),
        "{}",
        conflict.message
    );
    assert!(!*rx_follower.borrow());

    // The leader steps down (its channel closes, it releases); the follower takes over.
    drop(rx_leader);
    task_leader.await.unwrap().unwrap();
    wait_for(WAIT, "the follower to take over", || {
        let is_leader = *rx_follower.borrow();
        async move { is_leader.then_some(()) }
    })
    .await;
    assert_eq!(
        holder(leases.get("qpm-operator-leader").await.unwrap()).as_deref(),
        Some(follower)
    );
    drop(rx_follower);
    task_follower.await.unwrap().unwrap();
    assert_eq!(
        holder(leases.get("qpm-operator-leader").await.unwrap()),
        None
    );

    if let Some(fake) = cluster.fake() {
        // Acquiring is the only apply the lease manager makes: exactly two were granted, in
        // order, and every other apply was refused with a conflict.
        let applies: Vec<(String, u16)> = fake
            .requests()
            .iter()
            .filter(|r| r.resource == "leases" && r.is_apply())
            .map(|r| (r.field_manager.clone().unwrap_or_default(), r.status))
            .collect();
        let granted: Vec<&str> = applies
            .iter()
            .filter(|(_, s)| *s == 200)
            .map(|(m, _)| m.as_str())
            .collect();
        assert_eq!(
            granted,
            [
                format!("kube-lease-manager-{leader}"),
                format!("kube-lease-manager-{follower}")
            ]
        );
        assert!(
            applies.iter().all(|(_, s)| *s == 200 || *s == 409),
            "{applies:?}"
        );
    }
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_when_its_holder_stops_renewing() {
    let cluster = TestCluster::start().await;
    let manager = |identity: &str| {
        LeaseManagerBuilder::new(cluster.new_client(), "crashy")
            .with_namespace(cluster.namespace())
            .with_parameters(LeaseParams::new(identity, 2, 1))
            .build()
    };
    let first = manager("first").await.unwrap();
    assert!(first.changed().await.unwrap(), "the only contender leads");
    // `first` now stops renewing, as a crashed replica would; it never releases.
    let second = manager("second").await.unwrap();
    let (rx, task) = second.watch().await;
    wait_for(
        Duration::from_secs(15),
        "the second replica to take the expired lease",
        || {
            let is_leader = *rx.borrow();
            async move { is_leader.then_some(()) }
        },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), cluster.namespace());
    let lease = leases.get("crashy").await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("second")
    );
    drop(rx);
    task.await.unwrap().unwrap();
    drop(first);
}

#[tokio::test]
async fn recorder_publishes_events_that_can_be_listed() {
    let (cluster, api) = cluster().await;
    let w = api
        .create(&PostParams::default(), &widget("noisy", 1))
        .await
        .unwrap();
    let recorder = Recorder::new(
        cluster.client(),
        Reporter {
            controller: "qpm-operator-test".into(),
            instance: Some("test-0".into()),
        },
    );
    let event = RecordedEvent {
        type_: EventType::Normal,
        reason: "Created".into(),
        note: Some("created job 42".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&event, &w.object_ref(&())).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client(), cluster.namespace());
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let e = &listed.items[0];
    assert_eq!(e.reason.as_deref(), Some("Created"));
    assert_eq!(e.note.as_deref(), Some("created job 42"));
    assert_eq!(e.type_.as_deref(), Some("Normal"));
    assert_eq!(e.reporting_controller.as_deref(), Some("qpm-operator-test"));
    let regarding = e.regarding.as_ref().unwrap();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Widget"), Some("noisy"))
    );
    assert!(e.series.is_none());

    // The same event again becomes a series on the same Event object (a merge patch).
    recorder.publish(&event, &w.object_ref(&())).await.unwrap();
    let listed = events
        .list(&ListParams::default().fields("regarding.name=noisy"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].series.as_ref().map(|s| s.count), Some(2));

    if let Some(fake) = cluster.fake() {
        let writes: Vec<(Verb, Option<PatchType>, u16)> = fake
            .writes_to("events", None)
            .iter()
            .map(|r| (r.verb, r.patch_type, r.status))
            .collect();
        assert_eq!(
            writes,
            [
                (Verb::Create, None, 201),
                (Verb::Patch, Some(PatchType::Merge), 200)
            ]
        );
    }
}

#[tokio::test]
async fn faults_fail_exactly_the_matching_requests_and_change_nothing() {
    let fake = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("c".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    fake.clear_requests();

    fake.fail_next(1, 500, |r| {
        r.verb == Verb::Get && r.resource == "configmaps"
    });
    let e = api_error(cms.get("c").await);
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    cms.get("c").await.unwrap();

    fake.fail_next(2, 409, |r| r.verb == Verb::Patch);
    let patch = Patch::Merge(json!({"data": {"k": "v"}}));
    assert_eq!(
        api_error(cms.patch("c", &PatchParams::default(), &patch).await).code,
        409
    );
    assert_eq!(
        api_error(cms.patch("c", &PatchParams::default(), &patch).await).code,
        409
    );
    assert_eq!(
        cms.get("c").await.unwrap().resource_version(),
        created.resource_version()
    );
    cms.patch("c", &PatchParams::default(), &patch)
        .await
        .unwrap();

    // kube's client retries a 503 by itself: two requests, one answer.
    fake.fail_next(1, 503, |r| r.verb == Verb::Get);
    cms.get("c").await.unwrap();

    let log: Vec<(Verb, u16)> = fake.requests().iter().map(|r| (r.verb, r.status)).collect();
    assert_eq!(
        log,
        [
            (Verb::Get, 500),
            (Verb::Get, 200),
            (Verb::Patch, 409),
            (Verb::Patch, 409),
            (Verb::Get, 200),
            (Verb::Patch, 200),
            (Verb::Get, 503),
            (Verb::Get, 200),
        ]
    );
    assert_eq!(fake.count(|r| r.verb == Verb::Patch && r.status == 200), 1);
    let writes = fake.writes_to("configmaps", None);
    assert_eq!(writes.len(), 3);
    assert!(
        writes
            .iter()
            .all(|w| w.namespace.as_deref() == Some("default") && w.name.as_deref() == Some("c"))
    );
}

#[tokio::test]
async fn discovery_and_version_are_served() {
    let fake = FakeApiServer::start().await;
    fake.register_crd(&Widget::crd()).unwrap();
    let client = fake.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (resource, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("fake.qpm.test", "v1", "Widget"))
        .expect("the CRD's kind is discoverable");
    assert_eq!(resource.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        discovery
            .resolve_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
            .is_some()
    );
    // The CRD is stored too, Established, as on a real cluster.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client);
    let crd = crds.get("widgets.fake.qpm.test").await.unwrap();
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
}

#[tokio::test]
async fn test_cluster_gives_each_test_its_own_namespace() {
    let one = TestCluster::start().await;
    let two = TestCluster::start().await;
    assert_ne!(one.namespace(), two.namespace());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(one.client());
    namespaces.get(one.namespace()).await.unwrap();
    assert_eq!(one.is_fake(), one.fake().is_some());
    // The client's default namespace is the test's.
    let cms: Api<ConfigMap> = Api::default_namespaced(one.client());
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("here".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(created.namespace().as_deref(), Some(one.namespace()));
}

// ---------------------------------------------------------------------------------------------
// The CRD's schema, keyed lists in server-side apply, namespace and CRD deletion, a lagging
// cache: what a real server does that the operator must survive.

fn deployment_jobs(client: kube::Client, namespace: &str) -> Api<kube::api::DynamicObject> {
    let gvk = GroupVersionKind::gvk("pm.qualys.io", "v1alpha1", "DeploymentJob");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "deploymentjobs");
    Api::namespaced_with(client, namespace, &ar)
}

fn dj(name: &str, spec: serde_json::Value) -> kube::api::DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn dj_spec() -> serde_json::Value {
    json!({
        "job": {
            "name": "Weekly", "platform": "Windows", "scheduleType": "Daily",
            "startDateTime": "2025-07-01 09:57:18 AM", "timeout": 6, "timeoutUnit": "HOURS",
            "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]
        }
    })
}

fn causes(status: &Status) -> Vec<String> {
    status
        .details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_crd_schema_prunes_defaults_and_refuses_with_a_cause_per_field() {
    let cluster = TestCluster::start().await;
    cluster.register_crd(qpm_operator::api::crd()).await;
    let api = deployment_jobs(cluster.client(), cluster.namespace());

    // Unknown fields are pruned, in spec and in status (the status subresource too).
    let mut spec = dj_spec();
    spec["notAField"] = json!(1);
    spec["job"]["alsoNot"] = json!("x");
    let created = api
        .create(&PostParams::default(), &dj("pruned", spec))
        .await
        .unwrap();
    assert!(created.data["spec"].get("notAField").is_none());
    assert!(created.data["spec"]["job"].get("alsoNot").is_none());
    let written = api
        .patch_status(
            "pruned",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(json!({
                "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
                "status": {"jobId": "j-1", "bogus": true},
            })),
        )
        .await
        .unwrap();
    assert_eq!(written.data["status"], json!({"jobId": "j-1"}));

    // Types, enums, ranges, set uniqueness and a CEL rule: 422, each field named.
    let mut bad = dj_spec();
    bad["deletionPolicy"] = json!("Maybe");
    bad["job"]["timeout"] = json!("six");
    bad["job"]["approvedPatches"] = json!([
        "9285e676-6340-3ba7-b124-31d84542c7bf",
        "9285e676-6340-3ba7-b124-31d84542c7bf"
    ]);
    let refused = api_error(api.create(&PostParams::default(), &dj("bad", bad)).await);
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));
    let fields = causes(&refused);
    for field in [
        "spec.deletionPolicy",
        "spec.job.timeout",
        "spec.job.approvedPatches[1]",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
    let mut cel = dj_spec();
    cel["job"]["patchTuesdayPlusXDays"] = json!(0);
    let refused = api_error(api.create(&PostParams::default(), &dj("cel", cel)).await);
    assert_eq!(refused.code, 422);
    assert!(
        causes(&refused)
            .iter()
            .any(|f| f == "spec.job.patchTuesdayPlusXDays"),
        "{refused:?}"
    );
    assert!(refused.message.contains("not 0"), "{}", refused.message);
    // /status writes are validated as well.
    let refused = api_error(
        api.patch_status(
            "pruned",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": "one"}})),
        )
        .await,
    );
    assert_eq!(causes(&refused), vec!["status.observedGeneration"]);
}

#[tokio::test]
async fn an_older_crd_prunes_the_status_fields_it_lacks() {
    let fake = FakeApiServer::start().await;
    let mut older = qpm_operator::api::crd_value();
    let status = older
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties")
        .and_then(serde_json::Value::as_object_mut)
        .unwrap();
    status.remove("pendingCreate");
    let older: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(older).unwrap();
    fake.register_crd(&older).unwrap();
    fake.create_namespace("ns").unwrap();
    let api = deployment_jobs(fake.client(), "ns");
    api.create(&PostParams::default(), &dj("a", dj_spec()))
        .await
        .unwrap();
    let pending =
        json!({"name": "Weekly", "platform": "Windows", "bodyDigest": "d", "startedAt": "t"});
    let write_pending = || async {
        api.patch_status(
            "a",
            &PatchParams::apply("op").force(),
            &Patch::Apply(json!({
                "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
                "status": {"observedGeneration": 1, "pendingCreate": pending},
            })),
        )
        .await
        .unwrap()
    };
    let first = write_pending().await;
    assert!(first.data["status"].get("pendingCreate").is_none());
    // Writing it again changes nothing: no new resourceVersion.
    let again = write_pending().await;
    assert_eq!(again.resource_version(), first.resource_version());
    // After the upgrade the field is kept.
    fake.register_crd(&qpm_operator::api::crd()).unwrap();
    let upgraded = write_pending().await;
    assert_eq!(upgraded.data["status"]["pendingCreate"], pending);
}

/// Removes every finalizer of a widget, as its controllers would when done.
async fn release(widgets: &Api<Widget>, name: &str) {
    widgets
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
}

fn condition(ty: &str, status: &str) -> serde_json::Value {
    json!({"type": ty, "status": status, "reason": "R", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"})
}

#[tokio::test]
async fn server_side_apply_merges_keyed_lists_item_by_item() {
    let cluster = TestCluster::start().await;
    cluster.register_crd(qpm_operator::api::crd()).await;
    let api = deployment_jobs(cluster.client(), cluster.namespace());
    api.create(&PostParams::default(), &dj("merged", dj_spec()))
        .await
        .unwrap();
    let apply_status = |manager: &'static str, conditions: Vec<serde_json::Value>| {
        let api = api.clone();
        async move {
            api.patch_status(
                "merged",
                &PatchParams::apply(manager).force(),
                &Patch::Apply(json!({
                    "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
                    "status": {"conditions": conditions},
                })),
            )
            .await
            .unwrap()
        }
    };
    let types = |o: &kube::api::DynamicObject| -> Vec<String> {
        o.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={}",
                    c["type"].as_str().unwrap(),
                    c["status"].as_str().unwrap()
                )
            })
            .collect()
    };
    apply_status("operator", vec![condition("Ready", "True")]).await;
    let both = apply_status("auditor", vec![condition("example.com/Audited", "True")]).await;
    assert_eq!(types(&both), ["Ready=True", "example.com/Audited=True"]);
    // The operator's next apply changes its own item and leaves the other manager's alone.
    let after = apply_status(
        "operator",
        vec![condition("Ready", "False"), condition("Synced", "True")],
    )
    .await;
    assert_eq!(
        types(&after),
        ["Ready=False", "example.com/Audited=True", "Synced=True"]
    );
    // An item the operator stops sending goes; the other manager's stays.
    let dropped = apply_status("operator", vec![condition("Synced", "True")]).await;
    assert_eq!(types(&dropped), ["example.com/Audited=True", "Synced=True"]);
    // Re-applying the same items writes nothing.
    let same = apply_status("operator", vec![condition("Synced", "True")]).await;
    assert_eq!(same.resource_version(), dropped.resource_version());

    // A set merges by value: each manager's values stay while it sends them.
    let apply_spec = |manager: &'static str, patches: Vec<&'static str>| {
        let api = api.clone();
        async move {
            api.patch(
                "merged",
                &PatchParams::apply(manager),
                &Patch::Apply(json!({
                    "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
                    "spec": {"job": {"approvedPatches": patches}},
                })),
            )
            .await
            .unwrap()
        }
    };
    let a = "11111111-1111-1111-1111-111111111111";
    let b = "22222222-2222-2222-2222-222222222222";
    apply_spec("team-a", vec![a]).await;
    let union = apply_spec("team-b", vec![b]).await;
    let patches = union.data["spec"]["job"]["approvedPatches"].clone();
    for p in [a, b, "9285e676-6340-3ba7-b124-31d84542c7bf"] {
        assert!(
            patches.as_array().unwrap().iter().any(|v| v == p),
            "{p} in {patches}"
        );
    }
}

#[tokio::test]
async fn deleting_a_namespace_terminates_it_and_cascades() {
    let cluster = TestCluster::start().await;
    cluster.register_crd(Widget::crd()).await;
    let ns = cluster.namespace().to_string();
    let widgets: Api<Widget> = Api::namespaced(cluster.client(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let cm = |name: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm("plain"))
        .await
        .unwrap();
    let mut held = widget("held", 1);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    widgets.create(&PostParams::default(), &held).await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();

    // Terminating: what has no finalizer goes, what has one waits for it.
    wait_for(WAIT, "the namespace to be Terminating", || async {
        let n = namespaces.get(&ns).await.ok()?;
        (n.status?.phase.as_deref() == Some("Terminating")).then_some(())
    })
    .await;
    wait_for(WAIT, "the ConfigMap to be deleted", || async {
        cms.get_opt("plain").await.ok()?.is_none().then_some(())
    })
    .await;
    let marked = wait_for(WAIT, "the widget to be marked for deletion", || async {
        let w = widgets.get("held").await.ok()?;
        w.metadata.deletion_timestamp.is_some().then_some(w)
    })
    .await;
    assert_eq!(marked.finalizers(), ["example.com/hold"]);
    // Nothing new may be created there.
    let refused = api_error(cms.create(&PostParams::default(), &cm("late")).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert!(
        refused.message.contains("being terminated"),
        "{}",
        refused.message
    );
    // Once the finalizer goes, the object and then the namespace go.
    release(&widgets, "held").await;
    wait_for(
        Duration::from_secs(120),
        "the namespace to be gone",
        || async { namespaces.get_opt(&ns).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn deleting_a_crd_deletes_its_objects_then_itself() {
    let fake = FakeApiServer::start().await;
    fake.register_crd(&Widget::crd()).unwrap();
    fake.create_namespace("ns").unwrap();
    let client = fake.client();
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "ns");
    widgets
        .create(&PostParams::default(), &widget("free", 1))
        .await
        .unwrap();
    let mut held = widget("held", 2);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    widgets.create(&PostParams::default(), &held).await.unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = crds.get("widgets.fake.qpm.test").await.unwrap();
    assert_eq!(
        crd.finalizers(),
        ["customresourcecleanup.apiextensions.k8s.io"]
    );
    crds.delete("widgets.fake.qpm.test", &DeleteParams::default())
        .await
        .unwrap();
    assert!(widgets.get_opt("free").await.unwrap().is_none());
    let held = widgets.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        crds.get("widgets.fake.qpm.test")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let refused = api_error(
        widgets
            .create(&PostParams::default(), &widget("new", 3))
            .await,
    );
    assert_eq!(refused.code, 405);
    release(&widgets, "held").await;
    assert!(
        crds.get_opt("widgets.fake.qpm.test")
            .await
            .unwrap()
            .is_none()
    );
    // The resource is no longer served.
    assert_eq!(
        api_error(widgets.list(&ListParams::default()).await).code,
        404
    );
}

#[tokio::test]
async fn a_lagging_cache_lists_old_state_and_watches_catch_up() {
    let fake = FakeApiServer::start_with(FakeOptions {
        read_lag: Some(Duration::from_secs(3600)),
        ..FakeOptions::default()
    })
    .await;
    fake.register_crd(&Widget::crd()).unwrap();
    fake.create_namespace("ns").unwrap();
    let widgets: Api<Widget> = Api::namespaced(fake.client(), "ns");
    let first = widgets
        .create(&PostParams::default(), &widget("first", 1))
        .await
        .unwrap();
    widgets
        .patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
    // The cache (resourceVersion=0) is an hour behind: the widget did not exist yet.
    let cached = widgets
        .list(&ListParams::default().match_any())
        .await
        .unwrap();
    assert!(cached.items.is_empty());
    let cached_rv: u64 = cached.metadata.resource_version.unwrap().parse().unwrap();
    assert!(cached_rv < first.resource_version().unwrap().parse::<u64>().unwrap());
    // A consistent list (no resourceVersion) is current.
    let fresh = widgets.list(&ListParams::default()).await.unwrap();
    assert_eq!(fresh.items[0].spec.size, 2);
    // Conflicts follow from acting on the old state: an update with an old resourceVersion.
    let mut stale = first.clone();
    stale.spec.size = 5;
    let refused = api_error(
        widgets
            .replace("first", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!(refused.code, 409);

    // A watch from the cached resourceVersion delivers what came after, late but in order.
    fake.set_lag(Some(Duration::from_millis(50)));
    let mut events = widgets
        .watch(&WatchParams::default(), &cached_rv.to_string())
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(WAIT, events.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(w)))) => seen.push(format!("ADDED {}", w.spec.size)),
            Ok(Ok(Some(WatchEvent::Modified(w)))) => seen.push(format!("MODIFIED {}", w.spec.size)),
            Ok(Ok(Some(_))) => {}
            other => panic!("watch ended early: {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED 1", "MODIFIED 2"]);
}
