//! The token cache of one client: one `/auth` for all concurrent callers, renewal before the
//! JWT expires, a remembered failure so refused credentials are not hammered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::Retryable;
use base64::Engine as _;
use reqwest::Url;
use reqwest::header;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span};

use super::client::Inner;
use super::endpoint::Endpoint;
use super::error::Error;
use super::identity::Secret;
use super::retry::{Call, Failure, backoff, classify_status, classify_transport, within};

#[derive(Default)]
pub(super) struct TokenSlot {
    pub(super) token: Option<CachedToken>,
    pub(super) failure: Option<AuthFailure>,
}

pub(super) struct CachedToken {
    pub(super) jwt: Secret,
    pub(super) refresh_at: Instant,
    pub(super) generation: u64,
}

/// The last `/auth` that failed.
pub(super) struct AuthFailure {
    pub(super) error: Error,
    pub(super) at: Instant,
    /// Its number in `Inner::fetches`.
    pub(super) fetch: u64,
}

/// How long refused credentials are not offered again (except by `authenticate`): a controller
/// with many jobs must not hammer `/auth` with a wrong password and get the account locked. A
/// corrected password is a new connection identity, hence a new client, unaffected.
pub(super) const AUTH_FAILURE_COOLDOWN: Duration = Duration::from_secs(60);

/// The token lifetime the docs give (4 h), used when the JWT does not say.
pub(super) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(4 * 3600);

impl Inner {
    /// The cached token, or a new one when there is none or it is due for refresh.
    pub(super) async fn token(&self) -> Result<(Secret, u64), Error> {
        let seen = self.fetches.load(Ordering::SeqCst);
        let mut slot = self.token.lock().await;
        if let Some(t) = &slot.token
            && Instant::now() < t.refresh_at
        {
            return Ok((t.jwt.clone(), t.generation));
        }
        if let Some(failure) = &slot.failure {
            // An `/auth` that failed while we queued for the lock answers for us too …
            let fresh = failure.fetch > seen;
            // … and refused credentials are not offered again for a while.
            let refused = matches!(
                failure.error,
                Error::Unauthorized { .. } | Error::Forbidden { .. }
            ) && failure.at.elapsed() < AUTH_FAILURE_COOLDOWN;
            if fresh || refused {
                return Err(failure.error.clone());
            }
        }
        self.refresh(&mut slot).await
    }

    /// `/auth` now, recording the outcome in the slot.
    pub(super) async fn refresh(&self, slot: &mut TokenSlot) -> Result<(Secret, u64), Error> {
        let result = self.fetch_token().await;
        let fetch = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        match result {
            Ok(fresh) => {
                let out = (fresh.jwt.clone(), fresh.generation);
                slot.token = Some(fresh);
                slot.failure = None;
                Ok(out)
            }
            Err(error) => {
                slot.failure = Some(AuthFailure {
                    error: error.clone(),
                    at: Instant::now(),
                    fetch,
                });
                Err(error)
            }
        }
    }

    /// Forget the token of `generation` (refused with a 401); a newer one is kept.
    pub(super) async fn invalidate(&self, generation: u64) {
        let mut slot = self.token.lock().await;
        if slot
            .token
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            slot.token = None;
        }
    }

    /// `POST /auth`, retried on transport errors, 5xx and 429.
    pub(super) async fn fetch_token(&self) -> Result<CachedToken, Error> {
        let call = Call::new(Endpoint::Auth, self.auth_url()?)
            .what("the /auth endpoint (is gatewayUrl the API gateway, e.g. https://gateway.qg1.apps.qualys.com?)");
        let body = (|| async {
            let request = self
                .http
                .post(call.url.clone())
                .header(header::ACCEPT, "text/plain, application/json")
                .form(&[
                    ("username", self.username.as_str()),
                    ("password", self.password.expose()),
                    ("token", "true"),
                    ("permissions", "true"),
                ]);
            let span = debug_span!(
                "qualys_request",
                endpoint = Endpoint::Auth.as_str(),
                status = tracing::field::Empty
            );
            let exchange = self
                .exchange(Endpoint::Auth, request)
                .instrument(span)
                .await
                .map_err(|e| classify_transport(&call, &e, &self.opts))?;
            if exchange.status.is_success() {
                Ok(exchange.body)
            } else {
                Err(classify_status(&call, &exchange, &self.username))
            }
        })
        .retry(backoff(&self.opts))
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| f.retry)
        .adjust(within(self.opts.max_retry_time))
        .await
        .map_err(|f| f.error)?;

        let jwt = std::str::from_utf8(&body).unwrap_or_default().trim();
        if jwt.is_empty() || jwt.len() > 16 * 1024 || !jwt.bytes().all(|b| b.is_ascii_graphic()) {
            // Not a token; the body is not quoted, in case it is one after all.
            return Err(Error::Decode {
                endpoint: Endpoint::Auth,
                message: "the answer is not a JWT".to_owned(),
            });
        }
        let lifetime = token_lifetime(jwt).unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        debug!(
            lifetime_s = lifetime.as_secs(),
            "authenticated; token cached"
        );
        Ok(CachedToken {
            jwt: Secret::new(jwt),
            refresh_at: Instant::now() + (lifetime - margin),
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    pub(super) fn auth_url(&self) -> Result<Url, Error> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::config("gatewayUrl cannot have a path"))?
            .pop_if_empty()
            .push("auth");
        Ok(url)
    }
}

/// How long a JWT lives, from its unverified payload: `exp - iat` when both are there (immune to
/// clock skew between us and the gateway), else `exp - now`.
pub(super) fn token_lifetime(jwt: &str) -> Option<Duration> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let from = match claims.get("iat").and_then(serde_json::Value::as_f64) {
        Some(iat) => iat,
        None => jiff::Timestamp::now().as_millisecond() as f64 / 1000.0,
    };
    let lifetime = exp - from;
    // A token that looks expired on arrival says more about the clocks than about the token.
    (lifetime.is_finite() && lifetime > 0.0)
        .then(|| Duration::from_secs_f64(lifetime.min(30.0 * 86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn token_lifetime_reads_exp_and_iat() {
        let t = jwt(serde_json::json!({"sub": "u", "iat": 1000, "exp": 1000 + 14400}));
        assert_eq!(token_lifetime(&t), Some(Duration::from_secs(14400)));
        let now = jiff::Timestamp::now().as_second();
        let t = jwt(serde_json::json!({"exp": now + 600}));
        let life = token_lifetime(&t).unwrap();
        assert!(life <= Duration::from_secs(600) && life >= Duration::from_secs(590));
        assert_eq!(token_lifetime("not-a-jwt"), None);
        assert_eq!(token_lifetime(&jwt(serde_json::json!({"sub": "u"}))), None);
        assert_eq!(
            token_lifetime(&jwt(serde_json::json!({"iat": 10, "exp": 5}))),
            None
        );
    }
}
