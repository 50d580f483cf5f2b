//! Reading outcomes back from Studio: what each sent Execution ended with.
//!
//! A job's Execution is first read `outcome_after` its create (at once when an
//! Event Streams delivery says it ended), then at growing intervals while it is
//! still running, until `outcome_timeout` (then its outcome is `unknown`). An
//! ended Execution is read once: its status, its Context (for the campaign's
//! outcome fields) and its Steps (for the widget it ended in). What is left to
//! ask lives in the ledger, so a restart picks up where it stopped.
//!
//! What an Execution shows about its contact is learned on the way: a reply
//! that is an opt-out keyword, or a send that Twilio refused because the
//! contact unsubscribed (21610) or the number cannot receive SMS (21614),
//! suppresses them. Those errors sit in the failed widget's entry of the
//! Context, and of the Context of the Step that left it (the Step list's own
//! copy, else one more read for each Step that left a widget on `failed` or
//! `deliveryFailure`).
//!
//! Reads have their own pace (`FLOWCAST_READ_RATE`), apart from creates, so
//! reading back never takes a create's slot; their answers are classified like
//! any Studio call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dispatch::RateLimits;
use crate::domain::{
    Channel, CollectedOutcome, FlowSid, OutcomeField, OutcomeState, SEND_FAILED_EVENTS, Scope, StepSeen, backoff_delay,
    suppressions_learned,
};
use crate::schedule::Clock;
use crate::store::{OutcomeJob, Store, StoreError};
use crate::studio::{StudioApi, StudioError};

/// How outcomes are read back.
#[derive(Debug, Clone)]
pub struct CollectSettings {
    /// First read, this long after the create (`FLOWCAST_OUTCOME_AFTER`).
    pub after: Duration,
    /// Give up on an Execution still running this long after its create
    /// (`FLOWCAST_OUTCOME_TIMEOUT`): its outcome is `unknown`.
    pub timeout: Duration,
    /// Studio reads per second (`FLOWCAST_READ_RATE`).
    pub read_rate: u32,
    /// Executions read at once.
    pub concurrency: usize,
    /// The longest interval between two reads of a running Execution.
    pub max_interval: Duration,
    /// Jobs taken from the ledger per pass.
    pub batch: u32,
    /// How long an idle collector sleeps before looking again.
    pub idle_poll: Duration,
}

impl Default for CollectSettings {
    fn default() -> Self {
        CollectSettings {
            after: Duration::from_secs(300),
            timeout: Duration::from_secs(7 * 86_400),
            read_rate: 20,
            concurrency: 8,
            max_interval: Duration::from_secs(6 * 3600),
            batch: 200,
            idle_poll: Duration::from_secs(5),
        }
    }
}

/// What a run's outcomes need: the Flow, the fields to read, and the channel
/// (an error that a number cannot receive SMS only means something for SMS).
struct RunFields {
    flow: FlowSid,
    fields: Vec<OutcomeField>,
    channel: Channel,
}

/// What one read-back did.
enum ReadBack {
    Settled(OutcomeState, CollectedOutcome),
    /// Read back, and it showed that its contact must be suppressed: in each
    /// scope, with the reason.
    Suppress(Vec<(Scope, String)>, CollectedOutcome),
    Later(i64),
}

/// Reads outcomes back, for `serve` (continuously) and `flowcast collect`.
pub struct Collector<S: StudioApi> {
    store: Store,
    studio: Arc<S>,
    clock: Arc<dyn Clock>,
    settings: CollectSettings,
    /// The pace of reads; a 429 holds them all.
    reads: RateLimits,
    runs: Mutex<HashMap<i64, Arc<RunFields>>>,
    wake: tokio::sync::Notify,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Outcomes settled (known or unknown).
    pub settled: usize,
    /// Executions still running, asked again later.
    pub later: usize,
}

impl<S: StudioApi> Collector<S> {
    pub fn new(store: Store, studio: Arc<S>, clock: Arc<dyn Clock>, settings: CollectSettings) -> Self {
        let reads = RateLimits::new(settings.read_rate.max(1));
        Collector { store, studio, clock, settings, reads, runs: Mutex::new(HashMap::new()), wake: Default::default() }
    }

    /// The pace of this collector's Studio reads, for other reads made
    /// alongside (an operator ending Executions in `serve`) to share.
    pub fn reads(&self) -> &RateLimits {
        &self.reads
    }

    /// Looks for due outcomes now (an Execution was reported ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    async fn run_fields(&self, run_id: i64) -> Result<Arc<RunFields>, StoreError> {
        if let Some(known) = self.runs.lock().unwrap_or_else(|e| e.into_inner()).get(&run_id) {
            return Ok(Arc::clone(known));
        }
        let run = self.store.get_run(run_id).await?;
        let fields = Arc::new(RunFields { flow: run.flow, fields: run.outcomes, channel: run.channel });
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id, Arc::clone(&fields));
        Ok(fields)
    }

    /// Reads back the outcomes that are due (with `all`, every open one),
    /// optionally of one run, a batch at a time until none is left.
    pub async fn pass(self: &Arc<Self>, run: Option<i64>, all: bool) -> Result<Pass, StoreError> {
        let mut total = Pass::default();
        let mut asked: std::collections::HashSet<i64> = std::collections::HashSet::new();
        loop {
            let due = self.store.due_outcomes(run, self.now_ms(), self.settings.batch, all).await?;
            // With `all`, a job asked once in this pass and rescheduled is not
            // asked again until the next pass.
            let due: Vec<OutcomeJob> = due.into_iter().filter(|j| asked.insert(j.id)).collect();
            if due.is_empty() {
                return Ok(total);
            }
            let mut tasks = JoinSet::new();
            for job in due {
                while tasks.len() >= self.settings.concurrency.max(1) {
                    if let Some(done) = tasks.join_next().await {
                        count(&mut total, done)?;
                    }
                }
                let this = Arc::clone(self);
                tasks.spawn(async move { this.settle(job).await });
            }
            while let Some(done) = tasks.join_next().await {
                count(&mut total, done)?;
            }
        }
    }

    /// Reads one job's Execution back and records what it found.
    async fn settle(&self, job: OutcomeJob) -> Result<bool, StoreError> {
        let fields = self.run_fields(job.run_id).await?;
        let now = self.now_ms();
        match self.read_back(&job, &fields).await {
            ReadBack::Settled(state, outcome) => {
                self.store.record_collected(job.id, state, outcome, self.now_ms()).await?;
                Ok(true)
            }
            ReadBack::Suppress(learned, outcome) => {
                // The contact answered with an opt-out word, or Twilio refused a
                // send to them for good: no campaign in the scope may reach them
                // again. Recorded before the outcome, so a crash in between
                // reads the Execution again rather than losing the suppression.
                for (scope, reason) in &learned {
                    self.store.suppress(&job.phone, scope, Some(reason), "studio", self.now_ms()).await?;
                    tracing::info!(job = job.id, phone = %job.phone.masked(), %scope, reason, "suppressed: learned from the Execution");
                }
                self.store.record_collected(job.id, OutcomeState::Known, outcome, self.now_ms()).await?;
                Ok(true)
            }
            ReadBack::Later(due) => {
                self.store.reschedule_outcome(job.id, due, now).await?;
                Ok(false)
            }
        }
    }

    async fn read_back(&self, job: &OutcomeJob, run: &RunFields) -> ReadBack {
        let now = self.now_ms();
        let gone = |status: &str| {
            ReadBack::Settled(
                OutcomeState::Unknown,
                CollectedOutcome::read(&run.fields, status, &serde_json::Value::Null, &[]),
            )
        };
        self.reads.until_ready("", None).await;
        let execution = match self.studio.fetch_execution(&run.flow, &job.execution_sid).await {
            Ok(e) => e,
            Err(StudioError::NotFound(_)) => return gone("not_found"),
            Err(e) => return self.after_error(job, e, &run.fields),
        };
        if execution.is_active() {
            let deadline = job.sent_at.saturating_add(millis(self.settings.timeout));
            if now >= deadline {
                return gone("active");
            }
            let interval = self.settings.after.saturating_mul(1u32 << job.polls.clamp(0, 20) as u32);
            return ReadBack::Later(now.saturating_add(millis(interval.min(self.settings.max_interval))).min(deadline));
        }
        self.reads.until_ready("", None).await;
        let context = match self.studio.execution_context(&run.flow, &job.execution_sid).await {
            Ok(c) => c,
            Err(StudioError::NotFound(_)) => return gone("not_found"),
            Err(e) => return self.after_error(job, e, &run.fields),
        };
        self.reads.until_ready("", None).await;
        let mut steps = match self.studio.list_steps(&run.flow, &job.execution_sid).await {
            Ok(steps) => steps,
            Err(StudioError::NotFound(_)) => Vec::new(),
            Err(e) => return self.after_error(job, e, &run.fields),
        };
        let mut step_contexts = Vec::new();
        for step in &mut steps {
            match step.context.take() {
                Some(c) if c.as_object().is_some_and(|o| !o.is_empty()) => step_contexts.push(c),
                // A failed send's error is in the context of the Step that left
                // its widget; the list does not always carry it.
                _ if step.name.as_deref().is_some_and(|n| SEND_FAILED_EVENTS.contains(&n)) => {
                    self.reads.until_ready("", None).await;
                    match self.studio.step_context(&run.flow, &job.execution_sid, &step.sid).await {
                        Ok(c) => step_contexts.push(c),
                        Err(StudioError::NotFound(_)) => {}
                        Err(e) => return self.after_error(job, e, &run.fields),
                    }
                }
                _ => {}
            }
        }
        let seen: Vec<StepSeen> = steps
            .into_iter()
            .map(|s| StepSeen {
                transitioned_from: s.transitioned_from,
                transitioned_to: s.transitioned_to,
                date_created: s.date_created,
            })
            .collect();
        let status = execution.status.unwrap_or_else(|| "ended".into());
        let outcome = CollectedOutcome::read(&run.fields, &status, &context, &seen);
        let learned =
            suppressions_learned(std::iter::once(&context).chain(&step_contexts), job.phone.as_str(), run.channel);
        if learned.is_empty() {
            ReadBack::Settled(OutcomeState::Known, outcome)
        } else {
            ReadBack::Suppress(learned, outcome)
        }
    }

    /// A read Studio could not answer: asked again later, by class.
    fn after_error(&self, job: &OutcomeJob, error: StudioError, fields: &[OutcomeField]) -> ReadBack {
        let now = self.now_ms();
        // A request Studio refuses as such, or any error past the timeout, is
        // not asked again: the outcome is unknown.
        let deadline = job.sent_at.saturating_add(millis(self.settings.timeout));
        if matches!(error, StudioError::Invalid(_)) || now >= deadline {
            tracing::warn!(job = job.id, error = %crate::domain::mask_phones_in(&error.to_string()), "giving up reading an outcome back");
            return ReadBack::Settled(
                OutcomeState::Unknown,
                CollectedOutcome::read(fields, "error", &serde_json::Value::Null, &[]),
            );
        }
        let delay = match &error {
            StudioError::Throttled { retry_after, .. } => {
                let delay = retry_after.unwrap_or(Duration::from_secs(1));
                self.reads.hold_for(delay);
                delay
            }
            StudioError::Unauthorized(_) => {
                tracing::error!(job = job.id, error = %error, "Studio refused the credentials while reading an outcome back");
                self.settings.after
            }
            _ => {
                tracing::warn!(job = job.id, error = %crate::domain::mask_phones_in(&error.to_string()), "reading an outcome back failed; asking again later");
                backoff_delay(job.polls.clamp(0, 30) as u32, Duration::from_secs(5), self.settings.max_interval, 1.0)
            }
        };
        ReadBack::Later(now.saturating_add(millis(delay)))
    }

    /// `serve`'s loop: read back what is due, then wait for the next due
    /// outcome, a wake (an Execution reported ended) or shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.pass(None, false).await {
                tracing::error!(error = %e, "reading outcomes back failed");
            }
            let wait = match self.store.next_outcome_due(None).await {
                Ok(Some(due)) => Duration::from_millis((due - self.now_ms()).max(0) as u64),
                _ => self.settings.idle_poll,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.min(self.settings.idle_poll).max(Duration::from_millis(50))) => {}
            }
        }
    }

    /// `flowcast collect`: asks about every open outcome at once, then keeps
    /// reading what becomes due until none is open or `wait` has passed.
    /// Returns how many are still open.
    pub async fn until_settled(self: &Arc<Self>, run: Option<i64>, wait: Duration) -> Result<i64, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        self.pass(run, true).await?;
        loop {
            let open = self.store.open_outcomes(run).await?;
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(open);
            }
            let next = self.store.next_outcome_due(run).await?.unwrap_or(self.now_ms());
            let until_due = Duration::from_millis((next - self.now_ms()).max(0) as u64);
            let nap = until_due.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            tokio::time::sleep(nap.max(Duration::from_millis(10))).await;
            self.pass(run, false).await?;
        }
    }
}

fn count(total: &mut Pass, done: Result<Result<bool, StoreError>, tokio::task::JoinError>) -> Result<(), StoreError> {
    match done {
        Ok(Ok(true)) => total.settled += 1,
        Ok(Ok(false)) => total.later += 1,
        Ok(Err(e)) => return Err(e),
        Err(e) => tracing::error!(error = %e, "an outcome task failed"),
    }
    Ok(())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
