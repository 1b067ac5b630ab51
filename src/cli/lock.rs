//! One `apply` at a time per state file. Two runs sharing `--state` would each miss the other's
//! pending creates and both create every job; so `apply` holds an advisory exclusive lock on
//! `<state>.lock` for its whole run, as terraform locks its state. The operating system drops
//! the lock when the process ends, however it ends, so a crashed run leaves nothing for a human
//! to clean up; the file itself stays (removing it would race with the next locker) and holds
//! who has it — pid, host, start time — so a waiting run can say whom it waits for.

use super::output;
use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a waiting run tries the lock again.
const POLL: Duration = Duration::from_millis(200);

/// Who holds a lock, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// RFC 3339, UTC.
    pub started: String,
}

impl Holder {
    fn me() -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "an unknown host".to_string());
        Holder {
            pid: std::process::id(),
            host,
            started: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .map(|t| t.to_string())
                .unwrap_or_default(),
        }
    }

    fn describe(holder: Option<&Holder>) -> String {
        match holder {
            Some(h) => format!("pid {} on {} (started {})", h.pid, h.host, h.started),
            None => "another process".to_string(),
        }
    }
}

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// `<state>.lock`, beside the state file.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    state.with_file_name(name)
}

/// Take the lock of the state file `state`, waiting up to `timeout` for another run to release
/// it (saying once on stderr whom it waits for); `Duration::ZERO` fails at once. The error
/// names the holder.
pub async fn acquire(state: &Path, timeout: Duration) -> anyhow::Result<StateLock> {
    let path = lock_path(state);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the folder of {}", path.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // A timeout too large for the clock waits for ever.
    let deadline = Instant::now().checked_add(timeout);
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let holder = Holder::describe(read_holder(&mut file).as_ref());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "state file {} is locked by {holder}: another apply is using it; run again when \
                 it has finished, or wait longer with --lock-timeout SECONDS (now {}s)",
                state.display(),
                timeout.as_secs()
            );
        }
        if !announced {
            output::err_line(&format!(
                "state file {} is locked by {holder}; waiting up to {}s (--lock-timeout)",
                state.display(),
                timeout.as_secs()
            ));
            announced = true;
        }
        let left = deadline.map_or(POLL, |d| d.saturating_duration_since(Instant::now()));
        tokio::time::sleep(POLL.min(left)).await;
    }
    write_holder(&mut file, &Holder::me())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(StateLock { _file: file })
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    // A lock file is a few dozen bytes; anything longer is not ours.
    file.take(4096).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_holder(file: &mut File, holder: &Holder) -> std::io::Result<()> {
    let text = serde_json::to_string(holder).map_err(std::io::Error::other)?;
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_lock_names_the_first_holder_and_a_released_lock_is_free() {
        let dir = std::env::temp_dir().join(format!("qpm-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("state.json");
        let first = acquire(&state, Duration::ZERO).await.unwrap();
        let written: Holder =
            serde_json::from_str(&std::fs::read_to_string(lock_path(&state)).unwrap()).unwrap();
        assert_eq!(written.pid, std::process::id());
        let err = acquire(&state, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("is locked by pid {} on ", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = acquire(&state, Duration::ZERO).await;
        assert!(again.is_ok(), "{again:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
