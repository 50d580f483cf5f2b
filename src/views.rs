//! The JSON views of runs and jobs, the same for `status --json`, `report
//! --format json` and the HTTP API. Times are RFC 3339 in UTC, except the
//! `*_at` fields of a run, which are Unix milliseconds.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use std::collections::BTreeMap;

use crate::domain::{FieldSummary, OutcomeField};
use crate::store::{JobRow, RunCounts, RunRow, Suppression};

/// A Unix-milliseconds instant as RFC 3339 (UTC, whole seconds).
pub fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)).unwrap_or_default()
}

/// As [`time`], `null` when absent.
pub fn opt_time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(time(ms)))
}

/// A run with its counts per job state, its progress, and each outcome
/// field's summary.
pub fn run(run: &RunRow, counts: &RunCounts, outcomes: &BTreeMap<String, FieldSummary>) -> Value {
    let total = counts.total();
    let jobs: serde_json::Map<String, Value> =
        counts.0.iter().map(|(state, n)| (state.as_str().to_string(), json!(n))).collect();
    json!({
        "id": run.id,
        "campaign": run.campaign,
        "kind": run.kind,
        "trigger": run.trigger,
        "scheduled_at": run.scheduled_at,
        "flow_sid": run.flow.as_str(),
        "from_addr": run.from,
        "on_conflict": run.policy.name(),
        "max_wait_ms": run.policy.max_wait().map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        "rate": run.rate,
        "window_start": run.window.map(|w| w.start_text()),
        "window_end": run.window.map(|w| w.end_text()),
        "state": run.state,
        "state_reason": run.state_reason,
        "reason": run.state_reason,
        "rows_total": run.rows_total,
        "rows": run.rows_total,
        "imported": run.imported,
        "rejected": run.rejected,
        "duplicates": run.duplicates,
        "created_at": run.created_at,
        "expanded_at": run.expanded_at,
        "finished_at": run.finished_at,
        "purged_at": run.purged_at,
        "created": time(run.created_at),
        "finished": opt_time(run.finished_at),
        "jobs": jobs,
        "total": total,
        "progress": if total > 0 { (total - counts.open()) as f64 / total as f64 } else { 1.0 },
        "outcome_fields": run.outcomes,
        "outcomes": outcomes,
    })
}

/// One job, as reports and the API show it.
pub fn job(j: &JobRow) -> Value {
    json!({
        "id": j.id,
        "job": j.id,
        "run": j.run_id,
        "line": j.line,
        "phone": j.phone.as_str(),
        "state": j.state,
        "reason": j.reason,
        "execution_sid": j.execution_sid,
        "attempts": j.attempts,
        "due_at": time(j.due_at),
        "expires_at": opt_time(j.expires_at),
        "sent_at": opt_time(j.sent_at),
        "finished_at": opt_time(j.finished_at),
        "last_error": j.last_error,
        "execution_ended_at": opt_time(j.execution_ended_at),
        "ended_reason": j.ended_reason,
        "outcome_state": j.outcome_state,
        "status": j.execution_status,
        "ended_in": j.ended_in,
        "outcome": if j.outcome.is_empty() { Value::Null } else { Value::Object(j.outcome.clone()) },
        "outcome_notes": if j.outcome_notes.is_empty() { Value::Null } else { Value::Object(j.outcome_notes.clone()) },
    })
}

/// The CSV columns of a report for a run with these outcome fields.
pub fn report_columns(fields: &[OutcomeField]) -> Vec<String> {
    const FIXED: [&str; 16] = [
        "run",
        "job",
        "line",
        "phone",
        "state",
        "reason",
        "execution_sid",
        "attempts",
        "due_at",
        "sent_at",
        "finished_at",
        "last_error",
        "execution_ended_at",
        "ended_reason",
        "status",
        "ended_in",
    ];
    FIXED.iter().map(|c| c.to_string()).chain(fields.iter().map(|f| format!("outcome.{}", f.name))).collect()
}

/// One job's report cells, in [`report_columns`] order.
pub fn job_cells(j: &JobRow, fields: &[OutcomeField]) -> Vec<String> {
    let opt = |ms: Option<i64>| ms.map(time).unwrap_or_default();
    let mut cells = vec![
        j.run_id.to_string(),
        j.id.to_string(),
        j.line.to_string(),
        j.phone.as_str().to_string(),
        j.state.as_str().to_string(),
        j.reason.as_ref().map(ToString::to_string).unwrap_or_default(),
        j.execution_sid.clone().unwrap_or_default(),
        j.attempts.to_string(),
        time(j.due_at),
        opt(j.sent_at),
        opt(j.finished_at),
        j.last_error.clone().unwrap_or_default(),
        opt(j.execution_ended_at),
        j.ended_reason.clone().unwrap_or_default(),
        j.execution_status.clone().unwrap_or_default(),
        j.ended_in.clone().unwrap_or_default(),
    ];
    for field in fields {
        cells.push(match j.outcome.get(&field.name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        });
    }
    cells
}

/// One entry of the suppression list.
pub fn suppression(s: &Suppression) -> Value {
    json!({
        "id": s.id,
        "phone": s.phone.as_str(),
        "scope": s.scope.as_text(),
        "reason": s.reason,
        "source": s.source,
        "created_at": time(s.created_at),
    })
}
