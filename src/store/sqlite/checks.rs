//! The pre-send checks, answered together. Every create asks the ledger,
//! right before it goes out, for its run's state and whether its contact is
//! suppressed. Asked one at a time, each check was a trip to the blocking
//! pool and a turn at the one reader connection: with 64 creates in flight,
//! 64 threads took turns at its mutex, and the dispatch harness spent about
//! 40 µs of each Execution's 100 in the kernel (futex wake-ups most of it:
//! 5.7 per Execution under `strace`).
//!
//! Here a check joins a queue; the first one to find the queue idle starts
//! one drain on the blocking pool, which answers every check waiting, then
//! any that came meanwhile, until none is left. Each check is the same
//! query as before, answered on its own: a drain only saves the trips.

use std::ops::Deref;
use std::sync::Mutex;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::suppressions::{self, RunFacts};
use crate::domain::RunState;
use crate::store::{Result, Suppression};

/// What a pre-send check answers: the run's state and the entry that
/// suppresses the contact, if one does.
pub(crate) type Answer = Result<(RunState, Option<Suppression>)>;

/// A check waiting for its answer.
pub(crate) struct Check {
    pub run_id: i64,
    pub phone: String,
    pub reply: oneshot::Sender<Answer>,
}

/// Checks waiting, and whether a drain is answering them.
#[derive(Default)]
pub(super) struct Checks {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Check>,
    draining: bool,
}

impl Checks {
    /// Adds `check`; `true` when no drain is running and the caller must
    /// start one.
    pub(super) fn push(&self, check: Check) -> bool {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        q.waiting.push(check);
        !std::mem::replace(&mut q.draining, true)
    }

    /// Answers every waiting check with the connection `reader` gives, then
    /// those that came meanwhile, until none is left. A panic in a check
    /// leaves the queue idle and drops the checks it holds: their callers get
    /// an error rather than waiting forever, and the next check starts a
    /// drain again.
    pub(super) fn drain<C: Deref<Target = Connection>>(&self, reader: impl Fn() -> C) {
        let guard = IdleOnPanic(self);
        while let Some(batch) = self.take() {
            let conn = reader();
            // A batch's checks are made at one moment: each run is read once
            // for them (most are of one run), each contact on its own.
            let mut runs: Vec<(i64, RunFacts)> = Vec::new();
            for check in batch {
                let answer = answer(&conn, &mut runs, check.run_id, &check.phone);
                // A caller that gave up waiting has dropped its receiver.
                let _ = check.reply.send(answer);
            }
        }
        std::mem::forget(guard);
    }

    /// Takes the checks waiting; `None` (and the queue idle again) when
    /// there are none.
    fn take(&self) -> Option<Vec<Check>> {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if q.waiting.is_empty() {
            q.draining = false;
            return None;
        }
        Some(std::mem::take(&mut q.waiting))
    }
}

/// One check's answer, its run's facts read once per batch.
fn answer(conn: &Connection, runs: &mut Vec<(i64, RunFacts)>, run_id: i64, phone: &str) -> Answer {
    let at = match runs.iter().position(|(id, _)| *id == run_id) {
        Some(at) => at,
        None => {
            runs.push((run_id, suppressions::run_facts(conn, run_id)?));
            runs.len() - 1
        }
    };
    let run = &runs[at].1;
    Ok((run.state, suppressions::covering(conn, phone, &run.campaign, run.kind, run.channel)?))
}

/// Leaves the queue idle if a drain unwinds.
struct IdleOnPanic<'a>(&'a Checks);

impl Drop for IdleOnPanic<'_> {
    fn drop(&mut self) {
        let dropped = {
            let mut q = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            q.draining = false;
            std::mem::take(&mut q.waiting)
        };
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{Phone, Scope};
    use crate::store::Store;
    use crate::store::postgres::runs::tests::new_run;

    /// 2026-06-01T00:00:00Z.
    const T0: i64 = 1_780_272_000_000;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_asked_together_each_get_their_own_runs_state_and_contacts_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_path(&dir.path().join("flowcast.db")).await.unwrap();
        let active = store.create_run(new_run("reminders", "a", None), T0).await.unwrap().unwrap();
        let paused = store.create_run(new_run("surveys", "b", None), T0).await.unwrap().unwrap();
        assert!(store.set_run_state(active, RunState::Expanding, RunState::Active, None, T0).await.unwrap());
        assert!(store.set_run_state(paused, RunState::Expanding, RunState::Paused, None, T0).await.unwrap());
        let phone = |i: usize| format!("+1201555{i:04}");
        // Every third phone is suppressed, every other one for one campaign only.
        for i in (0..60).step_by(3) {
            let scope = if i % 2 == 0 { Scope::All } else { Scope::Campaign("reminders".into()) };
            assert!(store.suppress(&Phone::from_e164(phone(i)), &scope, None, "cli", T0).await.unwrap());
        }
        // Sixty checks at once, each run and phone mixed: they queue behind
        // one another's drains, and each answer must be its own.
        let mut asked = tokio::task::JoinSet::new();
        for i in 0..60 {
            let store = store.clone();
            let run = if i % 4 == 0 { paused } else { active };
            asked.spawn(async move { (i, run, store.before_create(run, &phone(i)).await.unwrap()) });
        }
        let mut answered = 0;
        while let Some(done) = asked.join_next().await {
            let (i, run, (state, entry)) = done.unwrap();
            let expected_state = if run == paused { RunState::Paused } else { RunState::Active };
            let suppressed = i % 3 == 0 && (i % 2 == 0 || run == active);
            assert_eq!(state, expected_state, "check {i}");
            assert_eq!(entry.is_some(), suppressed, "check {i}: {entry:?}");
            answered += 1;
        }
        assert_eq!(answered, 60);
        // A run that does not exist is an error for its own check alone.
        let one = phone(1);
        let (missing, found) = tokio::join!(store.before_create(999, &one), store.before_create(active, &one));
        assert!(missing.is_err());
        assert_eq!(found.unwrap(), (RunState::Active, None));
    }

    #[test]
    fn a_drain_that_panics_leaves_the_queue_idle_and_its_checks_answered_with_an_error() {
        let checks = Arc::new(Checks::default());
        let (reply, mut answer) = oneshot::channel();
        assert!(checks.push(Check { run_id: 1, phone: "+12015550001".into(), reply }), "the first starts a drain");
        let (reply, mut later) = oneshot::channel();
        assert!(!checks.push(Check { run_id: 1, phone: "+12015550002".into(), reply }), "one drain at a time");
        let drain = Arc::clone(&checks);
        let unwound = std::thread::spawn(move || {
            drain.drain(|| -> std::sync::MutexGuard<'static, Connection> { panic!("the reader is gone") })
        })
        .join();
        assert!(unwound.is_err());
        // Dropped, not left waiting forever.
        assert!(answer.try_recv().is_err() && later.try_recv().is_err());
        let (reply, _next) = oneshot::channel();
        assert!(checks.push(Check { run_id: 1, phone: "+12015550003".into(), reply }), "idle again");
    }
}
