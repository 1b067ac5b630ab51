//! `qpm-operator apply -f PATH…`: make Qualys match the manifests. Everything is validated
//! first (nothing from an invalid set is applied); then parents go before their children (a
//! parent's new job id feeds its children's `linkedJobRef`) and independent jobs run
//! concurrently. One line per resource, then `N created, N updated, N unchanged, N failed`.
//!
//! Exit codes: 0 done, 1 any failure.

use super::common::{self, FileArgs, InputClaims};
use super::connect::{self, Conn, ConnectionArgs, Session};
use super::manifests::{InputScripts, Inputs, JobManifest};
use super::state_file::{self, StateFile};
use super::{lock, output};
use crate::api::Reason;
use crate::reconcile::{EngineState, Outcome, StateStore, StoreError, engine};
use anyhow::anyhow;
use clap::Args;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `qpm-operator apply`.
#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub input: FileArgs,
    /// The CLI's state file (job ids, pending creates, script digests).
    /// Default: $XDG_STATE_HOME/qpm-operator/state.json, else ~/.local/state/qpm-operator/state.json.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Print the API calls made, by endpoint, on stderr.
    #[arg(long)]
    pub stats: bool,
    /// How many resources are applied concurrently (parents always before their children).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// How long to wait for another apply holding the state file's lock; 0 fails at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub lock_timeout: u64,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// What happened to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    Created,
    Updated,
    Unchanged,
    Failed,
}

impl Done {
    /// The word printed at the start of the resource's line.
    pub fn as_str(self) -> &'static str {
        match self {
            Done::Created => "created",
            Done::Updated => "updated",
            Done::Unchanged => "unchanged",
            Done::Failed => "failed",
        }
    }
}

/// The outcome of one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub namespace: String,
    pub name: String,
    pub result: Done,
    pub job_id: Option<String>,
    /// For people: the fields updated, or the reason and message of a failure.
    pub detail: String,
}

impl Applied {
    /// `created default/name: job 1234…`
    pub fn line(&self) -> String {
        format!(
            "{} {}/{}: {}",
            self.result.as_str(),
            self.namespace,
            self.name,
            self.detail
        )
    }
}

/// `N created, N updated, N unchanged, N failed`.
pub fn summary(applied: &[Applied]) -> String {
    let n = |r: Done| applied.iter().filter(|a| a.result == r).count();
    format!(
        "{} created, {} updated, {} unchanged, {} failed",
        n(Done::Created),
        n(Done::Updated),
        n(Done::Unchanged),
        n(Done::Failed)
    )
}

/// Run `apply`: print one line per resource and the summary; exit 1 on any failure.
pub async fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    common::init_logging();
    let Some(inputs) = common::load_inputs(&args.input) else {
        if args.stats {
            output::err(&super::stats::Stats::new().report());
        }
        return Ok(ExitCode::FAILURE);
    };
    let path = connect::state_path(args.state.as_deref());
    // Held until this function returns: the whole run, the simulator's --sim-state write included.
    let _lock = match &path {
        Some(p) => {
            let lock = lock::acquire(p, Duration::from_secs(args.lock_timeout)).await?;
            state_file::remove_stale_temporaries(p);
            Some(lock)
        }
        None => None,
    };
    let state = StateFile::open(path.as_deref()).map_err(|e| anyhow!(e))?;
    let mut session = Session::new(&args.connection, state)?;
    let result = apply(&inputs, &mut session, usize::from(args.parallel), |a| {
        output::out_line(&a.line())
    })
    .await;
    let stats = session.stats.clone();
    session.close().await;
    if args.stats {
        output::err(&stats.report());
    }
    let applied = result?;
    output::out_line(&summary(&applied));
    Ok(if applied.iter().any(|a| a.result == Done::Failed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Apply every job of `inputs`: parents first, the rest concurrently (at most `parallel` at a
/// time). `report` sees each resource as its level finishes, in input order.
pub async fn apply(
    inputs: &Inputs,
    session: &mut Session,
    parallel: usize,
    mut report: impl FnMut(&Applied),
) -> anyhow::Result<Vec<Applied>> {
    let conns = common::connect_all(inputs, session).await?;
    let claims = InputClaims::new(inputs, &conns);
    let (conns, claims) = (&conns, &claims);
    let one = |i: usize, parent: Option<Applied>| async move {
        apply_one(inputs, &inputs.jobs[i], &conns[i], claims, parent.as_ref()).await
    };
    Ok(common::by_levels(inputs, parallel, one, |a| report(a)).await)
}

async fn apply_one(
    inputs: &Inputs,
    job: &JobManifest,
    conn: &Arc<Conn>,
    claims: &InputClaims,
    parent: Option<&Applied>,
) -> Applied {
    let mut a = Applied {
        namespace: job.namespace.clone(),
        name: job.name.clone(),
        result: Done::Failed,
        job_id: None,
        detail: String::new(),
    };
    let linked = match parent {
        None => None,
        Some(p) => match (&p.job_id, p.result) {
            (Some(id), r) if r != Done::Failed => Some(id.clone()),
            _ => {
                a.detail = format!(
                    "not applied: its linkedJobRef parent {}/{} failed",
                    p.namespace, p.name
                );
                return a;
            }
        },
    };
    let key = job.key();
    let mut state = conn.state.get(&conn.state_key, &key);
    let mut store = TrackingStore {
        inner: conn.state.store(&conn.state_key, &key),
        last: state.clone(),
    };
    let client = conn.client.for_tenant(&job.namespace);
    let scripts = InputScripts {
        inputs,
        namespace: &job.namespace,
    };
    let resource_claims = claims.for_resource(conn, &key);
    let ctx = common::context(conn, &client, &resource_claims, &scripts, linked.as_deref());
    let outcome = engine::apply(&job.job.spec, &mut state, &mut store, &ctx).await;
    // The engine saves what must be durable at once (pending create, a new id); the rest of
    // what it learnt (digests of what it wrote) is saved here, the CLI's stand-in for status.
    let saved = if state != store.last {
        store.save(&state).await
    } else {
        Ok(())
    };
    a.job_id = state.job_id.clone();
    describe(&mut a, &outcome);
    if let Err(e) = saved {
        a.result = Done::Failed;
        a.detail = format!("{}; but {e}", a.detail);
    }
    a
}

/// Fill in the result and detail from the engine's outcome.
fn describe(a: &mut Applied, outcome: &Outcome) {
    let id = a.job_id.clone().unwrap_or_else(|| "-".into());
    // The other events' notes, then what was written (typed, from the outcome).
    let notes = || -> Vec<String> {
        let written = [
            "Created",
            "Updated",
            "DriftCorrected",
            "Enabled",
            "Disabled",
        ];
        let mut notes: Vec<String> = outcome
            .events
            .iter()
            .filter(|e| !written.contains(&e.reason))
            .map(|e| e.note.clone())
            .collect();
        if !outcome.updated_fields.is_empty() {
            notes.push(outcome.updated_fields.join(", "));
        }
        if let Some(s) = outcome.state_set {
            notes.push(format!("status → {}", s.as_str()));
        }
        notes
    };
    match outcome.reason {
        Reason::Created => {
            a.result = Done::Created;
            let mut detail = format!("job {id}");
            for n in notes() {
                detail.push_str("; ");
                detail.push_str(&n);
            }
            a.detail = detail;
        }
        Reason::Updated | Reason::Adopted | Reason::UpToDate if outcome.wrote => {
            a.result = Done::Updated;
            a.detail = format!("job {id}: {}", notes().join("; "));
        }
        Reason::Adopted | Reason::UpToDate | Reason::Updated => {
            a.result = Done::Unchanged;
            a.detail = outcome.message.clone();
        }
        // driftPolicy Report: nothing is changed; the differences are the news.
        Reason::DriftDetected => {
            a.result = Done::Unchanged;
            a.detail = outcome.message.clone();
        }
        reason => {
            a.result = Done::Failed;
            a.detail = format!("{reason}: {}", outcome.message);
        }
    }
}

/// A [`StateStore`] that remembers what it last saved, so the final save is skipped when the
/// engine already stored the same state.
struct TrackingStore<S> {
    inner: S,
    last: EngineState,
}

impl<S: StateStore> StateStore for TrackingStore<S> {
    fn save<'a>(&'a mut self, state: &'a EngineState) -> BoxFuture<'a, Result<(), StoreError>> {
        self.last = state.clone();
        self.inner.save(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{Event, EventType};

    fn outcome(
        reason: Reason,
        wrote: bool,
        events: &[(&'static str, &str)],
        updated_fields: &[&str],
        state_set: Option<crate::qualys::JobState>,
    ) -> Outcome {
        // Build through the public fields (the constructor is the engine's).
        let mut o = crate::reconcile::engine::api_failure(
            &crate::qualys::Error::Config {
                message: "x".into(),
            },
            "x",
        );
        o.reason = reason;
        o.message = format!("{reason} message");
        o.wrote = wrote;
        o.updated_fields = updated_fields.iter().map(|f| f.to_string()).collect();
        o.state_set = state_set;
        o.events = events
            .iter()
            .map(|(r, n)| Event {
                type_: EventType::Normal,
                reason: r,
                note: n.to_string(),
            })
            .collect();
        o
    }

    fn described(o: &Outcome) -> Applied {
        let mut a = Applied {
            namespace: "ns".into(),
            name: "n".into(),
            result: Done::Failed,
            job_id: Some("J".into()),
            detail: String::new(),
        };
        describe(&mut a, o);
        a
    }

    #[test]
    fn outcomes_become_one_line_each() {
        let created = described(&outcome(
            Reason::Created,
            true,
            &[
                ("Created", "created Qualys job J"),
                ("Enabled", "enabled job J"),
            ],
            &[],
            Some(crate::qualys::JobState::Enabled),
        ));
        assert_eq!(created.line(), "created ns/n: job J; status → Enabled");
        let updated = described(&outcome(
            Reason::Updated,
            true,
            &[("Updated", "updated job J: timeout, approvedPatches")],
            &["timeout", "approvedPatches"],
            None,
        ));
        assert_eq!(
            updated.line(),
            "updated ns/n: job J: timeout, approvedPatches"
        );
        let adopted_and_updated = described(&outcome(
            Reason::Adopted,
            true,
            &[
                ("Adopted", "found job J by its name"),
                ("Updated", "updated job J: timeout"),
            ],
            &["timeout"],
            None,
        ));
        assert_eq!(
            adopted_and_updated.line(),
            "updated ns/n: job J: found job J by its name; timeout"
        );
        let same = described(&outcome(Reason::UpToDate, false, &[], &[], None));
        assert_eq!(same.line(), "unchanged ns/n: UpToDate message");
        let failed = described(&outcome(Reason::NameConflict, false, &[], &[], None));
        assert_eq!(
            failed.line(),
            "failed ns/n: NameConflict: NameConflict message"
        );
        assert_eq!(
            summary(&[created, updated, same, failed]),
            "1 created, 1 updated, 1 unchanged, 1 failed"
        );
    }
}
