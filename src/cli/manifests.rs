//! Reading `-f PATH…` like kubectl: files and folders (a folder non-recursively unless `-R`),
//! multi-document YAML or JSON; DeploymentJobs, ConfigMaps and Secrets are kept, other kinds
//! skipped with a warning; a missing namespace means `default`. Everything is validated before
//! anything is written, and each problem is one line naming the file, the resource and the field.
//!
//! Only regular files are read, at most [`MAX_FILE_BYTES`] each, and each folder once (by
//! device and inode): a FIFO would block for ever, `/dev/zero` never ends, and a symlink to its
//! own folder would make `-R` loop.

use crate::api::validate::{
    name_problem, namespace_problem, validate_manifest, yaml_error_message,
};
use crate::api::{DeploymentJob, KeyRef, ScriptSource};
use crate::reconcile::{RenderInputs, ScriptResolver, render};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The most bytes read from one input file (or stdin): room for `import --all` of 100,000 jobs
/// (about 1 KiB each) in one file, and a bound on what a wrong path can make the CLI read.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// `apiVersion` of everything in the operator's API group starts with this.
const GROUP_PREFIX: &str = "pm.qualys.io/";

/// A DeploymentJob read from a file.
#[derive(Clone, Debug)]
pub struct JobManifest {
    /// The file it came from (`-` for stdin).
    pub file: PathBuf,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The validated resource.
    pub job: DeploymentJob,
}

impl JobManifest {
    /// `namespace/name`: how the CLI names the resource, and its key in the state file.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the input held.
#[derive(Default)]
pub struct Inputs {
    /// In dependency order: a linkedJobRef parent comes before its children.
    pub jobs: Vec<JobManifest>,
    /// ConfigMaps by (namespace, name): key → bytes (`data` and `binaryData`).
    pub config_maps: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    /// Secrets by (namespace, name): key → decoded bytes. Never printed.
    pub secrets: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    /// Documents skipped (other kinds), one line each.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Inputs {
    // Secret values stay out of Debug output: only names and keys are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |m: &HashMap<(String, String), BTreeMap<String, Vec<u8>>>| {
            let mut v: Vec<String> = m
                .iter()
                .map(|((ns, n), data)| format!("{ns}/{n} {:?}", data.keys().collect::<Vec<_>>()))
                .collect();
            v.sort();
            v
        };
        f.debug_struct("Inputs")
            .field(
                "jobs",
                &self.jobs.iter().map(JobManifest::key).collect::<Vec<_>>(),
            )
            .field("config_maps", &names(&self.config_maps))
            .field("secrets", &names(&self.secrets))
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// One problem with the input, printed as one line: `file: resource: field: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    /// The file, as given on the command line.
    pub file: String,
    /// `DeploymentJob default/name`, when known.
    pub resource: Option<String>,
    /// The field and what is wrong with it.
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Some(r) => write!(f, "{}: {r}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Read and validate every manifest under `paths`.
pub fn load(paths: &[PathBuf], recursive: bool) -> Result<Inputs, Vec<InputError>> {
    let mut walk = Walk {
        recursive,
        ..Walk::default()
    };
    for p in paths {
        walk.top(p);
    }
    let Walk {
        files,
        mut errors,
        warnings,
        ..
    } = walk;
    if files.is_empty() && errors.is_empty() {
        errors.push(InputError {
            file: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            resource: None,
            message: "no .yaml, .yml or .json files found".into(),
        });
    }
    let mut inputs = Inputs {
        warnings,
        ..Inputs::default()
    };
    let mut jobs = Vec::new();
    for file in &files {
        let shown = file.display().to_string();
        let text = match read_input(file) {
            Ok(t) => t,
            Err(message) => {
                errors.push(InputError {
                    file: shown,
                    resource: None,
                    message,
                });
                continue;
            }
        };
        let docs = match parse_documents(&text) {
            Ok(d) => d,
            Err(message) => {
                errors.push(InputError {
                    file: shown,
                    resource: None,
                    message,
                });
                continue;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            read_document(file, i, doc, &mut inputs, &mut jobs, &mut errors);
        }
    }
    check_duplicates(&jobs, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    match order_by_links(jobs) {
        Ok(ordered) => inputs.jobs = ordered,
        Err(e) => return Err(vec![e]),
    }
    let errors = check_references(&inputs);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(inputs)
}

/// What only the whole input can tell, checked before anything is written: every `scriptFrom`
/// resolves, every `actionRefs` names a post-deploy action of the parent's manifest, every
/// `spec.connectionRef` Secret is in the input with its keys. Rendering each job with a
/// stand-in parent id finds all of these the way `apply` would meet them, minus the API.
fn check_references(inputs: &Inputs) -> Vec<InputError> {
    const PLACEHOLDER_ID: &str = "00000000-0000-0000-0000-000000000000";
    let by_key: HashMap<String, &JobManifest> = inputs.jobs.iter().map(|j| (j.key(), j)).collect();
    let mut errors = Vec::new();
    for j in &inputs.jobs {
        let error = |message: String| InputError {
            file: j.file.display().to_string(),
            resource: Some(format!("DeploymentJob {}", j.key())),
            message,
        };
        let spec = &j.job.spec;
        if let Some(r) = &spec.connection_ref
            && let Err(e) = super::connect::secret_connection(inputs, &j.namespace, &r.name)
        {
            errors.push(error(e));
        }
        let parent = spec
            .job
            .linked_job_ref
            .as_ref()
            .and_then(|p| by_key.get(&format!("{}/{}", j.namespace, p.name)));
        // The parent's post-deploy actions as its manifest declares them; a parent that does
        // not manage them leaves actionRefs to be checked against the live job.
        let parent_actions: Vec<(String, String)> = match parent {
            Some(p) => match &p.job.spec.job.post_deploy_actions {
                Some(actions) => actions
                    .iter()
                    .filter_map(|a| a.params.as_ref()?.action_item.clone())
                    .map(|item| (item, PLACEHOLDER_ID.to_string()))
                    .collect(),
                None => spec
                    .job
                    .chained_job_rule
                    .iter()
                    .flatten()
                    .flat_map(|r| r.action_refs.iter().flatten())
                    .map(|r| (r.action_item.clone(), PLACEHOLDER_ID.to_string()))
                    .collect(),
            },
            None => Vec::new(),
        };
        let scripts = InputScripts {
            inputs,
            namespace: &j.namespace,
        };
        let render_inputs = RenderInputs {
            linked_job_id: spec.job.linked_job_ref.as_ref().map(|_| PLACEHOLDER_ID),
            parent_post_actions: &parent_actions,
            scripts: &scripts,
        };
        if let Err(e) = render(&spec.job, &render_inputs) {
            errors.push(error(e.to_string()));
        }
    }
    errors
}

/// The files under the `-f` paths, each folder visited once.
#[derive(Default)]
struct Walk {
    recursive: bool,
    files: Vec<PathBuf>,
    errors: Vec<InputError>,
    warnings: Vec<String>,
    folders_seen: HashSet<FolderId>,
}

/// A folder's identity, however it is reached (symlinks, `..`, two `-f` of one folder).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FolderId {
    #[cfg_attr(not(unix), allow(dead_code))]
    Inode(u64, u64),
    #[cfg_attr(unix, allow(dead_code))]
    Path(PathBuf),
}

fn folder_id(path: &Path, meta: &std::fs::Metadata) -> FolderId {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let _ = path;
        FolderId::Inode(meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        FolderId::Path(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()))
    }
}

use crate::files::special_kind;

impl Walk {
    fn error(&mut self, path: &Path, message: String) {
        self.errors.push(InputError {
            file: path.display().to_string(),
            resource: None,
            message,
        });
    }

    /// A path given with `-f`: a FIFO or a device named here is an error.
    fn top(&mut self, path: &Path) {
        if path.as_os_str() == "-" {
            self.files.push(path.to_path_buf());
            return;
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => self.folder(path, &meta),
            Ok(meta) if meta.is_file() => self.files.push(path.to_path_buf()),
            Ok(meta) => self.error(
                path,
                format!(
                    "{}: only regular files and folders are read",
                    special_kind(&meta)
                ),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.error(path, "no such file or folder".into())
            }
            Err(e) => self.error(path, format!("cannot read: {e}")),
        }
    }

    fn folder(&mut self, path: &Path, meta: &std::fs::Metadata) {
        if !self.folders_seen.insert(folder_id(path, meta)) {
            return;
        }
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                self.error(path, format!("cannot read folder: {e}"));
                return;
            }
        };
        entries.sort();
        for entry in entries {
            // Symlinks are followed: a link to a folder is that folder (once), a link to a
            // file is that file.
            match std::fs::metadata(&entry) {
                Ok(meta) if meta.is_dir() => {
                    if self.recursive {
                        self.folder(&entry, &meta);
                    }
                }
                Ok(meta) if meta.is_file() => {
                    if is_manifest(&entry) {
                        self.files.push(entry);
                    }
                }
                Ok(meta) => {
                    if is_manifest(&entry) {
                        self.warnings.push(format!(
                            "{}: skipped: {}, not a regular file",
                            entry.display(),
                            special_kind(&meta)
                        ));
                    }
                }
                Err(e) => {
                    if is_manifest(&entry) {
                        self.error(&entry, format!("cannot read: {e}"));
                    }
                }
            }
        }
    }
}

/// The text of one input file (or stdin), at most [`MAX_FILE_BYTES`].
fn read_input(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let too_big = || {
        format!(
            "larger than {} MiB, the most read from one file (split it)",
            MAX_FILE_BYTES / (1024 * 1024)
        )
    };
    let mut bytes = Vec::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("cannot read: {e}"))?;
        // The size the file claims refuses a big one unread; the bounded read holds for
        // files that claim nothing (procfs) or grow meanwhile.
        if f.metadata().is_ok_and(|m| m.len() > MAX_FILE_BYTES) {
            return Err(too_big());
        }
        f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)
    };
    read.map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Parse a file of one or more YAML (or JSON) documents into JSON values.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    crate::api::validate::yaml_documents(text)
        .map_err(|e| format!("not valid YAML: {}", yaml_error_message(&e)))
}

fn read_document(
    file: &Path,
    index: usize,
    doc: Value,
    inputs: &mut Inputs,
    jobs: &mut Vec<JobManifest>,
    errors: &mut Vec<InputError>,
) {
    let shown = file.display().to_string();
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let resource = format!("{kind} {namespace}/{name}");
    if !doc.is_object() {
        errors.push(InputError {
            file: shown,
            resource: None,
            message: format!("document {} is not a mapping", index + 1),
        });
        return;
    }
    match (kind.as_str(), api_version.as_str()) {
        (_, v) if v.starts_with(GROUP_PREFIX) && kind != "DeploymentJob" => errors.push(InputError {
            file: shown,
            resource: Some(resource),
            message: format!("kind {kind:?} does not exist in {api_version} (the kind is DeploymentJob)"),
        }),
        ("DeploymentJob", _) => match validate_manifest(&doc) {
            Ok(job) => jobs.push(JobManifest { file: file.to_path_buf(), namespace, name, job }),
            Err(problems) => {
                for p in problems {
                    errors.push(InputError { file: shown.clone(), resource: Some(resource.clone()), message: p.to_string() });
                }
            }
        },
        (_, "") | ("", _) => errors.push(InputError {
            file: shown,
            resource: None,
            message: format!("document {} has no apiVersion and kind", index + 1),
        }),
        ("ConfigMap" | "Secret", "v1") if !names_are_valid(&doc, &shown, &resource, errors) => {}
        ("ConfigMap", "v1") => {
            let mut data = plain_entries(&doc, "data");
            let (binary, bad) = base64_entries(&doc, "binaryData");
            data.extend(binary);
            for k in bad {
                errors.push(InputError {
                    file: shown.clone(),
                    resource: Some(resource.clone()),
                    message: format!("binaryData.{k}: not valid base64"),
                });
            }
            inputs.config_maps.insert((namespace, name), data);
        }
        ("Secret", "v1") => {
            let (mut data, bad) = base64_entries(&doc, "data");
            // Never echo a Secret's value, not even a broken one: only its key is named.
            for k in bad {
                errors.push(InputError {
                    file: shown.clone(),
                    resource: Some(resource.clone()),
                    message: format!("data.{k}: not valid base64 (use stringData for plain text)"),
                });
            }
            data.extend(plain_entries(&doc, "stringData"));
            inputs.secrets.insert((namespace, name), data);
        }
        ("ConfigMap" | "Secret", _) => errors.push(InputError {
            file: shown,
            resource: Some(resource),
            message: format!("apiVersion: {api_version:?} is not the version of a {kind} (use v1)"),
        }),
        _ => inputs.warnings.push(format!("{shown}: skipping {kind} {namespace}/{name} ({api_version}): not a DeploymentJob, ConfigMap or Secret")),
    }
}

/// Whether a ConfigMap's or Secret's name and namespace are what the API server accepts;
/// each problem is one error.
fn names_are_valid(doc: &Value, file: &str, resource: &str, errors: &mut Vec<InputError>) -> bool {
    let name = doc.pointer("/metadata/name").and_then(Value::as_str);
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    let problems = [
        (
            "metadata.name",
            name.map_or_else(
                || Some("required field is missing".to_string()),
                name_problem,
            ),
        ),
        ("metadata.namespace", namespace.and_then(namespace_problem)),
    ];
    let mut valid = true;
    for (field, problem) in problems {
        if let Some(message) = problem {
            valid = false;
            errors.push(InputError {
                file: file.to_string(),
                resource: Some(resource.to_string()),
                message: format!("{field}: {message}"),
            });
        }
    }
    valid
}

/// The string entries of `doc[field]` as bytes.
fn plain_entries(doc: &Value, field: &str) -> BTreeMap<String, Vec<u8>> {
    doc.get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The base64 entries of `doc[field]`, decoded, and the keys whose value is not base64.
fn base64_entries(doc: &Value, field: &str) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let mut data = BTreeMap::new();
    let mut bad = Vec::new();
    for (k, v) in doc
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match BASE64.decode(v.as_str().unwrap_or_default()) {
            Ok(bytes) => {
                data.insert(k.clone(), bytes);
            }
            Err(_) => bad.push(k.clone()),
        }
    }
    (data, bad)
}

fn check_duplicates(jobs: &[JobManifest], errors: &mut Vec<InputError>) {
    let mut seen: HashMap<String, &JobManifest> = HashMap::new();
    let mut by_target: HashMap<String, &JobManifest> = HashMap::new();
    for j in jobs {
        let error = |message: String| InputError {
            file: j.file.display().to_string(),
            resource: Some(format!("DeploymentJob {}", j.key())),
            message,
        };
        if let Some(first) = seen.insert(j.key(), j) {
            errors.push(error(format!(
                "defined twice (also in {})",
                first.file.display()
            )));
            continue;
        }
        let spec = &j.job.spec;
        let target = match &spec.job_id {
            Some(id) => format!("jobId {id}"),
            None => format!("{} job named {:?}", spec.job.platform, spec.job.name),
        };
        // The same name on two connections is two different jobs.
        let connection = match &spec.connection_ref {
            Some(r) => format!("{}/{}", j.namespace, r.name),
            None => String::new(),
        };
        let target_key = format!("{connection}\n{target}");
        if let Some(first) = by_target.insert(target_key, j) {
            errors.push(error(format!(
                "manages the same Qualys job ({target}) as DeploymentJob {}",
                first.key()
            )));
        }
    }
}

/// Parents before children; a cycle, or a parent missing from the input, is an error.
fn order_by_links(jobs: Vec<JobManifest>) -> Result<Vec<JobManifest>, InputError> {
    let keys: HashSet<String> = jobs.iter().map(JobManifest::key).collect();
    for j in &jobs {
        if let Some(parent) = &j.job.spec.job.linked_job_ref {
            let pk = format!("{}/{}", j.namespace, parent.name);
            if !keys.contains(&pk) {
                return Err(InputError {
                    file: j.file.display().to_string(),
                    resource: Some(format!("DeploymentJob {}", j.key())),
                    message: format!(
                        "spec.job.linkedJobRef: DeploymentJob {pk} is not in the input (give its manifest too, or use linkedJobId)"
                    ),
                });
            }
        }
    }
    let mut ordered = Vec::with_capacity(jobs.len());
    let mut placed: HashSet<String> = HashSet::new();
    let mut pending = jobs;
    while !pending.is_empty() {
        let (ready, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|j| {
            j.job
                .spec
                .job
                .linked_job_ref
                .as_ref()
                .is_none_or(|p| placed.contains(&format!("{}/{}", j.namespace, p.name)))
        });
        if ready.is_empty() {
            let cycle: Vec<String> = rest.iter().map(JobManifest::key).collect();
            return Err(InputError {
                file: rest[0].file.display().to_string(),
                resource: Some(format!("DeploymentJob {}", rest[0].key())),
                message: format!(
                    "spec.job.linkedJobRef: the links form a cycle ({})",
                    cycle.join(" → ")
                ),
            });
        }
        placed.extend(ready.iter().map(JobManifest::key));
        ordered.extend(ready);
        pending = rest;
    }
    Ok(ordered)
}

/// Scripts from the input's ConfigMaps and Secrets, for one namespace.
pub struct InputScripts<'a> {
    /// Where the ConfigMaps and Secrets are.
    pub inputs: &'a Inputs,
    /// The namespace of the resource whose scripts are read.
    pub namespace: &'a str,
}

impl ScriptResolver for InputScripts<'_> {
    fn resolve(&self, source: &ScriptSource) -> Result<Vec<u8>, String> {
        let (kind, map, r): (&str, _, &KeyRef) =
            match (&source.config_map_key_ref, &source.secret_key_ref) {
                (Some(r), _) => ("ConfigMap", &self.inputs.config_maps, r),
                (None, Some(r)) => ("Secret", &self.inputs.secrets, r),
                (None, None) => return Err("names neither a ConfigMap nor a Secret".into()),
            };
        let data = map
            .get(&(self.namespace.to_string(), r.name.clone()))
            .ok_or_else(|| format!("{kind} {}/{} is not in the input", self.namespace, r.name))?;
        data.get(&r.key).cloned().ok_or_else(|| {
            format!(
                "{kind} {}/{} has no key {:?}",
                self.namespace, r.name, r.key
            )
        })
    }
}
