//! Which jobs exist, by name: a cache of the summary list, per platform, shared by every
//! reconcile of one connection. Name lookups (NameConflict, the CLI's "identify by name",
//! pending-create recovery) read it; the controller's poller refreshes it; a create adds to it.

use super::gateway::GatewayRead;
use crate::qualys::{Audit, Error, Field, JobSummary};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
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

/// What one listed job leaves once its page is decoded: its name, what a name lookup needs,
/// and its last-change date (the poller's cursor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Brief {
    /// `None` for a summary without a name: the cursor still follows it, name lookups can't.
    pub name: Option<String>,
    pub listed: Listed,
    /// The later of its creation and last-update dates (epoch ms).
    pub changed_ms: Option<i64>,
}

impl Brief {
    pub fn from_summary(s: JobSummary) -> Option<Brief> {
        let listed = Listed::from_summary(&s)?;
        let changed_ms = audit_ms(&s.updated).max(listed.created_ms);
        let name = match s.name {
            Field::Value(name) => Some(name),
            _ => None,
        };
        Some(Brief {
            name,
            listed,
            changed_ms,
        })
    }
}

/// The jobs of one name: almost always exactly one, kept without a vector of its own.
#[derive(Clone, Debug)]
enum Named {
    One(Listed),
    Many(Vec<Listed>),
}

impl Named {
    fn to_vec(&self) -> Vec<Listed> {
        match self {
            Named::One(l) => vec![l.clone()],
            Named::Many(v) => v.clone(),
        }
    }

    /// Add `listed`, replacing an entry with the same id.
    fn put(&mut self, listed: Listed) {
        match self {
            Named::One(l) if l.id == listed.id => *l = listed,
            Named::One(l) => *self = Named::Many(vec![l.clone(), listed]),
            Named::Many(v) => {
                v.retain(|s| s.id != listed.id);
                v.push(listed);
            }
        }
    }

    /// Drop the entry with this id; false when none is left.
    fn drop_id(&mut self, id: &str) -> bool {
        match self {
            Named::One(l) => l.id != id,
            Named::Many(v) => {
                v.retain(|s| s.id != id);
                !v.is_empty()
            }
        }
    }
}

#[derive(Default)]
struct Listing {
    fetched: Option<Instant>,
    by_name: HashMap<Box<str>, Named>,
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
        let jobs = client.list_briefs(platform).await?;
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
        fresh.then(|| {
            listing
                .by_name
                .get(name)
                .map(Named::to_vec)
                .unwrap_or_default()
        })
    }

    /// List `platform` and keep it as its listing; returns each job's id and last-change date
    /// (the poller's pass, which also keeps the name checks fresh).
    pub async fn refresh<C: GatewayRead + ?Sized>(
        &self,
        client: &C,
        platform: &str,
    ) -> Result<Vec<(String, Option<i64>)>, Error> {
        let jobs = client.list_briefs(platform).await?;
        let dates = jobs
            .iter()
            .map(|b| (b.listed.id.clone(), b.changed_ms))
            .collect();
        self.replace_at(platform, jobs, Instant::now());
        Ok(dates)
    }

    fn replace_at(&self, platform: &str, jobs: Vec<Brief>, at: Instant) {
        let mut by_name: HashMap<Box<str>, Named> = HashMap::with_capacity(jobs.len());
        for Brief { name, listed, .. } in jobs {
            let Some(name) = name else { continue };
            match by_name.entry(name.into_boxed_str()) {
                Entry::Occupied(mut e) => e.get_mut().put(listed),
                Entry::Vacant(e) => {
                    e.insert(Named::One(listed));
                }
            }
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
        match listing.by_name.entry(name.into()) {
            Entry::Occupied(mut e) => e.get_mut().put(listed),
            Entry::Vacant(e) => {
                e.insert(Named::One(listed));
            }
        }
    }

    /// Drop a job that was deleted.
    pub fn forget(&self, id: &str) {
        let Ok(mut platforms) = self.platforms.lock() else {
            return;
        };
        for listing in platforms.values_mut() {
            listing.by_name.retain(|_, jobs| jobs.drop_id(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brief(name: Option<&str>, id: &str) -> Brief {
        Brief {
            name: name.map(String::from),
            listed: Listed {
                id: id.to_string(),
                created_by: Some("u".into()),
                created_ms: Some(1),
            },
            changed_ms: Some(2),
        }
    }

    fn ids(d: &Directory, name: &str) -> Vec<String> {
        d.lookup("Linux", name, Instant::now(), Duration::MAX)
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.id)
            .collect()
    }

    #[test]
    fn one_name_many_jobs_remember_and_forget() {
        let d = Directory::new();
        d.replace_at(
            "Linux",
            vec![
                brief(Some("a"), "1"),
                brief(Some("b"), "2"),
                brief(Some("a"), "3"),
                brief(None, "4"),
            ],
            Instant::now(),
        );
        assert_eq!(ids(&d, "a"), ["1", "3"]);
        assert_eq!(ids(&d, "b"), ["2"]);
        assert!(ids(&d, "c").is_empty());
        // A remembered create with an id already listed replaces it, a new one is added.
        d.remember("Linux", "b", brief(Some("b"), "2").listed);
        assert_eq!(ids(&d, "b"), ["2"]);
        d.remember("Linux", "b", brief(Some("b"), "5").listed);
        assert_eq!(ids(&d, "b"), ["2", "5"]);
        d.remember("Linux", "c", brief(Some("c"), "6").listed);
        assert_eq!(ids(&d, "c"), ["6"]);
        d.forget("1");
        d.forget("6");
        assert_eq!(ids(&d, "a"), ["3"]);
        assert!(ids(&d, "c").is_empty());
        // Another platform's listing is its own.
        assert!(
            d.lookup("Windows", "a", Instant::now(), Duration::MAX)
                .is_none()
        );
    }

    #[test]
    fn a_brief_keeps_the_later_date_and_skips_summaries_without_an_id() {
        let summary: JobSummary = serde_json::from_value(serde_json::json!({
            "id": "j1", "name": "n",
            "created": {"user": {"name": "alice"}, "date": 10},
            "updated": {"date": 20}
        }))
        .unwrap();
        let b = Brief::from_summary(summary).unwrap();
        assert_eq!(b.name.as_deref(), Some("n"));
        assert_eq!(b.listed.id, "j1");
        assert_eq!(b.listed.created_by.as_deref(), Some("alice"));
        assert_eq!((b.listed.created_ms, b.changed_ms), (Some(10), Some(20)));
        let no_id: JobSummary = serde_json::from_value(serde_json::json!({"name": "n"})).unwrap();
        assert!(Brief::from_summary(no_id).is_none());
    }
}
