//! Qualys writes fenced by the leader lease. A Lease by itself fences nothing: a leader paused
//! past its lease (SIGSTOP, a frozen VM, a long stop-the-world pause) resumes with reconciles
//! in flight, and they write before its lease task has noticed that another replica leads; a
//! leader whose renewals fail keeps believing it leads while its lease runs out. So right
//! before each Qualys write the client asks this fence whether the lease can still be ours: the
//! last successful renewal must have been sent less than the lease's validity ago, by the
//! monotonic clock (which a pause does not stop). The controller's Kubernetes writes (status,
//! finalizers, events) go through the same check, so a replica that may no longer lead writes
//! nowhere.

use crate::qualys::WriteFence;
use kube::client::Body;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The validity of the leader lease as this replica knows it.
#[derive(Debug)]
pub struct LeaseFence {
    /// When the last successful write of the lease (an acquisition or a renewal) was sent.
    renewed: Mutex<Option<Instant>>,
    /// How long after a renewal was sent writes may go.
    valid_for: Duration,
}

impl LeaseFence {
    /// A fence for a lease of `duration`, renewed `grace` before it runs out. Writes stop
    /// `grace / 2` before the lease could expire: the other half of the grace is for the
    /// renewal's round trip, this half for the clocks of the replicas and the write's own way
    /// to the gateway.
    pub fn new(duration: Duration, grace: Duration) -> Arc<Self> {
        Arc::new(LeaseFence {
            renewed: Mutex::new(None),
            valid_for: duration.saturating_sub(grace / 2),
        })
    }

    /// A write of the lease sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant) {
        if let Ok(mut r) = self.renewed.lock() {
            // Answers may arrive out of order; the latest send counts.
            *r = Some(r.map_or(sent, |before| before.max(sent)));
        }
    }

    /// How long ago the last successful renewal was sent, if any was.
    fn age(&self) -> Option<Duration> {
        let renewed = (*self.renewed.lock().ok()?)?;
        Some(Instant::now().saturating_duration_since(renewed))
    }

    /// Whether writes may go now.
    pub fn is_open(&self) -> bool {
        self.check().is_ok()
    }
}

impl WriteFence for LeaseFence {
    fn check(&self) -> Result<(), String> {
        match self.age() {
            Some(age) if age < self.valid_for => Ok(()),
            Some(age) => Err(format!(
                "this replica's leader lease was last renewed {:.1}s ago and may have passed to another replica (writes stop {:.1}s after a renewal); the write is left to the leader",
                age.as_secs_f64(),
                self.valid_for.as_secs_f64()
            )),
            None => Err(
                "this replica has not renewed a leader lease; the write is left to the leader"
                    .into(),
            ),
        }
    }
}

/// `kube`, with every successful PATCH of the Lease `name` reported to `fence`, timed from
/// when it was sent (the lease manager acquires, renews and releases the lease that way; it
/// releases only once the controller has stopped).
pub fn tracking(kube: kube::Client, name: &str, fence: Arc<LeaseFence>) -> kube::Client {
    let default_namespace = kube.default_namespace().to_string();
    let suffix = format!("/leases/{name}");
    let service = tower::service_fn(move |request: http::Request<Body>| {
        let (kube, fence) = (kube.clone(), fence.clone());
        let lease_write =
            request.method() == http::Method::PATCH && request.uri().path().ends_with(&suffix);
        async move {
            let sent = Instant::now();
            let response = kube.send(request).await?;
            if lease_write && response.status().is_success() {
                fence.renewed(sent);
            }
            Ok::<_, kube::Error>(response)
        }
    });
    kube::Client::new(service, default_namespace)
}

/// `kube`, refusing every request but a GET while `fence` is closed (nothing is sent; the
/// caller sees a service error and retries later).
pub fn fenced(kube: kube::Client, fence: Arc<LeaseFence>) -> kube::Client {
    let default_namespace = kube.default_namespace().to_string();
    let service = tower::service_fn(move |request: http::Request<Body>| {
        let (kube, fence) = (kube.clone(), fence.clone());
        async move {
            if request.method() != http::Method::GET
                && let Err(reason) = fence.check()
            {
                return Err(kube::Error::Service(reason.into()));
            }
            kube.send(request).await
        }
    });
    kube::Client::new(service, default_namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_stop_half_a_grace_before_the_lease_could_expire() {
        let fence = LeaseFence::new(Duration::from_secs(15), Duration::from_secs(5));
        let refused = fence.check().unwrap_err();
        assert!(refused.contains("has not renewed"), "{refused}");
        fence.renewed(Instant::now());
        assert_eq!(fence.check(), Ok(()));
        tokio::time::advance(Duration::from_millis(12_499)).await;
        assert!(fence.is_open());
        tokio::time::advance(Duration::from_millis(1)).await;
        let refused = fence.check().unwrap_err();
        assert_eq!(
            refused,
            "this replica's leader lease was last renewed 12.5s ago and may have passed to another replica (writes stop 12.5s after a renewal); the write is left to the leader"
        );
        // A renewal sent before the last one does not move the fence back.
        let earlier = Instant::now() - Duration::from_secs(20);
        fence.renewed(Instant::now());
        fence.renewed(earlier);
        assert!(fence.is_open());
    }
}
