//! The install manifests: `deploy/` (cluster-wide), `deploy/namespaced/`, their shared `base/`,
//! and `crds/`.
//!
//! - Every manifest parses into the k8s-openapi type of its kind and serialises back to the same
//!   document, so a misspelt field (which serde would silently drop) fails; unknown kinds fail.
//! - The RBAC files are exactly what `src/controller/rbac.rs` generates (`QPM_REGENERATE=1`
//!   rewrites them), and the rendered installs (`kubectl kustomize`) hold exactly the generated
//!   RBAC, nothing more.
//! - The Deployment's security settings, probes, ports and env are asserted field by field.
//! - No wildcard anywhere in RBAC.
//! - docs/troubleshooting.md has a section for every condition reason.
//!
//! `kubectl` renders the kustomizations; without it these tests fail naming it, unless
//! `QPM_SKIP_KUBECTL=1`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use qpm_operator::api::validate::yaml_documents;
use qpm_operator::api::{self, Reason, crd_value};
use qpm_operator::controller::rbac::{
    self, Install, RULES, RbacObject, Request, Scope, cluster_rbac, namespaced_rbac, objects_allow,
    rbac_yaml, user_roles,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const OPERATOR_NAMESPACE: &str = "qpm-system";
const SERVICE_ACCOUNT: &str = "qpm-operator";
const CREDENTIALS_SECRET: &str = "qpm-operator-credentials";
const IMAGE_REPOSITORY: &str = "ghcr.io/qpm-operator/qpm-operator";

// ---------------------------------------------------------------------------------------------
// Reading manifests

/// Every YAML file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The documents of a YAML file or stream; comment-only documents (a generated file's header)
/// are dropped.
fn documents(text: &str, what: &str) -> Vec<Value> {
    yaml_documents(text)
        .unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn read_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    documents(&text, &path.display().to_string())
}

/// The kustomize fields these manifests use; anything else (a typo) is refused.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<KustomizePatch>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KustomizePatch {
    #[serde(default)]
    patch: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    target: Option<KustomizeTarget>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KustomizeTarget {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KustomizeImage {
    name: String,
    #[serde(default)]
    new_name: Option<String>,
    #[serde(default)]
    new_tag: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// Where two documents first differ, as `path: what`. Numbers compare by value (`2` and `2.0`
/// are the same to the API server; the typed CRD schema stores bounds as f64).
fn first_difference(original: &Value, typed: &Value, path: &str) -> Option<String> {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    None => {
                        return Some(format!(
                            "{p}: not a field of the Kubernetes type (misspelt or misplaced?)"
                        ));
                    }
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("{path}.{k}: appears only after a typed round trip"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: {a} became {b}")),
    }
}

fn round_trip<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(doc, &back, "") {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

/// Parse one manifest into the k8s-openapi type of its kind and back; unknown kinds fail.
fn check_typed(doc: &Value) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(doc),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc),
        ("v1", "Secret") => round_trip::<Secret>(doc),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(doc),
        ("v1", "Service") => round_trip::<Service>(doc),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(doc)
        }
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
            serde_json::from_value::<Kustomization>(doc.clone())
                .map(drop)
                .map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "unknown kind {api_version}/{kind}: add it to check_typed in tests/deploy.rs"
        )),
    }
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace_of(doc: &Value) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn key(doc: &Value) -> (String, String, String) {
    (
        kind_of(doc).to_string(),
        namespace_of(doc).to_string(),
        name_of(doc).to_string(),
    )
}

const RBAC_KINDS: &[&str] = &["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];

fn rbac_object(doc: &Value) -> RbacObject {
    let d = doc.clone();
    match kind_of(doc) {
        "ClusterRole" => RbacObject::ClusterRole(serde_json::from_value(d).unwrap()),
        "ClusterRoleBinding" => RbacObject::ClusterRoleBinding(serde_json::from_value(d).unwrap()),
        "Role" => RbacObject::Role(serde_json::from_value(d).unwrap()),
        "RoleBinding" => RbacObject::RoleBinding(serde_json::from_value(d).unwrap()),
        other => panic!("{other} is not an RBAC kind"),
    }
}

/// RBAC documents, sorted by (kind, namespace, name).
fn rbac_documents(docs: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = docs
        .iter()
        .filter(|d| RBAC_KINDS.contains(&kind_of(d)))
        .cloned()
        .collect();
    out.sort_by_key(key);
    out
}

fn sorted_values(objects: &[RbacObject]) -> Vec<Value> {
    let mut out: Vec<Value> = objects.iter().map(RbacObject::to_value).collect();
    out.sort_by_key(key);
    out
}

// ---------------------------------------------------------------------------------------------
// kubectl kustomize

fn kubectl_usable() -> bool {
    match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(out) if out.status.success() => true,
        other => {
            if std::env::var("QPM_SKIP_KUBECTL").as_deref() == Ok("1") {
                eprintln!(
                    "kubectl not usable; QPM_SKIP_KUBECTL=1, so kustomize rendering is not checked"
                );
                false
            } else {
                panic!(
                    "kubectl (1.27 or newer, for `kubectl kustomize`) is needed to render deploy/; \
                     install it or set QPM_SKIP_KUBECTL=1 to skip these checks ({other:?})"
                )
            }
        }
    }
}

/// `kubectl kustomize <dir>`, as documents; `None` only when kubectl is missing and
/// `QPM_SKIP_KUBECTL=1`.
fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    if !kubectl_usable() {
        return None;
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(documents(
        &text,
        &format!("kubectl kustomize {}", dir.display()),
    ))
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

// ---------------------------------------------------------------------------------------------
// Every manifest parses into its type

fn manifest_files() -> Vec<PathBuf> {
    let mut files = yaml_files(&repo().join("deploy"));
    files.extend(yaml_files(&repo().join("crds")));
    files
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let files = manifest_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(repo())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "deploy/base/deployment.yaml",
            "deploy/base/kustomization.yaml",
            "deploy/base/namespace.yaml",
            "deploy/base/service.yaml",
            "deploy/base/serviceaccount.yaml",
            "deploy/base/user-roles.yaml",
            "deploy/credentials-secret.example.yaml",
            "deploy/kustomization.yaml",
            "deploy/namespaced/kustomization.yaml",
            "deploy/namespaced/rbac.yaml",
            "deploy/rbac.yaml",
            "crds/deploymentjob.yaml",
            "crds/kustomization.yaml",
        ]
    );
    let mut problems = Vec::new();
    for path in &files {
        let docs = read_documents(path);
        assert!(!docs.is_empty(), "{}: no documents", path.display());
        for doc in &docs {
            if let Err(e) = check_typed(doc) {
                problems.push(format!(
                    "{} ({} {}): {e}",
                    path.display(),
                    kind_of(doc),
                    name_of(doc)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_typed_check_catches_typos_and_unknown_kinds() {
    let deployment = read_documents(&repo().join("deploy/base/deployment.yaml")).remove(0);
    assert_eq!(check_typed(&deployment), Ok(()));

    let mut typo = deployment.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    assert_eq!(
        check_typed(&typo),
        Err(".spec.template.spec.containers[0].imagePullPolicyy: not a field of the Kubernetes type (misspelt or misplaced?)".into())
    );
    let mut misplaced = deployment.clone();
    misplaced["spec"]["template"]["spec"]["readOnlyRootFilesystem"] = json!(true);
    assert!(check_typed(&misplaced).is_err());
    let mut wrong_type = deployment.clone();
    wrong_type["spec"]["replicas"] = json!("one");
    assert!(check_typed(&wrong_type).is_err());

    let unknown = json!({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}});
    assert!(
        check_typed(&unknown)
            .unwrap_err()
            .starts_with("unknown kind apps/v1/Deploymnet")
    );

    let kustomization = json!({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resource": ["a.yaml"]});
    assert!(
        check_typed(&kustomization)
            .unwrap_err()
            .contains("unknown field `resource`")
    );
}

// ---------------------------------------------------------------------------------------------
// Generated RBAC files

/// Each generated file and what it must hold.
fn generated_files() -> Vec<(&'static str, String)> {
    vec![
        (
            "deploy/rbac.yaml",
            rbac_yaml(&cluster_rbac(OPERATOR_NAMESPACE, SERVICE_ACCOUNT)),
        ),
        (
            "deploy/namespaced/rbac.yaml",
            rbac_yaml(&namespaced_rbac(
                OPERATOR_NAMESPACE,
                OPERATOR_NAMESPACE,
                SERVICE_ACCOUNT,
            )),
        ),
        ("deploy/base/user-roles.yaml", rbac_yaml(&user_roles())),
    ]
}

#[test]
fn rbac_files_are_generated_from_rbac_rs() {
    let regenerate = std::env::var("QPM_REGENERATE").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (file, expected) in generated_files() {
        let path = repo().join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != expected {
            if regenerate {
                std::fs::write(&path, &expected).unwrap();
                eprintln!("rewrote {file}");
            } else {
                stale.push(file);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what src/controller/rbac.rs generates; regenerate with \
         `QPM_REGENERATE=1 cargo test --test deploy` and review the diff"
    );
}

// ---------------------------------------------------------------------------------------------
// Rendered installs

fn rendered_keys(docs: &[Value]) -> Vec<(String, String, String)> {
    let mut keys: Vec<_> = docs.iter().map(key).collect();
    keys.sort();
    keys
}

fn k(kind: &str, namespace: &str, name: &str) -> (String, String, String) {
    (kind.into(), namespace.into(), name.into())
}

/// The objects every install has besides its RBAC.
fn common_objects(namespace: &str) -> Vec<(String, String, String)> {
    vec![
        k(
            "CustomResourceDefinition",
            "",
            "deploymentjobs.pm.qualys.io",
        ),
        k("Deployment", namespace, "qpm-operator"),
        k("Namespace", "", namespace),
        k("Service", namespace, "qpm-operator-metrics"),
        k("ServiceAccount", namespace, SERVICE_ACCOUNT),
    ]
}

fn expected_keys(namespace: &str, rbac: &[RbacObject]) -> Vec<(String, String, String)> {
    let mut keys = common_objects(namespace);
    keys.extend(rbac.iter().map(|o| key(&o.to_value())));
    keys.extend(user_roles().iter().map(|o| key(&o.to_value())));
    keys.sort();
    keys
}

/// What every rendered install must satisfy: typed, the CRD as generated, exactly `rbac` plus
/// the user roles, every rule of the table granted in `scope_namespace` and nothing beyond.
fn check_install(docs: &[Value], namespace: &str, install: &Install) {
    for doc in docs {
        if let Err(e) = check_typed(doc) {
            panic!("rendered {} {}: {e}", kind_of(doc), name_of(doc));
        }
    }
    let generated = install.objects();
    assert_eq!(rendered_keys(docs), expected_keys(namespace, &generated));
    assert_eq!(only(docs, "CustomResourceDefinition"), &crd_value());

    let mut expected = generated.clone();
    expected.extend(user_roles());
    assert_eq!(
        rbac_documents(docs),
        sorted_values(&expected),
        "the rendered RBAC is not what src/controller/rbac.rs generates"
    );

    // The same question asked of the rendered objects, as the API server would answer it.
    let rendered: Vec<RbacObject> = rbac_documents(docs).iter().map(rbac_object).collect();
    let watched = install.watched_namespace.as_deref();
    for rule in RULES {
        let (resource, subresource) = match rule.resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (rule.resource, None),
        };
        for verb in rule.verbs {
            let namespaces: Vec<Option<&str>> = match (rule.scope, watched) {
                (Scope::Watched, None) => vec![None, Some("any-namespace"), Some(namespace)],
                (Scope::Watched, Some(ns)) => vec![Some(ns)],
                (Scope::OperatorNamespace, _) => vec![Some(namespace)],
                (Scope::Cluster, _) => vec![None],
            };
            for ns in namespaces {
                let request = Request {
                    group: rule.group,
                    resource,
                    subresource,
                    verb,
                    namespace: ns,
                    name: rule.names.first().copied(),
                };
                assert!(
                    objects_allow(&rendered, namespace, SERVICE_ACCOUNT, &request),
                    "{request:?}"
                );
            }
        }
    }
    let denied = [
        ("", "secrets", None, "list", Some(namespace)),
        ("", "secrets", None, "watch", None),
        (
            "pm.qualys.io",
            "deploymentjobs",
            None,
            "update",
            Some(namespace),
        ),
        (
            "pm.qualys.io",
            "deploymentjobs",
            None,
            "delete",
            Some(namespace),
        ),
        (
            "pm.qualys.io",
            "deploymentjobs",
            Some("finalizers"),
            "update",
            Some(namespace),
        ),
        (
            "coordination.k8s.io",
            "leases",
            None,
            "get",
            Some("elsewhere"),
        ),
        (
            "coordination.k8s.io",
            "leases",
            None,
            "delete",
            Some(namespace),
        ),
        ("", "configmaps", None, "create", Some(namespace)),
    ];
    for (group, resource, subresource, verb, ns) in denied {
        let request = Request {
            group,
            resource,
            subresource,
            verb,
            namespace: ns,
            name: None,
        };
        assert!(
            !objects_allow(&rendered, namespace, SERVICE_ACCOUNT, &request),
            "{request:?} must not be allowed"
        );
    }
}

#[test]
fn deploy_renders_the_cluster_wide_install() {
    let Some(docs) = kustomize(&repo().join("deploy")) else {
        return;
    };
    check_install(&docs, OPERATOR_NAMESPACE, &Install::cluster_default());
    assert!(
        !docs.iter().any(|d| kind_of(d) == "Secret"),
        "the credentials example must not be installed"
    );
    let deployment: Deployment = serde_json::from_value(only(&docs, "Deployment").clone()).unwrap();
    let args = container(&deployment).args.clone().unwrap();
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );
}

#[test]
fn deploy_namespaced_renders_roles_only() {
    let Some(docs) = kustomize(&repo().join("deploy/namespaced")) else {
        return;
    };
    let install = Install {
        operator_namespace: OPERATOR_NAMESPACE.into(),
        service_account: SERVICE_ACCOUNT.into(),
        watched_namespace: Some(OPERATOR_NAMESPACE.into()),
    };
    check_install(&docs, OPERATOR_NAMESPACE, &install);
    // Cluster-wide, the operator may only read the DeploymentJob CRD (by name); its other
    // ClusterRoles are the unbound user roles.
    let bindings: Vec<&str> = docs
        .iter()
        .filter(|d| kind_of(d) == "ClusterRoleBinding")
        .map(name_of)
        .collect();
    assert_eq!(bindings, [rbac::CRD_READER_NAME]);
    let cluster_roles: BTreeSet<&str> = docs
        .iter()
        .filter(|d| kind_of(d) == "ClusterRole")
        .map(name_of)
        .collect();
    assert_eq!(
        cluster_roles,
        BTreeSet::from([rbac::CRD_READER_NAME, rbac::EDITOR_ROLE, rbac::VIEWER_ROLE])
    );
    let reader = docs
        .iter()
        .find(|d| kind_of(d) == "ClusterRole" && name_of(d) == rbac::CRD_READER_NAME)
        .unwrap();
    assert_eq!(
        reader["rules"],
        serde_json::json!([{
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["deploymentjobs.pm.qualys.io"],
            "verbs": ["get", "list", "watch"],
        }])
    );
    let deployment: Deployment = serde_json::from_value(only(&docs, "Deployment").clone()).unwrap();
    assert_eq!(
        container(&deployment).args.as_deref().unwrap(),
        [
            "run",
            "--listen=0.0.0.0:8080",
            "--log-format=json",
            "--namespace=$(POD_NAMESPACE)"
        ]
    );
    check_deployment(&deployment);
}

/// The overlay docs/install.md shows for running the namespaced install in another namespace.
const NAMESPACE_OVERLAY: &str = "\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: team-a
resources:
  - PATH/deploy/namespaced
patches:
  # team-a exists already: do not create it, nor relabel it.
  - patch: |-
      $patch: delete
      apiVersion: v1
      kind: Namespace
      metadata:
        name: qpm-system
";

/// A path from `from` to `to`, both absolute (kustomize refuses absolute resource paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

#[test]
fn the_documented_namespace_overlay_moves_everything() {
    let docs_text = std::fs::read_to_string(repo().join("docs/install.md")).unwrap();
    let documented = NAMESPACE_OVERLAY.replace("PATH/", "../qpm-operator/");
    assert!(
        docs_text.contains(&documented),
        "docs/install.md shows the namespace overlay:\n{documented}"
    );

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("namespace-overlay");
    std::fs::create_dir_all(&dir).unwrap();
    let base = relative(
        &dir.canonicalize().unwrap(),
        &repo().canonicalize().unwrap(),
    );
    let overlay = NAMESPACE_OVERLAY.replace("PATH", &base.to_string_lossy());
    std::fs::write(dir.join("kustomization.yaml"), overlay).unwrap();
    let Some(docs) = kustomize(&dir) else {
        return;
    };
    let install = Install {
        operator_namespace: "team-a".into(),
        service_account: SERVICE_ACCOUNT.into(),
        watched_namespace: Some("team-a".into()),
    };
    let generated = install.objects();
    let mut expected = expected_keys("team-a", &generated);
    expected.retain(|(kind, _, _)| kind != "Namespace");
    assert_eq!(rendered_keys(&docs), expected);
    let mut rbac = generated.clone();
    rbac.extend(user_roles());
    assert_eq!(rbac_documents(&docs), sorted_values(&rbac));
}

// ---------------------------------------------------------------------------------------------
// The Deployment, field by field

fn container(deployment: &Deployment) -> &Container {
    let containers = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers;
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn check_deployment(deployment: &Deployment) {
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let strategy = spec.strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));

    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(SERVICE_ACCOUNT));
    assert_eq!(pod.automount_service_account_token, Some(true));
    // Longer than the operator's 10s default --shutdown-deadline (itself under the 15s lease).
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.host_network, None);
    assert_eq!(pod.host_pid, None);
    assert_eq!(pod.host_ipc, None);
    assert_eq!(pod.volumes, None);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(psc.run_as_group, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    let c = container(deployment);
    assert_eq!(
        c.image.as_deref(),
        Some(format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "the image tag follows the crate version"
    );
    assert_eq!(c.command, None, "the image's ENTRYPOINT runs the binary");
    assert_eq!(
        c.args.as_ref().unwrap()[..3],
        ["run", "--listen=0.0.0.0:8080", "--log-format=json"]
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add, None);
    assert_eq!(sc.run_as_user, None, "the pod's user applies");

    let resources = c.resources.as_ref().unwrap();
    let quantities = |m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        m.as_ref()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        quantities(&resources.requests),
        [
            ("cpu".into(), "50m".into()),
            ("memory".into(), "64Mi".into())
        ]
    );
    assert_eq!(
        quantities(&resources.limits),
        [
            ("cpu".into(), "500m".into()),
            ("memory".into(), "256Mi".into())
        ]
    );

    let ports = c.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].container_port, 8080);
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    for (probe, path) in [
        (c.liveness_probe.as_ref().unwrap(), "/healthz"),
        (c.readiness_probe.as_ref().unwrap(), "/readyz"),
    ] {
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("http".into()));
        assert_eq!(get.scheme, None);
    }

    let env = c.env.as_ref().unwrap();
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "POD_NAMESPACE",
            "POD_NAME",
            "QUALYS_GATEWAY_URL",
            "QUALYS_USERNAME",
            "QUALYS_PASSWORD"
        ]
    );
    for (var, field) in env[..2].iter().zip(["metadata.namespace", "metadata.name"]) {
        let field_ref = var.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field_ref.field_path, field);
    }
    for (var, key) in env[2..].iter().zip(["gatewayUrl", "username", "password"]) {
        assert_eq!(var.value, None, "{} never holds a literal", var.name);
        let secret = var
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(secret.name, CREDENTIALS_SECRET);
        assert_eq!(secret.key, key);
        assert_eq!(secret.optional, Some(true));
    }
}

/// `qpm-operator run` as the binary parses it.
#[derive(clap::Parser, Debug)]
struct RunCommand {
    #[command(flatten)]
    args: qpm_operator::controller::RunArgs,
}

/// Parse a Deployment's args with the real `run` flags, expanding `$(VAR)` from the container's
/// env as the kubelet does (`namespace` stands for the downward-API POD_NAMESPACE).
fn parsed_run_args(deployment: &Deployment, namespace: &str) -> qpm_operator::controller::RunArgs {
    use clap::Parser;
    let c = container(deployment);
    let args = c.args.as_ref().unwrap();
    assert_eq!(
        args[0], "run",
        "the image's ENTRYPOINT is the binary; `run` is the subcommand"
    );
    let expanded: Vec<String> = args[1..]
        .iter()
        .map(|a| a.replace("$(POD_NAMESPACE)", namespace))
        .collect();
    assert!(!expanded.iter().any(|a| a.contains("$(")), "{expanded:?}");
    RunCommand::try_parse_from(std::iter::once("run".to_string()).chain(expanded))
        .unwrap_or_else(|e| panic!("the Deployment's args are not valid `run` flags: {e}"))
        .args
}

#[test]
fn the_deployment_args_are_valid_run_flags() {
    use qpm_operator::controller::LogFormat;
    let base: Deployment = serde_json::from_value(
        read_documents(&repo().join("deploy/base/deployment.yaml")).remove(0),
    )
    .unwrap();
    let args = parsed_run_args(&base, OPERATOR_NAMESPACE);
    assert_eq!(args.namespace, None);
    assert_eq!(args.log_format, LogFormat::Json);
    assert!(args.leader_election);
    assert_eq!(args.lease_name, "qpm-operator");
    // The listener is the container's `http` port, which the probes and the Service use.
    assert_eq!(args.listen.port(), 8080);
    assert_eq!(
        container(&base).ports.as_ref().unwrap()[0].container_port,
        i32::from(args.listen.port())
    );
    // The kubelet waits longer than the operator's shutdown deadline.
    let grace = base
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .termination_grace_period_seconds
        .unwrap();
    assert!(
        std::time::Duration::from_secs(u64::try_from(grace).unwrap()) > args.shutdown_deadline,
        "terminationGracePeriodSeconds {grace} vs --shutdown-deadline {:?}",
        args.shutdown_deadline
    );

    let Some(docs) = kustomize(&repo().join("deploy/namespaced")) else {
        return;
    };
    let namespaced: Deployment = serde_json::from_value(only(&docs, "Deployment").clone()).unwrap();
    let args = parsed_run_args(&namespaced, OPERATOR_NAMESPACE);
    assert_eq!(args.namespace.as_deref(), Some(OPERATOR_NAMESPACE));
}

#[test]
fn the_deployment_is_locked_down() {
    let docs = read_documents(&repo().join("deploy/base/deployment.yaml"));
    let deployment: Deployment = serde_json::from_value(docs[0].clone()).unwrap();
    check_deployment(&deployment);
    assert_eq!(
        container(&deployment).args.as_ref().unwrap().len(),
        3,
        "the base watches every namespace"
    );
    let meta = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap();
    let annotations = meta.annotations.as_ref().unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn the_pieces_agree_with_each_other() {
    let base = repo().join("deploy/base");
    let deployment: Deployment =
        serde_json::from_value(read_documents(&base.join("deployment.yaml")).remove(0)).unwrap();
    let pod_labels = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = deployment
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));

    // The Service reaches the pod's `http` port under the name `metrics`.
    let service: Service =
        serde_json::from_value(read_documents(&base.join("service.yaml")).remove(0)).unwrap();
    let sspec = service.spec.unwrap();
    assert_eq!(sspec.selector.unwrap(), selector);
    let port = &sspec.ports.unwrap()[0];
    assert_eq!(port.name.as_deref(), Some("metrics"));
    assert_eq!(port.target_port, Some(IntOrString::String("http".into())));

    // The ServiceAccount mounts no token unless a pod asks (the operator's pod does).
    let sa: ServiceAccount =
        serde_json::from_value(read_documents(&base.join("serviceaccount.yaml")).remove(0))
            .unwrap();
    assert_eq!(sa.metadata.name.as_deref(), Some(SERVICE_ACCOUNT));
    assert_eq!(sa.automount_service_account_token, Some(false));

    // The namespace enforces the restricted Pod Security Standard the Deployment meets.
    let ns: Namespace =
        serde_json::from_value(read_documents(&base.join("namespace.yaml")).remove(0)).unwrap();
    assert_eq!(ns.metadata.name.as_deref(), Some(OPERATOR_NAMESPACE));
    assert_eq!(
        ns.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // The example Secret has exactly the keys the Deployment reads, and is not installed.
    let secret: Secret = serde_json::from_value(
        read_documents(&repo().join("deploy/credentials-secret.example.yaml")).remove(0),
    )
    .unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some(CREDENTIALS_SECRET));
    assert_eq!(
        secret.metadata.namespace.as_deref(),
        Some(OPERATOR_NAMESPACE)
    );
    let keys: Vec<&str> = secret
        .string_data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["gatewayUrl", "password", "username"]);
    for file in [
        "deploy/kustomization.yaml",
        "deploy/base/kustomization.yaml",
        "deploy/namespaced/kustomization.yaml",
    ] {
        let k: Kustomization =
            serde_json::from_value(read_documents(&repo().join(file)).remove(0)).unwrap();
        assert!(
            !k.resources.iter().any(|r| r.contains("credentials")),
            "{file} must not install the credentials example"
        );
    }

    // The image runs as the user the pod declares.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    let psc = deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .security_context
        .unwrap();
    assert_eq!(
        user.trim(),
        format!("{}:{}", psc.run_as_user.unwrap(), psc.run_as_group.unwrap())
    );
}

// ---------------------------------------------------------------------------------------------
// No wildcards

fn wildcards(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rule) in doc["rules"].as_array().into_iter().flatten().enumerate() {
        for field in ["verbs", "resources", "apiGroups", "resourceNames"] {
            for v in rule[field].as_array().into_iter().flatten() {
                if v.as_str().is_some_and(|s| s.contains('*')) {
                    out.push(format!(
                        "{} {} rules[{i}].{field}: {v}",
                        kind_of(doc),
                        name_of(doc)
                    ));
                }
            }
        }
        if !rule["nonResourceURLs"].is_null() {
            out.push(format!(
                "{} {} rules[{i}]: nonResourceURLs",
                kind_of(doc),
                name_of(doc)
            ));
        }
    }
    if !doc["aggregationRule"].is_null() {
        out.push(format!(
            "{} {}: aggregationRule",
            kind_of(doc),
            name_of(doc)
        ));
    }
    out
}

#[test]
fn no_wildcards_anywhere() {
    assert_eq!(
        wildcards(
            &json!({"kind": "Role", "metadata": {"name": "x"}, "rules": [{"verbs": ["*"], "resources": ["pods"], "apiGroups": [""]}]})
        ),
        ["Role x rules[0].verbs: \"*\""]
    );
    let mut docs: Vec<Value> = manifest_files()
        .iter()
        .flat_map(|p| read_documents(p))
        .collect();
    for dir in ["deploy", "deploy/namespaced"] {
        if let Some(rendered) = kustomize(&repo().join(dir)) {
            docs.extend(rendered);
        }
    }
    let found: Vec<String> = docs.iter().flat_map(wildcards).collect();
    assert!(found.is_empty(), "{found:?}");
    for rule in RULES {
        assert!(!rule.group.contains('*') && !rule.resource.contains('*'));
        assert!(!rule.verbs.iter().any(|v| v.contains('*')));
    }
}

#[test]
fn the_operator_never_updates_or_deletes() {
    for objects in [
        cluster_rbac(OPERATOR_NAMESPACE, SERVICE_ACCOUNT),
        namespaced_rbac("patching", OPERATOR_NAMESPACE, SERVICE_ACCOUNT),
    ] {
        for o in &objects {
            for rule in o.to_value()["rules"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let verb = verb.as_str().unwrap();
                    assert!(
                        ["get", "list", "watch", "create", "patch"].contains(&verb),
                        "{} {}: {verb}",
                        o.kind(),
                        o.metadata().name.as_deref().unwrap()
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Docs

#[test]
fn troubleshooting_has_a_section_for_every_reason_and_annotation() {
    let text = std::fs::read_to_string(repo().join("docs/troubleshooting.md")).unwrap();
    let headings: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(str::trim)
        .collect();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .filter(|name| !headings.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no `### <Reason>` section for {missing:?}"
    );
    for annotation in [
        api::ANNOTATION_PAUSED,
        api::ANNOTATION_RECONCILE_REQUESTED_AT,
        api::ANNOTATION_FORCE_ORPHAN,
    ] {
        assert!(
            text.lines().any(|l| l.starts_with("kubectl ")
                && l.contains(" annotate qdj ")
                && l.contains(annotation)),
            "docs/troubleshooting.md shows {annotation} with a kubectl command"
        );
    }
}
