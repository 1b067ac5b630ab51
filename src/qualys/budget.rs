//! The request budget of one connection: calls per window, a rate ceiling, a concurrency cap,
//! and a pause after the gateway says "wait", shared by every clone and tenant of a [`Client`]
//! and handed out round-robin between tenants so one busy namespace cannot starve the others.
//!
//! A Qualys subscription has one quota for all its users, so the budget belongs to the
//! connection, not to a caller. Qualys states its limits as calls per rolling window (the
//! documented example: 300 an hour), and the gateway may not say so in headers; the configured
//! [`CallBudget`] is therefore a sliding window kept on our side: a call counts from the moment
//! it is granted until `window` after its answer arrived, so the gateway — whenever within that
//! span it counted the call — never sees more than `calls` in any window. On top of it, a
//! request needs a token from each of two token buckets: the configured ceiling (`rps`, bursts
//! of `max(1, ⌊rps⌋)`), which never changes, and the gateway's (`X-RateLimit-Limit` per
//! `X-RateLimit-Window-Sec`, bursts up to the limit, tokens capped by `X-RateLimit-Remaining`),
//! which exists once the gateway has reported a limit. What the gateway says can therefore only
//! lower the budget, never raise it; `X-ConcurrencyLimit-Limit` lowers the concurrency cap the
//! same way.
//!
//! [`Client`]: super::client::Client

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A budget of `calls` per rolling `window`, written `CALLS/DURATION` (`300/1h`, `20/30s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallBudget {
    pub calls: u32,
    pub window: Duration,
}

impl CallBudget {
    /// The documented example of a gateway's limit: 300 calls an hour.
    pub const DOCUMENTED: CallBudget = CallBudget {
        calls: 300,
        window: Duration::from_secs(3600),
    };

    /// The long-run rate the budget allows.
    pub fn per_second(&self) -> f64 {
        f64::from(self.calls) / self.window.as_secs_f64()
    }
}

impl std::str::FromStr for CallBudget {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let (calls, window) = raw.split_once('/').ok_or_else(|| {
            format!("{raw:?} is not a budget: give CALLS/DURATION, e.g. 300/1h or 20/30s")
        })?;
        let calls: u32 = calls
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("{calls:?} is not a positive whole number of calls"))?;
        let window = window.trim();
        // A bare number is seconds, like the gateway's X-RateLimit-Window-Sec.
        let parsed: Result<jiff::SignedDuration, _> = match window.parse::<u64>() {
            Ok(secs) => Ok(jiff::SignedDuration::from_secs(
                secs.min(i64::MAX as u64) as i64
            )),
            Err(_) => window.parse(),
        };
        let window = parsed
            .ok()
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("{window:?} is not a positive duration such as 30s, 15m or 1h")
            })?;
        Ok(CallBudget { calls, window })
    }
}

impl std::fmt::Display for CallBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.window.as_secs_f64();
        if secs % 3600.0 == 0.0 {
            write!(f, "{}/{}h", self.calls, secs / 3600.0)
        } else if secs % 60.0 == 0.0 {
            write!(f, "{}/{}m", self.calls, secs / 60.0)
        } else {
            write!(f, "{}/{}s", self.calls, secs)
        }
    }
}

/// Why the connection is paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PauseCause {
    /// The gateway asked for a wait (`Retry-After`, `X-RateLimit-ToWait-Sec`).
    GatewayAskedToWait,
    /// A 429 that said neither how long nor how much: the configured pause applies.
    RateLimitedWithoutHeaders,
}

/// A pause of the whole connection, as callers may report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    pub until: Instant,
    /// How long the pause was when it began.
    pub length: Duration,
    pub cause: PauseCause,
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.length.as_secs_f64().ceil();
        match self.cause {
            PauseCause::GatewayAskedToWait => write!(
                f,
                "the gateway asked to wait; the connection is paused for {secs}s"
            ),
            PauseCause::RateLimitedWithoutHeaders => write!(
                f,
                "rate limited without headers (HTTP 429 with neither Retry-After nor X-RateLimit-*); \
                 pausing the connection for {secs}s (--qualys-pause-on-429); lower --qualys-budget \
                 to the gateway's real limit"
            ),
        }
    }
}

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
    /// The configured calls per window.
    window: Option<Window>,
    /// The configured rate.
    local: Option<Bucket>,
    /// The rate the gateway reported.
    server: Option<Bucket>,
    concurrency: Option<usize>,
    in_flight: usize,
    paused_until: Option<Instant>,
    /// The pause in force, as reported to callers.
    pause: Option<Pause>,
    /// Header-less 429s seen so far.
    pauses_without_headers: u64,
    /// Waiting tickets per tenant, oldest first.
    queues: HashMap<Arc<str>, VecDeque<u64>>,
    /// Tenants with waiting tickets, in the order they get their next grant.
    rotation: VecDeque<Arc<str>>,
    granted: HashSet<u64>,
    next_ticket: u64,
}

const MIN_WAIT: Duration = Duration::from_millis(1);

/// A sliding window of `budget.calls` per `budget.window`: a call occupies a place from its
/// grant (counted in `State::in_flight` while it runs) until `window` after its end.
#[derive(Debug)]
struct Window {
    budget: CallBudget,
    /// When recent calls ended, oldest first; only those less than `window` ago.
    ended: VecDeque<Instant>,
}

impl Window {
    fn forget_old(&mut self, now: Instant) {
        while self
            .ended
            .front()
            .is_some_and(|t| *t + self.budget.window <= now)
        {
            self.ended.pop_front();
        }
    }

    fn is_full(&self, in_flight: usize) -> bool {
        self.ended.len() + in_flight >= self.budget.calls as usize
    }
}

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
        Budget::with_window(None, rps, concurrency)
    }

    /// A budget of `window` (calls per rolling window) besides the rate ceiling `rps` and the
    /// concurrency cap; `None` leaves each unlimited.
    pub fn with_window(
        window: Option<CallBudget>,
        rps: Option<f64>,
        concurrency: Option<usize>,
    ) -> Arc<Budget> {
        let now = Instant::now();
        Arc::new(Budget {
            configured_concurrency: concurrency,
            state: Mutex::new(State {
                window: window.map(|budget| Window {
                    budget,
                    ended: VecDeque::new(),
                }),
                local: rps.map(|r| Bucket::full(r, r.floor().max(1.0), now)),
                server: None,
                concurrency,
                in_flight: 0,
                paused_until: None,
                pause: None,
                pauses_without_headers: 0,
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
            state.pause_for(now, wait, PauseCause::GatewayAskedToWait);
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

    /// A 429 that carried no rate-limit header at all: nothing says how long to wait, so the
    /// whole connection stops for `length` (every tenant, not only the caller), and the pause is
    /// reported through [`Budget::pause`].
    pub fn pause_without_headers(&self, length: Duration) -> Pause {
        let mut state = self.lock();
        state.pauses_without_headers += 1;
        state.pause_for(
            Instant::now(),
            length,
            PauseCause::RateLimitedWithoutHeaders,
        );
        state.pause.clone().unwrap_or(Pause {
            until: Instant::now() + length,
            length,
            cause: PauseCause::RateLimitedWithoutHeaders,
        })
    }

    /// The pause in force now, if any.
    pub fn pause(&self) -> Option<Pause> {
        let state = self.lock();
        let now = Instant::now();
        state.pause.clone().filter(|p| p.until > now)
    }

    /// How many 429s without any rate-limit header paused the connection so far.
    pub fn pauses_without_headers(&self) -> u64 {
        self.lock().pauses_without_headers
    }

    /// The rate in force now (requests per second), `None` when unlimited.
    pub fn effective_rps(&self) -> Option<f64> {
        let state = self.lock();
        state.buckets().map(|b| b.rate).reduce(f64::min)
    }

    /// The long-run calls per second the budget allows: the least of the configured window's
    /// rate, the rate ceiling and the gateway's reported rate; `None` when all are unlimited.
    pub fn calls_per_second(&self) -> Option<f64> {
        let state = self.lock();
        let window = state.window.as_ref().map(|w| w.budget.per_second());
        state
            .buckets()
            .map(|b| b.rate)
            .chain(window)
            .reduce(f64::min)
    }

    /// The configured calls per window.
    pub fn call_budget(&self) -> Option<CallBudget> {
        self.lock().window.as_ref().map(|w| w.budget)
    }

    /// The calls that count against the configured window now: those in flight and those
    /// answered less than a window ago. `None` without a configured window.
    pub fn calls_in_window(&self) -> Option<usize> {
        let mut state = self.lock();
        let in_flight = state.in_flight;
        let window = state.window.as_mut()?;
        window.forget_old(Instant::now());
        Some(window.ended.len() + in_flight)
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
        let now = Instant::now();
        if let Some(window) = &mut state.window {
            window.ended.push_back(now);
        }
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
        if let Some(window) = &mut self.window {
            window.forget_old(now);
        }
    }

    fn pause_for(&mut self, now: Instant, length: Duration, cause: PauseCause) {
        let until = now + length;
        if self.paused_until.is_none_or(|p| p < until) {
            self.paused_until = Some(until);
            self.pause = Some(Pause {
                until,
                length,
                cause,
            });
        }
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
            if self
                .window
                .as_ref()
                .is_some_and(|w| w.is_full(self.in_flight))
            {
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
        let window_opens = match &self.window {
            // Full with only calls in flight: the next place frees when one of them ends.
            Some(w) if w.is_full(self.in_flight) => match w.ended.front() {
                Some(oldest) => Some(*oldest + w.budget.window),
                None => return None,
            },
            _ => None,
        };
        self.buckets()
            .filter(|b| !b.has_token())
            // At least a millisecond: a wait rounded down to nothing would spin.
            .map(|b| now + Duration::from_secs_f64((1.0 - b.tokens) / b.rate).max(MIN_WAIT))
            .chain(window_opens)
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

    #[tokio::test(start_paused = true)]
    async fn the_call_budget_is_a_sliding_window_from_grant_to_answer() {
        let budget = Budget::with_window(
            Some(CallBudget {
                calls: 3,
                window: Duration::from_secs(10),
            }),
            None,
            None,
        );
        let start = Instant::now();
        // Three at once; the first answer takes 2 s, the others none.
        let slow = budget.acquire("a").await;
        drop(budget.acquire("a").await);
        drop(budget.acquire("a").await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(slow);
        // The fourth waits for the window of the second call (ended at 0 s) …
        drop(budget.acquire("a").await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // … the fifth for the third's (0 s) …
        drop(budget.acquire("a").await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // … and the sixth for the slow first call's, counted from its answer (2 s).
        drop(budget.acquire("a").await);
        assert_eq!(start.elapsed(), Duration::from_secs(12));
        assert_eq!(budget.calls_per_second(), Some(0.3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_calls_in_the_window_are_those_in_flight_and_those_answered_within_it() {
        assert_eq!(Budget::new(Some(5.0), None).calls_in_window(), None);
        let budget = Budget::with_window(
            Some(CallBudget {
                calls: 5,
                window: Duration::from_secs(10),
            }),
            None,
            None,
        );
        assert_eq!(budget.calls_in_window(), Some(0));
        let held = budget.acquire("a").await;
        drop(budget.acquire("b").await);
        assert_eq!(budget.calls_in_window(), Some(2));
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(held);
        assert_eq!(budget.calls_in_window(), Some(2));
        // At 10 s the call answered at 0 s leaves the window; the one answered at 4 s stays.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(budget.calls_in_window(), Some(1));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(budget.calls_in_window(), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_headers_pauses_every_tenant_and_is_reported() {
        let budget = Budget::new(None, None);
        let start = Instant::now();
        let pause = budget.pause_without_headers(Duration::from_secs(60));
        assert_eq!(pause.cause, PauseCause::RateLimitedWithoutHeaders);
        assert_eq!(budget.pause(), Some(pause.clone()));
        drop(budget.acquire("other").await);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert_eq!(budget.pause(), None);
        assert_eq!(budget.pauses_without_headers(), 1);
    }

    #[test]
    fn budgets_parse_as_calls_per_duration() {
        let parse = |s: &str| s.parse::<CallBudget>();
        assert_eq!(parse("300/1h"), Ok(CallBudget::DOCUMENTED));
        assert_eq!(parse("300/3600"), Ok(CallBudget::DOCUMENTED));
        assert_eq!(
            parse("20/30s"),
            Ok(CallBudget {
                calls: 20,
                window: Duration::from_secs(30)
            })
        );
        assert_eq!(
            parse("300"),
            Err("\"300\" is not a budget: give CALLS/DURATION, e.g. 300/1h or 20/30s".into())
        );
        assert_eq!(
            parse("0/1h"),
            Err("\"0\" is not a positive whole number of calls".into())
        );
        assert_eq!(
            parse("5/0s"),
            Err("\"0s\" is not a positive duration such as 30s, 15m or 1h".into())
        );
        assert_eq!(CallBudget::DOCUMENTED.to_string(), "300/1h");
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
