//! Which jobs exist, by name: a cache of the summary list, per platform, shared by every
//! reconcile of one connection. Name lookups (NameConflict, the CLI's "identify by name",
//! pending-create recovery) read it; the controller's poller refreshes it; a create adds to it.

use crate::qualys::{Client, Error, JobSummary};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Listing {
    fetched: Option<Instant>,
    by_name: HashMap<String, Vec<JobSummary>>,
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
    pub async fn named(
        &self,
        client: &Client,
        platform: &str,
        name: &str,
        max_age: Duration,
    ) -> Result<Vec<JobSummary>, Error> {
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
    ) -> Option<Vec<JobSummary>> {
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
        let mut by_name: HashMap<String, Vec<JobSummary>> = HashMap::new();
        for job in jobs {
            let name = job.name.get().cloned().unwrap_or_default();
            by_name.entry(name).or_default().push(job);
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
    pub fn remember(&self, platform: &str, summary: JobSummary) {
        let Ok(mut platforms) = self.platforms.lock() else {
            return;
        };
        let Some(listing) = platforms.get_mut(platform) else {
            return;
        };
        let name = summary.name.get().cloned().unwrap_or_default();
        let entry = listing.by_name.entry(name).or_default();
        entry.retain(|s| s.id != summary.id);
        entry.push(summary);
    }

    /// Drop a job that was deleted.
    pub fn forget(&self, id: &str) {
        let Ok(mut platforms) = self.platforms.lock() else {
            return;
        };
        for listing in platforms.values_mut() {
            for jobs in listing.by_name.values_mut() {
                jobs.retain(|s| s.id.get().map(String::as_str) != Some(id));
            }
        }
    }
}
