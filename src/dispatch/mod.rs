//! The dispatcher: claims due jobs of a run, holds the account-wide and
//! per-campaign rates, calls Studio with bounded concurrency, and records each
//! outcome in the ledger.
//!
//! Retries, waits and backoffs are data in the ledger (a later `due_at`), never a
//! sleeping task per job: a job that must wait goes back to `pending` and is
//! claimed again when due. Each attempt is committed as `dispatching` before its
//! request is sent, and its outcome is committed after, guarded by id and state.

mod limits;
mod process;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::{ConflictPolicy, ContactLimits, FlowSid, JobOutcome, ReasonKind, RunState, SendWindow};
use crate::schedule::Clock;
use crate::store::{RunCounts, RunRow, SettledJob, Store, StoreError};
use crate::studio::{StudioApi, TwilioError};

/// Settled outcomes are committed together once this many are waiting, or
/// [`DispatchSettings::flush_every`] after the last commit (and always before
/// the loop reads the run's state or waits for a due time with a request
/// slot free).
const FLUSH_AT: usize = 256;

/// How often jobs whose `expires` passed unclaimed are settled in bulk (and
/// always before a run is declared finished). They are never claimed, so they
/// never hold a send slot; the sweep only records their end.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

pub use limits::{Pacer, RateLimits};
pub use process::Processed;

/// Tuning of the dispatcher; the defaults suit Studio's real limits.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Studio requests in flight at most.
    pub concurrency: usize,
    /// Transient failures (5xx, timeouts, resets) before a job fails.
    pub max_failures: u32,
    /// First retry delay of the exponential backoff (with full jitter).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Pause after a 429 that carries no `Retry-After`.
    pub throttle_delay: Duration,
    /// How often a `wait`-policy job checks whether the active Execution ended.
    pub wait_poll: Duration,
    /// Longest sleep of an idle dispatcher before it looks for due jobs again.
    pub idle_poll: Duration,
    /// Create → 409 → end → create rounds before an `end`-policy job gives up.
    pub max_end_rounds: u32,
    /// On shutdown, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    /// After an attempt whose outcome is unknown (timeout, reset, 5xx), how long
    /// to leave Studio to finish acting on it before asking what it created.
    pub ambiguous_settle: Duration,
    /// Consecutive transient failures across a run's jobs that pause the run
    /// (the circuit opens); 0 never opens it.
    pub breaker_streak: u32,
    /// How long after a create its Execution is first read back for the
    /// outcome (sooner when Studio reports it ended).
    pub outcome_after: Duration,
    /// Per-contact caps across campaigns, applied when a job is claimed.
    pub contact_limits: ContactLimits,
    /// How long settled outcomes wait at most for their batch's commit
    /// while every request slot is busy or a send token is awaited.
    pub flush_every: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            concurrency: 16,
            max_failures: 5,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            throttle_delay: Duration::from_secs(1),
            wait_poll: Duration::from_secs(5),
            idle_poll: Duration::from_millis(500),
            max_end_rounds: 3,
            shutdown_grace: Duration::from_secs(30),
            ambiguous_settle: Duration::from_secs(15),
            breaker_streak: 20,
            outcome_after: Duration::from_secs(300),
            contact_limits: ContactLimits::default(),
            flush_every: Duration::from_millis(200),
        }
    }
}

/// Why a run stopped before its end: Studio refused something no retry fixes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StopReason {
    #[error(
        "Studio refused the credentials ({0}); check TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN or TWILIO_API_KEY/TWILIO_API_SECRET, then `flowcast resume`"
    )]
    Unauthorized(TwilioError),
    #[error(
        "Studio does not know Flow {flow} for these credentials ({error}); check the campaign's flow, then `flowcast resume`"
    )]
    FlowNotFound { flow: String, error: TwilioError },
    #[error(
        "circuit breaker: {streak} transient failures in a row (last: {last_error}); Studio looks unwell, the run is paused; `flowcast resume` continues it"
    )]
    CircuitOpen { streak: u32, last_error: String },
}

/// How a call to [`Dispatcher::run_to_end`] ended.
#[derive(Debug, Clone)]
pub enum RunEnd {
    /// Every job is settled.
    Finished(RunCounts),
    /// Paused by a user (or another process) while dispatching.
    Paused(Option<String>),
    Cancelled,
    /// Studio refused the credentials or the Flow; the run is paused with this
    /// reason and its untouched jobs are still `pending`.
    Stopped(StopReason),
    /// The process is shutting down: claiming stopped, in-flight requests settled.
    Interrupted,
    /// Only from [`Dispatcher::run_until_idle`]: nothing is due now; the next
    /// pending job is due at this instant (Unix ms).
    Idle {
        next_due_at: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What every job of one run shares.
#[derive(Debug, Clone)]
pub(crate) struct RunContext {
    pub run_id: i64,
    pub campaign: String,
    pub flow: FlowSid,
    pub from: String,
    pub policy: ConflictPolicy,
    pub campaign_rate: Option<u32>,
    pub window: Option<SendWindow>,
}

impl RunContext {
    fn from_row(run: &RunRow) -> Self {
        RunContext {
            run_id: run.id,
            campaign: run.campaign.clone(),
            flow: run.flow.clone(),
            from: run.from.clone(),
            policy: run.policy,
            campaign_rate: run.rate,
            window: run.window,
        }
    }
}

/// Dispatches runs against one Studio with shared rate limits.
pub struct Dispatcher<S: StudioApi> {
    pub(crate) store: Store,
    pub(crate) studio: Arc<S>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: DispatchSettings,
    pub(crate) limits: Arc<RateLimits>,
    /// Requests in flight across every run this dispatcher serves.
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    /// Wakes idle run loops to look for due jobs at once (a webhook said an
    /// Execution ended, a run was resumed).
    wake: Arc<tokio::sync::Notify>,
    /// Audit records of Studio calls, written with the next batch of outcomes.
    pub(crate) calls: Arc<std::sync::Mutex<Vec<crate::store::StudioCall>>>,
}

impl<S: StudioApi> Clone for Dispatcher<S> {
    fn clone(&self) -> Self {
        Dispatcher {
            store: self.store.clone(),
            studio: Arc::clone(&self.studio),
            clock: Arc::clone(&self.clock),
            settings: self.settings.clone(),
            limits: Arc::clone(&self.limits),
            in_flight: Arc::clone(&self.in_flight),
            shutdown: self.shutdown.clone(),
            wake: Arc::clone(&self.wake),
            calls: Arc::clone(&self.calls),
        }
    }
}

impl<S: StudioApi> Dispatcher<S> {
    pub fn new(
        store: Store,
        studio: Arc<S>,
        clock: Arc<dyn Clock>,
        settings: DispatchSettings,
        limits: Arc<RateLimits>,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Dispatcher {
            store,
            studio,
            clock,
            settings,
            limits,
            in_flight,
            shutdown: CancellationToken::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            calls: Arc::new(std::sync::Mutex::new(Vec::new())),
        }
    }

    /// The Studio this dispatcher calls.
    /// The rate limits every run shares.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    pub fn studio(&self) -> Arc<S> {
        Arc::clone(&self.studio)
    }

    /// Makes every idle run loop look for due jobs now.
    pub fn wake_all(&self) {
        self.wake.notify_waiters();
    }

    /// Cancelling this token stops every run of this dispatcher: nothing more is
    /// claimed or sent, and requests in flight settle within the grace period.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Dispatches `run_id` until every job is settled, the run is paused or
    /// cancelled, or Studio refuses the credentials or the Flow.
    pub async fn run_to_end(&self, run_id: i64) -> Result<RunEnd, DispatchError> {
        self.run(run_id, false).await
    }

    /// Dispatches every job of `run_id` that is due now (and whatever becomes due
    /// while those are in flight), then returns instead of waiting for later
    /// ones. With a controllable clock, tests step through time with this.
    pub async fn run_until_idle(&self, run_id: i64) -> Result<RunEnd, DispatchError> {
        self.run(run_id, true).await
    }

    /// Jobs another instance claimed and whose lease ran out (it died with
    /// their creates out) go back to pending as ambiguous, to be reconciled
    /// with Studio before anything is resent.
    async fn take_over_expired(&self, run_id: i64) -> Result<usize, DispatchError> {
        // A lease runs out when its instance stops renewing it: dead, or cut
        // off from the ledger while its requests may still be out. Those end
        // within the request timeout, so only a lease that ran out longer ago
        // than that is taken over: Studio has then seen all it will see.
        let settle = i64::try_from(self.settings.ambiguous_settle.as_millis()).unwrap_or(i64::MAX);
        let taken = self.store.recover_dispatching(run_id, self.now_ms().saturating_sub(settle)).await?;
        if taken > 0 {
            tracing::warn!(
                run = run_id,
                jobs = taken,
                "jobs of an instance that stopped renewing its claims; reconciling them with Studio"
            );
        }
        Ok(taken)
    }

    async fn run(&self, run_id: i64, stop_when_idle: bool) -> Result<RunEnd, DispatchError> {
        let end = self.run_loop(run_id, stop_when_idle).await;
        if let Err(e) = &end {
            // The loop's tasks are gone with it; the run's Studio call
            // records still buffered have no outcome to wait for and no
            // other run's flush to take them: written now if the ledger
            // takes them (their jobs stay `dispatching`, for reconciliation).
            let error = crate::domain::mask_phones_in(&e.to_string());
            tracing::warn!(run = run_id, %error, "dispatch stopped on an error; writing its call records");
            if let Err(e) = self.flush(run_id, &mut Vec::new(), None).await {
                let error = crate::domain::mask_phones_in(&e.to_string());
                tracing::error!(run = run_id, %error, "call records of a stopped dispatch were not written");
            }
        }
        end
    }

    async fn run_loop(&self, run_id: i64, stop_when_idle: bool) -> Result<RunEnd, DispatchError> {
        let run = self.store.get_run(run_id).await?;
        let ctx = Arc::new(RunContext::from_row(&run));
        // A job left `dispatching` by a process that died is ambiguous: back to
        // pending, to be reconciled with Studio before anything is resent.
        let recovered = if self.store.is_shared() {
            self.take_over_expired(run_id).await?
        } else {
            self.store.recover_dispatching(run_id, self.now_ms()).await?
        };
        if recovered > 0 {
            tracing::warn!(
                run = run_id,
                jobs = recovered,
                "jobs found mid-dispatch; they will be reconciled with Studio first"
            );
        }
        // The jobs this run has claimed and not settled: on a shared ledger
        // their leases are renewed every second while their creates are out,
        // and only theirs, so that a claim this task lost track of (it ended
        // on an error) runs out and is taken over.
        let held: Arc<std::sync::Mutex<std::collections::HashSet<i64>>> = Arc::default();
        let _renewing = self.store.is_shared().then(|| {
            let (store, held, clock) = (self.store.clone(), Arc::clone(&held), Arc::clone(&self.clock));
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let ids: Vec<i64> = lock_held(&held).iter().copied().collect();
                    if let Err(e) = store.renew_leases(ids, clock.now().timestamp_millis()).await {
                        tracing::warn!(error = %e, "cannot renew the leases of creates in flight");
                    }
                }
            }))
        });
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks: JoinSet<Processed> = JoinSet::new();
        let mut stop: Option<StopReason> = None;
        let mut breaker = Breaker::new(self.settings.breaker_streak);
        // Outcomes waiting to be committed in one transaction.
        let mut settled: Vec<SettledJob> = Vec::new();
        let mut last_flush = std::time::Instant::now();
        let mut last_sweep = std::time::Instant::now();
        self.sweep_expired(run_id).await?;
        // Jobs found mid-dispatch are reconciled before anything new is sent.
        let mut reconciling = recovered > 0;
        // The ledger had more jobs due right after the last claim: the next
        // pass with a free request slot claims without asking it again.
        let mut more_due = false;

        loop {
            while let Some(done) = tasks.try_join_next() {
                self.settle(done, &mut stop, &mut breaker, &mut settled, &held);
            }
            if settled.len() >= FLUSH_AT || (!settled.is_empty() && last_flush.elapsed() >= self.settings.flush_every) {
                self.flush(run_id, &mut settled, Some(&held)).await?;
                last_flush = std::time::Instant::now();
            }
            if stop.is_some() || self.shutdown.is_cancelled() {
                break;
            }
            let free = slots.available_permits();
            let now = self.now_ms();
            if free > 0
                && (std::mem::take(&mut more_due)
                    || self.store.next_due_at(run_id, now).await?.is_some_and(|due| due <= now))
            {
                // Take a send token first and claim after, so that a job is
                // `dispatching` only while its request is about to go out: a pause
                // or a crash then finds almost nothing in flight. The wait can be
                // long (a 429's Retry-After holds every create): outcomes settled
                // before it are recorded on their batch's deadline meanwhile.
                // The token is reserved when the wait starts, so it is one wait,
                // polled across the flushes.
                let ready = self.limits.until_ready(&ctx.campaign, ctx.campaign_rate);
                tokio::pin!(ready);
                let cancelled = loop {
                    let flush_in = self.settings.flush_every.saturating_sub(last_flush.elapsed());
                    tokio::select! {
                        _ = &mut ready => break false,
                        _ = self.shutdown.cancelled() => break true,
                        _ = tokio::time::sleep(flush_in), if !settled.is_empty() => {
                            self.flush(run_id, &mut settled, Some(&held)).await?;
                            last_flush = std::time::Instant::now();
                        }
                    }
                };
                if cancelled {
                    break;
                }
                let mut tokens = 1;
                while tokens < free && self.limits.try_acquire(&ctx.campaign, ctx.campaign_rate) {
                    tokens += 1;
                }
                let at = self.now_ms();
                let (claimed, next_due) = self
                    .store
                    .claim_due_then_next(run_id, at, tokens, reconciling, self.settings.contact_limits)
                    .await?;
                lock_held(&held).extend(claimed.iter().map(|j| j.id));
                more_due = next_due.is_some_and(|due| due <= at);
                if claimed.is_empty() && reconciling && tasks.is_empty() {
                    reconciling = false;
                    continue;
                }
                if !claimed.is_empty() {
                    for job in claimed {
                        let permit = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                        let this = self.clone();
                        let ctx = Arc::clone(&ctx);
                        // Boxed here, once: the job's future holds a whole
                        // request's state, and spawning it unboxed copied it
                        // four times on its way into the task.
                        tasks.spawn(Box::pin(async move {
                            let processed = this.process(&ctx, job).await;
                            drop(permit);
                            processed
                        }));
                    }
                    continue;
                }
            } else if reconciling && tasks.is_empty() {
                reconciling = false;
            }
            // Before reading the run's state or waiting for a due time, record
            // what has settled. While every request slot is busy
            // the loop only waits for one to free up: outcomes then wait for
            // their batch (`FLUSH_AT`, `flush_every`), rather than a commit
            // of one or two outcomes sitting between each finished request
            // and the next claim.
            let busy = free == 0 && !tasks.is_empty();
            if !busy {
                self.flush(run_id, &mut settled, Some(&held)).await?;
                last_flush = std::time::Instant::now();
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep_expired(run_id).await?;
                if self.store.is_shared() && self.take_over_expired(run_id).await? > 0 {
                    reconciling = true;
                }
                last_sweep = std::time::Instant::now();
            }
            if tasks.is_empty() {
                // Nothing in flight: every record of the run goes now (one
                // held back for a job whose task failed has no outcome to
                // wait for), before the loop may return.
                self.flush(run_id, &mut settled, None).await?;
                let run = self.store.get_run(run_id).await?;
                match run.state {
                    RunState::Paused => return Ok(RunEnd::Paused(run.state_reason)),
                    RunState::Cancelled => return Ok(RunEnd::Cancelled),
                    RunState::Finished => return Ok(RunEnd::Finished(self.store.run_counts(run_id).await?)),
                    RunState::Active | RunState::Expanding => {}
                }
                let expanding = run.state == RunState::Expanding;
                match self.store.next_due_at(run_id, self.now_ms()).await? {
                    // Its CSV is still being read: more jobs are coming.
                    None if expanding && stop_when_idle => return Ok(RunEnd::Idle { next_due_at: self.now_ms() }),
                    None if expanding => {
                        tokio::select! {
                            _ = tokio::time::sleep(self.settings.idle_poll.min(Duration::from_millis(50))) => {}
                            _ = self.shutdown.cancelled() => {}
                            _ = self.wake.notified() => {}
                        }
                    }
                    None => {
                        // What is left pending has expired: settle it, then finish.
                        self.sweep_expired(run_id).await?;
                        let finished = self.store.finish_run_if_done(run_id, self.now_ms()).await?;
                        if finished || !self.store.is_shared() {
                            return Ok(RunEnd::Finished(self.store.run_counts(run_id).await?));
                        }
                        // Other instances still have creates of this run out:
                        // wait for their outcomes, or for their leases to run
                        // out (they died) and take their jobs over.
                        if stop_when_idle {
                            return Ok(RunEnd::Idle { next_due_at: self.now_ms() });
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(self.settings.idle_poll.max(Duration::from_millis(100))) => {}
                            _ = self.shutdown.cancelled() => {}
                            _ = self.wake.notified() => {}
                        }
                        if self.take_over_expired(run_id).await? > 0 {
                            reconciling = true;
                        }
                    }
                    Some(due) if stop_when_idle && due > self.now_ms() => {
                        return Ok(RunEnd::Idle { next_due_at: due });
                    }
                    Some(due) => {
                        let wait = Duration::from_millis((due - self.now_ms()).max(1) as u64);
                        tokio::select! {
                            _ = tokio::time::sleep(wait.min(self.settings.idle_poll)) => {}
                            _ = self.shutdown.cancelled() => {}
                            _ = self.wake.notified() => {}
                        }
                    }
                }
            } else {
                let wait = match busy {
                    true if settled.is_empty() => self.settings.idle_poll,
                    true => self.settings.flush_every.saturating_sub(last_flush.elapsed()),
                    false => match self.store.next_due_at(run_id, self.now_ms()).await? {
                        Some(due) if free > 0 => Duration::from_millis((due - self.now_ms()).max(1) as u64),
                        _ => self.settings.idle_poll,
                    },
                };
                tokio::select! {
                    done = tasks.join_next() => {
                        if let Some(done) = done {
                            self.settle(done, &mut stop, &mut breaker, &mut settled, &held);
                        }
                    }
                    _ = tokio::time::sleep(wait.min(self.settings.idle_poll)) => {}
                    _ = self.shutdown.cancelled() => {}
                    _ = self.wake.notified() => {}
                }
            }
        }

        // Stopping: claim nothing more; let the requests already in flight finish
        // (bounded by the grace period) and record their outcomes. A job whose task
        // is cut off stays `dispatching` and is reconciled at the next start.
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(done)) => self.settle(done, &mut stop, &mut breaker, &mut settled, &held),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        run = run_id,
                        left = tasks.len(),
                        "grace period over; abandoning requests in flight"
                    );
                    tasks.abort_all();
                    break;
                }
            }
        }
        self.flush(run_id, &mut settled, None).await?;
        match stop {
            Some(reason) => {
                // Paused with the reason, unless a user paused or cancelled it first.
                let why = reason.to_string();
                crate::runs::move_run(
                    &self.store,
                    run_id,
                    RunState::Paused,
                    &why,
                    self.now_ms(),
                    RunState::is_dispatchable,
                )
                .await?;
                Ok(RunEnd::Stopped(reason))
            }
            None => Ok(RunEnd::Interrupted),
        }
    }

    /// Settles the run's pending jobs whose `expires` has passed, in bulk.
    async fn sweep_expired(&self, run_id: i64) -> Result<usize, DispatchError> {
        let expired = self.store.expire_overdue(run_id, self.now_ms()).await?;
        if expired > 0 {
            tracing::info!(run = run_id, jobs = expired, "jobs expired before they could be sent");
        }
        Ok(expired)
    }

    /// Commits run `run_id`'s settled outcomes and pending audit records in
    /// one transaction.
    ///
    /// A create Studio answered is kept on its job's row when the batch
    /// that records the job sent holds it too, so the record of a job still
    /// in flight (`in_flight`; its outcome is on its way) waits for the
    /// batch with its outcome. The records buffer is shared by the runs this
    /// dispatcher serves at once, and each run's loop knows its own jobs in
    /// flight alone: a flush takes its own run's records, and the others
    /// wait for their runs' flushes. A flush with nothing in flight passes
    /// `None` and takes every record of the run: a request abandoned at
    /// shutdown, or a job whose task failed, has no outcome to wait for,
    /// and its record is then a row of its own.
    async fn flush(
        &self,
        run_id: i64,
        settled: &mut Vec<SettledJob>,
        in_flight: Option<&std::sync::Mutex<std::collections::HashSet<i64>>>,
    ) -> Result<(), DispatchError> {
        let calls = {
            let mut buffered = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let held = in_flight.map(lock_held);
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut *buffered).into_iter().partition(|c| {
                let waits = match (&held, c.answered_create()) {
                    (Some(held), Some((job, _))) => held.contains(&job),
                    _ => false,
                };
                c.run_id.is_none_or(|r| r == run_id) && !waits
            });
            *buffered = waiting;
            ready
        };
        if settled.is_empty() && calls.is_empty() {
            return Ok(());
        }
        self.store.record_outcomes(std::mem::take(settled), calls, self.settings.outcome_after).await?;
        Ok(())
    }

    fn settle(
        &self,
        done: Result<Processed, tokio::task::JoinError>,
        stop: &mut Option<StopReason>,
        breaker: &mut Breaker,
        settled: &mut Vec<SettledJob>,
        held: &std::sync::Mutex<std::collections::HashSet<i64>>,
    ) {
        match done {
            Ok(processed) => {
                lock_held(held).remove(&processed.job_id);
                settled.push(SettledJob {
                    job_id: processed.job_id,
                    outcome: processed.outcome.clone(),
                    attempts_sent: processed.attempts_sent,
                    at: processed.at,
                });
                if let Some(reason) = processed.stop {
                    stop.get_or_insert(reason);
                } else if let Some(reason) = breaker.record(&processed.outcome) {
                    tracing::error!("{}", crate::domain::mask_phones_in(&reason.to_string()));
                    stop.get_or_insert(reason);
                }
            }
            // A panicking job task leaves its job `dispatching`; the next start
            // reconciles it like a crash, so nothing is sent twice.
            Err(e) => tracing::error!(error = %e, "a dispatch task failed"),
        }
    }
}

/// Counts consecutive transient failures; opens after `streak` of them.
struct Breaker {
    streak: u32,
    seen: u32,
}

impl Breaker {
    fn new(streak: u32) -> Self {
        Breaker { streak, seen: 0 }
    }

    fn record(&mut self, outcome: &JobOutcome) -> Option<StopReason> {
        let transient = match outcome {
            JobOutcome::Retry { throttled: false, last_error: Some(e), conflict: None, .. } => Some(e),
            JobOutcome::Failed { reason, last_error: Some(e) } if reason.kind == ReasonKind::Transient => Some(e),
            // Throttling, waiting and windows say nothing about Studio's health.
            JobOutcome::Retry { .. } | JobOutcome::Release => return None,
            _ => None,
        };
        match transient {
            Some(e) => {
                self.seen += 1;
                (self.streak > 0 && self.seen >= self.streak)
                    .then(|| StopReason::CircuitOpen { streak: self.seen, last_error: e.clone() })
            }
            None => {
                self.seen = 0;
                None
            }
        }
    }
}

fn lock_held(
    held: &std::sync::Mutex<std::collections::HashSet<i64>>,
) -> std::sync::MutexGuard<'_, std::collections::HashSet<i64>> {
    // A set of ids, each change complete: still consistent after a panic.
    held.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops a background task when the scope that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
