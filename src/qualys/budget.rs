//! The request budget of one connection: a rate (token bucket), a concurrency cap, and a pause
//! after the gateway says "wait", shared by every clone and tenant of a [`Client`] and handed
//! out round-robin between tenants so one busy namespace cannot starve the others.
//!
//! A Qualys subscription has one quota for all its users, so the budget belongs to the
//! connection, not to a caller. It starts at the configured values and is only ever lowered by
//! what the gateway reports (`X-RateLimit-Limit` / `X-RateLimit-Window-Sec`,
//! `X-ConcurrencyLimit-Limit`), never raised above the configuration.
//!
//! [`Client`]: super::client::Client

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Rate-limit facts read from the headers of one response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateLimitInfo {
    /// `X-RateLimit-Limit`: calls allowed per window.
    pub limit: Option<u64>,
    /// `X-RateLimit-Window-Sec`.
    pub window: Option<Duration>,
    /// `X-RateLimit-Remaining`: calls left in the current window.
    pub remaining: Option<u64>,
    /// `X-RateLimit-ToWait-Sec`: how long to wait before the next call.
    pub to_wait: Option<Duration>,
    /// `Retry-After` (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
    /// `X-ConcurrencyLimit-Limit` (or the classic `X-Concurrency-Limit-Limit`).
    pub concurrency_limit: Option<u64>,
}

impl RateLimitInfo {
    /// True when no rate-limit header was present.
    pub fn is_empty(&self) -> bool {
        *self == RateLimitInfo::default()
    }

    /// The longer of `Retry-After` and `X-RateLimit-ToWait-Sec`.
    pub fn wait(&self) -> Option<Duration> {
        match (self.retry_after, self.to_wait) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A shared request budget. Create one per connection; hand out [`Permit`]s per request.
#[derive(Debug)]
pub struct Budget {
    configured_rps: Option<f64>,
    configured_burst: f64,
    configured_concurrency: Option<usize>,
    state: Mutex<State>,
    /// Woken whenever a grant was made or a permit came back.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    rps: Option<f64>,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
    concurrency: Option<usize>,
    in_flight: usize,
    paused_until: Option<Instant>,
    /// Waiting tickets per tenant, oldest first.
    queues: HashMap<Arc<str>, VecDeque<u64>>,
    /// Tenants with waiting tickets, in the order they get their next grant.
    rotation: VecDeque<Arc<str>>,
    granted: HashSet<u64>,
    next_ticket: u64,
}

impl Budget {
    /// A budget of at most `rps` requests per second (bursts of up to `max(1, rps)`) and at most
    /// `concurrency` requests in flight; `None` means unlimited.
    pub fn new(rps: Option<f64>, concurrency: Option<usize>) -> Arc<Budget> {
        let burst = rps.map_or(1.0, |r| r.floor().max(1.0));
        Arc::new(Budget {
            configured_rps: rps,
            configured_burst: burst,
            configured_concurrency: concurrency,
            state: Mutex::new(State {
                rps,
                burst,
                tokens: burst,
                refilled_at: Instant::now(),
                concurrency,
                in_flight: 0,
                paused_until: None,
                queues: HashMap::new(),
                rotation: VecDeque::new(),
                granted: HashSet::new(),
                next_ticket: 0,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock, so a panic elsewhere does not spoil it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wait for the right to send one request on behalf of `tenant`.
    ///
    /// Cancel-safe: dropping the future gives back its place (or its grant).
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Permit {
        let tenant: Arc<str> = Arc::from(tenant);
        let ticket = self.lock().enqueue(&tenant);
        let mut waiting = Waiting {
            budget: self,
            tenant,
            ticket,
            done: false,
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before looking at the state, so a grant made in between still wakes us.
            notified.as_mut().enable();
            let wake_at = {
                let mut state = self.lock();
                let now = Instant::now();
                if state.dispatch(now) {
                    self.changed.notify_waiters();
                }
                if state.granted.remove(&ticket) {
                    waiting.done = true;
                    return Permit {
                        budget: Arc::clone(self),
                    };
                }
                state.next_grant_at(now)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Take in what a response said about the gateway's limits.
    pub fn observe(&self, info: &RateLimitInfo, rate_limited: bool) {
        let mut state = self.lock();
        let now = Instant::now();
        state.refill(now);
        if let (Some(limit), Some(window)) = (info.limit, info.window)
            && limit > 0
            && !window.is_zero()
        {
            let server_rps = limit as f64 / window.as_secs_f64();
            let rps = self
                .configured_rps
                .map_or(server_rps, |c| c.min(server_rps));
            state.rps = Some(rps);
            state.burst = self.configured_burst.min(limit as f64).max(1.0);
            state.tokens = state.tokens.min(state.burst);
        }
        if let Some(remaining) = info.remaining {
            // The gateway knows what is left of the window better than our bucket does.
            state.tokens = state.tokens.min(remaining as f64);
        }
        if let Some(limit) = info.concurrency_limit
            && limit > 0
        {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            state.concurrency = Some(self.configured_concurrency.map_or(limit, |c| c.min(limit)));
        }
        let wait = if rate_limited {
            info.wait()
        } else {
            info.to_wait.filter(|w| !w.is_zero())
        };
        if let Some(wait) = wait {
            let until = now + wait;
            state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    /// The rate in force now (requests per second), `None` when unlimited.
    pub fn effective_rps(&self) -> Option<f64> {
        self.lock().rps
    }

    /// The concurrency cap in force now, `None` when unlimited.
    pub fn effective_concurrency(&self) -> Option<usize> {
        self.lock().concurrency
    }

    /// Until when no request is granted after the gateway asked us to wait.
    pub fn paused_until(&self) -> Option<Instant> {
        self.lock().paused_until.filter(|p| *p > Instant::now())
    }

    /// Requests holding a permit now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Tickets waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.lock().queues.values().map(VecDeque::len).sum()
    }

    fn release(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.dispatch(Instant::now());
        drop(state);
        self.changed.notify_waiters();
    }
}

impl State {
    fn enqueue(&mut self, tenant: &Arc<str>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let queue = self.queues.entry(Arc::clone(tenant)).or_default();
        if queue.is_empty() {
            self.rotation.push_back(Arc::clone(tenant));
        }
        queue.push_back(ticket);
        ticket
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rps) = self.rps {
            let elapsed = now
                .saturating_duration_since(self.refilled_at)
                .as_secs_f64();
            self.tokens = (self.tokens + elapsed * rps).min(self.burst);
        }
        self.refilled_at = now;
    }

    /// Grant as many waiting tickets as the budget allows, one tenant at a time in rotation.
    fn dispatch(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.paused_until.is_some_and(|p| p > now) {
            return false;
        }
        let mut granted_any = false;
        while !self.rotation.is_empty() {
            if self.concurrency.is_some_and(|c| self.in_flight >= c) {
                break;
            }
            if self.rps.is_some() && self.tokens < 1.0 {
                break;
            }
            let Some(tenant) = self.rotation.pop_front() else {
                break;
            };
            let Some(queue) = self.queues.get_mut(&tenant) else {
                continue;
            };
            let Some(ticket) = queue.pop_front() else {
                self.queues.remove(&tenant);
                continue;
            };
            if queue.is_empty() {
                self.queues.remove(&tenant);
            } else {
                self.rotation.push_back(tenant);
            }
            self.granted.insert(ticket);
            self.in_flight += 1;
            if self.rps.is_some() {
                self.tokens -= 1.0;
            }
            granted_any = true;
        }
        granted_any
    }

    /// When waiting tickets can next be granted without a permit coming back.
    fn next_grant_at(&self, now: Instant) -> Option<Instant> {
        if self.rotation.is_empty() {
            return None;
        }
        if let Some(p) = self.paused_until.filter(|p| *p > now) {
            return Some(p);
        }
        if self.concurrency.is_some_and(|c| self.in_flight >= c) {
            return None;
        }
        match self.rps {
            Some(rps) if self.tokens < 1.0 => {
                Some(now + Duration::from_secs_f64((1.0 - self.tokens) / rps))
            }
            _ => None,
        }
    }

    fn forget(&mut self, tenant: &Arc<str>, ticket: u64) {
        if let Some(queue) = self.queues.get_mut(tenant) {
            queue.retain(|t| *t != ticket);
            if queue.is_empty() {
                self.queues.remove(tenant);
                self.rotation.retain(|t| t != tenant);
            }
        }
    }
}

/// The right to have one request in flight; given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release();
    }
}

/// Cleans up after an `acquire` that was cancelled while waiting.
struct Waiting<'a> {
    budget: &'a Arc<Budget>,
    tenant: Arc<str>,
    ticket: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.budget.lock();
        if state.granted.remove(&self.ticket) {
            // Granted but never collected: hand the slot on.
            drop(state);
            self.budget.release();
        } else {
            state.forget(&self.tenant, self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lone_tenant_is_served_at_the_configured_rate() {
        let budget = Budget::new(Some(5.0), None);
        let start = Instant::now();
        for _ in 0..15 {
            drop(budget.acquire("a").await);
        }
        // A burst of 5, then one every 200 ms: 10 more take exactly 2 s of (virtual) time.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_caps_permits_in_flight() {
        let budget = Budget::new(None, Some(2));
        let a = budget.acquire("a").await;
        let _b = budget.acquire("a").await;
        assert_eq!(budget.in_flight(), 2);
        let third = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.acquire("a").await }
        });
        wait_until(|| budget.waiting() == 1).await;
        assert!(!third.is_finished());
        drop(a);
        let _c = third.await.unwrap();
        assert_eq!(budget.in_flight(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_with_one_call_is_not_stuck_behind_a_busy_one() {
        let budget = Budget::new(None, Some(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let blocker = budget.acquire("busy").await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let (b, o) = (Arc::clone(&budget), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _p = b.acquire("busy").await;
                o.lock().unwrap().push(format!("busy-{i}"));
            }));
            // Queue them in a known order.
            wait_until(|| budget.waiting() == i + 1).await;
        }
        let (b, o) = (Arc::clone(&budget), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let _p = b.acquire("quiet").await;
            o.lock().unwrap().push("quiet".to_owned());
        }));
        wait_until(|| budget.waiting() == 101).await;
        drop(blocker);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let position = order.iter().position(|s| s == "quiet").unwrap();
        assert!(
            position <= 1,
            "quiet tenant served as grant #{position}: {order:?}"
        );
        assert_eq!(order.len(), 101);
    }

    #[tokio::test(start_paused = true)]
    async fn headers_lower_the_rate_but_never_raise_it() {
        let budget = Budget::new(Some(2.0), Some(4));
        budget.observe(
            &RateLimitInfo {
                limit: Some(300),
                window: Some(Duration::from_secs(3600)),
                concurrency_limit: Some(2),
                ..Default::default()
            },
            false,
        );
        let rps = budget.effective_rps().unwrap();
        assert!((rps - 300.0 / 3600.0).abs() < 1e-9, "{rps}");
        assert_eq!(budget.effective_concurrency(), Some(2));
        budget.observe(
            &RateLimitInfo {
                limit: Some(100),
                window: Some(Duration::from_secs(1)),
                concurrency_limit: Some(50),
                ..Default::default()
            },
            false,
        );
        assert_eq!(budget.effective_rps(), Some(2.0));
        assert_eq!(budget.effective_concurrency(), Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_tenant_for_the_longer_wait() {
        let budget = Budget::new(None, None);
        let start = Instant::now();
        budget.observe(
            &RateLimitInfo {
                retry_after: Some(Duration::from_secs(3)),
                to_wait: Some(Duration::from_secs(7)),
                ..Default::default()
            },
            true,
        );
        drop(budget.acquire("other").await);
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_zero_drains_the_bucket() {
        let budget = Budget::new(Some(1.0), None);
        budget.observe(
            &RateLimitInfo {
                remaining: Some(0),
                ..Default::default()
            },
            false,
        );
        let start = Instant::now();
        drop(budget.acquire("a").await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_gives_its_place_back() {
        let budget = Budget::new(None, Some(1));
        let held = budget.acquire("a").await;
        let cancelled = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.acquire("a").await }
        });
        wait_until(|| budget.waiting() == 1).await;
        cancelled.abort();
        let _ = cancelled.await;
        assert_eq!(budget.waiting(), 0);
        drop(held);
        let _p = budget.acquire("b").await;
        assert_eq!(budget.in_flight(), 1);
    }

    async fn wait_until(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not reached");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
