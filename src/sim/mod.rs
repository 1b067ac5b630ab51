//! A faithful stand-in for the Qualys PM gateway: an axum server on loopback.
//!
//! It serves `/auth` and the deployment-job endpoints with the request→response
//! transformations the seed documents (qualys-pm-api.md §7), Qualys-style errors, expiring
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
mod render;
mod routes;
mod state;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sha2::{Digest, Sha256};

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
        }
    }
}

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
    /// Token lifetime, e.g. 30s, 15m, 4h.
    #[arg(long, default_value = "4h", value_parser = parse_duration)]
    pub token_ttl: Duration,
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
}

impl SimArgs {
    /// The configuration these flags describe.
    pub fn to_config(&self) -> SimConfig {
        let defaults = SimConfig::default();
        SimConfig {
            listen: self.listen,
            users: if self.users.is_empty() {
                defaults.users
            } else {
                self.users.clone()
            },
            token_ttl: self.token_ttl,
            latency: Duration::from_millis(self.latency_ms),
            error_rate: self.error_rate,
            rate_limit: self.rate_limit,
            seed: self.seed,
            state_file: self.state.clone(),
            customer_id: defaults.customer_id,
        }
    }
}

/// Serve until Ctrl-C or SIGTERM, then shut down gracefully (saving the state file).
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let sim = start(args.to_config()).await?;
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

/// A duration such as `30s`, `15m`, `4h`, `1h 30m` or ISO 8601 `PT4H`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("not a duration like 30s, 15m or 4h: {e}"))?;
    Duration::try_from(parsed).map_err(|_| "the duration must not be negative".to_string())
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
