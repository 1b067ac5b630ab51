//! The HTTP client of the Qualys PM gateway (and of the bundled simulator, which speaks the same
//! protocol): authentication with a shared token cache, retries that never repeat a create
//! blindly, a per-connection request budget shared fairly between tenants, and typed errors.
//!
//! One [`Client`] serves one [`Connection`]. Clones and [`Client::for_tenant`] views share its
//! token, its HTTP connection pool and its [`Budget`]; nothing is shared between connections, so
//! a token is never sent on behalf of another identity.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use base64::Engine as _;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, warn};

use super::budget::{Budget, RateLimitInfo};
use super::error::{Error, LIMIT_EXCEEDED_CODE, ServerMessage, transport_message};
use super::model::{BulkItemResult, IdList, JobBody, JobSummary, values};

/// A secret string (a password or a token). Its `Debug` and `Display` print `<redacted>`;
/// [`Secret::expose`] is for the one place that sends it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call it only where the value leaves for the gateway.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where and as whom to talk to the gateway.
#[derive(Clone)]
pub struct Connection {
    /// e.g. `https://gateway.qg1.apps.qualys.com` (or the simulator's `http://127.0.0.1:PORT`).
    pub gateway_url: String,
    pub username: String,
    pub password: Secret,
    /// PEM certificates trusted in addition to the system roots (a private CA, a TLS-inspecting
    /// proxy).
    pub ca_bundle: Option<Vec<u8>>,
}

impl Connection {
    pub fn new(
        gateway_url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Connection {
            gateway_url: gateway_url.into(),
            username: username.into(),
            password: password.into(),
            ca_bundle: None,
        }
    }

    /// Who this connection is: (gateway URL, username, SHA-256 of the password). Two
    /// connections with the same identity may share a client and its token; no others may.
    pub fn identity(&self) -> ConnectionId {
        ConnectionId {
            gateway_url: normalise_gateway(&self.gateway_url),
            username: self.username.clone(),
            password_sha256: Sha256::digest(self.password.expose().as_bytes()).into(),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("gateway_url", &without_userinfo(&self.gateway_url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field(
                "ca_bundle",
                &self
                    .ca_bundle
                    .as_ref()
                    .map(|b| format!("<{} bytes>", b.len())),
            )
            .finish()
    }
}

/// A URL as it may be printed: a `user:password@` part (refused by `Client::new`, but a
/// `Connection` can be printed before that) is blanked out.
fn without_userinfo(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) if before.contains("://") => {
            let scheme = before.split("://").next().unwrap_or_default();
            format!("{scheme}://<redacted>@{after}")
        }
        _ => url.to_owned(),
    }
}

fn normalise_gateway(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// The identity of a [`Connection`]. Its `Debug` and `Display` show `username@gateway` only:
/// the password digest is for comparing, not for printing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    gateway_url: String,
    username: String,
    password_sha256: [u8; 32],
}

impl ConnectionId {
    pub fn gateway_url(&self) -> &str {
        &self.gateway_url
    }

    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}",
            self.username,
            without_userinfo(&self.gateway_url)
        )
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({self})")
    }
}

/// The API operations, named by the simulator's route templates (also its counter keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Auth,
    Create,
    Get,
    Update,
    ListSummaries,
    Delete,
    SetStatus,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Auth,
        Endpoint::Create,
        Endpoint::Get,
        Endpoint::Update,
        Endpoint::ListSummaries,
        Endpoint::Delete,
        Endpoint::SetStatus,
    ];

    /// `METHOD /route/{template}`, exactly as the simulator counts it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::Auth => "POST /auth",
            Endpoint::Create => "POST /pm/v1/deploymentjob",
            Endpoint::Get => "GET /pm/v1/deploymentjob/{id}",
            Endpoint::Update => "PATCH /pm/v1/deploymentjob/update/{id}",
            Endpoint::ListSummaries => "GET /pm/v1/deploymentjobs/summary",
            Endpoint::Delete => "DELETE /pm/v1/deploymentjobs",
            Endpoint::SetStatus => "POST /pm/v1/deploymentjobs/update/status/{action}",
        }
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Auth => "auth",
            Endpoint::Create => "create",
            Endpoint::Get => "get",
            Endpoint::Update => "update",
            Endpoint::ListSummaries => "list_summaries",
            Endpoint::Delete => "delete",
            Endpoint::SetStatus => "set_status",
        }
    }

    fn method(self) -> Method {
        match self {
            Endpoint::Auth | Endpoint::Create | Endpoint::SetStatus => Method::POST,
            Endpoint::Get | Endpoint::ListSummaries => Method::GET,
            Endpoint::Update => Method::PATCH,
            Endpoint::Delete => Method::DELETE,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states a job can be put in through the status endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    Enabled,
    Disabled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Enabled => values::ENABLED,
            JobState::Disabled => values::DISABLED,
        }
    }
}

/// Sees every HTTP exchange of a client (for metrics). Called inline: keep it cheap.
pub trait Observer: Send + Sync {
    /// One exchange finished: `status` is `None` when no complete answer arrived.
    fn on_response(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration);
    /// An answer carried rate-limit headers.
    fn on_rate_limit(&self, _info: &RateLimitInfo) {}
}

/// Proxy settings, by default read from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
/// `NO_PROXY` (either case). Loopback addresses never go through a proxy.
#[derive(Clone, Default, PartialEq)]
pub struct ProxySettings {
    /// Proxy for `http://` gateways.
    pub http: Option<String>,
    /// Proxy for `https://` gateways.
    pub https: Option<String>,
    /// Hosts, domains and CIDR ranges reached directly (curl's syntax).
    pub no_proxy: Option<String>,
}

impl ProxySettings {
    /// The proxy environment variables, as curl reads them.
    pub fn from_env() -> Self {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok())
                .filter(|v| !v.trim().is_empty())
        };
        let all = var(&["ALL_PROXY", "all_proxy"]);
        ProxySettings {
            http: var(&["HTTP_PROXY", "http_proxy"]).or_else(|| all.clone()),
            https: var(&["HTTPS_PROXY", "https_proxy"]).or(all),
            no_proxy: var(&["NO_PROXY", "no_proxy"]),
        }
    }

    /// No proxy at all.
    pub fn none() -> Self {
        ProxySettings::default()
    }
}

impl fmt::Debug for ProxySettings {
    // Proxy URLs may carry credentials (`http://user:pass@proxy`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| "<set>");
        f.debug_struct("ProxySettings")
            .field("http", &shown(&self.http))
            .field("https", &shown(&self.https))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// Loopback is always reached directly: the simulator runs there, and a proxy in the
/// environment must not swallow it.
const LOOPBACK_NO_PROXY: &str = "localhost,127.0.0.0/8,::1";

/// How a [`Client`] behaves. `Default` is modest: the documented gateway example is 300 calls
/// per hour with a concurrency of 2, and headers lower the rate further when the gateway sends
/// them.
#[derive(Clone)]
pub struct ClientOptions {
    /// Whole-exchange timeout of one attempt (connect, send, answer, body).
    pub request_timeout: Duration,
    /// Timeout of establishing a connection.
    pub connect_timeout: Duration,
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: u32,
    /// No retry starts once this much time has passed since the first attempt (or would pass
    /// during the wait before it).
    pub max_retry_time: Duration,
    /// First backoff delay; doubles each retry (with jitter) up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests per second for the connection (all tenants together); `None` = no client limit.
    pub rps: Option<f64>,
    /// Requests in flight for the connection; `None` = no client limit.
    pub concurrency: Option<usize>,
    /// `pageSize` of summary lists (1–10,000).
    pub page_size: u32,
    pub proxy: ProxySettings,
    pub user_agent: String,
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 4,
            max_retry_time: Duration::from_secs(120),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            rps: Some(1.0),
            concurrency: Some(2),
            page_size: 1000,
            proxy: ProxySettings::from_env(),
            user_agent: concat!("qpm-operator/", env!("CARGO_PKG_VERSION")).to_owned(),
            observer: None,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("max_retry_time", &self.max_retry_time)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("rps", &self.rps)
            .field("concurrency", &self.concurrency)
            .field("page_size", &self.page_size)
            .field("proxy", &self.proxy)
            .field("user_agent", &self.user_agent)
            .field("observer", &self.observer.as_ref().map(|_| "<observer>"))
            .finish()
    }
}

/// The outcome of one id of a bulk call (delete, status change).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemOutcome {
    pub id: String,
    /// The job name, when the gateway reported it.
    pub name: Option<String>,
    /// `Err(Error::ItemFailed { .. })` when the gateway reported a failure for this id, or did
    /// not mention it at all.
    pub result: Result<(), Error>,
}

/// A client of one Qualys PM connection. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    tenant: Arc<str>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.inner.identity)
            .field("tenant", &self.tenant)
            .finish()
    }
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    username: String,
    password: Secret,
    identity: ConnectionId,
    opts: ClientOptions,
    budget: Arc<Budget>,
    /// Held across `/auth` so concurrent callers share one refresh.
    token: tokio::sync::Mutex<TokenSlot>,
    generations: AtomicU64,
    /// `/auth` calls finished so far (successful or not).
    fetches: AtomicU64,
}

#[derive(Default)]
struct TokenSlot {
    token: Option<CachedToken>,
    failure: Option<AuthFailure>,
}

struct CachedToken {
    jwt: Secret,
    refresh_at: Instant,
    generation: u64,
}

/// The last `/auth` that failed.
struct AuthFailure {
    error: Error,
    at: Instant,
    /// Its number in `Inner::fetches`.
    fetch: u64,
}

/// How long refused credentials are not offered again (except by `authenticate`): a controller
/// with many jobs must not hammer `/auth` with a wrong password and get the account locked. A
/// corrected password is a new connection identity, hence a new client, unaffected.
const AUTH_FAILURE_COOLDOWN: Duration = Duration::from_secs(60);

/// The token lifetime the docs give (4 h), used when the JWT does not say.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(4 * 3600);

impl Client {
    /// A client of `conn`. Fails with [`Error::Config`] on a bad URL, empty credentials, a bad
    /// CA bundle or proxy, or unusable options. No request is made.
    pub fn new(conn: Connection, opts: ClientOptions) -> Result<Client, Error> {
        // reqwest is built without a default crypto provider; the process uses ring everywhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = parse_gateway(&conn.gateway_url)?;
        if conn.username.trim().is_empty() {
            return Err(Error::config("username is empty"));
        }
        if conn.password.is_empty() {
            return Err(Error::config("password is empty"));
        }
        check_options(&opts)?;
        if base.scheme() == "http" && !is_loopback(&base) {
            warn!(
                gateway = %base,
                "the gateway URL is plain http: the password and token will cross the network unencrypted"
            );
        }

        let mut builder = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .connect_timeout(opts.connect_timeout.min(opts.request_timeout))
            // A redirect could carry the form with the password to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(opts.user_agent.clone())
            .no_proxy();
        for proxy in build_proxies(&opts.proxy)? {
            builder = builder.proxy(proxy);
        }
        if let Some(pem) = &conn.ca_bundle {
            builder = builder.tls_certs_merge(parse_ca_bundle(pem)?);
        }
        let http = builder.build().map_err(|e| {
            Error::config(format!(
                "cannot build the HTTP client: {}",
                transport_message(&e)
            ))
        })?;

        let identity = conn.identity();
        let budget = Budget::new(opts.rps, opts.concurrency);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                username: conn.username,
                password: conn.password,
                identity,
                opts,
                budget,
                token: tokio::sync::Mutex::new(TokenSlot::default()),
                generations: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
            }),
            tenant: Arc::from(""),
        })
    }

    /// The same client (token, pool, budget) acting for `tenant` (a namespace): when the budget
    /// is the bottleneck, waiting tenants are served in turn.
    pub fn for_tenant(&self, tenant: &str) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            tenant: Arc::from(tenant),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn identity(&self) -> &ConnectionId {
        &self.inner.identity
    }

    /// The request budget shared by all clones and tenants of this client.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.inner.budget
    }

    /// Get a fresh token now, replacing any cached one (what `check` uses to test credentials).
    pub async fn authenticate(&self) -> Result<(), Error> {
        let mut slot = self.inner.token.lock().await;
        self.inner.refresh(&mut slot).await.map(drop)
    }

    /// `POST /pm/v1/deploymentjob`. Never retried once the request may have reached the
    /// server: such failures are [`Error::OutcomeUnknown`].
    pub async fn create_job(&self, body: &JobBody) -> Result<JobBody, Error> {
        let name = body.job_name().map(str::to_owned);
        let call = Call::new(Endpoint::Create, self.url(&["pm", "v1", "deploymentjob"])?)
            .json(body)?
            .create(name.clone())
            .what("the create endpoint (is the gateway URL right?)");
        let bytes = self.execute(&call).await?;
        // The job exists now; an answer we cannot read leaves its id unknown.
        let unknown = |cause: String| Error::OutcomeUnknown {
            name: name.clone(),
            cause,
        };
        let job = JobBody::from_json(&bytes)
            .map_err(|e| unknown(format!("the gateway's answer could not be read: {e}")))?;
        if job.job_id().is_none_or(str::is_empty) {
            return Err(unknown("the gateway's answer has no job id".to_owned()));
        }
        Ok(job)
    }

    /// `GET /pm/v1/deploymentjob/{id}`.
    pub async fn get_job(&self, id: &str) -> Result<JobBody, Error> {
        check_id(id)?;
        let call = Call::new(Endpoint::Get, self.url(&["pm", "v1", "deploymentjob", id])?)
            .what(format!("deployment job {id}"));
        let bytes = self.execute(&call).await?;
        decode(Endpoint::Get, &bytes)
    }

    /// `PATCH /pm/v1/deploymentjob/update/{id}` with the full body (GET, modify, PATCH).
    pub async fn update_job(&self, id: &str, body: &JobBody) -> Result<JobBody, Error> {
        check_id(id)?;
        let call = Call::new(
            Endpoint::Update,
            self.url(&["pm", "v1", "deploymentjob", "update", id])?,
        )
        .json(body)?
        .what(format!("deployment job {id}"));
        let bytes = self.execute(&call).await?;
        decode(Endpoint::Update, &bytes)
    }

    /// Every job summary of `platform` (`Windows` or `Linux`), page by page (0-based) until a
    /// page comes back shorter than the page size (or brings no job not seen already). Ids seen
    /// twice (a job created between pages shifts the offsets) are kept once.
    pub async fn list_summaries(&self, platform: &str) -> Result<Vec<JobSummary>, Error> {
        if platform.trim().is_empty() {
            return Err(Error::Invalid {
                field: Some("platform".to_owned()),
                message: "a platform (Windows or Linux) is required".to_owned(),
            });
        }
        let page_size = self.inner.opts.page_size;
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        for page in 0u32.. {
            let mut url = self.url(&["pm", "v1", "deploymentjobs", "summary"])?;
            url.query_pairs_mut()
                .append_pair("platform", platform)
                .append_pair("pageNumber", &page.to_string())
                .append_pair("pageSize", &page_size.to_string());
            let call = Call::new(Endpoint::ListSummaries, url)
                .what("the job summary endpoint (is the gateway URL right?)");
            let bytes = self.execute(&call).await?;
            let items: Vec<JobSummary> = decode(Endpoint::ListSummaries, &bytes)?;
            let count = items.len();
            let mut new = 0;
            for item in items {
                let fresh = match item.id.get() {
                    Some(id) => seen.insert(id.clone()),
                    None => true,
                };
                if fresh {
                    all.push(item);
                    new += 1;
                }
            }
            if count < page_size as usize {
                break;
            }
            if new == 0 {
                // A gateway that ignores pageNumber would otherwise be asked forever.
                warn!(
                    platform,
                    page, "a full page of the job list brought no new job; stopping there"
                );
                break;
            }
        }
        Ok(all)
    }

    /// [`list_summaries`](Self::list_summaries) of Windows, then of Linux.
    pub async fn list_all_summaries(&self) -> Result<Vec<JobSummary>, Error> {
        let mut all = self.list_summaries(values::WINDOWS).await?;
        all.extend(self.list_summaries(values::LINUX).await?);
        Ok(all)
    }

    /// `DELETE /pm/v1/deploymentjobs` with `{"ids": [...]}`: one outcome per distinct id, in the
    /// order given.
    pub async fn delete_jobs(&self, ids: &[String]) -> Result<Vec<ItemOutcome>, Error> {
        let url = self.url(&["pm", "v1", "deploymentjobs"])?;
        self.bulk(Endpoint::Delete, url, ids).await
    }

    /// `POST /pm/v1/deploymentjobs/update/status/{Enabled|Disabled}`: one outcome per distinct
    /// id, in the order given.
    pub async fn set_status(
        &self,
        ids: &[String],
        state: JobState,
    ) -> Result<Vec<ItemOutcome>, Error> {
        let url = self.url(&[
            "pm",
            "v1",
            "deploymentjobs",
            "update",
            "status",
            state.as_str(),
        ])?;
        self.bulk(Endpoint::SetStatus, url, ids).await
    }

    async fn bulk(
        &self,
        endpoint: Endpoint,
        url: Url,
        ids: &[String],
    ) -> Result<Vec<ItemOutcome>, Error> {
        let mut distinct = Vec::new();
        for id in ids {
            check_id(id)?;
            if !distinct.contains(id) {
                distinct.push(id.clone());
            }
        }
        if distinct.is_empty() {
            return Ok(Vec::new());
        }
        let call = Call::new(endpoint, url)
            .json(&IdList {
                ids: distinct.clone(),
            })?
            .what("the bulk endpoint (is the gateway URL right?)");
        let bytes = self.execute(&call).await?;
        let items: Vec<BulkItemResult> = decode(endpoint, &bytes)?;
        Ok(distinct
            .into_iter()
            .map(|id| {
                let item = items.iter().find(|i| i.id.get() == Some(&id));
                let name = item.and_then(|i| i.name.get().cloned());
                let result = match item {
                    Some(i) if i.succeeded() => Ok(()),
                    Some(i) => Err(Error::ItemFailed {
                        id: id.clone(),
                        message: i
                            .error
                            .get()
                            .filter(|e| !e.is_empty())
                            .cloned()
                            .unwrap_or_else(|| {
                                format!(
                                    "the gateway reported status {:?} without a reason",
                                    i.status.get().map(String::as_str).unwrap_or("")
                                )
                            }),
                    }),
                    None => Err(Error::ItemFailed {
                        id: id.clone(),
                        message: "the gateway's answer did not mention this job".to_owned(),
                    }),
                };
                ItemOutcome { id, name, result }
            })
            .collect())
    }

    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::config("gatewayUrl cannot have a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Run one call with retries and the 401 re-authentication, and return the 2xx body.
    async fn execute(&self, call: &Call) -> Result<Vec<u8>, Error> {
        let progress = Progress::default();
        let opts = &self.inner.opts;
        (|| self.attempt(call, &progress))
            .retry(backoff(opts))
            .sleep(tokio::time::sleep)
            .when(|f: &Failure| f.retry)
            .adjust(within(opts.max_retry_time))
            .notify(|f: &Failure, delay| {
                debug!(
                    endpoint = call.endpoint.as_str(),
                    error = f.error.kind(),
                    delay_ms = delay.as_millis() as u64,
                    "retrying"
                );
            })
            .await
            .map_err(|f| f.error)
    }

    async fn attempt(&self, call: &Call, progress: &Progress) -> Result<Vec<u8>, Failure> {
        let attempt = progress.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        loop {
            // The permit first: a request can queue for a long time, and its token should be
            // the freshest one when it leaves.
            let permit = self.inner.budget.acquire(&self.tenant).await;
            let (token, generation) = self.inner.token().await.map_err(Failure::fatal)?;
            let span = debug_span!(
                "qualys_request",
                endpoint = call.endpoint.as_str(),
                tenant = %self.tenant,
                attempt,
                status = tracing::field::Empty,
            );
            let exchange = self
                .inner
                .exchange(call.endpoint, self.inner.request(call, &token))
                .instrument(span)
                .await;
            drop(permit);
            let exchange = match exchange {
                Ok(x) => x,
                Err(e) => return Err(classify_transport(call, &e, &self.inner.opts)),
            };
            if exchange.status.is_success() {
                return Ok(exchange.body);
            }
            if exchange.status == StatusCode::UNAUTHORIZED
                && !progress.reauthenticated.swap(true, Ordering::Relaxed)
            {
                // The token expired or was revoked: one fresh token, one more try.
                self.inner.invalidate(generation).await;
                continue;
            }
            return Err(classify_status(call, &exchange, &self.inner.username));
        }
    }
}

impl Inner {
    /// The cached token, or a new one when there is none or it is due for refresh.
    async fn token(&self) -> Result<(Secret, u64), Error> {
        let seen = self.fetches.load(Ordering::SeqCst);
        let mut slot = self.token.lock().await;
        if let Some(t) = &slot.token
            && Instant::now() < t.refresh_at
        {
            return Ok((t.jwt.clone(), t.generation));
        }
        if let Some(failure) = &slot.failure {
            // An `/auth` that failed while we queued for the lock answers for us too …
            let fresh = failure.fetch > seen;
            // … and refused credentials are not offered again for a while.
            let refused = matches!(
                failure.error,
                Error::Unauthorized { .. } | Error::Forbidden { .. }
            ) && failure.at.elapsed() < AUTH_FAILURE_COOLDOWN;
            if fresh || refused {
                return Err(failure.error.clone());
            }
        }
        self.refresh(&mut slot).await
    }

    /// `/auth` now, recording the outcome in the slot.
    async fn refresh(&self, slot: &mut TokenSlot) -> Result<(Secret, u64), Error> {
        let result = self.fetch_token().await;
        let fetch = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        match result {
            Ok(fresh) => {
                let out = (fresh.jwt.clone(), fresh.generation);
                slot.token = Some(fresh);
                slot.failure = None;
                Ok(out)
            }
            Err(error) => {
                slot.failure = Some(AuthFailure {
                    error: error.clone(),
                    at: Instant::now(),
                    fetch,
                });
                Err(error)
            }
        }
    }

    /// Forget the token of `generation` (refused with a 401); a newer one is kept.
    async fn invalidate(&self, generation: u64) {
        let mut slot = self.token.lock().await;
        if slot
            .token
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            slot.token = None;
        }
    }

    /// `POST /auth`, retried on transport errors, 5xx and 429.
    async fn fetch_token(&self) -> Result<CachedToken, Error> {
        let call = Call::new(Endpoint::Auth, self.auth_url()?)
            .what("the /auth endpoint (is gatewayUrl the API gateway, e.g. https://gateway.qg1.apps.qualys.com?)");
        let body = (|| async {
            let request = self
                .http
                .post(call.url.clone())
                .header(header::ACCEPT, "text/plain, application/json")
                .form(&[
                    ("username", self.username.as_str()),
                    ("password", self.password.expose()),
                    ("token", "true"),
                    ("permissions", "true"),
                ]);
            let span = debug_span!(
                "qualys_request",
                endpoint = Endpoint::Auth.as_str(),
                status = tracing::field::Empty
            );
            let exchange = self
                .exchange(Endpoint::Auth, request)
                .instrument(span)
                .await
                .map_err(|e| classify_transport(&call, &e, &self.opts))?;
            if exchange.status.is_success() {
                Ok(exchange.body)
            } else {
                Err(classify_status(&call, &exchange, &self.username))
            }
        })
        .retry(backoff(&self.opts))
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| f.retry)
        .adjust(within(self.opts.max_retry_time))
        .await
        .map_err(|f| f.error)?;

        let jwt = std::str::from_utf8(&body).unwrap_or_default().trim();
        if jwt.is_empty() || jwt.len() > 16 * 1024 || !jwt.bytes().all(|b| b.is_ascii_graphic()) {
            // Not a token; the body is not quoted, in case it is one after all.
            return Err(Error::Decode {
                endpoint: Endpoint::Auth,
                message: "the answer is not a JWT".to_owned(),
            });
        }
        let lifetime = token_lifetime(jwt).unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        debug!(
            lifetime_s = lifetime.as_secs(),
            "authenticated; token cached"
        );
        Ok(CachedToken {
            jwt: Secret::new(jwt),
            refresh_at: Instant::now() + (lifetime - margin),
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    fn auth_url(&self) -> Result<Url, Error> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::config("gatewayUrl cannot have a path"))?
            .pop_if_empty()
            .push("auth");
        Ok(url)
    }

    fn request(&self, call: &Call, token: &Secret) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(call.endpoint.method(), call.url.clone())
            .header(header::ACCEPT, "application/json")
            .bearer_auth(token.expose());
        if let Some(body) = &call.body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        request
    }

    /// Send one request and read its whole answer; report it to the budget and the observer.
    async fn exchange(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<Exchange, reqwest::Error> {
        let started = Instant::now();
        let result = async {
            let response = request.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let info = rate_limit_info(&headers);
            if !info.is_empty() {
                self.budget
                    .observe(&info, status == StatusCode::TOO_MANY_REQUESTS);
                if let Some(observer) = &self.opts.observer {
                    observer.on_rate_limit(&info);
                }
            }
            let body = response.bytes().await?.to_vec();
            Ok(Exchange {
                status,
                headers,
                info,
                body,
            })
        }
        .await;
        let elapsed = started.elapsed();
        let status = result.as_ref().ok().map(|x| x.status.as_u16());
        tracing::Span::current().record("status", status.unwrap_or(0));
        debug!(
            elapsed_ms = elapsed.as_millis() as u64,
            status, "exchange finished"
        );
        if let Some(observer) = &self.opts.observer {
            observer.on_response(endpoint, status, elapsed);
        }
        result
    }
}

/// One API call, ready to be sent as many times as the retry rules allow.
struct Call {
    endpoint: Endpoint,
    url: Url,
    body: Option<Vec<u8>>,
    /// `Some(name)` for a create: not to be repeated once it may have reached the server.
    create: Option<Option<String>>,
    /// What a 404 means, for the message.
    what: String,
}

impl Call {
    fn new(endpoint: Endpoint, url: Url) -> Self {
        Call {
            endpoint,
            url,
            body: None,
            create: None,
            what: String::new(),
        }
    }

    fn json(mut self, body: &impl serde::Serialize) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Invalid {
            field: None,
            message: format!("the request body cannot be encoded as JSON: {e}"),
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    fn create(mut self, name: Option<String>) -> Self {
        self.create = Some(name);
        self
    }

    fn what(mut self, what: impl Into<String>) -> Self {
        self.what = what.into();
        self
    }

    fn outcome_unknown(&self, cause: String) -> Option<Error> {
        self.create.as_ref().map(|name| Error::OutcomeUnknown {
            name: name.clone(),
            cause,
        })
    }
}

#[derive(Default)]
struct Progress {
    attempts: AtomicU32,
    reauthenticated: AtomicBool,
}

struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    info: RateLimitInfo,
    body: Vec<u8>,
}

/// A failed attempt: the error to report, whether another attempt may help, and how long the
/// gateway asked us to wait.
struct Failure {
    error: Error,
    retry: bool,
    wait: Option<Duration>,
}

impl Failure {
    fn fatal(error: Error) -> Self {
        Failure {
            error,
            retry: false,
            wait: None,
        }
    }

    fn retry(error: Error, wait: Option<Duration>) -> Self {
        Failure {
            error,
            retry: true,
            wait,
        }
    }
}

/// Exponential backoff with jitter, `max_attempts` in all.
fn backoff(opts: &ClientOptions) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(opts.min_backoff)
        .with_max_delay(opts.max_backoff)
        .with_jitter()
        .with_max_times(opts.max_attempts.saturating_sub(1) as usize)
}

/// The delay before the next attempt: the backoff's, or the server's wait when that is longer;
/// none once out of attempts (whatever the server asks for) or when the wait would end past
/// `max_retry_time` from now on.
fn within(max_retry_time: Duration) -> impl FnMut(&Failure, Option<Duration>) -> Option<Duration> {
    let started = Instant::now();
    move |failure, delay| {
        let delay = delay?;
        let delay = failure.wait.map_or(delay, |w| w.max(delay));
        (started.elapsed() + delay <= max_retry_time).then_some(delay)
    }
}

fn classify_transport(call: &Call, err: &reqwest::Error, opts: &ClientOptions) -> Failure {
    let endpoint = call.endpoint;
    if err.is_builder() {
        return Failure::fatal(Error::config(format!(
            "cannot build the request: {}",
            transport_message(err)
        )));
    }
    // Nothing was sent when the connection could not be made: even a create may try again.
    if err.is_connect() {
        return Failure::retry(
            Error::Transport {
                endpoint,
                message: transport_message(err),
            },
            None,
        );
    }
    let (error, cause) = if err.is_timeout() {
        (
            Error::Timeout {
                endpoint,
                after: opts.request_timeout,
            },
            format!(
                "no complete answer within {}s",
                opts.request_timeout.as_secs_f64()
            ),
        )
    } else {
        let message = transport_message(err);
        (
            Error::Transport {
                endpoint,
                message: message.clone(),
            },
            format!("the connection failed after the request was sent: {message}"),
        )
    };
    match call.outcome_unknown(cause) {
        Some(unknown) => Failure::fatal(unknown),
        None => Failure::retry(error, None),
    }
}

fn classify_status(call: &Call, x: &Exchange, username: &str) -> Failure {
    let endpoint = call.endpoint;
    let status = x.status.as_u16();
    let server = ServerMessage::parse(&x.body);
    let message = server.or_status(status);
    match x.status {
        StatusCode::TOO_MANY_REQUESTS => {
            let wait = x.info.wait();
            Failure::retry(Error::RateLimited { retry_after: wait }, wait)
        }
        // The classic API's concurrency (1960) and rate (1965) limits.
        StatusCode::CONFLICT if matches!(server.code.as_deref(), Some("1960" | "1965")) => {
            let wait = x.info.wait();
            Failure::retry(Error::RateLimited { retry_after: wait }, wait)
        }
        s if s.is_server_error() => {
            let cause = format!("HTTP {status} after the request was sent");
            match call.outcome_unknown(cause) {
                Some(unknown) => Failure::fatal(unknown),
                None => Failure::retry(
                    Error::Unavailable {
                        endpoint,
                        status,
                        message,
                    },
                    x.info.wait(),
                ),
            }
        }
        StatusCode::BAD_REQUEST if server.code.as_deref() == Some(LIMIT_EXCEEDED_CODE) => {
            Failure::fatal(Error::LimitExceeded { message })
        }
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            Failure::fatal(Error::Invalid {
                field: server.field,
                message,
            })
        }
        StatusCode::UNAUTHORIZED => Failure::fatal(Error::Unauthorized {
            message: if endpoint == Endpoint::Auth {
                format!(
                    "the gateway refused the username or password of user {username:?} \
                     (HTTP 401); check the credentials of the connection"
                )
            } else {
                format!(
                    "the gateway refused a freshly issued token of user {username:?} \
                     (HTTP 401 twice): {message}"
                )
            },
        }),
        StatusCode::FORBIDDEN => Failure::fatal(Error::Forbidden {
            message: format!("user {username:?}: {message}"),
        }),
        StatusCode::NOT_FOUND => Failure::fatal(Error::NotFound {
            what: call.what.clone(),
        }),
        s if s.is_redirection() => {
            let location = x
                .headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| Url::parse(l).ok())
                .map(|mut u| {
                    // Only where it points, nothing it might carry.
                    let _ = u.set_username("");
                    let _ = u.set_password(None);
                    u.set_query(None);
                    u.to_string()
                })
                .unwrap_or_else(|| "elsewhere".to_owned());
            Failure::fatal(Error::Unexpected {
                endpoint,
                status,
                message: format!(
                    "redirected to {location}; set the gateway URL to the address that answers \
                     directly (redirects are not followed, so credentials stay where they belong)"
                ),
            })
        }
        _ => Failure::fatal(Error::Unexpected {
            endpoint,
            status,
            message,
        }),
    }
}

fn decode<T: serde::de::DeserializeOwned>(endpoint: Endpoint, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        endpoint,
        message: e.to_string(),
    })
}

fn check_id(id: &str) -> Result<(), Error> {
    if id.trim().is_empty() {
        return Err(Error::Invalid {
            field: Some("id".to_owned()),
            message: "a job id is required".to_owned(),
        });
    }
    Ok(())
}

fn parse_gateway(raw: &str) -> Result<Url, Error> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Error::config("gatewayUrl is empty"));
    }
    // The parse error never quotes the input, which might hold credentials.
    let url = Url::parse(raw)
        .map_err(|e| Error::config(format!("gatewayUrl is not a valid URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::config(
            "gatewayUrl must not contain a user name or password; give them as username and password",
        ));
    }
    if !matches!(url.scheme(), "https" | "http") {
        return Err(Error::config(format!(
            "gatewayUrl must be an https:// (or http://) URL, not {}://",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::config("gatewayUrl has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::config(
            "gatewayUrl must not have a query or fragment",
        ));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check_options(opts: &ClientOptions) -> Result<(), Error> {
    if opts.max_attempts == 0 {
        return Err(Error::config("max_attempts must be at least 1"));
    }
    if opts.request_timeout.is_zero() {
        return Err(Error::config("the request timeout must be positive"));
    }
    if let Some(rps) = opts.rps
        && !(rps.is_finite() && rps > 0.0)
    {
        return Err(Error::config(format!(
            "the request rate must be a positive number, not {rps}"
        )));
    }
    if opts.concurrency == Some(0) {
        return Err(Error::config("the concurrency must be at least 1"));
    }
    if !(1..=10_000).contains(&opts.page_size) {
        return Err(Error::config(format!(
            "the page size must be between 1 and 10000, not {}",
            opts.page_size
        )));
    }
    Ok(())
}

fn build_proxies(settings: &ProxySettings) -> Result<Vec<reqwest::Proxy>, Error> {
    let no_proxy = match settings.no_proxy.as_deref().map(str::trim) {
        Some(list) if !list.is_empty() => format!("{list},{LOOPBACK_NO_PROXY}"),
        _ => LOOPBACK_NO_PROXY.to_owned(),
    };
    let mut proxies = Vec::new();
    for (name, value, https) in [
        ("HTTPS_PROXY", &settings.https, true),
        ("HTTP_PROXY", &settings.http, false),
    ] {
        let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        let proxy = if https {
            reqwest::Proxy::https(value)
        } else {
            reqwest::Proxy::http(value)
        };
        // The value is not quoted: proxy URLs often carry a password.
        let proxy = proxy
            .map_err(|_| Error::config(format!("{name} is not a valid proxy URL")))?
            .no_proxy(reqwest::NoProxy::from_string(&no_proxy));
        proxies.push(proxy);
    }
    Ok(proxies)
}

fn parse_ca_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, Error> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| {
        Error::config("caBundle is not valid PEM (expected -----BEGIN CERTIFICATE----- blocks)")
    })?;
    if certs.is_empty() {
        return Err(Error::config(
            "caBundle holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
        ));
    }
    Ok(certs)
}

/// `Retry-After`, `X-RateLimit-*` and `X-ConcurrencyLimit-Limit` of an answer.
fn rate_limit_info(headers: &HeaderMap) -> RateLimitInfo {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    let seconds = |name: &str| text(name).and_then(parse_seconds);
    RateLimitInfo {
        limit: number("x-ratelimit-limit"),
        window: seconds("x-ratelimit-window-sec"),
        remaining: number("x-ratelimit-remaining"),
        to_wait: seconds("x-ratelimit-towait-sec"),
        retry_after: text("retry-after").and_then(parse_retry_after),
        concurrency_limit: number("x-concurrencylimit-limit")
            .or_else(|| number("x-concurrency-limit-limit")),
    }
}

fn parse_seconds(value: &str) -> Option<Duration> {
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Some(d) = parse_seconds(value) {
        return Some(d);
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(
        Duration::try_from(wait)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

/// How long a JWT lives, from its unverified payload: `exp - iat` when both are there (immune to
/// clock skew between us and the gateway), else `exp - now`.
fn token_lifetime(jwt: &str) -> Option<Duration> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let from = match claims.get("iat").and_then(serde_json::Value::as_f64) {
        Some(iat) => iat,
        None => jiff::Timestamp::now().as_millisecond() as f64 / 1000.0,
    };
    let lifetime = exp - from;
    // A token that looks expired on arrival says more about the clocks than about the token.
    (lifetime.is_finite() && lifetime > 0.0)
        .then(|| Duration::from_secs_f64(lifetime.min(30.0 * 86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn token_lifetime_reads_exp_and_iat() {
        let t = jwt(serde_json::json!({"sub": "u", "iat": 1000, "exp": 1000 + 14400}));
        assert_eq!(token_lifetime(&t), Some(Duration::from_secs(14400)));
        let now = jiff::Timestamp::now().as_second();
        let t = jwt(serde_json::json!({"exp": now + 600}));
        let life = token_lifetime(&t).unwrap();
        assert!(life <= Duration::from_secs(600) && life >= Duration::from_secs(590));
        assert_eq!(token_lifetime("not-a-jwt"), None);
        assert_eq!(token_lifetime(&jwt(serde_json::json!({"sub": "u"}))), None);
        assert_eq!(
            token_lifetime(&jwt(serde_json::json!({"iat": 10, "exp": 5}))),
            None
        );
    }

    #[test]
    fn secrets_never_print() {
        let conn = Connection::new("https://gateway.example", "alice", "hunter2-Secret!");
        let printed = format!("{conn:?} {} {:?}", conn.password, conn.identity());
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(
            format!("{}", conn.identity()),
            "alice@https://gateway.example"
        );
        let proxy = ProxySettings {
            https: Some("http://user:proxypass@proxy:3128".into()),
            ..Default::default()
        };
        assert!(!format!("{proxy:?}").contains("proxypass"));
        let in_url = Connection::new("https://bob:pa55word@g.example/x", "bob", "pa55word");
        assert_eq!(
            format!("{in_url:?}"),
            "Connection { gateway_url: \"https://<redacted>@g.example/x\", username: \"bob\", \
             password: <redacted>, ca_bundle: None }"
        );
    }

    #[test]
    fn identity_tells_passwords_apart_and_ignores_a_trailing_slash() {
        let a = Connection::new("https://g.example/", "alice", "one").identity();
        let b = Connection::new("https://g.example", "alice", "one").identity();
        let c = Connection::new("https://g.example", "alice", "two").identity();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let opts = || ClientOptions {
            proxy: ProxySettings::none(),
            ..Default::default()
        };
        let cases: Vec<(Connection, ClientOptions, &str)> = vec![
            (
                Connection::new("https://user:pw@g.example", "u", "p"),
                opts(),
                "gatewayUrl must not contain a user name or password; give them as username and password",
            ),
            (
                Connection::new("ftp://g.example", "u", "p"),
                opts(),
                "gatewayUrl must be an https:// (or http://) URL, not ftp://",
            ),
            (
                Connection::new("not a url", "u", "p"),
                opts(),
                "gatewayUrl is not a valid URL: relative URL without a base",
            ),
            (
                Connection::new("https://g.example", "", "p"),
                opts(),
                "username is empty",
            ),
            (
                Connection::new("https://g.example", "u", ""),
                opts(),
                "password is empty",
            ),
            (
                Connection::new("https://g.example", "u", "p"),
                ClientOptions {
                    rps: Some(0.0),
                    ..opts()
                },
                "the request rate must be a positive number, not 0",
            ),
            (
                Connection::new("https://g.example", "u", "p"),
                ClientOptions {
                    page_size: 20_000,
                    ..opts()
                },
                "the page size must be between 1 and 10000, not 20000",
            ),
            (
                Connection::new("https://g.example", "u", "p"),
                ClientOptions {
                    proxy: ProxySettings {
                        https: Some("::not a proxy::".into()),
                        ..Default::default()
                    },
                    ..opts()
                },
                "HTTPS_PROXY is not a valid proxy URL",
            ),
            (
                Connection {
                    ca_bundle: Some(b"not pem at all".to_vec()),
                    ..Connection::new("https://g.example", "u", "p")
                },
                opts(),
                "caBundle holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            ),
            (
                Connection {
                    ca_bundle: Some(
                        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(),
                    ),
                    ..Connection::new("https://g.example", "u", "p")
                },
                opts(),
                "caBundle is not valid PEM (expected -----BEGIN CERTIFICATE----- blocks)",
            ),
        ];
        for (conn, opts, expected) in cases {
            match Client::new(conn, opts) {
                Err(Error::Config { message }) => assert_eq!(message, expected),
                other => panic!("expected a Config error {expected:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn urls_encode_ids_as_one_segment() {
        let client = Client::new(
            Connection::new("https://g.example/prefix/", "u", "p"),
            ClientOptions {
                proxy: ProxySettings::none(),
                ..Default::default()
            },
        )
        .unwrap();
        let url = client
            .url(&["pm", "v1", "deploymentjob", "../x?y=1/z"])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://g.example/prefix/pm/v1/deploymentjob/..%2Fx%3Fy=1%2Fz"
        );
        assert_eq!(
            client.inner.auth_url().unwrap().as_str(),
            "https://g.example/prefix/auth"
        );
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "3".parse().unwrap());
        h.insert("X-RateLimit-Limit", "300".parse().unwrap());
        h.insert("X-RateLimit-Window-Sec", "3600".parse().unwrap());
        h.insert("X-RateLimit-Remaining", "0".parse().unwrap());
        h.insert("X-RateLimit-ToWait-Sec", "12".parse().unwrap());
        h.insert("X-Concurrency-Limit-Limit", "2".parse().unwrap());
        let info = rate_limit_info(&h);
        assert_eq!(
            info,
            RateLimitInfo {
                limit: Some(300),
                window: Some(Duration::from_secs(3600)),
                remaining: Some(0),
                to_wait: Some(Duration::from_secs(12)),
                retry_after: Some(Duration::from_secs(3)),
                concurrency_limit: Some(2),
            }
        );
        assert_eq!(info.wait(), Some(Duration::from_secs(12)));
        assert!(rate_limit_info(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn retry_after_accepts_an_http_date() {
        let future = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&future)
            .unwrap();
        let wait = parse_retry_after(&date).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
