//! The SQLite backend: one file in WAL mode, a writer connection and a reader
//! connection, migrations applied at open, and the lock file that keeps one
//! dispatching process per ledger.
//!
//! Every function here is blocking; [`super::Store`] runs them on the blocking
//! pool, so no runtime worker ever waits on SQLite or its locks. WAL lets the
//! reader (status, reports, the API, due-time checks) go on while the writer
//! commits an import batch.

pub(super) mod campaigns;
mod checkpointer;
pub(super) mod checks;
pub(super) mod executions;
pub(super) mod jobs;
pub(super) mod lock;
pub(super) mod outbox;
pub(crate) mod purge;
pub(super) mod pushed;
pub(super) mod runs;
pub(super) mod summaries;
pub(super) mod suppressions;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use super::{Result, StoreError};

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../../migrations/0001_ledger.sql")),
        M::up(include_str!("../../../migrations/0002_campaigns.sql")),
        M::up(include_str!("../../../migrations/0003_operator_view.sql")),
        M::up(include_str!("../../../migrations/0004_streaming_import.sql")),
        M::up(include_str!("../../../migrations/0005_expiry.sql")),
        M::up(include_str!("../../../migrations/0006_outcomes.sql")),
        M::up(include_str!("../../../migrations/0007_suppressions.sql")),
        M::up(include_str!("../../../migrations/0008_reason_forms.sql")),
        M::up(include_str!("../../../migrations/0009_contact_limits.sql")),
        M::up(include_str!("../../../migrations/0011_pushed_contacts.sql")),
        M::up(include_str!("../../../migrations/0012_notify.sql")),
        M::up(include_str!("../../../migrations/0013_retention.sql")),
        M::up(include_str!("../../../migrations/0014_job_pages.sql")),
        M::up(include_str!("../../../migrations/0015_run_summaries.sql")),
        M::up(include_str!("../../../migrations/0016_jobs_version.sql")),
        M::up(include_str!("../../../migrations/0017_finished_index.sql")),
        M::up(include_str!("../../../migrations/0018_outbox_counts.sql")),
        M::up(include_str!("../../../migrations/0019_outcome_index.sql")),
        M::up(include_str!("../../../migrations/0020_claim_and_page_indexes.sql")),
        M::up(include_str!("../../../migrations/0021_one_phone_index.sql")).foreign_key_check(),
        M::up(include_str!("../../../migrations/0022_execution_key.sql")),
        M::up(include_str!("../../../migrations/0023_purge_indexes.sql")),
        M::up(include_str!("../../../migrations/0024_create_on_row.sql")),
        M::up(include_str!("../../../migrations/0025_parameter_keys.sql")),
        M::up(include_str!("../../../migrations/0026_event_triggers_off_hot_columns.sql")),
        M::up(include_str!("../../../migrations/0027_execution_keys.sql")),
    ])
}

/// How long after an import's last hand-off the ledger counts as shared.
const SHARED_FOR_MS: u64 = 1_000;

/// An open SQLite ledger.
pub(super) struct Sqlite {
    /// Declared first so that it stops before the other connections close.
    checkpointer: checkpointer::Checkpointer,
    path: PathBuf,
    writer: parking_lot::Mutex<Connection>,
    /// Threads waiting for `writer`: a long write (an import batch) looks at
    /// it to let a waiting one go first (see [`Sqlite::writes_waiting`]).
    waiting: AtomicUsize,
    /// When an import batch last handed the writer to another write, in
    /// milliseconds since `opened` (0: never).
    handed_over_at: AtomicU64,
    opened: std::time::Instant,
    reader: Mutex<Connection>,
    /// Reads that may take seconds (counting a big run for its summary,
    /// ledger-wide counts), on a connection of their own so that they never
    /// hold up the dispatcher's pre-send checks on `reader`.
    reports: Mutex<Connection>,
    /// Pre-send checks waiting for `reader`, answered together.
    pub(super) checks: std::sync::Arc<crate::store::checks::Checks>,
}

impl Sqlite {
    /// Opens (creating if needed) and migrates the ledger at `path`.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let open_error = |source| StoreError::Open { path: shown.clone(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_error(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let mut writer = Connection::open(path).map_err(open_error)?;
        configure(&mut writer).map_err(open_error)?;
        // A migration that builds an index over every job sorts them all: on
        // a ledger of ten million jobs, with the sort's runs kept in memory,
        // the process peaked at 545 MB (migration 0020 in the `sqlite3`
        // shell), with them in a temporary file at 142 MB.
        writer.pragma_update(None, "temp_store", "FILE").map_err(open_error)?;
        // A migration that builds a table again drops the old one, which
        // with foreign keys on would first delete every job one by one and
        // fail on the rows that reference them; such a migration checks the
        // references itself before it commits (see 0021_one_phone_index.sql).
        writer.pragma_update(None, "foreign_keys", "OFF").map_err(open_error)?;
        migrations().to_latest(&mut writer).map_err(|source| StoreError::Migrate { path: shown.clone(), source })?;
        writer.pragma_update(None, "foreign_keys", "ON").map_err(open_error)?;
        writer.pragma_update(None, "temp_store", "MEMORY").map_err(open_error)?;
        // The checkpointer's thread copies most of the log back; the writer
        // checkpoints only a long one (see `checkpointer`).
        writer.pragma_update(None, "wal_autocheckpoint", checkpointer::WRITER_PAGES).map_err(open_error)?;
        let mut reader = Connection::open(path).map_err(open_error)?;
        configure(&mut reader).map_err(open_error)?;
        let mut reports = Connection::open(path).map_err(open_error)?;
        configure(&mut reports).map_err(open_error)?;
        // Its reads are scans of one run's entries in index order: a big
        // cache would only hold pages they never read again.
        reports.pragma_update(None, "cache_size", -8_192).map_err(open_error)?;
        // Counting a million-job run's outcome values groups them in a
        // temporary b-tree; held in memory it took 83 MB (in the `sqlite3`
        // shell; serve peaked at 169-208 MB while keeping summaries at
        // start), in a temporary file beyond the cache 21 MB.
        reports.pragma_update(None, "temp_store", "FILE").map_err(open_error)?;
        let copier = Connection::open(path).map_err(open_error)?;
        let checkpointer = checkpointer::Checkpointer::start(copier, path)
            .map_err(|e| open_error(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(Sqlite {
            checkpointer,
            path: path.to_path_buf(),
            writer: parking_lot::Mutex::new(writer),
            waiting: AtomicUsize::new(0),
            handed_over_at: AtomicU64::new(0),
            opened: std::time::Instant::now(),
            reader: Mutex::new(reader),
            reports: Mutex::new(reports),
            checks: Default::default(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The connection for changes (one writer at a time, as SQLite allows).
    pub(super) fn writer(&self) -> Writer<'_> {
        // A panic mid-statement leaves the lock free (parking_lot does not
        // poison); SQLite rolled the statement back, so the connection itself
        // is still consistent.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let conn = self.writer.lock();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        Writer { conn: Some(conn), checkpointer: &self.checkpointer }
    }

    /// `true` while another thread waits for the writer. An import batch
    /// held it for tens of milliseconds (80 ms at the median for 2,000 rows
    /// beside a busy dispatcher, as one transaction): it commits what it
    /// wrote and hands the writer over when this says another write (a
    /// claim, an outcome, a cancel) is waiting.
    pub(super) fn writes_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Records that an import batch handed the writer to a waiting write.
    pub(super) fn handed_over(&self) {
        let since_open = self.opened.elapsed().as_millis().max(1);
        self.handed_over_at.store(u64::try_from(since_open).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// `true` when an import batch handed the writer over within the last
    /// second: other writes (a dispatcher's claims and outcomes) share the
    /// ledger, and a large transaction would keep them waiting.
    pub(super) fn shared_lately(&self) -> bool {
        self.shared_at(u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// [`Sqlite::shared_lately`] at `now`, in milliseconds since `opened`.
    fn shared_at(&self, now: u64) -> bool {
        let at = self.handed_over_at.load(Ordering::Relaxed);
        at != 0 && now.saturating_sub(at) < SHARED_FOR_MS
    }

    /// The connection for reads; it sees every committed change.
    pub(super) fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the pre-send checks waiting, and those that come meanwhile,
    /// on the reader.
    pub(super) fn answer_checks(&self, draining: crate::store::checks::Draining) {
        checks::drain(draining, || self.reader())
    }

    /// The connection for long reads (see the field).
    pub(super) fn reports(&self) -> MutexGuard<'_, Connection> {
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `true` when the ledger accepts a write (for health checks).
    pub(super) fn is_writable(&self) -> bool {
        self.writer().execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_ok()
    }

    /// Copies the write-ahead log into the database and empties it, so the
    /// old pages a purge replaced do not linger in the log either. `false`
    /// when a reader kept it from finishing within the busy timeout (the
    /// log's old pages are then overwritten as the log is reused). The
    /// checkpointer's thread is kept from starting a checkpoint of its own
    /// meanwhile: SQLite would refuse this one at once rather than wait.
    pub(super) fn checkpoint_and_empty_log(&self) -> Result<bool> {
        let _thread = self.checkpointer.hold();
        Ok(!checkpointer::log_state(&self.writer(), "TRUNCATE")?.busy)
    }

    /// `PRAGMA integrity_check` → `ok` on a healthy file.
    pub(super) fn integrity_check(&self) -> Result<String> {
        Ok(self.reader().query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// The writer connection, held: it derefs to the connection and, when
/// dropped, frees it and tells the checkpointer that the log grew.
pub(super) struct Writer<'a> {
    /// `Some` until dropped or handed over.
    conn: Option<parking_lot::MutexGuard<'a, Connection>>,
    checkpointer: &'a checkpointer::Checkpointer,
}

impl Writer<'_> {
    /// Frees the writer for the thread that has waited longest for it: a
    /// plain unlock would let this thread take it straight back.
    pub(super) fn unlock_fair(mut self) {
        if let Some(conn) = self.conn.take() {
            parking_lot::MutexGuard::unlock_fair(conn);
        }
    }
}

impl Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        drop(self.conn.take());
        self.checkpointer.wrote();
    }
}

fn configure(conn: &mut Connection) -> rusqlite::Result<()> {
    // WAL lets readers (status, report) run while a dispatcher writes.
    // synchronous=NORMAL in WAL mode keeps every committed transaction across a
    // process crash (the WAL is written before commit returns); only an OS
    // crash or power loss can drop the last few commits, never corrupt the file.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A large run's unique (phone, run) index takes random inserts; with
    // SQLite's default 2 MB page cache they miss the cache and the import
    // crawls. 64 MB keeps a million-row index hot and stays within the
    // memory budget.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // What an update or delete leaves behind in a page (an old version of a
    // row, with its phone and Parameters) is overwritten with zeros, at no
    // extra I/O: a purge then leaves no copy of what it removed in the file.
    // (A purge also zeroes the pages it frees: see `purge`.)
    conn.pragma_update(None, "secure_delete", "FAST")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Plans never depend on the values bound: without this, SQLite marks a
    // statement to be compiled again whenever a value it compared with a
    // partial index's condition while planning changes. A claim's due read
    // binds the time of the claim, so it was compiled afresh at every claim
    // (28,000 instructions per Execution in a callgrind profile of dispatch).
    // Every partial index is reached through conditions written as literals.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Every statement flowcast runs, kept compiled (rusqlite keeps 16 by
    // default, fewer than the dispatcher alone cycles through).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// `per_state(state)` for each job state, joined by `UNION ALL`. No index
/// holds a run's jobs in id order: `jobs_page` holds them by (run, state),
/// the id after, so what wants the run's jobs by id reads each state's range
/// (or seek) and combines them.
fn union_over_job_states(per_state: impl Fn(&str) -> String) -> String {
    crate::domain::JobState::ALL.iter().map(|state| per_state(state.as_str())).collect::<Vec<_>>().join(" UNION ALL ")
}

/// How many compiled statements each connection keeps.
const STATEMENT_CACHE: usize = 256;

/// Runs one statement through the connection's statement cache. Compiling an
/// UPDATE of `jobs` that names `reason` or `execution_status` also compiles
/// the outbox triggers on that table, which costs more than running it:
/// compiled afresh for each outcome, it took a fifth of the dispatcher's CPU
/// in a profile.
pub(super) fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Starts a transaction that takes the write lock at once (`BEGIN
/// IMMEDIATE`). A deferred transaction that reads first and writes later fails
/// at once with "database is locked" when another connection committed in
/// between (its snapshot can no longer be written from), without waiting:
/// an immediate one waits its turn under the busy timeout instead.
pub(super) fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// Reads a text column into its domain type; a value the type refuses means
/// the ledger was changed by hand or by a newer flowcast.
pub(super) fn parsed<T: FromStr<Err = String>>(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    text.parse::<T>().map_err(|e| corrupt(idx, e))
}

pub(super) fn corrupt(idx: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, message.into())
}

/// Milliseconds as SQLite keeps them; a duration too long for an `i64` is
/// kept as the longest one (no negative bounds from an overflow).
pub(super) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    /// A closed ledger in a new folder, upgraded through migration file
    /// `through` (the number in its name) and holding what `seed` writes,
    /// for `Sqlite::open` to upgrade the rest of the way.
    fn ledger_through(through: usize, seed: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowcast.db");
        let mut conn = Connection::open(&path).unwrap();
        configure(&mut conn).unwrap();
        // The library counts migrations, and there is no file 0010.
        let version = if through >= 11 { through - 1 } else { through };
        migrations().to_version(&mut conn, version).unwrap();
        conn.execute_batch(seed).unwrap();
        (dir, path)
    }

    #[test]
    fn migrations_are_valid() {
        migrations().validate().expect("migrations apply to an empty database");
    }

    /// Events left behind by purges before the deliverer deleted them (done
    /// with, their run purged) go at the upgrade; an event still to be
    /// delivered, and every event of a run not purged, stay.
    #[test]
    fn an_upgrade_deletes_the_events_purges_left_behind_once_delivered() {
        let (_dir, path) = ledger_through(
            22,
            "INSERT INTO runs (id, campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                               on_conflict, state, created_at, purged_at) \
             VALUES (1, 'a', 'sms', 'manual', 'k1', 0, 'a.csv', 'FW1', '+15550000000', 'skip', 'finished', 0, 9), \
                    (2, 'b', 'sms', 'manual', 'k2', 0, 'b.csv', 'FW1', '+15550000000', 'skip', 'finished', 0, NULL); \
             INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at, \
                                 delivered_at, gave_up_at) \
             VALUES ('purged_delivered', 'job.sent', 1, 10, 'u', '{\"phone\":\"+14155550100\"}', 0, 0, 5, NULL), \
                    ('purged_gave_up', 'run.finished', 1, NULL, 'u', '{}', 0, 0, NULL, 5), \
                    ('purged_pending', 'job.sent', 1, 11, 'u', '{}', 0, 0, NULL, NULL), \
                    ('kept_delivered', 'job.sent', 2, 12, 'u', '{}', 0, 0, 5, NULL);",
        );

        let ledger = Sqlite::open(&path).unwrap();
        let conn = ledger.writer();
        let left: Vec<String> = conn
            .prepare("SELECT event_id FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(left, ["purged_pending", "kept_delivered"]);
        let tally: (i64, i64) =
            conn.query_row("SELECT delivered, gave_up FROM outbox_tally", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(tally, (1, 0), "the tally follows the deletes");
    }

    /// A ledger from before creates were kept on their job rows keeps its
    /// create records as rows: each job's trail shows its create once, and a
    /// job sent after the upgrade keeps its own on its row.
    #[test]
    fn an_upgraded_ledger_shows_each_create_once_whichever_way_it_was_kept() {
        let (_dir, path) = ledger_through(
            23,
            "INSERT INTO runs (id, campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                               on_conflict, state, created_at) \
             VALUES (1, 'a', 'sms', 'manual', 'k1', 0, 'a.csv', 'FW1', '+15550000000', 'skip', 'active', 0); \
             INSERT INTO jobs (id, run_id, phone, line, zone, parameters, state, due_at, created_at, updated_at, \
                               sent_at, execution_sid) \
             VALUES (1, 1, '+14155550100', 2, 'UTC', '{}', 'sent', 0, 0, 0, 5, 'FN01'), \
                    (2, 1, '+14155550101', 3, 'UTC', '{}', 'sent', 0, 0, 0, 6, 'FN02'); \
             INSERT INTO studio_calls (run_id, job_id, at, operation, request, outcome, execution_sid) \
             VALUES (1, 1, 5, 'create', '', 'ok', 'FN01');",
        );

        let ledger = Sqlite::open(&path).unwrap();
        let mut conn = ledger.writer();
        // Job 2 is sent after the upgrade: its create is kept on its row.
        conn.execute("UPDATE jobs SET create_on_row = 1 WHERE id = 2", []).unwrap();
        for (job, sid) in [(1, "FN01"), (2, "FN02")] {
            let trail = jobs::calls_for_job(&conn, job).unwrap();
            let seen: Vec<(&str, &str, Option<&str>)> =
                trail.iter().map(|c| (c.operation.as_str(), c.outcome.as_str(), c.execution_sid.as_deref())).collect();
            assert_eq!(seen, vec![("create", "ok", Some(sid))], "job {job}");
        }
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM studio_call_trail", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2);
        // A purge counts both and leaves neither.
        conn.execute("UPDATE runs SET state = 'finished', finished_at = 1 WHERE id = 1", []).unwrap();
        assert_eq!(purge::count_run(&conn, 1).unwrap(), (2, 2, 0));
        let batch = purge::purge_jobs(&mut conn, 1, "salt", 0, 10).unwrap();
        assert_eq!((batch.jobs, batch.calls), (2, 2));
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM studio_call_trail", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0, "a purge leaves no create of its jobs, either way kept");
    }

    /// The migration that builds the jobs table again with one index by
    /// phone keeps every job as it was, the rows that point at jobs, and the
    /// triggers that write their events; the phone is still once per run.
    #[test]
    fn a_ledger_upgraded_to_one_phone_index_keeps_its_jobs_references_and_events() {
        let (_dir, path) = ledger_through(
            20,
            "INSERT INTO runs (id, campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                               on_conflict, state, created_at, notify_url, notify_events) \
             VALUES (1, 'a', 'sms', 'manual', 'k1', 0, 'a.csv', 'FW1', '+15550000000', 'skip', 'running', 0, \
                     'http://127.0.0.1:9/hook', ',job.failed,run.finished,'), \
                    (2, 'b', 'sms', 'manual', 'k2', 0, 'b.csv', 'FW1', '+15550000000', 'skip', 'running', 0, NULL, NULL); \
             INSERT INTO jobs (id, run_id, phone, line, zone, parameters, due_at, created_at, updated_at, \
                               state, execution_sid, sent_at, outcome_state, dedupe_key) \
             VALUES (10, 1, '+14155550100', 2, 'UTC', '{}', 5, 1, 1, 'sent', 'FN1', 7, 'open', 'x'), \
                    (11, 1, '+14155550101', 3, 'UTC', '{\"a\":1}', 5, 1, 1, 'pending', NULL, NULL, NULL, NULL), \
                    (12, 2, '+14155550100', 2, 'Europe/Paris', '{}', 6, 1, 1, 'pending', NULL, NULL, NULL, NULL); \
             INSERT INTO studio_calls (run_id, job_id, at, operation, request, outcome) VALUES (1, 10, 7, 'create', '{}', 'created'); \
             INSERT INTO push_keys (campaign, key, job_id, created_at) VALUES ('b', 'p1', 12, 1);",
        );
        let dump = |c: &Connection| -> Vec<String> {
            c.prepare("SELECT * FROM jobs ORDER BY id")
                .unwrap()
                .query_map([], |r| {
                    Ok((0..33).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect::<Vec<_>>().join("|"))
                })
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        let before = dump(&Connection::open(&path).unwrap());

        let ledger = Sqlite::open(&path).unwrap();
        let conn = ledger.writer();
        assert_eq!(dump(&conn), before);
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'jobs' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(!indexes.iter().any(|i| i == "jobs_phone" || i.starts_with("sqlite_autoindex")), "{indexes:?}");
        for kept in ["jobs_phone_run", "jobs_claim", "jobs_page", "jobs_outcome_open", "jobs_dedupe", "jobs_finished"] {
            assert!(indexes.iter().any(|i| i == kept), "{kept} in {indexes:?}");
        }
        // Nothing in a multi-row INSERT into jobs may abort it half-way, so
        // SQLite keeps no statement journal for it: the foreign key to runs
        // is checked at commit and no trigger fires on INSERT.
        let table: String =
            conn.query_row("SELECT sql FROM sqlite_schema WHERE name = 'jobs'", [], |r| r.get(0)).unwrap();
        assert!(table.contains("REFERENCES runs (id) DEFERRABLE INITIALLY DEFERRED"), "{table}");
        let on_insert: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'jobs' AND sql LIKE '%AFTER INSERT%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(on_insert, 0);
        let foreign_keys: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(foreign_keys, 1, "on again after the migrations");
        assert!(
            conn.prepare("PRAGMA foreign_key_check").unwrap().query([]).unwrap().next().unwrap().is_none(),
            "no reference left pointing nowhere"
        );
        let insert = "INSERT OR IGNORE INTO jobs (run_id, phone, line, zone, parameters, due_at, created_at, updated_at) \
                      VALUES (?1, ?2, 9, 'UTC', '{}', 0, 0, 0)";
        assert_eq!(conn.execute(insert, params![1, "+14155550101"]).unwrap(), 0, "once per run");
        assert_eq!(conn.execute(insert, params![2, "+14155550101"]).unwrap(), 1, "and once in another run");
        // A job of run 1 that fails writes its event (the trigger was made again).
        conn.execute("UPDATE jobs SET state = 'failed', reason = 'x' WHERE id = 11", []).unwrap();
        let events: i64 = conn.query_row("SELECT COUNT(*) FROM outbox WHERE job_id = 11", [], |r| r.get(0)).unwrap();
        assert_eq!(events, 1);
        conn.execute("UPDATE runs SET state = 'finished' WHERE id = 1", []).unwrap();
        let body: String =
            conn.query_row("SELECT body FROM outbox WHERE event_type = 'run.finished'", [], |r| r.get(0)).unwrap();
        assert!(body.contains(r#""jobs":{"failed":1,"sent":1}"#), "{body}");
        // A job of a run that is not there is refused at commit.
        let mut writer = conn;
        let tx = writer.transaction().unwrap();
        tx.execute(
            "INSERT INTO jobs (run_id, phone, line, zone, parameters, due_at, created_at, updated_at) \
             VALUES (77, '+14155550199', 2, 'UTC', '{}', 0, 0, 0)",
            [],
        )
        .unwrap();
        assert!(tx.commit().is_err());
        let conn = writer;
        assert_eq!(
            conn.query_row("SELECT COUNT(*) FROM jobs WHERE run_id = 77", [], |r| r.get::<_, i64>(0)).unwrap(),
            0
        );
        // A pointer at a job that is not there is still refused.
        let orphan =
            conn.execute("INSERT INTO push_keys (campaign, key, job_id, created_at) VALUES ('b', 'p2', 999, 1)", []);
        assert!(orphan.is_err());
        // The phone's contacts across runs are one range of the unique index.
        let plan: String = conn
            .prepare("EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE phone = ?1 AND id != ?2")
            .unwrap()
            .query_map(params!["+14155550100", 0], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
            .join("; ");
        assert!(plan.contains("jobs_phone_run (phone=?)"), "{plan}");
        drop(conn);
        assert_eq!(ledger.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_new_ledger_is_created_in_wal_mode_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/flowcast.db");
        let ledger = Sqlite::open(&path).unwrap();
        let mode: String = ledger.reader().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert!(ledger.is_writable());
        drop(ledger);
        let again = Sqlite::open(&path).unwrap();
        assert_eq!(again.integrity_check().unwrap(), "ok");
    }

    /// The long reads' sorts and groupings spill to a temporary file beyond
    /// the connection's small cache, not to memory: a million-job run's
    /// outcome counts grouped 83 MB in memory. The other connections keep
    /// theirs in memory (small, frequent: a claim, a purge batch).
    #[test]
    fn the_reports_connection_spills_its_temporary_b_trees_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let temp_store = |c: &Connection| c.query_row("PRAGMA temp_store", [], |r| r.get::<_, i64>(0)).unwrap();
        // 1 is FILE, 2 MEMORY.
        assert_eq!(temp_store(&ledger.reports()), 1);
        assert_eq!((temp_store(&ledger.writer()), temp_store(&ledger.reader())), (2, 2));
        // And each plans without the values bound (see `configure`).
        let qpsg = |c: &Connection| c.db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG).unwrap();
        assert!(qpsg(&ledger.writer()) && qpsg(&ledger.reader()) && qpsg(&ledger.reports()));
    }

    /// The query plan of `sql`, its parameters left NULL (plans never depend
    /// on bound values: see `configure`), as one line.
    pub(super) fn plan_of(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = stmt.raw_query();
        let mut plan = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            plan.push(row.get::<_, String>(3).unwrap());
        }
        plan.join("; ")
    }

    /// What asks whether a run still awaits outcomes (its summary, the runs
    /// whose summary may be kept) reads `jobs_outcome_open`, which holds the
    /// jobs whose outcome is awaited and no others: a job whose outcome was
    /// read keeps no entry (it kept one in the index by outcome state).
    #[test]
    fn only_awaited_outcomes_are_in_the_index_of_awaited_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let conn = ledger.reader();
        for (what, sql) in [("open outcomes", summaries::OPEN_OUTCOMES), ("summaries", summaries::SETTLED_WITHOUT)] {
            let plan = plan_of(&conn, sql);
            assert!(plan.contains("INDEX jobs_outcome_open (run_id=?)"), "{what}: {plan}");
        }
        let sql: String =
            conn.query_row("SELECT sql FROM sqlite_master WHERE name = 'jobs_outcome_open'", [], |r| r.get(0)).unwrap();
        assert!(sql.ends_with("WHERE outcome_state = 'open'"), "{sql}");
        let old: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'jobs_outcome_run'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(old, 0);
    }

    /// A SID Studio names finds its job through `execution_keys`, which
    /// holds eight of the SID's characters (47 bytes a job with the whole
    /// SID); two SIDs that share them each find their own job.
    #[test]
    fn a_sid_finds_its_job_through_eight_of_its_characters() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let conn = ledger.writer();
        let by_sid = format!("SELECT id FROM jobs WHERE {} AND state = 'sent'", executions::BY_EXECUTION);
        let plan = plan_of(&conn, &by_sid);
        assert!(plan.contains("SEARCH execution_keys USING PRIMARY KEY (key=?)"), "{plan}");
        assert!(plan.contains("SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"), "{plan}");
        // So does the UPDATE that records an Execution's end.
        let end = format!("UPDATE jobs SET updated_at = 1 WHERE {} AND state = 'sent'", executions::BY_EXECUTION);
        let plan = plan_of(&conn, &end);
        assert!(plan.contains("SEARCH execution_keys USING PRIMARY KEY (key=?)"), "{plan}");
        assert!(plan.contains("SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"), "{plan}");
        conn.execute_batch(
            "INSERT INTO runs (id, campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                               on_conflict, state, created_at) \
             VALUES (1, 'c', 'reminder', 'manual', 'k', 0, 'c.csv', 'FW0', '+15550000000', 'skip', 'active', 0); \
             INSERT INTO jobs (id, run_id, phone, line, zone, parameters, state, due_at, created_at, updated_at, \
                               execution_sid) \
             VALUES (1, 1, '+12015550001', 2, 'UTC', '{}', 'sent', 0, 0, 0, 'FN0123456789aaaa'), \
                    (2, 1, '+12015550002', 3, 'UTC', '{}', 'sent', 0, 0, 0, 'FN0123456789bbbb');",
        )
        .unwrap();
        let mut key = conn.prepare(executions::KEY_OF_SENT).unwrap();
        for (job, sid) in [(1, "FN0123456789aaaa"), (2, "FN0123456789bbbb")] {
            key.execute(rusqlite::params![job, sid]).unwrap();
        }
        let keys: Vec<(String, i64)> = conn
            .prepare("SELECT key, job_id FROM execution_keys")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(keys, [("01234567".to_string(), 1), ("01234567".to_string(), 2)]);
        for (sid, job) in [("FN0123456789aaaa", 1), ("FN0123456789bbbb", 2)] {
            let found: Vec<i64> = conn
                .prepare(&by_sid)
                .unwrap()
                .query_map([sid], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(found, [job], "{sid}");
        }
    }

    /// A ledger written before the SID keys had a table of their own gets a
    /// key for each sent job and no other, and loses the index on the
    /// expression; each SID still finds its job.
    #[test]
    fn a_ledger_upgraded_to_execution_keys_finds_each_sent_job_by_its_sid() {
        let (_dir, path) = ledger_through(
            26,
            "INSERT INTO runs (id, campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                               on_conflict, state, created_at) \
             VALUES (1, 'c', 'reminder', 'manual', 'k', 0, 'c.csv', 'FW0', '+15550000000', 'skip', 'active', 0); \
             INSERT INTO jobs (id, run_id, phone, line, zone, parameters, state, due_at, created_at, updated_at, \
                               execution_sid) \
             VALUES (1, 1, '+12015550001', 2, 'UTC', '{}', 'sent', 0, 0, 0, 'FN0123456789aaaa'), \
                    (2, 1, '+12015550002', 3, 'UTC', '{}', 'skipped', 0, 0, 0, 'FN0123456789aaaa'), \
                    (3, 1, '+12015550003', 4, 'UTC', '{}', 'sent', 0, 0, 0, 'FNfedcba9876bbbb'), \
                    (4, 1, '+12015550004', 5, 'UTC', '{}', 'pending', 0, 0, 0, NULL);",
        );

        let ledger = Sqlite::open(&path).unwrap();
        let conn = ledger.writer();
        let keys: Vec<(String, i64)> = conn
            .prepare("SELECT key, job_id FROM execution_keys ORDER BY job_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(keys, [("01234567".to_string(), 1), ("fedcba98".to_string(), 3)]);
        let index: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'jobs_execution'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(index, 0);
        let found = executions::jobs_for_executions(
            &conn,
            &["FN0123456789aaaa".to_string(), "FNfedcba9876bbbb".to_string(), "FN0123456789cccc".to_string()],
        )
        .unwrap();
        let mut found: Vec<(&str, i64)> = found.iter().map(|(sid, job)| (sid.as_str(), job.job_id)).collect();
        found.sort();
        assert_eq!(found, [("FN0123456789aaaa", 1), ("FNfedcba9876bbbb", 3)]);
    }

    /// A page of a run's jobs reads the run's entries of its state from
    /// `after` on in id order, or each state's and merges them: no reading
    /// every job of the run and sorting them (which cost seconds per page on
    /// a run of a million jobs).
    #[test]
    fn a_page_of_a_runs_jobs_is_a_range_read_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let conn = ledger.reader();
        let plan = plan_of(&conn, jobs::jobs_page_sql(true));
        assert!(plan.contains("USING INDEX jobs_page (run_id=? AND state=? AND rowid>?)"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        let plan = plan_of(&conn, jobs::jobs_page_sql(false));
        let ranges = plan.matches("USING COVERING INDEX jobs_page (run_id=? AND state=? AND rowid>?)").count();
        assert_eq!(ranges, crate::domain::JobState::ALL.len(), "{plan}");
        assert!(plan.contains("USING INTEGER PRIMARY KEY (rowid=?)"), "{plan}");
        assert!(!plan.contains("SCAN jobs"), "{plan}");
    }

    /// A claim reads `jobs_claim`, which holds the pending jobs alone, in due
    /// order; what asks for a run's jobs of given states (in flight after a
    /// crash, "any still open?", its counts) reads a range of `jobs_page`,
    /// and the counts come in state order with no sort. A job that is sent
    /// leaves the claim index; no finished job keeps an entry there.
    #[test]
    fn a_claim_reads_the_pending_jobs_alone_and_a_runs_states_are_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let conn = ledger.reader();
        for (what, sql) in [("claim", jobs::claim_sql(false)), ("ambiguous", jobs::claim_sql(true))] {
            let plan = plan_of(&conn, sql);
            assert!(plan.contains("USING INDEX jobs_claim (run_id=? AND due_at<?)"), "{what}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{what}: {plan}");
        }
        let plan = plan_of(&conn, jobs::NEXT_DUE);
        assert!(plan.contains("USING INDEX jobs_claim (run_id=?)"), "next due: {plan}");
        let by_state = [
            ("recovery", jobs::RECOVER),
            ("finish", runs::FINISH_IF_DONE),
            ("purge list", purge::DUE_RUNS),
            ("purge check", purge::STILL_DUE),
            ("summaries", summaries::SETTLED_WITHOUT),
        ];
        for (what, sql) in by_state {
            let plan = plan_of(&conn, sql);
            assert!(plan.contains("INDEX jobs_page (run_id=? AND state=?)"), "{what}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{what}: {plan}");
        }
        // The run's sent jobs, not every job of the run (its grouping of
        // values needs a temporary b-tree whatever the index).
        let plan = plan_of(&conn, jobs::OUTCOME_COUNTS);
        assert!(plan.contains("INDEX jobs_page (run_id=? AND state=?)"), "outcome counts: {plan}");
        // One seek a state, not a read of every entry of the run.
        let plan = plan_of(&conn, purge::first_job_sql());
        let seeks = plan.matches("COVERING INDEX jobs_page (run_id=? AND state=?)").count();
        assert_eq!(seeks, crate::domain::JobState::ALL.len(), "first job: {plan}");
        let plan = plan_of(&conn, runs::RUN_COUNTS);
        assert!(plan.contains("COVERING INDEX jobs_page (run_id=?)"), "counts: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "counts: {plan}");
        let sql: String =
            conn.query_row("SELECT sql FROM sqlite_master WHERE name = 'jobs_claim'", [], |r| r.get(0)).unwrap();
        assert!(sql.ends_with("WHERE state = 'pending'"), "{sql}");
    }
}
