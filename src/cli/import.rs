//! `qpm-operator import (--job-id ID | --all) [-o DIR] [--namespace NS]`: existing Qualys jobs
//! as DeploymentJob manifests, one per job, that `plan` reports as unchanged.
//!
//! Each manifest binds its job by `spec.jobId`, leaves it in Qualys on deletion
//! (`deletionPolicy: Orphan`) and manages the job's writable fields as they are now
//! (`reconcile::import::spec_from_live`). Scripts are left unmanaged: Qualys answers a storage
//! path, never the content. With `--all`, a child whose parent is imported too names it with
//! `linkedJobRef`, and the parent's post-deploy actions by `actionItem` (`actionRefs`).

use super::common;
use super::connect::{ConnectionArgs, Session};
use super::output;
use crate::api::validate::validate_manifest;
use crate::api::{ActionRef, DeploymentJobRef, JobSpec};
use crate::cli::manifests::parse_documents;
use crate::qualys::{Client, JobBody};
use crate::reconcile::import::spec_from_live;
use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// `qpm-operator import`.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["job_id", "all"])))]
pub struct ImportArgs {
    /// Import this job (its Qualys id). Repeatable.
    #[arg(long, value_name = "ID")]
    pub job_id: Vec<String>,
    /// Import every job of both platforms.
    #[arg(long)]
    pub all: bool,
    /// Write `<name>.yaml` per job into DIR (created when missing). Without it, all manifests
    /// go to stdout as one multi-document YAML stream.
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// `metadata.namespace` of the manifests.
    #[arg(long, value_name = "NS", default_value = "default")]
    pub namespace: String,
    /// Print the API calls made, by endpoint, on stderr.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// One imported job.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// `metadata.name`, also the file name (`<slug>.yaml`).
    pub slug: String,
    pub job_id: String,
    /// The manifest, comments first.
    pub yaml: String,
    /// Fields left unmanaged, and why.
    pub notes: Vec<String>,
}

/// What to import.
#[derive(Clone, Debug)]
pub enum Selection {
    Ids(Vec<String>),
    All,
}

/// Run `import`.
pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    common::init_logging();
    if !is_dns_label(&args.namespace) {
        bail!(
            "--namespace {:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)",
            args.namespace
        );
    }
    let selection = if args.all {
        Selection::All
    } else {
        Selection::Ids(args.job_id.clone())
    };
    // import needs no CLI state: the manifests carry spec.jobId.
    let mut session = Session::new(&args.connection, super::state_file::StateFile::in_memory())?;
    let result = async {
        let conn = session.default_conn().await?;
        import(&conn.client, &selection, &args.namespace).await
    }
    .await;
    let stats = session.stats.clone();
    session.close().await;
    let (imported, failures) = result?;
    match &args.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for i in &imported {
                let path = dir.join(format!("{}.yaml", i.slug));
                std::fs::write(&path, &i.yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                output::err_line(&format!("wrote {} (job {})", path.display(), i.job_id));
            }
        }
        None => {
            let docs: Vec<&str> = imported.iter().map(|i| i.yaml.as_str()).collect();
            output::out(&docs.join("---\n"));
        }
    }
    for f in &failures {
        output::err_line(&format!("error: {f}"));
    }
    output::err_line(&format!(
        "{} job(s) imported{}",
        imported.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(", {} failed", failures.len())
        }
    ));
    if args.stats {
        output::err(&stats.report());
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Read the selected jobs and turn each into a manifest. The second list holds one message per
/// job that could not be imported. An API failure stops everything.
pub async fn import(
    client: &Client,
    selection: &Selection,
    namespace: &str,
) -> anyhow::Result<(Vec<Imported>, Vec<String>)> {
    let ids: Vec<String> = match selection {
        Selection::Ids(ids) => {
            let mut seen = HashSet::new();
            ids.iter()
                .filter(|id| seen.insert(id.as_str()))
                .cloned()
                .collect()
        }
        Selection::All => client
            .list_all_summaries()
            .await?
            .into_iter()
            .filter_map(|s| s.id.get().cloned())
            .collect(),
    };
    let lives: Vec<JobBody> = futures::stream::iter(ids.iter())
        .map(|id| async move {
            client
                .get_job(id)
                .await
                .with_context(|| format!("reading job {id}"))
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    Ok(manifests(&lives, namespace))
}

/// The manifests of `lives` (already read), children linked to parents that are among them.
pub fn manifests(lives: &[JobBody], namespace: &str) -> (Vec<Imported>, Vec<String>) {
    let mut failures = Vec::new();
    let mut specs = Vec::new();
    for live in lives {
        let id = live.job_id().unwrap_or_default().to_string();
        match spec_from_live(live) {
            Ok((spec, notes)) => specs.push((id, live, spec, notes)),
            Err(e) => failures.push(format!("cannot import {e}")),
        }
    }
    let mut taken = HashSet::new();
    let slugs: Vec<String> = specs
        .iter()
        .map(|(_, _, spec, _)| unique_slug(&spec.name, &mut taken))
        .collect();
    let index: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, (id, ..))| (id.as_str(), i))
        .collect();

    let mut out = Vec::new();
    for (i, (id, live, spec, notes)) in specs.iter().enumerate() {
        let mut spec = spec.clone();
        let mut notes = notes.clone();
        if let Some(parent) = spec
            .linked_job_id
            .as_deref()
            .and_then(|p| index.get(p).copied())
        {
            link_to_parent(&mut spec, &slugs[parent], specs[parent].1, &mut notes);
        }
        let mut doc = json!({
            "apiVersion": crate::api::validate::API_VERSION,
            "kind": crate::api::validate::KIND,
            "metadata": {"name": slugs[i], "namespace": namespace},
            "spec": {
                "jobId": id,
                "deletionPolicy": "Orphan",
                "job": serde_json::to_value(&spec).unwrap_or(Value::Null),
            }
        });
        let problems = make_valid(&mut doc, &mut notes);
        let yaml = match serde_saphyr::to_string(&doc) {
            Ok(y) => y,
            Err(e) => {
                failures.push(format!("job {id}: cannot write YAML: {e}"));
                continue;
            }
        };
        // Read back exactly as plan will read it: what is written must plan to no changes.
        let reread = parse_documents(&yaml)
            .ok()
            .and_then(|d| d.into_iter().next())
            .filter(|d| *d == doc);
        if reread.is_none() {
            failures.push(format!(
                "job {id}: the manifest does not read back as written (a YAML quoting problem)"
            ));
            continue;
        }
        if !problems.is_empty() {
            failures.push(format!(
                "job {id}: the imported manifest still fails validation: {}",
                problems.join("; ")
            ));
        }
        let mut text = header(id, &spec.name, live, &notes);
        text.push_str(&yaml);
        out.push(Imported {
            slug: slugs[i].clone(),
            job_id: id.clone(),
            yaml: text,
            notes,
        });
    }
    (out, failures)
}

/// Name the parent by its manifest (`linkedJobRef`) and its post-deploy actions by
/// `actionItem` (`actionRefs`) — when every action id of every rule has an unambiguous name.
fn link_to_parent(
    spec: &mut JobSpec,
    parent_slug: &str,
    parent: &JobBody,
    notes: &mut Vec<String>,
) {
    let mut item_of: HashMap<String, String> = HashMap::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for a in parent.post_deploy_actions.get().into_iter().flatten() {
        if let (Some(id), Some(item)) = (
            a.action_id.get(),
            a.params.get().and_then(|p| p.action_item.get()),
        ) {
            item_of.insert(id.clone(), item.clone());
            *count.entry(item.clone()).or_default() += 1;
        }
    }
    let mut rules = spec.chained_job_rule.clone().unwrap_or_default();
    for (r, rule) in rules.iter_mut().enumerate() {
        let ids = rule.action_ids.clone().unwrap_or_default();
        let mut refs = Vec::with_capacity(ids.len());
        for id in &ids {
            match item_of.get(id) {
                Some(item) if count.get(item) == Some(&1) => refs.push(ActionRef {
                    action_item: item.clone(),
                }),
                Some(item) => {
                    notes.push(format!(
                        "linkedJobId kept as an id: chainedJobRule[{r}] names the parent's action {id}, whose actionItem {item:?} is not unique"
                    ));
                    return;
                }
                None => {
                    notes.push(format!(
                        "linkedJobId kept as an id: chainedJobRule[{r}] names {id}, not a post-deploy action of the parent"
                    ));
                    return;
                }
            }
        }
        rule.action_ids = None;
        rule.action_refs = Some(refs);
    }
    if spec.chained_job_rule.is_some() {
        spec.chained_job_rule = Some(rules);
    }
    spec.linked_job_id = None;
    spec.linked_job_ref = Some(DeploymentJobRef {
        name: parent_slug.to_string(),
    });
}

/// Drop the fields the schema refuses (a live value this version's rules do not allow), each
/// with a note, so the manifest applies. Returns the problems that removing fields did not fix.
fn make_valid(doc: &mut Value, notes: &mut Vec<String>) -> Vec<String> {
    for _ in 0..32 {
        let problems = match validate_manifest(doc) {
            Ok(_) => return Vec::new(),
            Err(p) => p,
        };
        let mut progress = false;
        for p in &problems {
            let removed = remove_path(doc, &p.path) || remove_partner(doc, &p.path);
            if removed {
                notes.push(format!(
                    "{}: left unmanaged ({})",
                    p.path.trim_start_matches("spec.job."),
                    p.message
                ));
                progress = true;
            }
        }
        if !progress {
            return problems.iter().map(ToString::to_string).collect();
        }
    }
    vec!["too many invalid fields".into()]
}

/// `spec.job.preDeployActions[0].params.timeout` → removed; false when absent.
fn remove_path(doc: &mut Value, path: &str) -> bool {
    if path.is_empty() || !path.starts_with("spec.job.") {
        return false;
    }
    let mut segments = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((name, rest)) => {
                segments.push(name.to_string());
                for idx in rest.split('[') {
                    segments.push(idx.trim_end_matches(']').to_string());
                }
            }
            None => segments.push(part.to_string()),
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = &mut *doc;
    for s in parents {
        node = match node {
            Value::Object(m) => match m.get_mut(s) {
                Some(n) => n,
                None => return false,
            },
            Value::Array(a) => match s.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Object(m) => m.remove(last).is_some(),
        _ => false,
    }
}

/// For a rule on a pair of fields (`timeout`/`timeoutUnit`), drop both halves.
fn remove_partner(doc: &mut Value, path: &str) -> bool {
    const PAIRS: [(&str, &str); 2] = [
        ("timeout", "timeoutUnit"),
        ("downloadRandomizeTime", "downloadRandomizeTimeUnit"),
    ];
    let Some(field) = path.strip_prefix("spec.job.") else {
        return false;
    };
    for (a, b) in PAIRS {
        if field == a || field == b {
            let ra = remove_path(doc, &format!("spec.job.{a}"));
            let rb = remove_path(doc, &format!("spec.job.{b}"));
            return ra || rb;
        }
    }
    false
}

fn header(id: &str, name: &str, live: &JobBody, notes: &[String]) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "# Imported by `qpm-operator import` from Qualys job {id} ({name:?})."
    );
    h.push_str(
        "# spec.jobId binds this resource to that job; deletionPolicy: Orphan leaves the job in\n\
         # Qualys when the resource is deleted.\n",
    );
    let scripts: Vec<String> = live
        .actions()
        .flat_map(|(list, i, a)| {
            let mut v = Vec::new();
            if a.script.get().is_some_and(|s| !s.is_empty()) {
                v.push(format!("{list}[{i}].script"));
            }
            if a.detection_script.get().is_some_and(|s| !s.is_empty()) {
                v.push(format!("{list}[{i}].detectionScript"));
            }
            v
        })
        .collect();
    if !scripts.is_empty() {
        let _ = writeln!(
            h,
            "# Scripts are left unmanaged: Qualys returns where a script is stored, never its\n\
             # content, so the job keeps the scripts it has ({}).\n\
             # To manage one, give its action script (base64) or scriptFrom.",
            scripts.join(", ")
        );
    }
    for n in notes {
        let _ = writeln!(h, "# Not managed: {}", one_line(n));
    }
    h
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A DNS-1123 label from a job name: lowercase letters, digits and '-', at most 63 characters.
pub fn slug(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let s: String = s.trim_matches('-').chars().take(63).collect();
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() { "job".to_string() } else { s }
}

/// [`slug`], with `-2`, `-3`… when the name is taken.
fn unique_slug(name: &str, taken: &mut HashSet<String>) -> String {
    let base = slug(name);
    if taken.insert(base.clone()) {
        return base;
    }
    let mut n = 2u64;
    loop {
        let suffix = format!("-{n}");
        let head: String = base.chars().take(63 - suffix.len()).collect();
        let candidate = format!("{}{suffix}", head.trim_end_matches('-'));
        if taken.insert(candidate.clone()) {
            return candidate;
        }
        n += 1;
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels_and_unique() {
        assert_eq!(slug("Windows monthly patching"), "windows-monthly-patching");
        assert_eq!(slug("  Ünïcode -- & stuff!! "), "n-code-stuff");
        assert_eq!(slug("***"), "job");
        assert_eq!(slug(&"a".repeat(100)).len(), 63);
        let mut taken = HashSet::new();
        assert_eq!(unique_slug("Job", &mut taken), "job");
        assert_eq!(unique_slug("job", &mut taken), "job-2");
        assert_eq!(unique_slug("JOB!", &mut taken), "job-3");
        let long = "b".repeat(70);
        assert_eq!(unique_slug(&long, &mut taken).len(), 63);
        let second = unique_slug(&long, &mut taken);
        assert!(second.ends_with("-2") && second.len() == 63, "{second}");
        assert!(is_dns_label("default") && !is_dns_label("Default") && !is_dns_label("-a"));
    }

    #[test]
    fn a_path_is_removed_through_lists() {
        let mut doc = json!({"spec": {"job": {"preDeployActions": [{"params": {"actionItem": "", "timeout": 1}}]}}});
        assert!(remove_path(
            &mut doc,
            "spec.job.preDeployActions[0].params.actionItem"
        ));
        assert_eq!(
            doc,
            json!({"spec": {"job": {"preDeployActions": [{"params": {"timeout": 1}}]}}})
        );
        assert!(!remove_path(
            &mut doc,
            "spec.job.preDeployActions[3].params"
        ));
        assert!(!remove_path(&mut doc, "metadata.name"));
    }
}
