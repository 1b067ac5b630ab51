//! The request log tests read, and the fault hooks they arm.

use std::fmt;
use std::sync::Arc;

/// The Kubernetes verb of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    /// `/api`, `/apis`, `/apis/{g}/{v}`, `/version`.
    Discovery,
    /// A path the server does not serve.
    Unknown,
}

impl Verb {
    /// Create, update, patch or delete.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection
        )
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Discovery => "discovery",
            Verb::Unknown => "unknown",
        };
        f.write_str(s)
    }
}

/// The `Content-Type` of a PATCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json` (handled as a merge patch).
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        match ct {
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            _ => None,
        }
    }
}

/// One request as the server understood it, with the status it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub verb: Verb,
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    /// API group (`""` for core).
    pub group: String,
    pub version: String,
    /// Plural resource name (`deploymentjobs`, `leases`, …); empty for discovery.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `fieldManager` from the query, if given.
    pub field_manager: Option<String>,
    pub patch_type: Option<PatchType>,
    pub force: bool,
    pub dry_run: bool,
    pub user_agent: Option<String>,
    /// The HTTP status answered; `0` while fault predicates look at the request.
    pub status: u16,
}

impl RequestRecord {
    /// Create, update, patch or delete.
    pub fn is_write(&self) -> bool {
        self.verb.is_write()
    }

    /// A server-side apply.
    pub fn is_apply(&self) -> bool {
        self.patch_type == Some(PatchType::Apply)
    }
}

impl fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.status, self.verb, self.path)?;
        if let Some(pt) = self.patch_type {
            write!(f, " ({pt:?})")?;
        }
        if let Some(m) = &self.field_manager {
            write!(f, " fieldManager={m}")?;
        }
        Ok(())
    }
}

pub type RequestPredicate = Arc<dyn Fn(&RequestRecord) -> bool + Send + Sync>;

/// An armed fault: the next `remaining` requests matching `matches` fail with `status`.
pub struct Fault {
    pub remaining: usize,
    pub status: u16,
    pub message: Option<String>,
    pub matches: RequestPredicate,
}
