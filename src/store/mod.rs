//! The ledger: runs, jobs, import rows, campaigns and the audit record of
//! Studio calls. The only SQL in flowcast lives under this module.
//!
//! [`Store`] is the one way in: async methods that take and return domain
//! types. The backend's blocking work runs on tokio's blocking pool, never on a
//! runtime worker, so a long import batch never stalls the dispatcher's timers
//! or the HTTP API. Every change a dispatcher makes is guarded by the job's id
//! and expected state, so a stale worker can never overwrite a newer outcome,
//! and no transaction is ever held across a network call: a claim commits
//! `dispatching` first, Studio is called, then the outcome is committed.

pub(crate) mod checks;
mod claim_checks;
pub mod postgres;
pub(crate) mod purge;
pub(crate) mod sqlite;
mod summaries;
mod types;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::domain::{
    CampaignKind, Channel, CollectedOutcome, ContactLimits, ImportRow, JobState, OutcomeState, Phone, ResumePoint,
    RunState, Scope,
};

pub use purge::PurgeSummary;
pub use sqlite::lock::LockError;
pub use summaries::{RunSummary, ValueCounts};
pub(crate) use types::calls_left_for_rows;
pub use types::{
    BatchCounts, CallSummary, CampaignRow, ClaimedJob, ExecutionJob, InstanceRow, JobRow, NewRun, OutboxCounts,
    OutboxEvent, OutcomeJob, PushOutcome, PushResult, PushRow, RefusedRow, RunCounts, RunRow, SettledJob, StudioCall,
    Suppression,
};

/// The outbox events the deliverer may send, whatever their time, as SQL on
/// `outbox o` (both backends): undelivered, not given up, and not behind an
/// earlier undelivered event of their job, so that receivers see a job's
/// events in the order they happened.
const OUTBOX_SENDABLE: &str = "o.delivered_at IS NULL AND o.gave_up_at IS NULL \
     AND (o.job_id IS NULL OR NOT EXISTS (SELECT 1 FROM outbox e WHERE e.job_id = o.job_id AND e.id < o.id \
                                          AND e.delivered_at IS NULL AND e.gave_up_at IS NULL))";

/// The outbox events that are done with (delivered or given up) and belong
/// to a purge that has already passed them, as SQL on `outbox o` (both
/// backends): their run is purged, or their job's phone is hashed. A purge
/// keeps an event not delivered yet, because its receiver still has to get
/// it; once its delivery ends there is nothing left to keep it for, and its
/// body holds the phone and the outcome a purge removes everywhere else, so
/// the deliverer deletes it right after recording the end.
fn outbox_done_after_purge() -> String {
    format!(
        "(o.delivered_at IS NOT NULL OR o.gave_up_at IS NOT NULL) \
         AND (EXISTS (SELECT 1 FROM runs r WHERE r.id = o.run_id AND r.purged_at IS NOT NULL) \
              OR EXISTS (SELECT 1 FROM jobs j WHERE j.id = o.job_id AND substr(j.phone, 1, {}) = '{}'))",
        crate::domain::Phone::HASH_PREFIX.len(),
        crate::domain::Phone::HASH_PREFIX
    )
}

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
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("ledger: the background task failed: {0}")]
    Task(String),
    #[error("ledger {address}: {message}")]
    Connect { address: String, message: String },
    #[error("ledger: {0}")]
    Postgres(String),
    #[error("ledger: {0}")]
    Pool(String),
}

impl From<tokio_postgres::Error> for StoreError {
    /// The server's own message and SQLSTATE (its `detail`, which may quote
    /// the values of a row, phones included, is left out).
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(match e.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => e.to_string(),
        })
    }
}

impl From<crate::domain::NotAnObject> for StoreError {
    fn from(e: crate::domain::NotAnObject) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where the ledger lives, as `--db` / `FLOWCAST_DB` give it: a file path,
/// `sqlite://PATH`, or a `postgres://` URL (shared by several instances).
#[derive(Clone, PartialEq, Eq)]
pub enum Ledger {
    Sqlite(PathBuf),
    Postgres(String),
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ledger({self})")
    }
}

impl Ledger {
    /// Reads a ledger address. A bare path is a SQLite file.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the ledger address is empty; give a file path or sqlite://PATH".into());
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            postgres::check_url(text)?;
            return Ok(Ledger::Postgres(text.to_string()));
        }
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://flowcast.db".into());
            }
            return Ok(Ledger::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!("unknown ledger scheme {scheme:?}; give a file path, sqlite://PATH or postgres://…"));
        }
        Ok(Ledger::Sqlite(PathBuf::from(text)))
    }
}

impl Ledger {
    /// The SQLite file that would be created by opening this ledger, when it
    /// is not there yet (commands that only read never create one). A
    /// PostgreSQL ledger is a server's: never "missing" here.
    pub fn missing_file(&self) -> Option<&Path> {
        match self {
            Ledger::Sqlite(path) if !path.exists() => Some(path),
            _ => None,
        }
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ledger::Sqlite(path) => write!(f, "{}", path.display()),
            // Never the password: addresses are shown in logs and errors.
            Ledger::Postgres(url) => write!(f, "{}", postgres::redact(url)),
        }
    }
}

/// Held while this process may dispatch from the ledger; dropping it lets
/// another process take over.
#[derive(Debug)]
pub struct DispatchLock {
    _lock: Option<sqlite::lock::LedgerLock>,
    /// Renews this process's leases on a shared ledger.
    renewing: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for DispatchLock {
    fn drop(&mut self) {
        if let Some(task) = self.renewing.take() {
            task.abort();
        }
    }
}

/// A handle on the ledger; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

#[derive(Clone)]
enum Db {
    Sqlite(Arc<sqlite::Sqlite>),
    Postgres(Arc<postgres::Pg>),
}

impl Store {
    /// Opens (creating and migrating if needed) the ledger.
    pub async fn open(ledger: &Ledger) -> Result<Self> {
        match ledger {
            Ledger::Sqlite(path) => {
                let path = path.clone();
                let db = blocking(move || sqlite::Sqlite::open(&path)).await?;
                Ok(Store { db: Db::Sqlite(Arc::new(db)) })
            }
            Ledger::Postgres(url) => Ok(Store { db: Db::Postgres(Arc::new(postgres::Pg::open(url).await?)) }),
        }
    }

    /// Whether several instances may share this ledger (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// Opens a SQLite ledger at `path` (tests and benchmarks).
    pub async fn open_path(path: &Path) -> Result<Self> {
        Self::open(&Ledger::Sqlite(path.to_path_buf())).await
    }

    /// Claims the right to dispatch from this ledger, saying `what` holds it
    /// (e.g. "flowcast serve"); a second process is refused with the holder.
    /// A PostgreSQL ledger is shared: every instance may dispatch from it (the
    /// claims themselves keep them apart), so nothing is locked.
    pub async fn lock_for_dispatch(&self, what: &str) -> Result<DispatchLock> {
        match &self.db {
            Db::Sqlite(db) => {
                let path = db.path().to_path_buf();
                let what = what.to_string();
                let lock = blocking(move || Ok(sqlite::lock::LedgerLock::acquire(&path, &what)?)).await?;
                Ok(DispatchLock { _lock: Some(lock), renewing: None })
            }
            Db::Postgres(pg) => {
                // Nothing to lock; what this process claims holds by its
                // leases: its imports' are renewed here every second while the
                // lock is held, its creates' by the dispatcher while they are out.
                let pg = Arc::clone(pg);
                let renewing = tokio::spawn(async move {
                    loop {
                        let now = chrono::Utc::now().timestamp_millis();
                        if let Err(e) = postgres::cluster::renew_import_leases(&pg, now).await {
                            tracing::warn!(error = %e, "cannot renew this instance's import leases in the ledger");
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                });
                Ok(DispatchLock { _lock: None, renewing: Some(renewing) })
            }
        }
    }

    /// `true` when the ledger accepts a write (for health checks).
    pub async fn is_writable(&self) -> bool {
        match &self.db {
            Db::Sqlite(db) => {
                let db = Arc::clone(db);
                blocking(move || Ok(db.is_writable())).await.unwrap_or(false)
            }
            Db::Postgres(pg) => pg.is_writable().await,
        }
    }

    /// The backend's own consistency check: `ok` on a healthy ledger.
    pub async fn integrity_check(&self) -> Result<String> {
        match &self.db {
            Db::Sqlite(db) => {
                let db = Arc::clone(db);
                blocking(move || db.integrity_check()).await
            }
            Db::Postgres(pg) => pg.integrity_check().await,
        }
    }

    /// Runs `f` on the SQLite reader (tests that look inside the file).
    #[cfg(test)]
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match &self.db {
            Db::Sqlite(db) => read(db, f).await,
            Db::Postgres(_) => panic!("a test that reads SQLite directly needs a SQLite ledger"),
        }
    }

    /// Runs `f` on the SQLite writer (tests that look inside the file).
    #[cfg(test)]
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match &self.db {
            Db::Sqlite(db) => write(db, f).await,
            Db::Postgres(_) => panic!("a test that writes SQLite directly needs a SQLite ledger"),
        }
    }

    // Instances sharing the ledger (PostgreSQL; a SQLite ledger has one
    // process, which always leads).

    /// This instance's name on a shared ledger.
    pub fn instance(&self) -> Option<&str> {
        match &self.db {
            Db::Sqlite(_) => None,
            Db::Postgres(pg) => Some(&pg.instance),
        }
    }

    /// Renews this instance's row in the ledger (a shared ledger's list of
    /// live instances).
    pub async fn announce(&self, address: Option<&str>, leader: bool, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(pg) => postgres::cluster::announce(pg, address, leader, now).await,
        }
    }

    /// Renews the leases of jobs `ids`, claimed by this instance and still
    /// out (nothing to renew on SQLite).
    pub async fn renew_leases(&self, ids: Vec<i64>, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(pg) => postgres::cluster::renew_leases(pg, &ids, now).await,
        }
    }

    /// Whether this instance holds the leader's role (taking it when free).
    pub async fn try_lead(&self) -> Result<bool> {
        match &self.db {
            Db::Sqlite(_) => Ok(true),
            Db::Postgres(pg) => pg.leadership.try_lead(pg.url()).await,
        }
    }

    /// Gives the leader's role up (at shutdown), so another takes it at once.
    pub async fn resign(&self) {
        if let Db::Postgres(pg) = &self.db {
            pg.leadership.resign().await;
        }
    }

    /// The live instances (none on a SQLite ledger).
    pub async fn instances(&self, now: i64) -> Result<Vec<InstanceRow>> {
        match &self.db {
            Db::Sqlite(_) => Ok(Vec::new()),
            Db::Postgres(pg) => postgres::cluster::instances(pg, now).await,
        }
    }

    /// Records the campaigns (name, content hash) in this instance's folder.
    pub async fn record_folder(&self, campaigns: Vec<(String, String)>, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(pg) => postgres::cluster::record_folder(pg, &campaigns, now).await,
        }
    }

    /// Whether this instance is to import run `id` (always, on SQLite).
    pub async fn claim_import(&self, id: i64, now: i64) -> Result<bool> {
        match &self.db {
            Db::Sqlite(_) => Ok(true),
            Db::Postgres(pg) => postgres::cluster::claim_import(pg, id, now).await,
        }
    }

    /// Reserves `n` send slots on the shared grid `key` (see
    /// [`postgres::cluster::reserve_slots`]); `None` on a SQLite ledger.
    pub async fn reserve_slots(&self, key: &str, n: i64, period_us: i64) -> Result<Option<(i64, i64)>> {
        match &self.db {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(pg) => postgres::cluster::reserve_slots(pg, key, n, period_us).await.map(Some),
        }
    }

    // Runs.

    /// Records a new run in state `expanding`. `None` if the campaign already
    /// has a run with this key (the same tick or content never makes two runs).
    pub async fn create_run(&self, run: NewRun, now: i64) -> Result<Option<i64>> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::runs::create_run(c, &run, now)).await,
            Db::Postgres(pg) => postgres::runs::create_run(pg, &run, now).await,
        }
    }

    /// Records a run with all its contacts at once, already imported (see
    /// [`sqlite::runs::create_run_with_rows`]). `Err(id)`: the campaign
    /// already has a run with this key.
    pub async fn create_run_with_rows(
        &self,
        run: NewRun,
        rows: Vec<ImportRow>,
        now: i64,
    ) -> Result<std::result::Result<(i64, BatchCounts), i64>> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::runs::create_run_with_rows(c, &run, &rows, now)).await,
            Db::Postgres(pg) => postgres::runs::create_run_with_rows(pg, &run, &rows, now).await,
        }
    }

    /// Adds pushed contacts to the open run `open` (created if it is not
    /// there yet), in one transaction; see [`sqlite::pushed::push`].
    pub async fn push_contacts(&self, open: NewRun, rows: Vec<PushRow>, now: i64) -> Result<(i64, Vec<PushResult>)> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::pushed::push(c, &open, &rows, now)).await,
            Db::Postgres(pg) => postgres::pushed::push(pg, &open, &rows, now).await,
        }
    }

    // The outbox of signed events.

    /// Events due for an attempt, in order per job.
    pub async fn outbox_due(&self, now: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::outbox::due(c, now, limit)).await,
            Db::Postgres(pg) => postgres::outbox::due(pg, now, limit).await,
        }
    }

    /// When the next undelivered event is due.
    pub async fn outbox_next_due(&self) -> Result<Option<i64>> {
        match &self.db {
            Db::Sqlite(db) => read(db, sqlite::outbox::next_due).await,
            Db::Postgres(pg) => postgres::outbox::next_due(pg).await,
        }
    }

    pub async fn outbox_delivered(&self, id: i64, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::outbox::delivered(c, id, now)).await,
            Db::Postgres(pg) => postgres::outbox::delivered(pg, id, now).await,
        }
    }

    /// A failed attempt: again at `retry_at`, or given up (`None`).
    pub async fn outbox_failed(&self, id: i64, error: String, retry_at: Option<i64>, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::outbox::failed(c, id, &error, retry_at, now)).await,
            Db::Postgres(pg) => postgres::outbox::failed(pg, id, &error, retry_at, now).await,
        }
    }

    pub async fn outbox_counts(&self) -> Result<OutboxCounts> {
        match &self.db {
            Db::Sqlite(db) => read(db, sqlite::outbox::counts).await,
            Db::Postgres(pg) => postgres::outbox::counts(pg).await,
        }
    }

    pub async fn outbox_page(&self, state: Option<String>, after: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::outbox::page(c, state.as_deref(), after, limit)).await,
            Db::Postgres(pg) => postgres::outbox::page(pg, state.as_deref(), after, limit).await,
        }
    }

    /// The run of `campaign` keyed `run_key`, if there is one.
    pub async fn run_by_key(&self, campaign: &str, run_key: &str) -> Result<Option<i64>> {
        let (campaign, run_key) = (campaign.to_string(), run_key.to_string());
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::runs::run_by_key(c, &campaign, &run_key)).await,
            Db::Postgres(pg) => postgres::runs::run_by_key(pg, &campaign, &run_key).await,
        }
    }

    /// Just a run's state (checked before every create, so kept cheap).
    pub async fn run_state(&self, id: i64) -> Result<RunState> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::runs::run_state(c, id)).await,
            Db::Postgres(pg) => postgres::runs::run_state(pg, id).await,
        }
    }

    pub async fn get_run(&self, id: i64) -> Result<RunRow> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::runs::get_run(c, id)).await,
            Db::Postgres(pg) => postgres::runs::get_run(pg, id).await,
        }
    }

    /// Runs, newest first, optionally of one campaign.
    pub async fn list_runs(&self, campaign: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
        let campaign = campaign.map(str::to_string);
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::runs::list_runs(c, campaign.as_deref(), limit)).await,
            Db::Postgres(pg) => postgres::runs::list_runs(pg, campaign.as_deref(), limit).await,
        }
    }

    /// Runs that still have work: not finished and not cancelled.
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRow>> {
        match &self.db {
            Db::Sqlite(db) => read(db, sqlite::runs::unfinished_runs).await,
            Db::Postgres(pg) => postgres::runs::unfinished_runs(pg).await,
        }
    }

    /// Import finished: the run is `active` (unless a user paused or cancelled
    /// it meanwhile).
    pub async fn finish_expansion(&self, id: i64, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::runs::finish_expansion(c, id, now)).await,
            Db::Postgres(pg) => postgres::runs::finish_expansion(pg, id, now).await,
        }
    }

    /// Where an interrupted import of run `id` resumes: through which line
    /// each part of it is in (see `Store::import_batch`).
    pub async fn import_resume(&self, id: i64) -> Result<ResumePoint> {
        match &self.db {
            Db::Sqlite(db) => Ok(ResumePoint::whole(read(db, move |c| sqlite::runs::import_line(c, id)).await?)),
            Db::Postgres(pg) => postgres::runs::import_resume(pg, id).await,
        }
    }

    /// The last CSV line every part of run `id`'s import has committed.
    pub async fn import_line(&self, id: i64) -> Result<u64> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::runs::import_line(c, id)).await,
            Db::Postgres(pg) => postgres::runs::import_line(pg, id).await,
        }
    }

    /// Moves run `id` from `from` to `to`, with a reason, only if it is still
    /// in `from`. `false`: it was not (another actor changed it first); the
    /// caller reads the state again and decides anew. Cancelling also cancels
    /// the run's pending jobs in the same transaction.
    pub async fn set_run_state(
        &self,
        id: i64,
        from: RunState,
        to: RunState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let reason = reason.map(str::to_string);
        match &self.db {
            Db::Sqlite(db) => {
                write(db, move |c| sqlite::runs::set_run_state(c, id, from, to, reason.as_deref(), now)).await
            }
            Db::Postgres(pg) => postgres::runs::set_run_state(pg, id, from, to, reason.as_deref(), now).await,
        }
    }

    /// Marks the run finished when no job is open; returns whether it did.
    pub async fn finish_run_if_done(&self, id: i64, now: i64) -> Result<bool> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::runs::finish_run_if_done(c, id, now)).await,
            Db::Postgres(pg) => postgres::runs::finish_run_if_done(pg, id, now).await,
        }
    }

    pub async fn run_counts(&self, id: i64) -> Result<RunCounts> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::runs::run_counts(c, id)).await,
            Db::Postgres(pg) => postgres::runs::run_counts(pg, id).await,
        }
    }

    // Jobs.

    /// Writes a batch of imported rows with the run's counts and the last CSV
    /// line the batch covers: in one transaction, except that a SQLite ledger
    /// commits part of it early to let a waiting write go first (see
    /// [`sqlite::jobs::import_batch`]), and a PostgreSQL ledger writes it in
    /// parts side by side, each part its own transaction on its own
    /// connection with its own last line (see
    /// [`postgres::jobs::import_batch`] and [`crate::domain::part_of`]).
    pub async fn import_batch(
        &self,
        run_id: i64,
        rows: Vec<ImportRow>,
        last_line: u64,
        default_due: i64,
        now: i64,
    ) -> Result<BatchCounts> {
        match &self.db {
            Db::Sqlite(db) => {
                let db = Arc::clone(db);
                blocking(move || sqlite::jobs::import_batch(&db, run_id, &rows, last_line, default_due, now)).await
            }
            Db::Postgres(pg) => postgres::jobs::import_batch(pg, run_id, &rows, last_line, default_due, now).await,
        }
    }

    /// `true` when an import should write small batches now: on PostgreSQL
    /// always (a batch is one transaction, holding its run's row), on SQLite
    /// while other writes share the ledger (an import batch handed the
    /// writer over within the last second). Alone on SQLite a large batch is
    /// one transaction, and each commit writes the pages its rows dirtied in
    /// the phone index again: see `runs::import::LONE_BATCH_ROWS`.
    pub fn import_in_small_batches(&self) -> bool {
        match &self.db {
            Db::Sqlite(db) => db.shared_lately(),
            Db::Postgres(_) => true,
        }
    }

    /// Claims up to `limit` due pending jobs of a run, marking them
    /// `dispatching` with the attempt's start time, in one committed
    /// transaction that also applies the per-contact `limits` and the run's
    /// dedupe rule (see [`sqlite::jobs::claim_due`]). With `only_ambiguous`,
    /// only jobs whose last attempt's fate is unknown.
    pub async fn claim_due(
        &self,
        run_id: i64,
        now: i64,
        limit: usize,
        only_ambiguous: bool,
        limits: ContactLimits,
    ) -> Result<Vec<ClaimedJob>> {
        match &self.db {
            Db::Sqlite(db) => {
                write(db, move |c| sqlite::jobs::claim_due(c, run_id, now, limit, only_ambiguous, &limits)).await
            }
            Db::Postgres(pg) => postgres::jobs::claim_due(pg, run_id, now, limit, only_ambiguous, &limits).await,
        }
    }

    /// [`claim_due`](Self::claim_due), then the run's next due time as
    /// [`next_due_at`](Self::next_due_at) sees it once the claim is committed
    /// (on SQLite in the same trip to the blocking pool): the run loop's next
    /// pass knows from it whether more jobs are due without asking again.
    pub async fn claim_due_then_next(
        &self,
        run_id: i64,
        now: i64,
        limit: usize,
        only_ambiguous: bool,
        limits: ContactLimits,
    ) -> Result<(Vec<ClaimedJob>, Option<i64>)> {
        match &self.db {
            Db::Sqlite(db) => {
                write(db, move |c| {
                    let jobs = sqlite::jobs::claim_due(c, run_id, now, limit, only_ambiguous, &limits)?;
                    Ok((jobs, sqlite::jobs::next_due_at(c, run_id, now)?))
                })
                .await
            }
            Db::Postgres(pg) => {
                let jobs = postgres::jobs::claim_due(pg, run_id, now, limit, only_ambiguous, &limits).await?;
                Ok((jobs, postgres::jobs::next_due_at(pg, run_id, now).await?))
            }
        }
    }

    /// Records attempt outcomes and Studio calls in one transaction; returns
    /// how many outcomes applied (a job that changed state meanwhile is left).
    /// A job sent is due to be read back `outcome_after` later.
    pub async fn record_outcomes(
        &self,
        outcomes: Vec<SettledJob>,
        calls: Vec<StudioCall>,
        outcome_after: std::time::Duration,
    ) -> Result<usize> {
        if outcomes.is_empty() && calls.is_empty() {
            return Ok(0);
        }
        let after = sqlite::millis(outcome_after);
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::jobs::record_outcomes(c, &outcomes, &calls, after)).await,
            Db::Postgres(pg) => postgres::jobs::record_outcomes(pg, &outcomes, &calls, after).await,
        }
    }

    // Outcomes.

    /// Sent jobs whose outcome is open and due by `now` (with `all`, due or
    /// not), optionally of one run, earliest due first.
    pub async fn due_outcomes(&self, run: Option<i64>, now: i64, limit: u32, all: bool) -> Result<Vec<OutcomeJob>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::due_outcomes(c, run, now, limit, all)).await,
            Db::Postgres(pg) => postgres::jobs::due_outcomes(pg, run, now, limit, all).await,
        }
    }

    /// How many sent jobs' outcomes are still open, optionally of one run.
    pub async fn open_outcomes(&self, run: Option<i64>) -> Result<i64> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::open_outcomes(c, run)).await,
            Db::Postgres(pg) => postgres::jobs::open_outcomes(pg, run).await,
        }
    }

    /// When the next open outcome is due, optionally of one run.
    pub async fn next_outcome_due(&self, run: Option<i64>) -> Result<Option<i64>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::next_outcome_due(c, run)).await,
            Db::Postgres(pg) => postgres::jobs::next_outcome_due(pg, run).await,
        }
    }

    /// Records what was read back from a job's Execution; `false` when the
    /// outcome was no longer open.
    pub async fn record_collected(
        &self,
        job_id: i64,
        state: OutcomeState,
        collected: CollectedOutcome,
        now: i64,
    ) -> Result<bool> {
        match &self.db {
            Db::Sqlite(db) => {
                write(db, move |c| sqlite::jobs::record_collected(c, job_id, state, &collected, now)).await
            }
            Db::Postgres(pg) => postgres::jobs::record_collected(pg, job_id, state, &collected, now).await,
        }
    }

    /// Asks about a job's Execution again at `due_at`.
    pub async fn reschedule_outcome(&self, job_id: i64, due_at: i64, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::jobs::reschedule_outcome(c, job_id, due_at, now)).await,
            Db::Postgres(pg) => postgres::jobs::reschedule_outcome(pg, job_id, due_at, now).await,
        }
    }

    /// Jobs left `dispatching` by a process that died: back to `pending`,
    /// marked ambiguous, so Studio is asked before any resend.
    pub async fn recover_dispatching(&self, run_id: i64, now: i64) -> Result<usize> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::jobs::recover_dispatching(c, run_id, now)).await,
            Db::Postgres(pg) => postgres::jobs::recover_dispatching(pg, run_id, now).await,
        }
    }

    /// The earliest due time among a run's pending jobs not expired by `now`.
    pub async fn next_due_at(&self, run_id: i64, now: i64) -> Result<Option<i64>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::next_due_at(c, run_id, now)).await,
            Db::Postgres(pg) => postgres::jobs::next_due_at(pg, run_id, now).await,
        }
    }

    /// Settles a run's pending jobs whose `expires` has passed as `expired`, in
    /// bulk; expired jobs are never claimed, so they take no send slot.
    pub async fn expire_overdue(&self, run_id: i64, now: i64) -> Result<usize> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::jobs::expire_overdue(c, run_id, now)).await,
            Db::Postgres(pg) => postgres::jobs::expire_overdue(pg, run_id, now).await,
        }
    }

    /// One page of a run's jobs in id order after job id `after`, optionally in
    /// one state (keyset paging: stable while the run changes).
    pub async fn jobs_page(&self, run_id: i64, state: Option<JobState>, after: i64, limit: u32) -> Result<Vec<JobRow>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::jobs_page(c, run_id, state, after, limit)).await,
            Db::Postgres(pg) => postgres::jobs::jobs_page(pg, run_id, state, after, limit).await,
        }
    }

    /// The latest jobs that ended failed, skipped or expired, across runs.
    pub async fn recent_problems(&self, limit: u32) -> Result<Vec<JobRow>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::recent_problems(c, limit)).await,
            Db::Postgres(pg) => postgres::jobs::recent_problems(pg, limit).await,
        }
    }

    /// Studio says Execution `sid` ended: record it on its job and make every
    /// job waiting on it due now. Returns (jobs recorded, jobs woken).
    pub async fn record_execution_end(
        &self,
        sid: &str,
        ended_at: i64,
        reason: Option<&str>,
        now: i64,
    ) -> Result<(usize, usize)> {
        let sid = sid.to_string();
        let reason = reason.map(str::to_string);
        match &self.db {
            Db::Sqlite(db) => {
                write(db, move |c| sqlite::jobs::record_execution_end(c, &sid, ended_at, reason.as_deref(), now)).await
            }
            Db::Postgres(pg) => postgres::jobs::record_execution_end(pg, &sid, ended_at, reason.as_deref(), now).await,
        }
    }

    /// The rows an import refused or found duplicated, in file order.
    pub async fn refused_rows(&self, run_id: i64) -> Result<Vec<RefusedRow>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::refused_rows(c, run_id)).await,
            Db::Postgres(pg) => postgres::jobs::refused_rows(pg, run_id).await,
        }
    }

    /// Records Studio calls made apart from a dispatch (an operator ending
    /// Executions), in one transaction.
    pub async fn record_calls(&self, calls: Vec<StudioCall>) -> Result<()> {
        if calls.is_empty() {
            return Ok(());
        }
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::jobs::record_outcomes(c, &[], &calls, 0).map(|_| ())).await,
            Db::Postgres(pg) => postgres::jobs::record_outcomes(pg, &[], &calls, 0).await.map(|_| ()),
        }
    }

    /// The sent jobs that created Executions `sids`, by SID (a SID no job
    /// created is left out).
    pub async fn jobs_for_executions(
        &self,
        sids: Vec<String>,
    ) -> Result<std::collections::HashMap<String, ExecutionJob>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::executions::jobs_for_executions(c, &sids)).await,
            Db::Postgres(pg) => postgres::executions::jobs_for_executions(pg, &sids).await,
        }
    }

    /// When the last of a run's Executions was created, at the latest (its
    /// latest `sent_at`); `None` when it sent nothing.
    pub async fn last_sent_at(&self, run_id: i64) -> Result<Option<i64>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::executions::last_sent_at(c, run_id)).await,
            Db::Postgres(pg) => postgres::executions::last_sent_at(pg, run_id).await,
        }
    }

    /// The audit trail of one job, oldest first.
    pub async fn calls_for_job(&self, job_id: i64) -> Result<Vec<CallSummary>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::jobs::calls_for_job(c, job_id)).await,
            Db::Postgres(pg) => postgres::jobs::calls_for_job(pg, job_id).await,
        }
    }

    // Suppressions.

    /// Adds `phone` to the suppression list in `scope`; `false` when it was
    /// already there (the first entry stays).
    pub async fn suppress(
        &self,
        phone: &Phone,
        scope: &Scope,
        reason: Option<&str>,
        source: &str,
        now: i64,
    ) -> Result<bool> {
        let (phone, scope, reason, source) =
            (phone.clone(), scope.clone(), reason.map(str::to_string), source.to_string());
        match &self.db {
            Db::Sqlite(db) => {
                write(db, move |c| sqlite::suppressions::add(c, &phone, &scope, reason.as_deref(), &source, now)).await
            }
            Db::Postgres(pg) => postgres::suppressions::add(pg, &phone, &scope, reason.as_deref(), &source, now).await,
        }
    }

    /// Removes `phone` from the list, in one scope or in every scope.
    pub async fn unsuppress(&self, phone: &Phone, scope: Option<&Scope>) -> Result<usize> {
        let (phone, scope) = (phone.clone(), scope.cloned());
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::suppressions::remove(c, &phone, scope.as_ref())).await,
            Db::Postgres(pg) => postgres::suppressions::remove(pg, &phone, scope.as_ref()).await,
        }
    }

    /// Lifts `phone`'s scope-`all` entries that came from one of `sources`.
    pub async fn unsuppress_from(&self, phone: &Phone, sources: &'static [&'static str]) -> Result<usize> {
        let phone = phone.clone();
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::suppressions::remove_from(c, &phone, sources)).await,
            Db::Postgres(pg) => postgres::suppressions::remove_from(pg, &phone, sources).await,
        }
    }

    /// A page of the list, in the order entries were added, after entry `after`.
    pub async fn suppressions(&self, after: i64, limit: u32) -> Result<Vec<Suppression>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::suppressions::page(c, after, limit)).await,
            Db::Postgres(pg) => postgres::suppressions::page(pg, after, limit).await,
        }
    }

    /// The entry that keeps `phone` from a campaign, if any.
    pub async fn suppression_for(
        &self,
        phone: &str,
        campaign: &str,
        kind: CampaignKind,
        channel: Channel,
    ) -> Result<Option<Suppression>> {
        let (phone, campaign) = (phone.to_string(), campaign.to_string());
        match &self.db {
            Db::Sqlite(db) => {
                read(db, move |c| sqlite::suppressions::covering(c, &phone, &campaign, kind, channel)).await
            }
            Db::Postgres(pg) => postgres::suppressions::covering(pg, &phone, &campaign, kind, channel).await,
        }
    }

    /// What a create checks right before it goes out: the run's state and
    /// whether the contact is suppressed for its campaign.
    pub async fn before_create(&self, run_id: i64, phone: &str) -> Result<(RunState, Option<Suppression>)> {
        // Checks that come while others are answered wait for the same
        // drain: one trip to the blocking pool (SQLite), one statement per
        // batch (PostgreSQL); see `checks`.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let check = checks::Check { run_id, phone: phone.to_string(), reply };
        match &self.db {
            Db::Sqlite(db) => {
                if let Some(draining) = db.checks.push(check) {
                    let db = Arc::clone(db);
                    tokio::task::spawn_blocking(move || db.answer_checks(draining));
                }
            }
            Db::Postgres(pg) => {
                if let Some(draining) = pg.checks.push(check) {
                    let pg = Arc::clone(pg);
                    tokio::spawn(async move { postgres::suppressions::drain_checks(&pg, draining).await });
                }
            }
        }
        answer.await.map_err(|_| StoreError::Task("a pre-send check was dropped unanswered".into()))?
    }

    // Campaigns.

    /// Records the campaign's current file, keeping its schedule's progress
    /// unless the schedule or zone changed.
    pub async fn upsert_campaign(&self, row: CampaignRow, now: i64) -> Result<()> {
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::campaigns::upsert_campaign(c, &row, now)).await,
            Db::Postgres(pg) => postgres::campaigns::upsert_campaign(pg, &row, now).await,
        }
    }

    pub async fn get_campaign(&self, name: &str) -> Result<Option<CampaignRow>> {
        let name = name.to_string();
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::campaigns::get_campaign(c, &name)).await,
            Db::Postgres(pg) => postgres::campaigns::get_campaign(pg, &name).await,
        }
    }

    pub async fn list_campaigns(&self) -> Result<Vec<CampaignRow>> {
        match &self.db {
            Db::Sqlite(db) => read(db, sqlite::campaigns::list_campaigns).await,
            Db::Postgres(pg) => postgres::campaigns::list_campaigns(pg).await,
        }
    }

    /// Records that every tick up to `last_tick_at` is handled, and the next one.
    pub async fn set_ticks(&self, name: &str, last_tick_at: i64, next_fire_at: Option<i64>) -> Result<()> {
        let name = name.to_string();
        match &self.db {
            Db::Sqlite(db) => {
                write(db, move |c| sqlite::campaigns::set_ticks(c, &name, last_tick_at, next_fire_at)).await
            }
            Db::Postgres(pg) => postgres::campaigns::set_ticks(pg, &name, last_tick_at, next_fire_at).await,
        }
    }

    /// The campaign's file is gone: it fires no new runs.
    pub async fn mark_campaign_removed(&self, name: &str, now: i64) -> Result<()> {
        let name = name.to_string();
        match &self.db {
            Db::Sqlite(db) => write(db, move |c| sqlite::campaigns::mark_campaign_removed(c, &name, now)).await,
            Db::Postgres(pg) => postgres::campaigns::mark_campaign_removed(pg, &name, now).await,
        }
    }
}

/// Runs `f` with the SQLite writer connection on the blocking pool.
async fn write<T: Send + 'static>(
    db: &Arc<sqlite::Sqlite>,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = Arc::clone(db);
    blocking(move || f(&mut db.writer())).await
}

/// Runs `f` with the SQLite reader connection on the blocking pool.
async fn read<T: Send + 'static>(
    db: &Arc<sqlite::Sqlite>,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = Arc::clone(db);
    blocking(move || f(&db.reader())).await
}

/// Runs `f` with the SQLite connection for long reads on the blocking pool.
async fn report<T: Send + 'static>(
    db: &Arc<sqlite::Sqlite>,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = Arc::clone(db);
    blocking(move || f(&db.reports())).await
}

/// Runs blocking ledger work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_addresses_are_paths_or_sqlite_urls() {
        assert_eq!(Ledger::parse("flowcast.db").unwrap(), Ledger::Sqlite("flowcast.db".into()));
        assert_eq!(Ledger::parse("sqlite:///var/lib/f.db").unwrap(), Ledger::Sqlite("/var/lib/f.db".into()));
        assert_eq!(
            Ledger::parse("postgres://u@localhost/x").unwrap(),
            Ledger::Postgres("postgres://u@localhost/x".into())
        );
        let secret = Ledger::parse("postgresql://u:hunter2@db:5432/x").unwrap();
        assert!(!secret.to_string().contains("hunter2") && !format!("{secret:?}").contains("hunter2"), "{secret}");
        assert!(Ledger::parse("postgres://db:port/x").unwrap_err().contains("not a PostgreSQL URL"));
        assert!(Ledger::parse("mysql://x").unwrap_err().contains("unknown ledger scheme \"mysql\""));
        assert!(Ledger::parse(" ").is_err());
    }

    #[tokio::test]
    async fn a_postgres_ledger_opens_migrates_once_and_reopens() {
        let Some(url) = postgres::test_ledger("postgres open").await else { return };
        let ledger = Ledger::parse(&url).unwrap();
        // Two instances starting at once: the migration is applied once.
        let (a, b) = tokio::join!(Store::open(&ledger), Store::open(&ledger));
        let (a, _b) = (a.unwrap(), b.unwrap());
        assert!(a.is_shared());
        assert!(a.is_writable().await);
        assert_eq!(a.integrity_check().await.unwrap(), "ok");
        let again = Store::open(&ledger).await.unwrap();
        assert_eq!(again.integrity_check().await.unwrap(), "ok");
        let bad = Ledger::parse("postgres://nobody:pw@127.0.0.1:1/none").unwrap();
        let err = Store::open(&bad).await.err().expect("no server there").to_string();
        assert!(err.contains("127.0.0.1:1") && !err.contains("pw@"), "{err}");
    }

    #[tokio::test]
    async fn a_ledger_reached_through_a_symlink_is_locked_by_its_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("flowcast.db");
        let alias = dir.path().join("alias.db");
        let first = Store::open_path(&real).await.unwrap();
        let _held = first.lock_for_dispatch("flowcast serve").await.unwrap();
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        let second = Store::open_path(&alias).await.unwrap();
        let err = second.lock_for_dispatch("flowcast run").await.unwrap_err().to_string();
        assert!(err.contains("in use by another flowcast process (flowcast serve, pid"), "{err}");
        let dotted = Store::open_path(&dir.path().join("sub/../flowcast.db")).await.unwrap();
        assert!(dotted.lock_for_dispatch("flowcast resume").await.is_err(), "`..` names the same ledger");
    }
}
