//! `qpm-operator plan -f PATH…`: what `apply` would do to each DeploymentJob — create, update
//! (field by field), nothing, or why it cannot — without writing anything to Qualys or to the
//! CLI's state file.
//!
//! Exit codes: 0 no changes, 2 changes, 1 an error (an error outranks changes).

use super::common::{self, FileArgs, InputClaims};
use super::connect::{self, Conn, ConnectionArgs, Session};
use super::manifests::{InputScripts, Inputs, JobManifest};
use super::output::{self, escape};
use crate::reconcile::engine;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `apiVersion` of the JSON plan.
pub const PLAN_API_VERSION: &str = "qpm.plan/v1";

/// Exit code of a plan with changes.
pub const EXIT_CHANGES: u8 = 2;

/// How a plan is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lines for people.
    #[default]
    Human,
    /// The versioned JSON document (`qpm.plan/v1`).
    Json,
}

/// `qpm-operator plan`.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    #[command(flatten)]
    pub input: FileArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// The CLI's state file (job ids, script digests); read, never written by plan.
    /// Default: $XDG_STATE_HOME/qpm-operator/state.json, else ~/.local/state/qpm-operator/state.json.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Print the API calls made, by endpoint, on stderr.
    #[arg(long)]
    pub stats: bool,
    /// How many resources are looked at concurrently (parents always before their children).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub cluster: super::from_cluster::FromClusterArgs,
}

/// What apply would do to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    None,
    Error,
}

/// One field that would change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    /// Path in the Qualys job body, e.g. `preDeployActions[0].params.timeout`.
    pub path: String,
    /// The live value (`null` when unset).
    pub from: Value,
    /// The desired value; scripts as `sha256:` digests, never content.
    pub to: Value,
}

/// The plan of one DeploymentJob.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedResource {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// How the live job was found: `jobId`, `state`, `name`, `pendingCreate`, or `none`
    /// (`null` on error).
    pub identified_by: Option<String>,
    pub job_id: Option<String>,
    pub changes: Vec<Change>,
    pub error: Option<String>,
}

/// The JSON plan, `qpm.plan/v1`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDocument {
    pub api_version: &'static str,
    /// The gateway URL of resources without connectionRef, `embedded-simulator`, or `none`.
    pub target: String,
    pub resources: Vec<PlannedResource>,
}

impl PlanDocument {
    /// 0 no changes, 2 changes, 1 an error.
    pub fn exit_code(&self) -> u8 {
        if self.resources.iter().any(|r| r.action == Action::Error) {
            1
        } else if self
            .resources
            .iter()
            .any(|r| matches!(r.action, Action::Create | Action::Update))
        {
            EXIT_CHANGES
        } else {
            0
        }
    }

    /// The plan for people; names, messages and values from the input shown escaped.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!("target: {}\n", escape(&self.target));
        let (mut create, mut update, mut none, mut error) = (0, 0, 0, 0);
        for r in &self.resources {
            let id = escape(r.job_id.as_deref().unwrap_or("-"));
            let how = r.identified_by.as_deref().unwrap_or("none");
            let resource = escape(&format!("{}/{}", r.namespace, r.name)).into_owned();
            match r.action {
                Action::Create => {
                    create += 1;
                    let _ = writeln!(out, "+ {resource}: create");
                }
                Action::Update => {
                    update += 1;
                    let _ = writeln!(out, "~ {resource}: update job {id} (identified by {how})");
                    for c in &r.changes {
                        let _ = writeln!(
                            out,
                            "    {}: {} → {}",
                            escape(&c.path),
                            escape(&common::show_value(&c.from)),
                            escape(&common::show_value(&c.to))
                        );
                    }
                }
                Action::None => {
                    none += 1;
                    let _ = writeln!(
                        out,
                        "= {resource}: no changes (job {id}, identified by {how})"
                    );
                }
                Action::Error => {
                    error += 1;
                    let _ = writeln!(
                        out,
                        "! {resource}: error: {}",
                        escape(r.error.as_deref().unwrap_or("unknown"))
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "{create} to create, {update} to update, {none} unchanged, {error} error(s)"
        );
        out
    }
}

/// Run `plan`: print the plan; the exit code says whether anything would change.
pub async fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    common::init_logging();
    if args.cluster.wanted() {
        return super::from_cluster::run(args).await;
    }
    let Some(inputs) = common::load_inputs(&args.input) else {
        if args.stats {
            output::err(&super::stats::Stats::new().report());
        }
        return Ok(ExitCode::FAILURE);
    };
    let state = connect::open_state(args.state.as_deref())?;
    let mut session = Session::new(&args.connection, state)?;
    let result = plan(&inputs, &mut session, usize::from(args.parallel)).await;
    finish(&args, session, result).await
}

/// Close the session, then print the plan as asked (and the API calls with --stats); the exit
/// code says whether anything would change.
pub(super) async fn finish(
    args: &PlanArgs,
    session: Session,
    result: anyhow::Result<PlanDocument>,
) -> anyhow::Result<ExitCode> {
    let stats = session.stats.clone();
    session.close().await;
    if args.stats {
        output::err(&stats.report());
    }
    let doc = result?;
    match args.output {
        OutputFormat::Human => output::out(&doc.human()),
        OutputFormat::Json => output::out(&format!(
            "{}\n",
            output::json_safe(&serde_json::to_string_pretty(&doc)?)
        )),
    }
    Ok(ExitCode::from(doc.exit_code()))
}

/// Plan every job of `inputs`: parents first, the rest concurrently (at most `parallel` at a
/// time). Nothing is written anywhere.
pub async fn plan(
    inputs: &Inputs,
    session: &mut Session,
    parallel: usize,
) -> anyhow::Result<PlanDocument> {
    let conns = common::connect_all(inputs, session).await?;
    let claims = InputClaims::new(inputs, &conns);
    let (conns, claims) = (&conns, &claims);
    let one = |i: usize, parent: Option<PlannedResource>| async move {
        plan_one(inputs, &inputs.jobs[i], &conns[i], claims, parent.as_ref()).await
    };
    let planned = common::by_levels(inputs, parallel, one, |_| {}).await;
    Ok(PlanDocument {
        api_version: PLAN_API_VERSION,
        target: session.default_target(),
        resources: planned,
    })
}

async fn plan_one(
    inputs: &Inputs,
    job: &JobManifest,
    conn: &Arc<Conn>,
    claims: &InputClaims,
    parent: Option<&PlannedResource>,
) -> PlannedResource {
    let mut r = PlannedResource {
        namespace: job.namespace.clone(),
        name: job.name.clone(),
        action: Action::Error,
        identified_by: None,
        job_id: None,
        changes: Vec::new(),
        error: None,
    };
    let linked = match parent {
        None => None,
        // Its parent gets a new job, so this one cannot exist linked to it yet.
        Some(p) if p.action == Action::Create => {
            r.action = Action::Create;
            r.identified_by = Some("none".into());
            return r;
        }
        Some(p) => match &p.job_id {
            Some(id) => Some(id.clone()),
            None => {
                r.error = Some(format!(
                    "not planned: its linkedJobRef parent {}/{} could not be planned",
                    p.namespace, p.name
                ));
                return r;
            }
        },
    };
    let key = job.key();
    let state = conn.state.get(&conn.state_key, &key);
    let client = conn.client.for_tenant(&job.namespace);
    let scripts = InputScripts {
        inputs,
        namespace: &job.namespace,
    };
    let resource_claims = claims.for_resource(conn, &key);
    // Only the read half of the gateway: plan cannot write to Qualys.
    let reader: &dyn crate::reconcile::GatewayRead = &client;
    let ctx = common::context(conn, reader, &resource_claims, &scripts, linked.as_deref());
    record(&mut r, engine::observe(&job.job.spec, &state, &ctx).await);
    r
}

/// What an observation means for the plan of one resource: create (no live job), update (the
/// changes), nothing, or the outcome that stopped it.
pub(super) fn record(
    r: &mut PlannedResource,
    observed: Result<engine::Observation, engine::Outcome>,
) {
    match observed {
        Ok(obs) => {
            r.identified_by = Some(obs.identified_by.as_str().to_string());
            r.job_id = obs.job_id().map(str::to_string);
            if obs.live.is_none() {
                r.action = Action::Create;
            } else {
                r.changes = obs
                    .all_changes()
                    .into_iter()
                    .map(|c| Change {
                        path: c.path,
                        from: c.from,
                        to: c.to,
                    })
                    .collect();
                r.action = if r.changes.is_empty() {
                    Action::None
                } else {
                    Action::Update
                };
            }
        }
        Err(outcome) => {
            r.error = Some(format!("{}: {}", outcome.reason, outcome.message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(action: Action) -> PlannedResource {
        PlannedResource {
            namespace: "default".into(),
            name: "a".into(),
            action,
            identified_by: Some("state".into()),
            job_id: Some("j".into()),
            changes: vec![],
            error: None,
        }
    }

    #[test]
    fn an_error_outranks_changes() {
        let doc = |actions: &[Action]| PlanDocument {
            api_version: PLAN_API_VERSION,
            target: "t".into(),
            resources: actions.iter().map(|a| resource(*a)).collect(),
        };
        assert_eq!(doc(&[Action::None]).exit_code(), 0);
        assert_eq!(doc(&[Action::None, Action::Update]).exit_code(), 2);
        assert_eq!(doc(&[Action::Create]).exit_code(), 2);
        assert_eq!(doc(&[Action::Create, Action::Error]).exit_code(), 1);
        assert_eq!(doc(&[]).exit_code(), 0);
    }

    #[test]
    fn the_json_shape_is_versioned_and_camel_case() {
        let mut r = resource(Action::Update);
        r.changes.push(Change {
            path: "timeout".into(),
            from: serde_json::json!(6),
            to: serde_json::json!(8),
        });
        let doc = PlanDocument {
            api_version: PLAN_API_VERSION,
            target: "embedded-simulator".into(),
            resources: vec![r],
        };
        assert_eq!(
            serde_json::to_value(&doc).unwrap(),
            serde_json::json!({
                "apiVersion": "qpm.plan/v1",
                "target": "embedded-simulator",
                "resources": [{
                    "namespace": "default", "name": "a", "action": "update",
                    "identifiedBy": "state", "jobId": "j",
                    "changes": [{"path": "timeout", "from": 6, "to": 8}],
                    "error": null
                }]
            })
        );
        assert!(
            doc.human().contains("    timeout: 6 → 8\n"),
            "{}",
            doc.human()
        );
    }
}
