//! Job and run states, as the SPEC names them.

use std::fmt;
use std::str::FromStr;

/// A job's place in its life: `pending` → `dispatching` → `sent`, or one of the
/// terminal states, each recorded with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Pending,
    Dispatching,
    Sent,
    Skipped,
    Failed,
    Expired,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Dispatching,
        JobState::Sent,
        JobState::Skipped,
        JobState::Failed,
        JobState::Expired,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Dispatching => "dispatching",
            JobState::Sent => "sent",
            JobState::Skipped => "skipped",
            JobState::Failed => "failed",
            JobState::Expired => "expired",
            JobState::Cancelled => "cancelled",
        }
    }

    /// A terminal job is never touched by the dispatcher again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Dispatching)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// A run's control state. `expanding` while its CSV is being imported; `active`
/// while it has work; `paused` by a user or by a stop condition (bad credentials);
/// `cancelled`; `finished` when every job is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Expanding,
    Active,
    Paused,
    Cancelled,
    Finished,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Expanding => "expanding",
            RunState::Active => "active",
            RunState::Paused => "paused",
            RunState::Cancelled => "cancelled",
            RunState::Finished => "finished",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [RunState::Expanding, RunState::Active, RunState::Paused, RunState::Cancelled, RunState::Finished]
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown run state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        }
        assert!(JobState::Sent.is_terminal());
        assert!(!JobState::Dispatching.is_terminal());
    }
}
