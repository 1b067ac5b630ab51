//! `qpm-operator probe`: turn what the documentation leaves open into evidence.
//!
//! Read-only by default, the probe asks a gateway a few questions with the user's credentials
//! and writes one JSON [`Report`](report::Report): the token's lifetime, the page size lists
//! really return, whether paging is stable, the response headers and rate-limit values, the
//! shape of error answers, and timings. With `--allow-writes` it also creates one throwaway
//! Disabled On-demand job, edits it, deletes it and records what the gateway shows afterwards;
//! it never enables anything and deletes the job also when interrupted. `qpm-operator sim
//! --profile REPORT.json` turns the report back into a simulator (`sim::profile`).
//!
//! The probe talks HTTP itself rather than through `qualys::Client`: it must see statuses,
//! headers and bodies the client deliberately hides, and it must never retry.

pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, Parser};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

use crate::cli::connect::GatewayArgs;
use crate::qualys::{Budget, CallBudget, Connection, ProxySettings, Secret, http_client_builder};
use crate::sim::{self, SimArgs};
use report::{API_VERSION, Answer, KIND, PageSize, Report, Timing, WriteFindings, key_paths};

/// The page sizes the probe asks for.
pub const PAGE_SIZES: [usize; 5] = [1, 10, 200, 1_000, 10_000];

/// Route templates, as the simulator's counters name them.
use crate::qualys::routes::{AUTH, CREATE, DELETE, GET as GET_JOB, LIST as SUMMARY, UPDATE};

/// The most list calls spent looking for the throwaway job after its delete.
const MAX_LOOKUP_PAGES: usize = 10;

/// `qpm-operator probe`: record how a gateway behaves, as one JSON report with no secret.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Probe a simulator started for the purpose instead of a gateway, optionally with `sim`
    /// flags (e.g. --sim="--max-page-size 50 --delete soft").
    #[arg(
        long,
        value_name = "SIM-FLAGS",
        num_args = 0..=1,
        require_equals = true,
        allow_hyphen_values = true,
        default_missing_value = ""
    )]
    pub sim: Option<String>,
    /// Also create, edit and delete one throwaway Disabled On-demand job.
    #[arg(long)]
    pub allow_writes: bool,
    /// Put the names of the jobs seen into the report (left out by default).
    #[arg(long)]
    pub include_names: bool,
    /// Write the report here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Calls per rolling window the probe allows itself, e.g. 300/1h or 20/30s; a call that
    /// would exceed it waits. `/auth` is exempt, as at the gateway.
    #[arg(long, value_name = "CALLS/DURATION", default_value = "300/1h")]
    pub qualys_budget: CallBudget,
}

/// What to ask.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeOptions {
    pub allow_writes: bool,
    pub include_names: bool,
    /// `None`: no pacing (tests against a simulator).
    pub budget: Option<CallBudget>,
}

/// `qpm-operator probe`.
pub async fn run(args: ProbeArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut sim_handle = None;
    let conn = match &args.sim {
        Some(flags) => {
            let config = sim_flags(flags)?.resolve()?;
            // The probe acts as the simulator's first user (`sim`/`sim` unless --user says).
            let user = config
                .users
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("--sim: the simulator has no user"))?;
            let sim = sim::start(config)
                .await
                .context("cannot start the simulator to probe")?;
            let conn = Connection::new(sim.base_url(), user.name, user.password);
            eprintln!("probing a simulator at {}", sim.base_url());
            sim_handle = Some(sim);
            conn
        }
        None => match args.gateway.connection()? {
            Some(conn) => conn,
            None => bail!(
                "no gateway to probe: set QUALYS_GATEWAY_URL (or --gateway-url), or give --sim to probe a simulator"
            ),
        },
    };
    let opts = ProbeOptions {
        allow_writes: args.allow_writes,
        include_names: args.include_names,
        budget: Some(args.qualys_budget),
    };
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a signal handler the probe simply runs to its end.
            std::future::pending::<()>().await;
        }
    };
    let result = probe_until(&conn, opts, interrupted).await;
    if let Some(sim) = sim_handle {
        sim.shutdown().await;
    }
    let report = result?;
    let mut text = serde_json::to_string_pretty(&report)?;
    text.push('\n');
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => print!("{text}"),
    }
    eprintln!(
        "probe: {} API calls{}",
        report.calls,
        if report.problems.is_empty() {
            String::new()
        } else {
            format!("; {} problem(s), see \"problems\"", report.problems.len())
        }
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--sim` flags, parsed as `qpm-operator sim` parses them.
fn sim_flags(flags: &str) -> anyhow::Result<SimArgs> {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        sim: SimArgs,
    }
    let argv = std::iter::once("sim")
        .chain(["--listen", "127.0.0.1:0"])
        .chain(flags.split_whitespace());
    Wrapper::try_parse_from(argv)
        .map(|w| w.sim)
        .map_err(|e| anyhow!("--sim: {e}"))
}

/// Probe `conn`. When `interrupted` completes first, the throwaway job (if any) is deleted and
/// the probe fails with "interrupted".
pub async fn probe_until(
    conn: &Connection,
    opts: ProbeOptions,
    interrupted: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    let mut prober = Prober::new(conn, opts.budget)?;
    let pending = prober.pending.clone();
    let cleanup = prober.cleanup_handle();
    tokio::select! {
        result = prober.run(opts) => result,
        () = interrupted => {
            let job = pending.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(job) = job {
                cleanup.remove(job).await;
                bail!("interrupted: the throwaway job was deleted");
            }
            bail!("interrupted")
        }
    }
}

/// Probe `conn` to the end.
pub async fn probe(conn: &Connection, opts: ProbeOptions) -> anyhow::Result<Report> {
    probe_until(conn, opts, std::future::pending()).await
}

/// One answer as the probe keeps it.
struct Reply {
    status: u16,
    json: Option<Value>,
    body_kind: &'static str,
}

impl Reply {
    fn answer(&self) -> Answer {
        let keys = self.json.as_ref().map(key_paths).unwrap_or_default();
        let error_code = self
            .json
            .as_ref()
            .and_then(|j| j.pointer("/_error/errorCode"))
            .and_then(|c| match c {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        Answer {
            status: self.status,
            body: self.body_kind.to_string(),
            keys,
            error_code,
        }
    }

    fn array(&self) -> Option<&Vec<Value>> {
        self.json.as_ref().and_then(Value::as_array)
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The throwaway job: its id once the create answered.
#[derive(Clone, Debug)]
struct Throwaway {
    name: String,
    platform: String,
    id: Option<String>,
}

/// What the interrupt path needs to delete the throwaway job.
#[derive(Clone)]
struct Cleanup {
    http: reqwest::Client,
    base: String,
    token: Arc<Mutex<Option<Secret>>>,
}

impl Cleanup {
    /// A request with the current token (the probe's calls and the cleanup share it).
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let token = self
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|t| t.expose().to_string());
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("accept", "application/json");
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        req
    }

    /// Delete the throwaway job; when its create never answered, find it by name first.
    async fn remove(&self, job: Throwaway) {
        let id = match job.id {
            Some(id) => Some(id),
            None => self.find(&job.name, &job.platform).await,
        };
        match id {
            Some(id) => self.delete(&id).await,
            None => eprintln!(
                "probe: the throwaway job {} was not found; if it exists, delete it in the console",
                job.name
            ),
        }
    }

    async fn find(&self, name: &str, platform: &str) -> Option<String> {
        for page in 0..MAX_LOOKUP_PAGES {
            let path = format!(
                "/pm/v1/deploymentjobs/summary?platform={platform}&pageNumber={page}&pageSize=10000"
            );
            let items: Vec<Value> = self
                .request(Method::GET, &path)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            if items.is_empty() {
                return None;
            }
            if let Some(found) = items.iter().find(|s| s["name"] == json!(name)) {
                return found["id"].as_str().map(String::from);
            }
        }
        None
    }

    /// Delete the throwaway job; a 429 is waited out (its `Retry-After` or
    /// `X-RateLimit-ToWait-Sec`, else 15 s), up to three more times: leaving the job behind
    /// is worse than waiting.
    async fn delete(&self, id: &str) {
        for attempt in 0..4 {
            let req = self
                .request(Method::DELETE, "/pm/v1/deploymentjobs")
                .json(&json!({"ids": [id]}));
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    eprintln!("probe: deleted the throwaway job {id}");
                    return;
                }
                Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS && attempt < 3 => {
                    let secs = ["retry-after", "x-ratelimit-towait-sec"]
                        .iter()
                        .find_map(|h| r.headers().get(*h)?.to_str().ok()?.trim().parse().ok())
                        .unwrap_or(15u64)
                        .min(300);
                    eprintln!("probe: rate limited; deleting the throwaway job again in {secs}s");
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                Ok(r) => {
                    eprintln!(
                        "probe: could not delete the throwaway job {id} ({}); delete it in the console",
                        r.status()
                    );
                    return;
                }
                Err(_) => {
                    eprintln!(
                        "probe: could not reach the gateway to delete the throwaway job {id}; delete it in the console"
                    );
                    return;
                }
            }
        }
    }
}

struct Prober {
    http: reqwest::Client,
    base: String,
    username: String,
    password: Secret,
    token: Arc<Mutex<Option<Secret>>>,
    /// The throwaway job from just before its create until it is gone.
    pending: Arc<Mutex<Option<Throwaway>>>,
    report: Report,
    headers: BTreeSet<String>,
    /// The probe's own pacing, with the client's rolling-window accounting.
    budget: Option<(CallBudget, Arc<Budget>)>,
}

impl Prober {
    fn new(conn: &Connection, budget: Option<CallBudget>) -> anyhow::Result<Self> {
        let base = conn.gateway_url.trim().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .map_err(|_| anyhow!("the gateway URL is not a URL (http(s)://host)"))?;
        let builder = http_client_builder(
            &ProxySettings::from_env(),
            conn.ca_bundle.as_deref(),
            Duration::from_secs(60),
            Duration::from_secs(10),
            concat!("qpm-operator-probe/", env!("CARGO_PKG_VERSION")),
        )?;
        let http = builder.build().context("cannot build the HTTP client")?;
        let gateway = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        );
        Ok(Prober {
            http,
            base,
            username: conn.username.clone(),
            password: conn.password.clone(),
            token: Arc::new(Mutex::new(None)),
            pending: Arc::new(Mutex::new(None)),
            report: Report {
                api_version: API_VERSION.into(),
                kind: KIND.into(),
                tool: concat!("qpm-operator ", env!("CARGO_PKG_VERSION")).into(),
                started_at: jiff::Timestamp::now().to_string(),
                gateway,
                ..Default::default()
            },
            headers: BTreeSet::new(),
            budget: budget.map(|b| (b, Budget::with_window(Some(b), None, None))),
        })
    }

    /// Wait until one more call fits the budget; the call counts against it until the permit
    /// is dropped, and for the budget's window after that.
    async fn pace(&self) -> Option<crate::qualys::budget::Permit> {
        let (limit, budget) = self.budget.as_ref()?;
        let acquire = budget.acquire("probe");
        tokio::pin!(acquire);
        tokio::select! {
            permit = &mut acquire => return Some(permit),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        eprintln!("probe: waiting for the call budget ({limit})");
        Some(acquire.await)
    }

    fn cleanup_handle(&self) -> Cleanup {
        Cleanup {
            http: self.http.clone(),
            base: self.base.clone(),
            token: self.token.clone(),
        }
    }

    /// One call: counted, timed, its header names and rate-limit values recorded. Never retried.
    async fn call(
        &mut self,
        method: Method,
        route: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut req = self.cleanup_handle().request(method, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        let _permit = self.pace().await;
        let started = Instant::now();
        self.report.calls += 1;
        let response = req.send().await.map_err(|e| no_answer(route, &e))?;
        let status = response.status().as_u16();
        self.note_headers(response.headers(), status);
        let bytes = response.bytes().await.unwrap_or_default();
        self.timed(route, status, started);
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        let body_kind = match &json {
            _ if bytes.is_empty() => "empty",
            Some(Value::Object(_)) => "object",
            Some(Value::Array(_)) => "array",
            _ => "text",
        };
        Ok(Reply {
            status,
            json,
            body_kind,
        })
    }

    fn timed(&mut self, route: &str, status: u16, started: Instant) {
        self.report.timings.push(Timing {
            route: route.to_string(),
            status,
            ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn note_headers(&mut self, headers: &HeaderMap, status: u16) {
        let number = |name: &str| -> Option<u64> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        };
        for name in headers.keys() {
            self.headers.insert(name.as_str().to_ascii_lowercase());
        }
        let rate = &mut self.report.rate_limit;
        if headers
            .keys()
            .any(|k| k.as_str().to_ascii_lowercase().starts_with("x-ratelimit-"))
        {
            rate.headers_seen = true;
        }
        rate.limit = number("x-ratelimit-limit").or(rate.limit);
        rate.window_sec = number("x-ratelimit-window-sec").or(rate.window_sec);
        rate.concurrency_limit = number("x-concurrencylimit-limit")
            .or_else(|| number("x-concurrency-limit-limit"))
            .or(rate.concurrency_limit);
        if let Some(remaining) = number("x-ratelimit-remaining") {
            rate.lowest_remaining = Some(
                rate.lowest_remaining
                    .map_or(remaining, |r| r.min(remaining)),
            );
        }
        if status == 429 {
            rate.throttled = true;
        }
    }

    async fn authenticate(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.report.calls += 1;
        let response = self
            .http
            .post(format!("{}/auth", self.base))
            .form(&[
                ("username", self.username.as_str()),
                ("password", self.password.expose()),
                ("token", "true"),
                ("permissions", "true"),
            ])
            .send()
            .await
            .map_err(|e| no_answer(AUTH, &e))?;
        let status = response.status().as_u16();
        self.note_headers(response.headers(), status);
        self.report.token.status = status;
        self.report.token.content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        let text = response.text().await.unwrap_or_default();
        self.timed(AUTH, status, started);
        if !(200..300).contains(&status) {
            bail!("POST /auth answered {status}: check the gateway URL, username and password");
        }
        let jwt = text.trim().to_string();
        if let Some(claims) = jwt
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            self.report.token.claim_names = key_paths(&claims)
                .into_iter()
                .filter(|k| !k.contains('.'))
                .collect();
            if let (Some(exp), Some(iat)) = (claims["exp"].as_i64(), claims["iat"].as_i64()) {
                self.report.token.lifetime_secs = Some(exp - iat);
            }
        }
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(Secret::new(jwt));
        Ok(())
    }

    async fn list(
        &mut self,
        platform: &str,
        page_number: usize,
        page_size: usize,
    ) -> anyhow::Result<Reply> {
        self.call(
            Method::GET,
            SUMMARY,
            &format!(
                "/pm/v1/deploymentjobs/summary?platform={platform}&pageNumber={page_number}&pageSize={page_size}"
            ),
            None,
        )
        .await
    }

    async fn run(&mut self, opts: ProbeOptions) -> anyhow::Result<Report> {
        self.report.writes_allowed = opts.allow_writes;
        self.authenticate().await?;
        let mut names = BTreeSet::new();

        // The largest page of each platform says where the jobs are.
        let mut large: BTreeMap<&str, Reply> = BTreeMap::new();
        for platform in ["Windows", "Linux"] {
            let reply = self.list(platform, 0, 10_000).await?;
            let count = reply.array().map_or(0, Vec::len);
            self.report
                .paging
                .first_page_jobs
                .insert(platform.to_string(), count);
            large.insert(platform, reply);
        }
        let platform = if self.report.paging.first_page_jobs.get("Linux")
            > self.report.paging.first_page_jobs.get("Windows")
        {
            "Linux"
        } else {
            "Windows"
        };
        self.report.paging.platform = platform.to_string();
        let big = large.remove(platform).map(|r| r.json).unwrap_or_default();
        let big: Vec<Value> = big.and_then(|v| v.as_array().cloned()).unwrap_or_default();
        if opts.include_names {
            names.extend(
                big.iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_string)),
            );
        }

        let mut size_10 = Vec::new();
        for requested in PAGE_SIZES {
            let (status, returned) = if requested == 10_000 {
                (200, Some(big.len()))
            } else {
                let reply = self.list(platform, 0, requested).await?;
                if requested == 10 {
                    size_10 = reply.array().cloned().unwrap_or_default();
                }
                (reply.status, reply.array().map(Vec::len))
            };
            self.report.paging.page_sizes.push(PageSize {
                requested,
                status,
                returned,
            });
        }
        let second = self.list(platform, 1, 10_000).await?;
        let second_len = second.array().map(Vec::len);
        self.report.paging.second_page_jobs = second_len;
        if second_len.is_some_and(|n| n > 0) {
            self.report.paging.max_page_size = Some(big.len());
        }
        let mut reference = big.clone();
        reference.extend(second.array().cloned().unwrap_or_default());

        // Stability: pages 0-2 at pageSize 10 against the two large pages.
        if reference.len() > size_10.len() && !size_10.is_empty() {
            let mut paged = size_10.clone();
            for page in 1..3 {
                let reply = self.list(platform, page, 10).await?;
                let items = reply.array().cloned().unwrap_or_default();
                if items.is_empty() {
                    break;
                }
                paged.extend(items);
            }
            let ids = |items: &[Value]| -> Vec<String> {
                items
                    .iter()
                    .map(|s| s["id"].as_str().unwrap_or_default().to_string())
                    .collect()
            };
            let n = paged.len().min(reference.len());
            self.report.paging.stable_across_pages =
                Some(ids(&paged[..n]) == ids(&reference[..n]) && no_repeats(&ids(&paged)));
        }
        self.report.paging.order = consistent_orders(&big);
        self.report.paging.deleted_listed = big
            .iter()
            .filter(|s| s["deleted"].as_bool() == Some(true))
            .count();

        // A job document's shape, and the error answers.
        if let Some(id) = big.first().and_then(|s| s["id"].as_str()).map(String::from) {
            let reply = self
                .call(
                    Method::GET,
                    GET_JOB,
                    &format!("/pm/v1/deploymentjob/{id}"),
                    None,
                )
                .await?;
            self.report.paging.job_document_keys = reply
                .json
                .as_ref()
                .and_then(Value::as_object)
                .map(|m| m.len());
        }
        let random = uuid::Uuid::new_v4().to_string();
        let reply = self
            .call(
                Method::GET,
                GET_JOB,
                &format!("/pm/v1/deploymentjob/{random}"),
                None,
            )
            .await?;
        self.report.errors.unknown_job = reply.answer();
        // The first page that starts at the 10,000th record, counted in the real page size.
        let real = self
            .report
            .paging
            .max_page_size
            .unwrap_or(1_000)
            .clamp(1, 1_000);
        let reply = self
            .list(platform, 10_000usize.div_ceil(real), 1_000)
            .await?;
        self.report.errors.beyond_cap = reply.answer();

        if opts.allow_writes {
            let writes = self.writes(platform).await;
            match writes {
                Ok(w) => {
                    let left = self
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    if let Some(job) = left {
                        self.report.problems.push(
                            "the throwaway job was still there after its delete; deleted it once more"
                                .into(),
                        );
                        self.cleanup_handle().remove(job).await;
                    }
                    self.report.writes = Some(w);
                }
                Err(e) => {
                    self.report.problems.push(format!("{e:#}"));
                    let job = self
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    if let Some(job) = job {
                        self.cleanup_handle().remove(job).await;
                    }
                }
            }
        }
        if opts.include_names {
            self.report.names = Some(names.into_iter().collect());
        }
        self.report.header_names = self.headers.iter().cloned().collect();
        Ok(std::mem::take(&mut self.report))
    }

    /// Create, read, edit and delete one throwaway Disabled On-demand job.
    async fn writes(&mut self, platform: &str) -> anyhow::Result<WriteFindings> {
        let mut w = WriteFindings::default();
        let name = format!("qpm-probe-{}", uuid::Uuid::new_v4());
        let body = json!({
            "name": name,
            "description": "Throwaway job of `qpm-operator probe`; it deletes it within seconds. Safe to delete.",
            "type": "Install",
            "platform": platform,
            "scheduleType": "On-demand",
            "status": "Disabled",
        });
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Throwaway {
            name: name.clone(),
            platform: platform.to_string(),
            id: None,
        });
        let created = self
            .call(Method::POST, CREATE, "/pm/v1/deploymentjob", Some(&body))
            .await?;
        w.create = created.answer();
        let Some(id) = created
            .json
            .as_ref()
            .filter(|_| created.ok())
            .and_then(|j| j["id"].as_str())
            .map(String::from)
        else {
            if (400..500).contains(&created.status) {
                // Refused: nothing was created.
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                return Ok(w);
            }
            bail!(
                "POST /pm/v1/deploymentjob answered {}: whether the throwaway job exists is unknown",
                created.status
            );
        };
        if let Some(job) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            job.id = Some(id.clone());
        }
        let job_path = format!("/pm/v1/deploymentjob/{id}");
        let update_path = format!("/pm/v1/deploymentjob/update/{id}");

        let got = self.call(Method::GET, GET_JOB, &job_path, None).await?;
        w.get = Some(got.answer());
        let mut doc = got
            .json
            .filter(|j| j.is_object())
            .or(created.json)
            .unwrap_or_default();
        // Never enable: whatever the gateway answered, the body says Disabled.
        doc["status"] = json!("Disabled");
        doc["description"] =
            json!("Throwaway job of `qpm-operator probe` (edited). Safe to delete.");
        let updated = self
            .call(Method::PATCH, UPDATE, &update_path, Some(&doc))
            .await?;
        w.update = Some(updated.answer());
        if let Some(after) = updated
            .json
            .filter(|j| j.is_object() && updated.status < 300)
        {
            doc = after;
            doc["status"] = json!("Disabled");
        }
        doc["timeout"] = json!(-1);
        doc["timeoutUnit"] = Value::Null;
        let unset = self
            .call(Method::PATCH, UPDATE, &update_path, Some(&doc))
            .await?;
        w.update_unset_timeout = Some(unset.answer());

        let deleted = self.delete_one(&id).await?;
        w.delete = Some(deleted.answer());
        w.delete_item_status = item_status(&deleted, &id);
        let after = self.call(Method::GET, GET_JOB, &job_path, None).await?;
        w.get_after_delete = Some(after.answer());
        w.deleted_by_after_delete = after.ok()
            && after
                .json
                .as_ref()
                .is_some_and(|j| !j["deletedBy"]["date"].is_null());
        let listed = self.find_in_list(platform, &id).await?;
        w.listed_after_delete = listed.as_ref().map(Option::is_some);
        w.listed_deleted_flag = listed
            .as_ref()
            .map(|s| s.as_ref().is_some_and(|s| s["deleted"] == json!(true)));
        let gone = !after.ok() || w.deleted_by_after_delete;
        if gone {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        w.cleaned_up = gone;

        let random = uuid::Uuid::new_v4().to_string();
        let unknown = self.delete_one(&random).await?;
        w.delete_unknown = Some(unknown.answer());
        w.delete_unknown_item_status = item_status(&unknown, &random);
        Ok(w)
    }

    /// `DELETE /pm/v1/deploymentjobs` of one id.
    async fn delete_one(&mut self, id: &str) -> anyhow::Result<Reply> {
        let body = json!({"ids": [id]});
        self.call(Method::DELETE, DELETE, "/pm/v1/deploymentjobs", Some(&body))
            .await
    }

    /// The summary of `id` in the list (`Some(None)`: the whole list was read and it is not
    /// there; `None`: the list could not be read to its end within the call limit).
    async fn find_in_list(
        &mut self,
        platform: &str,
        id: &str,
    ) -> anyhow::Result<Option<Option<Value>>> {
        let page_size = self.report.paging.max_page_size.unwrap_or(10_000);
        for page in 0..MAX_LOOKUP_PAGES {
            let reply = self.list(platform, page, 10_000).await?;
            let Some(items) = reply.array() else {
                return Ok(None);
            };
            if let Some(found) = items.iter().find(|s| s["id"] == json!(id)) {
                return Ok(Some(Some(found.clone())));
            }
            if items.len() < page_size {
                return Ok(Some(None));
            }
        }
        Ok(None)
    }
}

/// A call without an answer, in words (never the error's own text, which may quote a URL).
fn no_answer(route: &str, e: &reqwest::Error) -> anyhow::Error {
    let why = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    anyhow!("{route}: no answer ({why})")
}

fn no_repeats(ids: &[String]) -> bool {
    let set: BTreeSet<&String> = ids.iter().collect();
    set.len() == ids.len()
}

/// The per-item `status` a bulk answer gives `id`.
fn item_status(reply: &Reply, id: &str) -> Option<String> {
    reply
        .array()?
        .iter()
        .find(|i| i["id"] == json!(id))
        .and_then(|i| i["status"].as_str())
        .map(String::from)
}

/// The orders a list page is consistent with (two or more items needed).
fn consistent_orders(items: &[Value]) -> Vec<String> {
    if items.len() < 2 {
        return Vec::new();
    }
    let date = |s: &Value, key: &str| s[key]["date"].as_i64().unwrap_or(0);
    let text = |s: &Value, key: &str| s[key].as_str().unwrap_or_default().to_string();
    let pairs = || items.windows(2).map(|w| (&w[0], &w[1]));
    let mut out = Vec::new();
    if pairs().all(|(a, b)| date(a, "created") <= date(b, "created")) {
        out.push("created".to_string());
    }
    if pairs().all(|(a, b)| date(a, "updated") >= date(b, "updated")) {
        out.push("updated".to_string());
    }
    if pairs().all(|(a, b)| text(a, "name") <= text(b, "name")) {
        out.push("name".to_string());
    }
    if pairs().all(|(a, b)| text(a, "id") <= text(b, "id")) {
        out.push("id".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_read_from_the_page() {
        let page = vec![
            json!({"id": "b", "name": "x", "created": {"date": 1}, "updated": {"date": 5}}),
            json!({"id": "a", "name": "y", "created": {"date": 2}, "updated": {"date": 3}}),
        ];
        assert_eq!(consistent_orders(&page), vec!["created", "updated", "name"]);
        assert!(consistent_orders(&page[..1]).is_empty());
    }

    #[test]
    fn the_budget_flag_reads_like_the_clients() {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            probe: ProbeArgs,
        }
        let parse = |argv: &[&str]| {
            Wrapper::try_parse_from(std::iter::once("probe").chain(argv.iter().copied()))
                .map(|w| w.probe.qualys_budget)
        };
        assert_eq!(parse(&[]).unwrap(), CallBudget::DOCUMENTED);
        assert_eq!(
            parse(&["--qualys-budget", "20/30s"]).unwrap(),
            CallBudget {
                calls: 20,
                window: Duration::from_secs(30)
            }
        );
        assert!(parse(&["--qualys-budget", "300"]).is_err());
        assert!(parse(&["--qualys-budget", "0/1h"]).is_err());
        assert!(parse(&["--qualys-budget", "5/0s"]).is_err());
    }

    #[test]
    fn sim_flags_parse_like_the_sim_command() {
        let args = sim_flags("--max-page-size 50 --delete soft").unwrap();
        let config = args.resolve().unwrap();
        assert_eq!(config.max_page_size, Some(50));
        assert_eq!(config.delete_mode, sim::DeleteMode::Soft);
        assert!(sim_flags("--no-such-flag").is_err());
    }
}
