//! The resource types the fake serves: built-ins registered at start, CRDs registered later,
//! and the discovery documents clients may ask for.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// One served resource (a group + plural), with what the server needs to know to behave
/// like the real one for it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// API group; `""` for the core group.
    pub group: String,
    /// Served versions; objects are stored once and shown under whichever version is asked
    /// for (no conversion).
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    /// Writes to the main resource ignore `.status`; writes to `/status` change only `.status`.
    pub status_subresource: bool,
    /// `metadata.generation` is maintained (custom resources); built-ins here have none.
    pub tracks_generation: bool,
    /// PUT without `metadata.resourceVersion` is allowed (true for the built-ins here, false
    /// for custom resources, as on a real server).
    pub unconditional_update: bool,
    pub short_names: Vec<String>,
    /// Field selector paths accepted besides `metadata.name` and `metadata.namespace`.
    pub field_selectors: Vec<String>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            versions: vec![version.to_string()],
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            list_kind: format!("{kind}List"),
            namespaced,
            status_subresource: false,
            tracks_generation: false,
            unconditional_update: true,
            short_names: Vec::new(),
            field_selectors: Vec::new(),
        }
    }

    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The version objects are stored under (the first registered).
    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    /// `plural.group` (or just `plural` for core), as error messages name a resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Reads a `CustomResourceDefinition` (as JSON): group, served versions, names, scope,
    /// status subresource and selectable fields.
    pub fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = crd.get("spec").ok_or("the CRD has no spec")?;
        let text = |v: Option<&Value>, what: &str| -> Result<String, String> {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("the CRD has no {what}"))
        };
        let group = text(spec.get("group"), "spec.group")?;
        let names = spec.get("names").ok_or("the CRD has no spec.names")?;
        let plural = text(names.get("plural"), "spec.names.plural")?;
        let kind = text(names.get("kind"), "spec.names.kind")?;
        let singular = text(names.get("singular"), "spec.names.singular")
            .unwrap_or_else(|_| kind.to_lowercase());
        let list_kind = text(names.get("listKind"), "spec.names.listKind")
            .unwrap_or_else(|_| format!("{kind}List"));
        let short_names = names
            .get("shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let namespaced = match spec.get("scope").and_then(Value::as_str) {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            other => {
                return Err(format!(
                    "the CRD's spec.scope must be Namespaced or Cluster, not {other:?}"
                ));
            }
        };
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("the CRD has no spec.versions")?;
        let mut served = Vec::new();
        let mut status_subresource = false;
        let mut field_selectors = Vec::new();
        // The storage version goes first so objects are stored under it.
        let mut ordered: Vec<&Value> = versions.iter().collect();
        ordered.sort_by_key(|v| !v.get("storage").and_then(Value::as_bool).unwrap_or(false));
        for v in ordered {
            if !v.get("served").and_then(Value::as_bool).unwrap_or(false) {
                continue;
            }
            served.push(text(v.get("name"), "spec.versions[].name")?);
            if v.pointer("/subresources/status").is_some() {
                status_subresource = true;
            }
            for f in v
                .get("selectableFields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(path) = f.get("jsonPath").and_then(Value::as_str) {
                    field_selectors.push(path.trim_start_matches('.').to_string());
                }
            }
        }
        if served.is_empty() {
            return Err("the CRD serves no version".to_string());
        }
        Ok(Self {
            group,
            versions: served,
            plural,
            singular,
            kind,
            list_kind,
            namespaced,
            status_subresource,
            tracks_generation: true,
            unconditional_update: false,
            short_names,
            field_selectors,
        })
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let verbs = json!([
            "create", "delete", "get", "list", "patch", "update", "watch"
        ]);
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// All registered resource types, keyed by (group, plural).
#[derive(Default)]
pub struct Registry {
    types: BTreeMap<(String, String), Arc<ResourceType>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        let mut namespaces = ResourceType::builtin("", "v1", "namespaces", "Namespace", false);
        namespaces.short_names = vec!["ns".into()];
        namespaces.field_selectors = vec!["status.phase".into()];
        r.insert(namespaces);
        let mut configmaps = ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true);
        configmaps.short_names = vec!["cm".into()];
        r.insert(configmaps);
        let mut secrets = ResourceType::builtin("", "v1", "secrets", "Secret", true);
        secrets.field_selectors = vec!["type".into()];
        r.insert(secrets);
        let mut core_events = ResourceType::builtin("", "v1", "events", "Event", true);
        core_events.short_names = vec!["ev".into()];
        core_events.field_selectors = [
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
        .map(String::from)
        .to_vec();
        r.insert(core_events);
        let mut events = ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true);
        events.short_names = vec!["ev".into()];
        events.field_selectors = [
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ]
        .map(String::from)
        .to_vec();
        r.insert(events);
        r.insert(ResourceType::builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
        ));
        let mut crds = ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        );
        crds.short_names = vec!["crd".into(), "crds".into()];
        crds.status_subresource = true;
        crds.tracks_generation = true;
        r.insert(crds);
        r
    }

    pub fn insert(&mut self, rt: ResourceType) -> Arc<ResourceType> {
        let rt = Arc::new(rt);
        self.types
            .insert((rt.group.clone(), rt.plural.clone()), rt.clone());
        rt
    }

    /// Stops serving a type (its CRD is gone).
    pub fn remove(&mut self, group: &str, plural: &str) {
        self.types.remove(&(group.to_string(), plural.to_string()));
    }

    /// The type served at `/apis/{group}/{version}/{plural}`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .filter(|rt| rt.versions.iter().any(|v| v == version))
            .cloned()
    }

    /// The type with this group and plural, whatever versions it serves.
    pub fn find(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn group_version_served(&self, group: &str, version: &str) -> bool {
        self.types
            .values()
            .any(|rt| rt.group == group && rt.versions.iter().any(|v| v == version))
    }

    /// `GET /api`.
    pub fn core_versions(&self, server_address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        })
    }

    /// `GET /apis`.
    pub fn group_list(&self) -> Value {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for rt in self.types.values().filter(|rt| !rt.group.is_empty()) {
            let versions = groups.entry(rt.group.as_str()).or_default();
            for v in &rt.versions {
                if !versions.contains(&v.as_str()) {
                    versions.push(v);
                }
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(name, versions)| {
                let vs: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                    .collect();
                json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`.
    pub fn resource_list(&self, group: &str, version: &str) -> Value {
        let resources: Vec<Value> = self
            .types
            .values()
            .filter(|rt| rt.group == group && rt.versions.iter().any(|v| v == version))
            .flat_map(|rt| rt.discovery_entries())
            .collect();
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    }
}
