//! What to do when Studio answers 409 for a contact, and how long to wait
//! before retrying a transient failure.
//!
//! The 409 decision is pure: the dispatcher gathers the facts (which Execution
//! is active, whether it is this job's own, how many rounds were tried), asks
//! [`ConflictPolicy::decide`] for the next step, and carries it out. A new
//! policy is a new variant here, its text form in [`ConflictPolicy::from_parts`]
//! and its arm in `decide`; the dispatcher changes only if it needs a step that
//! does not exist yet.

use std::time::Duration;

/// `wait` without `max_wait` gives up after this long.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(3600);

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

/// What the dispatcher knows when Studio says a contact is busy.
#[derive(Debug, Clone, Copy)]
pub struct ConflictFacts<'a> {
    /// The contact's active Execution, if one could be found (the 409 body, or
    /// a listing of the Flow's active Executions); `None` when it ended meanwhile.
    pub active: Option<&'a str>,
    /// The active Execution carries this very job's key: an earlier attempt
    /// made it and its answer was lost.
    pub own: bool,
    /// Creates already answered 409 for this job in this attempt, before this one.
    pub round: u32,
    /// Rounds of create-after-409 (ending the active Execution, or finding it
    /// gone) before the job gives up.
    pub max_rounds: u32,
    /// Since when the job has been waiting on a busy contact, if it was.
    pub waiting_since: Option<i64>,
    /// Now, in Unix milliseconds.
    pub now_ms: i64,
    /// How often a waiting job looks again.
    pub poll: Duration,
}

/// The next step for a job whose create met a busy contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictStep {
    /// The active Execution is gone: create again at once.
    CreateAgain,
    /// The active Execution is this job's own: the job is sent with it.
    Adopt(String),
    /// End the job `skipped`, reason `conflict`, with the active Execution.
    Skip(String),
    /// Look again at `due_at`; the job has been waiting on `sid` since `since`.
    WaitUntil { sid: String, since: i64, due_at: i64 },
    /// The job waited on `sid` for longer than it may: it fails.
    TimedOut { sid: String },
    /// End the active Execution `sid`, then create again.
    EndThenCreate(String),
    /// The contact was still busy after every round allowed: the job fails.
    GiveUp { rounds: u32 },
}

impl ConflictPolicy {
    /// The policies' text forms.
    pub const NAMES: [&'static str; 3] = ["skip", "wait", "end"];

    /// The policy's one text form.
    pub fn name(&self) -> &'static str {
        match self {
            ConflictPolicy::Skip => "skip",
            ConflictPolicy::Wait { .. } => "wait",
            ConflictPolicy::End => "end",
        }
    }

    /// Reads a policy from its name and, for `wait`, its bound (default
    /// [`DEFAULT_MAX_WAIT`]).
    pub fn from_parts(name: &str, max_wait: Option<Duration>) -> Result<Self, String> {
        match name {
            "skip" => Ok(ConflictPolicy::Skip),
            "end" => Ok(ConflictPolicy::End),
            "wait" => Ok(ConflictPolicy::Wait { max_wait: max_wait.unwrap_or(DEFAULT_MAX_WAIT) }),
            other => Err(format!("on_conflict {other:?} must be one of {}", Self::NAMES.join(", "))),
        }
    }

    /// The bound of a waiting policy.
    pub fn max_wait(&self) -> Option<Duration> {
        match self {
            ConflictPolicy::Wait { max_wait } => Some(*max_wait),
            _ => None,
        }
    }

    /// The next step, from the facts alone.
    pub fn decide(&self, facts: &ConflictFacts<'_>) -> ConflictStep {
        let Some(active) = facts.active else {
            // Studio said busy, but the Execution ended before it could be
            // found: create again, a bounded number of times.
            return if facts.round >= facts.max_rounds {
                ConflictStep::GiveUp { rounds: facts.round }
            } else {
                ConflictStep::CreateAgain
            };
        };
        if facts.own {
            return ConflictStep::Adopt(active.to_string());
        }
        match *self {
            ConflictPolicy::Skip => ConflictStep::Skip(active.to_string()),
            ConflictPolicy::Wait { max_wait } => {
                let since = facts.waiting_since.unwrap_or(facts.now_ms);
                let deadline = since.saturating_add(i64::try_from(max_wait.as_millis()).unwrap_or(i64::MAX));
                if facts.now_ms >= deadline {
                    return ConflictStep::TimedOut { sid: active.to_string() };
                }
                let poll = i64::try_from(facts.poll.as_millis()).unwrap_or(i64::MAX);
                let due_at = facts.now_ms.saturating_add(poll).min(deadline);
                ConflictStep::WaitUntil { sid: active.to_string(), since, due_at }
            }
            ConflictPolicy::End if facts.round >= facts.max_rounds => ConflictStep::GiveUp { rounds: facts.round },
            ConflictPolicy::End => ConflictStep::EndThenCreate(active.to_string()),
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

    const ACTIVE: &str = "FNaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn facts(
        active: Option<&str>,
        own: bool,
        round: u32,
        waiting_since: Option<i64>,
        now_ms: i64,
    ) -> ConflictFacts<'_> {
        ConflictFacts { active, own, round, max_rounds: 3, waiting_since, now_ms, poll: Duration::from_secs(5) }
    }

    #[test]
    fn every_policy_decides_from_the_facts_alone() {
        let wait = ConflictPolicy::Wait { max_wait: Duration::from_secs(60) };
        let sid = || ACTIVE.to_string();
        let table: Vec<(ConflictPolicy, ConflictFacts, ConflictStep)> = vec![
            // Whatever the policy: a vanished Execution is created again, our own is adopted.
            (ConflictPolicy::Skip, facts(None, false, 0, None, 0), ConflictStep::CreateAgain),
            (wait, facts(None, false, 0, None, 0), ConflictStep::CreateAgain),
            (ConflictPolicy::End, facts(None, false, 2, None, 0), ConflictStep::CreateAgain),
            (ConflictPolicy::Skip, facts(None, false, 3, None, 0), ConflictStep::GiveUp { rounds: 3 }),
            (ConflictPolicy::Skip, facts(Some(ACTIVE), true, 0, None, 0), ConflictStep::Adopt(sid())),
            (wait, facts(Some(ACTIVE), true, 0, Some(0), 90_000), ConflictStep::Adopt(sid())),
            (ConflictPolicy::End, facts(Some(ACTIVE), true, 3, None, 0), ConflictStep::Adopt(sid())),
            // skip
            (ConflictPolicy::Skip, facts(Some(ACTIVE), false, 0, None, 0), ConflictStep::Skip(sid())),
            // wait: first conflict starts the clock; the poll is capped by the deadline
            (
                wait,
                facts(Some(ACTIVE), false, 0, None, 1_000),
                ConflictStep::WaitUntil { sid: sid(), since: 1_000, due_at: 6_000 },
            ),
            (
                wait,
                facts(Some(ACTIVE), false, 0, Some(1_000), 58_000),
                ConflictStep::WaitUntil { sid: sid(), since: 1_000, due_at: 61_000 },
            ),
            (wait, facts(Some(ACTIVE), false, 0, Some(1_000), 61_000), ConflictStep::TimedOut { sid: sid() }),
            // end: end and create, until the rounds are used up
            (ConflictPolicy::End, facts(Some(ACTIVE), false, 0, None, 0), ConflictStep::EndThenCreate(sid())),
            (ConflictPolicy::End, facts(Some(ACTIVE), false, 2, None, 0), ConflictStep::EndThenCreate(sid())),
            (ConflictPolicy::End, facts(Some(ACTIVE), false, 3, None, 0), ConflictStep::GiveUp { rounds: 3 }),
        ];
        for (policy, facts, expected) in table {
            assert_eq!(policy.decide(&facts), expected, "{} with {facts:?}", policy.name());
        }
    }

    #[test]
    fn policies_read_back_from_their_text_form() {
        for name in ConflictPolicy::NAMES {
            assert_eq!(ConflictPolicy::from_parts(name, None).unwrap().name(), name);
        }
        assert_eq!(ConflictPolicy::from_parts("wait", None).unwrap().max_wait(), Some(DEFAULT_MAX_WAIT));
        let err = ConflictPolicy::from_parts("retry", None).unwrap_err();
        assert_eq!(err, "on_conflict \"retry\" must be one of skip, wait, end");
    }

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
