//! Who talks to the gateway: the password type that never prints, a connection's settings, and
//! the identity that decides which connections may share a client and its token.

use std::fmt;

use sha2::{Digest, Sha256};

/// A secret string (a password or a token). Its `Debug` and `Display` print `<redacted>`;
/// [`Secret::expose`] is for the one place that sends it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call it only where the value leaves for the gateway.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where and as whom to talk to the gateway.
#[derive(Clone)]
pub struct Connection {
    /// e.g. `https://gateway.qg1.apps.qualys.com` (or the simulator's `http://127.0.0.1:PORT`).
    pub gateway_url: String,
    pub username: String,
    pub password: Secret,
    /// PEM certificates trusted in addition to the system roots (a private CA, a TLS-inspecting
    /// proxy).
    pub ca_bundle: Option<Vec<u8>>,
}

impl Connection {
    pub fn new(
        gateway_url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Connection {
            gateway_url: gateway_url.into(),
            username: username.into(),
            password: password.into(),
            ca_bundle: None,
        }
    }

    /// Who this connection is: (gateway URL, username, SHA-256 of the password). Two
    /// connections with the same identity may share a client and its token; no others may.
    pub fn identity(&self) -> ConnectionId {
        ConnectionId {
            gateway_url: normalise_gateway(&self.gateway_url),
            username: self.username.clone(),
            password_sha256: Sha256::digest(self.password.expose().as_bytes()).into(),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("gateway_url", &without_userinfo(&self.gateway_url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field(
                "ca_bundle",
                &self
                    .ca_bundle
                    .as_ref()
                    .map(|b| format!("<{} bytes>", b.len())),
            )
            .finish()
    }
}

/// A URL as it may be printed: a `user:password@` part (refused by `Client::new`, but a
/// `Connection` can be printed before that) is blanked out.
fn without_userinfo(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) if before.contains("://") => {
            let scheme = before.split("://").next().unwrap_or_default();
            format!("{scheme}://<redacted>@{after}")
        }
        _ => url.to_owned(),
    }
}

fn normalise_gateway(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// The identity of a [`Connection`]. Its `Debug` and `Display` show `username@gateway` only:
/// the password digest is for comparing, not for printing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    gateway_url: String,
    username: String,
    password_sha256: [u8; 32],
}

impl ConnectionId {
    pub fn gateway_url(&self) -> &str {
        &self.gateway_url
    }

    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}",
            self.username,
            without_userinfo(&self.gateway_url)
        )
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qualys::ProxySettings;

    #[test]
    fn secrets_never_print() {
        let conn = Connection::new("https://gateway.example", "alice", "hunter2-Secret!");
        let printed = format!("{conn:?} {} {:?}", conn.password, conn.identity());
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(
            format!("{}", conn.identity()),
            "alice@https://gateway.example"
        );
        let proxy = ProxySettings {
            https: Some("http://user:proxypass@proxy:3128".into()),
            ..Default::default()
        };
        assert!(!format!("{proxy:?}").contains("proxypass"));
        let in_url = Connection::new("https://bob:pa55word@g.example/x", "bob", "pa55word");
        assert_eq!(
            format!("{in_url:?}"),
            "Connection { gateway_url: \"https://<redacted>@g.example/x\", username: \"bob\", \
             password: <redacted>, ca_bundle: None }"
        );
    }

    #[test]
    fn identity_tells_passwords_apart_and_ignores_a_trailing_slash() {
        let a = Connection::new("https://g.example/", "alice", "one").identity();
        let b = Connection::new("https://g.example", "alice", "one").identity();
        let c = Connection::new("https://g.example", "alice", "two").identity();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
