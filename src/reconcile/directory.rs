//! Which jobs exist, by name: a cache of the summary list, per platform, shared by every
//! reconcile of one connection. Name lookups (NameConflict, the CLI's "identify by name",
//! pending-create recovery) read it; the controller's poller refreshes it; a create adds to it.

use super::gateway::GatewayRead;
use crate::qualys::{Audit, Error, Field, JobSummary};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a name lookup needs of a listed job — kept small, since a listing of 10,000 jobs is
/// held for the whole run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    /// The user who created it.
    pub created_by: Option<String>,
    /// When it was created (epoch ms).
    pub created_ms: Option<i64>,
}

impl Listed {
    pub fn from_summary(s: &JobSummary) -> Option<Listed> {
        Some(Listed {
            id: s.id.get()?.clone(),
            created_by: audit_user(&s.created),
            created_ms: audit_ms(&s.created),
        })
    }
}

fn audit_user(a: &Field<Audit>) -> Option<String> {
    a.get()?.user.get()?.name.get().cloned()
}

fn audit_ms(a: &Field<Audit>) -> Option<i64> {
    a.get()?.date.get()?.as_i64()
}

#[derive(Default)]
struct Listing {
    fetched: Option<Instant>,
    by_name: HashMap<String, Vec<Listed>>,
}

/// Job summaries by platform and name. One per connection.
#[derive(Default)]
pub struct Directory {
    platforms: Mutex<HashMap<String, Listing>>,
    // Single-flight: one list call per platform at a time, however many reconciles ask.
    fetching: tokio::sync::Mutex<()>,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// The jobs named `name` on `platform`, from a listing at most `max_age` old
    /// (`Duration::ZERO` forces a fresh one).
    pub async fn named<C: GatewayRead + ?Sized>(
        &self,
        client: &C,
        platform: &str,
        name: &str,
        max_age: Duration,
    ) -> Result<Vec<Listed>, Error> {
        let requested = Instant::now();
        if let Some(found) = self.lookup(platform, name, requested, max_age) {
            return Ok(found);
        }
        let _guard = self.fetching.lock().await;
        // Someone else may have listed while this call waited.
        if let Some(found) = self.lookup(platform, name, requested, max_age) {
            return Ok(found);
        }
        let jobs = client.list_summaries(platform).await?;
        self.replace_at(platform, jobs, Instant::now());
        Ok(self
            .lookup(platform, name, requested, Duration::MAX)
            .unwrap_or_default())
    }

    fn lookup(
        &self,
        platform: &str,
        name: &str,
        requested: Instant,
        max_age: Duration,
    ) -> Option<Vec<Listed>> {
        let platforms = self.platforms.lock().ok()?;
        let listing = platforms.get(platform)?;
        let fetched = listing.fetched?;
        // A listing that started after the request is fresh enough even for max_age zero.
        let fresh = fetched >= requested || fetched.elapsed() <= max_age;
        fresh.then(|| listing.by_name.get(name).cloned().unwrap_or_default())
    }

    /// Replace a platform's listing (the poller's latest pass).
    pub fn replace(&self, platform: &str, jobs: Vec<JobSummary>) {
        self.replace_at(platform, jobs, Instant::now());
    }

    fn replace_at(&self, platform: &str, jobs: Vec<JobSummary>, at: Instant) {
        let mut by_name: HashMap<String, Vec<Listed>> = HashMap::with_capacity(jobs.len());
        for job in &jobs {
            let (Some(name), Some(listed)) = (job.name.get(), Listed::from_summary(job)) else {
                continue;
            };
            // Almost every name is unique: an exact-size Vec, not the default growth of four.
            let entry = by_name
                .entry(name.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            entry.push(listed);
        }
        if let Ok(mut platforms) = self.platforms.lock() {
            platforms.insert(
                platform.to_string(),
                Listing {
                    fetched: Some(at),
                    by_name,
                },
            );
        }
    }

    /// Add a job this process just created, so a stale listing still knows it.
    pub fn remember(&self, platform: &str, name: &str, listed: Listed) {
        let Ok(mut platforms) = self.platforms.lock() else {
            return;
        };
        let Some(listing) = platforms.get_mut(platform) else {
            return;
        };
        let entry = listing.by_name.entry(name.to_string()).or_default();
        entry.retain(|s| s.id != listed.id);
        entry.push(listed);
    }

    /// Drop a job that was deleted.
    pub fn forget(&self, id: &str) {
        let Ok(mut platforms) = self.platforms.lock() else {
            return;
        };
        for listing in platforms.values_mut() {
            for jobs in listing.by_name.values_mut() {
                jobs.retain(|s| s.id != id);
            }
        }
    }
}
