//! `qpm-operator plan --from-cluster`: the `kubectl diff` of this operator. The DeploymentJobs
//! come from the cluster of the current kubeconfig context (or the pod's service account), with
//! the ConfigMaps and Secrets they name read by name, and each is planned as the operator would
//! reconcile it: the job id its status records, the operator's name rule (an existing job of the
//! same name that is not the resource's is a NameConflict, never adopted), the claims of the
//! other resources. Nothing is written anywhere: the cluster is only read (list, get), Qualys
//! only read, and no state file is opened.
//!
//! Resources without `spec.connectionRef` use the connection of the command line (flags and
//! environment), as `plan -f` does: the operator's own credentials live in its pod.

use super::common;
use super::connect::{Conn, Session};
use super::manifests::{Inputs, JobManifest};
use super::plan::{Action, PLAN_API_VERSION, PlanArgs, PlanDocument, PlannedResource};
use crate::api::{ANNOTATION_PAUSED, DeploymentJob, KeyRef, ScriptSource, ScriptStore};
use crate::reconcile::{Claims, Context, EngineState, Mode, ScriptResolver, engine};
use clap::Args;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The flags `plan` gains for reading the cluster.
#[derive(Args, Debug, Clone, Default)]
pub struct FromClusterArgs {
    /// Plan the DeploymentJobs in the cluster (current kubeconfig context, or in-cluster)
    /// instead of files: what the operator would do to each. Writes nothing anywhere.
    #[arg(long, conflicts_with = "files")]
    pub from_cluster: bool,
    /// With --from-cluster: only this namespace. Default: every namespace.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

impl FromClusterArgs {
    /// Whether `plan` reads the cluster (or was given a flag that only means something there).
    pub fn wanted(&self) -> bool {
        self.from_cluster || self.namespace.is_some()
    }
}

/// The pseudo-file of a resource read from the cluster, as error lines name it.
const SOURCE: &str = "cluster";

/// ConfigMaps and Secrets read from the cluster: (namespace, name) → key → bytes; `None` when
/// the object does not exist.
type Objects = HashMap<(String, String), Option<BTreeMap<String, Vec<u8>>>>;

/// Run `plan --from-cluster`.
pub async fn run(args: PlanArgs) -> anyhow::Result<std::process::ExitCode> {
    // clap's `requires` counts a flag's default value as given, so this is checked here.
    if !args.cluster.from_cluster {
        anyhow::bail!("-n/--namespace selects what --from-cluster reads; it needs --from-cluster");
    }
    let kube = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("--from-cluster: no cluster to read (kubeconfig or in-cluster): {e}")
    })?;
    let resources = read_cluster(&kube, args.cluster.namespace.as_deref()).await?;
    let mut session = Session::new(&args.connection, super::state_file::StateFile::in_memory())?;
    let result = plan_cluster(&resources, &mut session, usize::from(args.parallel)).await;
    super::plan::finish(&args, session, result).await
}

/// Everything a plan of the cluster reads, read once.
pub struct ClusterResources {
    pub jobs: Vec<DeploymentJob>,
    config_maps: Objects,
    secrets: Objects,
}

/// List the DeploymentJobs and get each ConfigMap and Secret they name (list, get: reads only).
pub async fn read_cluster(
    kube: &kube::Client,
    namespace: Option<&str>,
) -> anyhow::Result<ClusterResources> {
    let api: Api<DeploymentJob> = match namespace {
        Some(ns) => Api::namespaced(kube.clone(), ns),
        None => Api::all(kube.clone()),
    };
    let mut jobs = api
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("listing DeploymentJobs: {e}"))?
        .items;
    jobs.sort_by_key(key);
    // Each object once, however many resources name it.
    // (is a Secret, namespace, name)
    let mut wanted: BTreeSet<(bool, String, String)> = BTreeSet::new();
    for dj in &jobs {
        let ns = dj.namespace().unwrap_or_default();
        for source in dj.spec.job.script_sources() {
            if let Some((store, r)) = source.target() {
                wanted.insert((store == ScriptStore::Secret, ns.clone(), r.name.clone()));
            }
        }
        if let Some(r) = &dj.spec.connection_ref {
            wanted.insert((true, ns.clone(), r.name.clone()));
        }
    }
    let mut config_maps = Objects::new();
    let mut secrets = Objects::new();
    for (is_secret, ns, name) in wanted {
        if is_secret {
            let api: Api<Secret> = Api::namespaced(kube.clone(), &ns);
            let found = api
                .get_opt(&name)
                .await
                .map_err(|e| anyhow::anyhow!("reading Secret {ns}/{name}: {e}"))?;
            let data = found.map(|s| crate::controller::connections::secret_data(&s));
            secrets.insert((ns, name), data);
        } else {
            let api: Api<ConfigMap> = Api::namespaced(kube.clone(), &ns);
            let found = api
                .get_opt(&name)
                .await
                .map_err(|e| anyhow::anyhow!("reading ConfigMap {ns}/{name}: {e}"))?;
            config_maps.insert((ns, name), found.map(config_map_data));
        }
    }
    Ok(ClusterResources {
        jobs,
        config_maps,
        secrets,
    })
}

fn key(dj: &DeploymentJob) -> String {
    format!("{}/{}", dj.namespace().unwrap_or_default(), dj.name_any())
}

fn config_map_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    out.extend(cm.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0)));
    out
}

/// Plan every DeploymentJob of `resources` as the operator would reconcile it, parents first.
/// Resources being deleted are left out (the operator only cleans them up); paused ones are
/// planned as unchanged, which is what the operator does to them.
pub async fn plan_cluster(
    resources: &ClusterResources,
    session: &mut Session,
    parallel: usize,
) -> anyhow::Result<PlanDocument> {
    let mut planned = Vec::new();
    let mut live = Vec::new();
    for dj in &resources.jobs {
        if dj.metadata.deletion_timestamp.is_some() {
            eprintln!(
                "note: DeploymentJob {} is being deleted: not planned",
                key(dj)
            );
        } else {
            live.push(dj);
        }
    }
    let (ordered, cycles) = parents_first(&live);
    for dj in cycles {
        let mut r = unplanned(dj);
        r.error = Some(
            "InvalidSpec: spec.job.linkedJobRef: the links form a cycle; nothing is planned for it"
                .into(),
        );
        planned.push(r);
    }
    let inputs = Inputs {
        jobs: ordered
            .iter()
            .map(|dj| JobManifest {
                file: PathBuf::from(SOURCE),
                namespace: dj.namespace().unwrap_or_default(),
                name: dj.name_any(),
                job: (*dj).clone(),
            })
            .collect(),
        config_maps: present(&resources.config_maps),
        secrets: present(&resources.secrets),
        warnings: Vec::new(),
    };
    // One connection per resource, or why it has none (a missing Secret stops only that one).
    let mut conns: Vec<Result<Arc<Conn>, String>> = Vec::with_capacity(ordered.len());
    for dj in &ordered {
        let ns = dj.namespace().unwrap_or_default();
        conns.push(match &dj.spec.connection_ref {
            Some(r) if resources.secrets.get(&(ns.clone(), r.name.clone())) == Some(&None) => {
                Err(format!(
                    "InvalidSpec: spec.connectionRef: Secret {ns}/{} does not exist",
                    r.name
                ))
            }
            r => session
                .conn_for(&inputs, &ns, r.as_ref().map(|r| r.name.as_str()))
                .await
                .map_err(|e| format!("InvalidSpec: {e:#}")),
        });
    }
    let claims = StatusClaims::new(&ordered);
    let (ordered, conns, claims, inputs) = (&ordered, &conns, &claims, &inputs);
    let one = |i: usize, parent: Option<PlannedResource>| async move {
        plan_one(resources, ordered[i], &conns[i], claims, parent.as_ref()).await
    };
    planned.extend(common::by_levels(inputs, parallel, one, |_| {}).await);
    planned.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(PlanDocument {
        api_version: PLAN_API_VERSION,
        target: session.default_target(),
        resources: planned,
    })
}

fn present(objects: &Objects) -> HashMap<(String, String), BTreeMap<String, Vec<u8>>> {
    objects
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
        .collect()
}

fn unplanned(dj: &DeploymentJob) -> PlannedResource {
    PlannedResource {
        namespace: dj.namespace().unwrap_or_default(),
        name: dj.name_any(),
        action: Action::Error,
        identified_by: None,
        job_id: None,
        changes: Vec::new(),
        error: None,
    }
}

/// The resources in an order where a linkedJobRef parent comes before its children (as
/// [`common::by_levels`] needs), and those whose links form a cycle. A parent that is not in
/// the cluster leaves its child waiting, as in the operator.
fn parents_first<'a>(
    jobs: &[&'a DeploymentJob],
) -> (Vec<&'a DeploymentJob>, Vec<&'a DeploymentJob>) {
    let by_key: HashMap<String, &DeploymentJob> = jobs.iter().map(|dj| (key(dj), *dj)).collect();
    let parent = |dj: &DeploymentJob| {
        let p = dj.spec.job.linked_job_ref.as_ref()?;
        by_key
            .get(&format!(
                "{}/{}",
                dj.namespace().unwrap_or_default(),
                p.name
            ))
            .copied()
    };
    let mut ordered: Vec<(usize, &DeploymentJob)> = Vec::new();
    let mut cycles = Vec::new();
    for dj in jobs {
        let mut seen = HashSet::from([key(dj)]);
        let mut depth = 0;
        let mut at = parent(dj);
        let mut cyclic = false;
        while let Some(p) = at {
            if !seen.insert(key(p)) {
                cyclic = true;
                break;
            }
            depth += 1;
            at = parent(p);
        }
        if cyclic {
            cycles.push(*dj);
        } else {
            ordered.push((depth, *dj));
        }
    }
    ordered.sort_by_key(|(depth, _)| *depth);
    (ordered.into_iter().map(|(_, dj)| dj).collect(), cycles)
}

async fn plan_one(
    resources: &ClusterResources,
    dj: &DeploymentJob,
    conn: &Result<Arc<Conn>, String>,
    claims: &StatusClaims,
    parent: Option<&PlannedResource>,
) -> PlannedResource {
    let mut r = unplanned(dj);
    if dj
        .annotations()
        .get(ANNOTATION_PAUSED)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        r.action = Action::None;
        r.identified_by = Some("none".into());
        r.job_id = dj.status.as_ref().and_then(|s| s.job_id.clone());
        eprintln!(
            "note: DeploymentJob {}/{} is paused ({ANNOTATION_PAUSED}): the operator leaves it alone",
            r.namespace, r.name
        );
        return r;
    }
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.clone());
            return r;
        }
    };
    let linked = match parent {
        // Its parent gets a new job, so this one cannot exist linked to it yet.
        Some(p) if p.action == Action::Create => {
            r.action = Action::Create;
            r.identified_by = Some("none".into());
            return r;
        }
        Some(p) => p.job_id.clone(),
        None => None,
    };
    let state = EngineState::from_status(dj.status.as_ref());
    let client = conn.client.for_tenant(&r.namespace);
    let scripts = ClusterScripts {
        resources,
        namespace: &r.namespace,
    };
    let me = key(dj);
    let resource_claims = ResourceClaims { claims, me: &me };
    // Only the read half of the gateway: a plan cannot write to Qualys.
    let reader: &dyn crate::reconcile::GatewayRead = &client;
    let ctx = Context {
        client: reader,
        directory: &conn.directory,
        claims: &resource_claims,
        scripts: &scripts,
        linked_job_id: linked.as_deref(),
        mode: Mode::Controller,
        generation: dj.metadata.generation,
        // One listing per connection per plan.
        listing_max_age: Duration::MAX,
        desired_cache: None,
    };
    let observed = engine::observe(&dj.spec, &state, &ctx).await;
    super::plan::record(&mut r, observed);
    r
}

/// Scripts from the ConfigMaps and Secrets read from the cluster, for one namespace.
struct ClusterScripts<'a> {
    resources: &'a ClusterResources,
    namespace: &'a str,
}

impl ScriptResolver for ClusterScripts<'_> {
    fn resolve(&self, source: &ScriptSource) -> Result<Vec<u8>, String> {
        let (store, r): (ScriptStore, &KeyRef) = source
            .target()
            .ok_or("names neither a ConfigMap nor a Secret")?;
        let (kind, objects) = match store {
            ScriptStore::Secret => ("Secret", &self.resources.secrets),
            _ => ("ConfigMap", &self.resources.config_maps),
        };
        let data = objects
            .get(&(self.namespace.to_string(), r.name.clone()))
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("{kind} {:?} does not exist", r.name))?;
        data.get(&r.key)
            .cloned()
            .ok_or_else(|| format!("{kind} {:?} has no key {:?}", r.name, r.key))
    }
}

/// Who already manages a job, as the operator decides it from the resources' status: the one
/// whose status holds the id keeps it; between two that only name it in spec.jobId, the older.
struct StatusClaims {
    resources: Vec<ClaimRecord>,
}

struct ClaimRecord {
    key: String,
    /// `status.jobId`.
    bound: Option<String>,
    /// `spec.jobId`.
    named: Option<String>,
    created: Option<jiff::Timestamp>,
}

impl StatusClaims {
    fn new(jobs: &[&DeploymentJob]) -> Self {
        StatusClaims {
            resources: jobs
                .iter()
                .map(|dj| ClaimRecord {
                    key: key(dj),
                    bound: dj.status.as_ref().and_then(|s| s.job_id.clone()),
                    named: dj.spec.job_id.clone(),
                    created: dj.metadata.creation_timestamp.as_ref().map(|t| t.0),
                })
                .collect(),
        }
    }
}

struct ResourceClaims<'a> {
    claims: &'a StatusClaims,
    me: &'a str,
}

impl Claims for ResourceClaims<'_> {
    fn claimed_by(&self, job_id: &str) -> Option<String> {
        let all = &self.claims.resources;
        let mine = all.iter().find(|c| c.key == self.me)?;
        let bound_to_me = mine.bound.as_deref() == Some(job_id);
        all.iter()
            .filter(|c| c.key != self.me)
            .find(|c| {
                let older = (c.created, &c.key) < (mine.created, &mine.key);
                c.bound.as_deref() == Some(job_id)
                    || (c.named.as_deref() == Some(job_id) && !bound_to_me && older)
            })
            .map(|c| c.key.clone())
    }
}
