//! The HTTP client of the Qualys PM gateway (and of the bundled simulator, which speaks the same
//! protocol): authentication with a shared token cache, retries that never repeat a create
//! blindly, a per-connection request budget shared fairly between tenants, and typed errors.
//!
//! One [`Client`] serves one [`Connection`]. Clones and [`Client::for_tenant`] views share its
//! token, its HTTP connection pool and its [`Budget`]; nothing is shared between connections, so
//! a token is never sent on behalf of another identity.
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::Retryable;
use reqwest::header;
use reqwest::{StatusCode, Url};
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, warn};

use super::budget::{Budget, Pause, RateLimitInfo};
use super::endpoint::Endpoint;
use super::error::{Error, transport_message};
use super::identity::{Connection, ConnectionId, Secret};
use super::options::{
    ClientOptions, check_options, http_client_builder, is_loopback, parse_gateway,
};
use super::retry::{
    Call, Exchange, Failure, Progress, backoff, classify_status, classify_transport,
    rate_limit_info, within,
};
use super::token::TokenSlot;

/// Asked right before each write is sent (after its wait for the budget and the token): an
/// `Err` keeps the write from the gateway and says why. The controller's leader lease is one:
/// a replica that may have lost its lease must not write.
pub trait WriteFence: Send + Sync {
    fn check(&self) -> Result<(), String>;
}

/// Sees every HTTP exchange of a client (for metrics). Called inline: keep it cheap.
pub trait Observer: Send + Sync {
    /// One exchange finished: `status` is `None` when no complete answer arrived.
    fn on_response(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration);
    /// An answer carried rate-limit headers.
    fn on_rate_limit(&self, _info: &RateLimitInfo) {}
    /// A 429 without any rate-limit header paused the whole connection.
    fn on_pause(&self, _pause: &Pause) {}
}

/// A client of one Qualys PM connection. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
    pub(super) tenant: Arc<str>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.inner.identity)
            .field("tenant", &self.tenant)
            .finish()
    }
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) base: Url,
    pub(super) username: String,
    pub(super) password: Secret,
    pub(super) identity: ConnectionId,
    pub(super) opts: ClientOptions,
    pub(super) budget: Arc<Budget>,
    /// Held across `/auth` so concurrent callers share one refresh.
    pub(super) token: tokio::sync::Mutex<TokenSlot>,
    pub(super) generations: AtomicU64,
    /// `/auth` calls finished so far (successful or not).
    pub(super) fetches: AtomicU64,
    /// The page size the gateway really returns, once a list has shown it.
    pub(super) paging: std::sync::Mutex<Option<super::jobs::LearnedPageSize>>,
    /// Summary pages asked for so far.
    pub(super) list_calls: AtomicU64,
    /// Remembered job bodies (off unless `remember_jobs` turned it on).
    pub(super) job_cache: std::sync::Mutex<super::job_cache::JobCache>,
    /// Job id → last-change date, from the one listing that validates remembered bodies.
    pub(super) listing: tokio::sync::OnceCell<std::collections::HashMap<String, i64>>,
}

impl Client {
    /// A client of `conn`. Fails with [`Error::Config`] on a bad URL, empty credentials, a bad
    /// CA bundle or proxy, or unusable options. No request is made.
    pub fn new(conn: Connection, opts: ClientOptions) -> Result<Client, Error> {
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

        let builder = http_client_builder(
            &opts.proxy,
            conn.ca_bundle.as_deref(),
            opts.request_timeout,
            opts.connect_timeout,
            &opts.user_agent,
        )?;
        let http = builder.build().map_err(|e| {
            Error::config(format!(
                "cannot build the HTTP client: {}",
                transport_message(&e)
            ))
        })?;

        let identity = conn.identity();
        let budget = Budget::with_window(opts.budget, opts.rps, opts.concurrency);
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
                paging: std::sync::Mutex::new(None),
                list_calls: AtomicU64::new(0),
                job_cache: std::sync::Mutex::default(),
                listing: tokio::sync::OnceCell::new(),
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

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The pause of the whole connection in force now (after a 429), with a message fit for a
    /// condition: e.g. "rate limited without headers …; pausing the connection for 60s".
    pub fn paused(&self) -> Option<Pause> {
        self.inner.budget.pause()
    }

    /// The shortest interval between two polls of every summary page (`pages` calls a poll)
    /// that keeps polling within `ClientOptions::poll_share` of the budget:
    /// `pages / (share × calls per second)`. Zero when the budget is unlimited.
    pub fn min_poll_interval(&self, pages: u64) -> Duration {
        match self.inner.budget.calls_per_second() {
            Some(rate) if rate > 0.0 => {
                let secs = pages as f64 / (self.inner.opts.poll_share * rate);
                Duration::from_secs_f64(secs.min(86_400.0))
            }
            _ => Duration::ZERO,
        }
    }

    /// Get a fresh token now, replacing any cached one (what `check` uses to test credentials).
    pub async fn authenticate(&self) -> Result<(), Error> {
        let mut slot = self.inner.token.lock().await;
        self.inner.refresh(&mut slot).await.map(drop)
    }
    pub(super) fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::config("gatewayUrl cannot have a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Run one call with retries and the 401 re-authentication, and return the 2xx body.
    pub(super) async fn execute(&self, call: &Call) -> Result<Vec<u8>, Error> {
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

    pub(super) async fn attempt(
        &self,
        call: &Call,
        progress: &Progress,
    ) -> Result<Vec<u8>, Failure> {
        let attempt = progress.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        loop {
            // The permit first: a request can queue for a long time, and its token should be
            // the freshest one when it leaves.
            let permit = self.inner.budget.acquire(&self.tenant).await;
            let (token, generation) = self.inner.token().await.map_err(Failure::fatal)?;
            if call.endpoint.writes()
                && let Some(fence) = &self.inner.opts.write_fence
                && let Err(reason) = fence.check()
            {
                return Err(Failure::fatal(Error::Fenced {
                    endpoint: call.endpoint,
                    reason,
                }));
            }
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
    pub(super) fn request(&self, call: &Call, token: &Secret) -> reqwest::RequestBuilder {
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
    pub(super) async fn exchange(
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
            let mut pause = None;
            if status == StatusCode::TOO_MANY_REQUESTS && info.is_empty() {
                let p = self.budget.pause_without_headers(self.opts.pause_on_429);
                warn!(connection = %self.identity, endpoint = endpoint.as_str(), "{p}");
                if let Some(observer) = &self.opts.observer {
                    observer.on_pause(&p);
                }
                pause = Some(p.length);
            }
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
                pause,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qualys::ProxySettings;

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
}
