//! The verdict of one dispatch attempt, as the ledger records it.

use super::JobReason;

/// How a dispatch attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Sent {
        sid: String,
    },
    Skipped {
        reason: JobReason,
        sid: Option<String>,
    },
    Failed {
        reason: JobReason,
        last_error: Option<String>,
    },
    Expired,
    /// Back to `pending`, due again at `due_at`.
    Retry {
        due_at: i64,
        failures: i64,
        throttled: bool,
        ambiguous_since: Option<i64>,
        /// The active Execution a waiting job waits on, and since when.
        conflict: Option<(String, i64)>,
        last_error: Option<String>,
    },
    /// Back to `pending` as it was: nothing was decided (the run stopped).
    Release,
    /// The run was cancelled before this job was sent.
    Cancelled,
}
