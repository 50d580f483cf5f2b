//! The pre-send checks, answered together. Every create asks the ledger,
//! right before it goes out, for its run's state and whether its contact is
//! suppressed. One check at a time would cost, on SQLite, a trip to the
//! blocking pool and a turn at the one reader connection for each create
//! (with 64 creates in flight the SQLite dispatch harness spent about 40 µs
//! of each Execution's 100 in the kernel, 5.7 futex calls per Execution
//! under `strace`), and on PostgreSQL a statement of its own for each (0.9 of
//! the server's 3.9 s for 20,000 creates in its statement log).
//!
//! So a check joins a queue; the first one to find the queue idle starts one
//! drain (each backend has its own: `sqlite::checks::drain`, and
//! `postgres::suppressions::drain_checks`), which answers every check
//! waiting, then any that came meanwhile, until none is left. Every check of
//! a batch was asked before the batch is read, so what committed before a
//! check (a pause, a cancel, an opt-out) is in its answer; each check gets
//! its own run's state and its own contact's entry.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

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
pub(crate) struct Checks {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Check>,
    draining: bool,
}

impl Checks {
    /// Adds `check`. When no drain is running, the caller must start one
    /// with what this returns, moved into the drain's task: a drain that
    /// never runs (its task dropped unrun as the runtime shuts down) or
    /// stops early (a panic) leaves the queue idle and drops the checks
    /// waiting when it is dropped, so that their callers get an error rather
    /// than waiting forever and the next check starts a drain again.
    pub(crate) fn push(self: &Arc<Self>, check: Check) -> Option<Draining> {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        q.waiting.push(check);
        (!std::mem::replace(&mut q.draining, true)).then(|| Draining { checks: Arc::clone(self), done: false })
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

/// The right to drain the queue (see [`Checks::push`]).
pub(crate) struct Draining {
    checks: Arc<Checks>,
    /// Set when [`Draining::next_batch`] found the queue empty and left it
    /// idle: from then on another drain may own it, and this one touches
    /// it no more.
    done: bool,
}

impl Draining {
    /// The checks waiting; `None` when there are none, and the drain is
    /// over: the queue is idle again (and `None` ever after).
    pub(crate) fn next_batch(&mut self) -> Option<Vec<Check>> {
        if self.done {
            return None;
        }
        let batch = self.checks.take();
        self.done = batch.is_none();
        batch
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let dropped = {
            let mut q = self.checks.state.lock().unwrap_or_else(|e| e.into_inner());
            q.draining = false;
            std::mem::take(&mut q.waiting)
        };
        tracing::error!(
            waiting = dropped.len(),
            "a drain of pre-send checks stopped before the queue was empty; its checks are answered with an error"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{Phone, Scope};
    use crate::store::postgres::runs::tests::new_run;
    use crate::store::{Ledger, Store, StoreError};

    /// 2026-06-01T00:00:00Z.
    const T0: i64 = 1_780_272_000_000;

    /// Sixty checks at once, of two runs and sixty phones, a third of them
    /// suppressed (in every scope, or for one campaign only).
    async fn checks_asked_together(store: &Store) {
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
            // Both runs meet contacts suppressed in every scope and for the
            // other campaign alone.
            let run = if i % 5 < 2 { paused } else { active };
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
        // The same check twice gets the same answer twice.
        let (one, three) = (phone(1), phone(3));
        let (missing, found, twice, again) = tokio::join!(
            store.before_create(999, &one),
            store.before_create(active, &one),
            store.before_create(active, &three),
            store.before_create(active, &three)
        );
        assert!(matches!(missing, Err(StoreError::RunNotFound(999))), "{missing:?}");
        assert_eq!(found.unwrap(), (RunState::Active, None));
        let (twice, again) = (twice.unwrap(), again.unwrap());
        assert_eq!(twice.1.as_ref().map(|e| &e.scope), Some(&Scope::Campaign("reminders".into())));
        assert_eq!(twice, again);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_asked_together_each_get_their_own_runs_state_and_contacts_entry() {
        let dir = tempfile::tempdir().unwrap();
        checks_asked_together(&Store::open_path(&dir.path().join("flowcast.db")).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_asked_together_of_a_postgresql_ledger_each_get_their_own_answer() {
        let Some(url) = crate::store::postgres::test_ledger("pg pre-send checks").await else { return };
        checks_asked_together(&Store::open(&Ledger::parse(&url).unwrap()).await.unwrap()).await;
    }

    #[test]
    fn a_drain_that_stops_early_leaves_the_queue_idle_and_its_checks_answered_with_an_error() {
        let checks = Arc::new(Checks::default());
        let (reply, mut taken) = oneshot::channel();
        let mut draining = checks.push(Check { run_id: 1, phone: "+12015550001".into(), reply }).expect("a drain");
        let (reply, mut waiting) = oneshot::channel();
        let queue = Arc::clone(&checks);
        let unwound = std::thread::spawn(move || {
            let _batch = draining.next_batch().expect("the first check");
            assert!(queue.push(Check { run_id: 1, phone: "+12015550002".into(), reply }).is_none(), "one at a time");
            panic!("the ledger is gone");
        })
        .join();
        assert!(unwound.is_err());
        // The check it held and the one waiting are dropped, not left
        // waiting forever.
        assert!(matches!(taken.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        assert!(matches!(waiting.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        let (reply, _next) = oneshot::channel();
        assert!(checks.push(Check { run_id: 1, phone: "+12015550003".into(), reply }).is_some(), "idle again");
    }

    #[test]
    fn a_drain_dropped_before_it_ran_leaves_the_queue_idle() {
        let checks = Arc::new(Checks::default());
        let (reply, mut answer) = oneshot::channel();
        let draining = checks.push(Check { run_id: 1, phone: "+12015550001".into(), reply }).expect("a drain");
        // As tokio does with a blocking task it will not run.
        drop(draining);
        assert!(matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        let (reply, _next) = oneshot::channel();
        assert!(checks.push(Check { run_id: 1, phone: "+12015550002".into(), reply }).is_some(), "idle again");
    }
}
