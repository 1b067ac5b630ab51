//! The API operations, named the way the simulator routes and counts them.

use std::fmt;

use reqwest::Method;

/// The API operations, named by the simulator's route templates (also its counter keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Auth,
    Create,
    Get,
    Update,
    ListSummaries,
    Delete,
    SetStatus,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Auth,
        Endpoint::Create,
        Endpoint::Get,
        Endpoint::Update,
        Endpoint::ListSummaries,
        Endpoint::Delete,
        Endpoint::SetStatus,
    ];

    /// `METHOD /route/{template}`, exactly as the simulator counts it (`const`, so tests can
    /// name routes in constants).
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::Auth => "POST /auth",
            Endpoint::Create => "POST /pm/v1/deploymentjob",
            Endpoint::Get => "GET /pm/v1/deploymentjob/{id}",
            Endpoint::Update => "PATCH /pm/v1/deploymentjob/update/{id}",
            Endpoint::ListSummaries => "GET /pm/v1/deploymentjobs/summary",
            Endpoint::Delete => "DELETE /pm/v1/deploymentjobs",
            Endpoint::SetStatus => "POST /pm/v1/deploymentjobs/update/status/{action}",
        }
    }

    /// Whether the call changes something in Qualys (the token request does not).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Endpoint::Create | Endpoint::Update | Endpoint::Delete | Endpoint::SetStatus
        )
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Auth => "auth",
            Endpoint::Create => "create",
            Endpoint::Get => "get",
            Endpoint::Update => "update",
            Endpoint::ListSummaries => "list_summaries",
            Endpoint::Delete => "delete",
            Endpoint::SetStatus => "set_status",
        }
    }

    pub(super) fn method(self) -> Method {
        match self {
            Endpoint::Auth | Endpoint::Create | Endpoint::SetStatus => Method::POST,
            Endpoint::Get | Endpoint::ListSummaries => Method::GET,
            Endpoint::Update => Method::PATCH,
            Endpoint::Delete => Method::DELETE,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Each endpoint's route as the simulator counts it, as constants for the tests and harnesses
/// that read its counters (one declaration instead of one per test file).
pub mod routes {
    use super::Endpoint;

    pub const AUTH: &str = Endpoint::Auth.as_str();
    pub const CREATE: &str = Endpoint::Create.as_str();
    pub const GET: &str = Endpoint::Get.as_str();
    pub const UPDATE: &str = Endpoint::Update.as_str();
    pub const LIST: &str = Endpoint::ListSummaries.as_str();
    pub const DELETE: &str = Endpoint::Delete.as_str();
    pub const STATUS: &str = Endpoint::SetStatus.as_str();
}
