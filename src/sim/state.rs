//! The simulator's shared state: one `Arc<SimState>` handed to every handler.
//!
//! Locks are held for short, synchronous sections only (never across an `.await`): the job
//! store behind an `RwLock` (reads run in parallel; a write runs the job transformation, which
//! is bounded CPU work), and small mutexes for counters, faults, the rate limiter and the RNG.
//! Stored documents are `Arc<JobBody>`: a read clones the `Arc` and serialises after the lock
//! is released.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use rand::rngs::StdRng;
use rand::{Rng as _, RngExt as _, SeedableRng as _};
use serde_json::Value;

use super::auth::{TokenError, Tokens, bearer};
use super::error::ApiError;
use super::fault::{Fault, Faults, Verdict};
use super::handle::{StatusChanges, WriteRecord};
use super::job::{self, Caller, RequestDoc};
use super::render::{self, Rendered};
use super::{DeleteMode, DeleteUnknown, ListOrder, Scope, SimConfig, SimUser};
use crate::qualys::{Audit, BulkItemResult, Field, JobBody, ScriptKind, script_path, values};

/// How many writes [`SimState::writes`] keeps.
const WRITE_LOG_CAP: usize = 100_000;

/// Counters keyed by `"METHOD /route/template"`, then by status.
pub(crate) type CounterMap = BTreeMap<String, BTreeMap<u16, u64>>;

/// Everything one simulator instance knows.
pub(crate) struct SimState {
    pub config: SimConfig,
    pub tokens: Tokens,
    store: RwLock<Store>,
    counters: Mutex<CounterMap>,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    limiter: Mutex<VecDeque<Instant>>,
    /// Per job id: how often `set_status` changed it to Enabled / to Disabled.
    status_changes: Mutex<HashMap<String, StatusChanges>>,
    /// The latest API writes with their caller's User-Agent (oldest dropped past the cap).
    writes: Mutex<VecDeque<WriteRecord>>,
    /// Bumped on every change of jobs or scripts; the state-file saver compares it.
    revision: AtomicU64,
    console: Caller,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the simulator: the data behind these locks stays
    // consistent after every statement.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Epoch milliseconds now.
pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl SimState {
    pub fn new(config: SimConfig) -> anyhow::Result<Self> {
        if !(0.0..=1.0).contains(&config.error_rate) {
            anyhow::bail!("error_rate must be between 0.0 and 1.0");
        }
        if config.users.is_empty() {
            anyhow::bail!("the simulator needs at least one user");
        }
        let console = SimUser::new("console", "");
        Ok(SimState {
            tokens: Tokens::new(config.token_ttl)?,
            store: RwLock::new(Store::default()),
            counters: Mutex::new(CounterMap::new()),
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            limiter: Mutex::new(VecDeque::new()),
            status_changes: Mutex::new(HashMap::new()),
            writes: Mutex::new(VecDeque::new()),
            revision: AtomicU64::new(0),
            console: Caller {
                id: console.id,
                name: console.name,
            },
            config,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.revision.fetch_add(1, Ordering::SeqCst);
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// A fresh UUID from the seeded generator.
    fn new_uuid(&self) -> String {
        let mut bytes = [0u8; 16];
        lock(&self.rng).fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    /// A fresh id that no stored job or action uses (ids of a loaded state file could collide
    /// with a replay of the same seed).
    fn unused_id(&self, store: &Store) -> String {
        loop {
            let id = self.new_uuid();
            if !store.jobs.contains_key(&id) && !store.action_ids.contains(&id) {
                return id;
            }
        }
    }

    // ---- authentication -------------------------------------------------------------------

    /// The user with these credentials.
    pub fn login(&self, username: &str, password: &str) -> Option<&SimUser> {
        self.config
            .users
            .iter()
            .find(|u| u.name == username && u.password == password)
    }

    pub fn issue_token(&self, user: &SimUser) -> String {
        let jti = self.new_uuid();
        self.tokens
            .issue(&user.name, jiff::Timestamp::now().as_second(), jti)
    }

    /// Who is calling, from the `Authorization` header: 401 without a valid token, 403 without
    /// `PM.API.ACCESS`.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let value = headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized(TokenError::Missing.message()))?;
        let token = value
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or_else(|| ApiError::unauthorized(TokenError::Malformed.message()))?;
        let claims = self
            .tokens
            .verify(token, jiff::Timestamp::now().as_second())
            .map_err(|e| ApiError::unauthorized(e.message()))?;
        let user = self
            .config
            .users
            .iter()
            .find(|u| u.name == claims.sub)
            .ok_or_else(|| ApiError::unauthorized("the token's user does not exist"))?;
        if !user.pm_api_access {
            return Err(ApiError::forbidden(format!(
                "user {} does not have the PM.API.ACCESS permission required for the Patch Management API",
                user.name
            )));
        }
        Ok(Caller {
            id: user.id.clone(),
            name: user.name.clone(),
        })
    }

    pub fn expire_tokens(&self) {
        self.tokens.expire_all();
    }

    // ---- gateway behaviour ----------------------------------------------------------------

    pub fn take_faults(&self, route: &str) -> Verdict {
        lock(&self.faults).take(route)
    }

    pub fn set_fault(&self, fault: Fault) {
        lock(&self.faults).push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.faults).list()
    }

    /// A random 5xx, at the configured error rate.
    pub fn roll_error(&self) -> Option<u16> {
        if self.config.error_rate <= 0.0 {
            return None;
        }
        let mut rng = lock(&self.rng);
        rng.random_bool(self.config.error_rate)
            .then(|| [500, 502, 503][rng.random_range(0..3usize)])
    }

    /// Record one call against the rolling window: `Ok(Some(remaining))` when a limit is
    /// configured, `Err(seconds to wait)` when it is exhausted.
    pub fn admit(&self) -> Result<Option<u32>, u64> {
        let Some(limit) = self.config.rate_limit else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut calls = lock(&self.limiter);
        while calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.window)
        {
            calls.pop_front();
        }
        if calls.len() >= limit.limit as usize {
            let oldest = calls.front().copied().unwrap_or(now);
            let wait = limit.window.saturating_sub(now.duration_since(oldest));
            // Round up: waiting the advertised time must be enough.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        calls.push_back(now);
        Ok(Some(limit.limit - calls.len() as u32))
    }

    pub fn count(&self, route: &str, status: u16) {
        let mut counters = lock(&self.counters);
        let per_status = match counters.get_mut(route) {
            Some(m) => m,
            None => counters.entry(route.to_string()).or_default(),
        };
        *per_status.entry(status).or_insert(0) += 1;
    }

    pub fn counters(&self) -> CounterMap {
        lock(&self.counters).clone()
    }

    pub fn reset_counters(&self) {
        lock(&self.counters).clear();
        lock(&self.status_changes).clear();
        lock(&self.writes).clear();
    }

    pub fn record_write(&self, record: WriteRecord) {
        let mut writes = lock(&self.writes);
        if writes.len() >= WRITE_LOG_CAP {
            writes.pop_front();
        }
        writes.push_back(record);
    }

    pub fn writes(&self) -> Vec<WriteRecord> {
        lock(&self.writes).iter().cloned().collect()
    }

    pub fn status_changes(&self) -> BTreeMap<String, StatusChanges> {
        lock(&self.status_changes)
            .iter()
            .map(|(id, c)| (id.clone(), *c))
            .collect()
    }

    /// Back to an empty simulator: jobs, scripts, tokens, faults, counters, rate window.
    pub fn reset(&self) {
        *self.write() = Store::default();
        self.touch();
        self.expire_tokens();
        self.clear_faults();
        self.reset_counters();
        lock(&self.limiter).clear();
    }

    // ---- jobs -----------------------------------------------------------------------------

    /// `POST /pm/v1/deploymentjob`.
    pub fn create_job(&self, req: RequestDoc, caller: &Caller) -> Result<Rendered, ApiError> {
        let mut store = self.write();
        let prepared = {
            let mut gen_id = || self.unused_id(&store);
            let mut ctx = job::ServerInputs {
                customer_id: &self.config.customer_id,
                caller,
                now_ms: now_ms(),
                new_id: &mut gen_id,
                accept_unset_timeout: self.config.accept_unset_timeout,
            };
            job::prepare_create(&mut ctx, &store_view(&store), req)?
        };
        let stored = store.commit(prepared);
        let out = render::render(&store, &stored);
        drop(store);
        self.touch();
        Ok(out)
    }

    /// A job as the admin surface sees it (every job, deleted ones included).
    pub fn get_job(&self, id: &str) -> Option<Rendered> {
        let store = self.read();
        let job = store.get(id)?;
        Some(render::render(&store, job))
    }

    /// `GET /pm/v1/deploymentjob/{id}`: 404 unknown (or hard-deleted), 403 outside the
    /// caller's scope.
    pub fn get_job_as(&self, id: &str, caller: &Caller) -> Result<Rendered, ApiError> {
        let store = self.read();
        let job = store.get(id).ok_or_else(|| ApiError::job_not_found(id))?;
        self.in_scope(job, caller)?;
        Ok(render::render(&store, job))
    }

    /// 403 when `--scope own` hides this job from the caller.
    fn in_scope(&self, job: &JobBody, caller: &Caller) -> Result<(), ApiError> {
        if self.visible(job, caller) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user {} is not allowed to access deployment job {}: it is outside the user's job scope",
                caller.name,
                job.job_id().unwrap_or_default()
            )))
        }
    }

    fn visible(&self, job: &JobBody, caller: &Caller) -> bool {
        match self.config.scope {
            Scope::All => true,
            Scope::Own => creator_id(job) == Some(caller.id.as_str()),
        }
    }

    /// `PATCH /pm/v1/deploymentjob/update/{id}`.
    pub fn update_job(
        &self,
        id: &str,
        req: RequestDoc,
        caller: &Caller,
    ) -> Result<Rendered, ApiError> {
        let mut store = self.write();
        let stored = store
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::job_not_found(id))?;
        self.in_scope(&stored, caller)?;
        if is_deleted(&stored) {
            return Err(ApiError::job_not_found(id));
        }
        if self.config.strict_enabled_edits && enabled_one_shot(&stored) {
            return Err(ApiError::bad_request(format!(
                "Deployment job {id} is an enabled {} job and cannot be updated: On-demand and Once jobs cannot be edited once enabled",
                stored.schedule_type.get().map_or("", String::as_str)
            )));
        }
        let prepared = {
            let mut gen_id = || self.unused_id(&store);
            let mut ctx = job::ServerInputs {
                customer_id: &self.config.customer_id,
                caller,
                now_ms: now_ms(),
                new_id: &mut gen_id,
                accept_unset_timeout: self.config.accept_unset_timeout,
            };
            job::prepare_update(&mut ctx, &store_view(&store), id, &stored, req)?
        };
        let stored = store.commit(prepared);
        let out = render::render(&store, &stored);
        drop(store);
        self.touch();
        Ok(out)
    }

    /// `GET /pm/v1/deploymentjobs/summary`: how many jobs match, and one page of them with the
    /// number of jobs linking to each.
    pub fn summary_page(
        &self,
        platform: Option<&str>,
        offset: usize,
        size: usize,
        caller: &Caller,
    ) -> (usize, Vec<(Arc<JobBody>, usize)>) {
        let store = self.read();
        let scoped = |job: &JobBody| self.visible(job, caller);
        let filter: Option<&dyn Fn(&JobBody) -> bool> = match self.config.scope {
            Scope::All => None,
            Scope::Own => Some(&scoped),
        };
        store.page(platform, offset, size, self.config.list_order, filter)
    }

    /// `DELETE /pm/v1/deploymentjobs`. A job other jobs still link to is refused, unless those
    /// jobs go in the same call.
    pub fn delete_jobs(
        &self,
        ids: &[String],
        caller: &Caller,
    ) -> Result<Vec<BulkItemResult>, ApiError> {
        let mut store = self.write();
        // Whole-call refusals come first: nothing of such a call takes effect.
        for id in ids {
            match store.get(id) {
                Some(job) => self.in_scope(job, caller)?,
                None if self.config.delete_unknown == DeleteUnknown::NotFound => {
                    return Err(ApiError::job_not_found(id));
                }
                None => {}
            }
        }
        let soft = self.config.delete_mode == DeleteMode::Soft;
        let leaving: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut results = Vec::with_capacity(ids.len());
        // Children first, so a parent deleted together with its children is not refused.
        let mut order: Vec<&String> = ids.iter().collect();
        order.sort_by_key(|id| store.children_of(id) > 0);
        let mut outcome: HashMap<&str, BulkItemResult> = HashMap::new();
        for id in order {
            if outcome.contains_key(id.as_str()) {
                continue;
            }
            let result = match store.get(id).cloned() {
                None => failure(id, None, "Deployment job not found"),
                Some(job) if is_deleted(&job) => failure(id, None, "Deployment job not found"),
                Some(job) => {
                    let blockers: Vec<String> = store
                        .children_ids(id)
                        .into_iter()
                        .filter(|c| !leaving.contains(c.as_str()))
                        .collect();
                    if blockers.is_empty() {
                        if soft {
                            let mut marked = (*job).clone();
                            marked.deleted_by = Field::Value(caller.audit(now_ms()));
                            store.put(marked);
                        } else {
                            store.remove(id);
                        }
                        success(id, job.name.get())
                    } else {
                        failure(
                            id,
                            job.name.get(),
                            &format!(
                                "Deployment job is linked to {} other job(s) ({}); delete or unlink them first",
                                blockers.len(),
                                blockers.join(", ")
                            ),
                        )
                    }
                }
            };
            outcome.insert(id.as_str(), result);
        }
        drop(store);
        let mut seen = HashSet::new();
        for id in ids {
            let result = if seen.insert(id.as_str()) {
                outcome.get(id.as_str()).cloned()
            } else {
                // A repeated id: the first mention did the work.
                Some(failure(id, None, "Deployment job not found"))
            };
            results.extend(result);
        }
        self.touch();
        Ok(results)
    }

    /// `POST /pm/v1/deploymentjobs/update/status/{Enabled|Disabled}`.
    pub fn set_status(
        &self,
        ids: &[String],
        enable: bool,
        caller: &Caller,
    ) -> Result<Vec<BulkItemResult>, ApiError> {
        let target = if enable {
            values::ENABLED
        } else {
            values::DISABLED
        };
        let mut store = self.write();
        for id in ids {
            if let Some(job) = store.get(id) {
                self.in_scope(job, caller)?;
            }
        }
        let mut results = Vec::with_capacity(ids.len());
        let mut changed = false;
        for id in ids {
            let Some(job) = store.get(id).cloned().filter(|j| !is_deleted(j)) else {
                results.push(failure(id, None, "Deployment job not found"));
                continue;
            };
            let current = job.status.get().map(String::as_str);
            let non_recurring = matches!(
                job.schedule_type.get().map(String::as_str),
                Some(values::ON_DEMAND | values::ONCE)
            );
            if !enable && current == Some(values::ENABLED) && non_recurring {
                results.push(failure(
                    id,
                    job.name.get(),
                    "Non-recurring jobs cannot be disabled once enabled by user",
                ));
                continue;
            }
            if current != Some(target) {
                let mut next = (*job).clone();
                next.status = Field::Value(target.to_string());
                next.updated_by = Field::Value(caller.audit(now_ms()));
                store.put(next);
                changed = true;
                let mut counts = lock(&self.status_changes);
                let count = counts.entry(id.clone()).or_default();
                if enable {
                    count.enabled += 1;
                } else {
                    count.disabled += 1;
                }
            }
            results.push(success(id, job.name.get()));
        }
        drop(store);
        if changed {
            self.touch();
        }
        Ok(results)
    }

    // ---- the admin surface ----------------------------------------------------------------

    /// Store a document verbatim (server fields included); it keeps its own key set.
    pub fn put_job(&self, doc: Value, path_id: Option<&str>) -> Result<Rendered, ApiError> {
        let mut body = job::parse_verbatim(doc)?;
        match (body.id.get(), path_id) {
            (Some(id), Some(p)) if id != p => {
                return Err(ApiError::bad_request(format!(
                    "id: the document's id {id} differs from the path's {p}"
                )));
            }
            (Some(id), _) if id.is_empty() => {
                return Err(ApiError::bad_request("id must not be empty"));
            }
            (Some(_), _) => {}
            (None, Some(p)) => body.id = Field::Value(p.to_string()),
            (None, None) => return Err(ApiError::bad_request("id: the document needs an id")),
        }
        let mut store = self.write();
        let stored = store.put(body);
        let out = render::render(&store, &stored);
        drop(store);
        self.touch();
        Ok(out)
    }

    /// Rendered jobs, in creation order.
    pub fn jobs(&self) -> Vec<Rendered> {
        let store = self.read();
        store
            .all
            .iter()
            .filter_map(|(_, id)| store.get(id))
            .map(|job| render::render(&store, job))
            .collect()
    }

    pub fn job_count(&self) -> usize {
        self.read().jobs.len()
    }

    pub fn script(&self, path: &str) -> Option<Vec<u8>> {
        self.read().scripts.get(path).cloned()
    }

    /// An out-of-band edit, as the Qualys console would make it: an RFC 7386 merge patch on the
    /// stored document, stamped `updatedBy` = the console user, now.
    pub fn console_edit(&self, id: &str, patch: Value) -> Result<Rendered, ApiError> {
        let mut store = self.write();
        let stored = store
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::job_not_found(id))?;
        let mut doc = serde_json::to_value(&*stored)
            .map_err(|e| ApiError::internal(format!("cannot serialise job {id}: {e}")))?;
        job::merge_patch(&mut doc, &patch);
        let mut body = job::parse_verbatim(doc)?;
        body.id = Field::Value(id.to_string());
        body.updated_by = Field::Value(self.console.audit(now_ms()));
        let stored = store.put(body);
        let out = render::render(&store, &stored);
        drop(store);
        self.touch();
        Ok(out)
    }

    /// The job vanishes, whatever links to it (the JobMissing scenario).
    pub fn console_delete(&self, id: &str) -> bool {
        let removed = self.write().remove(id).is_some();
        if removed {
            self.touch();
        }
        removed
    }

    /// What the state file holds: jobs in creation order (as stored) and scripts.
    pub fn snapshot(&self) -> (Vec<Arc<JobBody>>, BTreeMap<String, Vec<u8>>) {
        let store = self.read();
        let jobs = store
            .all
            .iter()
            .filter_map(|(_, id)| store.get(id).cloned())
            .collect();
        let scripts = store
            .scripts
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (jobs, scripts)
    }

    /// Load a state file's content (at start, before serving).
    pub fn restore(&self, jobs: Vec<JobBody>, scripts: BTreeMap<String, Vec<u8>>) {
        let mut store = self.write();
        for job in jobs {
            store.put(job);
        }
        store.scripts.extend(scripts);
    }
}

/// The id of the user who created `job`.
fn creator_id(job: &JobBody) -> Option<&str> {
    job.created_by
        .get()
        .and_then(|a| a.user.get())
        .and_then(|u| u.id.get())
        .map(String::as_str)
}

/// Soft-deleted: `deletedBy` carries a date.
pub(crate) fn is_deleted(job: &JobBody) -> bool {
    job.deleted_by.get().is_some_and(|d| !d.date.is_unset())
}

fn enabled_one_shot(job: &JobBody) -> bool {
    job.status.get().map(String::as_str) == Some(values::ENABLED)
        && matches!(
            job.schedule_type.get().map(String::as_str),
            Some(values::ON_DEMAND | values::ONCE)
        )
}

fn success(id: &str, name: Option<&String>) -> BulkItemResult {
    BulkItemResult {
        id: Field::Value(id.to_string()),
        name: name.cloned().into(),
        status: Field::Value("success".into()),
        ..Default::default()
    }
}

fn failure(id: &str, name: Option<&String>, error: &str) -> BulkItemResult {
    BulkItemResult {
        id: Field::Value(id.to_string()),
        name: name.map_or(Field::Absent, |n| Field::Value(n.clone())),
        status: Field::Value("failure".into()),
        error: Field::Value(error.to_string()),
        ..Default::default()
    }
}

impl Caller {
    /// `{"user": {"id", "name"}, "date": ms}`.
    pub fn audit(&self, date_ms: i64) -> Audit {
        Audit {
            user: Field::Value(crate::qualys::AuditUser {
                id: Field::Value(self.id.clone()),
                name: Field::Value(self.name.clone()),
                ..Default::default()
            }),
            date: Field::Value(date_ms.into()),
            ..Default::default()
        }
    }
}

/// What the job transformation may look up: other jobs, and how many jobs link to each.
pub(crate) struct StoreView<'a> {
    store: &'a Store,
}

fn store_view(store: &Store) -> StoreView<'_> {
    StoreView { store }
}

impl StoreView<'_> {
    pub fn job(&self, id: &str) -> Option<&JobBody> {
        self.store.get(id).map(|j| &**j)
    }
}

struct Entry {
    seq: u64,
    body: Arc<JobBody>,
}

/// The jobs and scripts, with the indexes that keep reads O(1) and list pages O(page).
#[derive(Default)]
pub(crate) struct Store {
    jobs: HashMap<String, Entry>,
    /// Every job id in creation order, as (sequence number, id).
    all: Vec<(u64, String)>,
    /// Per platform (Windows, Linux), in creation order.
    by_platform: [Vec<(u64, String)>; 2],
    next_seq: u64,
    /// Parent id → ids of the jobs whose `linkedJobId` names it.
    children: HashMap<String, HashSet<String>>,
    /// Every action id in use (new ids must not collide with them).
    action_ids: HashSet<String>,
    /// Script storage path → decoded content.
    scripts: HashMap<String, Vec<u8>>,
}

fn platform_slot(platform: Option<&str>) -> Option<usize> {
    match platform {
        Some(values::WINDOWS) => Some(0),
        Some(values::LINUX) => Some(1),
        _ => None,
    }
}

/// The parent a job links to, if any (`""` counts as none, as on create).
pub(crate) fn link_of(job: &JobBody) -> Option<&str> {
    job.linked_job_id
        .get()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

fn action_ids(job: &JobBody) -> impl Iterator<Item = &String> {
    job.actions().filter_map(|(_, _, a)| a.action_id.get())
}

impl Store {
    pub fn get(&self, id: &str) -> Option<&Arc<JobBody>> {
        self.jobs.get(id).map(|e| &e.body)
    }

    /// How many jobs link to `id`.
    pub fn children_of(&self, id: &str) -> usize {
        self.children.get(id).map_or(0, HashSet::len)
    }

    fn children_ids(&self, id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .children
            .get(id)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Apply a prepared create or update: the job and its script writes.
    fn commit(&mut self, prepared: job::Prepared) -> Arc<JobBody> {
        for path in prepared.drop_scripts {
            self.scripts.remove(&path);
        }
        self.scripts.extend(prepared.put_scripts);
        self.put(prepared.job)
    }

    /// Insert or replace a document (its `id` must be set), keeping the indexes right.
    fn put(&mut self, mut job: JobBody) -> Arc<JobBody> {
        // `linkedToJob` is computed at read time; `linkedJobs` is always rendered.
        job.linked_to_job = Field::Null;
        if job.linked_jobs.is_absent() {
            job.linked_jobs = Field::Null;
        }
        let id = job.id.get().cloned().unwrap_or_default();
        let body = Arc::new(job);
        let seq = match self.jobs.get_mut(&id) {
            Some(entry) => {
                let old = std::mem::replace(&mut entry.body, body.clone());
                let seq = entry.seq;
                self.unindex(seq, &id, &old);
                seq
            }
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.all.push((seq, id.clone()));
                self.jobs.insert(
                    id.clone(),
                    Entry {
                        seq,
                        body: body.clone(),
                    },
                );
                seq
            }
        };
        self.index(seq, &id, &body);
        body
    }

    /// Remove a job and its scripts.
    fn remove(&mut self, id: &str) -> Option<Arc<JobBody>> {
        let entry = self.jobs.remove(id)?;
        self.unindex(entry.seq, id, &entry.body);
        if let Ok(pos) = self.all.binary_search_by_key(&entry.seq, |(s, _)| *s) {
            self.all.remove(pos);
        }
        let customer = entry.body.customer_id.get().cloned().unwrap_or_default();
        for action in action_ids(&entry.body) {
            for kind in [ScriptKind::Script, ScriptKind::DetectionScript] {
                self.scripts.remove(&script_path(&customer, action, kind));
            }
        }
        Some(entry.body)
    }

    fn index(&mut self, seq: u64, id: &str, job: &JobBody) {
        if let Some(slot) = platform_slot(job.job_platform()) {
            let list = &mut self.by_platform[slot];
            let pos = list.partition_point(|(s, _)| *s < seq);
            list.insert(pos, (seq, id.to_string()));
        }
        // A soft-deleted job no longer holds its parent (the parent may then be deleted).
        if let Some(parent) = link_of(job).filter(|_| !is_deleted(job)) {
            self.children
                .entry(parent.to_string())
                .or_default()
                .insert(id.to_string());
        }
        self.action_ids.extend(action_ids(job).cloned());
    }

    fn unindex(&mut self, seq: u64, id: &str, job: &JobBody) {
        if let Some(slot) = platform_slot(job.job_platform()) {
            let list = &mut self.by_platform[slot];
            if let Ok(pos) = list.binary_search_by_key(&seq, |(s, _)| *s) {
                list.remove(pos);
            }
        }
        if let Some(parent) = link_of(job)
            && let Some(set) = self.children.get_mut(parent)
        {
            set.remove(id);
            if set.is_empty() {
                self.children.remove(parent);
            }
        }
        for action in action_ids(job) {
            self.action_ids.remove(action);
        }
    }

    /// One page of jobs (all platforms when `platform` is `None`) in `order`, keeping only jobs
    /// `filter` accepts, with the number of jobs linking to each, and the total the page was cut
    /// from. Creation order without a filter costs O(page); anything else sorts the list.
    pub fn page(
        &self,
        platform: Option<&str>,
        offset: usize,
        size: usize,
        order: ListOrder,
        filter: Option<&dyn Fn(&JobBody) -> bool>,
    ) -> (usize, Vec<(Arc<JobBody>, usize)>) {
        let list = match platform_slot(platform) {
            Some(slot) => &self.by_platform[slot],
            None => &self.all,
        };
        let with_refs = |job: &Arc<JobBody>| {
            let refs = job.job_id().map_or(0, |id| self.children_of(id));
            (job.clone(), refs)
        };
        if order == ListOrder::Created && filter.is_none() {
            let page = list
                .iter()
                .skip(offset)
                .take(size)
                .filter_map(|(_, id)| self.get(id))
                .map(with_refs)
                .collect();
            return (list.len(), page);
        }
        let mut jobs: Vec<(u64, &Arc<JobBody>)> = list
            .iter()
            .filter_map(|(seq, id)| self.get(id).map(|j| (*seq, j)))
            .filter(|(_, j)| filter.is_none_or(|f| f(j)))
            .collect();
        match order {
            ListOrder::Created => {}
            ListOrder::Name => jobs.sort_by(|a, b| {
                (a.1.name.get(), a.1.job_id()).cmp(&(b.1.name.get(), b.1.job_id()))
            }),
            ListOrder::Id => jobs.sort_by(|a, b| a.1.job_id().cmp(&b.1.job_id())),
            ListOrder::Updated => {
                jobs.sort_by_key(|(seq, j)| (std::cmp::Reverse(last_change_ms(j)), *seq))
            }
        }
        let total = jobs.len();
        let page = jobs
            .into_iter()
            .skip(offset)
            .take(size)
            .map(|(_, j)| with_refs(j))
            .collect();
        (total, page)
    }
}

/// When a job last changed, as a list's `updated` shows it (the creation while never updated).
fn last_change_ms(job: &JobBody) -> i64 {
    let date = |a: &Field<Audit>| a.get().and_then(|a| a.date.get()).and_then(|d| d.as_i64());
    date(&job.updated_by)
        .or_else(|| date(&job.created_by))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(id: &str, platform: &str, link: Option<&str>) -> JobBody {
        serde_json::from_value(json!({
            "id": id, "name": id, "platform": platform, "linkedJobId": link,
            "postDeployActions": [{"actionId": format!("{id}-a")}]
        }))
        .unwrap()
    }

    #[test]
    fn pages_follow_creation_order_per_platform() {
        let mut s = Store::default();
        s.put(doc("w1", "Windows", None));
        s.put(doc("l1", "Linux", None));
        s.put(doc("w2", "Windows", None));
        fn ids(s: &Store, p: Option<&str>, o: usize, n: usize) -> (usize, Vec<String>) {
            let (total, page) = s.page(p, o, n, ListOrder::Created, None);
            let ids: Vec<String> = page
                .iter()
                .map(|(j, _)| j.job_id().unwrap().to_string())
                .collect();
            (total, ids)
        }
        assert_eq!(
            ids(&s, Some("Windows"), 0, 10),
            (2, vec!["w1".into(), "w2".into()])
        );
        assert_eq!(ids(&s, None, 1, 1), (3, vec!["l1".into()]));
        assert_eq!(ids(&s, Some("Linux"), 1, 10), (1, vec![]));
        // A platform change keeps the job's place in creation order.
        s.put(doc("l1", "Windows", None));
        assert_eq!(ids(&s, Some("Windows"), 0, 10).1, vec!["w1", "l1", "w2"]);
        assert_eq!(ids(&s, Some("Linux"), 0, 10).0, 0);
    }

    #[test]
    fn link_counts_follow_puts_and_removals() {
        let mut s = Store::default();
        s.put(doc("p", "Windows", None));
        s.put(doc("c1", "Windows", Some("p")));
        s.put(doc("c2", "Windows", Some("p")));
        assert_eq!(s.children_of("p"), 2);
        s.put(doc("c2", "Windows", None));
        assert_eq!(s.children_of("p"), 1);
        s.remove("c1");
        assert_eq!(s.children_of("p"), 0);
        assert!(s.action_ids.contains("p-a"));
        s.remove("p");
        assert!(!s.action_ids.contains("p-a"));
        assert_eq!(s.page(None, 0, 10, ListOrder::Created, None).0, 1);
    }
}
