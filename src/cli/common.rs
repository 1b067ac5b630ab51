//! What `plan` and `apply` share: reading the input, the order of work (parents first), the
//! per-resource engine context, and the claims of the input's resources.

use super::connect::Conn;
use super::manifests::{self, Inputs, JobManifest};
use super::output;
use crate::qualys::Error as QualysError;
use crate::reconcile::{Claims, Context, Mode, ScriptResolver};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// `-f PATH… [-R]`, as kubectl reads them.
#[derive(Args, Debug, Clone)]
pub struct FileArgs {
    /// Manifest files or folders (YAML or JSON, multi-document); `-` reads stdin. A folder is
    /// read without its subfolders unless -R is given. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", num_args = 1.., required = true)]
    pub files: Vec<PathBuf>,
    /// Read folders recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// Read and validate the input; print every problem (one line each) and the warnings on
/// stderr. `None` when anything is wrong: nothing may be planned or applied from it.
pub fn load_inputs(args: &FileArgs) -> Option<Inputs> {
    match manifests::load(&args.files, args.recursive) {
        Ok(inputs) => {
            for w in &inputs.warnings {
                output::err_line(&format!("warning: {w}"));
            }
            Some(inputs)
        }
        Err(errors) => {
            for e in &errors {
                output::err_line(&format!("error: {e}"));
            }
            output::err_line(&format!(
                "{} problem(s) in the input; nothing was planned or applied",
                errors.len()
            ));
            None
        }
    }
}

/// Connect every job of the input — before the first write, so a bad connection stops the
/// run before anything changed — and authenticate each connection once. A gateway that
/// cannot be reached (connection refused, unknown host, no answer) fails the whole run here,
/// with one message, instead of once per resource with retries each; refused credentials are
/// left to each resource's line (the client answers those from its cache, without a call).
pub async fn connect_all(
    inputs: &Inputs,
    session: &mut super::connect::Session,
) -> anyhow::Result<Vec<std::sync::Arc<Conn>>> {
    let mut conns = Vec::with_capacity(inputs.jobs.len());
    for j in &inputs.jobs {
        let r = j.job.spec.connection_ref.as_ref().map(|r| r.name.as_str());
        conns.push(session.conn_for(inputs, &j.namespace, r).await?);
    }
    let mut distinct: Vec<&std::sync::Arc<Conn>> = Vec::new();
    for c in &conns {
        if !distinct.iter().any(|d| std::sync::Arc::ptr_eq(d, c)) {
            distinct.push(c);
        }
    }
    let checks = distinct.iter().map(|c| async move {
        match c.client.authenticate().await {
            Err(e @ (QualysError::Transport { .. } | QualysError::Timeout { .. })) => Err(
                anyhow::anyhow!("{}: {e}; nothing was planned or applied", c.target),
            ),
            _ => Ok(()),
        }
    });
    for result in futures::future::join_all(checks).await {
        result?;
    }
    Ok(conns)
}

/// Run `one` for every job, parents first: each level of the linkedJobRef forest runs
/// concurrently (at most `parallel` at a time) and gets its parent's result; `each` sees the
/// results in input order as a level finishes. Returns them in input order.
pub async fn by_levels<T, F, Fut>(
    inputs: &Inputs,
    parallel: usize,
    one: F,
    mut each: impl FnMut(&T),
) -> Vec<T>
where
    T: Clone,
    F: Fn(usize, Option<T>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    let (parents, depths) = parents_and_depths(inputs);
    let mut done: Vec<Option<T>> = vec![None; inputs.jobs.len()];
    let max_depth = depths.iter().copied().max().unwrap_or(0);
    for depth in 0..=max_depth {
        let level: Vec<(usize, Option<T>)> = (0..inputs.jobs.len())
            .filter(|i| depths[*i] == depth)
            .map(|i| (i, parents[i].and_then(|p| done[p].clone())))
            .collect();
        let one = &one;
        let mut results: Vec<(usize, T)> = futures::stream::iter(level)
            .map(|(i, parent)| async move { (i, one(i, parent).await) })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        results.sort_by_key(|(i, _)| *i);
        for (i, r) in results {
            each(&r);
            done[i] = Some(r);
        }
    }
    done.into_iter().flatten().collect()
}

/// The depth of each job in the linkedJobRef forest (0 = no parent in the input), and the
/// index of its parent. `inputs.jobs` is ordered parents first, so one pass suffices.
pub fn parents_and_depths(inputs: &Inputs) -> (Vec<Option<usize>>, Vec<usize>) {
    let index: HashMap<String, usize> = inputs
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.key(), i))
        .collect();
    let mut parents = Vec::with_capacity(inputs.jobs.len());
    let mut depths: Vec<usize> = Vec::with_capacity(inputs.jobs.len());
    for j in &inputs.jobs {
        let parent = parent_key(j).and_then(|k| index.get(&k).copied());
        let depth = parent.and_then(|p| depths.get(p)).map_or(0, |d| d + 1);
        parents.push(parent);
        depths.push(depth);
    }
    (parents, depths)
}

/// `namespace/name` of a job's linkedJobRef parent.
pub fn parent_key(j: &JobManifest) -> Option<String> {
    j.job
        .spec
        .job
        .linked_job_ref
        .as_ref()
        .map(|p| format!("{}/{}", j.namespace, p.name))
}

/// Job ids the input's resources remember, per connection: a job recorded for one resource is
/// not taken over by another (JobClaimed).
#[derive(Debug, Default)]
pub struct InputClaims {
    by_job: HashMap<(String, String), String>,
}

impl InputClaims {
    /// The claims recorded in the state of each resource of the input.
    pub fn new(inputs: &Inputs, conns: &[std::sync::Arc<Conn>]) -> Self {
        let mut by_job = HashMap::new();
        for (j, conn) in inputs.jobs.iter().zip(conns) {
            let key = j.key();
            if let Some(id) = conn.state.get(&conn.state_key, &key).job_id {
                by_job.insert((conn.state_key.clone(), id), key);
            }
        }
        InputClaims { by_job }
    }

    /// The claims as one resource sees them.
    pub fn for_resource<'a>(&'a self, conn: &'a Conn, key: &'a str) -> ResourceClaims<'a> {
        ResourceClaims {
            claims: self,
            state_key: &conn.state_key,
            me: key,
        }
    }
}

/// [`InputClaims`] seen from one resource.
pub struct ResourceClaims<'a> {
    claims: &'a InputClaims,
    state_key: &'a str,
    me: &'a str,
}

impl Claims for ResourceClaims<'_> {
    fn claimed_by(&self, job_id: &str) -> Option<String> {
        self.claims
            .by_job
            .get(&(self.state_key.to_string(), job_id.to_string()))
            .filter(|k| k.as_str() != self.me)
            .cloned()
    }
}

/// The engine's context for one resource of the CLI: identify by jobId, recorded id, or exact
/// name (`Mode::Cli`), with one listing per connection per run.
pub fn context<'a, Q: ?Sized>(
    conn: &'a Conn,
    client: &'a Q,
    claims: &'a ResourceClaims<'a>,
    scripts: &'a (dyn ScriptResolver + Sync),
    linked_job_id: Option<&'a str>,
) -> Context<'a, Q> {
    Context {
        client,
        directory: &conn.directory,
        claims,
        scripts,
        linked_job_id,
        mode: Mode::Cli,
        generation: None,
        // One listing per platform per run: jobs this run creates are added to it as it goes.
        listing_max_age: Duration::MAX,
        desired_cache: None,
    }
}

/// Set up logging to stderr (warnings only unless RUST_LOG says otherwise). Harmless when a
/// subscriber is already installed.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A value of a field change as one line: JSON, compact.
pub fn show_value(v: &serde_json::Value) -> String {
    v.to_string()
}
