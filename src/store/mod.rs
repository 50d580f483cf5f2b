//! The only SQL in flowcast: the SQLite ledger of runs, jobs, import rows and
//! Studio calls.
//!
//! The ledger is one SQLite file in WAL mode. Every change a dispatcher makes is
//! guarded by the job's id and expected state, so a stale worker can never
//! overwrite a newer outcome. No transaction is ever held across a network call:
//! a claim commits `dispatching` first, Studio is called, then the outcome is
//! committed.

mod campaigns;
mod jobs;
mod lock;
mod runs;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

pub use campaigns::CampaignRow;
pub use jobs::{BatchCounts, CallSummary, ClaimedJob, ImportItem, JobOutcome, JobRow, SettledJob, StudioCall};
pub use lock::{LedgerLock, LockError};
pub use runs::{NewRun, RunCounts, RunRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("ledger {path}: migration failed: {source}")]
    Migrate { path: String, source: rusqlite_migration::Error },
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("run {0} not found")]
    RunNotFound(i64),
    #[error("ledger: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/0001_ledger.sql")),
        M::up(include_str!("../../migrations/0002_campaigns.sql")),
        M::up(include_str!("../../migrations/0003_operator_view.sql")),
        M::up(include_str!("../../migrations/0004_streaming_import.sql")),
    ])
}

/// A handle on the ledger; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) and migrates the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open { path: shown.clone(), source })?;
        Self::configure(&mut conn).map_err(|source| StoreError::Open { path: shown.clone(), source })?;
        migrations().to_latest(&mut conn).map_err(|source| StoreError::Migrate { path: shown, source })?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)) })
    }

    fn configure(conn: &mut Connection) -> rusqlite::Result<()> {
        // WAL lets readers (status, report) run while a dispatcher writes.
        // synchronous=NORMAL in WAL mode keeps every committed transaction across a
        // process crash (the WAL is written before commit returns); only an OS
        // crash or power loss can drop the last few commits, never corrupt the file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A large run's unique (run, phone) index takes random inserts; with
        // SQLite's default 2 MB page cache they miss the cache and the import
        // crawls. 64 MB keeps a million-row index hot and stays within the
        // memory budget.
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock means a panic mid-statement; SQLite rolled back the
        // statement, so the connection itself is still consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `true` when the ledger accepts a write (for health checks).
    pub fn is_writable(&self) -> bool {
        self.conn().execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_ok()
    }

    /// `PRAGMA integrity_check` → `ok` on a healthy file.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self.conn().query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().expect("migrations apply to an empty database");
    }

    #[test]
    fn a_new_ledger_is_created_in_wal_mode_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/flowcast.db");
        let store = Store::open(&path).unwrap();
        let mode: String = store.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert!(store.is_writable());
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.integrity_check().unwrap(), "ok");
    }
}
