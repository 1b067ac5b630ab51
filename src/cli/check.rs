//! `qpm-operator check`: does this connection work? Credentials (`/auth`), the `PM.API.ACCESS`
//! permission, and every endpoint the operator uses — with non-destructive probes only: the
//! summary lists of both platforms, and GET, PATCH, DELETE and the status endpoint against a
//! job id that does not exist (expecting a 404 or a per-item failure). The create endpoint is
//! not probed: nothing can be created without creating something.
//!
//! One line per check, ✓ or ✗ (or `-` when an earlier failure makes it meaningless); exit 0
//! when all pass, 1 otherwise.

use super::common;
use super::connect::{ConnectionArgs, Session};
use super::output;
use super::state_file::StateFile;
use crate::qualys::{Client, Endpoint, Error, JobBody, JobState, values};
use clap::Args;
use std::fmt;
use std::process::ExitCode;

/// `qpm-operator check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run: an earlier failure decides it.
    Skipped,
}

/// One line of `check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    pub verdict: Verdict,
    /// What was checked, e.g. `credentials`, `GET /pm/v1/deploymentjob/{id}`.
    pub name: String,
    pub detail: String,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.verdict {
            Verdict::Pass => "✓",
            Verdict::Fail => "✗",
            Verdict::Skipped => "-",
        };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

fn line(verdict: Verdict, name: impl Into<String>, detail: impl Into<String>) -> CheckLine {
    CheckLine {
        verdict,
        name: name.into(),
        detail: detail.into(),
    }
}

/// Run `check` against the configured connection (or the embedded simulator).
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    common::init_logging();
    let mut session = Session::new(&args.connection, StateFile::in_memory())?;
    let result = async {
        let conn = session.default_conn().await?;
        anyhow::Ok(check(&conn.client, &conn.target).await)
    }
    .await;
    session.close().await;
    let lines = result?;
    for l in &lines {
        output::out_line(&l.to_string());
    }
    Ok(if lines.iter().all(|l| l.verdict == Verdict::Pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every check, in order; later ones are skipped when credentials or the permission fail.
pub async fn check(client: &Client, target: &str) -> Vec<CheckLine> {
    let user = client.identity().username().to_string();
    let mut lines = Vec::new();
    match client.authenticate().await {
        Ok(()) => lines.push(line(
            Verdict::Pass,
            "credentials",
            format!("{target} issued a token to user {user:?} (POST /auth)"),
        )),
        Err(e) => {
            let detail = match &e {
                Error::Unauthorized { message } => format!("{target}: {message}"),
                _ => format!("cannot authenticate at {target}: {e}"),
            };
            lines.push(line(Verdict::Fail, "credentials", detail));
            skip_rest(&mut lines, "needs working credentials", 0);
            return lines;
        }
    }

    for (i, platform) in values::PLATFORMS.into_iter().enumerate() {
        let name = format!("{} (platform={platform})", Endpoint::ListSummaries.as_str());
        match client.list_summaries(platform).await {
            Ok(jobs) => {
                if i == 0 {
                    lines.push(line(
                        Verdict::Pass,
                        "PM.API.ACCESS",
                        format!("user {user:?} may use the Patch Management API"),
                    ));
                }
                lines.push(line(
                    Verdict::Pass,
                    name,
                    format!("answers ({} job(s))", jobs.len()),
                ));
            }
            Err(Error::Forbidden { message }) => {
                lines.push(line(
                    Verdict::Fail,
                    "PM.API.ACCESS",
                    format!(
                        "HTTP 403 for user {user:?}: the user lacks the PM.API.ACCESS permission, or the \
                         subscription lacks Patch Management (the gateway said: {message})"
                    ),
                ));
                skip_rest(&mut lines, "needs PM.API.ACCESS", 1 + i);
                return lines;
            }
            // Past 10,000 jobs the list refuses to go on; it did answer.
            Err(Error::LimitExceeded { .. }) => lines.push(line(
                Verdict::Pass,
                name,
                "answers (more than 10,000 jobs: the API's record limit)",
            )),
            Err(e) => lines.push(line(Verdict::Fail, name, e.to_string())),
        }
    }

    // A fresh random id cannot name an existing job.
    let absent = uuid::Uuid::new_v4().to_string();
    let expected = "answers (404 for a job that does not exist, as expected)";
    lines.push(match client.get_job(&absent).await {
        Err(Error::NotFound { .. }) => line(Verdict::Pass, Endpoint::Get.as_str(), expected),
        Ok(_) => line(
            Verdict::Fail,
            Endpoint::Get.as_str(),
            format!("answered a job for the made-up id {absent}"),
        ),
        Err(e) => line(Verdict::Fail, Endpoint::Get.as_str(), e.to_string()),
    });

    let probe = JobBody {
        name: "qpm-operator check (never created)".to_string().into(),
        platform: values::WINDOWS.to_string().into(),
        schedule_type: values::ON_DEMAND.to_string().into(),
        ..Default::default()
    };
    lines.push(match client.update_job(&absent, &probe).await {
        Err(Error::NotFound { .. }) => line(Verdict::Pass, Endpoint::Update.as_str(), expected),
        // A gateway may judge the body before looking the job up; either way it answered.
        Err(Error::Invalid { message, .. }) => line(
            Verdict::Pass,
            Endpoint::Update.as_str(),
            format!("answers (400 for the probe body: {message})"),
        ),
        Ok(_) => line(
            Verdict::Fail,
            Endpoint::Update.as_str(),
            format!("updated a job for the made-up id {absent}"),
        ),
        Err(e) => line(Verdict::Fail, Endpoint::Update.as_str(), e.to_string()),
    });

    let ids = [absent.clone()];
    lines.push(bulk_line(
        Endpoint::Delete.as_str(),
        client.delete_jobs(&ids).await,
    ));
    let status = format!(
        "{} ({})",
        Endpoint::SetStatus.as_str(),
        JobState::Disabled.as_str()
    );
    lines.push(bulk_line(
        &status,
        client.set_status(&ids, JobState::Disabled).await,
    ));
    lines
}

fn bulk_line(name: &str, result: Result<Vec<crate::qualys::ItemOutcome>, Error>) -> CheckLine {
    match result {
        Ok(items) => match items.first().map(|i| &i.result) {
            Some(Err(Error::ItemFailed { message, .. })) => line(
                Verdict::Pass,
                name,
                format!(
                    "answers (a per-item failure for a job that does not exist, as expected: {message})"
                ),
            ),
            Some(Ok(())) => line(
                Verdict::Pass,
                name,
                "answers (it reported success for a job that does not exist)",
            ),
            _ => line(Verdict::Fail, name, "answered without a result for the job"),
        },
        Err(Error::NotFound { .. }) => line(
            Verdict::Pass,
            name,
            "answers (404 for a job that does not exist, as expected)",
        ),
        Err(e) => line(Verdict::Fail, name, e.to_string()),
    }
}

/// The checks after the `done` first ones, marked as not run.
fn skip_rest(lines: &mut Vec<CheckLine>, why: &str, done: usize) {
    let all = [
        "PM.API.ACCESS".to_string(),
        format!("{} (platform=Windows)", Endpoint::ListSummaries.as_str()),
        format!("{} (platform=Linux)", Endpoint::ListSummaries.as_str()),
        Endpoint::Get.as_str().to_string(),
        Endpoint::Update.as_str().to_string(),
        Endpoint::Delete.as_str().to_string(),
        format!(
            "{} ({})",
            Endpoint::SetStatus.as_str(),
            JobState::Disabled.as_str()
        ),
    ];
    for name in all.into_iter().skip(done) {
        lines.push(line(Verdict::Skipped, name, format!("not checked ({why})")));
    }
}
