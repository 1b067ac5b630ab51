//! The simulator's modes over real loopback HTTP: a page-size clamp, list orders, rate limits
//! without headers, soft deletes, whole-call 404s for unknown ids, job scope, refused edits of
//! enabled one-shot jobs, error shapes, what qualysdk sends, idle connections, the body limit.

#![recursion_limit = "256"]

mod sim_support;

use std::time::Duration;

use qpm_operator::sim::{
    DeleteMode, DeleteUnknown, ListOrder, RateLimit, RateLimitHeaders, Scope, SimConfig, SimHandle,
    SimUser,
};
use serde_json::{Value, json};
use sim_support::{Api, start};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SUMMARY: &str = "/pm/v1/deploymentjobs/summary";
const DELETE: &str = "/pm/v1/deploymentjobs";

async fn sim_and_api(config: SimConfig) -> (SimHandle, Api) {
    let sim = start(config).await;
    let api = Api::login(&sim.base_url(), "sim", "sim").await;
    (sim, api)
}

fn job(name: &str) -> Value {
    json!({"name": name, "platform": "Windows", "scheduleType": "On-demand"})
}

async fn create(api: &Api, body: &Value) -> String {
    let a = api.create(body).await;
    assert_eq!(a.status, 201, "create: {:?}", a.body);
    a.body["id"].as_str().expect("an id").to_string()
}

async fn enable(api: &Api, id: &str) -> sim_support::Answer {
    api.post(
        "/pm/v1/deploymentjobs/update/status/Enabled",
        &json!({"ids": [id]}),
    )
    .await
}

async fn page(api: &Api, number: usize, size: usize) -> Vec<String> {
    let a = api
        .get(&format!(
            "{SUMMARY}?platform=Windows&pageNumber={number}&pageSize={size}"
        ))
        .await;
    assert_eq!(a.status, 200, "list: {:?}", a.body);
    a.body
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_page_size_clamp_returns_fewer_than_asked_and_pages_by_what_it_returns() {
    let (_sim, api) = sim_and_api(SimConfig {
        max_page_size: Some(7),
        ..SimConfig::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(create(&api, &job(&format!("job-{i:02}"))).await);
    }
    assert_eq!(page(&api, 0, 10).await, ids[0..7]);
    assert_eq!(page(&api, 1, 10).await, ids[7..14]);
    assert_eq!(page(&api, 2, 10).await, ids[14..20]);
    assert!(page(&api, 3, 10).await.is_empty());
    // Smaller requests are served as asked; the largest allowed request is clamped too.
    assert_eq!(page(&api, 1, 5).await, ids[5..10]);
    assert_eq!(page(&api, 0, 10_000).await, ids[0..7]);
}

#[tokio::test]
async fn list_orders_differ_from_creation_order() {
    async fn ids_in(order: ListOrder) -> (Vec<String>, Vec<String>) {
        let (_sim, api) = sim_and_api(SimConfig {
            list_order: order,
            ..SimConfig::default()
        })
        .await;
        let mut created = Vec::new();
        for name in ["charlie", "alpha", "bravo"] {
            created.push(create(&api, &job(name)).await);
        }
        // An update moves the first job to the front of the "updated" order.
        let a = api.update(&created[0], &json!({"description": "x"})).await;
        assert_eq!(a.status, 200);
        (created, page(&api, 0, 10).await)
    }
    let (c, listed) = ids_in(ListOrder::Created).await;
    assert_eq!(listed, c);
    let (c, listed) = ids_in(ListOrder::Name).await;
    assert_eq!(listed, vec![c[1].clone(), c[2].clone(), c[0].clone()]);
    let (c, listed) = ids_in(ListOrder::Id).await;
    let mut sorted = c.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    let (c, listed) = ids_in(ListOrder::Updated).await;
    assert_eq!(listed[0], c[0]);
    assert_eq!(listed.len(), 3);
}

fn assert_no_rate_limit_headers(a: &sim_support::Answer) {
    let names: Vec<&str> = a.headers.keys().map(|k| k.as_str()).collect();
    assert!(
        !names.iter().any(|k| k.starts_with("x-ratelimit")),
        "{names:?}"
    );
}

#[tokio::test]
async fn without_rate_limit_headers_a_429_is_bare() {
    let (sim, api) = sim_and_api(SimConfig {
        rate_limit: Some(RateLimit {
            limit: 2,
            window: Duration::from_secs(3600),
        }),
        rate_limit_headers: RateLimitHeaders::None,
        ..SimConfig::default()
    })
    .await;
    for _ in 0..2 {
        let a = api.get(&format!("{SUMMARY}?platform=Windows")).await;
        assert_eq!(a.status, 200);
        assert_no_rate_limit_headers(&a);
    }
    let a = api.get(&format!("{SUMMARY}?platform=Windows")).await;
    assert_eq!(a.status, 429);
    assert!(a.header("retry-after").is_none());
    assert_no_rate_limit_headers(&a);
    assert_eq!(a.error().0, "429");
    // The injected rate-limit fault follows the mode too.
    sim.set_fault(qpm_operator::sim::Fault::always(
        qpm_operator::sim::FaultKind::RateLimited {
            retry_after_secs: 5,
        },
    ));
    let a = api.job("x").await;
    assert_eq!(a.status, 429);
    assert!(a.header("retry-after").is_none());
    assert!(a.header("x-ratelimit-towait-sec").is_none());
}

#[tokio::test]
async fn a_soft_delete_marks_the_job_and_keeps_it_listed() {
    let (sim, api) = sim_and_api(SimConfig {
        delete_mode: DeleteMode::Soft,
        ..SimConfig::default()
    })
    .await;
    let parent = create(&api, &job("parent")).await;
    let child = create(
        &api,
        &json!({"name": "child", "platform": "Windows", "scheduleType": "On-demand", "linkedJobId": parent}),
    )
    .await;
    let a = api.delete(DELETE, &json!({"ids": [child]})).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        json!([{"id": child, "name": "child", "status": "success"}])
    );

    let got = api.job(&child).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body["deletedBy"]["user"]["id"],
        json!(SimUser::new("sim", "sim").id)
    );
    assert!(got.body["deletedBy"]["date"].is_i64());
    let list = api.get(&format!("{SUMMARY}?platform=Windows")).await;
    let flags: Vec<(Value, Value)> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].clone(), s["deleted"].clone()))
        .collect();
    assert_eq!(
        flags,
        vec![(json!(parent), json!(false)), (json!(child), json!(true))]
    );

    // A deleted job is gone for every other purpose.
    assert_eq!(
        api.update(&child, &json!({"description": "x"}))
            .await
            .status,
        404
    );
    let a = enable(&api, &child).await;
    assert_eq!(a.body[0]["status"], "failure");
    let a = api.delete(DELETE, &json!({"ids": [child]})).await;
    assert_eq!(a.body[0]["status"], "failure");
    // The soft-deleted child no longer holds its parent.
    let a = api.delete(DELETE, &json!({"ids": [parent]})).await;
    assert_eq!(a.body[0]["status"], "success", "{:?}", a.body);
    assert_eq!(sim.job_count(), 2);
}

#[tokio::test]
async fn unknown_ids_on_delete_fail_per_item_or_the_whole_call() {
    let (_sim, api) = sim_and_api(SimConfig::default()).await;
    let a = api.delete(DELETE, &json!({"ids": ["nope"]})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body[0]["status"], "failure");

    let (sim, api) = sim_and_api(SimConfig {
        delete_unknown: DeleteUnknown::NotFound,
        ..SimConfig::default()
    })
    .await;
    let known2 = create(&api, &job("known")).await;
    let a = api.delete(DELETE, &json!({"ids": [known2, "nope"]})).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.error().0, "404");
    assert!(a.error().1.contains("nope"), "{}", a.error().1);
    // Nothing of a refused call takes effect.
    assert_eq!(sim.job_count(), 1);
    assert_eq!(api.job(&known2).await.status, 200);
}

#[tokio::test]
async fn with_scope_own_a_user_sees_and_edits_only_its_own_jobs() {
    let users = vec![SimUser::new("alice", "a"), SimUser::new("bob", "b")];
    let sim = start(SimConfig {
        users: users.clone(),
        scope: Scope::Own,
        ..SimConfig::default()
    })
    .await;
    let alice = Api::login(&sim.base_url(), "alice", "a").await;
    let bob = Api::login(&sim.base_url(), "bob", "b").await;
    let a_job = create(&alice, &job("alice-job")).await;
    let b_job = create(&bob, &job("bob-job")).await;

    assert_eq!(page(&alice, 0, 10).await, vec![a_job.clone()]);
    assert_eq!(page(&bob, 0, 10).await, vec![b_job.clone()]);
    let got = bob.job(&a_job).await;
    assert_eq!(got.status, 403);
    assert!(got.error().1.contains("scope"), "{}", got.error().1);
    assert_eq!(
        bob.update(&a_job, &json!({"description": "x"}))
            .await
            .status,
        403
    );
    assert_eq!(
        bob.delete(DELETE, &json!({"ids": [a_job]})).await.status,
        403
    );
    let a = enable(&bob, &a_job).await;
    assert_eq!(a.status, 403);
    // Nothing happened to alice's job.
    let got = alice.job(&a_job).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["status"], "Disabled");
    assert_eq!(got.body["description"], Value::Null);
    assert_eq!(sim.job_count(), 2);

    // The default scope shows every job to everyone.
    let sim = start(SimConfig {
        users,
        ..SimConfig::default()
    })
    .await;
    let alice = Api::login(&sim.base_url(), "alice", "a").await;
    let bob = Api::login(&sim.base_url(), "bob", "b").await;
    let a_job = create(&alice, &job("alice-job")).await;
    assert_eq!(page(&bob, 0, 10).await, vec![a_job.clone()]);
    assert_eq!(bob.job(&a_job).await.status, 200);
}

#[tokio::test]
async fn strict_enabled_edits_refuse_updates_of_enabled_one_shot_jobs() {
    async fn update_enabled(strict: bool, schedule: Value) -> (u16, String, Value) {
        let (sim, api) = sim_and_api(SimConfig {
            strict_enabled_edits: strict,
            ..SimConfig::default()
        })
        .await;
        let id = create(&api, &schedule).await;
        let a = enable(&api, &id).await;
        assert_eq!(a.body[0]["status"], "success");
        let a = api.update(&id, &json!({"description": "edited"})).await;
        let stored = sim.job(&id).expect("the job")["description"].clone();
        (a.status, a.error().1, stored)
    }
    let (status, message, stored) = update_enabled(true, job("once")).await;
    assert_eq!(status, 400);
    assert!(message.contains("enabled On-demand job"), "{message}");
    assert_eq!(stored, Value::Null);
    let daily = json!({"name": "daily", "platform": "Windows", "scheduleType": "Daily",
        "startDateTime": "2030-1-01 10:00:00 AM", "recurring": true});
    assert_eq!(update_enabled(true, daily).await.0, 200);
    let (status, _, stored) = update_enabled(false, job("once")).await;
    assert_eq!((status, stored), (200, json!("edited")));
}

#[tokio::test]
async fn error_bodies_take_a_replayed_shape() {
    let (_sim, api) = sim_and_api(SimConfig {
        error_keys: Some(vec![
            "error".into(),
            "error.code".into(),
            "error.text".into(),
        ]),
        ..SimConfig::default()
    })
    .await;
    let a = api.job("nope").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"]["code"], "404");
    assert!(a.body["error"]["text"].as_str().unwrap().contains("nope"));
    assert!(a.body.get("_error").is_none());
}

/// The body qualysdk's `create_job` builds (qualysdk/pm/jobs.py) when only the required
/// arguments are given: `timeout: -1` and no `timeoutUnit`.
fn qualysdk_minimal(platform: &str) -> Value {
    let mut body = json!({"name": "sdk-minimal", "platform": platform, "scheduleType": "On-demand",
        "status": "Disabled", "timeout": -1, "type": "Install"});
    if platform == "Linux" {
        body["continueOnPatchFailure"] = json!(true);
    }
    body
}

/// The body it builds with every documented keyword argument: top-level `rebootCountdown`,
/// `rebootOption` and `suppressReboots`, lower-case `filterType` values as its docstring gives
/// them, numbers sent as strings, `recipientEmails` as one string.
fn qualysdk_full() -> Value {
    json!({
        "approvedPatches": ["2f1e3c1c-0000-4000-8000-000000000001"],
        "assetIds": ["2f1e3c1c-0000-4000-8000-000000000002"],
        "assetTagIds": ["2f1e3c1c-0000-4000-8000-000000000003"],
        "coAuthorUserIds": ["2f1e3c1c-0000-4000-8000-000000000004"],
        "dayOfMonth": 15,
        "description": "made by qualysdk",
        "duringDeployment": {"description": "during", "userMessage": "during"},
        "dynamicPatchesQQL": "vendor:Microsoft",
        "dynamicQQLType": 1,
        "additionalDynamicPatchesQQL": "isSecurity:true",
        "additionalDynamicQQLType": "1",
        "exclusionAssetIds": ["2f1e3c1c-0000-4000-8000-000000000005"],
        "exclusionFilterType": "all",
        "exclusionTagIds": ["2f1e3c1c-0000-4000-8000-000000000006"],
        "filterType": "any",
        "isDynamicPatchesQQL": true,
        "matchAllTagIds": ["2f1e3c1c-0000-4000-8000-000000000007"],
        "minimizeWindow": true,
        "monthlyRecurringType": "1",
        "name": "sdk-full",
        "notification": {
            "notificationConfigs": {"recipientEmails": "ops@example.com", "completedPercentage": 50},
            "notificationTypes": {"email": true},
            "notificationEvents": {"onJobStart": true, "onJobComplete": true}
        },
        "opportunisticDownloads": true,
        "patchTuesdayPlusXDays": 3,
        "platform": "Windows",
        "postDeployment": {"description": "after", "userMessage": "after"},
        "rebootCountdown": {"description": "countdown", "userMessage": "countdown"},
        "rebootOption": {
            "deferment": {"count": 3, "interval": 30, "intervalUnit": "MINUTES"},
            "description": "reboot", "userMessage": "reboot"
        },
        "suppressReboots": true,
        "preDeployment": {"description": "before", "userMessage": "before"},
        "recurring": true,
        "recurringDayOfMonth": 2,
        "recurringLastDayOfMonth": false,
        "recurringWeekDayOfMonth": 3,
        "recurringWeekDays": "0,0,1,0,0,0,0",
        "scheduleType": "Monthly",
        "startDateTime": "2030-1-05 10:00:00 AM",
        "status": "Disabled",
        "timeout": 4,
        "timeoutUnit": "HOURS",
        "downloadRandomizeTime": "1",
        "downloadRandomizeTimeUnit": "HOURS",
        "timezone": "America/New_York",
        "timezoneType": "SPECIFIC_TZ",
        "type": "Install",
        "linkedJobReferenceCount": 0
    })
}

#[tokio::test]
async fn the_bodies_qualysdk_builds_are_accepted() {
    let (_sim, api) = sim_and_api(SimConfig::default()).await;
    for platform in ["Windows", "Linux"] {
        let a = api.create(&qualysdk_minimal(platform)).await;
        assert_eq!(a.status, 201, "{platform}: {:?}", a.body);
        assert_eq!(a.body["timeout"], -1);
        assert_eq!(a.body["timeoutUnit"], Value::Null);
    }
    let a = api.create(&qualysdk_full()).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["filterType"], "Any");
    assert_eq!(a.body["exclusionFilterType"], "All");
    assert_eq!(a.body["rebootOption"]["deferment"]["interval"], 30);
    assert_eq!(a.body["suppressReboots"], true);
    assert_eq!(
        a.body["notification"]["notificationConfigs"]["recipientEmails"],
        "ops@example.com"
    );
    // delete_job and change_job_status send {"ids": [...]} as JSON.
    let a = enable(&api, &id).await;
    assert_eq!(a.body[0]["status"], "success", "{:?}", a.body);
    let a = api.delete(DELETE, &json!({"ids": [id]})).await;
    assert_eq!(a.body[0]["status"], "success", "{:?}", a.body);
}

#[tokio::test]
async fn refusing_an_unset_timeout_is_a_mode() {
    let (_sim, api) = sim_and_api(SimConfig {
        accept_unset_timeout: false,
        ..SimConfig::default()
    })
    .await;
    let a = api.create(&qualysdk_minimal("Windows")).await;
    assert_eq!(a.status, 400);
    assert!(
        a.error()
            .1
            .starts_with("timeout must be between 1 and 168 HOURS"),
        "{}",
        a.error().1
    );
    // -1 with a unit is out of range in every mode.
    let (_sim, api) = sim_and_api(SimConfig::default()).await;
    let mut body = qualysdk_minimal("Windows");
    body["timeoutUnit"] = json!("HOURS");
    assert_eq!(api.create(&body).await.status, 400);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let sim = start(SimConfig {
        idle_timeout: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    stream
        .write_all(b"GET /_sim/faults HTTP/1.1\r\nhost: sim\r\n\r\n")
        .await
        .unwrap();
    // The answer arrives, then the server closes the idle keep-alive connection (EOF).
    let mut received = Vec::new();
    let read_all = stream.read_to_end(&mut received);
    let closed = tokio::time::timeout(Duration::from_secs(20), read_all).await;
    assert!(
        matches!(closed, Ok(Ok(n)) if n > 0),
        "the connection was not closed: {closed:?}"
    );
    assert!(received.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn bodies_over_two_megabytes_are_refused_in_the_gateway_shape() {
    let (_sim, api) = sim_and_api(SimConfig::default()).await;
    let mut body = job("big");
    body["description"] = json!("x".repeat(qpm_operator::sim::BODY_LIMIT + 1));
    let a = api.create(&body).await;
    assert_eq!(a.status, 413);
    assert!(a.error().1.contains("2097152"), "{}", a.error().1);
}
