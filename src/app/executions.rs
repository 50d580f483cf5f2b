//! `flowcast executions list|end` and `flowcast cancel RUN --end-active`: an
//! operator's view of the Executions in Studio, and a way to stop them.
//!
//! Listing a run shows a page of its jobs at a time with each Execution's
//! live status (one read each, at the read pace); `--active` asks Studio for
//! the Flow's active list instead, which covers the whole run at a page per
//! thousand. Ending goes through [`crate::runs::end_active`], the same code
//! `POST /api/runs/{id}/cancel?end_active=true` runs. Phones are shown whole:
//! this is a report for the operator, not a log.

use std::io::Write;

use anyhow::anyhow;
use serde_json::json;

use super::studio::{StudioHandle, connect_studio, resolver};
use super::{CommandResult, Failure, open_store};
use crate::cli::ExecutionsCommand;
use crate::config::Config;
use crate::dispatch::RateLimits;
use crate::domain::{FlowSid, JobState, parse_duration};
use crate::runs::{EndCounts, EndError, EndProgress, EndSettings, Ended, RunEnded};
use crate::store::{JobRow, Store};
use crate::studio::{Execution, ListFilter, StudioApi, StudioError};

pub(super) async fn command(config: &Config, command: ExecutionsCommand) -> CommandResult {
    match command {
        ExecutionsCommand::List { run: Some(run), active, limit, after, json, .. } => {
            list_run(config, run, active, limit, after.unwrap_or(0), json).await
        }
        ExecutionsCommand::List { flow: Some(flow), active, limit, since, json, .. } => {
            list_flow(config, &flow, active, limit, since.as_deref(), json).await
        }
        ExecutionsCommand::List { .. } => Err(Failure::input(anyhow!("give --run RUN or --flow NAME|SID"))),
        ExecutionsCommand::End { run: Some(run), json, .. } => {
            let store = open_store(config).await?;
            let studio = connect_studio(config).await?;
            let run_row = store.get_run(run).await.map_err(Failure::input)?;
            if run_row.state.is_dispatchable() {
                eprintln!(
                    "warning: run {run} is {}: it may create more Executions; `flowcast cancel {run} --end-active` stops it first",
                    run_row.state
                );
            }
            end_run(config, &store, &studio, run, "flowcast executions end --run", json).await
        }
        ExecutionsCommand::End { sids, flow, json, .. } => end_sids(config, &sids, flow.as_deref(), json).await,
    }
}

/// `flowcast cancel RUN --end-active`
pub(super) async fn cancel_end_active(config: &Config, run: i64) -> CommandResult {
    let store = open_store(config).await?;
    // Studio is configured before the run changes, so that missing
    // credentials leave the run as it was.
    let studio = connect_studio(config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let t = crate::runs::cancel_for_end(&store, run, now).await.map_err(Failure::input)?;
    if t.from == t.to && t.to == crate::domain::RunState::Finished {
        println!("run {run} is finished: nothing left to cancel");
    } else {
        println!("run {run}: {} → {}", t.from, t.to);
    }
    end_run(config, &store, &studio, run, "flowcast cancel --end-active", false).await
}

fn end_settings(config: &Config, asked_by: &str) -> EndSettings {
    EndSettings {
        concurrency: config.concurrency,
        // Creates in flight elsewhere (`serve`) answer within the request
        // timeout and are recorded right after.
        settle: config.request_timeout + std::time::Duration::from_secs(5),
        asked_by: asked_by.to_string(),
    }
}

/// Ends the run's active Executions and prints each, then the counts.
async fn end_run(
    config: &Config,
    store: &Store,
    studio: &StudioHandle,
    run: i64,
    asked_by: &str,
    as_json: bool,
) -> CommandResult {
    let reads = RateLimits::new(config.read_rate);
    let progress = EndProgress::default();
    let mut printed = Printed::new(as_json);
    let settings = end_settings(config, asked_by);
    let result =
        crate::runs::end_active(&studio.client, store, run, &settings, &reads, &progress, |e| printed.each(e)).await;
    let RunEnded { counts, in_flight } = result.map_err(|e| end_failure(e, &progress))?;
    printed.counts(json!({ "run": run, "in_flight": in_flight }), &format!("run {run}: "), counts);
    if in_flight > 0 && !as_json {
        println!(
            "run {run}: {in_flight} create(s) were still in flight; `flowcast executions end --run {run}` again ends what they made"
        );
    }
    Ok(if counts.failed > 0 { 2 } else { 0 })
}

/// `flowcast executions end SID… [--flow NAME|SID]`
async fn end_sids(config: &Config, sids: &[String], flow: Option<&str>, as_json: bool) -> CommandResult {
    for sid in sids {
        crate::domain::ExecutionSid::parse(sid).map_err(Failure::input)?;
    }
    let store = open_store(config).await?;
    let studio = connect_studio(config).await?;
    let flow = flow.map(|f| flow_sid(config, &studio, f)).transpose()?;
    let targets = crate::runs::targets_for(&store, sids, flow.as_ref()).await.map_err(Failure::input)?;
    let targets = targets.map_err(|unknown| {
        Failure::input(anyhow!(
            "no job in the ledger created {}, so the Flow is unknown; give --flow NAME|SID",
            unknown.join(", ")
        ))
    })?;
    let reads = RateLimits::new(config.read_rate);
    let progress = EndProgress::default();
    let mut printed = Printed::new(as_json);
    let settings = end_settings(config, "flowcast executions end");
    crate::runs::end_each(&studio.client, &store, targets, &settings, &reads, &progress, |e| printed.each(e))
        .await
        .map_err(|e| end_failure(e, &progress))?;
    let counts = progress.counts();
    printed.counts(json!({}), "", counts);
    Ok(if counts.failed > 0 { 2 } else { 0 })
}

/// An end that stopped: Studio's refusal exits as a Studio error, saying
/// what was done before it.
fn end_failure(error: EndError, progress: &EndProgress) -> Failure {
    match error {
        EndError::Studio(e) => Failure::studio(anyhow!("ending stopped after {} ended: {e}", progress.counts().ended)),
        EndError::Store(e) => Failure::input(e),
    }
}

/// Ends as they are settled: printed at once, or kept for one JSON document.
struct Printed {
    as_json: bool,
    kept: Vec<Ended>,
}

impl Printed {
    fn new(as_json: bool) -> Self {
        Printed { as_json, kept: Vec::new() }
    }

    fn each(&mut self, e: &Ended) {
        if self.as_json {
            self.kept.push(e.clone());
            return;
        }
        let job = e.job.map(|j| format!("job {j}")).unwrap_or_else(|| "no job".into());
        let detail = e.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
        println!("{}  {}  {job}  {}{detail}", e.sid, e.phone.as_deref().unwrap_or("-"), e.outcome);
    }

    /// The counts: a line after the ones printed, or the JSON document with
    /// `head`'s fields.
    fn counts(self, mut head: serde_json::Value, prefix: &str, counts: EndCounts) {
        if self.as_json {
            head["executions"] = json!(self.kept);
            head["ended"] = json!(counts.ended);
            head["already_ended"] = json!(counts.already_ended);
            head["failed"] = json!(counts.failed);
            println!("{}", serde_json::to_string_pretty(&head).unwrap_or_default());
        } else {
            println!(
                "{prefix}{} ended, {} already ended, {} failed",
                counts.ended, counts.already_ended, counts.failed
            );
        }
    }
}

/// A Flow given by SID, or by name through the lock file for the account.
fn flow_sid(config: &Config, studio: &StudioHandle, text: &str) -> Result<FlowSid, Failure> {
    if text.starts_with("FW") {
        return FlowSid::parse(text).map_err(|e| Failure::input(anyhow!("--flow: {e}")));
    }
    resolver(config, studio).resolve_name(text).map_err(|e| Failure::input(anyhow!("--flow: {e}")))
}

/// One row of a listing.
struct Row {
    job: Option<i64>,
    phone: Option<String>,
    sid: String,
    status: String,
    created: Option<String>,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        json!({ "job": self.job, "phone": self.phone, "sid": self.sid, "status": self.status, "date_created": self.created })
    }
}

fn print_rows(rows: &[Row], as_json: bool, extra: serde_json::Value) {
    if as_json {
        let mut body = extra;
        body["executions"] = rows.iter().map(Row::json).collect();
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:<8} {:<16} {:<34} {:<12} CREATED", "JOB", "PHONE", "EXECUTION", "STATUS");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<8} {:<16} {:<34} {:<12} {}",
            r.job.map_or("-".to_string(), |j| j.to_string()),
            r.phone.as_deref().unwrap_or("-"),
            r.sid,
            r.status,
            r.created.as_deref().unwrap_or("-")
        );
    }
}

/// A Studio error that stops a listing: refused credentials, or a list
/// that could not be read.
fn studio_failure(what: String, e: StudioError) -> Failure {
    Failure::studio(anyhow!("{what}: {e}"))
}

/// `flowcast executions list --run RUN [--active]`
async fn list_run(config: &Config, run: i64, active: bool, limit: u32, after: i64, as_json: bool) -> CommandResult {
    let store = open_store(config).await?;
    let run_row = store.get_run(run).await.map_err(Failure::input)?;
    let studio = connect_studio(config).await?;
    let reads = RateLimits::new(config.read_rate);
    if active {
        let targets =
            crate::runs::active_of_run(&studio.client, &store, &run_row, &reads).await.map_err(|e| match e {
                EndError::Studio(e) => studio_failure(format!("listing run {run}'s active Executions"), e),
                EndError::Store(e) => Failure::input(e),
            })?;
        let rows: Vec<Row> = targets
            .into_iter()
            .map(|t| Row {
                job: t.job.map(|j| j.job_id),
                phone: t.phone,
                sid: t.sid,
                status: "active".into(),
                created: None,
            })
            .collect();
        print_rows(&rows, as_json, json!({ "run": run, "flow": run_row.flow.to_string(), "next_after": null }));
        if !as_json {
            println!("run {run}: {} active Execution(s)", rows.len());
        }
        return Ok(0);
    }
    // A page of the run's own Executions: each read costs a request at the
    // read pace, so a large run is shown a page at a time.
    let page: Vec<JobRow> = store.jobs_page(run, Some(JobState::Sent), after, limit).await.map_err(Failure::input)?;
    let next_after = (page.len() as u32 == limit).then(|| page.last().map(|j| j.id)).flatten();
    let sids: Vec<String> = page.iter().filter_map(|j| j.execution_sid.clone()).collect();
    let live = crate::runs::fetch_each(&studio.client, &run_row.flow, &sids, config.concurrency, &reads).await;
    let mut rows = Vec::with_capacity(sids.len());
    let mut unknown = 0;
    let jobs = page.iter().filter(|j| j.execution_sid.is_some());
    for ((job, sid), answer) in jobs.zip(sids).zip(live) {
        let (status, created) = match answer {
            Ok(Execution { status, date_created, .. }) => (status.unwrap_or_else(|| "unknown".into()), date_created),
            Err(StudioError::NotFound(_)) => ("not_found".to_string(), None),
            Err(e @ StudioError::Unauthorized(_)) => {
                return Err(studio_failure(format!("reading run {run}'s Executions"), e));
            }
            Err(e) => {
                unknown += 1;
                (format!("error: {}", e.class()), None)
            }
        };
        rows.push(Row { job: Some(job.id), phone: Some(job.phone.to_string()), sid, status, created });
    }
    let sent = store.run_counts(run).await.map_err(Failure::input)?.get(JobState::Sent);
    print_rows(&rows, as_json, json!({ "run": run, "flow": run_row.flow.to_string(), "next_after": next_after }));
    if !as_json {
        let active = rows.iter().filter(|r| r.status == "active").count();
        println!("run {run}: {} of {sent} Execution(s) shown, {active} active", rows.len());
        if let Some(next) = next_after {
            println!("more: flowcast executions list --run {run} --after {next}  (or --active for every active one)");
        }
    }
    Ok(if unknown > 0 { 2 } else { 0 })
}

/// `flowcast executions list --flow NAME|SID [--active]`
async fn list_flow(
    config: &Config,
    flow: &str,
    active: bool,
    limit: u32,
    since: Option<&str>,
    as_json: bool,
) -> CommandResult {
    let since = since.map(parse_since).transpose()?;
    let studio = connect_studio(config).await?;
    let flow = flow_sid(config, &studio, flow)?;
    // One more than shown says whether there are more.
    let filter = ListFilter {
        status: active.then_some("active"),
        date_created_from: since,
        max: Some(limit as usize + 1),
        ..ListFilter::default()
    };
    let mut listed = studio
        .client
        .list_executions(&flow, &filter)
        .await
        .map_err(|e| studio_failure(format!("listing {flow}"), e))?;
    let more = listed.len() > limit as usize;
    listed.truncate(limit as usize);
    // Which of them flowcast made, when the ledger is here to say.
    let jobs = if config.db.missing_file().is_some() {
        Default::default()
    } else {
        let store = open_store(config).await?;
        store.jobs_for_executions(listed.iter().map(|e| e.sid.clone()).collect()).await.map_err(Failure::input)?
    };
    let rows: Vec<Row> = listed
        .into_iter()
        .map(|e| Row {
            job: jobs.get(&e.sid).map(|j| j.job_id),
            phone: e.contact_channel_address,
            status: e.status.unwrap_or_else(|| "unknown".into()),
            created: e.date_created,
            sid: e.sid,
        })
        .collect();
    print_rows(&rows, as_json, json!({ "flow": flow.to_string(), "more": more }));
    if !as_json {
        let which = if active { "active Execution(s)" } else { "Execution(s)" };
        println!("{flow}: {} {which}, newest first", rows.len());
        if more {
            println!("more exist: raise --limit (up to 1000) or narrow with --since");
        }
    }
    Ok(0)
}

/// `--since`: an RFC 3339 instant, or a duration meaning that long ago.
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = parse_duration(text)
        .map_err(|e| Failure::input(anyhow!("--since {text:?}: not an RFC 3339 instant, nor a duration: {e}")))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| Failure::input(anyhow!("--since: {e}")))?;
    Ok(chrono::Utc::now() - ago)
}
