//! Digests: how the operator remembers what it wrote without storing it. Scripts cannot be
//! read back from Qualys (the API returns a storage path), so the digest of the bytes last
//! written is what the spec's script is compared with.

use crate::qualys::ScriptKind;
use sha2::{Digest, Sha256};
use std::fmt;

/// `sha256:<hex>` of some bytes.
pub fn script_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a JSON value's canonical serialisation.
pub fn value_digest(value: &serde_json::Value) -> String {
    // serde_json writes maps in insertion order; normalised values are built in a fixed order,
    // so equal values give equal bytes.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    script_digest(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Where a script sits: `pre[0].script`, `post[1].detectionScript`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScriptKey {
    pub post: bool,
    pub index: usize,
    pub detection: bool,
}

impl ScriptKey {
    pub fn pre(index: usize, kind: ScriptKind) -> Self {
        ScriptKey {
            post: false,
            index,
            detection: kind == ScriptKind::DetectionScript,
        }
    }

    pub fn post(index: usize, kind: ScriptKind) -> Self {
        ScriptKey {
            post: true,
            index,
            detection: kind == ScriptKind::DetectionScript,
        }
    }

    /// The key for the action list named as in the API (`preDeployActions`/`postDeployActions`).
    pub fn for_list(list: &str, index: usize, kind: ScriptKind) -> Self {
        if list == "postDeployActions" {
            Self::post(index, kind)
        } else {
            Self::pre(index, kind)
        }
    }
}

impl fmt::Display for ScriptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = if self.post { "post" } else { "pre" };
        let field = if self.detection {
            "detectionScript"
        } else {
            "script"
        };
        write!(f, "{list}[{}].{field}", self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_keys() {
        assert_eq!(
            script_digest(b"ls"),
            "sha256:c7b68ac37f364473e922936708e7f43c293dd07b295171566c07ff5fe024fab9"
        );
        assert_eq!(
            ScriptKey::pre(0, ScriptKind::Script).to_string(),
            "pre[0].script"
        );
        assert_eq!(
            ScriptKey::post(2, ScriptKind::DetectionScript).to_string(),
            "post[2].detectionScript"
        );
        assert_eq!(script_digest(b"").len(), "sha256:".len() + 64);
    }
}
