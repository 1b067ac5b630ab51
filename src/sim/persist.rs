//! The state file: `{"version": 1, "jobs": [...], "scripts": {path: base64}}`.
//!
//! Written by atomic rename (a temporary file next to it, then `rename`), so a crash leaves the
//! old or the new state, never half of one. Tokens are never written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::qualys::JobBody;

pub const VERSION: u32 = 1;

#[derive(Serialize)]
struct StateOut<'a> {
    version: u32,
    jobs: Vec<&'a JobBody>,
    scripts: BTreeMap<&'a str, String>,
}

#[derive(Deserialize)]
struct StateIn {
    version: u32,
    #[serde(default)]
    jobs: Vec<JobBody>,
    #[serde(default)]
    scripts: BTreeMap<String, String>,
}

/// What a state file holds.
pub struct Loaded {
    pub jobs: Vec<JobBody>,
    pub scripts: BTreeMap<String, Vec<u8>>,
}

/// Read a state file; a missing file is an empty state (it is created on the first save).
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let bytes = match crate::files::read_regular(path, 1 << 30) {
        Ok(b) => b,
        Err(crate::files::ReadError::NotFound) => {
            return Ok(Loaded {
                jobs: Vec::new(),
                scripts: BTreeMap::new(),
            });
        }
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let state: StateIn = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a simulator state file", path.display()))?;
    if state.version != VERSION {
        anyhow::bail!(
            "{} has version {}; this simulator reads version {VERSION}",
            path.display(),
            state.version
        );
    }
    if let Some(i) = state.jobs.iter().position(|j| j.job_id().is_none()) {
        anyhow::bail!("{}: jobs[{i}] has no id", path.display());
    }
    let mut scripts = BTreeMap::new();
    for (key, content) in state.scripts {
        let bytes = STANDARD
            .decode(content.as_bytes())
            .with_context(|| format!("{}: scripts[{key:?}] is not base64", path.display()))?;
        scripts.insert(key, bytes);
    }
    Ok(Loaded {
        jobs: state.jobs,
        scripts,
    })
}

/// The file content for a snapshot.
pub fn encode(
    jobs: &[Arc<JobBody>],
    scripts: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    let out = StateOut {
        version: VERSION,
        jobs: jobs.iter().map(|j| &**j).collect(),
        scripts: scripts
            .iter()
            .map(|(k, v)| (k.as_str(), STANDARD.encode(v)))
            .collect(),
    };
    Ok(serde_json::to_vec_pretty(&out)?)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write `content` to `path` by atomic rename.
pub fn write_atomic(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let temp = temp_path(path);
    std::fs::write(&temp, content).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips() {
        let dir = std::env::temp_dir().join(format!("qpm-sim-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let job: JobBody =
            serde_json::from_value(serde_json::json!({"id": "j1", "name": "n", "futureKey": 1}))
                .unwrap();
        let scripts = BTreeMap::from([("c/a/Script".to_string(), b"ls -l".to_vec())]);
        write_atomic(&path, &encode(&[Arc::new(job.clone())], &scripts).unwrap()).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.jobs, vec![job]);
        assert_eq!(loaded.scripts, scripts);
        assert!(!temp_path(&path).exists());

        std::fs::write(&path, br#"{"version": 2, "jobs": []}"#).unwrap();
        assert!(load(&path).is_err());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).is_err());
        assert!(load(&dir.join("missing.json")).unwrap().jobs.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
