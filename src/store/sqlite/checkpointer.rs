//! Copies the write-ahead log back into the database file on a thread and a
//! connection of its own, so that the writer copies little of it.
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
//! what no reader still needs, without waiting for or holding up writers or
//! readers (only the emptying of a log file an import left long holds up
//! writers, briefly: see `look`). The log starts again from its beginning only when a write begins
//! with all of it copied and no reader in it, which beside a writer that does
//! not pause is rare; the writer's own automatic checkpoint, at
//! [`WRITER_PAGES`], is what usually brings that about (see there). A reader
//! that keeps one snapshot open for long holds every checkpoint back, this
//! thread's and the writer's alike, as it always did.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Pages not yet copied that make the thread checkpoint (SQLite's own
/// automatic checkpoint is at 1,000).
const BACKGROUND_PAGES: i64 = 1_000;

/// The writer's own automatic checkpoint: the commit that takes the log to
/// this many pages (16 MB at 4 KiB) checkpoints it, as does each commit after
/// it until the log starts again. The thread has by then copied most of it,
/// so the writer copies and syncs what is left; with the writer lock held no
/// page comes in meanwhile, so unless a reader is still in the log (or the
/// thread is copying at that moment: the writer's attempt then does nothing
/// and the next commit tries again) the log is all copied and the next write
/// starts it afresh. The `-wal` file therefore keeps about this size, except
/// during a large import (see [`LONE_IMPORT_PAGES`]).
///
/// Measured beside a million-row import with sends at 1,000/s: at 10,000
/// pages the sends came 50-155 ms late 62 times in 30 s (14 times with the
/// writer never checkpointing) and 846-887/s went out; at 1,000 or 2,000
/// the sends held 953-958/s, but a batch of the import alone outgrew the
/// limit and the import fell back to its old speed; 4,000 kept both.
pub(super) const WRITER_PAGES: i64 = 4_000;

/// The writer's automatic checkpoint for the commit of an import transaction
/// written with the ledger to itself (one of up to 65,536 rows): 128 MiB of
/// pages (a 135 MB file with the frames' headers). Such a commit takes the log past [`WRITER_PAGES`]
/// every batch or two, and the writer then copied the batch's pages into the
/// file and synced it itself while the import's reader, a batch ahead, waited
/// for it: for a million rows, under `strace`, the writer copied 27,600 pages
/// and the thread 6,800. Left to the thread, the copy runs beside the
/// writer's next batch; the writer still checkpoints a log past this
/// (copying only what the thread has not), which bounds it: 132-135 MB at
/// most for a million rows, where it kept to 32 MB. Ten runs of each build
/// alternately: 148,400-201,600 rows/s (median 180,700) against
/// 146,400-192,000 (median 153,500), ahead in eight pairs, peak RSS 124 MB
/// against 122. With no limit the log reached 343 MB; emptying the file at
/// each start of the log (`journal_size_limit` at 16 MB) took back most of
/// the gain, so a long file is emptied once the import is over (see
/// [`TRIM_PAGES`]).
pub(super) const LONE_IMPORT_PAGES: i64 = 32_768;

/// A log file longer than this many pages is emptied by the thread once it
/// is all copied, no reader or writer is in it, and no import has committed
/// a large transaction for [`QUIET`]: a log that an import let grow would
/// otherwise keep its size on disk for as long as the ledger is open (SQLite
/// starts a log again from its beginning without shortening the file).
const TRIM_PAGES: u64 = 2 * WRITER_PAGES as u64;

/// How long after an import's last large commit a long log file may be
/// emptied. Emptying it changes the log's header, which makes every other
/// connection drop its page cache: done between an import's batches, the
/// writer read its 64 MB of pages again and the import's peak RSS went from
/// 124 MB to 138-196 MB (the freed and reallocated pages).
const QUIET: Duration = Duration::from_secs(1);

/// A frame of the log at SQLite's default page size: the page and its
/// 24-byte header.
const FRAME_BYTES: u64 = 4_096 + 24;

/// Lets the commit of `tx`, the writer's, leave the log to the thread up to
/// [`LONE_IMPORT_PAGES`]; [`checkpoint_long_log`] puts the limit back.
pub(super) fn leave_log_to_thread(tx: &Connection) -> rusqlite::Result<()> {
    tx.pragma_update(None, "wal_autocheckpoint", LONE_IMPORT_PAGES)
}

/// The writer's automatic checkpoint at [`WRITER_PAGES`] again.
pub(super) fn checkpoint_long_log(writer: &Connection) -> rusqlite::Result<()> {
    writer.pragma_update(None, "wal_autocheckpoint", WRITER_PAGES)
}

/// How long after a write the thread looks, so that one look covers the
/// writes of a burst rather than each (a look is a query on the log's index).
const SETTLE: Duration = Duration::from_millis(5);

/// What the thread and the ledger share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Held by the thread while it looks and copies; see [`Checkpointer::hold`].
    busy: Mutex<()>,
    /// Large import commits so far; see [`Checkpointer::large_commit`].
    large_commits: AtomicU64,
    /// Looks finished, for tests to wait on.
    #[cfg_attr(not(test), allow(dead_code, reason = "only tests wait on it"))]
    looks: AtomicU64,
}

/// The checkpointing thread of one open ledger; it ends when this is dropped.
pub(super) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Checkpointer {
    /// Starts the thread with a connection of its own to the ledger at `path`.
    pub(super) fn start(conn: Connection, path: &Path) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let name = format!("checkpoint {}", path.file_name().unwrap_or_default().to_string_lossy());
        // Its checkpoints never wait for a reader or a writer: one that
        // would have to (emptying the log file) is left for a later look.
        conn.busy_timeout(Duration::ZERO).map_err(std::io::Error::other)?;
        // SQLite names the log after the ledger's real path.
        let wal = wal_path(&path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
        let thread = std::thread::Builder::new().name(name).spawn({
            let shared = Arc::clone(&shared);
            move || run(&conn, &wal, &shared)
        })?;
        Ok(Checkpointer { thread: Some(thread), shared })
    }

    /// Tells the thread that something was written.
    pub(super) fn wrote(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// Tells the thread that an import is committing a large transaction:
    /// a long log is not emptied until they stop (see [`QUIET`]).
    pub(super) fn large_commit(&self) {
        self.shared.large_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the thread from checkpointing until dropped, once any copy it
    /// is making has ended: SQLite runs one checkpoint at a time and refuses
    /// another at once, without waiting, so a checkpoint that must happen (a
    /// purge's) takes this first.
    pub(super) fn hold(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`: nothing a panic could leave half done.
        self.shared.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn looks(&self) -> u64 {
        self.shared.looks.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(super) fn large_commits(&self) -> u64 {
        self.shared.large_commits.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // Waits for the look in progress, if any: a passive checkpoint
            // (up to a log's length, 32,768 pages after a large import),
            // then perhaps the emptying of the file. (The last connection
            // to close copies the rest of the log itself, as SQLite always
            // does.)
            thread.thread().unpark();
            // A panic in the thread has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, wal: &Path, shared: &Shared) {
    // The large commits seen, and since when no other came: none yet, so a
    // ledger opened without an import is quiet from the start.
    let mut commits = (0, Instant::now().checked_sub(QUIET).unwrap_or_else(Instant::now));
    let mut long = false;
    loop {
        // A write that came while the thread was looking left its unpark
        // token: the next park returns at once and the thread looks again.
        // A long log is looked at again when quiet, with no write to wake
        // the thread.
        if long {
            std::thread::park_timeout(QUIET);
        } else {
            std::thread::park();
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(SETTLE);
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let result = {
            let _busy = shared.busy.lock().unwrap_or_else(|e| e.into_inner());
            // Read once the lock is held: a purge may have held it for long.
            let seen = shared.large_commits.load(Ordering::Relaxed);
            if seen != commits.0 {
                commits = (seen, Instant::now());
            }
            look(conn, wal, commits.1.elapsed() >= QUIET)
        };
        match result {
            Ok(still_long) => long = still_long,
            // The writer's own checkpoint still copies the log.
            Err(e) => tracing::warn!(error = %e, "the background checkpoint of the ledger's write-ahead log failed"),
        }
        shared.looks.fetch_add(1, Ordering::Release);
    }
}

/// Checkpoints passively when the log holds enough pages not yet copied.
/// Another checkpoint running at the time (the writer's) makes this one do
/// nothing, which is fine: that one copies.
///
/// A log file longer than [`TRIM_PAGES`] is, when `quiet`, copied to its end
/// and emptied if no reader or writer is in it at that moment (the
/// checkpoint does not wait: a later look tries again). The emptying holds
/// the log's write lock while it copies what came since the passive copy,
/// syncs the file and truncates the log: a write transaction begun then
/// waits for it under its busy timeout, as every write to the ledger begins
/// `IMMEDIATE`; one begun deferred that had read before its first write
/// would be refused at once. Another process's thread (a command run beside
/// `serve`) sees only its own imports' commits, so it may empty the file
/// between `serve`'s import batches: that costs `serve`'s writer its page
/// cache once, nothing else. Says whether the file is still long.
fn look(conn: &Connection, wal: &Path, quiet: bool) -> rusqlite::Result<bool> {
    let mut log = log_state(conn, "NOOP")?;
    let long = std::fs::metadata(wal).is_ok_and(|m| m.len() > TRIM_PAGES * FRAME_BYTES);
    if log.pages - log.copied >= BACKGROUND_PAGES || (long && quiet && log.copied < log.pages) {
        log = log_state(conn, "PASSIVE")?;
    }
    if !(long && quiet && !log.busy && log.copied == log.pages) {
        return Ok(long);
    }
    Ok(log_state(conn, "TRUNCATE")?.busy)
}

/// The write-ahead log beside the ledger at `path`.
fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// What a checkpoint found.
#[derive(Debug, Clone, Copy)]
pub(super) struct LogState {
    /// Another checkpoint was running (this one did nothing), or, for one
    /// that waits for readers, a reader kept it from finishing.
    pub(super) busy: bool,
    /// Pages in the log (-1 when busy before it began or not in WAL mode).
    pub(super) pages: i64,
    /// Pages of it copied into the database file (likewise).
    pub(super) copied: i64,
}

/// Runs `PRAGMA wal_checkpoint(mode)`.
pub(super) fn log_state(conn: &Connection, mode: &str) -> rusqlite::Result<LogState> {
    // `mode` is one of SQLite's fixed words, never user input.
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(LogState { busy: r.get::<_, i64>(0)? != 0, pages: r.get(1)?, copied: r.get(2)? })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::Sqlite;

    /// Writes about `pages` pages to the log in one transaction.
    fn fill(ledger: &Sqlite, pages: usize) {
        let mut conn = ledger.writer();
        // Immediate, as the ledger's writes are: a transaction that read
        // first is refused at once while the thread empties the log.
        let tx = crate::store::sqlite::write_transaction(&mut conn).unwrap();
        tx.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)", []).unwrap();
        for _ in 0..pages {
            tx.execute("INSERT INTO filler (b) VALUES (zeroblob(4000))", []).unwrap();
        }
        tx.commit().unwrap();
    }

    /// A new ledger in a folder of its own, and its log file's path.
    fn ledger_and_log() -> (tempfile::TempDir, Sqlite, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowcast.db");
        let ledger = Sqlite::open(&path).unwrap();
        let wal = wal_path(&path.canonicalize().unwrap());
        (dir, ledger, wal)
    }

    /// The log file's length, 0 when there is none.
    fn log_file_len(wal: &Path) -> u64 {
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    fn log(ledger: &Sqlite) -> LogState {
        log_state(&ledger.reader(), "NOOP").unwrap()
    }

    /// Waits (ten seconds at most) until the thread has looked at the log
    /// more than `looks` times and the log is as `done` wants it; nothing but
    /// the writes themselves wakes the thread.
    fn wait_for(ledger: &Sqlite, looks: u64, done: impl Fn(LogState) -> bool) -> LogState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The count first: a look that ends between the two reads
            // must not pass off the log as it was before it.
            let seen = ledger.checkpointer.looks();
            let state = log(ledger);
            if seen > looks && done(state) {
                return state;
            }
            assert!(Instant::now() < deadline, "after {} looks: {state:?}", ledger.checkpointer.looks());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The writer leaves the log to the thread below `WRITER_PAGES`: a
    /// commit of 1,500 pages is copied by the thread while the writer is
    /// held elsewhere, in a write transaction, the whole time.
    #[test]
    fn the_checkpointer_copies_the_log_back_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let auto: i64 = ledger.writer().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, WRITER_PAGES);
        let thread = ledger.checkpointer.hold();
        fill(&ledger, 1_500);
        let held = ledger.writer();
        let after = log(&ledger);
        assert!(after.pages >= 1_500 && after.copied < 1_500, "the writer copied the log: {after:?}");
        // A write transaction open, as an import's is between its slices.
        held.execute_batch("BEGIN IMMEDIATE").unwrap();
        drop(thread);
        wait_for(&ledger, 0, |log| log.pages >= 1_500 && log.copied == log.pages);
        held.execute_batch("ROLLBACK").unwrap();
        drop(held);
    }

    /// Once the thread has copied the whole log, the next write starts it
    /// from the beginning.
    #[test]
    fn a_log_copied_back_is_started_afresh_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        for round in 0..3 {
            let looks = ledger.checkpointer.looks();
            fill(&ledger, 1_200);
            wait_for(&ledger, looks, |log| log.pages >= 1_200 && log.copied == log.pages);
            // The look that copied it lets go of the log a moment after
            // saying all of it is copied: the write waits for it to end.
            let thread = ledger.checkpointer.hold();
            ledger.writer().execute("DELETE FROM filler WHERE rowid = (SELECT MIN(rowid) FROM filler)", []).unwrap();
            drop(thread);
            let after = log(&ledger);
            assert!(after.pages < 50, "round {round}: a one-row write left the log at {after:?}");
        }
    }

    /// A commit that takes the log to `WRITER_PAGES` checkpoints it in the
    /// writer, whatever the thread does: the log is then bounded even when
    /// the thread cannot keep up.
    #[test]
    fn the_writer_checkpoints_a_log_that_reaches_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        // The thread cannot copy anything while this is held.
        let thread = ledger.checkpointer.hold();
        fill(&ledger, WRITER_PAGES as usize + 200);
        let after = log(&ledger);
        assert!(after.pages > WRITER_PAGES && after.copied == after.pages, "{after:?}");
        ledger.writer().execute("DELETE FROM filler WHERE rowid = (SELECT MIN(rowid) FROM filler)", []).unwrap();
        assert!(log(&ledger).pages < 50, "{:?}", log(&ledger));
        drop(thread);
    }

    /// A log file left long (here by one large transaction, which the
    /// writer's own checkpoint copied) is emptied by the thread's next look,
    /// once nothing is in it, on a ledger with no import.
    #[test]
    fn a_long_log_file_is_emptied_once_copied() {
        let (_dir, ledger, wal) = ledger_and_log();
        let len = || log_file_len(&wal);
        let thread = ledger.checkpointer.hold();
        let looks = ledger.checkpointer.looks();
        fill(&ledger, TRIM_PAGES as usize + 500);
        let after = log(&ledger);
        assert!(after.copied == after.pages && len() > TRIM_PAGES * FRAME_BYTES, "{after:?}, {} bytes", len());
        drop(thread);
        ledger.checkpointer.wrote();
        let deadline = Instant::now() + Duration::from_secs(10);
        while len() > 0 {
            assert!(Instant::now() < deadline, "after {} looks: {} bytes", ledger.checkpointer.looks() - looks, len());
            std::thread::sleep(Duration::from_millis(1));
        }
        // The ledger goes on as before.
        fill(&ledger, 10);
        assert!(log(&ledger).pages >= 10);
    }

    /// While an import commits large transactions a long log file is left
    /// as it is (emptying it would drop the writer's page cache); a second
    /// after the last, it is emptied.
    #[test]
    fn a_long_log_file_is_kept_while_an_import_commits_large_transactions() {
        let (_dir, ledger, wal) = ledger_and_log();
        let len = || log_file_len(&wal);
        ledger.checkpointer.large_commit();
        fill(&ledger, TRIM_PAGES as usize + 500);
        let start = Instant::now();
        let mut checked = 0;
        while start.elapsed() < QUIET * 2 {
            let committed = Instant::now();
            ledger.checkpointer.large_commit();
            let looks = ledger.checkpointer.looks();
            fill(&ledger, 1);
            wait_for(&ledger, looks, |_| true);
            // Had this thread stalled for about `QUIET` (a loaded machine),
            // the import would have been quiet indeed: nothing more to check.
            if committed.elapsed() >= QUIET / 2 {
                break;
            }
            assert!(len() > TRIM_PAGES * FRAME_BYTES, "emptied {:?} after the import began", start.elapsed());
            checked += 1;
        }
        assert!(checked > 0 || start.elapsed() >= QUIET / 2, "nothing checked");
        let deadline = Instant::now() + Duration::from_secs(10);
        while len() > 0 {
            assert!(Instant::now() < deadline, "still {} bytes", len());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A log file of the usual length is left as it is once copied, quiet
    /// as the ledger is: only a long one is emptied.
    #[test]
    fn a_log_file_of_the_usual_length_is_not_emptied() {
        let (_dir, ledger, wal) = ledger_and_log();
        fill(&ledger, 1_200);
        wait_for(&ledger, 0, |log| log.pages >= 1_200 && log.copied == log.pages);
        assert!(log_file_len(&wal) > 1_200 * 4_096);
    }

    /// A write of a few pages leaves them in the log: the thread looks and
    /// copies nothing.
    #[test]
    fn a_few_pages_are_left_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        fill(&ledger, 10);
        let after = wait_for(&ledger, 0, |_| true);
        assert!(after.pages >= 10 && after.copied == 0, "{after:?}");
    }
}
