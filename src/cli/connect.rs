//! Where the commands send their calls: the gateway from flags and environment, a
//! `spec.connectionRef` Secret given in the input, or — only when asked for with `--sim` or
//! `--sim-state` — the embedded simulator. Nothing configured is an error, never a silent
//! simulator: a pipeline whose gateway variable went missing must not "succeed". One client and one job [`Directory`] per connection identity, so a token
//! is never shared between identities and 1,000 jobs of one connection cost one listing.

use super::manifests::Inputs;
use super::state_file::{StateFile, write_atomically};
use super::stats::Stats;
use crate::api::validate::{MAX_PASSWORD_BYTES, password_problem};
use crate::files::{MAX_CA_BUNDLE_BYTES, open_regular, read_regular};
use crate::qualys::{
    BudgetArgs, CachedJob, Client, ClientOptions, Connection, ConnectionId, ProxySettings, Secret,
    read_ca_bundle,
};
use crate::reconcile::Directory;
use crate::sim::{self, SimConfig, SimHandle};
use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How `target` reads in plan output and errors for the embedded simulator.
pub const EMBEDDED_TARGET: &str = "embedded-simulator";
/// `target` of a plan whose resources all name their connection (no default is configured).
pub const NO_TARGET: &str = "none";

/// Where a gateway is and who calls it: shared by `plan`, `apply`, `import`, `check` and
/// `probe`.
#[derive(Args, Debug, Clone, Default)]
pub struct GatewayArgs {
    /// The Qualys API gateway, e.g. https://gateway.qg1.apps.qualys.com [env: QUALYS_GATEWAY_URL].
    #[arg(long, value_name = "URL")]
    pub gateway_url: Option<String>,
    /// The API user [env: QUALYS_USERNAME].
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,
    /// Read the password from this file (its first line). Otherwise QUALYS_PASSWORD is used;
    /// there is no password flag, so a password never appears on a command line.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// PEM certificates to trust besides the system's (a private CA or a TLS-inspecting proxy)
    /// [env: QUALYS_CA_BUNDLE_FILE].
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
}

impl GatewayArgs {
    /// The gateway configured by flags and environment, or `None` without a gateway URL.
    /// Errors say which setting is missing; they never quote a password.
    pub fn connection(&self) -> anyhow::Result<Option<Connection>> {
        let gateway = self
            .gateway_url
            .clone()
            .filter(|g| !g.trim().is_empty())
            .or_else(|| env_var("QUALYS_GATEWAY_URL"));
        let Some(gateway) = gateway else {
            return Ok(None);
        };
        let username = self
            .username
            .clone()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| env_var("QUALYS_USERNAME"))
            .ok_or_else(|| {
                anyhow!("no username for the gateway: set QUALYS_USERNAME (or --username)")
            })?;
        let password = match &self.password_file {
            Some(path) => read_password_file(path)?,
            None => std::env::var("QUALYS_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
                .map(|p| match password_problem(p.as_bytes()) {
                    Some(problem) => Err(anyhow!("QUALYS_PASSWORD: {problem}")),
                    None => Ok(Secret::new(p)),
                })
                .transpose()?
                .ok_or_else(|| {
                    anyhow!(
                        "no password for the gateway: set QUALYS_PASSWORD or give --password-file \
                         (there is no password flag: a password never goes on a command line)"
                    )
                })?,
        };
        let ca_file = match &self.ca_bundle {
            Some(path) => Some(("--ca-bundle", path.clone())),
            None => env_var("QUALYS_CA_BUNDLE_FILE")
                .map(|p| ("QUALYS_CA_BUNDLE_FILE", PathBuf::from(p))),
        };
        let mut conn = Connection::new(gateway.trim(), username, password);
        if let Some((source, path)) = ca_file {
            let pem = read_regular(&path, MAX_CA_BUNDLE_BYTES)
                .map_err(|e| anyhow!("{source} {}: {e}", path.display()))?;
            // Checked here, where the file is known: the client could only say "caBundle".
            if let Err(problem) = read_ca_bundle(&pem) {
                bail!("{source} {}: {problem}", path.display());
            }
            conn.ca_bundle = Some(pem);
        }
        Ok(Some(conn))
    }
}

/// The connection flags shared by `plan`, `apply`, `import` and `check`.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Use the embedded Qualys simulator (in memory, on loopback) instead of a gateway; it wins
    /// over QUALYS_GATEWAY_URL. Without a gateway and without --sim the command fails.
    #[arg(long, conflicts_with = "gateway_url")]
    pub sim: bool,
    /// The Qualys budget per connection. For the embedded simulator every limit defaults to
    /// none.
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Keep the embedded simulator's jobs in this file between runs (versioned JSON, written by
    /// atomic rename, no tokens). Implies --sim.
    #[arg(long, value_name = "FILE", conflicts_with = "gateway_url")]
    pub sim_state: Option<PathBuf>,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The connection used by resources without `spec.connectionRef`.
#[derive(Debug)]
pub enum DefaultConnection {
    Gateway(Connection),
    Embedded,
    /// Neither a gateway nor `--sim`: an error once a resource needs it.
    Missing,
}

/// What a command says when it needs a connection and none is configured.
pub const NOT_CONFIGURED: &str = "no Qualys gateway configured: set QUALYS_GATEWAY_URL (or \
     --gateway-url) with QUALYS_USERNAME (or --username) and QUALYS_PASSWORD (or \
     --password-file), or pass --sim to use the embedded simulator (nothing then reaches Qualys)";

impl ConnectionArgs {
    /// Whether the embedded simulator was asked for (`--sim`, or `--sim-state`).
    pub fn wants_sim(&self) -> bool {
        self.sim || self.sim_state.is_some()
    }

    /// The embedded simulator when asked for, else the gateway configured by flags and
    /// environment, else [`DefaultConnection::Missing`]. Errors say which setting is missing;
    /// they never quote a password.
    pub fn default_connection(&self) -> anyhow::Result<DefaultConnection> {
        if self.wants_sim() {
            return Ok(DefaultConnection::Embedded);
        }
        Ok(match self.gateway.connection()? {
            Some(conn) => DefaultConnection::Gateway(conn),
            None => DefaultConnection::Missing,
        })
    }

    /// Client options: the client's modest defaults for a gateway, no limits for the embedded
    /// simulator, either overridden by the budget flags.
    pub fn client_options(&self, embedded: bool, stats: &Arc<Stats>) -> ClientOptions {
        let mut opts = ClientOptions::default();
        if embedded {
            opts.budget = None;
            opts.rps = None;
            opts.concurrency = None;
            opts.proxy = ProxySettings::none();
        }
        self.budget.apply(&mut opts);
        opts.observer = Some(stats.clone());
        opts
    }
}

fn read_password_file(path: &Path) -> anyhow::Result<Secret> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    // Bounded: a wrong path (a log file, /dev/zero) must not be read to the end.
    let limit = (MAX_PASSWORD_BYTES + 2) as u64;
    open_regular(path)
        .map_err(|e| anyhow!("--password-file {}: {e}", path.display()))?
        .take(limit)
        .read_to_end(&mut bytes)
        .with_context(|| format!("--password-file {}: cannot read", path.display()))?;
    // The first line, without its line ending: `echo secret > file` must work.
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    if let Some(problem) = password_problem(first) {
        bail!("--password-file {}: {problem}", path.display());
    }
    let Ok(first) = std::str::from_utf8(first) else {
        bail!(
            "--password-file {}: the first line is not UTF-8 text",
            path.display()
        );
    };
    if first.is_empty() {
        bail!(
            "--password-file {}: the first line is empty",
            path.display()
        );
    }
    Ok(Secret::new(first))
}

/// The connection a `spec.connectionRef` Secret of the input describes (keys `gatewayUrl`,
/// `username`, `password`, optional `caBundle`). Errors name the Secret and the key, never a
/// value.
pub fn secret_connection(
    inputs: &Inputs,
    namespace: &str,
    name: &str,
) -> Result<Connection, String> {
    let data = inputs
        .secrets
        .get(&(namespace.to_string(), name.to_string()))
        .ok_or_else(|| {
            format!(
                "spec.connectionRef: Secret {namespace}/{name} is not in the input (give its manifest \
                 with -f; a missing Secret never falls back to another connection)"
            )
        })?;
    let text = |key: &str, required: bool| -> Result<Option<String>, String> {
        match data.get(key) {
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) if !s.trim().is_empty() => {
                    Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()))
                }
                Ok(_) if required => Err(format!(
                    "spec.connectionRef: Secret {namespace}/{name}: key {key:?} is empty"
                )),
                Ok(_) => Ok(None),
                Err(_) => Err(format!(
                    "spec.connectionRef: Secret {namespace}/{name}: key {key:?} is not UTF-8 text"
                )),
            },
            None if required => Err(format!(
                "spec.connectionRef: Secret {namespace}/{name} has no key {key:?} (it needs gatewayUrl, username and password)"
            )),
            None => Ok(None),
        }
    };
    let gateway = text("gatewayUrl", true)?.unwrap_or_default();
    let username = text("username", true)?.unwrap_or_default();
    if let Some(problem) = data.get("password").and_then(|p| password_problem(p)) {
        return Err(format!(
            "spec.connectionRef: Secret {namespace}/{name}: {problem}"
        ));
    }
    let password = text("password", true)?.unwrap_or_default();
    let mut conn = Connection::new(gateway.trim(), username.trim(), password);
    conn.ca_bundle = data.get("caBundle").filter(|b| !b.is_empty()).cloned();
    Ok(conn)
}

/// One connection of a run.
pub struct Conn {
    pub client: Client,
    /// Shared by every resource of this connection (one listing per platform per run).
    pub directory: Directory,
    /// The gateway URL, or `embedded-simulator`.
    pub target: String,
    /// The key of this connection in the state file: `<gateway url> <username>`, or
    /// `embedded:<canonical --sim-state path>`.
    pub state_key: String,
    /// Where the CLI remembers job ids for this connection (in memory for an embedded
    /// simulator without `--sim-state`, whose jobs vanish at exit).
    pub state: StateFile,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("identity", self.client.identity())
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The last live body of each job, per connection, beside the state file (`state.json` →
/// `state.jobs.json`): with it, a `plan` or `apply` lists the summaries and GETs only the jobs
/// whose date moved — a no-op run of N jobs costs about N / page size calls, not N.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RememberedJobs {
    version: u32,
    /// state key → job id → body and date.
    targets: std::collections::BTreeMap<String, HashMap<String, CachedJob>>,
}

const REMEMBERED_JOBS_VERSION: u32 = 1;

fn remembered_jobs_path(state: &StateFile) -> Option<PathBuf> {
    state.path().map(|p| p.with_extension("jobs.json"))
}

impl RememberedJobs {
    /// What the last runs remembered; nothing when the file is missing or unreadable (it is a
    /// cache: a GET replaces anything it lacks).
    fn load(state: &StateFile) -> RememberedJobs {
        remembered_jobs_path(state)
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<RememberedJobs>(&b).ok())
            .filter(|r| r.version == REMEMBERED_JOBS_VERSION)
            .unwrap_or_default()
    }
}

/// The connections of one run, and the embedded simulator when one is running.
pub struct Session {
    pub stats: Arc<Stats>,
    args: ConnectionArgs,
    state: StateFile,
    remembered: RememberedJobs,
    default: Option<DefaultConnection>,
    default_conn: Option<Arc<Conn>>,
    by_identity: HashMap<ConnectionId, Arc<Conn>>,
    sim: Option<SimHandle>,
}

impl Session {
    /// A session whose resources remember their jobs in `state`. No connection is made yet.
    pub fn new(args: &ConnectionArgs, state: StateFile) -> anyhow::Result<Self> {
        let default = args.default_connection()?;
        Ok(Session {
            stats: Arc::new(Stats::new()),
            args: args.clone(),
            remembered: RememberedJobs::load(&state),
            state,
            default: Some(default),
            default_conn: None,
            by_identity: HashMap::new(),
            sim: None,
        })
    }

    /// The target of resources without connectionRef, as plan output names it (`none` when
    /// no default connection is configured: every resource then has its connectionRef).
    pub fn default_target(&self) -> String {
        match (&self.default_conn, &self.default) {
            (Some(c), _) => c.target.clone(),
            (None, Some(DefaultConnection::Gateway(c))) => gateway_target(&c.identity()),
            (None, Some(DefaultConnection::Embedded)) => EMBEDDED_TARGET.to_string(),
            _ => NO_TARGET.to_string(),
        }
    }

    /// The connection of resources without `spec.connectionRef`: the configured gateway, or
    /// the embedded simulator when asked for (started on first use, announced on stderr).
    pub async fn default_conn(&mut self) -> anyhow::Result<Arc<Conn>> {
        if let Some(c) = &self.default_conn {
            return Ok(c.clone());
        }
        let conn = match self.default.take() {
            Some(DefaultConnection::Gateway(conn)) => self.gateway(conn)?,
            Some(DefaultConnection::Embedded) => self.embedded().await?,
            Some(DefaultConnection::Missing) | None => {
                self.default = Some(DefaultConnection::Missing);
                bail!(NOT_CONFIGURED)
            }
        };
        self.default_conn = Some(conn.clone());
        Ok(conn)
    }

    /// The connection of a resource: its connectionRef Secret from the input, or the default.
    pub async fn conn_for(
        &mut self,
        inputs: &Inputs,
        namespace: &str,
        connection_ref: Option<&str>,
    ) -> anyhow::Result<Arc<Conn>> {
        match connection_ref {
            Some(name) => {
                let conn = secret_connection(inputs, namespace, name).map_err(|e| anyhow!(e))?;
                self.gateway(conn)
                    .with_context(|| format!("Secret {namespace}/{name}"))
            }
            None => self.default_conn().await,
        }
    }

    fn gateway(&mut self, conn: Connection) -> anyhow::Result<Arc<Conn>> {
        let identity = conn.identity();
        if let Some(c) = self.by_identity.get(&identity) {
            return Ok(c.clone());
        }
        let opts = self.args.client_options(false, &self.stats);
        let client = Client::new(conn, opts)?;
        let state_key = format!("{} {}", identity.gateway_url(), identity.username());
        self.remember_jobs(&client, &state_key);
        let c = Arc::new(Conn {
            target: gateway_target(&identity),
            state_key,
            state: self.state.clone(),
            client,
            directory: Directory::new(),
        });
        self.by_identity.insert(identity, c.clone());
        Ok(c)
    }

    async fn embedded(&mut self) -> anyhow::Result<Arc<Conn>> {
        let state_file = self.args.sim_state.clone();
        let sim = sim::start(SimConfig {
            state_file: state_file.clone(),
            ..SimConfig::default()
        })
        .await
        .context("cannot start the embedded Qualys simulator")?;
        let shown = state_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "in memory".to_string());
        super::output::err_line(&format!(
            "using the embedded Qualys simulator (--sim); state: {shown}"
        ));
        let (state_key, state) = match &state_file {
            Some(path) => (
                format!("embedded:{}", canonical(path).display()),
                self.state.clone(),
            ),
            // Its jobs vanish at exit: remembering their ids would only mislead the next run.
            None => ("embedded:".to_string(), StateFile::in_memory()),
        };
        let opts = self.args.client_options(true, &self.stats);
        let client = Client::new(Connection::new(sim.base_url(), "sim", "sim"), opts)?;
        if state_file.is_some() {
            self.remember_jobs(&client, &state_key);
        }
        self.sim = Some(sim);
        let c = Arc::new(Conn {
            client,
            directory: Directory::new(),
            target: EMBEDDED_TARGET.to_string(),
            state_key,
            state,
        });
        self.by_identity
            .insert(c.client.identity().clone(), c.clone());
        Ok(c)
    }

    fn remember_jobs(&mut self, client: &Client, state_key: &str) {
        let jobs = self
            .remembered
            .targets
            .remove(state_key)
            .unwrap_or_default();
        client.remember_jobs(jobs);
    }

    /// Keep the job bodies the clients read for the next run. A failure to write only costs
    /// GETs next time, so it is a warning.
    fn save_remembered_jobs(&mut self) {
        let Some(path) = remembered_jobs_path(&self.state) else {
            return;
        };
        let mut any = false;
        for conn in self.by_identity.values() {
            if conn.state.path().is_none() {
                continue;
            }
            let jobs = conn.client.remembered_jobs();
            any |= !jobs.is_empty();
            self.remembered.targets.insert(conn.state_key.clone(), jobs);
        }
        if !any && !path.exists() {
            return;
        }
        self.remembered.version = REMEMBERED_JOBS_VERSION;
        let written = serde_json::to_vec(&self.remembered)
            .map_err(|e| e.to_string())
            .and_then(|b| write_atomically(&path, &b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("warning: {}: cannot write: {e}", path.display());
        }
    }

    /// Stop the embedded simulator (writing its `--sim-state`). Call it once the clients are
    /// no longer needed.
    pub async fn close(mut self) {
        self.save_remembered_jobs();
        self.default_conn = None;
        self.by_identity.clear();
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }
}

fn gateway_target(identity: &ConnectionId) -> String {
    identity.gateway_url().to_string()
}

/// An absolute, symlink-free form of a path that may not exist yet (the state file of a first
/// run): the same file always gets the same state key.
pub fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or(absolute.clone()),
        _ => absolute,
    }
}

/// `--state`'s default: `$XDG_STATE_HOME/qpm-operator/state.json`, else
/// `~/.local/state/qpm-operator/state.json`; `None` when neither can be found.
pub fn default_state_path() -> Option<PathBuf> {
    let base = env_var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env_var("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))?;
    Some(base.join("qpm-operator").join("state.json"))
}

/// The `--state` file, or its default; `None` (with a warning) when there is neither.
pub fn state_path(flag: Option<&Path>) -> Option<PathBuf> {
    match flag {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let found = default_state_path();
            if found.is_none() {
                super::output::err_line(
                    "warning: neither XDG_STATE_HOME nor HOME is set: the CLI's state is kept in memory (give --state FILE)",
                );
            }
            found
        }
    }
}

/// Open the `--state` file (or its default) to read it.
pub fn open_state(flag: Option<&Path>) -> anyhow::Result<StateFile> {
    StateFile::open(state_path(flag).as_deref()).map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn inputs_with_secret(data: &[(&str, &str)]) -> Inputs {
        let mut inputs = Inputs::default();
        let map: BTreeMap<String, Vec<u8>> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        inputs.secrets.insert(("ns".into(), "qualys".into()), map);
        inputs
    }

    #[test]
    fn a_secret_connection_needs_its_three_keys_and_never_shows_a_value() {
        let ok = inputs_with_secret(&[
            ("gatewayUrl", "https://gw.example\n"),
            ("username", "u"),
            ("password", "hunter2\n"),
        ]);
        let conn = secret_connection(&ok, "ns", "qualys").unwrap();
        assert_eq!(conn.gateway_url, "https://gw.example");
        assert_eq!(conn.password.expose(), "hunter2");

        let missing = inputs_with_secret(&[("gatewayUrl", "https://gw"), ("username", "u")]);
        assert_eq!(
            secret_connection(&missing, "ns", "qualys").unwrap_err(),
            "spec.connectionRef: Secret ns/qualys has no key \"password\" (it needs gatewayUrl, username and password)"
        );
        assert_eq!(
            secret_connection(&ok, "ns", "other").unwrap_err(),
            "spec.connectionRef: Secret ns/other is not in the input (give its manifest with -f; a missing Secret never falls back to another connection)"
        );
    }

    #[test]
    fn budget_flags_apply_and_zero_lifts_the_limit() {
        let args = ConnectionArgs {
            budget: BudgetArgs {
                qualys_rps: Some(0.0),
                qualys_concurrency: Some(3),
                ..Default::default()
            },
            ..Default::default()
        };
        let stats = Arc::new(Stats::new());
        let opts = args.client_options(false, &stats);
        assert_eq!(opts.rps, None);
        assert_eq!(opts.concurrency, Some(3));
        let gateway = ConnectionArgs::default().client_options(false, &stats);
        assert_eq!(
            (gateway.budget, gateway.rps, gateway.concurrency),
            (
                Some(crate::qualys::CallBudget::DOCUMENTED),
                Some(1.0),
                Some(2)
            )
        );
        let embedded = ConnectionArgs::default().client_options(true, &stats);
        assert_eq!(
            (embedded.budget, embedded.rps, embedded.concurrency),
            (None, None, None)
        );
    }

    #[test]
    fn a_path_that_does_not_exist_yet_is_made_absolute() {
        let p = canonical(Path::new("no-such-file-here.json"));
        assert!(p.is_absolute());
        assert!(p.ends_with("no-such-file-here.json"));
    }
}
