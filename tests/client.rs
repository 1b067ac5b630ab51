//! The Qualys PM client against the simulator (and, for answers the simulator never gives, a
//! small stub), over real HTTP on loopback. Counts come from the simulator's counters, so every
//! assertion is about exactly what reached the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qpm_operator::qualys::{
    Client, ClientOptions, Connection, Endpoint, Error, JobBody, Observer, ProxySettings,
    RateLimitInfo, WireState, WriteFence,
};
use qpm_operator::sim::{self, Fault, FaultKind, RateLimit, SimConfig, SimHandle, SimUser};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery-7";

use qpm_operator::qualys::routes::{AUTH, CREATE, DELETE, GET, LIST, STATUS, UPDATE};

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn sim_config() -> SimConfig {
    SimConfig {
        users: vec![SimUser::new(USER, PASSWORD)],
        ..Default::default()
    }
}

async fn start(config: SimConfig) -> SimHandle {
    install_crypto();
    sim::start(config).await.expect("the simulator starts")
}

/// Options for tests: no client-side budget, quick backoff, no proxy from the environment.
fn fast() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        max_attempts: 4,
        max_retry_time: Duration::from_secs(20),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        budget: None,
        rps: None,
        concurrency: None,
        proxy: ProxySettings::none(),
        ..Default::default()
    }
}

fn client_for(url: &str, password: &str, opts: ClientOptions) -> Client {
    install_crypto();
    Client::new(Connection::new(url, USER, password), opts).expect("valid connection")
}

fn client(sim: &SimHandle) -> Client {
    client_for(&sim.base_url(), PASSWORD, fast())
}

fn job(name: &str) -> JobBody {
    serde_json::from_value(json!({
        "name": name,
        "type": "Install",
        "platform": "Windows",
        "status": "Disabled",
        "scheduleType": "On-demand",
        "assetTagIds": ["f81f37b3-5d39-4bf6-a0b9-3c5d0d9e5d61"],
        "approvedPatches": ["9285e676-5c55-3b4b-8c8e-1c3a1c4f0a11"],
        "description": "created by tests/client.rs"
    }))
    .unwrap()
}

fn recurring_job(name: &str) -> JobBody {
    serde_json::from_value(json!({
        "name": name,
        "type": "Install",
        "platform": "Linux",
        "status": "Disabled",
        "scheduleType": "Daily",
        "startDateTime": "2030-1-01 10:00:00 AM",
        "recurring": true,
        "timezoneType": "SPECIFIC_TZ",
        "timezone": "UTC",
        "assetTagIds": ["f81f37b3-5d39-4bf6-a0b9-3c5d0d9e5d61"]
    }))
    .unwrap()
}

/// Store a job directly in the simulator (no API call counted) and return its id.
fn seed_job(sim: &SimHandle, name: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let mut doc = serde_json::to_value(job(name)).unwrap();
    doc["id"] = json!(id);
    sim.put_job(doc).unwrap();
    id
}

fn jobs_named(sim: &SimHandle, name: &str) -> Vec<Value> {
    sim.jobs()
        .into_iter()
        .filter(|j| j["name"] == json!(name))
        .collect()
}

fn assert_counts(sim: &SimHandle, route: &str, expected: &[(u16, u64)]) {
    let counters = sim.counters();
    let got: Vec<(u16, u64)> = counters
        .0
        .get(route)
        .map(|by_status| by_status.iter().map(|(s, n)| (*s, *n)).collect())
        .unwrap_or_default();
    assert_eq!(got, expected, "{route}: {:?}", counters.0);
}

#[test]
fn endpoints_are_named_by_the_simulators_route_templates() {
    let names: Vec<&str> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(names, sim::ROUTES);
    assert_eq!(names, [AUTH, CREATE, GET, UPDATE, LIST, DELETE, STATUS]);
}

#[tokio::test]
async fn every_operation_works_against_the_simulator() {
    let sim = start(sim_config()).await;
    let client = client(&sim);

    client.authenticate().await.unwrap();

    let created = client.create_job(&job("ops")).await.unwrap();
    let id = created.job_id().unwrap().to_owned();
    assert_eq!(created.job_name(), Some("ops"));
    assert!(sim.job(&id).is_some());

    let fetched = client.get_job(&id).await.unwrap();
    assert_eq!(fetched.job_id(), Some(id.as_str()));

    let mut changed = fetched.clone();
    changed.description = "changed by the client".to_owned().into();
    let updated = client.update_job(&id, &changed).await.unwrap();
    assert_eq!(
        updated.description.get().map(String::as_str),
        Some("changed by the client")
    );
    assert_eq!(
        sim.job(&id).unwrap()["description"],
        json!("changed by the client")
    );

    let linux = client
        .create_job(&recurring_job("ops-linux"))
        .await
        .unwrap();
    let linux_id = linux.job_id().unwrap().to_owned();

    let windows = client.list_summaries("Windows").await.unwrap();
    assert_eq!(
        windows
            .iter()
            .map(|s| s.id.get().cloned().unwrap())
            .collect::<Vec<_>>(),
        std::slice::from_ref(&id)
    );
    let all = client.list_all_summaries().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|s| s.id.get().cloned().unwrap())
            .collect::<Vec<_>>(),
        [id.clone(), linux_id.clone()],
        "Windows first, then Linux"
    );

    let enabled = client
        .set_status(std::slice::from_ref(&linux_id), WireState::Enabled)
        .await
        .unwrap();
    assert_eq!(enabled.len(), 1);
    assert_eq!(enabled[0].result, Ok(()));
    assert_eq!(enabled[0].name.as_deref(), Some("ops-linux"));
    assert_eq!(sim.job(&linux_id).unwrap()["status"], json!("Enabled"));
    let disabled = client
        .set_status(std::slice::from_ref(&linux_id), WireState::Disabled)
        .await
        .unwrap();
    assert_eq!(disabled[0].result, Ok(()));
    assert_eq!(sim.job(&linux_id).unwrap()["status"], json!("Disabled"));

    let deleted = client
        .delete_jobs(&[id.clone(), linux_id.clone()])
        .await
        .unwrap();
    assert!(deleted.iter().all(|o| o.result.is_ok()), "{deleted:?}");
    assert_eq!(sim.job_count(), 0);

    match client.get_job(&id).await {
        Err(Error::NotFound { what }) => assert_eq!(what, format!("deployment job {id}")),
        other => panic!("expected NotFound, got {other:?}"),
    }

    assert_counts(&sim, AUTH, &[(201, 1)]);
    assert_counts(&sim, CREATE, &[(201, 2)]);
    assert_counts(&sim, GET, &[(200, 1), (404, 1)]);
    assert_counts(&sim, UPDATE, &[(200, 1)]);
    // The page size is not known yet, and one job a page could be the gateway's clamp: each
    // list reads on to an empty page (Windows; then Windows and Linux).
    assert_counts(&sim, LIST, &[(200, 6)]);
    assert_counts(&sim, STATUS, &[(200, 2)]);
    assert_counts(&sim, DELETE, &[(200, 1)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn lists_walk_every_page_and_stop_at_a_short_one() {
    let sim = start(sim_config()).await;
    let ids: Vec<String> = (0..5)
        .map(|i| seed_job(&sim, &format!("page-{i}")))
        .collect();
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            page_size: 2,
            ..fast()
        },
    );
    let listed = client.list_summaries("Windows").await.unwrap();
    let listed: Vec<String> = listed
        .iter()
        .map(|s| s.id.get().cloned().unwrap())
        .collect();
    assert_eq!(listed, ids, "every job once, in the server's order");
    // The first list learns the page size: pages of 2, 2, 1 and the empty one.
    assert_counts(&sim, LIST, &[(200, 4)]);
    assert_eq!(client.learned_page_size(), Some(2));

    // Once known, a short page ends the walk: 2, 2, 1.
    sim.reset_counters();
    assert_eq!(client.list_summaries("Windows").await.unwrap().len(), 5);
    assert_counts(&sim, LIST, &[(200, 3)]);

    // With an exact multiple, the empty page past the end is what stops the walk.
    sim.console_delete(&ids[4]);
    sim.reset_counters();
    let listed = client.list_summaries("Windows").await.unwrap();
    assert_eq!(listed.len(), 4);
    assert_counts(&sim, LIST, &[(200, 3)]);
    assert_eq!(client.list_calls(), 10);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_token_past_its_lifetime_is_renewed_before_use() {
    let sim = start(SimConfig {
        token_ttl: Duration::from_secs(1),
        ..sim_config()
    })
    .await;
    let id = seed_job(&sim, "ttl");
    let client = client(&sim);
    client.get_job(&id).await.unwrap();
    // The scenario needs the token to age past its one-second lifetime.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.get_job(&id).await.unwrap();
    // The client read `exp` from the JWT and renewed it unprompted: no 401 at all.
    assert_counts(&sim, AUTH, &[(201, 2)]);
    assert_counts(&sim, GET, &[(200, 2)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_revoked_token_costs_one_401_and_one_reauthentication() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "revoked");
    let client = client(&sim);
    client.get_job(&id).await.unwrap();
    sim.expire_tokens();
    let job = client.get_job(&id).await.unwrap();
    assert_eq!(job.job_id(), Some(id.as_str()));
    assert_counts(&sim, AUTH, &[(201, 2)]);
    assert_counts(&sim, GET, &[(200, 2), (401, 1)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_token_refused_twice_is_unauthorized_after_one_retry() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "refused");
    let client = client(&sim);
    sim.set_fault(Fault {
        route: Some(GET.to_owned()),
        times: None,
        kind: FaultKind::ExpireToken,
    });
    let err = client.get_job(&id).await.unwrap_err();
    assert_eq!(err.kind(), "unauthorized", "{err}");
    assert!(!err.is_retryable());
    assert_counts(&sim, AUTH, &[(201, 2)]);
    assert_counts(&sim, GET, &[(401, 2)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn fifty_concurrent_calls_share_one_authentication() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "shared");
    let client = client(&sim);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        // Half of them through another tenant: the token belongs to the connection.
        let c = if i % 2 == 0 {
            client.clone()
        } else {
            client.for_tenant("team-b")
        };
        let id = id.clone();
        calls.spawn(async move { c.get_job(&id).await.map(|_| ()) });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().unwrap();
    }
    assert_counts(&sim, AUTH, &[(201, 1)]);
    assert_counts(&sim, GET, &[(200, 50)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_429_storm_is_waited_out_as_the_server_asks() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "storm");
    let client = client(&sim);
    client.authenticate().await.unwrap();
    sim.set_fault(Fault {
        route: Some(GET.to_owned()),
        times: Some(2),
        kind: FaultKind::RateLimited {
            retry_after_secs: 1,
        },
    });
    client.get_job(&id).await.unwrap();
    assert_counts(&sim, GET, &[(200, 1), (429, 2)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_outranks_the_short_backoff() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "respect");
    // Ten attempts 10 ms apart would fit in 1.5 s; waiting 1 s per Retry-After, only two do.
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            max_attempts: 10,
            max_retry_time: Duration::from_millis(1500),
            ..fast()
        },
    );
    client.authenticate().await.unwrap();
    sim.set_fault(Fault {
        route: Some(GET.to_owned()),
        times: None,
        kind: FaultKind::RateLimited {
            retry_after_secs: 1,
        },
    });
    let err = client.get_job(&id).await.unwrap_err();
    assert_eq!(
        err,
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
    );
    assert!(err.is_retryable());
    assert_counts(&sim, GET, &[(429, 2)]);
    // The whole connection holds back, not just this call.
    assert!(client.budget().paused_until().is_some());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_5xx_then_success_is_retried() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "flaky");
    let client = client(&sim);
    sim.set_fault(Fault {
        route: Some(GET.to_owned()),
        times: Some(2),
        kind: FaultKind::Status { status: 503 },
    });
    client.get_job(&id).await.unwrap();
    assert_counts(&sim, GET, &[(200, 1), (503, 2)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "down");
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            max_attempts: 3,
            ..fast()
        },
    );
    sim.set_fault(Fault {
        route: Some(GET.to_owned()),
        times: None,
        kind: FaultKind::Status { status: 503 },
    });
    match client.get_job(&id).await {
        Err(Error::Unavailable {
            endpoint, status, ..
        }) => {
            assert_eq!(endpoint, Endpoint::Get);
            assert_eq!(status, 503);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_counts(&sim, GET, &[(503, 3)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_invalid_body_is_refused_with_its_field_and_not_retried() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let mut bad = job("bad-schedule");
    bad.schedule_type = "Fortnightly".to_owned().into();
    match client.create_job(&bad).await {
        Err(Error::Invalid { field, message }) => {
            assert_eq!(field.as_deref(), Some("scheduleType"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let mut bad_script: Value = serde_json::to_value(job("bad-script")).unwrap();
    bad_script["preDeployActions"] = json!([{
        "action": "Run Script",
        "scriptType": "ps",
        "script": "not base64 at all!",
        "params": {"actionItem": "pre", "timeout": 180}
    }]);
    let bad_script: JobBody = serde_json::from_value(bad_script).unwrap();
    match client.create_job(&bad_script).await {
        Err(Error::Invalid { field, message }) => {
            assert_eq!(
                field.as_deref(),
                Some("preDeployActions[0].script"),
                "{message}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_counts(&sim, CREATE, &[(400, 2)]);
    assert_eq!(sim.job_count(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_create_answered_with_500_after_commit_is_outcome_unknown_and_not_repeated() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    sim.set_fault(Fault {
        route: Some(CREATE.to_owned()),
        times: Some(1),
        kind: FaultKind::CommitThenFail {
            drop_connection: false,
        },
    });
    match client.create_job(&job("committed-500")).await {
        Err(Error::OutcomeUnknown { name, cause }) => {
            assert_eq!(name.as_deref(), Some("committed-500"));
            assert_eq!(cause, "HTTP 500 after the request was sent");
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert_counts(&sim, CREATE, &[(500, 1)]);
    assert_eq!(jobs_named(&sim, "committed-500").len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_create_whose_connection_drops_after_commit_is_outcome_unknown_and_not_repeated() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    sim.set_fault(Fault {
        route: Some(CREATE.to_owned()),
        times: Some(1),
        kind: FaultKind::CommitThenFail {
            drop_connection: true,
        },
    });
    let err = client.create_job(&job("committed-drop")).await.unwrap_err();
    let Error::OutcomeUnknown { name, cause } = &err else {
        panic!("expected OutcomeUnknown, got {err:?}");
    };
    assert_eq!(name.as_deref(), Some("committed-drop"));
    assert!(
        cause.starts_with("the connection failed after the request was sent")
            || cause.starts_with("the gateway's answer could not be read"),
        "{cause}"
    );
    assert!(err.to_string().contains("look it up by name"), "{err}");
    assert_eq!(sim.count(CREATE), 1);
    assert_eq!(jobs_named(&sim, "committed-drop").len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_create_refused_with_5xx_is_not_repeated_either() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    sim.set_fault(Fault {
        route: Some(CREATE.to_owned()),
        times: Some(1),
        kind: FaultKind::Status { status: 502 },
    });
    let err = client.create_job(&job("maybe")).await.unwrap_err();
    assert_eq!(err.kind(), "outcome_unknown", "{err}");
    assert_counts(&sim, CREATE, &[(502, 1)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_create_refused_with_429_is_retried() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    client.authenticate().await.unwrap();
    sim.set_fault(Fault {
        route: Some(CREATE.to_owned()),
        times: Some(1),
        kind: FaultKind::RateLimited {
            retry_after_secs: 1,
        },
    });
    client.create_job(&job("after-429")).await.unwrap();
    assert_counts(&sim, CREATE, &[(201, 1), (429, 1)]);
    assert_eq!(jobs_named(&sim, "after-429").len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_create_refused_with_401_is_sent_again_after_reauthentication() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    client.authenticate().await.unwrap();
    sim.set_fault(Fault {
        route: Some(CREATE.to_owned()),
        times: Some(1),
        kind: FaultKind::ExpireToken,
    });
    client.create_job(&job("after-401")).await.unwrap();
    // A 401 means the gateway did nothing: sending again cannot duplicate the job.
    assert_counts(&sim, CREATE, &[(201, 1), (401, 1)]);
    assert_counts(&sim, AUTH, &[(201, 2)]);
    assert_eq!(jobs_named(&sim, "after-401").len(), 1);
    sim.shutdown().await;
}

/// Counts exchanges that ended without an answer, per endpoint, and signals the first one.
#[derive(Default)]
struct TransportFailures {
    create: AtomicUsize,
    first: tokio::sync::Notify,
}

impl Observer for TransportFailures {
    fn on_response(&self, endpoint: Endpoint, status: Option<u16>, _elapsed: Duration) {
        if endpoint == Endpoint::Create && status.is_none() {
            self.create.fetch_add(1, Ordering::SeqCst);
            self.first.notify_one();
        }
    }
}

/// A TCP relay to the simulator that can be switched off (connections refused) and on again
/// on the same port.
struct Gate {
    addr: SocketAddr,
    backend: SocketAddr,
    task: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Gate {
    async fn open(backend: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut gate = Gate {
            addr,
            backend,
            task: None,
            conns: Arc::default(),
        };
        gate.serve(listener);
        gate
    }

    fn serve(&mut self, listener: TcpListener) {
        let (backend, conns) = (self.backend, Arc::clone(&self.conns));
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        }));
    }

    /// Stop listening and cut every relayed connection: new connects are refused.
    fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    async fn reopen(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

#[tokio::test]
async fn a_create_that_could_not_connect_is_retried() {
    let sim = start(sim_config()).await;
    let backend: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut gate = Gate::open(backend).await;
    let failures = Arc::new(TransportFailures::default());
    let client = client_for(
        &format!("http://{}", gate.addr),
        PASSWORD,
        ClientOptions {
            max_attempts: 20,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
            observer: Some(failures.clone()),
            ..fast()
        },
    );
    client.authenticate().await.unwrap();
    gate.close();
    // Let the client's pooled connection see its end before the create picks a connection.
    tokio::task::yield_now().await;

    let create = tokio::spawn({
        let client = client.clone();
        async move { client.create_job(&job("after-refusal")).await }
    });
    tokio::time::timeout(Duration::from_secs(20), failures.first.notified())
        .await
        .expect("the create met a refused connection");
    gate.reopen().await;
    let created = create.await.unwrap().unwrap();
    assert_eq!(created.job_name(), Some("after-refusal"));
    assert!(failures.create.load(Ordering::SeqCst) >= 1);
    assert_counts(&sim, CREATE, &[(201, 1)]);
    assert_eq!(jobs_named(&sim, "after-refusal").len(), 1);
    gate.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn a_slow_gateway_times_out_and_a_slow_create_is_outcome_unknown() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "slow");
    // The simulator counts a request when it answers, and a request abandoned by a timeout
    // never is: the client's observer counts the attempts here.
    let tally = Arc::new(Tally::default());
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            request_timeout: Duration::from_millis(300),
            max_attempts: 2,
            observer: Some(tally.clone()),
            ..fast()
        },
    );
    client.authenticate().await.unwrap();
    sim.set_fault(Fault {
        route: None,
        times: None,
        kind: FaultKind::Latency { ms: 3000 },
    });
    assert_eq!(
        client.get_job(&id).await.unwrap_err(),
        Error::Timeout {
            endpoint: Endpoint::Get,
            after: Duration::from_millis(300)
        }
    );
    match client.create_job(&job("slow-create")).await {
        Err(Error::OutcomeUnknown { cause, .. }) => {
            assert_eq!(cause, "no complete answer within 0.3s")
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert_eq!(
        *tally.responses.lock().unwrap(),
        [
            (Endpoint::Auth, Some(201)),
            // A timed-out GET is retried …
            (Endpoint::Get, None),
            (Endpoint::Get, None),
            // … a timed-out create is not.
            (Endpoint::Create, None),
        ]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn bulk_calls_report_each_item() {
    let sim = start(sim_config()).await;
    let client = client(&sim);
    let kept = seed_job(&sim, "bulk-ok");
    let unknown = uuid::Uuid::new_v4().to_string();

    let outcomes = client
        .delete_jobs(&[kept.clone(), unknown.clone(), kept.clone()])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2, "one outcome per distinct id");
    assert_eq!(outcomes[0].id, kept);
    assert_eq!(outcomes[0].result, Ok(()));
    assert_eq!(outcomes[1].id, unknown);
    match &outcomes[1].result {
        Err(Error::ItemFailed { id, message }) => {
            assert_eq!(id, &unknown);
            assert!(!message.is_empty());
        }
        other => panic!("expected ItemFailed, got {other:?}"),
    }
    assert_eq!(sim.job_count(), 0);
    // Confirmed, the unknown id is gone — all a delete is for — at the cost of one GET (404).
    let confirmed = client
        .delete_jobs_confirmed(std::slice::from_ref(&unknown))
        .await
        .unwrap();
    assert_eq!(confirmed[0].result, Ok(()));
    assert_counts(&sim, GET, &[(404, 1)]);

    // A non-recurring job, once enabled, cannot be disabled.
    let once = client.create_job(&job("on-demand")).await.unwrap();
    let once_id = once.job_id().unwrap().to_owned();
    let enabled = client
        .set_status(std::slice::from_ref(&once_id), WireState::Enabled)
        .await
        .unwrap();
    assert_eq!(enabled[0].result, Ok(()));
    let disabled = client
        .set_status(&[once_id.clone(), unknown.clone()], WireState::Disabled)
        .await
        .unwrap();
    assert_eq!(
        disabled[0].result,
        Err(Error::ItemFailed {
            id: once_id.clone(),
            message: "Non-recurring jobs cannot be disabled once enabled by user".to_owned()
        })
    );
    assert!(disabled[1].result.is_err());
    assert_eq!(sim.job(&once_id).unwrap()["status"], json!("Enabled"));

    // No ids, no call.
    assert_eq!(client.delete_jobs(&[]).await.unwrap(), vec![]);
    assert_counts(&sim, DELETE, &[(200, 2)]);
    assert_counts(&sim, STATUS, &[(200, 2)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_user_without_pm_api_access_is_forbidden() {
    let mut user = SimUser::new(USER, PASSWORD);
    user.pm_api_access = false;
    let sim = start(SimConfig {
        users: vec![user],
        ..Default::default()
    })
    .await;
    let client = client(&sim);
    let err = client.list_summaries("Windows").await.unwrap_err();
    assert_eq!(err.kind(), "forbidden");
    let text = err.to_string();
    assert!(text.contains("PM.API.ACCESS"), "{text}");
    assert!(text.contains("alice"), "{text}");
    assert_counts(&sim, LIST, &[(403, 1)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_is_unauthorized_and_never_printed() {
    let sim = start(sim_config()).await;
    let wrong = "Wrong-Password-123";
    let client = client_for(&sim.base_url(), wrong, fast());
    let err = client.get_job("any").await.unwrap_err();
    let Error::Unauthorized { message } = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert_eq!(
        message,
        "the gateway refused the username or password of user \"alice\" (HTTP 401); \
         check the credentials of the connection"
    );
    for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!text.contains(wrong), "{text}");
    }
    // Refused credentials are not retried …
    assert_counts(&sim, AUTH, &[(401, 1)]);
    assert_eq!(sim.count(GET), 0);

    // … nor offered again by callers queued behind the refusal, or soon after it: a wrong
    // password in a busy controller must not get the account locked.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let c = client.for_tenant("other");
        calls.spawn(async move { c.get_job("any").await.map(|_| ()) });
    }
    while let Some(result) = calls.join_next().await {
        assert_eq!(result.unwrap().unwrap_err(), err);
    }
    assert_counts(&sim, AUTH, &[(401, 1)]);
    // Only an explicit `authenticate` (what `check` does) tries again at once.
    assert_eq!(client.authenticate().await.unwrap_err(), err);
    assert_counts(&sim, AUTH, &[(401, 2)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn callers_queued_behind_a_failed_authentication_share_its_failure() {
    let sim = start(sim_config()).await;
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            max_attempts: 2,
            ..fast()
        },
    );
    sim.set_fault(Fault {
        route: Some(AUTH.to_owned()),
        times: None,
        kind: FaultKind::Status { status: 503 },
    });
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let c = client.clone();
        calls.spawn(async move { c.get_job("any").await.map(|_| ()) });
    }
    while let Some(result) = calls.join_next().await {
        assert_eq!(result.unwrap().unwrap_err().kind(), "unavailable");
    }
    // One refresh of two attempts answered all ten callers.
    assert_counts(&sim, AUTH, &[(503, 2)]);
    // An outage is not a verdict on the credentials: the next call tries again, and succeeds.
    sim.clear_faults();
    let id = seed_job(&sim, "after-outage");
    client.get_job(&id).await.unwrap();
    assert_counts(&sim, AUTH, &[(201, 1), (503, 2)]);
    sim.shutdown().await;
}

#[derive(Default)]
struct Tally {
    responses: Mutex<Vec<(Endpoint, Option<u16>)>>,
    rate_limits: Mutex<Vec<RateLimitInfo>>,
}

impl Observer for Tally {
    fn on_response(&self, endpoint: Endpoint, status: Option<u16>, _elapsed: Duration) {
        self.responses.lock().unwrap().push((endpoint, status));
    }
    fn on_rate_limit(&self, info: &RateLimitInfo) {
        self.rate_limits.lock().unwrap().push(info.clone());
    }
}

#[tokio::test]
async fn the_observer_sees_every_exchange_and_rate_limit_headers() {
    let sim = start(SimConfig {
        rate_limit: Some(RateLimit {
            limit: 300,
            window: Duration::from_secs(3600),
        }),
        ..sim_config()
    })
    .await;
    let id = seed_job(&sim, "observed");
    let tally = Arc::new(Tally::default());
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            observer: Some(tally.clone()),
            ..fast()
        },
    );
    client.get_job(&id).await.unwrap();
    let _ = client.get_job("missing").await.unwrap_err();
    assert_eq!(
        *tally.responses.lock().unwrap(),
        [
            (Endpoint::Auth, Some(201)),
            (Endpoint::Get, Some(200)),
            (Endpoint::Get, Some(404))
        ]
    );
    let first = tally.rate_limits.lock().unwrap().first().cloned().unwrap();
    assert_eq!(first.limit, Some(300));
    assert_eq!(first.window, Some(Duration::from_secs(3600)));
    sim.shutdown().await;
}

#[tokio::test]
async fn gateway_rate_limit_headers_lower_the_budget() {
    let sim = start(SimConfig {
        rate_limit: Some(RateLimit {
            limit: 2,
            window: Duration::from_secs(1),
        }),
        ..sim_config()
    })
    .await;
    let id = seed_job(&sim, "lowered");
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            rps: Some(50.0),
            ..fast()
        },
    );
    assert_eq!(client.budget().effective_rps(), Some(50.0));
    client.get_job(&id).await.unwrap();
    assert_eq!(client.budget().effective_rps(), Some(2.0));
    sim.shutdown().await;
}

#[tokio::test]
async fn the_client_keeps_to_its_configured_rate() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "paced");
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            rps: Some(5.0),
            ..fast()
        },
    );
    client.authenticate().await.unwrap();
    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let c = client.for_tenant(if i % 2 == 0 { "a" } else { "b" });
        let id = id.clone();
        calls.spawn(async move { c.get_job(&id).await.map(|_| ()) });
    }
    // An observation window, not a synchronisation: count what reached the server in it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = sim.count(GET);
    let window = start.elapsed().as_secs_f64();
    calls.abort_all();
    // A burst of 5, then 5 per second.
    let ceiling = 5 + (5.0 * window).floor() as u64;
    assert!(
        sent <= ceiling,
        "{sent} requests in {window:.2}s (ceiling {ceiling})"
    );
    assert!(sent >= 5, "the burst went through: {sent}");
    assert_eq!(sim.count_status(GET, 429), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn proxies_from_settings_are_used_and_loopback_bypasses_them() {
    let sim = start(sim_config()).await;
    let id = seed_job(&sim, "proxied");

    // The simulator plays an HTTP forward proxy: a request for an unresolvable gateway host
    // reaches it only if the client really goes through the proxy.
    let via_proxy = client_for(
        "http://qualys-gateway.invalid",
        PASSWORD,
        ClientOptions {
            proxy: ProxySettings {
                http: Some(sim.base_url()),
                ..Default::default()
            },
            ..fast()
        },
    );
    via_proxy.get_job(&id).await.unwrap();
    assert_counts(&sim, GET, &[(200, 1)]);

    // A proxy that does not exist, NO_PROXY unset: loopback still goes direct.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let direct = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            proxy: ProxySettings {
                http: Some(format!("http://{dead_addr}")),
                https: Some(format!("http://{dead_addr}")),
                no_proxy: None,
            },
            ..fast()
        },
    );
    direct.get_job(&id).await.unwrap();
    assert_counts(&sim, GET, &[(200, 2)]);
    sim.shutdown().await;
}

const CA_PEM: &[u8] = include_bytes!("../testdata/tls/ca.pem");
const SERVER_PEM: &[u8] = include_bytes!("../testdata/tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../testdata/tls/server.key");

/// A TLS front for the simulator with a certificate from the test CA.
async fn tls_front(backend: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(SERVER_PEM)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_custom_ca_bundle_is_trusted_and_needed() {
    let sim = start(sim_config()).await;
    let backend: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (addr, front) = tls_front(backend).await;
    let url = format!("https://{addr}");

    let mut conn = Connection::new(&url, USER, PASSWORD);
    conn.ca_bundle = Some(CA_PEM.to_vec());
    let trusting = Client::new(conn, fast()).unwrap();
    trusting.authenticate().await.unwrap();
    assert_counts(&sim, AUTH, &[(201, 1)]);

    let strict = client_for(
        &url,
        PASSWORD,
        ClientOptions {
            max_attempts: 1,
            ..fast()
        },
    );
    let err = strict.authenticate().await.unwrap_err();
    assert_eq!(err.kind(), "transport", "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_counts(&sim, AUTH, &[(201, 1)]);

    let mut bad = Connection::new(&url, USER, PASSWORD);
    bad.ca_bundle =
        Some(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".to_vec());
    assert_eq!(Client::new(bad, fast()).unwrap_err().kind(), "config");
    front.abort();
    sim.shutdown().await;
}

/// Answers the simulator never gives, from a stub on loopback.
mod stub {
    use super::*;
    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::{delete, get, post};

    async fn serve(router: Router) -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (url, task)
    }

    async fn token() -> impl IntoResponse {
        (StatusCode::CREATED, "header.eyJzdWIiOiJ4In0.signature")
    }

    #[tokio::test]
    async fn ids_missing_from_a_bulk_answer_are_failures() {
        let (url, task) = serve(
            Router::new()
                .route("/auth", post(token))
                .route(
                    "/pm/v1/deploymentjobs",
                    delete(|| async { axum::Json(json!([{"id": "a", "name": "A", "status": "success"}])) }),
                )

                .route(
                    "/pm/v1/deploymentjobs/update/status/{action}",
                    post(|| async { axum::Json(json!([{"id": "a", "status": "failure"}, {"id": "b", "status": "success"}])) }),
                ),
        )
        .await;
        let client = client_for(&url, PASSWORD, fast());
        let outcomes = client
            .delete_jobs(&["a".to_owned(), "b".to_owned()])
            .await
            .unwrap();
        assert_eq!(outcomes[0].result, Ok(()));
        assert_eq!(outcomes[0].name.as_deref(), Some("A"));
        assert_eq!(
            outcomes[1].result,
            Err(Error::ItemFailed {
                id: "b".to_owned(),
                message: "the gateway's answer did not mention this job".to_owned()
            })
        );
        let outcomes = client
            .set_status(&["a".to_owned(), "b".to_owned()], WireState::Enabled)
            .await
            .unwrap();
        assert_eq!(
            outcomes[0].result,
            Err(Error::ItemFailed {
                id: "a".to_owned(),
                message: "the gateway reported status \"failure\" without a reason".to_owned()
            })
        );
        assert_eq!(outcomes[1].result, Ok(()));
        task.abort();
    }

    #[tokio::test]
    async fn unreadable_answers_are_decode_errors_or_unknown_outcomes() {
        let (url, task) = serve(
            Router::new()
                .route("/auth", post(token))
                .route(
                    "/pm/v1/deploymentjob/{id}",
                    get(|| async { (StatusCode::OK, "<html>maintenance</html>") }),
                )
                .route(
                    "/pm/v1/deploymentjob",
                    post(|| async { (StatusCode::CREATED, axum::Json(json!({"name": "x"}))) }),
                ),
        )
        .await;
        let client = client_for(&url, PASSWORD, fast());
        assert_eq!(client.get_job("j").await.unwrap_err().kind(), "decode");
        match client.create_job(&job("x")).await {
            Err(Error::OutcomeUnknown { cause, .. }) => {
                assert_eq!(cause, "the gateway's answer has no job id")
            }
            other => panic!("expected OutcomeUnknown, got {other:?}"),
        }
        task.abort();
    }

    #[tokio::test]
    async fn a_list_that_ignores_page_numbers_ends() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let (url, task) = serve(Router::new().route("/auth", post(token)).route(
            "/pm/v1/deploymentjobs/summary",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!([{"id": "a"}, {"id": "b"}])) }
            }),
        ))
        .await;
        let client = client_for(
            &url,
            PASSWORD,
            ClientOptions {
                page_size: 2,
                ..fast()
            },
        );
        let listed = client.list_summaries("Linux").await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        task.abort();
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let (url, task) = serve(Router::new().route(
            "/auth",
            post(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(
                            header::LOCATION,
                            "http://elsewhere.invalid/auth?session=abc",
                        )],
                    )
                }
            }),
        ))
        .await;
        let client = client_for(&url, PASSWORD, fast());
        match client.authenticate().await {
            Err(Error::Unexpected {
                endpoint,
                status,
                message,
            }) => {
                assert_eq!((endpoint, status), (Endpoint::Auth, 307));
                assert!(
                    message.starts_with("redirected to http://elsewhere.invalid/auth;"),
                    "{message}"
                );
            }
            other => panic!("expected Unexpected, got {other:?}"),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        task.abort();
    }
}

/// A fence that is open while `open` is true.
struct Switch {
    open: std::sync::atomic::AtomicBool,
}

impl WriteFence for Switch {
    fn check(&self) -> Result<(), String> {
        if self.open.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("closed by the test".into())
        }
    }
}

#[tokio::test]
async fn a_closed_write_fence_keeps_every_write_from_the_gateway_and_no_read() {
    let sim = start(sim_config()).await;
    let fence = Arc::new(Switch { open: true.into() });
    let client = client_for(
        &sim.base_url(),
        PASSWORD,
        ClientOptions {
            write_fence: Some(fence.clone()),
            ..fast()
        },
    );
    let id = client
        .create_job(&job("fenced"))
        .await
        .unwrap()
        .id
        .get()
        .cloned()
        .unwrap();
    fence.open.store(false, Ordering::SeqCst);

    let fenced = |e: Error, endpoint: Endpoint| match e {
        Error::Fenced {
            endpoint: e,
            reason,
        } => {
            assert_eq!((e, reason.as_str()), (endpoint, "closed by the test"))
        }
        other => panic!("{endpoint:?}: not fenced: {other}"),
    };
    fenced(
        client.create_job(&job("second")).await.unwrap_err(),
        Endpoint::Create,
    );
    let live = client.get_job(&id).await.unwrap();
    fenced(
        client.update_job(&id, &live).await.unwrap_err(),
        Endpoint::Update,
    );
    fenced(
        client
            .set_status(std::slice::from_ref(&id), WireState::Enabled)
            .await
            .unwrap_err(),
        Endpoint::SetStatus,
    );
    fenced(
        client
            .delete_jobs(std::slice::from_ref(&id))
            .await
            .unwrap_err(),
        Endpoint::Delete,
    );
    client.list_all_summaries().await.unwrap();
    // Only the first create reached the gateway, and no write was retried.
    assert_eq!(
        [CREATE, UPDATE, STATUS, DELETE].map(|r| sim.count(r)),
        [1, 0, 0, 0]
    );
    assert_eq!(sim.count(GET), 1);
    assert!(sim.count(LIST) >= 1);

    fence.open.store(true, Ordering::SeqCst);
    client.update_job(&id, &live).await.unwrap();
    assert_eq!(sim.count(UPDATE), 1);
}
