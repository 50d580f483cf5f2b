//! One attempt at one job: reconcile an earlier ambiguous attempt, look again
//! at the Execution a waiting job waits on, create, and carry out the step the
//! campaign's conflict policy decides on a 409.

use super::{Dispatcher, RunContext, StopReason};
use crate::domain::{
    ConflictFacts, ConflictStep, JobOutcome, JobReason, ReasonKind, Scope, backoff_delay, mask_phones_in,
};
use crate::store::{ClaimedJob, StudioCall};
use crate::studio::{CreateRequest, ListFilter, StudioApi, StudioError};
use crate::telemetry;

/// What a job task reports back to the run loop.
#[derive(Debug)]
pub struct Processed {
    pub job_id: i64,
    pub outcome: JobOutcome,
    /// Set when Studio refused something that stops the whole run.
    pub stop: Option<StopReason>,
    /// Creates Studio processed or may have processed (429s excluded).
    pub attempts_sent: i64,
    pub at: i64,
}

/// Twilio's error for a recipient who unsubscribed from the sender.
const UNSUBSCRIBED: i64 = 21610;

/// How far to look back before an attempt's start when asking Studio what it
/// created: Studio's clock and ours may disagree by a little.
const CLOCK_SKEW_MARGIN: chrono::Duration = chrono::Duration::seconds(120);

impl<S: StudioApi> Dispatcher<S> {
    pub(crate) async fn process(&self, ctx: &RunContext, job: ClaimedJob) -> Processed {
        let mut sent = 0;
        let (outcome, stop) = self.decide(ctx, &job, &mut sent).await;
        tracing::debug!(
            job = job.id,
            run = ctx.run_id,
            phone = %job.phone.masked(),
            outcome = %mask_phones_in(&format!("{outcome:?}")),
            "job attempt settled"
        );
        // Recorded by the run loop, in a batch with others (one commit for many).
        Processed { job_id: job.id, outcome, stop, attempts_sent: sent, at: self.now_ms() }
    }

    /// The facts of a conflict with `active`, for the campaign's policy.
    fn facts<'a>(&self, job: &ClaimedJob, active: Option<&'a str>, own: bool, round: u32) -> ConflictFacts<'a> {
        ConflictFacts {
            active,
            own,
            round,
            max_rounds: self.settings.max_end_rounds,
            waiting_since: job.conflict_since,
            now_ms: self.now_ms(),
            poll: self.settings.wait_poll,
        }
    }

    /// Decides the job's outcome. `sent` counts the creates Studio processed or
    /// may have processed (429s excluded).
    async fn decide(&self, ctx: &RunContext, job: &ClaimedJob, sent: &mut i64) -> (JobOutcome, Option<StopReason>) {
        // An earlier attempt's fate is unknown: ask Studio before anything else
        // (even an expired job may have been sent by that attempt).
        if let Some(since) = job.ambiguous_since {
            match self.find_own_execution(ctx, job, since).await {
                Ok(Some(sid)) => return (JobOutcome::Sent { sid }, None),
                Ok(None) => {}
                Err(e) => return self.after_error(ctx, job, e),
            }
        }
        let now = self.now_ms();
        if job.expires_at.is_some_and(|t| t <= now) {
            return (JobOutcome::Expired, None);
        }

        // A job waiting on someone else's Execution looks at it first, without
        // spending a create.
        if let Some(active) = job.conflict_sid.as_deref() {
            match self.studio.fetch_execution(&ctx.flow, active).await {
                Ok(e) if e.is_active() => {
                    let step = ctx.policy.decide(&self.facts(job, Some(active), false, 0));
                    if let Some(outcome) = self.settle_step(ctx, job, step) {
                        return (outcome, None);
                    }
                }
                Ok(_) | Err(StudioError::NotFound(_)) => {}
                Err(e) => return self.after_error(ctx, job, e),
            }
        }

        let parameters = match job.parameters.with_flowcast_key(&ctx.campaign, ctx.run_id, job.id) {
            Ok(p) => p,
            Err(e) => {
                let reason = JobReason::with_detail(ReasonKind::Invalid, e.to_string());
                return (JobOutcome::Failed { reason, last_error: None }, None);
            }
        };
        let request = CreateRequest { to: job.phone.as_str().to_string(), from: ctx.from.clone(), parameters };

        let mut round = 0;
        loop {
            // The run loop took the first create's token before claiming the job;
            // a create after a conflict needs its own.
            if round > 0 {
                tokio::select! {
                    _ = self.limits.until_ready(&ctx.campaign, ctx.campaign_rate) => {}
                    // Shutting down: this job was not sent; it goes back as it was.
                    _ = self.shutdown.cancelled() => return (JobOutcome::Release, None),
                }
            }
            // The request slot first, then the checks: a job waiting for a slot
            // (other runs' creates in flight) must not be sent on checks made
            // before it waited.
            let _in_flight = self.in_flight.acquire().await.expect("the semaphore is never closed");
            // Checked again right before sending: waiting for the rate limiter may
            // have carried the job past the end of its window.
            if let Some(opens) = self.outside_window(ctx, job) {
                return (self.retry_at(job, opens), None);
            }
            // A pause or cancel issued while this job waited for its turn wins,
            // and so does an opt-out that arrived since the job was imported.
            // The send log counts the create right after this check (see
            // `turn_to_send`): a slow read here does not bunch creates up.
            let turn = tokio::select! {
                turn = self.limits.turn_to_send(|| self.pre_send_check(ctx, job)) => turn,
                // Shutting down: this job was not sent; it goes back as it was.
                _ = self.shutdown.cancelled() => Err(JobOutcome::Release),
            };
            let sent_at = match turn {
                Ok(at) => at,
                Err(outcome) => return (outcome, None),
            };
            let result = self.studio.create_execution(&ctx.flow, &request).await;
            // Only a request Studio answered says how long the way there took.
            if result.as_ref().map_or_else(|e| e.http_status().is_some(), |_| true) {
                self.limits.create_answered(sent_at);
            }
            match &result {
                Err(StudioError::Throttled { .. }) => self.limits.create_throttled(sent_at),
                _ => *sent += 1,
            }
            // The Parameters sent are the job's own (`jobs.parameters`, with
            // its run's keys when the job stores values alone) with the
            // `flowcast` key naming campaign, run and job: the ledger keeps
            // them, and this record goes when the job does (a purge),
            // so a copy here only doubled each create's record. Nor does a
            // create that succeeded name its To and From: they are the job's
            // phone and the run's sender, which the ledger keeps as long as
            // this record (a refused one names them, as Studio saw them).
            let named = match &result {
                Ok(_) => String::new(),
                Err(_) => format!("To={} From={}", request.to, request.from),
            };
            self.audit(ctx, job, "create", named, &result.as_ref().map(|e| e.sid.clone()), None);
            let (error, active_sid) = match result {
                Ok(execution) => {
                    telemetry::execution_created();
                    return (JobOutcome::Sent { sid: execution.sid }, None);
                }
                Err(StudioError::Conflict { error, active_sid }) => (error, active_sid.map(|s| s.as_str().to_string())),
                Err(StudioError::Invalid(e)) if e.code == Some(UNSUBSCRIBED) => {
                    // Twilio says the contact unsubscribed (replied STOP to this
                    // sender): no campaign may reach them again.
                    let reason = format!("Twilio error {UNSUBSCRIBED}: the recipient unsubscribed");
                    let now = self.now_ms();
                    if let Err(e) = self.store.suppress(&job.phone, &Scope::All, Some(&reason), "studio", now).await {
                        tracing::error!(job = job.id, error = %e, "cannot record the unsubscribed contact's suppression");
                    }
                    let reason = JobReason::with_detail(ReasonKind::Suppressed, format!("scope all, {reason}"));
                    return (JobOutcome::Skipped { reason, sid: None }, None);
                }
                Err(e) => return self.after_error(ctx, job, e),
            };

            // 409: find the active Execution when the body does not name it, and
            // whether it is our own (an earlier attempt whose answer was lost).
            let active = match active_sid {
                Some(sid) => Some(sid),
                None => match self.find_active_execution(ctx, job).await {
                    Ok(found) => found,
                    Err(e) => return self.after_error(ctx, job, e),
                },
            };
            let own = match &active {
                Some(sid) => match self.is_own_execution(ctx, job, sid).await {
                    Ok(own) => own,
                    Err(e) => return self.after_error(ctx, job, e),
                },
                None => false,
            };
            let step = ctx.policy.decide(&self.facts(job, active.as_deref(), own, round));
            round += 1;
            match step {
                ConflictStep::CreateAgain => {
                    tracing::debug!(
                        job = job.id,
                        error = %mask_phones_in(&error.to_string()),
                        "409 without an active execution to be found; creating again"
                    );
                }
                ConflictStep::EndThenCreate(active) => {
                    let ended = self.studio.end_execution(&ctx.flow, &active).await;
                    self.audit(
                        ctx,
                        job,
                        "end",
                        format!("Status=ended Execution={active}"),
                        &ended.as_ref().map(|e| e.sid.clone()),
                        Some(format!("ended {active} (on_conflict = \"end\") to send job {}", job.id)),
                    );
                    match ended {
                        Ok(_) | Err(StudioError::NotFound(_)) => telemetry::conflict(ctx.policy.name(), "ended"),
                        Err(e) => return self.after_error(ctx, job, e),
                    }
                }
                step => {
                    let outcome = self.settle_step(ctx, job, step).expect("only create-again steps loop");
                    return (outcome, None);
                }
            }
        }
    }

    /// The outcome of a step that ends this attempt; `None` for the steps that
    /// go on to create (the caller carries those out).
    fn settle_step(&self, ctx: &RunContext, job: &ClaimedJob, step: ConflictStep) -> Option<JobOutcome> {
        let policy = ctx.policy.name();
        let outcome = match step {
            ConflictStep::CreateAgain | ConflictStep::EndThenCreate(_) => return None,
            ConflictStep::Adopt(sid) => {
                telemetry::conflict(policy, "adopted");
                JobOutcome::Sent { sid }
            }
            ConflictStep::Skip(sid) => {
                telemetry::conflict(policy, "skipped");
                JobOutcome::Skipped { reason: JobReason::new(ReasonKind::Conflict), sid: Some(sid) }
            }
            ConflictStep::WaitUntil { sid, since, due_at } => {
                telemetry::conflict(policy, "waiting");
                JobOutcome::Retry {
                    due_at,
                    failures: job.failures,
                    throttled: false,
                    ambiguous_since: None,
                    conflict: Some((sid, since)),
                    last_error: None,
                }
            }
            ConflictStep::TimedOut { sid } => {
                telemetry::conflict(policy, "timeout");
                JobOutcome::Failed {
                    reason: JobReason::new(ReasonKind::ConflictTimeout),
                    last_error: Some(format!("execution {sid} was still active after max_wait")),
                }
            }
            ConflictStep::GiveUp { rounds } => JobOutcome::Failed {
                reason: JobReason::with_detail(
                    ReasonKind::Conflict,
                    format!("the contact was still in an active Execution after {rounds} rounds"),
                ),
                last_error: None,
            },
        };
        Some(outcome)
    }

    /// Back to `pending` until `due_at`, keeping what the job carries.
    fn retry_at(&self, job: &ClaimedJob, due_at: i64) -> JobOutcome {
        JobOutcome::Retry {
            due_at,
            failures: job.failures,
            throttled: false,
            ambiguous_since: None,
            conflict: job.conflict_sid.clone().zip(job.conflict_since),
            last_error: None,
        }
    }

    /// When the job's send window is closed now, the instant it next opens.
    fn outside_window(&self, ctx: &RunContext, job: &ClaimedJob) -> Option<i64> {
        let window = ctx.window?;
        let now = self.clock.now();
        let opens = window.next_open(now, job.zone);
        (opens > now).then(|| opens.timestamp_millis())
    }

    /// The ledger's last word before a create: `None` to send; otherwise the
    /// job's outcome (suppressed since import, run cancelled, or back to
    /// `pending` when the run is paused or its state cannot be read).
    async fn pre_send_check(&self, ctx: &RunContext, job: &ClaimedJob) -> Option<JobOutcome> {
        match self.store.before_create(ctx.run_id, job.phone.as_str()).await {
            Ok((_, Some(suppressed))) => {
                let reason = JobReason::with_detail(ReasonKind::Suppressed, suppressed.describe());
                Some(JobOutcome::Skipped { reason, sid: None })
            }
            Ok((state, None)) if state.is_dispatchable() => None,
            Ok((crate::domain::RunState::Cancelled, None)) => Some(JobOutcome::Cancelled),
            Ok(_) => Some(JobOutcome::Release),
            Err(e) => {
                tracing::error!(run = ctx.run_id, error = %e, "cannot read the run's state; not sending");
                Some(JobOutcome::Release)
            }
        }
    }

    /// Maps a Studio error (other than 409) to the job's outcome and, for
    /// credentials or an unknown Flow, a stop of the run.
    fn after_error(&self, ctx: &RunContext, job: &ClaimedJob, error: StudioError) -> (JobOutcome, Option<StopReason>) {
        let now = self.now_ms();
        match error {
            StudioError::Throttled { retry_after, .. } => {
                telemetry::throttled();
                let delay = retry_after.unwrap_or(self.settings.throttle_delay);
                // Every create would meet the same 429: hold them all, not just this one.
                self.limits.hold_for(delay);
                let outcome = JobOutcome::Retry {
                    due_at: now + delay.as_millis() as i64,
                    failures: job.failures,
                    throttled: true,
                    ambiguous_since: job.ambiguous_since,
                    conflict: job.conflict_sid.clone().zip(job.conflict_since),
                    last_error: None,
                };
                (outcome, None)
            }
            StudioError::Transient { message, ambiguous, .. } => {
                let failures = job.failures + 1;
                telemetry::retry(if ambiguous { "ambiguous" } else { "transient" });
                if failures >= i64::from(self.settings.max_failures) {
                    let outcome =
                        JobOutcome::Failed { reason: JobReason::new(ReasonKind::Transient), last_error: Some(message) };
                    return (outcome, None);
                }
                let mut delay = backoff_delay(
                    failures as u32 - 1,
                    self.settings.backoff_base,
                    self.settings.backoff_cap,
                    rand::random::<f64>(),
                );
                if ambiguous {
                    // Studio may still be acting on the request we gave up on; ask
                    // what it created only once it has had time to finish.
                    delay = delay.max(self.settings.ambiguous_settle);
                }
                // Keep the earliest unknown attempt: everything since then is checked.
                let ambiguous_since = if ambiguous {
                    Some(job.ambiguous_since.unwrap_or(job.attempt_started_at))
                } else {
                    job.ambiguous_since
                };
                let outcome = JobOutcome::Retry {
                    due_at: now + delay.as_millis() as i64,
                    failures,
                    throttled: false,
                    ambiguous_since,
                    conflict: job.conflict_sid.clone().zip(job.conflict_since),
                    last_error: Some(message),
                };
                (outcome, None)
            }
            StudioError::Invalid(e) => {
                let detail = match e.code {
                    Some(code) => format!("Twilio error {code}: {}", e.message),
                    None => format!("HTTP {}: {}", e.status, e.message),
                };
                let reason = JobReason::with_detail(ReasonKind::Invalid, detail);
                (JobOutcome::Failed { reason, last_error: Some(e.to_string()) }, None)
            }
            StudioError::Unauthorized(e) => (JobOutcome::Release, Some(StopReason::Unauthorized(e))),
            StudioError::NotFound(e) => {
                (JobOutcome::Release, Some(StopReason::FlowNotFound { flow: ctx.flow.to_string(), error: e }))
            }
            StudioError::Conflict { error, .. } => {
                // Only reached from calls other than create, where a 409 is
                // unexpected: treat it as transient.
                self.after_error(
                    ctx,
                    job,
                    StudioError::Transient { message: error.to_string(), status: Some(409), ambiguous: false },
                )
            }
        }
    }

    /// Lists the Flow's active Executions and picks the one for this contact.
    async fn find_active_execution(&self, ctx: &RunContext, job: &ClaimedJob) -> Result<Option<String>, StudioError> {
        let filter = ListFilter { status: Some("active"), ..ListFilter::default() };
        let listed = self.studio.list_executions(&ctx.flow, &filter).await;
        self.audit(
            ctx,
            job,
            "list",
            "Status=active".into(),
            &listed.as_ref().map(|l| format!("{} executions", l.len())),
            None,
        );
        Ok(listed?
            .into_iter()
            .find(|e| e.is_active() && e.contact_channel_address.as_deref() == Some(job.phone.as_str()))
            .map(|e| e.sid))
    }

    /// After an ambiguous attempt: an Execution of this Flow for this contact,
    /// created since the attempt began, whose context carries this job's key.
    async fn find_own_execution(
        &self,
        ctx: &RunContext,
        job: &ClaimedJob,
        since_ms: i64,
    ) -> Result<Option<String>, StudioError> {
        let since = chrono::DateTime::from_timestamp_millis(since_ms).unwrap_or_default() - CLOCK_SKEW_MARGIN;
        let filter = ListFilter { date_created_from: Some(since), ..ListFilter::default() };
        let listed = self.studio.list_executions(&ctx.flow, &filter).await;
        self.audit(
            ctx,
            job,
            "list",
            format!("DateCreatedFrom={}", since.to_rfc3339()),
            &listed.as_ref().map(|l| format!("{} executions", l.len())),
            Some("reconcile an ambiguous attempt".into()),
        );
        for execution in listed? {
            if execution.contact_channel_address.as_deref() != Some(job.phone.as_str()) {
                continue;
            }
            if self.is_own_execution(ctx, job, &execution.sid).await? {
                tracing::info!(job = job.id, execution = %execution.sid, "adopted the execution an earlier attempt created");
                telemetry::reconciliation("adopted");
                return Ok(Some(execution.sid));
            }
        }
        telemetry::reconciliation("not_found");
        Ok(None)
    }

    /// Whether Execution `sid` carries this job's `flowcast` key in its context.
    async fn is_own_execution(&self, ctx: &RunContext, job: &ClaimedJob, sid: &str) -> Result<bool, StudioError> {
        let context = match self.studio.execution_context(&ctx.flow, sid).await {
            Ok(c) => c,
            Err(StudioError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let key = &context["flow"]["data"]["flowcast"];
        let own = key["job"].as_i64() == Some(job.id)
            && key["run"].as_i64() == Some(ctx.run_id)
            && key["campaign"].as_str() == Some(ctx.campaign.as_str());
        self.audit(
            ctx,
            job,
            "context",
            format!("Execution={sid}"),
            &Ok(if own { "own".to_string() } else { "foreign".to_string() }),
            None,
        );
        Ok(own)
    }

    fn audit(
        &self,
        ctx: &RunContext,
        job: &ClaimedJob,
        operation: &'static str,
        request: String,
        result: &Result<String, &StudioError>,
        note: Option<String>,
    ) {
        let (http_status, response, outcome, execution_sid) = match result {
            // A create's answer, the Execution's SID, is kept once, as the
            // record's `execution_sid`.
            Ok(detail) if operation == "create" => (None, None, "ok".to_string(), Some(detail.clone())),
            Ok(detail) => {
                let sid = detail.starts_with("FN").then(|| detail.clone());
                (None, Some(detail.clone()), "ok".to_string(), sid)
            }
            Err(e) => {
                let sid = match e {
                    StudioError::Conflict { active_sid, .. } => active_sid.as_ref().map(|s| s.to_string()),
                    _ => None,
                };
                (e.http_status(), Some(e.to_string()), e.class().to_string(), sid)
            }
        };
        let call = StudioCall {
            run_id: Some(ctx.run_id),
            job_id: Some(job.id),
            at: self.now_ms(),
            operation,
            request,
            http_status,
            response,
            outcome,
            execution_sid,
            note,
        };
        // Written with the next batch of outcomes.
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
    }
}
