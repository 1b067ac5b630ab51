//! The operator's Kubernetes permissions, from one table.
//!
//! [`RULES`] lists every call the controller makes on the Kubernetes API, and nothing more. The
//! RBAC objects in `deploy/` are generated from it ([`cluster_rbac`], [`namespaced_rbac`],
//! [`user_roles`], [`rbac_yaml`]), a test fails when they differ, and controller tests check
//! each request they see against it ([`allows`], [`Install::allows`]), so the manifests and the
//! code cannot drift apart.
//!
//! Deliberately absent: `list`/`watch` on Secrets (a referenced Secret is read by name and
//! re-read every `--secret-poll-interval`; a watch, even label-selected, needs list/watch on
//! every Secret in scope), `update` (finalizers go by JSON patch, status by server-side apply),
//! `delete` (the operator deletes nothing in Kubernetes), `deploymentjobs/finalizers` (only
//! needed with OwnerReferencesPermissionEnforcement on objects the operator owns; it owns none),
//! and wildcards.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use std::collections::BTreeMap;

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The namespaces the operator watches: every namespace (a ClusterRole bound by a
    /// ClusterRoleBinding), or, with `--namespace NS`, that one (a Role and RoleBinding there).
    Watched,
    /// The operator's own namespace only (a Role and RoleBinding there), whatever it watches.
    OperatorNamespace,
    /// Cluster-scoped objects, only those the rule names (a ClusterRole and
    /// ClusterRoleBinding in every install, namespaced ones included).
    Cluster,
}

/// One permission the operator needs, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Resource as RBAC names it, with a subresource after a slash (`deploymentjobs/status`).
    pub resource: &'static str,
    /// Verbs, in the order they appear in the generated rule.
    pub verbs: &'static [&'static str],
    /// Where the rule applies.
    pub scope: Scope,
    /// The only objects it applies to (`resourceNames`); empty for all.
    pub names: &'static [&'static str],
    /// What the controller does with it; written into the generated manifests.
    pub why: &'static str,
}

/// Every request the controller makes on the Kubernetes API.
pub const RULES: &[Rule] = &[
    Rule {
        group: crate::api::GROUP,
        resource: "deploymentjobs",
        verbs: &["get", "list", "watch", "patch"],
        scope: Scope::Watched,
        names: &[],
        why: "watch DeploymentJobs; add and remove the finalizer by JSON patch",
    },
    Rule {
        group: crate::api::GROUP,
        resource: "deploymentjobs/status",
        verbs: &["patch"],
        scope: Scope::Watched,
        names: &[],
        why: "write status by server-side apply",
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: &["get", "list", "watch"],
        scope: Scope::Watched,
        names: &[],
        why: "a metadata-only watch re-queues the DeploymentJobs that reference a ConfigMap; scripts are read by get",
    },
    Rule {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        scope: Scope::Watched,
        names: &[],
        why: "read a referenced Secret (connectionRef, secretKeyRef scripts) by name; never listed or watched",
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Watched,
        names: &[],
        why: "publish events on DeploymentJobs (a repeated event is patched)",
    },
    Rule {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "patch"],
        scope: Scope::OperatorNamespace,
        names: &[],
        why: "leader election on one Lease (kube-lease-manager: get, create if missing, strategic-merge and apply patches)",
    },
    Rule {
        group: "apiextensions.k8s.io",
        resource: "customresourcedefinitions",
        verbs: &["get", "list", "watch"],
        scope: Scope::Cluster,
        names: &[super::crd_check::CRD_NAME],
        why: "read the installed DeploymentJob CRD (that one only) at start and follow it, to find status fields it would prune",
    },
];

/// Name of the ServiceAccount, ClusterRole, Role and bindings of a default install.
pub const NAME: &str = "qpm-operator";
/// Name of the Role and RoleBinding for leader election, in the operator's namespace.
pub const LEADER_ELECTION_NAME: &str = "qpm-operator-leader-election";
/// ClusterRole (and binding) for the [`Scope::Cluster`] rules: reading the DeploymentJob CRD.
pub const CRD_READER_NAME: &str = "qpm-operator-crd-reader";
/// ClusterRole that lets people manage DeploymentJobs where it is bound (not aggregated).
pub const EDITOR_ROLE: &str = "qpm-operator-deploymentjob-editor";
/// ClusterRole that lets people read DeploymentJobs where it is bound (not aggregated).
pub const VIEWER_ROLE: &str = "qpm-operator-deploymentjob-viewer";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// A generated RBAC object; serialises as the Kubernetes object it holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RbacObject {
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
}

impl RbacObject {
    /// `kind` of the object.
    pub fn kind(&self) -> &'static str {
        match self {
            RbacObject::ClusterRole(_) => "ClusterRole",
            RbacObject::ClusterRoleBinding(_) => "ClusterRoleBinding",
            RbacObject::Role(_) => "Role",
            RbacObject::RoleBinding(_) => "RoleBinding",
        }
    }

    /// `metadata` of the object.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            RbacObject::ClusterRole(o) => &o.metadata,
            RbacObject::ClusterRoleBinding(o) => &o.metadata,
            RbacObject::Role(o) => &o.metadata,
            RbacObject::RoleBinding(o) => &o.metadata,
        }
    }

    /// The object as JSON, `apiVersion` and `kind` included.
    pub fn to_value(&self) -> serde_json::Value {
        // These are plain k8s-openapi structs with string maps; serialising cannot fail.
        serde_json::to_value(self).expect("a k8s-openapi RBAC object serialises to JSON")
    }
}

/// What an install is: where the operator runs, as whom, and what it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// Namespace of the Deployment, its ServiceAccount and the leader-election Lease.
    pub operator_namespace: String,
    /// Name of the operator's ServiceAccount.
    pub service_account: String,
    /// `--namespace`: the one namespace watched; `None` watches every namespace.
    pub watched_namespace: Option<String>,
}

impl Install {
    /// The install in `deploy/`: namespace `qpm-system`, ServiceAccount `qpm-operator`,
    /// every namespace watched.
    pub fn cluster_default() -> Install {
        Install {
            operator_namespace: "qpm-system".into(),
            service_account: NAME.into(),
            watched_namespace: None,
        }
    }

    /// The operator's RBAC objects for this install ([`cluster_rbac`] or [`namespaced_rbac`]).
    pub fn objects(&self) -> Vec<RbacObject> {
        match &self.watched_namespace {
            None => cluster_rbac(&self.operator_namespace, &self.service_account),
            Some(ns) => namespaced_rbac(ns, &self.operator_namespace, &self.service_account),
        }
    }

    /// Would the API server allow this request by the operator's ServiceAccount, under the
    /// objects of [`Install::objects`]? `namespace` is the request's namespace; `None` is a
    /// request across all namespaces (a cluster-wide list or watch). The RBAC authorizer's
    /// rules are applied to the generated objects, so this checks the generation as well as
    /// the table.
    pub fn allows(
        &self,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        verb: &str,
        namespace: Option<&str>,
    ) -> bool {
        self.allows_named(group, resource, subresource, verb, namespace, None)
    }

    /// [`Install::allows`] for a request that names its object (`name`).
    pub fn allows_named(
        &self,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        verb: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        objects_allow(
            &self.objects(),
            &self.operator_namespace,
            &self.service_account,
            &Request {
                group,
                resource,
                subresource,
                verb,
                namespace,
                name,
            },
        )
    }
}

/// One request, as the RBAC authorizer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// API group; `""` is the core group.
    pub group: &'a str,
    /// Resource, without subresource (`deploymentjobs`).
    pub resource: &'a str,
    /// Subresource (`status`), if any.
    pub subresource: Option<&'a str>,
    /// Verb (`get`, `list`, `watch`, `create`, `patch`, …).
    pub verb: &'a str,
    /// Namespace of the request; `None` for all namespaces or a cluster-scoped resource.
    pub namespace: Option<&'a str>,
    /// The object's name (for a list or watch, a `metadata.name` field selector's value), if
    /// the request names one; rules with `resourceNames` grant only named requests.
    pub name: Option<&'a str>,
}

/// Does a rule of [`RULES`] with scope `scope` grant `verb` on `resource` (and `subresource`)
/// of `group`? The table-level check, for tests that know the scope a request belongs to; use
/// [`Install::allows`] to check a concrete namespace.
pub fn allows(
    group: &str,
    resource: &str,
    subresource: Option<&str>,
    verb: &str,
    namespace_scope: Scope,
) -> bool {
    let full = full_resource(resource, subresource);
    RULES.iter().any(|r| {
        r.scope == namespace_scope
            && r.group == group
            && r.resource == full
            && r.verbs.contains(&verb)
    })
}

/// Does a set of RBAC objects let ServiceAccount `sa_namespace/sa_name` make `request`?
/// Follows the RBAC authorizer: a ClusterRoleBinding grants its ClusterRole everywhere; a
/// RoleBinding grants its Role or ClusterRole in the binding's namespace only. No wildcards
/// are honoured, since none are generated. Used on generated and on rendered manifests.
pub fn objects_allow(
    objects: &[RbacObject],
    sa_namespace: &str,
    sa_name: &str,
    request: &Request<'_>,
) -> bool {
    let cluster_roles: BTreeMap<&str, &[PolicyRule]> = objects
        .iter()
        .filter_map(|o| match o {
            RbacObject::ClusterRole(r) => Some((
                r.metadata.name.as_deref().unwrap_or_default(),
                r.rules.as_deref().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let roles: BTreeMap<(&str, &str), &[PolicyRule]> = objects
        .iter()
        .filter_map(|o| match o {
            RbacObject::Role(r) => Some((
                (
                    r.metadata.namespace.as_deref().unwrap_or_default(),
                    r.metadata.name.as_deref().unwrap_or_default(),
                ),
                r.rules.as_deref().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let is_us = |subjects: &Option<Vec<Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa_name
                && s.namespace.as_deref() == Some(sa_namespace)
        })
    };
    let full = full_resource(request.resource, request.subresource);
    let grants = |rules: &[PolicyRule]| {
        rules.iter().any(|rule| {
            rule.verbs.iter().any(|v| v == request.verb)
                && rule.api_groups.iter().flatten().any(|g| g == request.group)
                && rule.resources.iter().flatten().any(|r| *r == full)
                && rule.resource_names.as_ref().is_none_or(|names| {
                    names.is_empty() || request.name.is_some_and(|n| names.iter().any(|x| x == n))
                })
        })
    };
    objects.iter().any(|o| match o {
        RbacObject::ClusterRoleBinding(b) => {
            is_us(&b.subjects)
                && b.role_ref.kind == "ClusterRole"
                && cluster_roles
                    .get(b.role_ref.name.as_str())
                    .is_some_and(|rules| grants(rules))
        }
        RbacObject::RoleBinding(b) => {
            let ns = b.metadata.namespace.as_deref().unwrap_or_default();
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => cluster_roles.get(b.role_ref.name.as_str()),
                "Role" => roles.get(&(ns, b.role_ref.name.as_str())),
                _ => None,
            };
            is_us(&b.subjects)
                && request.namespace == Some(ns)
                && rules.is_some_and(|rules| grants(rules))
        }
        _ => false,
    })
}

fn full_resource(resource: &str, subresource: Option<&str>) -> String {
    match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    }
}

fn labels() -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        NAME.to_string(),
    )]))
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: labels(),
        ..ObjectMeta::default()
    }
}

/// The rules of `scope`, one PolicyRule per row of [`RULES`], in table order.
fn policy_rules(scope: Scope) -> Vec<PolicyRule> {
    RULES
        .iter()
        .filter(|r| r.scope == scope)
        .map(policy_rule)
        .collect()
}

fn policy_rule(r: &Rule) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![r.group.to_string()]),
        resources: Some(vec![r.resource.to_string()]),
        verbs: r.verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: (!r.names.is_empty())
            .then(|| r.names.iter().map(|n| n.to_string()).collect()),
        ..PolicyRule::default()
    }
}

/// The ClusterRole and ClusterRoleBinding of the [`Scope::Cluster`] rules, in every install.
fn cluster_scoped_rbac(operator_namespace: &str, sa: &str) -> [RbacObject; 2] {
    [
        RbacObject::ClusterRole(ClusterRole {
            metadata: meta(CRD_READER_NAME, None),
            rules: Some(policy_rules(Scope::Cluster)),
            aggregation_rule: None,
        }),
        RbacObject::ClusterRoleBinding(ClusterRoleBinding {
            metadata: meta(CRD_READER_NAME, None),
            role_ref: role_ref("ClusterRole", CRD_READER_NAME),
            subjects: service_account(operator_namespace, sa),
        }),
    ]
}

fn service_account(namespace: &str, name: &str) -> Option<Vec<Subject>> {
    Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    }])
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: RBAC_GROUP.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

/// The leader-election Role and RoleBinding in the operator's namespace.
fn operator_namespace_rbac(operator_namespace: &str, sa: &str) -> [RbacObject; 2] {
    [
        RbacObject::Role(Role {
            metadata: meta(LEADER_ELECTION_NAME, Some(operator_namespace)),
            rules: Some(policy_rules(Scope::OperatorNamespace)),
        }),
        RbacObject::RoleBinding(RoleBinding {
            metadata: meta(LEADER_ELECTION_NAME, Some(operator_namespace)),
            role_ref: role_ref("Role", LEADER_ELECTION_NAME),
            subjects: service_account(operator_namespace, sa),
        }),
    ]
}

/// RBAC for an operator that watches every namespace: a ClusterRole and ClusterRoleBinding
/// for the [`Scope::Watched`] rules, and a Role and RoleBinding in `operator_namespace` for the
/// [`Scope::OperatorNamespace`] ones (leases are never granted cluster-wide).
pub fn cluster_rbac(operator_namespace: &str, service_account_name: &str) -> Vec<RbacObject> {
    let mut out = vec![
        RbacObject::ClusterRole(ClusterRole {
            metadata: meta(NAME, None),
            rules: Some(policy_rules(Scope::Watched)),
            aggregation_rule: None,
        }),
        RbacObject::ClusterRoleBinding(ClusterRoleBinding {
            metadata: meta(NAME, None),
            role_ref: role_ref("ClusterRole", NAME),
            subjects: service_account(operator_namespace, service_account_name),
        }),
    ];
    out.extend(operator_namespace_rbac(
        operator_namespace,
        service_account_name,
    ));
    out.extend(cluster_scoped_rbac(
        operator_namespace,
        service_account_name,
    ));
    out
}

/// RBAC for an operator run with `--namespace watched_namespace`: Roles and RoleBindings only,
/// the [`Scope::Watched`] rules in `watched_namespace` and the [`Scope::OperatorNamespace`]
/// ones in `operator_namespace` (the two may be the same namespace).
pub fn namespaced_rbac(
    watched_namespace: &str,
    operator_namespace: &str,
    service_account_name: &str,
) -> Vec<RbacObject> {
    let mut out =
        watched_namespace_rbac(watched_namespace, operator_namespace, service_account_name)
            .to_vec();
    out.extend(operator_namespace_rbac(
        operator_namespace,
        service_account_name,
    ));
    out.extend(cluster_scoped_rbac(
        operator_namespace,
        service_account_name,
    ));
    out
}

/// The Role and RoleBinding for the [`Scope::Watched`] rules in the watched namespace.
fn watched_namespace_rbac(
    watched_namespace: &str,
    operator_namespace: &str,
    service_account_name: &str,
) -> [RbacObject; 2] {
    [
        RbacObject::Role(Role {
            metadata: meta(NAME, Some(watched_namespace)),
            rules: Some(policy_rules(Scope::Watched)),
        }),
        RbacObject::RoleBinding(RoleBinding {
            metadata: meta(NAME, Some(watched_namespace)),
            role_ref: role_ref("Role", NAME),
            subjects: service_account(operator_namespace, service_account_name),
        }),
    ]
}

/// ClusterRoles for people, bound per namespace by an administrator (`kubectl create
/// rolebinding … --clusterrole qpm-operator-deploymentjob-editor`). They are deliberately not
/// aggregated into `admin`/`edit`/`view`: whoever can create a DeploymentJob can patch and
/// reboot machines through the operator's connection, so that right is granted explicitly.
pub fn user_roles() -> Vec<RbacObject> {
    let rule = |verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![crate::api::GROUP.to_string()]),
        resources: Some(vec!["deploymentjobs".to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    let read = ["get", "list", "watch"];
    let write = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    vec![
        RbacObject::ClusterRole(ClusterRole {
            metadata: meta(EDITOR_ROLE, None),
            rules: Some(vec![rule(&write)]),
            aggregation_rule: None,
        }),
        RbacObject::ClusterRole(ClusterRole {
            metadata: meta(VIEWER_ROLE, None),
            rules: Some(vec![rule(&read)]),
            aggregation_rule: None,
        }),
    ]
}

/// The objects as a multi-document YAML file, headed by a comment that says where it comes
/// from and why each rule is there.
pub fn rbac_yaml(objects: &[RbacObject]) -> String {
    let mut out = String::from(
        "# Generated from src/controller/rbac.rs; do not edit. A test fails when this file differs;\n\
         # regenerate with `QPM_REGENERATE=1 cargo test --test deploy`.\n",
    );
    let operator_rules: Vec<&Rule> = RULES
        .iter()
        .filter(|rule| {
            let wanted = policy_rule(rule);
            objects.iter().any(|o| {
                let rules = match o {
                    RbacObject::ClusterRole(r) => r.rules.as_deref(),
                    RbacObject::Role(r) => r.rules.as_deref(),
                    _ => None,
                };
                rules.unwrap_or_default().contains(&wanted)
            })
        })
        .collect();
    if !operator_rules.is_empty() {
        out.push_str("#\n# What the operator does with each permission:\n");
        for rule in operator_rules {
            let group = if rule.group.is_empty() {
                "core"
            } else {
                rule.group
            };
            out.push_str(&format!(
                "#   {group} {} [{}]: {}\n",
                rule.resource,
                rule.verbs.join(", "),
                rule.why
            ));
        }
    }
    for object in objects {
        out.push_str("---\n");
        // Typed objects with string fields always serialise; a failure would be a bug here.
        let doc =
            serde_saphyr::to_string(&object.to_value()).expect("an RBAC object serialises to YAML");
        out.push_str(&doc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(watched: Option<&str>) -> Install {
        Install {
            operator_namespace: "qpm-system".into(),
            service_account: "qpm-operator".into(),
            watched_namespace: watched.map(Into::into),
        }
    }

    #[test]
    fn cluster_install_allows_exactly_the_table() {
        let i = install(None);
        // Cluster-wide list and watch, and namespaced calls anywhere.
        for ns in [None, Some("patching"), Some("qpm-system")] {
            assert!(i.allows("pm.qualys.io", "deploymentjobs", None, "watch", ns));
            assert!(i.allows("", "configmaps", None, "list", ns));
        }
        assert!(i.allows(
            "pm.qualys.io",
            "deploymentjobs",
            Some("status"),
            "patch",
            Some("a")
        ));
        assert!(i.allows("", "secrets", None, "get", Some("a")));
        assert!(i.allows("events.k8s.io", "events", None, "create", Some("a")));
        // Not granted.
        assert!(!i.allows("", "secrets", None, "list", None));
        assert!(!i.allows("", "secrets", None, "watch", Some("a")));
        assert!(!i.allows("pm.qualys.io", "deploymentjobs", None, "update", Some("a")));
        assert!(!i.allows("pm.qualys.io", "deploymentjobs", None, "delete", Some("a")));
        assert!(!i.allows(
            "pm.qualys.io",
            "deploymentjobs",
            Some("status"),
            "update",
            Some("a")
        ));
        assert!(!i.allows(
            "pm.qualys.io",
            "deploymentjobs",
            Some("finalizers"),
            "update",
            Some("a")
        ));
        assert!(
            !i.allows("", "events", None, "create", Some("a")),
            "core events"
        );
        // Leases only in the operator's namespace.
        for verb in ["get", "create", "patch"] {
            assert!(i.allows(
                "coordination.k8s.io",
                "leases",
                None,
                verb,
                Some("qpm-system")
            ));
            assert!(!i.allows("coordination.k8s.io", "leases", None, verb, Some("default")));
            assert!(!i.allows("coordination.k8s.io", "leases", None, verb, None));
        }
        assert!(!i.allows(
            "coordination.k8s.io",
            "leases",
            None,
            "delete",
            Some("qpm-system")
        ));
    }

    #[test]
    fn namespaced_install_allows_only_its_namespace() {
        let i = install(Some("patching"));
        assert!(i.allows(
            "pm.qualys.io",
            "deploymentjobs",
            None,
            "watch",
            Some("patching")
        ));
        assert!(!i.allows("pm.qualys.io", "deploymentjobs", None, "watch", None));
        assert!(!i.allows(
            "pm.qualys.io",
            "deploymentjobs",
            None,
            "watch",
            Some("other")
        ));
        assert!(!i.allows("", "secrets", None, "get", Some("qpm-system")));
        assert!(i.allows(
            "coordination.k8s.io",
            "leases",
            None,
            "patch",
            Some("qpm-system")
        ));
        assert!(!i.allows(
            "coordination.k8s.io",
            "leases",
            None,
            "patch",
            Some("patching")
        ));
        // Cluster-wide, only the CRD reader, and only for the DeploymentJob CRD.
        for o in i.objects() {
            if matches!(
                o,
                RbacObject::ClusterRole(_) | RbacObject::ClusterRoleBinding(_)
            ) {
                assert_eq!(o.metadata().name.as_deref(), Some(CRD_READER_NAME));
            }
        }
        let crd = super::super::crd_check::CRD_NAME;
        for verb in ["get", "list", "watch"] {
            assert!(i.allows_named(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                verb,
                None,
                Some(crd)
            ));
            assert!(!i.allows_named(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                verb,
                None,
                Some("other.example.com")
            ));
            assert!(!i.allows(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                verb,
                None
            ));
        }
    }

    #[test]
    fn every_rule_is_granted_by_both_installs_in_its_scope() {
        for rule in RULES {
            let (resource, sub) = match rule.resource.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (rule.resource, None),
            };
            for verb in rule.verbs {
                assert!(allows(rule.group, resource, sub, verb, rule.scope));
                let other = match rule.scope {
                    Scope::Watched => Scope::OperatorNamespace,
                    Scope::OperatorNamespace | Scope::Cluster => Scope::Watched,
                };
                assert!(!allows(rule.group, resource, sub, verb, other));
                let ns = match rule.scope {
                    Scope::Watched => Some("patching"),
                    Scope::OperatorNamespace => Some("qpm-system"),
                    Scope::Cluster => None,
                };
                let name = rule.names.first().copied();
                for i in [install(None), install(Some("patching"))] {
                    assert!(i.allows_named(rule.group, resource, sub, verb, ns, name));
                }
            }
        }
    }

    #[test]
    fn the_table_has_no_wildcards_no_update_no_delete() {
        for rule in RULES {
            assert!(!rule.resource.contains('*') && !rule.group.contains('*'));
            for verb in rule.verbs {
                assert!(
                    ![
                        "*",
                        "update",
                        "delete",
                        "deletecollection",
                        "escalate",
                        "bind",
                        "impersonate"
                    ]
                    .contains(verb),
                    "{} {verb}",
                    rule.resource
                );
            }
        }
    }

    #[test]
    fn user_roles_are_bound_to_nobody_and_grant_the_operator_nothing() {
        let mut objects = user_roles();
        // Even with the editor role present, the operator's ServiceAccount gains nothing.
        objects.extend(cluster_rbac("qpm-system", "qpm-operator"));
        let request = Request {
            group: "pm.qualys.io",
            resource: "deploymentjobs",
            subresource: None,
            verb: "delete",
            namespace: Some("a"),
            name: None,
        };
        assert!(!objects_allow(
            &objects,
            "qpm-system",
            "qpm-operator",
            &request
        ));
        for o in user_roles() {
            assert!(o.metadata().labels.as_ref().is_some_and(|l| {
                !l.keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate"))
            }));
        }
    }

    #[test]
    fn yaml_names_every_rule_and_round_trips() {
        let objects = cluster_rbac("qpm-system", "qpm-operator");
        let text = rbac_yaml(&objects);
        for rule in RULES {
            assert!(text.contains(rule.why), "{}", rule.why);
        }
        let docs = crate::api::validate::yaml_documents(&text).unwrap();
        let expected: Vec<serde_json::Value> = objects.iter().map(RbacObject::to_value).collect();
        assert_eq!(docs, expected);
    }
}
