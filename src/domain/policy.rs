//! What to do when Studio answers 409 for a contact, and how long to wait
//! before retrying a transient failure.

use std::time::Duration;

/// The campaign's `on_conflict` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// End the job `skipped`, reason `conflict`, recording the active Execution.
    Skip,
    /// Retry once the active Execution has ended; fail with `conflict_timeout`
    /// after `max_wait`.
    Wait { max_wait: Duration },
    /// End the active Execution, record that, and create ours.
    End,
}

impl ConflictPolicy {
    pub fn name(&self) -> &'static str {
        match self {
            ConflictPolicy::Skip => "skip",
            ConflictPolicy::Wait { .. } => "wait",
            ConflictPolicy::End => "end",
        }
    }
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(cap, base·2^n)]`
/// where `n` is the number of failures so far (from 0). `unit` is a number in
/// `[0, 1)` supplied by the caller so that this stays pure and testable.
pub fn backoff_delay(failures: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(failures.min(30)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_its_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert_eq!(backoff_delay(0, base, cap, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(3, base, cap, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(20, base, cap, 1.0), cap);
        assert_eq!(backoff_delay(3, base, cap, 0.5), Duration::from_millis(400));
        assert_eq!(backoff_delay(3, base, cap, 0.0), Duration::ZERO);
    }
}
