//! The CLI's memory (job ids, pending creates, script digests) in a versioned JSON file, keyed
//! by target (gateway and user) and resource. The controller keeps the same things in status;
//! the CLI has no status, and without digests every `apply` would resend every script.

use crate::reconcile::{EngineState, StateStore, StoreError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileBody {
    version: u32,
    /// target → "namespace/name" → state
    targets: BTreeMap<String, BTreeMap<String, EngineState>>,
}

/// The whole file, shared by the stores of one run; written by atomic rename on every save.
#[derive(Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    body: Arc<Mutex<FileBody>>,
}

impl StateFile {
    /// Open (or start) the file at `path`; `None` keeps the state in memory only.
    pub fn open(path: Option<&Path>) -> Result<Self, String> {
        let body = match path {
            Some(p) if p.exists() => {
                let bytes =
                    std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
                let body: FileBody = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not a qpm-operator state file: {e}", p.display()))?;
                if body.version != VERSION {
                    return Err(format!(
                        "{}: state file version {} is not supported (expected {VERSION})",
                        p.display(),
                        body.version
                    ));
                }
                body
            }
            _ => FileBody {
                version: VERSION,
                targets: BTreeMap::new(),
            },
        };
        Ok(StateFile {
            path: path.map(Path::to_path_buf),
            body: Arc::new(Mutex::new(body)),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The state of one resource.
    pub fn get(&self, target: &str, key: &str) -> EngineState {
        self.body
            .lock()
            .ok()
            .and_then(|b| b.targets.get(target).and_then(|t| t.get(key)).cloned())
            .unwrap_or_default()
    }

    /// The store of one resource.
    pub fn store(&self, target: &str, key: &str) -> FileStore {
        FileStore {
            file: self.clone(),
            target: target.to_string(),
            key: key.to_string(),
        }
    }

    fn put(&self, target: &str, key: &str, state: &EngineState) -> Result<(), StoreError> {
        let snapshot = {
            let mut body = self
                .body
                .lock()
                .map_err(|_| StoreError("state lock poisoned".into()))?;
            let entry = body.targets.entry(target.to_string()).or_default();
            if *state == EngineState::default() {
                entry.remove(key);
            } else {
                entry.insert(key.to_string(), state.clone());
            }
            match &self.path {
                Some(_) => {
                    serde_json::to_vec_pretty(&*body).map_err(|e| StoreError(e.to_string()))?
                }
                None => return Ok(()),
            }
        };
        if let Some(path) = &self.path {
            write_atomically(path, &snapshot)
                .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// Write to a temporary file beside `path`, then rename: a crash leaves the old or the new file,
/// never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// One resource's slot in a [`StateFile`].
pub struct FileStore {
    file: StateFile,
    target: String,
    key: String,
}

impl StateStore for FileStore {
    fn save<'a>(&'a mut self, state: &'a EngineState) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(self.file.put(
            &self.target,
            &self.key,
            state,
        )))
    }
}
