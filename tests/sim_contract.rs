//! The simulator against the seed: each of the three "Update Deployment Job" examples,
//! reproduced over real HTTP, must give the seed's response field by field, except for the
//! differences listed here with their reasons.

mod sim_support;

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use qpm_operator::sim::{SimConfig, SimHandle, SimUser};
use reqwest::Method;
use serde_json::{Value, json};
use sim_support::{Api, diff, diff_path, keys, seed, start};

const CUSTOMER: &str = "bc023fd7-4290-f28f-8181-95a46f519f52";
const SEED_USER_ID: &str = "c4c71f94-4ef6-7e6f-8260-11704fa58172";

/// The seed's users: the 2022 example masks the same account under another name.
fn seed_config() -> SimConfig {
    let user = |name: &str| SimUser {
        id: SEED_USER_ID.to_string(),
        ..SimUser::new(name, "pw")
    };
    SimConfig {
        users: vec![user("quays_rw17"), user("qxxxs_rxx7")],
        customer_id: CUSTOMER.to_string(),
        ..SimConfig::default()
    }
}

struct Example {
    name: &'static str,
    /// Paths that may differ, each with the reason.
    allowed: &'static [(&'static str, &'static str)],
}

const RESTAMPED: (&str, &str) = (
    "updatedBy.date",
    "the simulator stamps updatedBy with the caller and now on every update; the seed's stamp is from its capture",
);

const EXAMPLES: [Example; 3] = [
    Example {
        name: "01-windows-install",
        allowed: &[(
            "updatedBy.date",
            "ex.01 is the older (2022) hand-curated sample, which was not re-stamped (testdata/seed/README.md); the simulator follows ex.02/ex.03 and re-stamps",
        )],
    },
    Example {
        name: "02-linux-rollback",
        allowed: &[RESTAMPED],
    },
    Example {
        name: "03-chained-job",
        allowed: &[RESTAMPED],
    },
];

/// The top-level key order the simulator must produce for an example: the seed's, except that
/// the 2022 format (ex.01) lists `additionalDynamicPatchesQQL` before `additionalDynamicQQLType`
/// where the current format (ex.02/ex.03, the model's canonical order) has them the other way.
fn seed_key_order(ex: &Example) -> Vec<String> {
    let mut order = keys(&response(ex));
    if ex.name == "01-windows-install" {
        let a = order
            .iter()
            .position(|k| k == "additionalDynamicPatchesQQL")
            .unwrap();
        let b = order
            .iter()
            .position(|k| k == "additionalDynamicQQLType")
            .unwrap();
        assert_eq!(b, a + 1, "the 2022 order this test knows");
        order.swap(a, b);
    }
    order
}

fn request(ex: &Example) -> Value {
    seed(&format!("{}.request.json", ex.name))
}

fn response(ex: &Example) -> Value {
    seed(&format!("{}.response.json", ex.name))
}

/// Check `actual` against the seed response: the differing paths must be exactly the allowed
/// ones (an allowed difference that does not occur is reported too: the list must stay true).
fn assert_matches_seed(ex_name: &str, expected: &Value, actual: &Value, allowed: &[(&str, &str)]) {
    let differences = diff(expected, actual);
    let found: BTreeSet<&str> = differences.iter().map(|d| diff_path(d)).collect();
    let allowed_paths: BTreeSet<&str> = allowed.iter().map(|(p, _)| *p).collect();
    let unexpected: Vec<&String> = differences
        .iter()
        .filter(|d| !allowed_paths.contains(diff_path(d)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{ex_name}: differences from the seed response:\n{}",
        unexpected
            .iter()
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let missing: Vec<&&str> = allowed_paths.difference(&found).collect();
    assert!(
        missing.is_empty(),
        "{ex_name}: allowed differences that did not occur (update the list): {missing:?}"
    );
}

/// The parent of ex.03, as far as the response's `linkedToJob[0]` shows it.
fn parent_of_example_03() -> Value {
    let linked = &response(&EXAMPLES[2])["linkedToJob"][0];
    assert_eq!(linked["schedule"], "On-Demand");
    json!({
        "customerId": linked["customerId"],
        "id": linked["id"],
        "schemaVersion": "1.0",
        "name": linked["name"],
        "type": linked["type"],
        "status": linked["status"],
        "platform": "Windows",
        "scheduleType": "On-demand",
        "createdBy": linked["createdBy"],
        "postDeployActions": linked["chainedJobRule"][0]["actionDetails"],
    })
}

async fn put(api: &Api, doc: &Value) {
    let id = doc["id"].as_str().expect("an id");
    let a = api
        .admin(Method::PUT, &format!("/jobs/{id}"), Some(doc))
        .await;
    assert_eq!(a.status, 200, "PUT /_sim/jobs/{id}: {:?}", a.body);
}

/// Load the job as it stood before the seed's update (and, for ex.03, its parent and two
/// more children so `linkedJobReferenceCount` is 3).
async fn load_before_state(api: &Api, ex: &Example) {
    if ex.name == "03-chained-job" {
        let parent = parent_of_example_03();
        put(api, &parent).await;
        for (i, id) in [
            "6f1c2a53-0b9d-4c55-9d2e-1f0e8b7a0c01",
            "6f1c2a53-0b9d-4c55-9d2e-1f0e8b7a0c02",
        ]
        .iter()
        .enumerate()
        {
            put(
                api,
                &json!({"id": id, "name": format!("sibling {i}"), "platform": "Windows",
                        "scheduleType": "On-demand", "linkedJobId": parent["id"]}),
            )
            .await;
        }
    }
    put(api, &request(ex)).await;
}

async fn seed_client(sim: &SimHandle, ex: &Example) -> Api {
    let user = response(ex)["updatedBy"]["user"]["name"]
        .as_str()
        .expect("a user")
        .to_string();
    let mut api = Api::login(&sim.base_url(), &user, "pw").await;
    // The seed's update page sends the bare token.
    api.bearer = false;
    api
}

#[tokio::test]
async fn each_seed_update_gives_the_seed_response() {
    for ex in &EXAMPLES {
        let sim = start(seed_config()).await;
        let api = seed_client(&sim, ex).await;
        load_before_state(&api, ex).await;
        let body = request(ex);
        let id = body["id"].as_str().unwrap();
        let answer = api.update(id, &body).await;
        assert_eq!(answer.status, 200, "{}: {:?}", ex.name, answer.body);

        let expected = response(ex);
        assert_matches_seed(ex.name, &expected, &answer.body, ex.allowed);
        assert_eq!(
            keys(&answer.body),
            seed_key_order(ex),
            "{}: key order",
            ex.name
        );
        // The re-stamped date is the caller's and recent, not arbitrary.
        let stamped = answer.body["updatedBy"]["date"].as_i64().unwrap();
        assert!(
            stamped > 1_735_645_525_699,
            "{}: updatedBy.date {stamped}",
            ex.name
        );
        assert_eq!(
            answer.body["updatedBy"]["user"],
            expected["updatedBy"]["user"]
        );
        // What GET returns now is what the update answered.
        assert_eq!(
            api.job(id).await.body,
            answer.body,
            "{}: GET after PATCH",
            ex.name
        );
        assert_eq!(
            sim.count_status(qpm_operator::qualys::Endpoint::Update.as_str(), 200),
            1
        );
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn scripts_sent_as_base64_are_stored_at_their_paths() {
    let sim = start(seed_config()).await;
    for ex in &EXAMPLES[1..] {
        let api = seed_client(&sim, ex).await;
        load_before_state(&api, ex).await;
        let body = request(ex);
        let answer = api.update(body["id"].as_str().unwrap(), &body).await;
        assert_eq!(answer.status, 200);
        for list in ["preDeployActions", "postDeployActions"] {
            let sent = body[list][0]["script"].as_str().unwrap();
            let path = answer.body[list][0]["script"].as_str().unwrap();
            let content = STANDARD.decode(sent).unwrap();
            assert_eq!(sim.script(path).as_deref(), Some(&content[..]), "{path}");
            let over_http = api
                .http
                .get(format!("{}/_sim/scripts/{path}", api.base))
                .send()
                .await
                .unwrap();
            assert_eq!(over_http.status(), 200);
            assert_eq!(over_http.bytes().await.unwrap(), content);
        }
    }
    assert_eq!(
        sim.script(&format!(
            "{CUSTOMER}/b09fef6a-12ea-41af-9152-17005f0828d4/Script"
        ))
        .as_deref(),
        Some(&b"ls"[..])
    );
}

/// Ids the simulator assigned → the seed's ids, so a round trip can be compared with the seed.
fn map_ids(value: &Value, pairs: &[(String, String)]) -> Value {
    let mut text = value.to_string();
    for (from, to) in pairs {
        text = text.replace(from.as_str(), to);
    }
    serde_json::from_str(&text).unwrap()
}

fn action_ids(job: &Value, list: &str) -> Vec<String> {
    job[list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["actionId"].as_str().unwrap().to_string())
        .collect()
}

/// A create body from a seed request: scripts as content (a storage path names no script of a
/// job that does not exist yet).
fn create_body(ex: &Example) -> Value {
    let mut body = request(ex);
    for list in ["preDeployActions", "postDeployActions"] {
        for action in body[list].as_array_mut().into_iter().flatten() {
            for key in ["script", "detectionScript"] {
                if action[key].as_str().is_some_and(|s| s.contains('/')) {
                    action[key] = json!(STANDARD.encode(format!("echo {key}")));
                }
            }
        }
    }
    body
}

#[tokio::test]
async fn create_get_patch_round_trips_from_an_empty_simulator() {
    for ex in &EXAMPLES {
        let sim = start(seed_config()).await;
        let api = seed_client(&sim, ex).await;
        let expected = response(ex);
        let mut body = create_body(ex);
        let mut pairs = Vec::new();
        let mut allowed: Vec<(&str, &str)> = vec![
            (
                "createdBy.date",
                "the job is created now, not at the seed's time",
            ),
            RESTAMPED,
        ];

        if ex.name == "03-chained-job" {
            let parent = parent_of_example_03();
            let mut create_parent = parent.clone();
            // `Prepared` is a server state, not something a create may ask for.
            create_parent["status"] = json!("Disabled");
            create_parent["postDeployActions"][0]["script"] =
                json!(STANDARD.encode("Write-Output post"));
            let made = api.create(&create_parent).await;
            assert_eq!(made.status, 201, "{:?}", made.body);
            let parent_id = made.body["id"].as_str().unwrap().to_string();
            let parent_action = action_ids(&made.body, "postDeployActions").remove(0);
            for i in 0..2 {
                let child = api
                    .create(
                        &json!({"name": format!("sibling {i}"), "platform": "Windows",
                                    "scheduleType": "On-demand", "linkedJobId": parent_id}),
                    )
                    .await;
                assert_eq!(child.status, 201, "{:?}", child.body);
            }
            body["linkedJobId"] = json!(parent_id);
            body["chainedJobRule"][0]["actionIds"] = json!([parent_action]);
            pairs.push((parent_id, parent["id"].as_str().unwrap().to_string()));
            pairs.push((
                parent_action,
                parent["postDeployActions"][0]["actionId"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
            allowed.push((
                "linkedToJob[0].createdBy.date",
                "the parent is created now, not at the seed's time",
            ));
            allowed.push((
                "linkedToJob[0].status",
                "Prepared is a server state; a parent created through the API is Disabled",
            ));
        }
        if ex.name == "01-windows-install" {
            allowed.extend([
                (
                    "patchCount",
                    "a created job counts its approved patches; the 2022 sample shows null",
                ),
                (
                    "applicableAssetCount",
                    "a created job counts its target assets; the 2022 sample shows 0",
                ),
                (
                    "postDeployment.onComplete.alwaysShowCompletedPrompt",
                    "new jobs are in the current format",
                ),
                (
                    "jobStartCountdown",
                    "new jobs carry all 72 keys; the 2022 format lacks six",
                ),
                ("passwordAction", "new jobs carry all 72 keys"),
                ("subCategory", "new jobs carry all 72 keys"),
                ("isVulnContext", "new jobs carry all 72 keys"),
                ("remediationQids", "new jobs carry all 72 keys"),
                ("isAssetImported", "new jobs carry all 72 keys"),
            ]);
        }

        let created = api.create(&body).await;
        assert_eq!(created.status, 201, "{}: {:?}", ex.name, created.body);
        let id = created.body["id"].as_str().unwrap().to_string();
        assert_ne!(id, body["id"].as_str().unwrap(), "a new job gets a new id");
        assert_eq!(
            created.body["updatedBy"],
            json!({"user": null, "date": null})
        );
        assert_eq!(
            created.body["deletedBy"],
            json!({"user": null, "date": null})
        );
        assert_eq!(keys(&created.body).len(), 72);
        assert_eq!(
            created.body["createdBy"]["user"],
            expected["createdBy"]["user"]
        );

        let fetched = api.job(&id).await;
        assert_eq!(fetched.status, 200);
        assert_eq!(fetched.body, created.body, "{}: GET after create", ex.name);

        let updated = api.update(&id, &fetched.body).await;
        assert_eq!(updated.status, 200, "{}: {:?}", ex.name, updated.body);
        assert_eq!(api.job(&id).await.body, updated.body);

        pairs.push((id, expected["id"].as_str().unwrap().to_string()));
        for list in ["preDeployActions", "postDeployActions"] {
            for (new, old) in action_ids(&updated.body, list)
                .into_iter()
                .zip(action_ids(&expected, list))
            {
                pairs.push((new, old));
            }
        }
        let mapped = map_ids(&updated.body, &pairs);
        assert_matches_seed(ex.name, &expected, &mapped, &allowed);
        sim.shutdown().await;
    }
}
