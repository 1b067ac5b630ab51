//! Tokens: HS256 JWTs signed with a random per-process key (`ring::hmac`).
//!
//! Tokens are stateless except for a generation number: `expire_tokens` and `reset` bump it,
//! and a token of an older generation counts as expired. Nothing about a token is ever logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// The claims of a simulator token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// Issued at, epoch seconds.
    pub iat: i64,
    /// Expires at, epoch seconds.
    pub exp: i64,
    /// A unique token id.
    pub jti: String,
    /// The token generation it was issued in.
    pub r#gen: u64,
}

/// Why a token was refused. The messages name no part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
}

impl TokenError {
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Missing => "Authorization header with a JWT is required; call POST /auth",
            TokenError::Malformed => "the JWT in the Authorization header is malformed",
            TokenError::BadSignature => {
                "the JWT in the Authorization header has an invalid signature"
            }
            TokenError::Expired => "the JWT has expired; call POST /auth again",
        }
    }
}

/// Issues and checks tokens.
pub struct Tokens {
    key: hmac::Key,
    generation: AtomicU64,
    ttl: Duration,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl Tokens {
    pub fn new(ttl: Duration) -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a token signing key"))?;
        Ok(Tokens {
            key,
            generation: AtomicU64::new(0),
            ttl,
        })
    }

    /// Invalidate every token issued so far.
    pub fn expire_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A new token for `user`, valid from `now` (epoch seconds) for the TTL.
    pub fn issue(&self, user: &str, now: i64, jti: String) -> String {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now.saturating_add(ttl),
            jti,
            r#gen: self.generation.load(Ordering::SeqCst),
        };
        // Serialising a struct of strings and integers cannot fail.
        let claims = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Check a token at `now` (epoch seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..header.len() + 1 + claims.len()];
        hmac::verify(&self.key, signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(claims)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or(TokenError::Malformed)?;
        if now >= claims.exp || claims.r#gen != self.generation.load(Ordering::SeqCst) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// The token of an `Authorization` header: `Bearer <jwt>` (any case) or the bare `<jwt>` the
/// seed's update page shows.
pub fn bearer(header: &str) -> Option<&str> {
    let header = header.trim();
    if header.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = match header.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return None,
        None => header,
    };
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ttl: u64) -> Tokens {
        Tokens::new(Duration::from_secs(ttl)).unwrap()
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let t = tokens(60);
        let jwt = t.issue("alice", 1_000, "j1".into());
        let claims = t.verify(&jwt, 1_000).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!((claims.iat, claims.exp), (1_000, 1_060));
        assert_eq!(t.verify(&jwt, 1_059).map(|c| c.jti), Ok("j1".to_string()));
        assert_eq!(t.verify(&jwt, 1_060), Err(TokenError::Expired));
    }

    #[test]
    fn expire_all_invalidates_issued_tokens_only() {
        let t = tokens(60);
        let old = t.issue("alice", 1_000, "j1".into());
        t.expire_all();
        assert_eq!(t.verify(&old, 1_000), Err(TokenError::Expired));
        let new = t.issue("alice", 1_000, "j2".into());
        assert!(t.verify(&new, 1_000).is_ok());
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let t = tokens(60);
        let other = tokens(60);
        let jwt = other.issue("alice", 1_000, "j".into());
        assert_eq!(t.verify(&jwt, 1_000), Err(TokenError::BadSignature));
        for bad in ["", "abc", "a.b", "a.b.c.d", "a.b.!!!", "..."] {
            assert!(t.verify(bad, 1_000).is_err(), "{bad:?}");
        }
        // A valid signature over a tampered payload is impossible without the key.
        let jwt = t.issue("alice", 1_000, "j".into());
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let evil = URL_SAFE_NO_PAD
            .encode(r#"{"sub":"root","iat":1000,"exp":99999999999,"jti":"x","gen":0}"#);
        parts[1] = &evil;
        assert_eq!(
            t.verify(&parts.join("."), 1_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn bearer_and_bare_tokens_are_read() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer(""), None);
    }
}
