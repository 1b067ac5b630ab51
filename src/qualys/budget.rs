//! The request budget of one connection: a rate, a concurrency cap, and a pause after the
//! gateway says "wait", shared by every clone and tenant of a [`Client`] and handed out
//! round-robin between tenants so one busy namespace cannot starve the others.
//!
//! A Qualys subscription has one quota for all its users, so the budget belongs to the
//! connection, not to a caller. The rate is two token buckets, and a request needs a token from
//! each: the configured one (`rps`, bursts of `max(1, ⌊rps⌋)`), which never changes, and the
//! gateway's (`X-RateLimit-Limit` per `X-RateLimit-Window-Sec`, bursts up to the limit, tokens
//! capped by `X-RateLimit-Remaining`), which exists once the gateway has reported a limit. What
//! the gateway says can therefore only lower the rate below the configuration, never raise it;
//! `X-ConcurrencyLimit-Limit` lowers the concurrency cap the same way.
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
    configured_concurrency: Option<usize>,
    state: Mutex<State>,
    /// Woken whenever a grant was made or a permit came back.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// The configured rate.
    local: Option<Bucket>,
    /// The rate the gateway reported.
    server: Option<Bucket>,
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

const MIN_WAIT: Duration = Duration::from_millis(1);

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn full(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    /// A whole token, give or take the rounding of the refill arithmetic.
    fn has_token(&self) -> bool {
        self.tokens >= 1.0 - 1e-9
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
    }
}

impl Budget {
    /// A budget of at most `rps` requests per second (bursts of up to `max(1, ⌊rps⌋)`) and at
    /// most `concurrency` requests in flight; `None` means unlimited (until the gateway says
    /// otherwise).
    pub fn new(rps: Option<f64>, concurrency: Option<usize>) -> Arc<Budget> {
        let now = Instant::now();
        Arc::new(Budget {
            configured_concurrency: concurrency,
            state: Mutex::new(State {
                local: rps.map(|r| Bucket::full(r, r.floor().max(1.0), now)),
                server: None,
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

    /// Take in what an answer said about the gateway's limits; `rate_limited` when it was a 429
    /// (or the classic API's equivalent).
    pub fn observe(&self, info: &RateLimitInfo, rate_limited: bool) {
        let mut state = self.lock();
        let now = Instant::now();
        state.refill(now);
        if let (Some(limit), Some(window)) = (info.limit, info.window)
            && limit > 0
            && !window.is_zero()
        {
            let rate = limit as f64 / window.as_secs_f64();
            let burst = limit as f64;
            match &mut state.server {
                Some(bucket) => {
                    bucket.rate = rate;
                    bucket.burst = burst;
                    bucket.tokens = bucket.tokens.min(burst);
                }
                None => state.server = Some(Bucket::full(rate, burst, now)),
            }
        }
        if let (Some(server), Some(remaining)) = (&mut state.server, info.remaining)
            && !rate_limited
        {
            // The gateway knows what is left of its window better than our bucket does.
            server.tokens = server.tokens.min(remaining as f64);
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
            // The gateway said when the next call is welcome: let at least one through then,
            // rather than also waiting for its bucket to refill. Its `Remaining: 0` on a 429 is
            // not taken as "empty" either: the wait already says when, and should the gateway
            // still refuse, its next 429 says how long again.
            if let Some(server) = &mut state.server
                && rate_limited
            {
                server.tokens = server.tokens.max(1.0);
            }
        }
    }

    /// The rate in force now (requests per second), `None` when unlimited.
    pub fn effective_rps(&self) -> Option<f64> {
        let state = self.lock();
        state.buckets().map(|b| b.rate).reduce(f64::min)
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

    fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        [&self.local, &self.server].into_iter().flatten()
    }

    fn buckets_mut(&mut self) -> impl Iterator<Item = &mut Bucket> {
        [&mut self.local, &mut self.server].into_iter().flatten()
    }

    fn refill(&mut self, now: Instant) {
        self.buckets_mut().for_each(|b| b.refill(now));
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
            if self.buckets().any(|b| !b.has_token()) {
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
            self.buckets_mut().for_each(|b| b.tokens -= 1.0);
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
        self.buckets()
            .filter(|b| !b.has_token())
            // At least a millisecond: a wait rounded down to nothing would spin.
            .map(|b| now + Duration::from_secs_f64((1.0 - b.tokens) / b.rate).max(MIN_WAIT))
            .max()
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
    async fn remaining_zero_drains_the_gateway_bucket() {
        let budget = Budget::new(None, None);
        budget.observe(
            &RateLimitInfo {
                limit: Some(10),
                window: Some(Duration::from_secs(10)),
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
    async fn the_gateway_bucket_allows_its_burst_but_not_past_the_configured_rate() {
        let budget = Budget::new(Some(2.0), None);
        // 300 per hour with 298 left: the gateway would take a burst; our 2/s still paces it.
        budget.observe(
            &RateLimitInfo {
                limit: Some(300),
                window: Some(Duration::from_secs(3600)),
                remaining: Some(298),
                ..Default::default()
            },
            false,
        );
        let start = Instant::now();
        for _ in 0..6 {
            drop(budget.acquire("a").await);
        }
        // Two at once, then one every 500 ms.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_the_next_call_goes_when_the_gateway_said() {
        let budget = Budget::new(None, None);
        let start = Instant::now();
        budget.observe(
            &RateLimitInfo {
                limit: Some(300),
                window: Some(Duration::from_secs(3600)),
                remaining: Some(0),
                retry_after: Some(Duration::from_secs(1)),
                to_wait: Some(Duration::from_secs(1)),
                ..Default::default()
            },
            true,
        );
        drop(budget.acquire("a").await);
        // Not 12 s (one token of 300 an hour): the gateway's wait is what counts …
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // … and its bucket, new and full, does not hold back the calls after it.
        drop(budget.acquire("a").await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // A `Remaining: 0` on a successful answer does: then it is the gateway's pace.
        budget.observe(
            &RateLimitInfo {
                limit: Some(300),
                window: Some(Duration::from_secs(3600)),
                remaining: Some(0),
                ..Default::default()
            },
            false,
        );
        drop(budget.acquire("a").await);
        assert_eq!(start.elapsed(), Duration::from_secs(13));
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
