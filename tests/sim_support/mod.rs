//! Helpers shared by the simulator's HTTP tests: a small JSON client over real loopback HTTP,
//! the seed fixtures, and a JSON tree diff that reports differences by path.
#![allow(dead_code)]

use std::time::Duration;

use qpm_operator::sim::{self, SimConfig, SimHandle};
use reqwest::Method;
use serde_json::Value;

/// rustls needs its process-wide provider before any client is built.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn start(config: SimConfig) -> SimHandle {
    init();
    sim::start(config).await.expect("the simulator starts")
}

/// A simulator with default settings and the operator's client for its `sim` user, with quick
/// retries and no budget (the engine's and the action tests' starting point).
pub async fn sim_and_client() -> (SimHandle, qpm_operator::qualys::Client) {
    use qpm_operator::qualys::{Client, ClientOptions, Connection, ProxySettings};
    let sim = start(SimConfig::default()).await;
    let opts = ClientOptions {
        budget: None,
        rps: None,
        concurrency: None,
        proxy: ProxySettings::none(),
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    let client = Client::new(Connection::new(sim.base_url(), "sim", "sim"), opts).expect("client");
    (sim, client)
}

pub fn http() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a client")
}

/// A seed fixture as JSON.
pub fn seed(name: &str) -> Value {
    let path = format!("{}/testdata/seed/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("valid JSON")
}

/// An answer: status, headers, body as JSON (or a JSON string holding the text when it is not
/// JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `_error.errorCode` and `_error.message` of a Qualys error body.
    pub fn error(&self) -> (String, String) {
        let e = &self.body["_error"];
        (
            e["errorCode"].as_str().unwrap_or_default().to_string(),
            e["message"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// A client of one simulator, authenticated as one user.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    /// Send `Bearer <jwt>` (true) or the bare `<jwt>` the seed's update page shows.
    pub bearer: bool,
}

impl Api {
    /// Authenticate as `user`/`password` through `POST /auth`.
    pub async fn login(base: &str, user: &str, password: &str) -> Api {
        let http = http();
        let token = auth(&http, base, user, password).await;
        Api {
            http,
            base: base.to_string(),
            token,
            bearer: true,
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(
                "authorization",
                if self.bearer {
                    format!("Bearer {}", self.token)
                } else {
                    self.token.clone()
                },
            );
        if let Some(body) = body {
            req = req.json(body);
        }
        answer(req.send().await.expect("the request is answered")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::DELETE, path, Some(body)).await
    }

    pub async fn create(&self, body: &Value) -> Answer {
        self.post("/pm/v1/deploymentjob", body).await
    }

    pub async fn job(&self, id: &str) -> Answer {
        self.get(&format!("/pm/v1/deploymentjob/{id}")).await
    }

    pub async fn update(&self, id: &str, body: &Value) -> Answer {
        self.patch(&format!("/pm/v1/deploymentjob/update/{id}"), body)
            .await
    }

    /// An admin call (no token).
    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}/_sim{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        answer(req.send().await.expect("the request is answered")).await
    }
}

pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("a complete body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST /auth` with the form the gateway documents; the JWT.
pub async fn auth(http: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let resp = http
        .post(format!("{base}/auth"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("username", user),
            ("password", password),
            ("token", "true"),
            ("permissions", "true"),
        ]))
        .send()
        .await
        .expect("auth answers");
    assert_eq!(resp.status().as_u16(), 201, "auth as {user}");
    resp.text().await.expect("a token")
}

/// `application/x-www-form-urlencoded` (reqwest's `form` feature is not enabled).
pub fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Differences between two JSON trees, one line per path (`a.b[2].c: ...`).
pub fn diff(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", expected, actual, &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => walk(&join(path, k), ev, av, out),
                    None => out.push(format!("{}: missing (expected {ev})", join(path, k))),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    out.push(format!("{}: unexpected {av}", join(path, k)));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                walk(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        _ if expected == actual => {}
        _ => out.push(format!("{path}: expected {expected}, got {actual}")),
    }
}

/// The path of a diff line.
pub fn diff_path(line: &str) -> &str {
    line.split(": ").next().unwrap_or(line)
}

/// Top-level keys, in order.
pub fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Set (to anything but empty or `0`) to run every simulator the tests start as a less kind
/// gateway: list pages clamped at [`UNKIND_PAGE_SIZE`] whatever `pageSize` asks, and no
/// rate-limit headers at all (a 429 then says nothing about when to come back).
pub const UNKIND_ENV: &str = "QPM_TEST_SIM_UNKIND";

/// The page clamp of the unkind mode.
pub const UNKIND_PAGE_SIZE: usize = 50;

/// Whether [`UNKIND_ENV`] asks for the unkind mode.
pub fn unkind() -> bool {
    std::env::var(UNKIND_ENV).is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0")
}

/// `config` as this run's tests want it: unchanged, or made unkind (see [`UNKIND_ENV`]). A
/// test that already asks for a smaller clamp keeps it.
pub fn config(config: SimConfig) -> SimConfig {
    if !unkind() {
        return config;
    }
    SimConfig {
        max_page_size: Some(
            config
                .max_page_size
                .map_or(UNKIND_PAGE_SIZE, |n| n.min(UNKIND_PAGE_SIZE)),
        ),
        rate_limit_headers: sim::RateLimitHeaders::None,
        ..config
    }
}

/// A Disabled On-demand Linux job as the gateway stores it, for `SimHandle::put_job`: id
/// `00000000-0000-4000-8000-<i>`, named `name`.
pub fn stored_job(i: usize, name: &str) -> Value {
    serde_json::json!({
        "id": format!("00000000-0000-4000-8000-{i:012}"), "name": name, "type": "Install",
        "platform": "Linux", "status": "Disabled", "scheduleType": "On-demand",
        "customerId": "bc023fd7-4290-f28f-8181-95a46f519f52"
    })
}
