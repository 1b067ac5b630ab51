//! Job bodies as last read, with the last-change date they had, so a caller that runs often
//! against the same jobs (the CLI's `plan` and `apply`) spends one summary listing instead of a
//! GET per job: a remembered body is served only while the listing shows the job's date
//! unchanged. Off unless [`Client::remember_jobs`] is called; the controller never does (its
//! poller already reads only what moved).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::client::Client;
use super::field::Field;
use super::model::{Audit, JobBody};

/// One remembered job: its body as a GET returned it, and its last-change date then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedJob {
    /// The later of `updatedBy.date` and `createdBy.date`, epoch milliseconds.
    pub changed_ms: i64,
    pub body: JobBody,
}

#[derive(Default)]
pub(super) struct JobCache {
    pub(super) enabled: bool,
    pub(super) remembered: HashMap<String, CachedJob>,
    /// Ids written in this run: their remembered body is no longer the live one.
    pub(super) stale: HashSet<String>,
    /// Remembered ids asked for before the listing was made.
    pub(super) asked: u32,
}

/// The listing of both platforms costs at least two calls, so it is made only once this many
/// remembered jobs have been read with a GET: a run that reads one or two jobs never pays for
/// it, and a run that reads a thousand pays two GETs and the listing.
const LISTING_AFTER: u32 = 2;

/// The later of an audit pair's dates: a job never updated carries only its creation date.
pub(super) fn changed_ms(updated: &Field<Audit>, created: &Field<Audit>) -> Option<i64> {
    let date = |a: &Field<Audit>| a.get().and_then(|a| a.date.get()).and_then(|d| d.as_i64());
    date(updated).max(date(created))
}

impl Client {
    /// Serve `get_job` from these remembered bodies where the summary listing shows a job
    /// unchanged since (one listing of both platforms per client, on the first such GET), and
    /// remember every body a GET returns from now on.
    pub fn remember_jobs(&self, jobs: HashMap<String, CachedJob>) {
        if let Ok(mut cache) = self.inner.job_cache.lock() {
            cache.enabled = true;
            cache.remembered = jobs;
        }
    }

    /// The bodies remembered now (to keep for the next run); empty unless
    /// [`remember_jobs`](Self::remember_jobs) was called. Jobs written in this run are left
    /// out: their next read must be a GET.
    pub fn remembered_jobs(&self) -> HashMap<String, CachedJob> {
        let Ok(cache) = self.inner.job_cache.lock() else {
            return HashMap::new();
        };
        cache
            .remembered
            .iter()
            .filter(|(id, _)| !cache.stale.contains(*id))
            .map(|(id, job)| (id.clone(), job.clone()))
            .collect()
    }

    /// The remembered body of `id`, when the listing shows its date unchanged.
    pub(super) async fn remembered_job(&self, id: &str) -> Option<JobBody> {
        let wanted = {
            let mut cache = self.inner.job_cache.lock().ok()?;
            if !cache.enabled || cache.stale.contains(id) {
                return None;
            }
            let wanted = cache.remembered.get(id)?.changed_ms;
            if self.inner.listing.get().is_none() && cache.asked < LISTING_AFTER {
                cache.asked += 1;
                return None;
            }
            wanted
        };
        let listing = self
            .inner
            .listing
            .get_or_init(|| async {
                match self.list_all_summaries().await {
                    Ok(all) => all
                        .iter()
                        .filter_map(|s| {
                            let id = s.id.get()?.clone();
                            Some((id, changed_ms(&s.updated, &s.created)?))
                        })
                        .collect(),
                    Err(e) => {
                        debug!(error = %e, "cannot list summaries; every job is read with a GET");
                        HashMap::new()
                    }
                }
            })
            .await;
        if listing.get(id) != Some(&wanted) {
            return None;
        }
        let cache = self.inner.job_cache.lock().ok()?;
        cache.remembered.get(id).map(|j| j.body.clone())
    }

    /// A GET returned `body`: remember it (when remembering).
    pub(super) fn remember(&self, id: &str, body: &JobBody) {
        let Ok(mut cache) = self.inner.job_cache.lock() else {
            return;
        };
        if !cache.enabled {
            return;
        }
        match changed_ms(&body.updated_by, &body.created_by) {
            Some(changed_ms) => {
                cache.stale.remove(id);
                cache.remembered.insert(
                    id.to_owned(),
                    CachedJob {
                        changed_ms,
                        body: body.clone(),
                    },
                );
            }
            None => {
                cache.remembered.remove(id);
            }
        }
    }

    /// `id` was written (or is gone): never serve its remembered body again in this run.
    pub(super) fn forget(&self, id: &str, gone: bool) {
        if let Ok(mut cache) = self.inner.job_cache.lock() {
            if gone {
                cache.remembered.remove(id);
            }
            cache.stale.insert(id.to_owned());
        }
    }
}
