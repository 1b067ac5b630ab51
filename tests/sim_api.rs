//! The simulator's HTTP behaviour, over real loopback HTTP: every endpoint and error path,
//! tokens, paging and the record cap, faults, rate limits, counters, the state file.

mod sim_support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use qpm_operator::sim::{
    Fault, FaultKind, RateLimit, SimConfig, SimHandle, SimUser, start as start_sim,
};
use reqwest::Method;
use serde_json::{Value, json};
use sim_support::{Api, answer, auth, form, http, keys, seed, start};

use qpm_operator::qualys::routes::{
    CREATE, DELETE, GET as GET_JOB, LIST as SUMMARY, STATUS, UPDATE,
};
const SUMMARY_PATH: &str = "/pm/v1/deploymentjobs/summary";

async fn sim_and_api(config: SimConfig) -> (SimHandle, Api) {
    let sim = start(config).await;
    let api = Api::login(&sim.base_url(), "sim", "sim").await;
    (sim, api)
}

async fn default_sim() -> (SimHandle, Api) {
    sim_and_api(SimConfig::default()).await
}

/// The smallest valid create body.
fn job(name: &str) -> Value {
    json!({"name": name, "platform": "Windows", "scheduleType": "On-demand"})
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

async fn create(api: &Api, body: &Value) -> Value {
    let a = api.create(body).await;
    assert_eq!(a.status, 201, "create: {:?}", a.body);
    a.body
}

fn id_of(job: &Value) -> String {
    job["id"].as_str().expect("an id").to_string()
}

/// Poll `check` until it holds, or fail after a deadline (no sleeps as synchronisation).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- authentication ---------------------------------------------------------------------

#[tokio::test]
async fn auth_issues_a_jwt_as_text_and_refuses_bad_credentials() {
    let sim = start(SimConfig::default()).await;
    let http = http();
    let url = format!("{}/auth", sim.base_url());
    let post_form = |body: String| {
        http.post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    let ok = post_form(form(&[
        ("username", "sim"),
        ("password", "sim"),
        ("token", "true"),
        ("permissions", "true"),
    ]))
    .await
    .unwrap();
    assert_eq!(ok.status(), 201);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let jwt = ok.text().await.unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "sim");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        4 * 3600
    );
    assert!(claims["jti"].is_string());

    let bad = answer(
        post_form(form(&[
            ("username", "sim"),
            ("password", "wrong"),
            ("token", "true"),
        ]))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.error().1, "Invalid username or password");
    assert!(!bad.error().1.contains("wrong"));

    let unknown = post_form(form(&[
        ("username", "nobody"),
        ("password", "sim"),
        ("token", "true"),
    ]))
    .await
    .unwrap();
    assert_eq!(unknown.status(), 401);

    let no_token_flag = answer(
        post_form(form(&[("username", "sim"), ("password", "sim")]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(no_token_flag.status, 400);
    assert!(no_token_flag.error().1.starts_with("token"));

    let json_body = http
        .post(&url)
        .json(&json!({"username": "sim", "password": "sim", "token": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), 400);
    assert_eq!(
        sim.count_status(qpm_operator::qualys::Endpoint::Auth.as_str(), 201),
        1
    );
    assert_eq!(
        sim.count_status(qpm_operator::qualys::Endpoint::Auth.as_str(), 401),
        2
    );
    assert_eq!(
        sim.count_status(qpm_operator::qualys::Endpoint::Auth.as_str(), 400),
        2
    );
}

#[tokio::test]
async fn bearer_and_bare_tokens_are_accepted_and_bad_ones_refused() {
    let (sim, mut api) = default_sim().await;
    assert_eq!(api.get(SUMMARY_PATH).await.status, 200);
    api.bearer = false;
    assert_eq!(api.get(SUMMARY_PATH).await.status, 200);

    let url = format!("{}{SUMMARY_PATH}", sim.base_url());
    let other = start(SimConfig::default()).await;
    let forged = other.token_for("sim").unwrap();
    let mut tampered = api.token.clone();
    tampered.pop();
    tampered.push(if api.token.ends_with('A') { 'B' } else { 'A' });
    for header in [
        None,
        Some("Basic c2ltOnNpbQ==".to_string()),
        Some("Bearer".to_string()),
        Some("not-a-jwt".to_string()),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {tampered}")),
    ] {
        let mut req = api.http.get(&url);
        if let Some(h) = &header {
            req = req.header("authorization", h);
        }
        let a = answer(req.send().await.unwrap()).await;
        assert_eq!(a.status, 401, "{header:?}");
        assert_eq!(a.error().0, "401");
        assert!(!a.error().1.contains(&api.token));
    }
    assert_eq!(sim.count_status(SUMMARY, 401), 6);
}

#[tokio::test]
async fn tokens_expire_after_the_ttl() {
    // A zero TTL: every token is born expired.
    let (_sim, api) = sim_and_api(SimConfig {
        token_ttl: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    let a = api.get(SUMMARY_PATH).await;
    assert_eq!(a.status, 401);
    assert!(a.error().1.contains("expired"), "{:?}", a.error());

    // A one-second TTL: valid now, refused once the second has passed.
    let (_sim, api) = sim_and_api(SimConfig {
        token_ttl: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await;
    let first = api.get(SUMMARY_PATH).await.status;
    assert!(first == 200 || first == 401, "{first}");
    eventually("the token expires", || async {
        api.get(SUMMARY_PATH).await.status == 401
    })
    .await;
}

#[tokio::test]
async fn expire_tokens_invalidates_issued_tokens() {
    let (sim, api) = default_sim().await;
    assert_eq!(api.get(SUMMARY_PATH).await.status, 200);
    sim.expire_tokens();
    assert_eq!(api.get(SUMMARY_PATH).await.status, 401);

    let api = Api::login(&sim.base_url(), "sim", "sim").await;
    assert_eq!(api.get(SUMMARY_PATH).await.status, 200);
    let a = api.admin(Method::POST, "/expire-tokens", None).await;
    assert_eq!(a.status, 204);
    assert_eq!(api.get(SUMMARY_PATH).await.status, 401);
}

#[tokio::test]
async fn a_user_without_pm_api_access_gets_403() {
    let mut limited = SimUser::new("viewer", "pw");
    limited.pm_api_access = false;
    let sim = start(SimConfig {
        users: vec![SimUser::new("sim", "sim"), limited],
        ..SimConfig::default()
    })
    .await;
    let api = Api::login(&sim.base_url(), "viewer", "pw").await;
    for a in [
        api.get(SUMMARY_PATH).await,
        api.create(&job("x")).await,
        api.job("00000000-0000-0000-0000-000000000000").await,
    ] {
        assert_eq!(a.status, 403);
        assert!(a.error().1.contains("PM.API.ACCESS"), "{:?}", a.error());
    }
    assert_eq!(sim.job_count(), 0);
}

// ---- create, get, update ----------------------------------------------------------------

#[tokio::test]
async fn create_fills_defaults_and_server_fields() {
    let (sim, api) = default_sim().await;
    let mut body = job("minimal");
    body["id"] = json!("11111111-1111-4111-8111-111111111111");
    body["customerId"] = json!("not-mine");
    body["jobCategory"] = json!(9);
    body["readOnly"] = json!(true);
    body["createdBy"] = json!({"user": {"id": "x", "name": "mallory"}, "date": 1});
    body["approvedPatches"] = json!(["p1", "p2", "p3"]);
    let created = create(&api, &body).await;

    assert_eq!(keys(&created).len(), 72);
    assert_ne!(created["id"], body["id"]);
    assert!(uuid::Uuid::try_parse(created["id"].as_str().unwrap()).is_ok());
    assert_eq!(created["customerId"], sim.customer_id());
    assert_eq!(created["createdBy"]["user"]["name"], "sim");
    assert_eq!(
        created["createdBy"]["user"]["id"],
        SimUser::new("sim", "sim").id
    );
    for (key, expected) in [
        ("type", json!("Install")),
        ("status", json!("Disabled")),
        ("filterType", json!("Any")),
        ("exclusionFilterType", json!("Any")),
        ("schemaVersion", json!("1.0")),
        ("jobCategory", json!(3)),
        ("jobSource", json!(3)),
        ("readOnly", json!(false)),
        ("subCategory", json!("Patch")),
        ("isAssetImported", json!(false)),
        ("remediationQids", json!([])),
        ("timezoneType", json!("SPECIFIC_TZ")),
        ("timezone", json!("UTC")),
        ("patchCount", json!(3)),
        ("updatedBy", json!({"user": null, "date": null})),
        ("deletedBy", json!({"user": null, "date": null})),
        ("linkedToJob", Value::Null),
        ("linkedJobs", Value::Null),
        ("assetIds", Value::Null),
        ("description", Value::Null),
    ] {
        assert_eq!(created[key], expected, "{key}");
    }
    // An On-demand job without a start gets "now" in the gateway's format.
    let start = created["startDateTime"].as_str().unwrap();
    assert!(
        qpm_operator_start_format(start),
        "startDateTime {start:?} is not yyyy-M-dd hh:mm:ss AM/PM"
    );
    assert_eq!(api.job(&id_of(&created)).await.body, created);
    assert_eq!(sim.job(&id_of(&created)).unwrap(), created);
    assert_eq!(sim.jobs(), vec![created]);
}

fn qpm_operator_start_format(s: &str) -> bool {
    let parts: Vec<&str> = s.split(' ').collect();
    parts.len() == 3
        && (parts[2] == "AM" || parts[2] == "PM")
        && parts[1].len() == 8
        && parts[0].split('-').count() == 3
        && !parts[0].split('-').nth(1).unwrap().starts_with('0')
}

#[tokio::test]
async fn start_times_and_numbers_are_normalised() {
    let (_sim, api) = default_sim().await;
    let mut body = job("scheduled");
    body["scheduleType"] = json!("Monthly");
    body["startDateTime"] = json!("2025-07-01 09:57:18 AM");
    body["patchTuesdayPlusXDays"] = json!("-12");
    body["customPatchURLId"] = json!("1008");
    body["notification"] = json!({"notificationConfigs": {"completedPercentage": "80"}});
    body["postDeployment"] = json!({"suppressReboots": false, "onComplete": null});
    let created = create(&api, &body).await;
    assert_eq!(created["startDateTime"], "2025-7-01 09:57:18 AM");
    assert_eq!(created["patchTuesdayPlusXDays"], -12);
    assert_eq!(created["customPatchURLId"], "1008");
    assert_eq!(
        created["notification"]["notificationConfigs"]["completedPercentage"],
        "80"
    );
    assert_eq!(
        created["postDeployment"]["onComplete"],
        json!({"userMessage": "", "description": "", "alwaysShowCompletedPrompt": false})
    );
    // A prompt without the flag gets it; a given flag is kept.
    let id = id_of(&created);
    let updated = api
        .update(
            &id,
            &json!({"postDeployment": {"onComplete": {"userMessage": "m", "description": "d"}}}),
        )
        .await;
    assert_eq!(
        updated.body["postDeployment"]["onComplete"],
        json!({"userMessage": "m", "description": "d", "alwaysShowCompletedPrompt": false})
    );
}

#[tokio::test]
async fn get_and_update_of_an_unknown_job_are_404() {
    let (sim, api) = default_sim().await;
    let id = "5b0fd130-52c8-473c-96b1-8f10ea7d4c13";
    let a = api.job(id).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.error().0, "404");
    assert!(a.error().1.contains(id));
    assert_eq!(api.update(id, &job("x")).await.status, 404);
    assert_eq!(sim.count_status(GET_JOB, 404), 1);
    assert_eq!(sim.count_status(UPDATE, 404), 1);
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let (sim, api) = default_sim().await;
    let parent = create(
        &api,
        &json!({"name": "parent", "platform": "Windows", "scheduleType": "On-demand",
                "postDeployActions": [{"action": "Run Script", "scriptType": "ps", "script": b64("post")}]}),
    )
    .await;
    let parent_id = id_of(&parent);
    let with = |key: &str, value: Value| {
        let mut b = job("v");
        b[key] = value;
        b
    };
    let rule = |threshold: Value, ids: Value| {
        json!([{"field": "postDeployAction", "actionIds": ids, "threshold": threshold,
                "condition": "Post Actions were successfully executed"}])
    };
    let pre_action = parent["postDeployActions"][0]["actionId"].clone();
    let mut chained_bad_ids = with("linkedJobId", json!(parent_id));
    chained_bad_ids["chainedJobRule"] = rule(json!(100), json!(["not-an-action"]));
    let mut chained_bad_threshold = with("linkedJobId", json!(parent_id));
    chained_bad_threshold["chainedJobRule"] = rule(json!("101"), json!([pre_action]));
    let mut chained_bad_condition = with("linkedJobId", json!(parent_id));
    chained_bad_condition["chainedJobRule"] = json!([{"field": "postDeployAction", "actionIds": [pre_action], "threshold": 50, "condition": "whenever"}]);
    let mut chained_bad_field = with("linkedJobId", json!(parent_id));
    chained_bad_field["chainedJobRule"] = json!([{"field": "preDeployAction", "actionIds": [pre_action], "threshold": 50,
                "condition": "Post Actions were successfully executed"}]);
    let mut download_too_long = with("timeout", json!(1));
    download_too_long["timeoutUnit"] = json!("HOURS");
    download_too_long["downloadRandomizeTime"] = json!(90);
    download_too_long["downloadRandomizeTimeUnit"] = json!("MINUTES");

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"platform": "Windows", "scheduleType": "On-demand"}),
            "name is required",
        ),
        (with("name", json!("  ")), "name is required"),
        (
            json!({"name": "n", "scheduleType": "On-demand"}),
            "platform is required",
        ),
        (
            json!({"name": "n", "platform": "Windows"}),
            "scheduleType is required",
        ),
        (with("type", json!("Upgrade")), "type: \"Upgrade\""),
        (with("platform", json!("macOS")), "platform: \"macOS\""),
        (
            with("scheduleType", json!("Hourly")),
            "scheduleType: \"Hourly\"",
        ),
        (
            with("scheduleType", json!("Daily")),
            "startDateTime is required when scheduleType is Daily",
        ),
        (
            with("startDateTime", json!("next tuesday")),
            "startDateTime: \"next tuesday\"",
        ),
        (with("status", json!("Prepared")), "status: \"Prepared\""),
        (with("timezoneType", json!("LOCAL")), "timezoneType"),
        (with("timeoutUnit", json!("DAYS")), "timeoutUnit"),
        (with("filterType", json!("Some")), "filterType"),
        (
            with("exclusionFilterType", json!("None")),
            "exclusionFilterType",
        ),
        (
            with("timeout", json!(169)),
            "timeout must be between 1 and 168 HOURS",
        ),
        (
            {
                let mut b = with("timeout", json!(10081));
                b["timeoutUnit"] = json!("MINUTES");
                b
            },
            "timeout must be between 1 and 10080 MINUTES",
        ),
        (with("timeout", json!("six")), "timeout must be an integer"),
        (
            with("downloadRandomizeTime", json!(3)),
            "downloadRandomizeTime must be between 0 and 2 HOURS",
        ),
        (
            download_too_long,
            "downloadRandomizeTime must be smaller than the timeout",
        ),
        (
            with("patchTuesdayPlusXDays", json!("0")),
            "patchTuesdayPlusXDays must be between -27 and -1 or between 1 and 27",
        ),
        (
            with("patchTuesdayPlusXDays", json!(28)),
            "patchTuesdayPlusXDays",
        ),
        (
            with("dayOfMonth", json!(32)),
            "dayOfMonth must be between 1 and 31",
        ),
        (
            with("recurringDayOfMonth", json!("6")),
            "recurringDayOfMonth must be between 1 and 5",
        ),
        (
            with("recurringWeekDayOfMonth", json!(7)),
            "recurringWeekDayOfMonth must be between 0 and 6",
        ),
        (
            with("monthlyRecurringType", json!(2)),
            "monthlyRecurringType must be one of 0, 1",
        ),
        (
            with("dynamicQQLType", json!(3)),
            "dynamicQQLType must be one of 0, 1, 2",
        ),
        (
            with("customPatchURLId", json!("abc")),
            "customPatchURLId must be an integer",
        ),
        (
            with(
                "notification",
                json!({"notificationConfigs": {"completedPercentage": "0"}}),
            ),
            "notification.notificationConfigs.completedPercentage must be between 1 and 100",
        ),
        (
            with(
                "preDeployment",
                json!({"deferment": {"count": 100, "interval": 1, "intervalUnit": "HOURS"}}),
            ),
            "preDeployment.deferment.count must be between 1 and 99",
        ),
        (
            with(
                "preDeployment",
                json!({"deferment": {"count": 3, "interval": 25, "intervalUnit": "HOURS"}}),
            ),
            "preDeployment.deferment.interval must be between 1 and 24 HOURS",
        ),
        (
            with(
                "postDeployment",
                json!({"rebootOption": {"deferment": {"count": 3, "interval": 1441, "intervalUnit": "MINUTES"}}}),
            ),
            "postDeployment.rebootOption.deferment.interval must be between 1 and 1440 MINUTES",
        ),
        (
            with(
                "postDeployment",
                json!({"rebootCountdown": {"interval": 0, "intervalUnit": "MINUTES"}}),
            ),
            "postDeployment.rebootCountdown.interval must be between 1 and 1440 MINUTES",
        ),
        (
            with(
                "postDeployment",
                json!({"rebootCountdown": {"interval": 1, "intervalUnit": "SECONDS"}}),
            ),
            "postDeployment.rebootCountdown.intervalUnit",
        ),
        (
            with("preDeployActions", json!([{"action": "Reboot"}])),
            "preDeployActions[0].action: \"Reboot\"",
        ),
        (
            with(
                "preDeployActions",
                json!([{"action": "Run Script", "scriptType": "bat", "script": b64("x")}]),
            ),
            "preDeployActions[0].scriptType",
        ),
        (
            with(
                "postDeployActions",
                json!([{"action": "Install Software", "detectionScriptType": "vbs"}]),
            ),
            "postDeployActions[0].detectionScriptType",
        ),
        (
            with(
                "preDeployActions",
                json!([{"action": "Run Script", "scriptType": "sh"}]),
            ),
            "preDeployActions[0].script is required",
        ),
        (
            with(
                "preDeployActions",
                json!([{"action": "Run Script", "actionType": "postdeploy", "script": b64("x")}]),
            ),
            "preDeployActions[0].actionType",
        ),
        (
            with(
                "postDeployActions",
                json!([{"action": "Run Script", "script": "!!not base64!!"}]),
            ),
            "postDeployActions[0].script: not valid base64",
        ),
        (
            with(
                "preDeployActions",
                json!([{"action": "Run Script", "detectionScript": "@@@", "script": b64("x")}]),
            ),
            "preDeployActions[0].detectionScript: not valid base64",
        ),
        (
            with(
                "preDeployActions",
                json!([{"action": "Run Script",
                "script": format!("{}/{}/Script", sim.customer_id(), pre_action.as_str().unwrap())}]),
            ),
            "preDeployActions[0].script: ",
        ),
        (
            with("linkedJobId", json!("9d5e1f38-0000-4000-8000-000000000000")),
            "linkedJobId: no deployment job",
        ),
        (
            with("chainedJobRule", rule(json!(100), json!([pre_action]))),
            "chainedJobRule requires linkedJobId",
        ),
        (
            chained_bad_ids,
            "chainedJobRule[0].actionIds[0]: not-an-action is not a post-deploy action",
        ),
        (
            chained_bad_threshold,
            "chainedJobRule[0].threshold must be between 1 and 100",
        ),
        (chained_bad_condition, "chainedJobRule[0].condition"),
        (chained_bad_field, "chainedJobRule[0].field"),
        (with("name", json!(5)), "name: invalid type"),
        (
            with("preDeployActions", json!({"a": 1})),
            "preDeployActions: invalid type",
        ),
        (
            with("postDeployActions", json!([{"params": {"timeout": true}}])),
            "postDeployActions[0].params.timeout: ",
        ),
    ];
    for (body, expected) in &cases {
        let a = api.create(body).await;
        assert_eq!(a.status, 400, "{body}: {:?}", a.body);
        let (code, message) = a.error();
        assert_eq!(code, "400");
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?} for {body}"
        );
    }
    // Errors never echo script content.
    let a = api
        .create(&with(
            "preDeployActions",
            json!([{"action": "Run Script", "script": "secret-content!"}]),
        ))
        .await;
    assert!(!a.error().1.contains("secret-content"));
    assert_eq!(sim.job_count(), 1, "nothing but the parent was stored");
    assert_eq!(sim.count_status(CREATE, 400) as usize, cases.len() + 1);

    // Cycles and self-links are refused on update.
    let child = create(&api, &with("linkedJobId", json!(parent_id))).await;
    let a = api
        .update(&parent_id, &json!({"linkedJobId": id_of(&child)}))
        .await;
    assert_eq!(a.status, 400);
    assert!(a.error().1.contains("cycle"), "{:?}", a.error());
    let a = api
        .update(&parent_id, &json!({"linkedJobId": parent_id}))
        .await;
    assert!(a.error().1.contains("linked to itself"), "{:?}", a.error());
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let (sim, api) = default_sim().await;
    let id = id_of(&create(&api, &job("x")).await);
    let url = |p: &str| format!("{}{p}", sim.base_url());
    let bearer = format!("Bearer {}", api.token);
    let cases: Vec<(Method, String, &'static str, Vec<u8>)> = vec![
        (
            Method::POST,
            url(CREATE_PATH),
            "application/json",
            b"{".to_vec(),
        ),
        (
            Method::POST,
            url(CREATE_PATH),
            "application/json",
            b"[]".to_vec(),
        ),
        (
            Method::POST,
            url(CREATE_PATH),
            "application/json",
            b"\"job\"".to_vec(),
        ),
        (
            Method::POST,
            url(CREATE_PATH),
            "application/json",
            vec![0xff, 0xfe],
        ),
        (
            Method::POST,
            url(CREATE_PATH),
            "text/plain",
            br#"{"name":"x"}"#.to_vec(),
        ),
        (
            Method::PATCH,
            url(&format!("/pm/v1/deploymentjob/update/{id}")),
            "application/json",
            b"nul".to_vec(),
        ),
        (
            Method::PATCH,
            url(&format!("/pm/v1/deploymentjob/update/{id}")),
            "application/json",
            b"1".to_vec(),
        ),
        (
            Method::DELETE,
            url("/pm/v1/deploymentjobs"),
            "application/json",
            b"{}".to_vec(),
        ),
        (
            Method::DELETE,
            url("/pm/v1/deploymentjobs"),
            "application/json",
            br#"{"ids": []}"#.to_vec(),
        ),
        (
            Method::DELETE,
            url("/pm/v1/deploymentjobs"),
            "application/json",
            br#"{"ids": "x"}"#.to_vec(),
        ),
        (
            Method::POST,
            url("/pm/v1/deploymentjobs/update/status/Enabled"),
            "application/json",
            b"[]".to_vec(),
        ),
        (
            Method::POST,
            url("/pm/v1/deploymentjobs/update/status/Paused"),
            "application/json",
            format!(r#"{{"ids":["{id}"]}}"#).into_bytes(),
        ),
    ];
    for (method, url, content_type, body) in cases {
        let a = answer(
            api.http
                .request(method.clone(), &url)
                .header("authorization", &bearer)
                .header("content-type", content_type)
                .body(body.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            a.status,
            400,
            "{method} {url} {:?}: {:?}",
            String::from_utf8_lossy(&body),
            a.body
        );
        assert_eq!(a.error().0, "400");
        assert!(!a.error().1.is_empty());
    }
    // The job is untouched by all of that.
    assert_eq!(sim.job(&id).unwrap()["name"], "x");
}

const CREATE_PATH: &str = "/pm/v1/deploymentjob";

#[tokio::test]
async fn update_keeps_absent_keys_replaces_present_ones_and_ignores_status() {
    let (_sim, api) = default_sim().await;
    let mut body = job("before");
    body["description"] = json!("kept");
    body["assetIds"] = json!(["a1"]);
    body["approvedPatches"] = json!(["p1"]);
    let created = create(&api, &body).await;
    let id = id_of(&created);

    let a = api
        .update(
            &id,
            &json!({"id": "8c9d0e1f-0000-4000-8000-000000000000", "name": "after",
                    "assetIds": null, "status": "Enabled", "readOnly": true, "jobCategory": 7,
                    "createdBy": {"user": {"id": "x", "name": "mallory"}, "date": 1}}),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let updated = a.body;
    assert_eq!(updated["id"], id, "the path id wins");
    assert_eq!(updated["name"], "after");
    assert_eq!(updated["description"], "kept");
    assert_eq!(updated["assetIds"], Value::Null);
    assert_eq!(
        updated["status"], "Disabled",
        "status changes only through the status endpoint"
    );
    assert_eq!(updated["readOnly"], false);
    assert_eq!(updated["jobCategory"], 3);
    assert_eq!(updated["createdBy"], created["createdBy"]);
    assert_eq!(updated["updatedBy"]["user"]["name"], "sim");
    assert!(
        updated["updatedBy"]["date"].as_i64().unwrap()
            >= created["createdBy"]["date"].as_i64().unwrap()
    );
    assert_eq!(updated["deletedBy"], Value::Null);
    assert_eq!(updated["patchCount"], 1);
    assert_eq!(keys(&updated), keys(&created));

    // The count follows the approved patches when they change.
    let a = api
        .update(&id, &json!({"approvedPatches": ["p1", "p2"]}))
        .await;
    assert_eq!(a.body["patchCount"], 2);
}

#[tokio::test]
async fn actions_keep_known_ids_and_scripts_follow_their_actions() {
    let (sim, api) = default_sim().await;
    let customer = sim.customer_id().to_string();
    let created = create(
        &api,
        &json!({"name": "actions", "platform": "Linux", "scheduleType": "On-demand",
                "preDeployActions": [
                    {"action": "Run Script", "scriptType": "sh", "script": b64("echo pre"),
                     "params": {"actionItem": "pre", "timeout": 180}},
                    {"action": "Run Script", "actionItem": "makeCache Pre-Action",
                     "defaultScriptType": "MakeCache", "scriptType": "sh", "script": ""}],
                "postDeployActions": [
                    {"action": "Install Software", "script": b64("install"),
                     "detectionScript": b64("detect"), "detectionScriptType": "sh"}]}),
    )
    .await;
    let id = id_of(&created);
    let pre0 = created["preDeployActions"][0]["actionId"]
        .as_str()
        .unwrap()
        .to_string();
    let post0 = created["postDeployActions"][0]["actionId"]
        .as_str()
        .unwrap()
        .to_string();
    let pre_path = format!("{customer}/{pre0}/Script");
    let detect_path = format!("{customer}/{post0}/DetectionScript");
    assert_eq!(created["preDeployActions"][0]["script"], pre_path);
    assert_eq!(created["preDeployActions"][0]["actionType"], "predeploy");
    assert_eq!(
        created["preDeployActions"][1]["script"], "",
        "a blank script stays blank"
    );
    assert_eq!(
        created["postDeployActions"][0]["detectionScript"],
        detect_path
    );
    assert_eq!(created["postDeployActions"][0]["actionType"], "postdeploy");
    assert_eq!(sim.script(&pre_path).as_deref(), Some(&b"echo pre"[..]));
    assert_eq!(sim.script(&detect_path).as_deref(), Some(&b"detect"[..]));

    // Send the GET body back with a new action in front, the pre script replaced, and the
    // post action's detection script cleared.
    let mut body = api.job(&id).await.body;
    let mut pre = body["preDeployActions"].as_array().unwrap().clone();
    pre[0]["script"] = json!(b64("echo pre v2"));
    pre.insert(
        0,
        json!({"action": "Run Script", "scriptType": "sh", "script": b64("first"),
               "actionId": "ffffffff-0000-4000-8000-000000000000"}),
    );
    body["preDeployActions"] = json!(pre);
    body["postDeployActions"][0]["detectionScript"] = json!("");
    let updated = api.update(&id, &body).await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    let u = updated.body;
    let new_id = u["preDeployActions"][0]["actionId"].as_str().unwrap();
    assert_ne!(
        new_id, "ffffffff-0000-4000-8000-000000000000",
        "an unknown action id is replaced"
    );
    assert_ne!(new_id, pre0);
    assert_eq!(
        u["preDeployActions"][1]["actionId"], pre0,
        "a known id is kept"
    );
    assert_eq!(u["preDeployActions"][1]["script"], pre_path);
    assert_eq!(u["postDeployActions"][0]["actionId"], post0);
    assert_eq!(
        u["postDeployActions"][0]["script"],
        format!("{customer}/{post0}/Script")
    );
    assert_eq!(u["postDeployActions"][0]["detectionScript"], "");
    assert_eq!(sim.script(&pre_path).as_deref(), Some(&b"echo pre v2"[..]));
    assert_eq!(
        sim.script(&format!("{customer}/{new_id}/Script"))
            .as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(
        sim.script(&detect_path),
        None,
        "a cleared script is deleted"
    );
    assert_eq!(
        sim.script(&format!("{customer}/{post0}/Script")).as_deref(),
        Some(&b"install"[..]),
        "a script sent back as its own path is kept"
    );

    // A path of another action is refused; the same action duplicated gets a fresh id.
    let mut body = u.clone();
    body["postDeployActions"][0]["script"] = json!(pre_path);
    let a = api.update(&id, &body).await;
    assert_eq!(a.status, 400);
    assert!(
        a.error().1.starts_with("postDeployActions[0].script: "),
        "{:?}",
        a.error()
    );
    let mut body = u.clone();
    let dup = body["preDeployActions"][1].clone();
    body["preDeployActions"].as_array_mut().unwrap().push(dup);
    let a = api.update(&id, &body).await;
    assert_eq!(
        a.status, 400,
        "the copy's own path is not the original's: {:?}",
        a.body
    );
    let mut body = u.clone();
    let mut dup = body["preDeployActions"][1].clone();
    dup["script"] = json!(b64("copy"));
    body["preDeployActions"].as_array_mut().unwrap().push(dup);
    let a = api.update(&id, &body).await;
    assert_eq!(a.status, 200);
    let ids: Vec<&str> = a.body["preDeployActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["actionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids[1], pre0);
    assert_ne!(ids[3], pre0);

    // Removing actions deletes their scripts.
    let a = api
        .update(
            &id,
            &json!({"preDeployActions": [], "postDeployActions": null}),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(sim.script(&pre_path), None);
    assert_eq!(sim.script(&format!("{customer}/{post0}/Script")), None);
}

#[tokio::test]
async fn a_chained_rule_is_rendered_under_linked_to_job() {
    let (sim, api) = default_sim().await;
    let parent = create(
        &api,
        &json!({"name": "parent", "platform": "Windows", "scheduleType": "On-demand",
                "postDeployActions": [
                    {"action": "Run Script", "scriptType": "ps", "script": b64("one"),
                     "params": {"actionItem": "post", "timeout": 180}},
                    {"action": "Run Script", "scriptType": "ps", "script": b64("two")}]}),
    )
    .await;
    let pid = id_of(&parent);
    let a0 = parent["postDeployActions"][0]["actionId"].clone();
    let child = create(
        &api,
        &json!({"name": "child", "platform": "Windows", "scheduleType": "On-demand",
                "linkedJobId": pid,
                "chainedJobRule": [{"field": "postDeployAction", "actionIds": [a0],
                    "threshold": "90", "condition": "Post Actions were successfully executed"}]}),
    )
    .await;
    let cid = id_of(&child);
    assert!(
        child.get("chainedJobRule").is_none(),
        "not echoed at the top level"
    );
    let linked = &child["linkedToJob"][0];
    assert_eq!(linked["id"], pid);
    assert_eq!(linked["name"], "parent");
    assert_eq!(linked["schedule"], "On-Demand");
    assert_eq!(linked["linkedJobReferenceCount"], 1);
    assert_eq!(linked["previousRun"], Value::Null);
    let rule = &linked["chainedJobRule"][0];
    assert_eq!(
        keys(rule),
        [
            "id",
            "field",
            "threshold",
            "actionIds",
            "condition",
            "actionDetails"
        ]
    );
    assert_eq!(rule["id"], Value::Null);
    assert_eq!(rule["threshold"], 90);
    assert_eq!(
        rule["actionDetails"],
        json!([parent["postDeployActions"][0]])
    );
    assert_eq!(child["linkedJobs"], Value::Null);

    // Built from the parent's current state at read time.
    api.update(
        &pid,
        &json!({"name": "renamed parent", "scheduleType": "Daily",
                             "startDateTime": "2025-1-05 10:00:00 PM"}),
    )
    .await;
    let again = api.job(&cid).await.body;
    assert_eq!(again["linkedToJob"][0]["name"], "renamed parent");
    assert_eq!(again["linkedToJob"][0]["schedule"], "Daily");

    // Update without the rule keeps it; unlinking without mentioning it drops it.
    let mut body = again.clone();
    body["description"] = json!("edited");
    let kept = api.update(&cid, &body).await.body;
    assert_eq!(
        kept["linkedToJob"][0]["chainedJobRule"][0]["actionIds"],
        json!([a0])
    );
    let unlinked = api.update(&cid, &json!({"linkedJobId": null})).await;
    assert_eq!(unlinked.status, 200, "{:?}", unlinked.body);
    assert_eq!(unlinked.body["linkedToJob"], Value::Null);
    let relinked = api.update(&cid, &json!({"linkedJobId": pid})).await.body;
    assert_eq!(relinked["linkedToJob"][0]["chainedJobRule"], Value::Null);

    // A parent that vanished behind the API's back leaves an empty list.
    assert!(sim.console_delete(&pid));
    assert_eq!(api.job(&cid).await.body["linkedToJob"], json!([]));
}

// ---- lists --------------------------------------------------------------------------------

#[tokio::test]
async fn summaries_page_in_creation_order() {
    let (sim, api) = default_sim().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = job(&format!("job {i}"));
        if i % 2 == 1 {
            body["platform"] = json!("Linux");
        }
        ids.push(id_of(&create(&api, &body).await));
    }
    let names = |a: &Value| -> Vec<String> {
        a.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    let page = |q: &str| {
        let api = &api;
        let q = q.to_string();
        async move { api.get(&format!("{SUMMARY_PATH}?{q}")).await }
    };
    assert_eq!(
        names(&page("platform=Windows").await.body),
        ["job 0", "job 2", "job 4"]
    );
    assert_eq!(
        names(&page("platform=Linux&pageSize=1&pageNumber=1").await.body),
        ["job 3"]
    );
    assert_eq!(
        page("platform=Linux&pageSize=2&pageNumber=1").await.body,
        json!([])
    );
    assert_eq!(
        names(&page("pageSize=2&pageNumber=1").await.body),
        ["job 2", "job 3"]
    );
    assert_eq!(names(&page("").await.body).len(), 5, "no platform: both");
    assert_eq!(page("pageNumber=9").await.body, json!([]));

    let summary = &page("platform=Windows&pageSize=1").await.body[0];
    assert_eq!(summary["id"], ids[0]);
    assert_eq!(summary["isRecurring"], Value::Null);
    assert_eq!(summary["triggerStatus"], Value::Null);
    assert_eq!(summary["category"], 3);
    assert_eq!(summary["linkedJobReferenceCount"], 0);
    assert_eq!(
        summary["created"], summary["updated"],
        "never updated: updated = created"
    );
    assert!(summary.get("createdBy").is_none());

    let updated = api.update(&ids[0], &json!({"description": "d"})).await.body;
    let summary = &page("platform=Windows&pageSize=1").await.body[0];
    assert_eq!(summary["updated"], updated["updatedBy"]);

    for (q, code) in [
        ("platform=Mac", "400"),
        ("pageSize=0", "400"),
        ("pageSize=-1", "400"),
        ("pageNumber=x", "400"),
        ("pageSize=10001", "2501"),
    ] {
        let a = page(q).await;
        assert_eq!(a.status, 400, "{q}");
        assert_eq!(a.error().0, code, "{q}");
    }
    assert_eq!(page("pageSize=10000").await.status, 200);
    assert_eq!(sim.count_status(SUMMARY, 400), 5);
}

#[tokio::test]
async fn the_record_cap_answers_2501() {
    let (sim, api) = default_sim().await;
    for i in 0..10_001 {
        sim.put_job(
            json!({"id": format!("job-{i:05}"), "name": format!("job {i}"),
                           "platform": "Linux", "scheduleType": "On-demand"}),
        )
        .unwrap();
    }
    assert_eq!(sim.job_count(), 10_001);
    let get = |q: String| {
        let api = &api;
        async move { api.get(&format!("{SUMMARY_PATH}?platform=Linux&{q}")).await }
    };
    let last = get("pageSize=1000&pageNumber=9".into()).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.body.as_array().unwrap().len(), 1000);
    assert_eq!(last.body[999]["id"], "job-09999");
    let beyond = get("pageSize=1000&pageNumber=10".into()).await;
    assert_eq!(beyond.status, 400);
    assert_eq!(beyond.error().0, "2501");
    let straddling = get("pageSize=7&pageNumber=1428".into()).await;
    assert_eq!(
        straddling.error().0,
        "2501",
        "records 9996..10002 cross the cap"
    );
    // The other platform holds nothing: no cap there.
    let windows = api
        .get(&format!(
            "{SUMMARY_PATH}?platform=Windows&pageSize=10&pageNumber=5000"
        ))
        .await;
    assert_eq!(windows.body, json!([]));
    // With 10,000 records exactly, reading past the end is an empty page, not an error.
    sim.console_delete("job-00000");
    let past = get("pageSize=1000&pageNumber=10".into()).await;
    assert_eq!((past.status, past.body), (200, json!([])));
}

// ---- delete and status ----------------------------------------------------------------------

#[tokio::test]
async fn delete_reports_per_item_results() {
    let (sim, api) = default_sim().await;
    let parent = create(
        &api,
        &json!({"name": "parent", "platform": "Windows", "scheduleType": "On-demand",
                "postDeployActions": [{"action": "Run Script", "script": b64("x")}]}),
    )
    .await;
    let pid = id_of(&parent);
    let script_path = parent["postDeployActions"][0]["script"]
        .as_str()
        .unwrap()
        .to_string();
    let child = id_of(
        &create(
            &api,
            &json!({"name": "child", "platform": "Windows",
                                            "scheduleType": "On-demand", "linkedJobId": pid}),
        )
        .await,
    );
    let lone = id_of(&create(&api, &job("lone")).await);
    let ghost = "0d1e2f3a-0000-4000-8000-000000000000";

    let a = api
        .delete("/pm/v1/deploymentjobs", &json!({"ids": [lone, ghost, pid]}))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body[0],
        json!({"id": lone, "name": "lone", "status": "success"})
    );
    assert_eq!(a.body[1]["status"], "failure");
    assert_eq!(a.body[1]["id"], ghost);
    assert!(a.body[1].get("name").is_none());
    assert!(a.body[1]["error"].as_str().unwrap().contains("not found"));
    assert_eq!(a.body[2]["status"], "failure");
    assert_eq!(a.body[2]["name"], "parent");
    assert!(
        a.body[2]["error"].as_str().unwrap().contains(&child),
        "{}",
        a.body[2]
    );
    assert_eq!(sim.job_count(), 2);

    // A parent goes together with its children, whatever the order.
    let a = api
        .delete("/pm/v1/deploymentjobs", &json!({"ids": [pid, child]}))
        .await;
    assert_eq!(
        a.body[0],
        json!({"id": pid, "name": "parent", "status": "success"})
    );
    assert_eq!(
        a.body[1],
        json!({"id": child, "name": "child", "status": "success"})
    );
    assert_eq!(sim.job_count(), 0);
    assert_eq!(
        sim.script(&script_path),
        None,
        "a deleted job's scripts go too"
    );
    assert_eq!(api.job(&pid).await.status, 404);
    assert_eq!(sim.count_status(DELETE, 200), 2);
}

#[tokio::test]
async fn status_changes_follow_the_non_recurring_rule() {
    let (sim, api) = default_sim().await;
    let once = id_of(&create(&api, &job("on demand")).await);
    let mut daily = job("daily");
    daily["scheduleType"] = json!("Daily");
    daily["startDateTime"] = json!("2025-01-01 01:00:00 AM");
    daily["recurring"] = json!(true);
    let daily = id_of(&create(&api, &daily).await);
    let ghost = "0d1e2f3a-0000-4000-8000-000000000000";
    let status = |action: &'static str, ids: Value| {
        let api = &api;
        async move {
            api.post(
                &format!("/pm/v1/deploymentjobs/update/status/{action}"),
                &json!({"ids": ids}),
            )
            .await
        }
    };

    let a = status("Enabled", json!([once, daily, ghost])).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body[0],
        json!({"id": once, "name": "on demand", "status": "success"})
    );
    assert_eq!(a.body[1]["status"], "success");
    assert_eq!(a.body[2]["status"], "failure");
    let enabled = api.job(&once).await.body;
    assert_eq!(enabled["status"], "Enabled");
    assert_eq!(enabled["updatedBy"]["user"]["name"], "sim");

    let a = status("Disabled", json!([once, daily])).await;
    assert_eq!(
        a.body[0],
        json!({"id": once, "name": "on demand", "status": "failure",
               "error": "Non-recurring jobs cannot be disabled once enabled by user"})
    );
    assert_eq!(a.body[1]["status"], "success");
    assert_eq!(api.job(&once).await.body["status"], "Enabled");
    assert_eq!(api.job(&daily).await.body["status"], "Disabled");

    // PATCH does not change the status either way.
    let a = api.update(&daily, &json!({"status": "Enabled"})).await;
    assert_eq!(a.body["status"], "Disabled");

    let a = status("Paused", json!([daily])).await;
    assert_eq!(a.status, 400);
    assert_eq!(sim.count_status(STATUS, 200), 2);
    assert_eq!(sim.count_status(STATUS, 400), 1);

    // Enabling an enabled job again changes nothing and is not counted as a change.
    status("Enabled", json!([once])).await;
    let changes = sim.status_changes();
    let counted = |id: &str| changes.get(id).map(|c| (c.enabled, c.disabled));
    assert_eq!(counted(&once), Some((1, 0)));
    assert_eq!(counted(&daily), Some((1, 1)));
    assert_eq!(changes.len(), 2);
    // Every write is in the log, /auth and reads are not; reqwest sends no User-Agent here.
    let writes: Vec<(String, u16)> = sim
        .writes()
        .into_iter()
        .map(|w| (w.route, w.status))
        .collect();
    let expected: Vec<(String, u16)> = [
        (CREATE, 201),
        (CREATE, 201),
        (STATUS, 200),
        (STATUS, 200),
        (UPDATE, 200),
        (STATUS, 400),
        (STATUS, 200),
    ]
    .map(|(r, s)| (r.to_string(), s))
    .to_vec();
    assert_eq!(writes, expected);
    assert!(sim.writes().iter().all(|w| w.user_agent.is_none()));
}

// ---- faults, rate limits, counters ---------------------------------------------------------

#[tokio::test]
async fn status_faults_apply_for_their_times_then_clear() {
    let (sim, api) = default_sim().await;
    sim.set_fault(Fault::on(SUMMARY, FaultKind::Status { status: 503 }).times(2));
    let a = api.get(SUMMARY_PATH).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.error().0, "503");
    assert_eq!(api.get(SUMMARY_PATH).await.status, 503);
    assert_eq!(api.get(SUMMARY_PATH).await.status, 200);
    // Other routes were never affected.
    assert_eq!(api.create(&job("x")).await.status, 201);

    // Until cleared, over HTTP; an injected error takes no effect.
    let a = api
        .admin(
            Method::POST,
            "/faults",
            Some(&json!({"route": CREATE, "kind": "status", "status": 500})),
        )
        .await;
    assert_eq!(a.status, 204);
    for _ in 0..3 {
        assert_eq!(api.create(&job("y")).await.status, 500);
    }
    assert_eq!(sim.job_count(), 1);
    let listed = api.admin(Method::GET, "/faults", None).await;
    assert_eq!(
        listed.body,
        json!([{"route": CREATE, "times": null, "kind": "status", "status": 500}])
    );
    assert_eq!(api.admin(Method::DELETE, "/faults", None).await.status, 204);
    assert_eq!(api.create(&job("y")).await.status, 201);

    let bad = api
        .admin(
            Method::POST,
            "/faults",
            Some(&json!({"route": "GET /nope", "kind": "status", "status": 500})),
        )
        .await;
    assert_eq!(bad.status, 400);
    let bad = api
        .admin(Method::POST, "/faults", Some(&json!({"kind": "meltdown"})))
        .await;
    assert_eq!(bad.status, 400);
    let bad = api
        .admin(
            Method::POST,
            "/faults",
            Some(&json!({"kind": "status", "status": 204})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.error().1.contains("400-599"));
    assert_eq!(sim.count_status(SUMMARY, 503), 2);
    assert_eq!(sim.count_status(CREATE, 500), 3);
}

#[tokio::test]
async fn rate_limited_and_expire_token_faults() {
    let (sim, api) = default_sim().await;
    sim.set_fault(
        Fault::always(FaultKind::RateLimited {
            retry_after_secs: 7,
        })
        .times(1),
    );
    let a = api.get(SUMMARY_PATH).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("7"));
    assert_eq!(a.header("x-ratelimit-towait-sec"), Some("7"));
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(a.header("x-ratelimit-limit"), Some("300"));
    assert_eq!(a.header("x-ratelimit-window-sec"), Some("3600"));
    assert_eq!(api.get(SUMMARY_PATH).await.status, 200);

    sim.set_fault(Fault::on(GET_JOB, FaultKind::ExpireToken).times(1));
    let id = id_of(&create(&api, &job("x")).await);
    let a = api.job(&id).await;
    assert_eq!(a.status, 401);
    assert!(a.error().1.contains("expired"));
    assert_eq!(api.job(&id).await.status, 200, "the same token works again");

    // Latency faults delay and then serve normally.
    sim.set_fault(Fault::on(GET_JOB, FaultKind::Latency { ms: 20 }).times(1));
    assert_eq!(api.job(&id).await.status, 200);
    assert_eq!(sim.count_status(GET_JOB, 200), 2);
}

#[tokio::test]
async fn commit_then_fail_takes_effect_and_answers_500() {
    let (sim, api) = default_sim().await;
    sim.set_fault(
        Fault::on(
            CREATE,
            FaultKind::CommitThenFail {
                drop_connection: false,
            },
        )
        .times(1),
    );
    let a = api.create(&job("ambiguous")).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.error().0, "500");
    assert_eq!(sim.job_count(), 1, "the create happened");
    assert_eq!(sim.jobs()[0]["name"], "ambiguous");
    assert_eq!(sim.count_status(CREATE, 500), 1);
    assert_eq!(api.create(&job("second")).await.status, 201);
}

#[tokio::test]
async fn commit_then_fail_can_drop_the_connection_mid_response() {
    let (sim, api) = default_sim().await;
    let id = id_of(&create(&api, &job("before")).await);
    sim.set_fault(
        Fault::on(
            UPDATE,
            FaultKind::CommitThenFail {
                drop_connection: true,
            },
        )
        .times(1),
    );
    let url = format!("{}/pm/v1/deploymentjob/update/{id}", sim.base_url());
    let resp = api
        .http
        .patch(&url)
        .header("authorization", format!("Bearer {}", api.token))
        .json(&json!({"name": "after"}))
        .send()
        .await
        .expect("the head arrives");
    assert_eq!(resp.status(), 200, "the head says the update succeeded");
    let body = resp.bytes().await;
    assert!(
        body.is_err(),
        "the body must break, not end cleanly: {body:?}"
    );
    assert_eq!(
        sim.job(&id).unwrap()["name"],
        "after",
        "the update took effect"
    );
    assert_eq!(sim.count(UPDATE), 1);
    // The fault is spent; the next update answers normally.
    let a = api.update(&id, &json!({"name": "again"})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["name"], "again");
}

#[tokio::test]
async fn the_rate_limit_rolls_per_subscription_and_exempts_auth() {
    let (sim, api) = sim_and_api(SimConfig {
        rate_limit: Some(RateLimit {
            limit: 3,
            window: Duration::from_secs(3600),
        }),
        ..SimConfig::default()
    })
    .await;
    for remaining in ["2", "1", "0"] {
        let a = api.get(SUMMARY_PATH).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(a.header("x-ratelimit-window-sec"), Some("3600"));
        assert_eq!(a.header("x-ratelimit-remaining"), Some(remaining));
    }
    let a = api.create(&job("x")).await;
    assert_eq!(a.status, 429);
    let wait: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&wait), "{wait}");
    assert_eq!(a.header("x-ratelimit-towait-sec"), a.header("retry-after"));
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(a.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(sim.job_count(), 0);
    // /auth is exempt and carries no limit headers.
    let other = Api::login(&sim.base_url(), "sim", "sim").await;
    assert_eq!(
        other.get(SUMMARY_PATH).await.status,
        429,
        "the limit is per subscription"
    );
    assert_eq!(
        sim.count_status(qpm_operator::qualys::Endpoint::Auth.as_str(), 201),
        2
    );
    assert_eq!(sim.count_status(SUMMARY, 429), 1);
    assert_eq!(sim.count_status(CREATE, 429), 1);
}

#[tokio::test]
async fn an_error_rate_of_one_fails_every_api_call() {
    let sim = start(SimConfig {
        error_rate: 1.0,
        seed: 42,
        ..SimConfig::default()
    })
    .await;
    let token = sim.token_for("sim").unwrap();
    let http = http();
    for path in [SUMMARY_PATH, "/pm/v1/deploymentjob/x"] {
        let a = answer(
            http.get(format!("{}{path}", sim.base_url()))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!([500, 502, 503].contains(&a.status), "{}", a.status);
    }
    let resp = http
        .post(format!("{}/auth", sim.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("username", "sim"),
            ("password", "sim"),
            ("token", "true"),
        ]))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error());
    // The admin surface is not part of the gateway.
    let jobs = http
        .get(format!("{}/_sim/jobs", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(jobs.status(), 200);
    assert_eq!(sim.counters().total(), 3);
}

#[tokio::test]
async fn counters_are_keyed_by_route_template_and_status() {
    let (sim, api) = default_sim().await;
    let id = id_of(&create(&api, &job("x")).await);
    api.job(&id).await;
    api.job("missing").await;
    api.update(&id, &json!({"name": "y"})).await;
    api.get(SUMMARY_PATH).await;
    api.post(
        "/pm/v1/deploymentjobs/update/status/Enabled",
        &json!({"ids": [id]}),
    )
    .await;
    api.delete("/pm/v1/deploymentjobs", &json!({"ids": [id]}))
        .await;
    api.admin(Method::GET, "/jobs", None).await;
    api.get("/pm/v1/nothing-here").await;

    let c = sim.counters();
    assert_eq!(
        c.count_status(qpm_operator::qualys::Endpoint::Auth.as_str(), 201),
        1
    );
    assert_eq!(c.count_status(CREATE, 201), 1);
    assert_eq!(c.count(GET_JOB), 2);
    assert_eq!(c.count_status(GET_JOB, 200), 1);
    assert_eq!(c.count_status(GET_JOB, 404), 1);
    assert_eq!(c.count_status(UPDATE, 200), 1);
    assert_eq!(c.count_status(SUMMARY, 200), 1);
    assert_eq!(c.count_status(STATUS, 200), 1);
    assert_eq!(c.count_status(DELETE, 200), 1);
    assert_eq!(
        c.total(),
        8,
        "admin calls and unknown routes are not counted: {c:?}"
    );
    assert_eq!(sim.count(UPDATE), 1);

    let over_http = api.admin(Method::GET, "/counters", None).await.body;
    assert_eq!(over_http[GET_JOB], json!({"200": 1, "404": 1}));
    assert_eq!(serde_json::to_value(&c.0).unwrap(), over_http);
    assert_eq!(
        api.admin(Method::DELETE, "/counters", None).await.status,
        204
    );
    assert_eq!(sim.counters().total(), 0);
    api.job(&id).await;
    sim.reset_counters();
    assert_eq!(sim.counters().total(), 0);
}

// ---- admin surface and state file ----------------------------------------------------------

#[tokio::test]
async fn admin_endpoints_mirror_the_handle() {
    let (sim, api) = default_sim().await;
    // A 2022-format document keeps its 66 keys.
    let old = seed("01-windows-install.request.json");
    let id = old["id"].as_str().unwrap();
    let a = api
        .admin(Method::PUT, &format!("/jobs/{id}"), Some(&old))
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(keys(&a.body).len(), 66);
    assert_eq!(a.body["patchTuesdayPlusXDays"], "-12", "stored verbatim");
    let other = api.admin(Method::PUT, "/jobs/another-id", Some(&old)).await;
    assert_eq!(
        other.status, 400,
        "the path id and the document id must agree"
    );
    assert_eq!(
        api.admin(Method::GET, &format!("/jobs/{id}"), None)
            .await
            .body,
        a.body
    );
    assert_eq!(
        api.admin(Method::GET, "/jobs", None).await.body,
        json!([a.body])
    );
    assert_eq!(sim.job(id).unwrap(), a.body);

    // A console edit: merge patch, stamped by the console user.
    let edited = api
        .admin(
            Method::PATCH,
            &format!("/jobs/{id}"),
            Some(&json!({"name": "edited in the UI", "description": null})),
        )
        .await;
    assert_eq!(edited.status, 200);
    assert_eq!(edited.body["name"], "edited in the UI");
    assert!(edited.body.get("description").is_none());
    assert_eq!(edited.body["updatedBy"]["user"]["name"], "console");
    assert_ne!(edited.body["updatedBy"], old["updatedBy"]);
    sim.console_edit(id, json!({"timeout": 12})).unwrap();
    assert_eq!(api.job(id).await.body["timeout"], 12);
    assert!(sim.console_edit("missing", json!({})).is_err());

    // put_job needs an id; console delete makes the job vanish.
    assert!(sim.put_job(json!({"name": "no id"})).is_err());
    assert!(sim.put_job(json!([1, 2])).is_err());
    assert_eq!(
        api.admin(Method::DELETE, &format!("/jobs/{id}"), None)
            .await
            .status,
        204
    );
    assert_eq!(api.job(id).await.status, 404);
    assert_eq!(
        api.admin(Method::DELETE, &format!("/jobs/{id}"), None)
            .await
            .status,
        404
    );
    assert!(!sim.console_delete(id));

    // Scripts over HTTP; reset empties everything and expires tokens.
    let made = create(
        &api,
        &json!({"name": "s", "platform": "Linux", "scheduleType": "On-demand",
        "preDeployActions": [{"action": "Run Script", "script": b64("uname -a")}]}),
    )
    .await;
    let path = made["preDeployActions"][0]["script"].as_str().unwrap();
    let raw = api
        .http
        .get(format!("{}/_sim/scripts/{path}", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.bytes().await.unwrap(), "uname -a");
    let missing = api.admin(Method::GET, "/scripts/a/b/Script", None).await;
    assert_eq!(missing.status, 404);
    sim.set_fault(Fault::always(FaultKind::Status { status: 500 }));
    assert_eq!(api.admin(Method::POST, "/reset", None).await.status, 204);
    assert_eq!(sim.job_count(), 0);
    assert_eq!(sim.script(path), None);
    assert_eq!(sim.counters().total(), 0);
    assert_eq!(
        api.get(SUMMARY_PATH).await.status,
        401,
        "tokens expired, faults cleared"
    );
    sim.reset();
}

#[tokio::test]
async fn unknown_routes_are_qualys_404s() {
    let (_sim, api) = default_sim().await;
    let a = api.get("/pm/v2/whatever").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.error().0, "404");
    assert!(a.error().1.contains("/pm/v2/whatever"));
    let a = api
        .send(Method::PUT, "/pm/v1/deploymentjob", Some(&job("x")))
        .await;
    assert_eq!(a.status, 405);
    assert_eq!(a.error().0, "405");
}

fn temp_state_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "qpm-sim-{tag}-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state.json")
}

#[tokio::test]
async fn the_state_file_round_trips() {
    let path = temp_state_file("state");
    let config = SimConfig {
        state_file: Some(path.clone()),
        ..SimConfig::default()
    };
    let (sim, api) = sim_and_api(config.clone()).await;
    let made = create(
        &api,
        &json!({"name": "kept", "platform": "Windows", "scheduleType": "On-demand",
        "postDeployActions": [{"action": "Run Script", "script": b64("Get-Date")}]}),
    )
    .await;
    let id = id_of(&made);
    let script = made["postDeployActions"][0]["script"]
        .as_str()
        .unwrap()
        .to_string();
    // Saved in the background while the simulator runs.
    eventually("the state file is written", || async { path.exists() }).await;
    let token = api.token.clone();
    sim.shutdown().await;

    let text = std::fs::read_to_string(&path).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(file["version"], 1);
    assert_eq!(file["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(file["scripts"][&script], b64("Get-Date"));
    assert!(!text.contains(&token), "no tokens in the state file");

    let (again, api) = sim_and_api(config).await;
    assert_eq!(api.job(&id).await.body, made);
    assert_eq!(again.script(&script).as_deref(), Some(&b"Get-Date"[..]));
    // A dropped handle saves too.
    api.update(&id, &json!({"name": "renamed"})).await;
    drop(again);
    let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(file["jobs"][0]["name"], "renamed");

    // A broken file is an error at start, not a silent empty simulator.
    std::fs::write(&path, b"{\"version\": 9}").unwrap();
    let err = start_sim(SimConfig {
        state_file: Some(path.clone()),
        ..SimConfig::default()
    })
    .await
    .err()
    .expect("refused");
    assert!(format!("{err:#}").contains("version 9"), "{err:#}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn the_seed_user_can_be_configured_and_auth_respects_it() {
    let sim = start(SimConfig {
        users: vec![SimUser::new("alice", "pa:ss")],
        ..SimConfig::default()
    })
    .await;
    let http = http();
    let token = auth(&http, &sim.base_url(), "alice", "pa:ss").await;
    assert!(!token.is_empty());
    assert!(sim.token_for("sim").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_see_consistent_state() {
    let (sim, api) = default_sim().await;
    let api = std::sync::Arc::new(api);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let made = create(&api, &job(&format!("concurrent {i}"))).await;
            let id = id_of(&made);
            let a = api
                .update(&id, &json!({"description": format!("d{i}")}))
                .await;
            assert_eq!(a.status, 200);
            assert_eq!(api.job(&id).await.body["description"], format!("d{i}"));
            id
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "ids are unique");
    }
    assert_eq!(sim.job_count(), 24);
    assert_eq!(sim.count_status(CREATE, 201), 24);
    assert_eq!(sim.count_status(UPDATE, 200), 24);
    let all = api.get(&format!("{SUMMARY_PATH}?pageSize=100")).await.body;
    assert_eq!(all.as_array().unwrap().len(), 24);
}
