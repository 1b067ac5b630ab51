//! The client against a gateway less kind than the simulator: a front on loopback that clamps
//! `pageSize` and strips every rate-limit header before the simulator, and small stubs for
//! deletion, job scope and enabled one-shot jobs. Counts come from the simulator's counters (or
//! the stubs' own), so every assertion is about exactly what reached the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use qpm_operator::qualys::{
    CallBudget, Client, ClientOptions, Connection, Error, JobBody, Observer, Pause, PauseCause,
    ProxySettings,
};
use qpm_operator::sim::{self, Fault, FaultKind, RateLimit, SimConfig, SimHandle, SimUser};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const USER: &str = "sim";
const PASSWORD: &str = "sim";
const CREATE: &str = "POST /pm/v1/deploymentjob";
const GET: &str = "GET /pm/v1/deploymentjob/{id}";
const LIST: &str = "GET /pm/v1/deploymentjobs/summary";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn start(config: SimConfig) -> SimHandle {
    install_crypto();
    sim::start(SimConfig {
        users: vec![SimUser::new(USER, PASSWORD)],
        ..config
    })
    .await
    .expect("the simulator starts")
}

/// No client-side budget, quick backoff, no proxy from the environment.
fn fast() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        budget: None,
        rps: None,
        concurrency: None,
        proxy: ProxySettings::none(),
        ..Default::default()
    }
}

fn client_for(url: &str, opts: ClientOptions) -> Client {
    install_crypto();
    Client::new(Connection::new(url, USER, PASSWORD), opts).expect("valid connection")
}

fn job_doc(name: &str, platform: &str) -> Value {
    json!({
        "name": name,
        "type": "Install",
        "platform": platform,
        "status": "Disabled",
        "scheduleType": "On-demand",
        "assetTagIds": ["f81f37b3-5d39-4bf6-a0b9-3c5d0d9e5d61"],
        "approvedPatches": ["9285e676-5c55-3b4b-8c8e-1c3a1c4f0a11"],
    })
}

/// Store a job directly in the simulator (no API call counted).
fn seed_job(sim: &SimHandle, name: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let mut doc = job_doc(name, "Windows");
    doc["id"] = json!(id);
    sim.put_job(doc).unwrap();
    id
}

fn count_429(sim: &SimHandle) -> u64 {
    sim.counters()
        .0
        .values()
        .map(|by_status| by_status.get(&429).copied().unwrap_or(0))
        .sum()
}

/// What the front does to the simulator's traffic.
struct Front {
    backend: String,
    http: reqwest::Client,
    /// `pageSize` of summary lists is lowered to this (0 = as asked).
    clamp: AtomicU32,
    /// Drop `Retry-After` and every `X-RateLimit-*` / `X-ConcurrencyLimit-*` header.
    strip_rate_limit_headers: bool,
}

/// A front on loopback that forwards every request to `sim`.
async fn front(sim: &SimHandle, clamp: u32, strip: bool) -> (String, Arc<Front>) {
    let front = Arc::new(Front {
        backend: sim.base_url(),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        clamp: AtomicU32::new(clamp),
        strip_rate_limit_headers: strip,
    });
    let app = Router::new().fallback(forward).with_state(front.clone());
    (serve(app).await, front)
}

async fn forward(State(front): State<Arc<Front>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut url = reqwest::Url::parse(&format!(
        "{}{}",
        front.backend.trim_end_matches('/'),
        parts.uri.path()
    ))
    .unwrap();
    let clamp = front.clamp.load(Ordering::SeqCst);
    let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x{}", parts.uri))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| {
            let v = match (k.as_ref(), v.parse::<u32>()) {
                ("pageSize", Ok(size)) if clamp > 0 => size.min(clamp).to_string(),
                _ => v.into_owned(),
            };
            (k.into_owned(), v)
        })
        .collect();
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut request = front.http.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.unwrap();
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        let n = name.as_str();
        let rate_limit = n == "retry-after"
            || n.starts_with("x-ratelimit-")
            || n.starts_with("x-concurrencylimit-")
            || n.starts_with("x-concurrency-limit-");
        if (front.strip_rate_limit_headers && rate_limit) || n == "content-length" {
            continue;
        }
        response = response.header(HeaderName::from_bytes(n.as_bytes()).unwrap(), value);
    }
    response
        .body(Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_clamped_page_size_is_learned_and_every_job_is_listed() {
    let sim = start(SimConfig::default()).await;
    let ids: Vec<String> = (0..130)
        .map(|i| seed_job(&sim, &format!("job-{i:03}")))
        .collect();
    let (url, front) = front(&sim, 50, false).await;
    let client = client_for(&url, fast());
    let listed = |v: Vec<qpm_operator::qualys::JobSummary>| -> Vec<String> {
        v.iter().map(|s| s.id.get().cloned().unwrap()).collect()
    };

    // Asked for 1,000, served 50: the first list reads on to the empty page (50, 50, 30, 0).
    let first = client.list_summaries("Windows").await.unwrap();
    assert_eq!(listed(first), ids);
    assert_eq!(sim.count(LIST), 4);
    assert_eq!(client.learned_page_size(), Some(50));

    // Known now: the page of 30 ends the walk.
    sim.reset_counters();
    assert_eq!(client.list_summaries("Windows").await.unwrap().len(), 130);
    assert_eq!(sim.count(LIST), 3);

    // The gateway raises its cap: a page of 80 is longer than expected, so the walk reads on
    // to the empty page (80, 50, 0) and learns again.
    front.clamp.store(80, Ordering::SeqCst);
    sim.reset_counters();
    assert_eq!(client.list_summaries("Windows").await.unwrap().len(), 130);
    assert_eq!(sim.count(LIST), 3);
    assert_eq!(client.learned_page_size(), Some(80));
    sim.reset_counters();
    assert_eq!(client.list_summaries("Windows").await.unwrap().len(), 130);
    assert_eq!(sim.count(LIST), 2);
    assert_eq!(client.list_calls(), 12);
    sim.shutdown().await;
}

/// A scratch folder, removed when dropped.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "qpm-first-contact-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn s(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn manifests(dir: &Dir, names: &[String]) -> String {
    let docs: Vec<String> = names
        .iter()
        .map(|name| {
            format!(
                "apiVersion: pm.qualys.io/v1alpha1\nkind: DeploymentJob\nmetadata: {{name: {name}, namespace: default}}\n\
                 spec:\n  job:\n    name: {name}\n    type: Install\n    platform: Windows\n    status: Disabled\n    \
                 scheduleType: On-demand\n    assetTagIds: [f81f37b3-5d39-4bf6-a0b9-3c5d0d9e5d61]\n    \
                 approvedPatches: [9285e676-5c55-3b4b-8c8e-1c3a1c4f0a11]\n"
            )
        })
        .collect();
    let path = dir.s("jobs.yaml");
    std::fs::write(&path, docs.join("---\n")).unwrap();
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The binary against `url` as user sim/sim, with a state file in `dir`.
async fn qpm(url: &str, dir: &Dir, args: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qpm-operator"));
    cmd.args(args)
        .args(["--gateway-url", url, "--state", &dir.s("state.json")])
        .env_remove("QUALYS_GATEWAY_URL")
        .env_remove("QUALYS_CA_BUNDLE_FILE")
        .env_remove("RUST_LOG")
        .env("QUALYS_USERNAME", USER)
        .env("QUALYS_PASSWORD", PASSWORD)
        .env("XDG_STATE_HOME", dir.s("xdg"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_finds_existing_jobs_beyond_the_first_page_and_creates_nothing() {
    let sim = start(SimConfig::default()).await;
    let names: Vec<String> = (0..130).map(|i| format!("job-{i:03}")).collect();
    for name in &names {
        let mut doc = job_doc(name, "Windows");
        doc["id"] = json!(uuid::Uuid::new_v4().to_string());
        sim.put_job(doc).unwrap();
    }
    let (url, _front) = front(&sim, 50, true).await;
    let dir = Dir::new("adopt");
    // The last ten jobs sit on the third page of 50.
    let file = manifests(&dir, &names[120..]);
    let run = qpm(
        &url,
        &dir,
        &["apply", "-f", &file, "--qualys-budget", "none"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.count(CREATE), 0, "{run:?}");
    assert_eq!(sim.job_count(), 130);
    sim.shutdown().await;
}

/// A 30-job `apply` through a front that strips every rate-limit header, before a simulator
/// limited to 10 calls per 2 s; returns the simulator (for its counters) and the run.
async fn apply_behind_a_header_less_limit(tag: &str, flags: &[&str]) -> (SimHandle, Run) {
    let sim = start(SimConfig {
        rate_limit: Some(RateLimit {
            limit: 10,
            window: Duration::from_secs(2),
        }),
        ..Default::default()
    })
    .await;
    let (url, _front) = front(&sim, 0, true).await;
    let dir = Dir::new(tag);
    let names: Vec<String> = (0..30).map(|i| format!("budget-{i:02}")).collect();
    let file = manifests(&dir, &names);
    let args = [&["apply", "-f", &file, "--qualys-rps", "0"][..], flags].concat();
    let run = qpm(&url, &dir, &args).await;
    (sim, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_budget_at_the_gateways_limit_no_429_comes_back() {
    // Budget = the gateway's limit: not one 429, every job created.
    let (sim, run) =
        apply_behind_a_header_less_limit("budget", &["--qualys-budget", "10/2s"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.count_status(CREATE, 201), 30, "{run:?}");
    assert_eq!(count_429(&sim), 0, "{:?}", sim.counters());
    sim.shutdown().await;

    // The same apply without a budget runs into the limit: the test can fail.
    let (sim, run) = apply_behind_a_header_less_limit(
        "no-budget",
        &["--qualys-budget", "none", "--qualys-pause-on-429", "1s"],
    )
    .await;
    assert!(count_429(&sim) > 0, "{run:?}");
    sim.shutdown().await;
}

/// Records every pause the client reports.
#[derive(Default)]
struct Pauses(Mutex<Vec<Pause>>, tokio::sync::Notify);

impl Observer for Pauses {
    fn on_response(&self, _: qpm_operator::qualys::Endpoint, _: Option<u16>, _: Duration) {}

    fn on_pause(&self, pause: &Pause) {
        self.0.lock().unwrap().push(pause.clone());
        self.1.notify_one();
    }
}

#[tokio::test]
async fn a_429_without_headers_pauses_the_whole_connection_and_says_so() {
    let sim = start(SimConfig::default()).await;
    let id = seed_job(&sim, "paused");
    let (url, _front) = front(&sim, 0, true).await;
    let pauses = Arc::new(Pauses::default());
    let client = client_for(
        &url,
        ClientOptions {
            pause_on_429: Duration::from_millis(700),
            observer: Some(pauses.clone()),
            ..fast()
        },
    );
    client.authenticate().await.unwrap();
    sim.set_fault(Fault {
        route: Some(GET.to_owned()),
        times: Some(1),
        kind: FaultKind::RateLimited {
            retry_after_secs: 30,
        },
    });
    let first = tokio::spawn({
        let client = client.for_tenant("a");
        let id = id.clone();
        async move { client.get_job(&id).await }
    });
    tokio::time::timeout(Duration::from_secs(10), pauses.1.notified())
        .await
        .expect("the pause is reported");
    let pause = client.paused().expect("the connection is paused");
    assert_eq!(pause.cause, PauseCause::RateLimitedWithoutHeaders);
    assert_eq!(pause.length, Duration::from_millis(700));
    assert_eq!(
        pause.to_string(),
        "rate limited without headers (HTTP 429 with neither Retry-After nor X-RateLimit-*); \
         pausing the connection for 1s (--qualys-pause-on-429); lower --qualys-budget to the \
         gateway's real limit"
    );
    // Another tenant's call waits for the pause too: it cannot leave before it ends.
    client.for_tenant("b").get_job(&id).await.unwrap();
    assert!(tokio::time::Instant::now() >= pause.until);
    first.await.unwrap().unwrap();
    assert_eq!(sim.count_status(GET, 429), 1);
    assert_eq!(sim.count_status(GET, 200), 2);
    assert_eq!(client.budget().pauses_without_headers(), 1);
    assert_eq!(pauses.0.lock().unwrap().len(), 1);

    // A pause longer than the retries may wait ends the call with the pause's length.
    let impatient = client_for(
        &url,
        ClientOptions {
            pause_on_429: Duration::from_secs(5),
            max_retry_time: Duration::from_secs(1),
            ..fast()
        },
    );
    sim.set_fault(Fault {
        route: Some(GET.to_owned()),
        times: Some(1),
        kind: FaultKind::RateLimited {
            retry_after_secs: 30,
        },
    });
    let err = impatient.get_job(&id).await.unwrap_err();
    assert_eq!(
        err,
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(5))
        }
    );
    assert_eq!(sim.count_status(GET, 429), 2);
    sim.shutdown().await;
}

#[test]
fn polling_is_sized_to_its_share_of_the_budget() {
    install_crypto();
    let client = |budget: Option<CallBudget>, share: f64| {
        Client::new(
            Connection::new("https://gateway.example", "u", "p"),
            ClientOptions {
                budget,
                rps: Some(1.0),
                poll_share: share,
                proxy: ProxySettings::none(),
                ..Default::default()
            },
        )
        .unwrap()
    };
    // 300 calls an hour, a quarter for polling: 75 an hour, one call every 48 s.
    let default = client(Some(CallBudget::DOCUMENTED), 0.25);
    assert_eq!(default.min_poll_interval(2), Duration::from_secs(96));
    assert_eq!(default.min_poll_interval(12), Duration::from_secs(576));
    let half: CallBudget = "600/1h".parse().unwrap();
    assert_eq!(
        client(Some(half), 0.5).min_poll_interval(2),
        Duration::from_secs(24)
    );
    // Without a budget the ceiling of 1 call a second counts.
    assert_eq!(
        client(None, 0.25).min_poll_interval(2),
        Duration::from_secs(8)
    );
    assert_eq!(half.to_string(), "600/1h");
    assert_eq!(
        "20/30s".parse::<CallBudget>().unwrap().to_string(),
        "20/30s"
    );
    assert_eq!(
        "20/30".parse::<CallBudget>().unwrap(),
        "20/30s".parse().unwrap()
    );
    assert!("0/1h".parse::<CallBudget>().is_err());
    assert!("300".parse::<CallBudget>().is_err());
    assert!("300/soon".parse::<CallBudget>().is_err());
}

/// A stub that answers with canned documents and counts what it was asked.
#[derive(Default)]
struct Stub {
    calls: Mutex<Vec<String>>,
}

impl Stub {
    fn record(&self, what: &str) {
        self.calls.lock().unwrap().push(what.to_owned());
    }

    fn count(&self, what: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == what)
            .count()
    }
}

async fn token() -> impl IntoResponse {
    (StatusCode::CREATED, "header.eyJzdWIiOiJ4In0.signature")
}

fn error_body(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"_error": {"errorCode": status.as_u16().to_string(), "message": message}}),
        ),
    )
        .into_response()
}

#[tokio::test]
async fn gone_means_404_or_a_deletion_mark_whatever_the_delete_said() {
    let stub = Arc::new(Stub::default());
    let app = Router::new()
        .route("/auth", post(token))
        // A whole-call 404 for an unknown id, as some gateways answer.
        .route(
            "/pm/v1/deploymentjobs",
            delete(|State(s): State<Arc<Stub>>| async move {
                s.record("delete");
                error_body(StatusCode::NOT_FOUND, "Deployment job not found")
            }),
        )
        .route(
            "/pm/v1/deploymentjob/{id}",
            get(
                |State(s): State<Arc<Stub>>, axum::extract::Path(id): axum::extract::Path<String>| async move {
                    s.record(&format!("get {id}"));
                    match id.as_str() {
                        "soft" => axum::Json(json!({"id": "soft", "name": "Soft",
                            "deletedBy": {"user": {"id": "u", "name": "u"}, "date": 1_700_000_000_000_i64}}))
                        .into_response(),
                        "flagged" => axum::Json(json!({"id": "flagged", "deleted": true})).into_response(),
                        "alive" => axum::Json(json!({"id": "alive", "name": "Alive"})).into_response(),
                        _ => error_body(StatusCode::NOT_FOUND, "Deployment job not found"),
                    }
                },
            ),
        )
        .route(
            "/pm/v1/deploymentjobs/summary",
            get(|State(s): State<Arc<Stub>>| async move {
                s.record("list");
                axum::Json(json!([
                    {"id": "alive", "name": "Alive"},
                    {"id": "soft", "name": "Soft", "deleted": true}
                ]))
            }),
        )
        .with_state(stub.clone());
    let url = serve(app).await;
    let client = client_for(&url, fast());

    let ids: Vec<String> = ["gone", "soft", "flagged"].map(String::from).to_vec();
    let outcomes = client.delete_jobs_confirmed(&ids).await.unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    assert_eq!(stub.count("delete"), 1);
    assert_eq!(
        ["get gone", "get soft", "get flagged"].map(|c| stub.count(c)),
        [1, 1, 1]
    );
    // A job still there keeps the delete's failure, and nothing is retried in a loop.
    let err = client
        .delete_jobs_confirmed(&["alive".to_owned()])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert_eq!(stub.count("delete"), 2);
    assert_eq!(stub.count("get alive"), 1);

    // A soft-deleted job reads as gone, and lists leave it out.
    match client.get_job("soft").await {
        Err(Error::NotFound { what }) => assert_eq!(what, "deployment job soft (marked deleted)"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let listed = client.list_summaries("Windows").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id.get().map(String::as_str), Some("alive"));
}

#[tokio::test]
async fn a_403_on_one_job_names_the_job_and_its_scope_and_is_not_retried() {
    let stub = Arc::new(Stub::default());
    let app = Router::new()
        .route("/auth", post(token))
        .route(
            "/pm/v1/deploymentjob/{id}",
            get(|State(s): State<Arc<Stub>>| async move {
                s.record("get");
                error_body(StatusCode::FORBIDDEN, "Access denied")
            }),
        )
        .with_state(stub.clone());
    let url = serve(app).await;
    let client = client_for(&url, fast());
    let err = client.get_job("j-42").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "access denied (HTTP 403): job j-42 is not accessible to user \"sim\": Access denied; \
         the job is probably outside the user's job scope (PM roles can limit a user to the jobs \
         assigned to them): give the user access to it in Qualys, or leave the job \
         (deletionPolicy: Orphan); if no job is accessible, the user lacks the PM.API.ACCESS \
         permission or the subscription a Patch Management licence"
    );
    assert_eq!(err.kind(), "forbidden");
    assert_eq!(stub.count("get"), 1);
}

#[tokio::test]
async fn an_update_refused_for_an_enabled_one_shot_job_says_why_and_stops() {
    let stub = Arc::new(Stub::default());
    let app = Router::new()
        .route("/auth", post(token))
        .route(
            "/pm/v1/deploymentjob/update/{id}",
            patch(|State(s): State<Arc<Stub>>| async move {
                s.record("patch");
                error_body(StatusCode::BAD_REQUEST, "Job cannot be updated")
            }),
        )
        .route(
            "/pm/v1/deploymentjob/{id}",
            get(|State(s): State<Arc<Stub>>| async move {
                s.record("get");
                axum::Json(json!({"id": "j-1", "name": "Once", "status": "Enabled", "scheduleType": "On-demand"}))
            }),
        )
        .with_state(stub.clone());
    let url = serve(app).await;
    let client = client_for(&url, fast());
    let body: JobBody = serde_json::from_value(job_doc("Once", "Windows")).unwrap();
    let err = client.update_job("j-1", &body).await.unwrap_err();
    assert_eq!(
        err,
        Error::Invalid {
            field: Some("status".to_owned()),
            message: "job j-1 is an enabled On-demand job, and Qualys refuses to update \
                      On-demand and Once jobs once they are enabled (the gateway said: the \
                      gateway refused the request: Job cannot be updated); leave it as it is, \
                      or delete it and create a new one"
                .to_owned()
        }
    );
    assert!(!err.is_retryable());
    assert_eq!((stub.count("patch"), stub.count("get")), (1, 1));

    // A recurring job's refusal is left as the gateway said it, without the extra GET.
    let mut daily = body.clone();
    daily.schedule_type = "Daily".to_owned().into();
    let err = client.update_job("j-1", &daily).await.unwrap_err();
    assert_eq!(
        err,
        Error::Invalid {
            field: None,
            message: "Job cannot be updated".to_owned()
        }
    );
    assert_eq!((stub.count("patch"), stub.count("get")), (2, 1));
}

/// The steady-state cost of the summary poller, measured from the simulator's counters: the
/// list calls of one poll (both platforms, page size learned) and the interval that keeps them
/// within 25 % of the default budget of 300 calls an hour.
#[tokio::test]
async fn the_steady_state_poll_cost_at_1000_and_10000_jobs() {
    for (jobs, pages, interval_s) in [(1_000, 4, 192), (10_000, 12, 576)] {
        let sim = start(SimConfig::default()).await;
        for i in 0..jobs {
            let platform = if i % 2 == 0 { "Windows" } else { "Linux" };
            let mut doc = job_doc(&format!("poll-{i:05}"), platform);
            doc["id"] = json!(uuid::Uuid::new_v4().to_string());
            if platform == "Linux" {
                doc["type"] = json!("Install");
            }
            sim.put_job(doc).unwrap();
        }
        let client = client_for(
            &sim.base_url(),
            ClientOptions {
                budget: Some(CallBudget::DOCUMENTED),
                rps: None,
                ..fast()
            },
        );
        // The first poll learns the page size; the second is what every later one costs.
        assert_eq!(client.list_all_summaries().await.unwrap().len(), jobs);
        sim.reset_counters();
        assert_eq!(client.list_all_summaries().await.unwrap().len(), jobs);
        assert_eq!(sim.count(LIST), pages, "{jobs} jobs");
        let interval = client.min_poll_interval(pages);
        assert_eq!(interval, Duration::from_secs(interval_s), "{jobs} jobs");
        // 75 calls an hour: a quarter of the budget, whatever the number of jobs.
        assert_eq!(pages * 3600 / interval.as_secs(), 75);
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_op_plan_lists_the_summaries_and_gets_only_what_moved() {
    let sim = start(SimConfig::default()).await;
    let url = sim.base_url();
    let dir = Dir::new("noop-plan");
    let names: Vec<String> = (0..30).map(|i| format!("noop-{i:02}")).collect();
    let file = manifests(&dir, &names);
    let budget = ["--qualys-budget", "none", "--qualys-rps", "0"];
    let run = qpm(&url, &dir, &[&["apply", "-f", &file][..], &budget].concat()).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.count_status(CREATE, 201), 30);

    // The first plan reads every job once and remembers it beside the state file …
    let plan = [&["plan", "-f", &file][..], &budget].concat();
    let run = qpm(&url, &dir, &plan).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(std::path::Path::new(&dir.s("state.jobs.json")).exists());

    // … so the next costs two GETs (the listing pays off only after them) and one listing (a
    // page per platform and the empty page after the Windows one, whose 30 jobs are the
    // learned page size).
    sim.reset_counters();
    let run = qpm(&url, &dir, &plan).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.count(GET), 2, "{:?}", sim.counters());
    assert_eq!(sim.count(LIST), 3, "{:?}", sim.counters());

    // A job changed in the console is read again: one GET more.
    let changed = sim
        .jobs()
        .into_iter()
        .find(|j| j["name"] == json!("noop-29"))
        .unwrap();
    sim.console_edit(
        changed["id"].as_str().unwrap(),
        json!({"description": "edited in the console"}),
    )
    .unwrap();
    sim.reset_counters();
    let run = qpm(&url, &dir, &plan).await;
    assert_eq!(sim.count(GET), 3, "{run:?}");
    sim.shutdown().await;
}
