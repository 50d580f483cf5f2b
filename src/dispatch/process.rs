//! One attempt at one job: reconcile an earlier ambiguous attempt, wait out an
//! active Execution, create, settle a 409 by the campaign's policy, and record
//! the outcome.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Dispatcher, RunContext, StopReason};
use crate::domain::{ConflictPolicy, backoff_delay};
use crate::store::{ClaimedJob, JobOutcome, StudioCall};
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

/// How far to look back before an attempt's start when asking Studio what it
/// created: Studio's clock and ours may disagree by a little.
const CLOCK_SKEW_MARGIN: chrono::Duration = chrono::Duration::seconds(120);

impl<S: StudioApi> Dispatcher<S> {
    pub(crate) async fn process(&self, ctx: &RunContext, job: ClaimedJob) -> Processed {
        let mut sent = 0;
        let (outcome, stop) = self.decide(ctx, &job, &mut sent).await;
        tracing::debug!(job = job.id, run = ctx.run_id, phone = %mask(&job.phone), outcome = ?outcome, "job attempt settled");
        // Recorded by the run loop, in a batch with others (one commit for many).
        Processed { job_id: job.id, outcome, stop, attempts_sent: sent, at: self.now_ms() }
    }

    /// Decides the job's outcome. `sent` counts the creates Studio processed or
    /// may have processed (429s excluded).
    async fn decide(&self, ctx: &RunContext, job: &ClaimedJob, sent: &mut i64) -> (JobOutcome, Option<StopReason>) {
        let now = self.now_ms();
        if job.expires_at.is_some_and(|t| t <= now) {
            return (JobOutcome::Expired, None);
        }

        // An earlier attempt's fate is unknown: ask Studio before sending again.
        if let Some(since) = job.ambiguous_since {
            match self.find_own_execution(ctx, job, since).await {
                Ok(Some(sid)) => return (JobOutcome::Sent { sid }, None),
                Ok(None) => {}
                Err(e) => return self.after_error(ctx, job, e),
            }
        }

        // A wait-policy job waiting on someone else's Execution checks it first,
        // without spending a create.
        if let (ConflictPolicy::Wait { max_wait }, Some(active)) = (ctx.policy, job.conflict_sid.as_deref()) {
            let since = job.conflict_since.unwrap_or(now);
            match self.studio.fetch_execution(&ctx.flow, active).await {
                Ok(e) if e.is_active() => {
                    return (self.keep_waiting(job, active, since, max_wait), None);
                }
                Ok(_) | Err(StudioError::NotFound(_)) => {}
                Err(e) => return self.after_error(ctx, job, e),
            }
        }

        let parameters = match with_flowcast_key(&job.parameters, ctx, job.id) {
            Ok(p) => p,
            Err(e) => {
                return (
                    JobOutcome::Failed { reason: format!("invalid parameters in the ledger: {e}"), last_error: None },
                    None,
                );
            }
        };
        let request = CreateRequest { to: job.phone.clone(), from: ctx.from.clone(), parameters };

        for round in 0..=self.settings.max_end_rounds {
            // The run loop took the first create's token before claiming the job;
            // a create after ending someone else's Execution needs its own.
            if round > 0 {
                tokio::select! {
                    _ = self.limits.until_ready(&ctx.campaign, ctx.campaign_rate) => {}
                    // Shutting down: this job was not sent; it goes back as it was.
                    _ = self.shutdown.cancelled() => return (JobOutcome::Release, None),
                }
            }
            // Checked again right before sending: waiting for the rate limiter may
            // have carried the job past the end of its window.
            if let Some(opens) = self.outside_window(ctx, job) {
                let outcome = JobOutcome::Retry {
                    due_at: opens,
                    failures: job.failures,
                    throttled: false,
                    ambiguous_since: None,
                    conflict: job.conflict_sid.clone().zip(job.conflict_since),
                    last_error: None,
                };
                return (outcome, None);
            }
            // A pause or cancel issued while this job waited for its turn wins.
            match self.store.run_state(ctx.run_id) {
                Ok(state) if state == "active" || state == "expanding" => {}
                Ok(state) if state == "cancelled" => return (JobOutcome::Cancelled, None),
                Ok(_) => return (JobOutcome::Release, None),
                Err(e) => {
                    tracing::error!(run = ctx.run_id, error = %e, "cannot read the run's state; not sending");
                    return (JobOutcome::Release, None);
                }
            }
            let _in_flight = self.in_flight.acquire().await.expect("the semaphore is never closed");
            let result = self.studio.create_execution(&ctx.flow, &request).await;
            if !matches!(result, Err(StudioError::Throttled { .. })) {
                *sent += 1;
            }
            self.audit(
                ctx,
                job,
                "create",
                format!("To={} From={} Parameters={}", request.to, request.from, request.parameters),
                &result.as_ref().map(|e| e.sid.clone()),
                None,
            );
            let (error, active_sid) = match result {
                Ok(execution) => {
                    telemetry::execution_created();
                    return (JobOutcome::Sent { sid: execution.sid }, None);
                }
                Err(StudioError::Conflict { error, active_sid }) => (error, active_sid.map(|s| s.as_str().to_string())),
                Err(e) => return self.after_error(ctx, job, e),
            };

            // 409: find the active Execution when the body does not name it.
            let active = match active_sid {
                Some(sid) => Some(sid),
                None => match self.find_active_execution(ctx, job).await {
                    Ok(found) => found,
                    Err(e) => return self.after_error(ctx, job, e),
                },
            };
            let Some(active) = active else {
                // It ended between the 409 and the listing: create again.
                tracing::debug!(job = job.id, %error, "409 without an active execution to be found; retrying the create");
                continue;
            };
            // The active Execution may be our own, from an earlier attempt whose
            // answer was lost: then the job is done.
            match self.is_own_execution(ctx, job, &active).await {
                Ok(true) => {
                    telemetry::conflict(ctx.policy.name(), "adopted");
                    return (JobOutcome::Sent { sid: active }, None);
                }
                Ok(false) => {}
                Err(e) => return self.after_error(ctx, job, e),
            }
            match ctx.policy {
                ConflictPolicy::Skip => {
                    telemetry::conflict("skip", "skipped");
                    return (JobOutcome::Skipped { reason: "conflict".into(), sid: Some(active) }, None);
                }
                ConflictPolicy::Wait { max_wait } => {
                    let since = job.conflict_since.unwrap_or(self.now_ms());
                    return (self.keep_waiting(job, &active, since, max_wait), None);
                }
                ConflictPolicy::End => {
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
                        Ok(_) | Err(StudioError::NotFound(_)) => {
                            telemetry::conflict("end", "ended");
                            continue;
                        }
                        Err(e) => return self.after_error(ctx, job, e),
                    }
                }
            }
        }
        let reason = format!(
            "conflict: the contact was still in an active Execution after {} attempts to end it",
            self.settings.max_end_rounds
        );
        (JobOutcome::Failed { reason, last_error: None }, None)
    }

    /// When the job's send window is closed now, the instant it next opens.
    fn outside_window(&self, ctx: &RunContext, job: &ClaimedJob) -> Option<i64> {
        let window = ctx.window?;
        let zone: chrono_tz::Tz = job.zone.parse().unwrap_or(chrono_tz::UTC);
        let now = self.clock.now();
        let opens = window.next_open(now, zone);
        (opens > now).then(|| opens.timestamp_millis())
    }

    /// A wait-policy job keeps waiting, or fails once `max_wait` has passed.
    fn keep_waiting(&self, job: &ClaimedJob, active: &str, since: i64, max_wait: Duration) -> JobOutcome {
        let now = self.now_ms();
        let deadline = since + max_wait.as_millis() as i64;
        if now >= deadline {
            telemetry::conflict("wait", "timeout");
            return JobOutcome::Failed {
                reason: "conflict_timeout".into(),
                last_error: Some(format!("execution {active} was still active after max_wait")),
            };
        }
        telemetry::conflict("wait", "waiting");
        let next = (now + self.settings.wait_poll.as_millis() as i64).min(deadline);
        JobOutcome::Retry {
            due_at: next,
            failures: job.failures,
            throttled: false,
            ambiguous_since: None,
            conflict: Some((active.to_string(), since)),
            last_error: None,
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
                    let outcome = JobOutcome::Failed { reason: "transient".into(), last_error: Some(message) };
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
                let reason = match e.code {
                    Some(code) => format!("invalid: Twilio error {code}: {}", e.message),
                    None => format!("invalid: HTTP {}: {}", e.status, e.message),
                };
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

/// Adds flowcast's own key so that any Execution it made can be recognised.
fn with_flowcast_key(parameters: &str, ctx: &RunContext, job_id: i64) -> Result<String, serde_json::Error> {
    let mut value: Value = serde_json::from_str(parameters)?;
    if let Value::Object(map) = &mut value {
        map.insert("flowcast".into(), json!({ "campaign": ctx.campaign, "run": ctx.run_id, "job": job_id }));
    }
    Ok(value.to_string())
}

/// Hides all but the last two digits of a phone number in logs.
pub(crate) fn mask(phone: &str) -> String {
    crate::domain::Phone::from_e164(phone.to_string()).masked()
}
