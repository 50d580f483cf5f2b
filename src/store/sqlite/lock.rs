//! One dispatching process per SQLite ledger: `serve`, `run` and `resume` hold
//! an exclusive lock on `<ledger>.lock` while they work, so two processes can
//! never claim and send the same jobs. The OS releases the lock when the
//! process exits, however it exits.
//!
//! The lock file sits beside the ledger's real path (symbolic links and `..`
//! resolved), so two names for one file take one lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "ledger {ledger} is in use by another flowcast process ({holder}); wait for it to finish, or stop it, then try again"
    )]
    Busy { ledger: String, holder: String },
    #[error("ledger lock {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Held for as long as this process may dispatch from the ledger.
#[derive(Debug)]
pub struct LedgerLock {
    _file: File,
}

impl LedgerLock {
    /// Takes the lock for `ledger`, saying `what` holds it (e.g. "flowcast serve").
    pub fn acquire(ledger: &Path, what: &str) -> Result<Self, LockError> {
        let real = ledger.canonicalize().unwrap_or_else(|_| ledger.to_path_buf());
        let path = PathBuf::from(format!("{}.lock", real.display()));
        let io = |source| LockError::Io { path: path.display().to_string(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder =
                    if holder.trim().is_empty() { "unknown process".into() } else { holder.trim().to_string() };
                return Err(LockError::Busy { ledger: ledger.display().to_string(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the message a second process prints.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(file, "{what}, pid {}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(LedgerLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("flowcast.db");
        let first = LedgerLock::acquire(&ledger, "flowcast serve").unwrap();
        let err = LedgerLock::acquire(&ledger, "flowcast run").unwrap_err().to_string();
        assert!(err.contains("in use by another flowcast process (flowcast serve, pid"), "{err}");
        drop(first);
        LedgerLock::acquire(&ledger, "flowcast run").expect("free again once released");
    }
}
