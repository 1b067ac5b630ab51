//! A faithful stand-in for the Qualys PM gateway: an axum server on loopback.
//!
//! It serves `/auth` and the deployment-job endpoints with the request→response
//! transformations the seed documents (testdata/seed/), Qualys-style errors, expiring
//! tokens, the 10,000-record cap, rate limits and injectable faults, plus an admin surface under
//! `/_sim/` that tests, benchmarks and users drive. `docs/simulator.md` describes all of it.
//!
//! Two ways in:
//! - [`start`] runs it inside the current tokio runtime and returns a [`SimHandle`] (tests,
//!   benchmarks, the CLI's embedded default);
//! - [`run`] is `qpm-operator sim`: it parses [`SimArgs`], prints the base URL and serves until
//!   Ctrl-C / SIGTERM.
//!
//! The simulator is for loopback only: its admin endpoints need no token.

mod admin;
mod auth;
mod error;
mod fault;
mod gateway;
mod handle;
mod job;
mod persist;
pub mod profile;
mod render;
mod routes;
mod state;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::qualys::parse_duration;

pub use fault::{Fault, FaultKind};
pub use handle::{Counters, SimHandle, StatusChanges, WriteRecord, start};
pub use routes::ROUTES;

/// How a simulator instance behaves. `SimConfig::default()` is a quiet, fast simulator on an
/// ephemeral loopback port with one user `sim`/`sim`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to listen on; the default `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// Who may call `/auth`.
    pub users: Vec<SimUser>,
    /// How long an issued token stays valid (Qualys: 4 hours). Zero makes every token expire at once.
    pub token_ttl: Duration,
    /// Added to every API request (not to admin requests).
    pub latency: Duration,
    /// Probability (0.0–1.0) that an API request fails with a random 5xx before it takes effect.
    pub error_rate: f64,
    /// A rolling-window limit on API calls of the subscription (`/auth` is exempt).
    pub rate_limit: Option<RateLimit>,
    /// Seeds the generator behind ids and `error_rate`, so single-client runs repeat exactly.
    pub seed: u64,
    /// Versioned JSON file that keeps jobs and scripts between runs (never tokens).
    pub state_file: Option<PathBuf>,
    /// The subscription id: `customerId` of every job and the first segment of script paths.
    pub customer_id: String,
    /// The most summaries one list page returns, whatever `pageSize` asks for (a gateway that
    /// caps the page size silently); `None` = as asked (up to 10,000).
    pub max_page_size: Option<usize>,
    /// The order of list pages.
    pub list_order: ListOrder,
    /// Whether answers carry `X-RateLimit-*` and `Retry-After` headers.
    pub rate_limit_headers: RateLimitHeaders,
    /// What a delete does to a job.
    pub delete_mode: DeleteMode,
    /// How a delete naming an unknown id is answered.
    pub delete_unknown: DeleteUnknown,
    /// Which jobs a user sees and edits.
    pub scope: Scope,
    /// Refuse updates of an enabled On-demand or Once job (400).
    pub strict_enabled_edits: bool,
    /// Accept `"timeout": -1` (or 0) without a `timeoutUnit`, as qualysdk's `create_job` sends
    /// when no timeout is given; false refuses it like any other out-of-range timeout.
    pub accept_unset_timeout: bool,
    /// The dotted key paths of every error body (e.g. `["_error", "_error.errorCode",
    /// "_error.message"]`), to replay a gateway whose error bodies are shaped differently;
    /// `None` = the Qualys shape `{"_error": {"errorCode", "message"}}`.
    pub error_keys: Option<Vec<String>>,
    /// A connection with no request for this long is closed by the server; zero = never.
    pub idle_timeout: Duration,
}

/// The order of `GET /pm/v1/deploymentjobs/summary`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListOrder {
    /// Oldest first (the order the simulator always had).
    #[default]
    Created,
    /// By name, then id.
    Name,
    /// By id.
    Id,
    /// Most recently updated (or created) first.
    Updated,
}

/// Rate-limit headers on answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitHeaders {
    /// `X-RateLimit-*` on every answer while a limit is set, and `Retry-After` on a 429 (the
    /// gateway documentation).
    #[default]
    Standard,
    /// None at all, not even on a 429 (what qualysdk reports for PM as of 12-2024).
    None,
}

/// What `DELETE /pm/v1/deploymentjobs` does to a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeleteMode {
    /// The job is gone: GET answers 404, lists leave it out.
    #[default]
    Hard,
    /// The job is marked: `deletedBy` = caller + now, GET still answers it, lists keep it with
    /// `deleted: true`; updates and status changes answer 404.
    Soft,
}

/// How a delete naming an id the simulator does not know is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeleteUnknown {
    /// A per-item `failure` in a 200 answer (the Mitigation API's documented bulk shape).
    #[default]
    Failure,
    /// A whole-call 404; nothing of the call takes effect.
    NotFound,
}

/// Which jobs a user sees and edits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Every job of the subscription.
    #[default]
    All,
    /// Only jobs the user created: others' jobs are absent from lists and answer 403.
    Own,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: vec![SimUser::new("sim", "sim")],
            token_ttl: Duration::from_secs(4 * 3600),
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit: None,
            seed: 0,
            state_file: None,
            customer_id: derived_uuid("customer", "qpm-sim"),
            max_page_size: None,
            list_order: ListOrder::Created,
            rate_limit_headers: RateLimitHeaders::Standard,
            delete_mode: DeleteMode::Hard,
            delete_unknown: DeleteUnknown::Failure,
            scope: Scope::All,
            strict_enabled_edits: false,
            accept_unset_timeout: true,
            error_keys: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// How long an idle connection stays open (long enough for any client's keep-alive pool).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest request body the simulator reads (axum's default; the gateway's is unknown).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// A user of the simulated subscription.
#[derive(Clone, PartialEq, Eq)]
pub struct SimUser {
    pub name: String,
    pub password: String,
    /// A UUID, reported in `createdBy` / `updatedBy`.
    pub id: String,
    /// Whether the user holds `PM.API.ACCESS`; without it every `/pm/` call answers 403.
    pub pm_api_access: bool,
}

impl SimUser {
    /// A user with PM API access whose id is derived from the name (the same name always gets
    /// the same id, so audit fields are predictable across runs).
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        let name = name.into();
        SimUser {
            id: derived_uuid("user", &name),
            name,
            password: password.into(),
            pm_api_access: true,
        }
    }
}

impl std::fmt::Debug for SimUser {
    // The password stays out of Debug output (configs get logged).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("id", &self.id)
            .field("pm_api_access", &self.pm_api_access)
            .finish()
    }
}

/// At most `limit` API calls per rolling `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub window: Duration,
}

/// A stable UUID-shaped id for `name` within `scope`.
fn derived_uuid(scope: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("qpm-sim/{scope}/{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// `qpm-operator sim`: serve the Qualys PM API simulator.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on (loopback only: the admin endpoints need no token).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A user, NAME:PASSWORD, or NAME:PASSWORD:noaccess for one without PM.API.ACCESS.
    /// Repeatable; default: one user sim:sim.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    pub users: Vec<SimUser>,
    /// Token lifetime, e.g. 30s, 15m, 4h [default: 4h].
    #[arg(long, value_parser = parse_duration)]
    pub token_ttl: Option<Duration>,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction (0.0–1.0) of API requests that fail with a random 5xx.
    #[arg(long, default_value_t = 0.0, value_parser = parse_error_rate)]
    pub error_rate: f64,
    /// Rolling-window rate limit, N/SECS (e.g. 300/3600); /auth is exempt.
    #[arg(long, value_name = "N/SECS", value_parser = parse_rate_limit)]
    pub rate_limit: Option<RateLimit>,
    /// Seed of the generator behind ids and --error-rate.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep jobs and scripts in this JSON file between runs.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Return at most N summaries per list page, whatever pageSize asks (a capping gateway).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_page_size: Option<u32>,
    /// The order of list pages.
    #[arg(long, value_enum)]
    pub list_order: Option<ListOrder>,
    /// `none`: no X-RateLimit-* and no Retry-After on any answer, 429s included.
    #[arg(long, value_enum)]
    pub rate_limit_headers: Option<RateLimitHeaders>,
    /// `soft`: deleted jobs stay, marked (`deletedBy`, `deleted: true` in lists).
    #[arg(long, value_enum)]
    pub delete: Option<DeleteMode>,
    /// `not-found`: a delete naming an unknown id is a whole-call 404.
    #[arg(long, value_enum)]
    pub delete_unknown: Option<DeleteUnknown>,
    /// `own`: a user sees and edits only the jobs it created (403 on others').
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
    /// Refuse updates of an enabled On-demand or Once job (400).
    #[arg(long)]
    pub strict_enabled_edits: bool,
    /// Refuse `"timeout": -1` without a unit (accepted by default: qualysdk sends it).
    #[arg(long)]
    pub refuse_unset_timeout: bool,
    /// Close connections idle for this long, e.g. 60s; 0s = never.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Behave as a `qpm-operator probe` report says (page clamp, rate-limit headers, delete
    /// semantics, error shape, token lifetime); explicit flags above still apply on top.
    #[arg(long, value_name = "REPORT.json")]
    pub profile: Option<PathBuf>,
}

impl SimArgs {
    /// The configuration these flags describe (without `--profile`; see [`SimArgs::resolve`]).
    pub fn to_config(&self) -> SimConfig {
        let defaults = SimConfig::default();
        SimConfig {
            max_page_size: self.max_page_size.map(|n| n as usize),
            list_order: self.list_order.unwrap_or_default(),
            rate_limit_headers: self.rate_limit_headers.unwrap_or_default(),
            delete_mode: self.delete.unwrap_or_default(),
            delete_unknown: self.delete_unknown.unwrap_or_default(),
            scope: self.scope.unwrap_or_default(),
            strict_enabled_edits: self.strict_enabled_edits,
            accept_unset_timeout: !self.refuse_unset_timeout,
            error_keys: None,
            idle_timeout: self.idle_timeout,
            listen: self.listen,
            users: if self.users.is_empty() {
                defaults.users
            } else {
                self.users.clone()
            },
            token_ttl: self.token_ttl.unwrap_or(defaults.token_ttl),
            latency: Duration::from_millis(self.latency_ms),
            error_rate: self.error_rate,
            rate_limit: self.rate_limit,
            seed: self.seed,
            state_file: self.state.clone(),
            customer_id: defaults.customer_id,
        }
    }

    /// The configuration: the `--profile` report's findings, with every flag given on the
    /// command line on top (a flag says what the user wants; the report only what it saw).
    pub fn resolve(&self) -> anyhow::Result<SimConfig> {
        let flags = self.to_config();
        let Some(path) = &self.profile else {
            return Ok(flags);
        };
        let report = profile::read_report(path)?;
        let mut config = profile::config_from_report(&report, flags.clone());
        if self.token_ttl.is_some() {
            config.token_ttl = flags.token_ttl;
        }
        if self.rate_limit.is_some() {
            config.rate_limit = flags.rate_limit;
        }
        if self.max_page_size.is_some() {
            config.max_page_size = flags.max_page_size;
        }
        if self.list_order.is_some() {
            config.list_order = flags.list_order;
        }
        if self.rate_limit_headers.is_some() {
            config.rate_limit_headers = flags.rate_limit_headers;
        }
        if self.delete.is_some() {
            config.delete_mode = flags.delete_mode;
        }
        if self.delete_unknown.is_some() {
            config.delete_unknown = flags.delete_unknown;
        }
        Ok(config)
    }
}

/// Serve until Ctrl-C or SIGTERM, then shut down gracefully (saving the state file).
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let sim = start(args.resolve()?).await?;
    // Scripts and users read this one line to find the server.
    println!("{}", sim.base_url());
    shutdown_signal().await?;
    sim.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

/// `NAME:PASSWORD` or `NAME:PASSWORD:noaccess`. The password may itself contain `:`.
pub fn parse_user(s: &str) -> Result<SimUser, String> {
    let (name, rest) = s
        .split_once(':')
        .ok_or_else(|| "expected NAME:PASSWORD (or NAME:PASSWORD:noaccess)".to_string())?;
    if name.is_empty() {
        return Err("the user name is empty".into());
    }
    let (password, access) = match rest.strip_suffix(":noaccess") {
        Some(p) => (p, false),
        None => (rest, true),
    };
    if password.is_empty() {
        return Err(format!("the password of user {name} is empty"));
    }
    let mut user = SimUser::new(name, password);
    user.pm_api_access = access;
    Ok(user)
}

/// `N/SECS`, e.g. `300/3600`.
pub fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    let (n, secs) = s
        .split_once('/')
        .ok_or_else(|| "expected N/SECS, e.g. 300/3600".to_string())?;
    let limit: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a whole number of calls"))?;
    let secs: u64 = secs
        .trim()
        .parse()
        .map_err(|_| format!("{secs:?} is not a whole number of seconds"))?;
    if limit == 0 || secs == 0 {
        return Err("both N and SECS must be at least 1".into());
    }
    Ok(RateLimit {
        limit,
        window: Duration::from_secs(secs),
    })
}

/// A probability between 0.0 and 1.0.
pub fn parse_error_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err("the error rate must be between 0.0 and 1.0".into());
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_with_and_without_access() {
        let u = parse_user("alice:s3:cret").unwrap();
        assert_eq!((u.name.as_str(), u.password.as_str()), ("alice", "s3:cret"));
        assert!(u.pm_api_access);
        let u = parse_user("bob:pw:noaccess").unwrap();
        assert_eq!(u.password, "pw");
        assert!(!u.pm_api_access);
        assert!(parse_user("nobody").is_err());
        assert!(parse_user(":pw").is_err());
        assert!(parse_user("x:").is_err());
        assert!(parse_user("x::noaccess").is_err());
    }

    #[test]
    fn user_ids_are_stable_and_uuid_shaped() {
        let a = SimUser::new("alice", "x");
        assert_eq!(a.id, SimUser::new("alice", "y").id);
        assert_ne!(a.id, SimUser::new("bob", "x").id);
        assert!(uuid::Uuid::try_parse(&a.id).is_ok());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let u = SimUser::new("alice", "hunter2-secret");
        assert!(!format!("{u:?}").contains("hunter2-secret"));
        let c = SimConfig {
            users: vec![u],
            ..SimConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2-secret"));
    }

    #[derive(clap::Parser)]
    struct SimCommand {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn flags(args: &[&str]) -> Result<SimConfig, String> {
        use clap::Parser as _;
        let argv = std::iter::once("sim").chain(args.iter().copied());
        SimCommand::try_parse_from(argv)
            .map(|c| c.sim.to_config())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mode_flags_fill_the_config_and_default_to_the_old_behaviour() {
        let c = flags(&[]).unwrap();
        let d = SimConfig::default();
        assert_eq!(
            (c.max_page_size, c.list_order, c.rate_limit_headers),
            (d.max_page_size, d.list_order, d.rate_limit_headers)
        );
        assert_eq!(
            (c.delete_mode, c.delete_unknown, c.scope),
            (d.delete_mode, d.delete_unknown, d.scope)
        );
        assert!(!c.strict_enabled_edits && c.accept_unset_timeout);
        assert_eq!((c.token_ttl, c.idle_timeout), (d.token_ttl, d.idle_timeout));

        let c = flags(&[
            "--max-page-size",
            "200",
            "--list-order",
            "updated",
            "--rate-limit-headers",
            "none",
            "--delete",
            "soft",
            "--delete-unknown",
            "not-found",
            "--scope",
            "own",
            "--strict-enabled-edits",
            "--refuse-unset-timeout",
            "--idle-timeout",
            "0s",
        ])
        .unwrap();
        assert_eq!(c.max_page_size, Some(200));
        assert_eq!(c.list_order, ListOrder::Updated);
        assert_eq!(c.rate_limit_headers, RateLimitHeaders::None);
        assert_eq!(c.delete_mode, DeleteMode::Soft);
        assert_eq!(c.delete_unknown, DeleteUnknown::NotFound);
        assert_eq!(c.scope, Scope::Own);
        assert!(c.strict_enabled_edits && !c.accept_unset_timeout);
        assert_eq!(c.idle_timeout, Duration::ZERO);
        assert!(flags(&["--max-page-size", "0"]).is_err());
        assert!(flags(&["--max-page-size", "10001"]).is_err());
        assert!(flags(&["--delete", "maybe"]).is_err());
    }

    #[test]
    fn rate_limits_and_error_rates_parse() {
        assert_eq!(
            parse_rate_limit("300/3600").unwrap(),
            RateLimit {
                limit: 300,
                window: Duration::from_secs(3600)
            }
        );
        assert!(parse_rate_limit("300").is_err());
        assert!(parse_rate_limit("0/10").is_err());
        assert!(parse_rate_limit("a/10").is_err());
        assert_eq!(parse_error_rate("0.25").unwrap(), 0.25);
        assert!(parse_error_rate("1.5").is_err());
        assert!(parse_error_rate("NaN").is_err());
    }
}
