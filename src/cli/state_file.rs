//! The CLI's memory (job ids, pending creates, script digests) in a versioned JSON file, keyed
//! by target (gateway and user) and resource. The controller keeps the same things in status;
//! the CLI has no status, and without digests every `apply` would resend every script.

use crate::reconcile::{EngineState, StateStore, StoreError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileBody {
    version: u32,
    /// target → "namespace/name" → state
    targets: BTreeMap<String, BTreeMap<String, EngineState>>,
}

struct Shared {
    body: Mutex<FileBody>,
    /// Bumped by every change of `body`.
    changes: AtomicU64,
    /// Held while writing; holds the change count the file on disk contains.
    written: Mutex<u64>,
}

/// The whole file, shared by the stores of one run. Every save is on disk when it returns
/// (the engine relies on that before a create); concurrent saves are grouped into one write.
#[derive(Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The most read from a state file (100,000 jobs take about 50 MB).
const MAX_STATE_BYTES: u64 = 1 << 30;

impl StateFile {
    /// Open (or start) the file at `path`; `None` keeps the state in memory only.
    pub fn open(path: Option<&Path>) -> Result<Self, String> {
        let body = match path {
            Some(p) if p.exists() => {
                let bytes = crate::files::read_regular(p, MAX_STATE_BYTES)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
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
        Ok(Self::with_body(path.map(Path::to_path_buf), body))
    }

    /// A state kept in memory only (nothing is ever written).
    pub fn in_memory() -> Self {
        Self::with_body(
            None,
            FileBody {
                version: VERSION,
                targets: BTreeMap::new(),
            },
        )
    }

    fn with_body(path: Option<PathBuf>, body: FileBody) -> Self {
        StateFile {
            path,
            shared: Arc::new(Shared {
                body: Mutex::new(body),
                changes: AtomicU64::new(0),
                written: Mutex::new(0),
            }),
        }
    }

    /// Where it is written; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The state of one resource.
    pub fn get(&self, target: &str, key: &str) -> EngineState {
        self.shared
            .body
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

    /// Record `state` and write the file (blocking; tests).
    #[cfg(test)]
    fn put(&self, target: &str, key: &str, state: &EngineState) -> Result<(), StoreError> {
        let change = self.record(target, key, state)?;
        self.persist(change)
    }

    /// Change the in-memory body; returns the number of this change.
    fn record(&self, target: &str, key: &str, state: &EngineState) -> Result<u64, StoreError> {
        let mut body = self
            .shared
            .body
            .lock()
            .map_err(|_| StoreError("state lock poisoned".into()))?;
        let entry = body.targets.entry(target.to_string()).or_default();
        if *state == EngineState::default() {
            entry.remove(key);
        } else {
            entry.insert(key.to_string(), state.clone());
        }
        if entry.is_empty() {
            body.targets.remove(target);
        }
        Ok(self.shared.changes.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Make sure the file holds change number `change` (or a later one).
    fn persist(&self, change: u64) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        // One writer at a time, and the snapshot is taken while holding the write lock, so the
        // file only ever moves forward. A save whose change a later snapshot already carried
        // is done without writing again (group commit: 1,000 concurrent creates cost far fewer
        // than 2,000 writes of the whole file).
        let mut written = self
            .shared
            .written
            .lock()
            .map_err(|_| StoreError("state lock poisoned".into()))?;
        if *written >= change {
            return Ok(());
        }
        let (snapshot, upto) = {
            let body = self
                .shared
                .body
                .lock()
                .map_err(|_| StoreError("state lock poisoned".into()))?;
            let bytes = serde_json::to_vec_pretty(&*body).map_err(|e| StoreError(e.to_string()))?;
            (bytes, self.shared.changes.load(Ordering::SeqCst))
        };
        write_atomically(path, &snapshot)
            .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        *written = upto;
        Ok(())
    }
}

/// Write to a temporary file beside `path`, then rename: a crash leaves the old or the new file,
/// never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    // On disk before the rename, or a power cut could leave an empty file under the real name.
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Remove the `<state>.tmp<pid>` files a killed run left beside `path` (a kill between the
/// write and the rename). Call it only while holding the state's lock: then no live run is
/// writing one. Failures are ignored; the files are only clutter.
pub fn remove_stale_temporaries(path: &Path) {
    let (Some(name), dir) = (path.file_name(), path.parent()) else {
        return;
    };
    let dir = dir
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut prefix = name.to_os_string();
    prefix.push(".tmp");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let is_temporary = file_name
            .strip_prefix(prefix.as_str())
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if is_temporary && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// One resource's slot in a [`StateFile`].
pub struct FileStore {
    file: StateFile,
    target: String,
    key: String,
}

impl StateStore for FileStore {
    fn save<'a>(&'a mut self, state: &'a EngineState) -> BoxFuture<'a, Result<(), StoreError>> {
        let file = self.file.clone();
        let recorded = file.record(&self.target, &self.key, state);
        Box::pin(async move {
            let change = recorded?;
            if file.path.is_none() {
                return Ok(());
            }
            // The write (and its fsync) runs off the async threads, so saves of concurrent
            // reconciles overlap and share writes.
            tokio::task::spawn_blocking(move || file.persist(change))
                .await
                .map_err(|e| StoreError(format!("the state writer stopped: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("qpm-state-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("state.json")
    }

    fn with_id(id: &str) -> EngineState {
        EngineState {
            job_id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn saves_survive_a_reopen_and_are_keyed_by_target_and_resource() {
        let path = temp("reopen");
        let file = StateFile::open(Some(&path)).unwrap();
        file.put("t1", "default/a", &with_id("1")).unwrap();
        file.put("t2", "default/a", &with_id("2")).unwrap();
        let again = StateFile::open(Some(&path)).unwrap();
        assert_eq!(again.get("t1", "default/a").job_id.as_deref(), Some("1"));
        assert_eq!(again.get("t2", "default/a").job_id.as_deref(), Some("2"));
        assert_eq!(again.get("t1", "default/b"), EngineState::default());
        // A default state removes the entry.
        again
            .put("t1", "default/a", &EngineState::default())
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"t1\""), "{text}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn concurrent_saves_all_reach_the_file() {
        let path = temp("concurrent");
        let file = StateFile::open(Some(&path)).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let file = file.clone();
                s.spawn(move || {
                    for i in 0..25 {
                        file.put("t", &format!("ns/{t}-{i}"), &with_id(&format!("{t}-{i}")))
                            .unwrap();
                    }
                });
            }
        });
        let again = StateFile::open(Some(&path)).unwrap();
        for t in 0..8 {
            for i in 0..25 {
                assert_eq!(
                    again.get("t", &format!("ns/{t}-{i}")).job_id,
                    Some(format!("{t}-{i}"))
                );
            }
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn temporaries_of_killed_runs_are_removed_and_nothing_else() {
        let path = temp("temporaries");
        let dir = path.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "state.json.tmp123",
            "state.json.tmp9",
            "state.json.tmpx",
            "other.tmp1",
        ] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        std::fs::write(&path, "{}").unwrap();
        remove_stale_temporaries(&path);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["other.tmp1", "state.json", "state.json.tmpx"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn another_version_is_refused() {
        let path = temp("version");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, r#"{"version": 9, "targets": {}}"#).unwrap();
        let err = StateFile::open(Some(&path)).unwrap_err();
        assert!(
            err.ends_with("state file version 9 is not supported (expected 1)"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
