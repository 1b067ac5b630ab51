//! The engine's one seam to Qualys: what it reads ([`GatewayRead`]: get a job, list summaries)
//! and what it writes ([`GatewayWrite`]: create, update, set the state, delete). The HTTP
//! client implements both; `plan` holds only the read half, so it cannot write by type, not by
//! convention. [`MemoryGateway`] keeps jobs in memory for engine tests that need no HTTP.
//!
//! The futures are boxed: the controller needs them `Send`, and a trait object (`dyn
//! GatewayRead`) needs them to have one type.

use super::directory::Brief;
use crate::qualys::{
    self, Audit, AuditUser, Client, Error as QError, Field, ItemOutcome, JobBody, JobSummary,
    LooseInt, WireState,
};
use futures::future::{BoxFuture, FutureExt};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// What the engine reads from Qualys.
pub trait GatewayRead: Sync {
    /// The user the connection acts as (a recovered create must have been made by it).
    fn username(&self) -> &str;
    fn get_job<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<JobBody, QError>>;
    fn list_summaries<'a>(
        &'a self,
        platform: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JobSummary>, QError>>;
    /// The listing as the directory keeps it.
    fn list_briefs<'a>(&'a self, platform: &'a str) -> BoxFuture<'a, Result<Vec<Brief>, QError>> {
        self.list_summaries(platform)
            .map(|all| Ok(all?.into_iter().filter_map(Brief::from_summary).collect()))
            .boxed()
    }
}

/// What the engine writes to Qualys.
pub trait GatewayWrite: GatewayRead {
    fn create_job<'a>(&'a self, body: &'a JobBody) -> BoxFuture<'a, Result<JobBody, QError>>;
    fn update_job<'a>(
        &'a self,
        id: &'a str,
        body: &'a JobBody,
    ) -> BoxFuture<'a, Result<JobBody, QError>>;
    fn set_status<'a>(
        &'a self,
        ids: &'a [String],
        state: WireState,
    ) -> BoxFuture<'a, Result<Vec<ItemOutcome>, QError>>;
    fn delete_jobs<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ItemOutcome>, QError>>;
}

impl GatewayRead for Client {
    fn username(&self) -> &str {
        self.identity().username()
    }
    fn get_job<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<JobBody, QError>> {
        Client::get_job(self, id).boxed()
    }
    fn list_summaries<'a>(
        &'a self,
        platform: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JobSummary>, QError>> {
        Client::list_summaries(self, platform).boxed()
    }
    // Each page's summaries are shed as the page is read: 10,000 whole summaries would
    // otherwise be held at once, twice the memory of everything else per job.
    fn list_briefs<'a>(&'a self, platform: &'a str) -> BoxFuture<'a, Result<Vec<Brief>, QError>> {
        Client::list_summaries_with(self, platform, Brief::from_summary).boxed()
    }
}

impl GatewayWrite for Client {
    fn create_job<'a>(&'a self, body: &'a JobBody) -> BoxFuture<'a, Result<JobBody, QError>> {
        Client::create_job(self, body).boxed()
    }
    fn update_job<'a>(
        &'a self,
        id: &'a str,
        body: &'a JobBody,
    ) -> BoxFuture<'a, Result<JobBody, QError>> {
        Client::update_job(self, id, body).boxed()
    }
    fn set_status<'a>(
        &'a self,
        ids: &'a [String],
        state: WireState,
    ) -> BoxFuture<'a, Result<Vec<ItemOutcome>, QError>> {
        Client::set_status(self, ids, state).boxed()
    }
    fn delete_jobs<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ItemOutcome>, QError>> {
        Client::delete_jobs_confirmed(self, ids).boxed()
    }
}

/// Jobs kept in memory, stored as sent (no server-side transformation: use it for engine
/// logic, and the simulator for the wire). Counts the calls made, by name.
#[derive(Debug, Default)]
pub struct MemoryGateway {
    jobs: Mutex<BTreeMap<String, JobBody>>,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    next_id: Mutex<u64>,
}

const MEMORY_USER: &str = "memory";

impl MemoryGateway {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `call` (`get`, `list`, `create`, `update`, `status`, `delete`) was made.
    pub fn calls(&self, call: &str) -> u64 {
        self.calls
            .lock()
            .map(|c| c.get(call).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Every call made.
    pub fn total_calls(&self) -> u64 {
        self.calls.lock().map(|c| c.values().sum()).unwrap_or(0)
    }

    pub fn job(&self, id: &str) -> Option<JobBody> {
        self.jobs.lock().ok()?.get(id).cloned()
    }

    fn count(&self, call: &'static str) {
        if let Ok(mut c) = self.calls.lock() {
            *c.entry(call).or_default() += 1;
        }
    }

    fn with_jobs<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, JobBody>) -> Result<T, QError>,
    ) -> Result<T, QError> {
        let mut jobs = self.jobs.lock().map_err(|_| QError::Config {
            message: "memory gateway poisoned".into(),
        })?;
        f(&mut jobs)
    }

    fn not_found(id: &str) -> QError {
        QError::NotFound {
            what: format!("deployment job {id}"),
        }
    }

    fn bulk(
        &self,
        ids: &[String],
        mut each: impl FnMut(&mut BTreeMap<String, JobBody>, &str) -> bool,
    ) -> Result<Vec<ItemOutcome>, QError> {
        self.with_jobs(|jobs| {
            Ok(ids
                .iter()
                .map(|id| ItemOutcome {
                    id: id.clone(),
                    name: None,
                    result: if each(jobs, id) {
                        Ok(())
                    } else {
                        Err(QError::ItemFailed {
                            id: id.clone(),
                            message: "no such job".into(),
                        })
                    },
                })
                .collect())
        })
    }
}

fn audit_now() -> Field<Audit> {
    Field::Value(Audit {
        user: Field::Value(AuditUser {
            name: Field::Value(MEMORY_USER.to_string()),
            ..Default::default()
        }),
        date: Field::Value(LooseInt::from(jiff::Timestamp::now().as_millisecond())),
        ..Default::default()
    })
}

impl GatewayRead for MemoryGateway {
    fn username(&self) -> &str {
        MEMORY_USER
    }
    fn get_job<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<JobBody, QError>> {
        self.count("get");
        let found = self.with_jobs(|jobs| jobs.get(id).cloned().ok_or_else(|| Self::not_found(id)));
        futures::future::ready(found).boxed()
    }
    fn list_summaries<'a>(
        &'a self,
        platform: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JobSummary>, QError>> {
        self.count("list");
        let listed = self.with_jobs(|jobs| {
            Ok(jobs
                .values()
                .filter(|j| j.platform.get().map(String::as_str) == Some(platform))
                .map(|j| JobSummary {
                    id: j.id.clone(),
                    name: j.name.clone(),
                    platform: j.platform.clone(),
                    created: j.created_by.clone(),
                    updated: j.updated_by.clone(),
                    ..Default::default()
                })
                .collect())
        });
        futures::future::ready(listed).boxed()
    }
}

impl GatewayWrite for MemoryGateway {
    fn create_job<'a>(&'a self, body: &'a JobBody) -> BoxFuture<'a, Result<JobBody, QError>> {
        self.count("create");
        let id = self
            .next_id
            .lock()
            .map(|mut n| {
                *n += 1;
                format!("memory-{n}")
            })
            .unwrap_or_default();
        let created = self.with_jobs(|jobs| {
            let mut job = body.clone();
            job.id = Field::Value(id.clone());
            job.status = Field::Value(qualys::values::DISABLED.to_string());
            job.created_by = audit_now();
            jobs.insert(id.clone(), job.clone());
            Ok(job)
        });
        futures::future::ready(created).boxed()
    }
    fn update_job<'a>(
        &'a self,
        id: &'a str,
        body: &'a JobBody,
    ) -> BoxFuture<'a, Result<JobBody, QError>> {
        self.count("update");
        let updated = self.with_jobs(|jobs| {
            let stored = jobs.get_mut(id).ok_or_else(|| Self::not_found(id))?;
            let status = stored.status.clone();
            let created = stored.created_by.clone();
            *stored = body.clone();
            // The state changes only through the status call; the id and creation stay.
            stored.id = Field::Value(id.to_string());
            stored.status = status;
            stored.created_by = created;
            stored.updated_by = audit_now();
            Ok(stored.clone())
        });
        futures::future::ready(updated).boxed()
    }
    fn set_status<'a>(
        &'a self,
        ids: &'a [String],
        state: WireState,
    ) -> BoxFuture<'a, Result<Vec<ItemOutcome>, QError>> {
        self.count("status");
        let result = self.bulk(ids, |jobs, id| match jobs.get_mut(id) {
            Some(job) => {
                job.status = Field::Value(state.as_str().to_string());
                true
            }
            None => false,
        });
        futures::future::ready(result).boxed()
    }
    fn delete_jobs<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ItemOutcome>, QError>> {
        self.count("delete");
        let result = self.bulk(ids, |jobs, id| jobs.remove(id).is_some());
        futures::future::ready(result).boxed()
    }
}
