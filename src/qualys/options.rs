//! How a client behaves (timeouts, retries, budget, paging) and how it reaches the gateway
//! (proxies, TLS, the gateway URL), with the checks that turn bad settings into
//! [`Error::Config`] before any request is made.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use super::budget::CallBudget;
use super::client::{Observer, WriteFence};
use super::error::Error;

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

/// The budget flags of every command that talks to Qualys (`plan`, `apply`, `import`, `check`,
/// `run`, `probe`). Each flag left out keeps the default of the target: the documented gateway
/// example for a gateway, no limit for the embedded simulator.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct BudgetArgs {
    /// Calls per rolling window per connection, CALLS/DURATION (e.g. 300/1h, 20/30s), or
    /// `none`. Default: 300/1h (the documented example) for a gateway. Set to the
    /// subscription's real limit, the gateway never answers 429; rate-limit headers can only
    /// lower it.
    #[arg(long, value_name = "CALLS/DURATION", value_parser = parse_budget_flag)]
    pub qualys_budget: Option<BudgetFlag>,
    /// A ceiling on requests per second per connection, besides the budget; 0 = none.
    /// Default: 1 for a gateway.
    #[arg(long, value_name = "N", value_parser = parse_rps)]
    pub qualys_rps: Option<f64>,
    /// Requests in flight per connection; 0 = no limit. Default: 2 for a gateway.
    #[arg(long, value_name = "N")]
    pub qualys_concurrency: Option<usize>,
    /// How long the whole connection pauses after a 429 with neither Retry-After nor
    /// X-RateLimit-* headers. Default: 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_pause)]
    pub qualys_pause_on_429: Option<Duration>,
}

/// `--qualys-budget`: a budget, or `none`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetFlag(pub Option<CallBudget>);

fn parse_budget_flag(raw: &str) -> Result<BudgetFlag, String> {
    match raw.trim() {
        "none" | "0" => Ok(BudgetFlag(None)),
        other => other.parse().map(|b| BudgetFlag(Some(b))),
    }
}

fn parse_rps(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{raw:?} is not a rate: give requests per second (e.g. 0.5, 2), or 0 for no limit"
        )),
    }
}

fn parse_pause(raw: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = raw
        .trim()
        .parse()
        .map_err(|e| format!("not a duration like 30s, 1m or 5m: {e}"))?;
    Duration::try_from(parsed).map_err(|_| "the pause must not be negative".to_owned())
}

/// A duration such as `30s`, `15m`, `4h`, `1h 30m` or ISO 8601 `PT4H`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("not a duration like 30s, 15m or 4h: {e}"))?;
    Duration::try_from(parsed).map_err(|_| "the duration must not be negative".to_string())
}

impl BudgetArgs {
    /// `opts` with every flag given applied (0 and `none` lift a limit).
    pub fn apply(&self, opts: &mut ClientOptions) {
        if let Some(BudgetFlag(budget)) = self.qualys_budget {
            opts.budget = budget;
        }
        if let Some(rps) = self.qualys_rps {
            opts.rps = (rps > 0.0).then_some(rps);
        }
        if let Some(c) = self.qualys_concurrency {
            opts.concurrency = (c > 0).then_some(c);
        }
        if let Some(pause) = self.qualys_pause_on_429 {
            opts.pause_on_429 = pause;
        }
    }
}

/// Loopback is always reached directly: the simulator runs there, and a proxy in the
/// environment must not swallow it.
pub(super) const LOOPBACK_NO_PROXY: &str = "localhost,127.0.0.0/8,::1";

/// How a [`Client`] behaves. `Default` is modest: the documented gateway example, 300 calls
/// per hour with a concurrency of 2, and headers lower the budget further when the gateway
/// sends them.
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
    /// Calls per rolling window for the connection (all tenants together); `None` = no limit.
    /// Set to the gateway's real limit, no 429 ever comes back.
    pub budget: Option<CallBudget>,
    /// A ceiling on requests per second, besides `budget`; `None` = no ceiling.
    pub rps: Option<f64>,
    /// Requests in flight for the connection; `None` = no client limit.
    pub concurrency: Option<usize>,
    /// `pageSize` of summary lists (1–10,000); the gateway may return fewer (see `list_summaries`).
    pub page_size: u32,
    /// How long the whole connection pauses after a 429 that carries neither `Retry-After` nor
    /// `X-RateLimit-*`.
    pub pause_on_429: Duration,
    /// The share of `budget` the controller's summary poller may spend (0 < share ≤ 1).
    pub poll_share: f64,
    pub proxy: ProxySettings,
    pub user_agent: String,
    pub observer: Option<Arc<dyn Observer>>,
    /// Asked before each write; see [`WriteFence`].
    pub write_fence: Option<Arc<dyn WriteFence>>,
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
            budget: Some(CallBudget::DOCUMENTED),
            rps: Some(1.0),
            concurrency: Some(2),
            page_size: 1000,
            pause_on_429: Duration::from_secs(60),
            poll_share: 0.25,
            proxy: ProxySettings::from_env(),
            user_agent: concat!("qpm-operator/", env!("CARGO_PKG_VERSION")).to_owned(),
            observer: None,
            write_fence: None,
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
            .field("budget", &self.budget)
            .field("rps", &self.rps)
            .field("concurrency", &self.concurrency)
            .field("page_size", &self.page_size)
            .field("pause_on_429", &self.pause_on_429)
            .field("poll_share", &self.poll_share)
            .field("proxy", &self.proxy)
            .field("user_agent", &self.user_agent)
            .field("observer", &self.observer.as_ref().map(|_| "<observer>"))
            .field("write_fence", &self.write_fence.as_ref().map(|_| "<fence>"))
            .finish()
    }
}

pub(super) fn parse_gateway(raw: &str) -> Result<Url, Error> {
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

pub(super) fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn check_options(opts: &ClientOptions) -> Result<(), Error> {
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
    if opts
        .budget
        .is_some_and(|b| b.calls == 0 || b.window.is_zero())
    {
        return Err(Error::config(
            "the budget must allow at least one call in a positive window",
        ));
    }
    if !(opts.poll_share > 0.0 && opts.poll_share <= 1.0) {
        return Err(Error::config(format!(
            "the polling share of the budget must be in (0, 1], not {}",
            opts.poll_share
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

/// The HTTP client every caller of a gateway starts from: no redirects (one could carry the
/// password form to another host), the proxies of `proxy` (never for loopback), the extra CA
/// certificates of `ca_bundle`, and the given timeouts and user agent.
pub fn http_client_builder(
    proxy: &ProxySettings,
    ca_bundle: Option<&[u8]>,
    request_timeout: Duration,
    connect_timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::ClientBuilder, Error> {
    // reqwest is built without a default crypto provider; the process uses ring everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(connect_timeout.min(request_timeout))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
        .no_proxy();
    for p in build_proxies(proxy)? {
        builder = builder.proxy(p);
    }
    if let Some(pem) = ca_bundle {
        builder = builder.tls_certs_merge(parse_ca_bundle(pem)?);
    }
    Ok(builder)
}

pub(super) fn build_proxies(settings: &ProxySettings) -> Result<Vec<reqwest::Proxy>, Error> {
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

pub(super) fn parse_ca_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, Error> {
    read_ca_bundle(pem).map_err(|problem| Error::config(format!("caBundle {problem}")))
}

/// The certificates of a PEM bundle, or what is wrong with it (to follow the bundle's name:
/// the Secret key, the flag or the file).
pub fn read_ca_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, &'static str> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|_| "is not valid PEM (expected -----BEGIN CERTIFICATE----- blocks)")?;
    if certs.is_empty() {
        return Err("holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)");
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qualys::{Client, Connection};

    #[test]
    fn durations_parse_in_friendly_forms() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(14_400));
        assert_eq!(
            parse_duration("1h 30m").unwrap(),
            Duration::from_secs(5_400)
        );
        assert_eq!(parse_duration("PT2H").unwrap(), Duration::from_secs(7_200));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").is_err());
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
}
