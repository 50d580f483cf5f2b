//! Metrics, in Prometheus text format for `GET /metrics`.
//!
//! The library records through the `metrics` facade (a no-op until a recorder
//! is installed, as in the one-shot commands); `serve` installs the Prometheus
//! recorder once per process with [`install`]. Families:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `flowcast_jobs` | gauge | `state` |
//! | `flowcast_executions_created_total` | counter | |
//! | `flowcast_conflicts_total` | counter | `policy`, `outcome` (skipped, waiting, ended, adopted, timeout) |
//! | `flowcast_throttled_total` | counter | |
//! | `flowcast_retries_total` | counter | `class` (transient, ambiguous) |
//! | `flowcast_reconciliations_total` | counter | `result` (adopted, not_found) |
//! | `flowcast_dispatch_rate` | gauge | Executions per second since the last scrape |
//! | `flowcast_schedule_lag_seconds` | histogram | fire time minus planned tick |
//! | `flowcast_import_rows_total` | counter | `outcome` (imported, rejected, duplicate) |
//! | `flowcast_studio_request_duration_seconds` | histogram | `operation` |
//! | `flowcast_notify_events_total` | counter | `outcome` (delivered, retried, gave_up) |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOBS: &str = "flowcast_jobs";
pub const EXECUTIONS_CREATED: &str = "flowcast_executions_created_total";
pub const CONFLICTS: &str = "flowcast_conflicts_total";
pub const THROTTLED: &str = "flowcast_throttled_total";
pub const RETRIES: &str = "flowcast_retries_total";
pub const RECONCILIATIONS: &str = "flowcast_reconciliations_total";
pub const DISPATCH_RATE: &str = "flowcast_dispatch_rate";
pub const SCHEDULE_LAG: &str = "flowcast_schedule_lag_seconds";
pub const IMPORT_ROWS: &str = "flowcast_import_rows_total";
pub const STUDIO_LATENCY: &str = "flowcast_studio_request_duration_seconds";
pub const NOTIFY_EVENTS: &str = "flowcast_notify_events_total";

/// Every family, for tests and docs.
pub const FAMILIES: [&str; 11] = [
    JOBS,
    EXECUTIONS_CREATED,
    CONFLICTS,
    THROTTLED,
    RETRIES,
    RECONCILIATIONS,
    DISPATCH_RATE,
    SCHEDULE_LAG,
    IMPORT_ROWS,
    STUDIO_LATENCY,
    NOTIFY_EVENTS,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Executions created by this process, for the achieved rate.
static CREATED: AtomicU64 = AtomicU64::new(0);
static LAST_SCRAPE: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// Installs the Prometheus recorder (once per process) and returns its handle.
/// `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    if HANDLE.get().is_none() {
        let latency = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let lag = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(STUDIO_LATENCY.into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SCHEDULE_LAG.into()), &lag))
            .ok()?
            .install_recorder();
        match built {
            Ok(handle) => {
                let _ = HANDLE.set(handle);
                zero_families();
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                return None;
            }
        }
    }
    HANDLE.get()
}

/// Every family appears from the first scrape, at zero until something happens.
fn zero_families() {
    counter!(EXECUTIONS_CREATED).increment(0);
    for outcome in ["skipped", "waiting", "ended", "adopted", "timeout"] {
        counter!(CONFLICTS, "policy" => "any", "outcome" => outcome).increment(0);
    }
    counter!(THROTTLED).increment(0);
    for class in ["transient", "ambiguous"] {
        counter!(RETRIES, "class" => class).increment(0);
    }
    for result in ["adopted", "not_found"] {
        counter!(RECONCILIATIONS, "result" => result).increment(0);
    }
    for outcome in ["imported", "rejected", "duplicate"] {
        counter!(IMPORT_ROWS, "outcome" => outcome).increment(0);
    }
    for outcome in ["delivered", "retried", "gave_up"] {
        counter!(NOTIFY_EVENTS, "outcome" => outcome).increment(0);
    }
    gauge!(DISPATCH_RATE).set(0.0);
    metrics::describe_histogram!(SCHEDULE_LAG, metrics::Unit::Seconds, "schedule tick fire time minus planned time");
    metrics::describe_histogram!(STUDIO_LATENCY, metrics::Unit::Seconds, "Studio request latency by operation");
}

/// The text for `GET /metrics`, with the job gauges set from the ledger.
pub fn render(jobs_by_state: &[(crate::domain::JobState, i64)]) -> String {
    let Some(handle) = HANDLE.get() else { return String::new() };
    for state in crate::domain::JobState::ALL {
        let n = jobs_by_state.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        gauge!(JOBS, "state" => state.as_str()).set(n as f64);
    }
    let created = CREATED.load(Ordering::Relaxed);
    let now = Instant::now();
    let mut last = LAST_SCRAPE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, before)) = *last {
        let secs = now.duration_since(at).as_secs_f64();
        if secs > 0.0 {
            gauge!(DISPATCH_RATE).set(created.saturating_sub(before) as f64 / secs);
        }
    }
    *last = Some((now, created));
    handle.render()
}

pub fn execution_created() {
    CREATED.fetch_add(1, Ordering::Relaxed);
    counter!(EXECUTIONS_CREATED).increment(1);
}

pub fn conflict(policy: &'static str, outcome: &'static str) {
    counter!(CONFLICTS, "policy" => policy, "outcome" => outcome).increment(1);
}

pub fn throttled() {
    counter!(THROTTLED).increment(1);
}

pub fn retry(class: &'static str) {
    counter!(RETRIES, "class" => class).increment(1);
}

pub fn reconciliation(result: &'static str) {
    counter!(RECONCILIATIONS, "result" => result).increment(1);
}

pub fn schedule_lag(seconds: f64) {
    histogram!(SCHEDULE_LAG).record(seconds.max(0.0));
}

pub fn import_rows(imported: u64, rejected: u64, duplicates: u64) {
    counter!(IMPORT_ROWS, "outcome" => "imported").increment(imported);
    counter!(IMPORT_ROWS, "outcome" => "rejected").increment(rejected);
    counter!(IMPORT_ROWS, "outcome" => "duplicate").increment(duplicates);
}

pub fn studio_latency(operation: &'static str, seconds: f64) {
    histogram!(STUDIO_LATENCY, "operation" => operation).record(seconds);
}

/// One delivery attempt of an outbound event: `delivered`, `retried` or
/// `gave_up`.
pub fn notify_event(outcome: &'static str) {
    counter!(NOTIFY_EVENTS, "outcome" => outcome).increment(1);
}
