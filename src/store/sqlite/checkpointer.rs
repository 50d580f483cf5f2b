//! Copies the write-ahead log back into the database file on a thread and a
//! connection of its own, so that writers do not.
//!
//! Left to itself SQLite checkpoints in the connection that commits, once the
//! log holds 1,000 pages: the writer, with the ledger's writer lock held, then
//! copies those pages into the file and syncs it while every claim and
//! outcome waits. Beside a large import that was a good part of the writer's
//! time (with the checkpoint off altogether, in a probe, the sends beside a
//! million-row import at 1,000/s went from 940 to 967/s and the import alone
//! from 25.7k to 42.5k rows/s, the log growing without bound).
//!
//! Here a thread looks at the log a little after writes and, once it holds
//! [`BACKGROUND_PAGES`] not yet copied, checkpoints it passively: it copies
//! what no reader still needs without waiting for or holding up writers or
//! readers. A writer restarts the log from its beginning once everything in
//! it has been copied, which keeps the file bounded. Should the checkpointer
//! fall behind (writes without pause, or a reader on an old snapshot), the
//! writer's own automatic checkpoint, set at [`WRITER_PAGES`], bounds the log
//! as SQLite always did.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// Pages not yet copied that make the thread checkpoint (SQLite's own
/// automatic checkpoint is at 1,000).
pub(super) const BACKGROUND_PAGES: i64 = 1_000;

/// The writer's own automatic checkpoint: a log of this many pages (16 MB at
/// 4 KiB) is checkpointed by whichever write reaches it. The thread has by
/// then copied most of it, so what is left for the writer is short; and with
/// the writer holding the write lock nothing new comes in, so the checkpoint
/// completes and the next write starts the log afresh (the thread, copying
/// beside a writer that does not pause, rarely finds the log complete at the
/// moment a write begins, which is what restarting it needs).
///
/// Measured beside a million-row import with sends at 1,000/s: at 10,000
/// pages the sends came 50-155 ms late 62 times in 30 s (14 times with the
/// writer never checkpointing) and 846-887/s went out; at 1,000 or 2,000
/// the sends held 953-958/s, but a batch of the import alone outgrew the
/// limit and the import fell back to its old speed; 4,000 kept both.
pub(super) const WRITER_PAGES: i64 = 4_000;

/// How long after a write the thread looks, so that one look covers the
/// writes of a burst rather than each (a look is a query on the log's index).
const SETTLE: Duration = Duration::from_millis(5);

/// The checkpointing thread of one open ledger; it ends when this is dropped.
pub(super) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts the thread with a connection of its own to the ledger at `path`.
    pub(super) fn start(conn: Connection, path: &Path) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let name = format!("checkpoint {}", path.file_name().unwrap_or_default().to_string_lossy());
        let thread = std::thread::Builder::new().name(name).spawn({
            let stop = Arc::clone(&stop);
            move || run(&conn, &stop)
        })?;
        Ok(Checkpointer { thread: Some(thread), stop })
    }

    /// Tells the thread that something was written.
    pub(super) fn wrote(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            // A panic in the thread has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, stop: &AtomicBool) {
    loop {
        // A write that came while the thread was looking left its unpark
        // token: the next park returns at once and the thread looks again.
        std::thread::park();
        if stop.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(SETTLE);
        if stop.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = look(conn) {
            // The writer's own checkpoint still bounds the log.
            tracing::debug!(error = %e, "background checkpoint failed");
        }
    }
}

/// Checkpoints passively when the log holds enough pages not yet copied;
/// `true` when it did.
fn look(conn: &Connection) -> rusqlite::Result<bool> {
    let (log, copied) = log_pages(conn, "NOOP")?;
    if log - copied < BACKGROUND_PAGES {
        return Ok(false);
    }
    log_pages(conn, "PASSIVE")?;
    Ok(true)
}

/// Runs a checkpoint of `mode`: the pages in the log and how many of them
/// are copied into the database (both -1 when the ledger is not in WAL mode).
pub(super) fn log_pages(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    // `mode` is one of SQLite's fixed words, never user input.
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(1)?, r.get(2)?)))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::store::sqlite::Sqlite;

    /// Writes about `pages` pages to the log in one transaction.
    fn fill(ledger: &Sqlite, pages: usize) {
        let mut conn = ledger.writer();
        let tx = conn.transaction().unwrap();
        tx.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)", []).unwrap();
        for _ in 0..pages {
            tx.execute("INSERT INTO filler (b) VALUES (zeroblob(4000))", []).unwrap();
        }
        tx.commit().unwrap();
    }

    /// Waits (ten seconds at most) until `done` holds for the log's pages.
    fn wait_for_log(ledger: &Sqlite, what: &str, done: impl Fn(i64, i64) -> bool) -> (i64, i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (log, copied) = log_pages(&ledger.reader(), "NOOP").unwrap();
            if done(log, copied) {
                return (log, copied);
            }
            assert!(Instant::now() < deadline, "{what}: the log has {log} pages, {copied} copied");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The writer leaves the log to the thread up to `WRITER_PAGES`: a
    /// commit of 1,500 pages stays in the log as the writer left it, and the
    /// thread copies it while the writer is held elsewhere the whole time.
    #[test]
    fn the_checkpointer_copies_the_log_back_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let auto: i64 = ledger.writer().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, WRITER_PAGES);
        fill(&ledger, 1_500);
        let _held = ledger.writer();
        let (log, _) = wait_for_log(&ledger, "copied", |log, copied| log == copied);
        assert!(log >= 1_500, "{log}");
    }

    /// Once the thread has copied the whole log, the next write starts it
    /// from the beginning: it stays bounded however much is written.
    #[test]
    fn a_log_copied_back_is_started_afresh_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        for round in 0..3 {
            fill(&ledger, 1_200);
            wait_for_log(&ledger, "copied", |log, copied| log >= 1_200 && log == copied);
            ledger.writer().execute("DELETE FROM filler WHERE rowid = (SELECT MIN(rowid) FROM filler)", []).unwrap();
            let (log, _) = log_pages(&ledger.reader(), "NOOP").unwrap();
            assert!(log < 50, "round {round}: the log has {log} pages after a one-row write");
        }
    }

    /// A small write leaves the log alone (no checkpoint for a few pages).
    #[test]
    fn a_few_pages_are_left_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let (log_before, copied_before) = log_pages(&ledger.reader(), "NOOP").unwrap();
        fill(&ledger, 10);
        let conn = Connection::open(dir.path().join("flowcast.db")).unwrap();
        assert!(!look(&conn).unwrap(), "checkpointed {log_before}/{copied_before} + 10 pages");
    }
}
