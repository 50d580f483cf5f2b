//! Ending Executions that are still active in Studio, one way for every
//! caller: `flowcast executions end`, `flowcast cancel RUN --end-active` and
//! `POST /api/runs/{id}/cancel?end_active=true` all come here.
//!
//! A run's active Executions are found with one paged list of its Flow's
//! active Executions, narrowed to the span in which the run created them
//! (`DateCreatedFrom` / `DateCreatedTo`), and kept only where the ledger says
//! one of the run's jobs created them: Executions of other runs, other tools or
//! the Console on the same Flow are never touched. That costs one request per
//! thousand active Executions instead of one read per job.
//!
//! Each is then ended (`Status=ended`) at the read pace, a few at a time. Every
//! request is recorded in the audit trail (`studio_calls`) against the job it
//! belongs to, as the `end` conflict policy records its own; an Execution that
//! ended is also recorded on its job, as an Event Streams delivery would be, so
//! that jobs waiting on it go on at once. No ledger transaction is held while
//! Studio is asked: the answers of each batch are written after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use super::control::{ControlError, Transition, control};
use crate::dispatch::RateLimits;
use crate::domain::{EndOutcome, FlowSid, JobState, RunAction, RunState, backoff_delay};
use crate::store::{ExecutionJob, RunRow, Store, StoreError, StudioCall};
use crate::studio::{Execution, ListFilter, StudioApi, StudioError};

/// How far Studio's clock may be from ours when narrowing its list by date:
/// an Execution is looked for this much before the run began and after its
/// last create answered.
const CLOCK_SKEW_MARGIN: chrono::Duration = chrono::Duration::seconds(120);

/// Requests per Execution at most when Studio throttles or does not answer;
/// ending twice is harmless, so an unknown outcome is simply asked again.
const ATTEMPTS: u32 = 3;

/// Executions ended between two writes of their answers to the ledger.
const BATCH: usize = 100;

/// How long Studio is left alone after a 429 that names no `Retry-After`.
const THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// What an Execution Studio does not know (404) is reported as: over, or
/// never of this Flow; either way there is nothing to end.
const NOT_FOUND: &str = "Studio does not know it (404)";

/// The reason recorded on a job whose Execution flowcast ended.
pub const ENDED_REASON: &str = "ended by flowcast";

/// How ends are made.
#[derive(Debug, Clone)]
pub struct EndSettings {
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Before a run's Executions are looked for, how long its creates still
    /// in flight (jobs `dispatching` in another process, e.g. `serve`) may
    /// take to be recorded; zero when no one else dispatches.
    pub settle: Duration,
    /// Who asked, for the audit trail's note (e.g. `flowcast executions end`).
    pub asked_by: String,
}

/// An Execution to end, with the job that created it when the ledger has one.
#[derive(Debug, Clone)]
pub struct EndTarget {
    pub flow: FlowSid,
    pub sid: String,
    pub job: Option<ExecutionJob>,
    /// The contact, as Studio or the ledger has it.
    pub phone: Option<String>,
    /// Studio listed it as active just now: no need to ask again first.
    pub listed_active: bool,
}

/// What came of ending one Execution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ended {
    pub sid: String,
    pub job: Option<i64>,
    pub phone: Option<String>,
    pub outcome: EndOutcome,
    /// Studio's answer, for `already_ended` and `failed`.
    pub detail: Option<String>,
}

/// How many Executions came to each [`EndOutcome`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndCounts {
    pub ended: usize,
    pub already_ended: usize,
    pub failed: usize,
}

/// The counts of ends under way, readable while they go on (the HTTP API
/// answers with them when ending takes longer than a request may).
#[derive(Debug, Default)]
pub struct EndProgress {
    ended: AtomicUsize,
    already_ended: AtomicUsize,
    failed: AtomicUsize,
}

impl EndProgress {
    pub fn counts(&self) -> EndCounts {
        EndCounts {
            ended: self.ended.load(Ordering::Relaxed),
            already_ended: self.already_ended.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    fn add(&self, outcome: EndOutcome, n: usize) {
        let counter = match outcome {
            EndOutcome::Ended => &self.ended,
            EndOutcome::AlreadyEnded => &self.already_ended,
            EndOutcome::Failed => &self.failed,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What ending a run's active Executions did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunEnded {
    /// `already_ended` counts every Execution of the run that Studio did not
    /// list as active, besides those found ended when asked to end.
    pub counts: EndCounts,
    /// Jobs still `dispatching` when the run was looked at: a create in
    /// flight may yet make an Execution that was not ended.
    pub in_flight: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Studio refused the credentials, or could not list the Flow's
    /// Executions: nothing (more) was ended.
    #[error("studio: {0}")]
    Studio(#[from] StudioError),
}

/// Cancels run `id` before its Executions are ended: as [`control`] does,
/// except that a finished run is left as it is rather than refused (it has
/// nothing left to send, but its Executions may still be active).
pub async fn cancel_for_end(store: &Store, id: i64, now_ms: i64) -> Result<Transition, ControlError> {
    match control(store, id, RunAction::Cancel, now_ms).await {
        Err(ControlError::NotAllowed(refused)) if refused.from == RunState::Finished => {
            Ok(Transition { from: RunState::Finished, to: RunState::Finished })
        }
        other => other,
    }
}

/// Ends every Execution of run `run_id` that Studio lists as active, and
/// records each end; `on_each` sees each one as it is settled.
pub async fn end_active(
    studio: &impl StudioApi,
    store: &Store,
    run_id: i64,
    settings: &EndSettings,
    reads: &RateLimits,
    progress: &EndProgress,
    on_each: impl FnMut(&Ended),
) -> Result<RunEnded, EndError> {
    let in_flight = settle_in_flight(store, run_id, settings.settle).await?;
    let run = store.get_run(run_id).await?;
    let targets = active_of_run(studio, store, &run, reads).await?;
    let sent = store.run_counts(run_id).await?.get(JobState::Sent);
    // The run's other Executions were not listed as active: already over.
    let not_listed = usize::try_from(sent).unwrap_or(0).saturating_sub(targets.len());
    progress.add(EndOutcome::AlreadyEnded, not_listed);
    end_each(studio, store, targets, settings, reads, progress, on_each).await?;
    Ok(RunEnded { counts: progress.counts(), in_flight })
}

/// Waits until no job of the run is `dispatching`, or `settle` has passed;
/// returns how many still are.
async fn settle_in_flight(store: &Store, run_id: i64, settle: Duration) -> Result<i64, StoreError> {
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let in_flight = store.run_counts(run_id).await?.get(JobState::Dispatching);
        if in_flight == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(in_flight);
        }
        // The dispatcher records its outcomes in batches; no change feed says
        // when, so the ledger is looked at again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The run's Executions that Studio lists as active right now, each with the
/// job that created it. The list is recorded in the audit trail for the run.
pub async fn active_of_run(
    studio: &impl StudioApi,
    store: &Store,
    run: &RunRow,
    reads: &RateLimits,
) -> Result<Vec<EndTarget>, EndError> {
    let Some(last_sent) = store.last_sent_at(run.id).await? else {
        return Ok(Vec::new());
    };
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let filter = ListFilter {
        status: Some("active"),
        date_created_from: Some(at(run.created_at) - CLOCK_SKEW_MARGIN),
        date_created_to: Some(at(last_sent) + CLOCK_SKEW_MARGIN),
        ..ListFilter::default()
    };
    let request = format!(
        "Status=active DateCreatedFrom={} DateCreatedTo={}",
        filter.date_created_from.map(|t| t.to_rfc3339()).unwrap_or_default(),
        filter.date_created_to.map(|t| t.to_rfc3339()).unwrap_or_default()
    );
    let audited = Audited { run: Some(run.id), job: None, execution: None, operation: "list", request, note: None };
    let mut calls = Vec::new();
    let listed = with_retries(
        reads,
        || studio.list_executions(&run.flow, &filter),
        |answer: &Result<Vec<Execution>, StudioError>, attempt| {
            calls.push(audited.record(&answer.as_ref().map(|l| format!("{} executions", l.len())), attempt));
        },
    )
    .await;
    store.record_calls(calls).await?;
    let listed: Vec<Execution> = listed?;
    let mut targets = Vec::new();
    for chunk in listed.chunks(BATCH * 10) {
        let sids: Vec<String> = chunk.iter().map(|e| e.sid.clone()).collect();
        let jobs = store.jobs_for_executions(sids).await?;
        for e in chunk {
            if let Some(job) = jobs.get(&e.sid).filter(|j| j.run_id == run.id) {
                targets.push(EndTarget {
                    flow: run.flow.clone(),
                    sid: e.sid.clone(),
                    job: Some(job.clone()),
                    phone: e.contact_channel_address.clone(),
                    listed_active: true,
                });
            }
        }
    }
    // Studio lists newest first; the ledger's order reads better.
    targets.sort_by_key(|t| t.job.as_ref().map(|j| j.job_id));
    Ok(targets)
}

/// Ends each of `targets`, a batch at a time, and records every request and
/// every end in the ledger after each batch. Stops at once when Studio
/// refuses the credentials (the batch's answers are recorded first).
pub async fn end_each(
    studio: &impl StudioApi,
    store: &Store,
    targets: Vec<EndTarget>,
    settings: &EndSettings,
    reads: &RateLimits,
    progress: &EndProgress,
    mut on_each: impl FnMut(&Ended),
) -> Result<(), EndError> {
    for batch in targets.chunks(BATCH) {
        let mut answers = Vec::with_capacity(batch.len());
        let mut running = FuturesOrdered::new();
        for target in batch {
            if running.len() >= settings.concurrency.max(1)
                && let Some(answer) = running.next().await
            {
                answers.push(answer);
            }
            running.push_back(end_one(studio, target, &settings.asked_by, reads));
        }
        while let Some(answer) = running.next().await {
            answers.push(answer);
        }
        let mut refused = None;
        let mut calls = Vec::new();
        let mut ended = Vec::new();
        for (result, mut made, stop) in answers {
            calls.append(&mut made);
            if stop.is_some() {
                refused = stop;
                continue;
            }
            if result.outcome == EndOutcome::Ended {
                ended.push(result.sid.clone());
            }
            progress.add(result.outcome, 1);
            on_each(&result);
        }
        store.record_calls(calls).await?;
        let now = chrono::Utc::now().timestamp_millis();
        for sid in ended {
            store.record_execution_end(&sid, now, Some(ENDED_REASON), now).await?;
        }
        if let Some(e) = refused {
            return Err(EndError::Studio(e));
        }
    }
    Ok(())
}

/// Ends one Execution: what came of it, the audit records of its requests,
/// and Studio's refusal of the credentials, which stops everything.
async fn end_one(
    studio: &impl StudioApi,
    target: &EndTarget,
    asked_by: &str,
    reads: &RateLimits,
) -> (Ended, Vec<StudioCall>, Option<StudioError>) {
    let mut calls = Vec::new();
    let run = target.job.as_ref().map(|j| j.run_id);
    let job = target.job.as_ref().map(|j| j.job_id);
    let result = |outcome, detail: Option<String>| Ended {
        sid: target.sid.clone(),
        job,
        phone: target.phone.clone(),
        outcome,
        detail,
    };
    // An Execution not just listed as active is asked about first, so that
    // one already over is reported so rather than ended again.
    if !target.listed_active {
        match fetch(studio, target, reads, &mut calls).await {
            Ok(Some(detail)) => return (result(EndOutcome::AlreadyEnded, Some(detail)), calls, None),
            Ok(None) => {}
            Err(e @ StudioError::Unauthorized(_)) => {
                return (result(EndOutcome::Failed, Some(e.to_string())), calls, Some(e));
            }
            Err(e) => return (result(EndOutcome::Failed, Some(e.to_string())), calls, None),
        }
    }
    let audited = Audited {
        run,
        job,
        execution: Some(&target.sid),
        operation: "end",
        request: format!("Status=ended Execution={}", target.sid),
        note: Some(format!("{asked_by} ended {}", target.sid)),
    };
    let answer = with_retries(
        reads,
        || studio.end_execution(&target.flow, &target.sid),
        |answer: &Result<Execution, StudioError>, attempt| calls.push(audited.record(&status_of(answer), attempt)),
    )
    .await;
    let (outcome, detail, stop) = match answer {
        Ok(e) if e.is_active() => (EndOutcome::Failed, Some("Studio still reports it active".to_string()), None),
        Ok(_) => (EndOutcome::Ended, None, None),
        Err(StudioError::NotFound(_)) => (EndOutcome::AlreadyEnded, Some(NOT_FOUND.to_string()), None),
        Err(e @ StudioError::Unauthorized(_)) => (EndOutcome::Failed, Some(e.to_string()), Some(e)),
        // Studio may refuse to end an Execution that has just ended by
        // itself: ask what it is now.
        Err(e @ (StudioError::Invalid(_) | StudioError::Conflict { .. })) => {
            match fetch(studio, target, reads, &mut calls).await {
                Ok(Some(detail)) => (EndOutcome::AlreadyEnded, Some(detail), None),
                _ => (EndOutcome::Failed, Some(e.to_string()), None),
            }
        }
        Err(e) => (EndOutcome::Failed, Some(e.to_string()), None),
    };
    (result(outcome, detail), calls, stop)
}

/// Asks Studio about the target's Execution: `Some(why)` when it is over (or
/// unknown to Studio), `None` when it is active.
async fn fetch(
    studio: &impl StudioApi,
    target: &EndTarget,
    reads: &RateLimits,
    calls: &mut Vec<StudioCall>,
) -> Result<Option<String>, StudioError> {
    let audited = Audited {
        run: target.job.as_ref().map(|j| j.run_id),
        job: target.job.as_ref().map(|j| j.job_id),
        execution: Some(&target.sid),
        operation: "fetch",
        request: format!("Execution={}", target.sid),
        note: None,
    };
    let answer = with_retries(
        reads,
        || studio.fetch_execution(&target.flow, &target.sid),
        |answer: &Result<Execution, StudioError>, attempt| calls.push(audited.record(&status_of(answer), attempt)),
    )
    .await;
    match answer {
        Ok(e) if e.is_active() => Ok(None),
        Ok(e) => Ok(Some(format!("status {}", e.status.as_deref().unwrap_or("unknown")))),
        Err(StudioError::NotFound(_)) => Ok(Some(NOT_FOUND.to_string())),
        Err(e) => Err(e),
    }
}

/// An Execution's answer as the audit trail keeps it: its status.
fn status_of(answer: &Result<Execution, StudioError>) -> Result<String, &StudioError> {
    answer.as_ref().map(|e| format!("status {}", e.status.as_deref().unwrap_or("unknown")))
}

/// Makes a Studio request at the read pace, again after a 429 (all reads
/// wait out its pause) or a failure to answer, up to [`ATTEMPTS`] times;
/// `answered` sees each attempt's answer and number (from 1).
async fn with_retries<T, Fut>(
    reads: &RateLimits,
    mut request: impl FnMut() -> Fut,
    mut answered: impl FnMut(&Result<T, StudioError>, u32),
) -> Result<T, StudioError>
where
    Fut: Future<Output = Result<T, StudioError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        reads.until_ready("", None).await;
        let answer = request().await;
        answered(&answer, attempt);
        let error = match answer {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let delay = match &error {
            StudioError::Throttled { retry_after, .. } => {
                // Every read waits this out, not only this one.
                reads.hold_for(retry_after.unwrap_or(THROTTLE_PAUSE));
                Duration::ZERO
            }
            StudioError::Transient { .. } => {
                backoff_delay(attempt - 1, Duration::from_millis(500), Duration::from_secs(5), rand::random::<f64>())
            }
            _ => return Err(error),
        };
        if attempt >= ATTEMPTS {
            return Err(error);
        }
        tracing::warn!(attempt, error = %error, "Studio call failed; asking again");
        tokio::time::sleep(delay).await;
    }
}

/// A request as the audit trail describes it, before its answer is known.
struct Audited<'a> {
    run: Option<i64>,
    job: Option<i64>,
    execution: Option<&'a str>,
    operation: &'static str,
    request: String,
    note: Option<String>,
}

impl Audited<'_> {
    /// The audit record of one attempt and its answer.
    fn record(&self, answer: &Result<String, &StudioError>, attempt: u32) -> StudioCall {
        let (http_status, response, outcome) = match answer {
            Ok(detail) => (None, Some(detail.clone()), "ok".to_string()),
            Err(e) => (e.http_status(), Some(e.to_string()), e.class().to_string()),
        };
        let note = match (&self.note, attempt) {
            (note, 1) => note.clone(),
            (Some(note), n) => Some(format!("{note} (attempt {n})")),
            (None, n) => Some(format!("attempt {n}")),
        };
        StudioCall {
            run_id: self.run,
            job_id: self.job,
            at: chrono::Utc::now().timestamp_millis(),
            operation: self.operation,
            request: self.request.clone(),
            http_status,
            response,
            outcome,
            execution_sid: self.execution.map(str::to_string),
            note,
        }
    }
}

/// Each Execution of `sids` (of `flow`) as Studio has it now, in order, at
/// the read pace, `concurrency` at a time. Reads change nothing, so they are
/// not audited.
pub async fn fetch_each(
    studio: &impl StudioApi,
    flow: &FlowSid,
    sids: &[String],
    concurrency: usize,
    reads: &RateLimits,
) -> Vec<Result<Execution, StudioError>> {
    let mut found = Vec::with_capacity(sids.len());
    let mut running = FuturesOrdered::new();
    for sid in sids {
        if running.len() >= concurrency.max(1)
            && let Some(answer) = running.next().await
        {
            found.push(answer);
        }
        running.push_back(fetch_one(studio, flow, sid, reads));
    }
    while let Some(answer) = running.next().await {
        found.push(answer);
    }
    found
}

async fn fetch_one(
    studio: &impl StudioApi,
    flow: &FlowSid,
    sid: &str,
    reads: &RateLimits,
) -> Result<Execution, StudioError> {
    with_retries(reads, || studio.fetch_execution(flow, sid), |_, _| {}).await
}

/// Ends asked by SID: each SID's Flow (`flow`, else that of the run whose
/// job created it) and job; `Err` with the SIDs whose Flow is unknown (no
/// `flow` given and no job created them).
pub async fn targets_for(
    store: &Store,
    sids: &[String],
    flow: Option<&FlowSid>,
) -> Result<Result<Vec<EndTarget>, Vec<String>>, StoreError> {
    let jobs = store.jobs_for_executions(sids.to_vec()).await?;
    let mut flows: HashMap<i64, FlowSid> = HashMap::new();
    let mut targets = Vec::with_capacity(sids.len());
    let mut unknown = Vec::new();
    for sid in sids {
        let job = jobs.get(sid).cloned();
        let flow = match (flow, &job) {
            (Some(flow), _) => flow.clone(),
            (None, Some(job)) => match flows.get(&job.run_id) {
                Some(flow) => flow.clone(),
                None => {
                    let flow = store.get_run(job.run_id).await?.flow;
                    flows.insert(job.run_id, flow.clone());
                    flow
                }
            },
            (None, None) => {
                unknown.push(sid.clone());
                continue;
            }
        };
        let phone = job.as_ref().map(|j| j.phone.to_string());
        targets.push(EndTarget { flow, sid: sid.clone(), job, phone, listed_active: false });
    }
    Ok(if unknown.is_empty() { Ok(targets) } else { Err(unknown) })
}
