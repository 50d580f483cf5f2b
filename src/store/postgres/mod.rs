//! The PostgreSQL backend: a ledger several flowcast instances share.
//!
//! tokio-postgres is the client, with deadpool-postgres for the pool: both are
//! async (no blocking pool between the dispatcher and the database), widely
//! used and kept up, and plain SQL strings with `$n` parameters keep this
//! module a line-by-line twin of the SQLite one. Each function here mirrors
//! its namesake under `sqlite/`; what differs is said where it differs:
//! claims take rows with `FOR UPDATE SKIP LOCKED` instead of SQLite's single
//! writer, and the per-contact checks that SQLite serialises with its write
//! lock take a transaction-scoped advisory lock instead.
//!
//! Migrations are applied at open, inside one transaction holding an advisory
//! lock, so instances starting together apply each migration once.

pub(crate) mod campaigns;
pub(crate) mod cluster;
pub(crate) mod executions;
pub(crate) mod jobs;
pub(crate) mod outbox;
pub(crate) mod purge;
pub(crate) mod pushed;
pub(crate) mod runs;
pub(crate) mod summaries;
pub(crate) mod suppressions;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{Result, StoreError};

/// The migrations, in order; each is applied once, whole or not at all.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_ledger.sql"),
    include_str!("../../../migrations/postgres/0002_job_pages.sql"),
    include_str!("../../../migrations/postgres/0003_run_summaries.sql"),
    include_str!("../../../migrations/postgres/0004_jobs_version.sql"),
    include_str!("../../../migrations/postgres/0005_outbox_counts.sql"),
    include_str!("../../../migrations/postgres/0006_job_event_conditions.sql"),
    include_str!("../../../migrations/postgres/0007_claim_and_phone_indexes.sql"),
    include_str!("../../../migrations/postgres/0008_no_run_foreign_keys.sql"),
    include_str!("../../../migrations/postgres/0009_purge_indexes.sql"),
    include_str!("../../../migrations/postgres/0010_create_on_row.sql"),
    include_str!("../../../migrations/postgres/0011_import_parts.sql"),
];

/// How long a claim, an import or the leader role holds without renewal:
/// an instance renews its own every second, so one that died is taken over
/// within this time.
pub(crate) const LEASE_MS: i64 = 5_000;

/// The longest a connection is waited for (from the pool, or to the server).
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An open PostgreSQL ledger: a pool of connections.
pub(crate) struct Pg {
    pool: Pool,
    /// The full URL, password included, for the leader's own connection;
    /// never shown.
    url: String,
    pub(crate) leadership: cluster::Leadership,
    /// This instance's name (`FLOWCAST_INSTANCE`, else host:pid): the owner
    /// written on its claims and leases.
    pub(crate) instance: String,
    /// Pre-send checks waiting, answered a batch to a statement.
    pub(crate) checks: std::sync::Arc<crate::store::checks::Checks>,
}

/// `FLOWCAST_INSTANCE`, or `host:pid`.
fn instance_name() -> String {
    if let Ok(name) = std::env::var("FLOWCAST_INSTANCE")
        && !name.trim().is_empty()
    {
        return name.trim().to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Checks a `postgres://` URL enough to report a mistake at start-up rather
/// than at the first connection.
pub(super) fn check_url(url: &str) -> std::result::Result<(), String> {
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| format!("{}: not a PostgreSQL URL ({e}); e.g. postgres://user@host:5432/dbname", redact(url)))
}

/// The URL without its password, for logs and errors.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
    .replace_password_query()
}

trait RedactQuery {
    fn replace_password_query(self) -> String;
}

impl RedactQuery for String {
    /// `?password=…` in the query is a password too.
    fn replace_password_query(self) -> String {
        match self.split_once('?') {
            Some((head, query)) => {
                let parts: Vec<String> = query
                    .split('&')
                    .map(|p| if p.starts_with("password=") { "password=***".to_string() } else { p.to_string() })
                    .collect();
                format!("{head}?{}", parts.join("&"))
            }
            None => self,
        }
    }
}

impl Pg {
    /// Connects to and migrates the ledger at `url`.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let address = redact(url);
        let connect = |message: String| StoreError::Connect { address: address.clone(), message };
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| connect(e.to_string()))?;
        // A server that cannot be reached fails a request in seconds instead
        // of the system's connect timeout (minutes): loops log and try again.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(WAIT);
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .build()
            .map_err(|e| connect(e.to_string()))?;
        let pg = Pg {
            pool,
            url: url.to_string(),
            leadership: cluster::Leadership::default(),
            instance: instance_name(),
            checks: Default::default(),
        };
        let mut client = pg.pool.get().await.map_err(|e| connect(e.to_string()))?;
        migrate(&mut client).await.map_err(|e| connect(format!("migration failed: {e}")))?;
        Ok(pg)
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// A connection only if one is free, or the pool may open one, without
    /// waiting for another request to give one back.
    pub(crate) async fn spare_client(&self) -> Option<deadpool_postgres::Object> {
        let mut timeouts = self.pool.timeouts();
        timeouts.wait = Some(std::time::Duration::ZERO);
        self.pool.timeout_get(&timeouts).await.ok()
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// `true` when the ledger answers and accepts a write.
    pub(crate) async fn is_writable(&self) -> bool {
        let Ok(client) = self.client().await else { return false };
        client.batch_execute("BEGIN; SELECT 1 FROM ledger_meta FOR UPDATE; ROLLBACK;").await.is_ok()
    }

    /// The server keeps its own consistency; what can be checked from here
    /// is that the ledger's tables are all there and readable.
    pub(crate) async fn integrity_check(&self) -> Result<String> {
        let client = self.client().await?;
        client
            .batch_execute(
                "SELECT 1 FROM runs LIMIT 1; SELECT 1 FROM jobs LIMIT 1; SELECT 1 FROM campaigns LIMIT 1; \
                 SELECT 1 FROM suppressions LIMIT 1; SELECT 1 FROM outbox LIMIT 1;",
            )
            .await?;
        Ok("ok".into())
    }
}

async fn migrate(client: &mut deadpool_postgres::Object) -> std::result::Result<(), String> {
    migrate_through(client, MIGRATIONS.len()).await
}

/// How many times a migration that the server chose to end a deadlock is
/// begun again.
const MIGRATION_ATTEMPTS: usize = 5;

/// Applies the migrations not applied yet, up to the first `last`, in one
/// transaction. Instances still running an older flowcast may hold locks the
/// migration needs while waiting for ones it holds (a purge writes to
/// `push_keys` then `outbox`; a migration may build an index on each): the
/// server ends such a deadlock by failing one of the two, and when that is
/// the migration, nothing of it stayed, so it begins again rather than
/// failing the start.
async fn migrate_through(client: &mut deadpool_postgres::Object, last: usize) -> std::result::Result<(), String> {
    let mut attempt = 1;
    loop {
        match migrate_once(client, last).await {
            Err((e, Some(code)))
                if code == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED && attempt < MIGRATION_ATTEMPTS =>
            {
                tracing::warn!(attempt, error = %e, "a migration was chosen to end a deadlock; beginning it again");
                attempt += 1;
            }
            other => return other.map_err(|(e, _)| e),
        }
    }
}

/// One attempt of [`migrate_through`]; an error keeps the server's code.
async fn migrate_once(
    client: &mut deadpool_postgres::Object,
    last: usize,
) -> std::result::Result<(), (String, Option<tokio_postgres::error::SqlState>)> {
    // The server's own message (a bare `db error` otherwise).
    let failed = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => (format!("{} ({})", db.message(), db.code().code()), Some(db.code().clone())),
        None => (e.to_string(), None),
    };
    let tx = client.transaction().await.map_err(failed)?;
    // One lock per schema: instances starting together wait for the first to
    // migrate; ledgers in other schemas of the same database do not.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('flowcast migrate ' || current_schema()))", &[])
        .await
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS flowcast_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(failed)?;
    let row = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM flowcast_migrations", &[]).await.map_err(failed)?;
    let applied: i32 = row.get(0);
    if applied as usize > MIGRATIONS.len() {
        return Err((
            format!(
                "the ledger is at migration {applied}, newer than this flowcast knows ({}); upgrade flowcast",
                MIGRATIONS.len()
            ),
            None,
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(last).skip(applied as usize) {
        tx.batch_execute(sql).await.map_err(|e| {
            let (text, code) = failed(e);
            (format!("migration {}: {text}", i + 1), code)
        })?;
        tx.execute("INSERT INTO flowcast_migrations (version) VALUES ($1)", &[&((i + 1) as i32)])
            .await
            .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)
}

/// Reads a text column into its domain type; a value the type refuses means
/// the ledger was changed by hand or by a newer flowcast.
pub(super) fn parsed<T: std::str::FromStr<Err = String>>(row: &tokio_postgres::Row, idx: usize) -> Result<T> {
    let text: String = row.try_get(idx)?;
    text.parse::<T>().map_err(|e| StoreError::Corrupt(format!("column {idx}: {e}")))
}

/// A fresh ledger in a schema of its own on the test server named by
/// `FLOWCAST_TEST_POSTGRES`, as a `postgres://` address; `None` (and a line
/// saying why) when that variable is unset.
///
/// The schema is named after this host and process (`t_<host>_<pid>_<random>`)
/// and outlives the test, for a look at what it left; the first test ledger
/// of each process drops those of this host's processes that have ended
/// (they piled up by the thousand otherwise). Another host's schemas, and a
/// live process's, are never touched: the server may be shared.
pub async fn test_ledger(label: &str) -> Option<String> {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Ok(base) = std::env::var("FLOWCAST_TEST_POSTGRES") else {
        eprintln!("skipped ({label}): FLOWCAST_TEST_POSTGRES is unset; set it to a PostgreSQL URL to run this test");
        return None;
    };
    let host = test_host();
    let schema = format!("t_{host}_{}_{:x}", std::process::id(), rand::random::<u64>());
    let (client, connection) =
        tokio_postgres::connect(&base, NoTls).await.unwrap_or_else(|e| panic!("FLOWCAST_TEST_POSTGRES: {e}"));
    let task = tokio::spawn(connection);
    if !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed) {
        drop_ended_test_schemas(&client, &host).await;
    }
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("a test schema");
    drop(client);
    let _ = task.await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// Eight hex digits naming this host in test schemas (its hostname hashed).
fn test_host() -> String {
    use std::hash::{Hash, Hasher};
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.trim().hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
}

/// Drops the test schemas of this host's processes that have ended (no
/// `/proc/<pid>`; on a system without `/proc` none is dropped). Best effort:
/// a schema another process drops at the same time is no error here.
async fn drop_ended_test_schemas(client: &tokio_postgres::Client, host: &str) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!("t_{host}_");
    let Ok(rows) = client.query("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", &[&prefix]).await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name[prefix.len()..].split('_').next().and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await;
    }
}

/// Waits until another backend waits on a lock that `holder`'s backend
/// holds; fails if `ended` says the other side finished without waiting, or
/// after 20 s. The activity view is read afresh each time (a transaction
/// reads it once unless its snapshot is cleared).
#[cfg(test)]
pub(crate) async fn until_blocked_by(holder: &tokio_postgres::Transaction<'_>, ended: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        holder.execute("SELECT pg_stat_clear_snapshot()", &[]).await.unwrap();
        let waiting: i64 = holder
            .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))", &[])
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(!ended(), "the other side finished without waiting on the lock");
        assert!(std::time::Instant::now() < deadline, "nothing waited on the lock");
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test schema of this host's ended process is dropped by the next
    /// process's first test ledger; a live process's stays.
    #[tokio::test]
    async fn test_schemas_of_ended_processes_are_dropped() {
        let Ok(base) = std::env::var("FLOWCAST_TEST_POSTGRES") else { return };
        let (client, connection) = tokio_postgres::connect(&base, NoTls).await.unwrap();
        tokio::spawn(connection);
        let host = test_host();
        // No process has this pid (above any pid_max Linux allows).
        let ended = format!("t_{host}_4294967295_0");
        let live = format!("t_{host}_{}_0", std::process::id());
        for name in [&ended, &live] {
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name}; CREATE SCHEMA {name}")).await.unwrap();
        }
        drop_ended_test_schemas(&client, &host).await;
        let exists = async |name: &str| -> bool {
            client
                .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&name])
                .await
                .unwrap()
                .get(0)
        };
        assert!(!exists(&ended).await, "the ended process's schema is dropped");
        assert!(exists(&live).await, "a live process's schema stays");
        client.batch_execute(&format!("DROP SCHEMA {live}")).await.unwrap();
    }

    /// An instance still on an older flowcast holds `push_keys` and then
    /// needs `outbox` while the migration that indexes both (0009) holds
    /// `outbox` and waits for `push_keys`: the server fails the migration to
    /// end the deadlock (its deadlock timeout is the shorter one here), and
    /// the migration begins again once the other transaction is done.
    #[tokio::test]
    async fn a_migration_the_server_fails_to_end_a_deadlock_begins_again() {
        let Some(url) = test_ledger("pg migrate deadlock").await else { return };
        let config: tokio_postgres::Config = url.parse().unwrap();
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(1).runtime(deadpool_postgres::Runtime::Tokio1).build().unwrap();
        let mut client = pool.get().await.unwrap();
        // Every migration before 0009.
        migrate_through(&mut client, 8).await.unwrap();
        let (mut older, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        let purge = older.transaction().await.unwrap();
        purge
            .batch_execute("SET LOCAL deadlock_timeout = '60s'; LOCK TABLE push_keys IN ROW EXCLUSIVE MODE")
            .await
            .unwrap();
        let migrating = tokio::spawn(async move { migrate(&mut client).await });
        until_blocked_by(&purge, || migrating.is_finished()).await;
        // The other side of the deadlock.
        purge.batch_execute("LOCK TABLE outbox IN ROW EXCLUSIVE MODE").await.unwrap();
        purge.commit().await.unwrap();
        migrating.await.unwrap().expect("the migration began again and was applied");
        let applied: i32 = older.query_one("SELECT MAX(version) FROM flowcast_migrations", &[]).await.unwrap().get(0);
        assert_eq!(applied as usize, MIGRATIONS.len());
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(
            redact("postgres://u@db/x?password=secret&sslmode=disable"),
            "postgres://u@db/x?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }
}
