//! Fault injection for the simulator's creates: the [`Faults`] a test asks for,
//! and the seeded rolls that decide, create by create, which one happens.
//! Faults before the Execution exists (a burst of 429s, a 500) leave nothing
//! behind; faults after it (a 500, a dropped connection, a slow answer) leave
//! the caller unable to know whether it was created, which is exactly what
//! flowcast's exactly-once bookkeeping has to survive.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{SimState, too_many_requests, twilio_error};

/// Faults the simulator injects into creates, each with its probability, drawn
/// from a seeded generator so that a failing run can be replayed.
///
/// Every fault given a probability above zero happens at least once, at its
/// first opportunity, and then at its probability: a test that asserts what a
/// fault does can never draw a seed in which the fault did not happen.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub seed: u64,
    /// Answer 500 without creating anything.
    pub error_before: f64,
    /// Create the Execution, then answer 500.
    pub error_after: f64,
    /// Create the Execution, then drop the connection mid-answer.
    pub drop_after: f64,
    /// Create the Execution, then answer only after `slow_delay`.
    pub slow_after: f64,
    pub slow_delay: Duration,
    /// Start a burst of `burst_len` 429 answers.
    pub throttle_burst: f64,
    pub burst_len: u32,
}

/// The kinds of fault, for counting each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    ErrorBefore,
    ErrorAfter,
    DropAfter,
    SlowAfter,
    /// The start of a burst of 429s.
    ThrottleBurst,
}

impl FaultKind {
    pub(super) const COUNT: usize = 5;

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl SimState {
    /// Whether fault `kind` (probability `p`) happens now: always the first
    /// time it can, then by a seeded draw.
    fn roll(&mut self, seed: u64, kind: FaultKind, p: f64) -> bool {
        use rand::{RngExt, SeedableRng};
        if p <= 0.0 {
            return false;
        }
        let rng = self.rng.get_or_insert_with(|| rand::rngs::StdRng::seed_from_u64(seed));
        // Drawn whatever happens, so the sequence of draws is the seed's alone.
        let drawn = rng.random::<f64>() < p;
        let happens = drawn || self.injected_by_kind[kind.index()] == 0;
        if happens {
            self.injected_by_kind[kind.index()] += 1;
        }
        happens
    }

    /// Faults drawn before anything is created: a 429 that starts or continues
    /// a burst, or a 500.
    pub(super) fn fault_before_create(&mut self, faults: &Faults) -> Result<(), Response> {
        if self.burst_left > 0 || self.roll(faults.seed, FaultKind::ThrottleBurst, faults.throttle_burst) {
            self.burst_left =
                if self.burst_left > 0 { self.burst_left - 1 } else { faults.burst_len.saturating_sub(1) };
            self.throttled += 1;
            self.faults_injected += 1;
            return Err(too_many_requests());
        }
        if self.roll(faults.seed, FaultKind::ErrorBefore, faults.error_before) {
            self.faults_injected += 1;
            return Err(twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error (injected, nothing created)",
            ));
        }
        Ok(())
    }

    /// Faults after the Execution exists: the caller cannot know it was created.
    /// `Ok(Some(delay))` asks for a slow answer.
    pub(super) fn fault_after_create(&mut self, faults: &Faults) -> Result<Option<Duration>, Response> {
        if self.roll(faults.seed, FaultKind::ErrorAfter, faults.error_after) {
            self.faults_injected += 1;
            return Err(twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error (injected, after create)",
            ));
        }
        if self.roll(faults.seed, FaultKind::DropAfter, faults.drop_after) {
            self.faults_injected += 1;
            let broken = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped (injected)"))
            });
            return Err((
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(broken),
            )
                .into_response());
        }
        if self.roll(faults.seed, FaultKind::SlowAfter, faults.slow_after) {
            self.faults_injected += 1;
            return Ok(Some(faults.slow_delay));
        }
        Ok(None)
    }
}
