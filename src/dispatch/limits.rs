//! Rate limits: one account-wide pace (`FLOWCAST_RATE`) and one per campaign
//! (`rate`), both honoured for every create.
//!
//! Each limit is a slot pacer on a fixed grid, bounded by a sliding window:
//!
//! - The n-th create of a busy stream is due at `start + n × period`, with the
//!   period 1 % longer than `1 s / rate`: ten milliseconds of room per second
//!   for the jitter between this process and Studio's clock of arrivals (the
//!   account's margin widens with the spread of Studio's answer times, and
//!   after a 429: see `SendLog`).
//! - A caller that comes late takes its slot at once and the grid does not
//!   move, so every slot already due can be taken in one pass. At high rates
//!   the run loop and the timer are late by more than a period on most passes;
//!   the earlier pacer restarted its grid at `now` and lost each of those
//!   slots (60 % of the rate at 1,000/s, 25 % at 10,000/s).
//! - No create goes out less than a window (`rate × period`, 1.0101 s) after
//!   the create `rate` places before it: that is what keeps every sliding
//!   one-second window, as Studio counts, at or under the cap while lateness
//!   is made up. On an undisturbed grid the two rules coincide.
//! - A slot due longer ago than `CATCH_UP` is not made up: the stream was idle
//!   (or stalled), and starts afresh on `now` instead of sending a burst. As
//!   `CATCH_UP` is shorter than the period at 20/s and below, a stream that
//!   slow never sends two creates at once.
//!
//! Measured against a simulator that answers 429 above the cap (see the
//! README's benchmark table), governor's GCRA with a burst of a tenth of the
//! rate let a 21st request into some one-second window at 20/s and drew 429s: a
//! GCRA bounds the burst, not the count in a sliding window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The headroom below the nominal rate.
const MARGIN: f64 = 0.01;

/// How late a slot may be taken and still count: a few timer ticks and a claim
/// from the ledger fit, an idle stream's slots do not. Shorter than the period
/// at 20/s (50.5 ms), so that low rates never see two creates at once.
const CATCH_UP: Duration = Duration::from_millis(50);

/// Sleeps until `at`, or not at all when it has gone by. The timer fires on
/// whole milliseconds, so a sleep for an instant already past still waits for
/// its next tick: up to two milliseconds, twenty slots at 10,000/s, which a
/// run loop waiting on each pass lost (2,700 creates a second at a set rate
/// of 10,000, with 16 requests in flight).
async fn wait_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

/// Paces one stream of creates at `per_second` at most.
#[derive(Debug)]
pub struct Pacer {
    /// At most `cap` creates in any window (`PacerState::window`).
    cap: usize,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    /// The time between two creates: `1 s / rate`, plus the margin.
    period: Duration,
    /// `cap` periods: no create goes out less than this after the create `cap`
    /// places before it.
    window: Duration,
    /// The grid's next slot; `None` before the first create.
    next: Option<Instant>,
    /// Creates granted less than a window before the latest one, oldest first
    /// (never more than `cap`).
    recent: VecDeque<Instant>,
}

/// The period and window of `cap` creates a second, less `margin`.
fn spacing(cap: usize, margin: f64) -> (Duration, Duration) {
    let period = Duration::from_secs_f64(1.0 / (cap as f64 * (1.0 - margin)));
    (period, period * cap as u32)
}

/// A slot worked out but not yet taken.
#[derive(Clone, Copy)]
struct Slot {
    /// The grid slot this create uses.
    grid: Instant,
    /// When the create may go: the grid slot, or later if now is later or the
    /// window is full.
    at: Instant,
}

impl Pacer {
    pub fn new(per_second: u32) -> Self {
        let cap = per_second.max(1) as usize;
        let (period, window) = spacing(cap, MARGIN);
        Pacer { cap, state: Mutex::new(PacerState { period, window, next: None, recent: VecDeque::new() }) }
    }

    /// The time between two creates.
    pub fn period(&self) -> Duration {
        self.lock().period
    }

    /// Paces at the rate less `margin` from now on (the grid's next slot
    /// stays where it is).
    fn set_margin(&self, margin: f64) {
        let mut state = self.lock();
        (state.period, state.window) = spacing(self.cap, margin);
    }

    fn lock(&self) -> MutexGuard<'_, PacerState> {
        // The state is an instant and a list of instants, each change complete
        // before the next: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot the next create would use, if taken now.
    fn next_slot(&self, state: &PacerState, now: Instant) -> Slot {
        let grid = match state.next {
            Some(next) if next + CATCH_UP >= now => next,
            // Idle or stalled: its missed slots are not a debt to be paid in one go.
            _ => now,
        };
        // Never before a create already granted, so `recent` stays in order.
        let mut at = grid.max(now).max(state.recent.back().copied().unwrap_or(now));
        if state.recent.len() >= self.cap {
            // The create `cap` places back must be a window behind this one.
            let earliest = state.recent[state.recent.len() - self.cap] + state.window;
            at = at.max(earliest);
        }
        Slot { grid, at }
    }

    fn take(&self, state: &mut PacerState, slot: Slot) {
        state.next = Some(slot.grid + state.period);
        let window = state.window;
        while state.recent.front().is_some_and(|&t| t + window <= slot.at) {
            state.recent.pop_front();
        }
        if state.recent.len() >= self.cap {
            state.recent.pop_front();
        }
        state.recent.push_back(slot.at);
    }

    /// Reserves the next slot and waits for it. Reserving before sleeping (not
    /// taking the slot on waking) is what measured better against the
    /// simulator: 0 429s at 20/s, against 1 in every 30-second run when slots
    /// were taken on waking (see the benchmark notes).
    pub async fn until_ready(&self) {
        let at = {
            let mut state = self.lock();
            let slot = self.next_slot(&state, Instant::now());
            self.take(&mut state, slot);
            slot.at
        };
        wait_until(at).await;
    }

    /// Takes a slot only if one is due now.
    pub fn try_acquire(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let slot = self.next_slot(&state, now);
        if slot.at > now {
            return false;
        }
        self.take(&mut state, slot);
        true
    }

    /// Takes a slot of both pacers only if both have one due now, so that a
    /// refusal by one does not use up the other's slot.
    fn try_acquire_both(first: &Pacer, second: &Pacer) -> bool {
        // Always locked in this order (campaign, then account); `reserve` holds
        // one lock at a time.
        let mut a = first.lock();
        let mut b = second.lock();
        let now = Instant::now();
        let (sa, sb) = (first.next_slot(&a, now), second.next_slot(&b, now));
        if sa.at > now || sb.at > now {
            return false;
        }
        first.take(&mut a, sa);
        second.take(&mut b, sb);
        true
    }
}

/// The account's creates as they actually go out, one sliding window long.
///
/// The pacer spaces the grants; between a grant and its request sit a claim
/// from the ledger, a task switch and the pre-send checks (a read of the
/// ledger), and on a loaded machine those vary by more than the pacer's 1 %
/// margin (10 ms a second). Two grants a window apart can then go out less
/// than a window apart, and Studio, counting arrivals, refuses the one over
/// its cap with a 429 that holds every create for a second. This log admits a
/// create right before it goes, after the checks, only when it is a whole
/// window after the create `cap` places before it; on an undisturbed grid it
/// never waits.
#[derive(Debug)]
struct SendLog {
    cap: usize,
    state: Mutex<SendLogState>,
    /// Bucket 0 of the answer times starts here.
    origin: Instant,
}

#[derive(Debug)]
struct SendLogState {
    window: Duration,
    sent: VecDeque<Instant>,
    /// Steps of [`MARGIN_STEP`] added to the margin after 429s (at most
    /// [`MARGIN_STEPS`]).
    steps: u32,
    /// When `steps` last changed: a 429 for a create sent before then belongs
    /// to an episode already answered (or to another margin).
    changed: Option<Instant>,
    /// The last 429 that counted, or the last change: a margin widened this
    /// long ago with no 429 since narrows a step.
    quiet_since: Instant,
    /// How long creates took from admission here to Studio's answer, over
    /// the last [`SPREAD_HORIZON`]: their spread widens the margin.
    answers: AnswerTimes,
    /// The margin the spread of answer times asks for (no effect while it is
    /// under the 429 steps' margin).
    spread_margin: f64,
}

/// The fastest and slowest answer of each [`SPREAD_BUCKET`] of the last
/// [`SPREAD_HORIZON`], oldest first.
#[derive(Debug, Default)]
struct AnswerTimes {
    buckets: VecDeque<(u64, Duration, Duration)>,
}

impl AnswerTimes {
    /// Adds one answer time, seen in bucket `bucket`; returns the spread
    /// (slowest less fastest) over the horizon.
    fn add(&mut self, bucket: u64, took: Duration) -> Duration {
        let horizon = SPREAD_HORIZON.as_millis() as u64 / SPREAD_BUCKET.as_millis() as u64;
        // Two answers read the clock before taking the log's lock in either
        // order: the later bucket stands for both, so the list stays in order.
        let bucket = bucket.max(self.buckets.back().map_or(0, |&(b, _, _)| b));
        while self.buckets.front().is_some_and(|&(b, _, _)| b + horizon <= bucket) {
            self.buckets.pop_front();
        }
        match self.buckets.back_mut() {
            Some((b, fastest, slowest)) if *b == bucket => {
                *fastest = (*fastest).min(took);
                *slowest = (*slowest).max(took);
            }
            _ => self.buckets.push_back((bucket, took, took)),
        }
        let fastest = self.buckets.iter().map(|&(_, f, _)| f).min().unwrap_or_default();
        let slowest = self.buckets.iter().map(|&(_, _, s)| s).max().unwrap_or_default();
        slowest.saturating_sub(fastest)
    }
}

/// How much a 429 widens the account's margin below the rate, and at most how
/// many times: from 1 % to 1.75 % and 2.5 %, so the rate never falls below
/// 97.5 % of the cap. Studio counts arrivals, and the way there (this
/// process's HTTP client, the network, Studio's front end) delays some
/// creates more than others: on a loaded 2-core machine, request to answer
/// took up to 14–16 ms over loopback at 1,000/s, more than the 10 ms a second
/// that 1 % leaves.
const MARGIN_STEP: f64 = 0.0075;
const MARGIN_STEPS: u32 = 2;

/// A margin widened by 429s narrows a step after this long without one.
const MARGIN_RELAX: Duration = Duration::from_secs(300);

/// How far back the answer times that set the margin reach, and the
/// buckets they are kept in.
///
/// Studio counts a create when it arrives. Creates admitted here a window
/// apart arrive less than a second apart when the earlier one's way there
/// was slower than the later one's; by how much, this process can only
/// estimate, from the spread of the answer times (admission to answer: the
/// way there, Studio's work and the way back). A margin of that spread over
/// a second keeps the arrivals within the cap while the estimate holds, so
/// the margin widens *before* a 429 (each of which holds every
/// create for Studio's `Retry-After`, a second: 3 % of a 30-second run)
/// rather than after one (see [`MARGIN_STEP`] for how far apart answers
/// came on a loaded machine).
const SPREAD_HORIZON: Duration = Duration::from_secs(10);
const SPREAD_BUCKET: Duration = Duration::from_millis(500);

impl SendLog {
    fn new(pacer: &Pacer) -> Self {
        SendLog {
            cap: pacer.cap,
            state: Mutex::new(SendLogState {
                window: pacer.lock().window,
                sent: VecDeque::new(),
                steps: 0,
                changed: None,
                quiet_since: Instant::now(),
                answers: AnswerTimes::default(),
                spread_margin: 0.0,
            }),
            origin: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SendLogState> {
        // Instants and counters, each change complete before the next.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` if one more create sent at `now` keeps every sliding window at or
    /// under the cap; otherwise the instant it would (`Err(until)`).
    fn room_in(&self, state: &mut SendLogState, now: Instant) -> Result<(), Instant> {
        let window = state.window;
        while state.sent.front().is_some_and(|&t| t + window <= now) {
            state.sent.pop_front();
        }
        match state.sent.front() {
            Some(&oldest) if state.sent.len() >= self.cap => Err(oldest + window),
            _ => Ok(()),
        }
    }

    /// Whether there is room for a create now, recording nothing.
    fn room(&self, now: Instant) -> Result<(), Instant> {
        self.room_in(&mut self.lock(), now)
    }

    /// Records a create as sent at `now` if there is room for it.
    fn try_admit(&self, now: Instant) -> Result<(), Instant> {
        let mut state = self.lock();
        self.room_in(&mut state, now)?;
        state.sent.push_back(now);
        Ok(())
    }

    /// A widened margin with no 429 for [`MARGIN_RELAX`] narrows one step,
    /// on `account` and here together. `Some(steps)` when it narrowed.
    fn relaxed(&self, now: Instant, account: &Pacer) -> Option<u32> {
        let mut state = self.lock();
        if state.steps == 0 || now.saturating_duration_since(state.quiet_since) < MARGIN_RELAX {
            return None;
        }
        state.quiet_since = now;
        let steps = state.steps - 1;
        Some(self.set_steps(&mut state, steps, now, account))
    }

    /// Studio refused a create sent at `sent_at` with a 429: the margin
    /// widens a step, on `account` and here together, once per episode (a
    /// create sent before the last change belongs to that change's episode).
    /// `Some(steps)` when it widened.
    fn throttled(&self, sent_at: Instant, now: Instant, account: &Pacer) -> Option<u32> {
        let mut state = self.lock();
        if state.changed.is_some_and(|changed| sent_at < changed) {
            return None;
        }
        state.quiet_since = now;
        if state.steps >= MARGIN_STEPS {
            return None;
        }
        let steps = state.steps + 1;
        Some(self.set_steps(&mut state, steps, now, account))
    }

    /// Changes the margin under this log's lock, so that two changes at once
    /// apply in the order they were decided (the log's lock, then the
    /// pacer's: nothing takes them the other way).
    fn set_steps(&self, state: &mut SendLogState, steps: u32, now: Instant, account: &Pacer) -> u32 {
        state.steps = steps;
        state.changed = Some(now);
        Self::apply(state, self.cap, account);
        steps
    }

    /// Studio answered a create admitted at `sent_at` (a 429 too: it
    /// arrived); the margin follows the spread of answer times, never
    /// below the 429 steps' and never over their widest. `Some(margin)`
    /// when the margin in force changed (the spread's own figure moves by a
    /// tenth of a percent or more before it is taken up).
    fn answered(&self, sent_at: Instant, now: Instant, account: &Pacer) -> Option<f64> {
        let mut state = self.lock();
        let bucket = (now.saturating_duration_since(self.origin).as_millis() / SPREAD_BUCKET.as_millis()) as u64;
        let spread = state.answers.add(bucket, now.saturating_duration_since(sent_at));
        let wanted = (spread.as_secs_f64() / Duration::from_secs(1).as_secs_f64()).min(margin_after(MARGIN_STEPS));
        if (wanted - state.spread_margin).abs() < 0.001 {
            return None;
        }
        let before = state.margin();
        state.spread_margin = wanted;
        if (state.margin() - before).abs() < 1e-12 {
            return None;
        }
        Self::apply(&mut state, self.cap, account);
        Some(state.margin())
    }

    /// Puts the margin in force here and on `account`.
    fn apply(state: &mut SendLogState, cap: usize, account: &Pacer) {
        let margin = state.margin();
        state.window = spacing(cap, margin).1;
        account.set_margin(margin);
    }
}

impl SendLogState {
    /// The margin in force: the 429 steps', or the answer times' spread if
    /// wider.
    fn margin(&self) -> f64 {
        margin_after(self.steps).max(self.spread_margin)
    }
}

/// The account's margin below its rate after `steps` 429 episodes.
fn margin_after(steps: u32) -> f64 {
    MARGIN + MARGIN_STEP * f64::from(steps)
}

/// How late, checked right before the request is sent, a slot of the
/// shared grid may still be used.
const SHARED_TOLERANCE: Duration = Duration::from_millis(10);

/// The shared grid's headroom below the nominal rate: with slots 3 % over
/// `1 s / rate` apart, a create may reach Studio up to ~30 ms after its slot
/// (10 ms of lateness allowed at the send, the rest for the way there) and
/// every one-second window still holds at most `rate`. With 1 %, and the slot
/// taken before the claim and the pre-send checks (each a round trip to the
/// ledger), a loaded 2-core machine running three instances drew 429s at 100/s.
const SHARED_MARGIN: f64 = 0.03;

/// The account's pace when several instances share a PostgreSQL ledger: send
/// slots come from one grid in the ledger, reserved a few at a time, so the
/// instances together keep to the rate. A slot this instance reaches too late
/// is dropped, not used late, since another instance may be using the next.
pub struct SharedGrid {
    store: crate::store::Store,
    key: String,
    period: Duration,
    batch: usize,
    /// Slots reserved and not used yet, earliest first.
    slots: Mutex<VecDeque<Instant>>,
    /// One reservation at a time.
    refill: tokio::sync::Mutex<()>,
    /// The server's clock as read from here: the best estimate so far.
    clock: Mutex<Option<ClockSample>>,
}

/// One reading of the server's clock: how far ahead of it this machine's
/// wall clock was (`offset_us`, from the midpoint of the round trip), known
/// to within half the round trip (`rtt_us`), taken `at`.
#[derive(Clone, Copy)]
struct ClockSample {
    offset_us: i64,
    rtt_us: i64,
    at: Instant,
}

impl ClockSample {
    /// Keeps the reading with the shortest round trip (the least uncertain),
    /// renewed every ten seconds so that the clocks' drift is followed. A slow
    /// reply (a busy machine) would otherwise make every slot of its batch
    /// look later than it is, and this instance send on other instances'
    /// slots.
    fn better(old: Option<ClockSample>, new: ClockSample) -> ClockSample {
        match old {
            Some(old) if old.rtt_us < new.rtt_us && old.at.elapsed() < Duration::from_secs(10) => old,
            _ => new,
        }
    }
}

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl SharedGrid {
    pub fn new(store: crate::store::Store, per_second: u32) -> Self {
        let period = Duration::from_secs_f64(1.0 / (f64::from(per_second.max(1)) * (1.0 - SHARED_MARGIN)));
        // About 50 ms of slots per reservation: few round trips, little left
        // unused when this instance runs out of work.
        let batch = (per_second as usize / 20).clamp(1, 500);
        SharedGrid {
            store,
            key: "account".into(),
            period,
            batch,
            slots: Mutex::new(VecDeque::new()),
            refill: tokio::sync::Mutex::new(()),
            clock: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Instant>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next slot still usable at `now` (dropping those gone by).
    fn next_usable(slots: &mut VecDeque<Instant>, now: Instant) -> Option<Instant> {
        while slots.front().is_some_and(|&s| s + SHARED_TOLERANCE < now) {
            slots.pop_front();
        }
        slots.front().copied()
    }

    /// Waits for this instance's next slot, reserving more when it has none;
    /// returns the slot's instant.
    async fn next_slot(&self) -> Instant {
        loop {
            let next = {
                let mut slots = self.lock();
                let slot = Self::next_usable(&mut slots, Instant::now());
                if slot.is_some() {
                    slots.pop_front();
                }
                slot
            };
            if let Some(slot) = next {
                wait_until(slot).await;
                if Instant::now() <= slot + SHARED_TOLERANCE {
                    return slot;
                }
                // Woken too late for this slot: take the next.
                continue;
            }
            let _one = self.refill.lock().await;
            if !self.lock().is_empty() {
                continue;
            }
            let period_us = i64::try_from(self.period.as_micros()).unwrap_or(i64::MAX);
            let asked = wall_us();
            match self.store.reserve_slots(&self.key, self.batch as i64, period_us).await {
                Ok(Some((first_us, server_now_us))) => {
                    let answered = wall_us();
                    let sample = ClockSample {
                        offset_us: (asked + answered) / 2 - server_now_us,
                        rtt_us: answered - asked,
                        at: Instant::now(),
                    };
                    let offset_us = {
                        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
                        let best = ClockSample::better(*clock, sample);
                        *clock = Some(best);
                        best.offset_us
                    };
                    // Each slot on this machine's clock, then as an instant.
                    let (base, now_us) = (Instant::now(), wall_us());
                    let mut slots = self.lock();
                    for i in 0..self.batch as i64 {
                        let ahead = first_us + i * period_us + offset_us - now_us;
                        let at = if ahead >= 0 {
                            base + Duration::from_micros(ahead as u64)
                        } else {
                            base.checked_sub(Duration::from_micros(ahead.unsigned_abs())).unwrap_or(base)
                        };
                        slots.push_back(at);
                    }
                }
                Ok(None) => return Instant::now(),
                Err(e) => {
                    // No ledger, no send: wait and ask again.
                    tracing::warn!(error = %e, "cannot reserve send slots from the ledger; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The limits shared by every run a process dispatches.
pub struct RateLimits {
    account: Pacer,
    /// The account's creates as sent (one process; several use the grid).
    sends: SendLog,
    /// Several instances share the account's pace through the ledger.
    shared: Option<SharedGrid>,
    /// Live instances sharing the ledger: each paces a campaign's own `rate`
    /// at its share.
    instances: std::sync::atomic::AtomicU32,
    /// Account-wide send slots handed out so far.
    granted: std::sync::atomic::AtomicU64,
    campaigns: Mutex<HashMap<(String, u32), Arc<Pacer>>>,
    /// After a 429, no create goes out before this instant.
    held_until: Mutex<Option<Instant>>,
}

impl RateLimits {
    pub fn new(account_per_second: u32) -> Self {
        let account = Pacer::new(account_per_second);
        RateLimits {
            sends: SendLog::new(&account),
            account,
            shared: None,
            instances: std::sync::atomic::AtomicU32::new(1),
            granted: std::sync::atomic::AtomicU64::new(0),
            campaigns: Mutex::new(HashMap::new()),
            held_until: Mutex::new(None),
        }
    }

    /// The account's pace shared with the other instances on `store`'s
    /// ledger (a SQLite ledger has no others: the local pacer does).
    pub fn for_store(account_per_second: u32, store: &crate::store::Store) -> Self {
        let mut limits = Self::new(account_per_second);
        if store.is_shared() {
            limits.shared = Some(SharedGrid::new(store.clone(), account_per_second));
        }
        limits
    }

    /// How many instances share the ledger now (at least one).
    pub fn set_instances(&self, n: usize) {
        let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        self.instances.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Studio said 429: hold every create for `delay` (extending, never
    /// shortening, a hold already in place).
    pub fn hold_for(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut held = self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    /// The instant a 429's hold ends (past or not), if one was ever set.
    fn held(&self) -> Option<Instant> {
        *self.held_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a create for `campaign` (at `campaign_rate`, if any) may go.
    /// The campaign's pace is waited on first, so that an account-wide slot is
    /// only taken when the request is about to be sent.
    pub async fn until_ready(&self, campaign: &str, campaign_rate: Option<u32>) {
        if let Some(until) = self.held() {
            wait_until(until).await;
        }
        if let Some(pacer) = self.campaign_pacer(campaign, campaign_rate) {
            pacer.until_ready().await;
        }
        // Several instances: the account's slot is taken right before the
        // request goes (see `turn_to_send`).
        if self.shared.is_none() {
            self.account.until_ready().await;
        }
        self.granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs `check` (the ledger's last word on the job) and returns the
    /// instant the create may go, right after a check that let it through;
    /// or what `check` returned to stop it.
    ///
    /// In one process the run loop's token was the account's slot: the send
    /// log then admits the create after the check, so that no read of the
    /// ledger sits between the instant it counts and the request, and holds
    /// it back (checking again after the wait) only if what went out since
    /// would put more than the rate in a sliding window. With several
    /// instances the account's next slot on the shared grid is waited for
    /// first and must still be in time after the check: another instance may
    /// be sending on the next one.
    pub async fn turn_to_send<T, F>(&self, mut check: impl FnMut() -> F) -> Result<Instant, T>
    where
        F: std::future::Future<Output = Option<T>>,
    {
        loop {
            // A 429 answered since this create's turn began holds it too.
            if let Some(until) = self.held() {
                wait_until(until).await;
            }
            let slot = match &self.shared {
                Some(grid) => Some(grid.next_slot().await),
                None => {
                    // Room in the window first, so that the check is not made
                    // again and again while it is full.
                    while let Err(until) = self.sends.room(Instant::now()) {
                        tokio::time::sleep_until(until).await;
                    }
                    None
                }
            };
            if let Some(stop) = check().await {
                return Err(stop);
            }
            let now = Instant::now();
            match slot {
                Some(slot) if now <= slot + SHARED_TOLERANCE => return Ok(now),
                // Made late by the check: the next slot.
                Some(_) => {}
                None => {
                    if self.sends.relaxed(now, &self.account).is_some() {
                        tracing::info!(
                            margin = self.margin(),
                            "no 429 for five minutes: the 429 steps' margin narrows one step"
                        );
                    }
                    // Another create may have taken the room during the check.
                    if self.sends.try_admit(now).is_ok() {
                        return Ok(now);
                    }
                }
            }
        }
    }

    /// Studio refused a create sent at `sent_at` (from
    /// [`turn_to_send`](Self::turn_to_send)) with a 429: in one process the
    /// account's margin below the rate widens a step, once per episode, up to
    /// 2.5 % (several instances keep the shared grid's fixed margin). The
    /// hold of every create is [`hold_for`](Self::hold_for)'s.
    pub fn create_throttled(&self, sent_at: Instant) {
        if self.shared.is_some() {
            return;
        }
        let before = self.margin();
        // A step the spread's wider margin already covers changes nothing.
        if self.sends.throttled(sent_at, Instant::now(), &self.account).is_some() && self.margin() > before {
            tracing::warn!(margin = self.margin(), "Studio answered 429: the send rate's margin widens");
        }
    }

    /// The account's margin below its rate now: 1 %, widened by the spread
    /// of answer times (see [`create_answered`](Self::create_answered)) or by 429s (see
    /// [`create_throttled`](Self::create_throttled)); the shared grid's fixed
    /// margin with several instances.
    pub fn margin(&self) -> f64 {
        if self.shared.is_some() {
            return SHARED_MARGIN;
        }
        self.sends.lock().margin()
    }

    /// Studio answered a create sent at `sent_at` (from
    /// [`turn_to_send`](Self::turn_to_send)), 429 or not: in one process
    /// the spread of answer times sets the account's margin (see
    /// [`SPREAD_HORIZON`]).
    pub fn create_answered(&self, sent_at: Instant) {
        if self.shared.is_some() {
            return;
        }
        if let Some(margin) = self.sends.answered(sent_at, Instant::now(), &self.account) {
            tracing::debug!(margin, "answer times spread: the send rate's margin follows");
        }
    }

    /// Account-wide send slots handed out so far (each is a create that was
    /// allowed to go).
    pub fn granted(&self) -> u64 {
        self.granted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes a slot now if both limits allow it, without waiting.
    pub fn try_acquire(&self, campaign: &str, campaign_rate: Option<u32>) -> bool {
        if self.held().is_some_and(|until| until > Instant::now()) {
            return false;
        }
        let taken = match (&self.shared, self.campaign_pacer(campaign, campaign_rate)) {
            (Some(_), Some(pacer)) => pacer.try_acquire(),
            (Some(_), None) => true,
            (None, Some(pacer)) => Pacer::try_acquire_both(&pacer, &self.account),
            (None, None) => self.account.try_acquire(),
        };
        if taken {
            self.granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        taken
    }

    fn campaign_pacer(&self, campaign: &str, rate: Option<u32>) -> Option<Arc<Pacer>> {
        // With several instances, each paces its share of the campaign's rate.
        let rate = (rate? / self.instances.load(std::sync::atomic::Ordering::Relaxed).max(1)).max(1);
        let mut map = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        Some(Arc::clone(map.entry((campaign.to_string(), rate)).or_insert_with(|| Arc::new(Pacer::new(rate)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the clock is at `due`: timers fire on whole milliseconds, so a
    /// waiter wakes up to two milliseconds after its slot.
    fn at_slot(due: Instant) -> bool {
        let now = Instant::now();
        now >= due && now - due < Duration::from_millis(2)
    }

    #[tokio::test(start_paused = true)]
    async fn slots_keep_their_grid_when_a_waiter_is_late() {
        let pacer = Pacer::new(20);
        let start = Instant::now();
        // Each slot is one period after the last, from the first: no drift and
        // no two closer than a period.
        for i in 0..5 {
            pacer.until_ready().await;
            assert!(at_slot(start + pacer.period() * i), "slot {i} off the grid");
        }
        assert!(pacer.period() > Duration::from_millis(50), "1% under the nominal 20/s");
        // A waiter late by less than the catch-up allowance takes its slot at
        // once, and the slot after it stays on the grid.
        tokio::time::advance(pacer.period() + Duration::from_millis(30)).await;
        let late = Instant::now();
        pacer.until_ready().await;
        assert!(at_slot(late), "a late waiter waits again");
        pacer.until_ready().await;
        assert!(at_slot(start + pacer.period() * 6), "the slot after a late one is off the grid");
        // An idle pacer starts afresh rather than bursting to catch up.
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        pacer.until_ready().await;
        assert!(at_slot(now), "an idle pacer makes its first caller wait");
        assert!(!pacer.try_acquire(), "the next slot is a period away");
    }

    /// A stand-in for the run loop: waits for one slot, takes every other slot
    /// already due (up to `per_pass`, its free request slots), then is away for
    /// `late(pass)` (claiming, spawning, a timer firing late) before it asks
    /// again. Returns the instant of each create, until `seconds` have passed.
    async fn drive(
        limits: &RateLimits,
        campaign: (&str, Option<u32>),
        seconds: u64,
        per_pass: usize,
        mut late: impl FnMut(usize) -> Duration,
    ) -> Vec<Instant> {
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut sent = Vec::new();
        let mut pass = 0;
        while Instant::now() < end {
            limits.until_ready(campaign.0, campaign.1).await;
            sent.push(Instant::now());
            let mut taken = 1;
            while taken < per_pass && limits.try_acquire(campaign.0, campaign.1) {
                sent.push(Instant::now());
                taken += 1;
            }
            tokio::time::sleep(late(pass)).await;
            pass += 1;
        }
        sent.retain(|&t| t < end);
        sent
    }

    /// Lateness spread over `0..=max_ms` milliseconds in microsecond steps, the
    /// same sequence on every run (a small linear congruential generator).
    fn jitter(max_ms: u64) -> impl FnMut(usize) -> Duration {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        move |_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            Duration::from_micros((x >> 33) % (max_ms * 1000 + 1))
        }
    }

    /// The most creates in any one-second window, sliding, as Studio counts.
    fn busiest_second(sent: &[Instant]) -> usize {
        let mut sorted = sent.to_vec();
        sorted.sort();
        let mut busiest = 0;
        let mut j = 0;
        for i in 0..sorted.len() {
            while j < sorted.len() && sorted[j] - sorted[i] < Duration::from_secs(1) {
                j += 1;
            }
            busiest = busiest.max(j - i);
        }
        busiest
    }

    async fn achieved_share(rate: u32, late_ms: u64) -> (f64, usize) {
        let limits = RateLimits::new(rate);
        let seconds = 3;
        let sent = drive(&limits, ("c", None), seconds, 64, jitter(late_ms)).await;
        (sent.len() as f64 / (f64::from(rate) * seconds as f64), busiest_second(&sent))
    }

    /// Where a create's delay between its grant and its request sits.
    #[derive(Clone, Copy, PartialEq)]
    enum Delay {
        /// Before the send log, which it does not pass.
        Ungated,
        /// Before the send log (the claim, a task switch).
        BeforeGate,
        /// In the check that `turn_to_send` runs (a read of the ledger).
        InCheck,
    }

    /// Grants at the pacer's pace, each sent after a delay of its own that
    /// jumps between 0 and `spread_ms`, placed as `delay` says. Returns when
    /// each create went, and when the grants stopped.
    async fn sends_after_uneven_delays(rate: u32, spread_ms: u64, delay: Delay) -> (Vec<Instant>, Instant) {
        let limits = Arc::new(RateLimits::new(rate));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut delays = jitter(spread_ms);
        let mut tasks = tokio::task::JoinSet::new();
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            limits.until_ready("c", None).await;
            let wait = delays(0);
            let (limits, sent) = (Arc::clone(&limits), Arc::clone(&sent));
            tasks.spawn(async move {
                if delay != Delay::InCheck {
                    tokio::time::sleep(wait).await;
                }
                if delay != Delay::Ungated {
                    let check = || async move {
                        if delay == Delay::InCheck {
                            tokio::time::sleep(wait).await;
                        }
                        None::<()>
                    };
                    let at = limits.turn_to_send(check).await.unwrap();
                    assert_eq!(at, Instant::now(), "the create is counted as it goes");
                }
                sent.lock().unwrap().push(Instant::now());
            });
        }
        tasks.join_all().await;
        (Arc::try_unwrap(sent).unwrap().into_inner().unwrap(), end)
    }

    #[tokio::test(start_paused = true)]
    async fn uneven_delays_between_grant_and_send_never_put_more_than_the_rate_in_a_second() {
        // Without the send log the same delays overfill some window: the
        // check below can fail.
        let (ungated, _) = sends_after_uneven_delays(100, 40, Delay::Ungated).await;
        assert!(busiest_second(&ungated) > 100, "the delays never compressed a window: {}", busiest_second(&ungated));
        let (gated, end) = sends_after_uneven_delays(100, 40, Delay::BeforeGate).await;
        assert!(busiest_second(&gated) <= 100, "{} in one second", busiest_second(&gated));
        // And it costs next to nothing of the rate: 97 % of it still goes out
        // within the 3 seconds.
        let in_time = gated.iter().filter(|&&t| t <= end).count();
        assert!(in_time >= 291, "{in_time} of 300 sent within 3 s");
    }

    #[tokio::test(start_paused = true)]
    async fn no_second_holds_more_than_20_at_20_per_second_with_late_wakers() {
        // Late by up to two periods: the catch-up and the restart both happen.
        let limits = RateLimits::new(20);
        let sent = drive(&limits, ("c", None), 5, 16, jitter(100)).await;
        assert!(busiest_second(&sent) <= 20, "{} in one second", busiest_second(&sent));
        // No two creates at once at a low rate, however late the caller.
        assert!(sent.windows(2).all(|w| w[1] > w[0]), "two creates at the same instant at 20/s");
    }

    #[tokio::test(start_paused = true)]
    async fn no_second_holds_more_than_1000_at_1000_per_second_with_late_wakers() {
        for late_ms in [1, 3, 10, 40] {
            let (_, busiest) = achieved_share(1000, late_ms).await;
            assert!(busiest <= 1000, "{busiest} in one second, late by up to {late_ms} ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_caller_still_gets_97_percent_at_100_per_second() {
        // Now and then later than a whole period (10.1 ms).
        let (share, busiest) = achieved_share(100, 15).await;
        assert!(share >= 0.97, "{:.1} % of the rate", share * 100.0);
        assert!(busiest <= 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_caller_still_gets_97_percent_at_1000_per_second() {
        let (share, busiest) = achieved_share(1000, 3).await;
        assert!(share >= 0.97, "{:.1} % of the rate", share * 100.0);
        assert!(busiest <= 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_caller_still_gets_97_percent_at_10000_per_second() {
        let (share, busiest) = achieved_share(10_000, 3).await;
        assert!(share >= 0.97, "{:.1} % of the rate", share * 100.0);
        assert!(busiest <= 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn two_campaigns_sharing_the_account_rate_get_97_percent_of_it() {
        let limits = RateLimits::new(1000);
        let (a, b) = tokio::join!(
            drive(&limits, ("a", Some(600)), 3, 64, jitter(3)),
            drive(&limits, ("b", Some(600)), 3, 64, jitter(2)),
        );
        let all: Vec<Instant> = a.iter().chain(&b).copied().collect();
        assert!(all.len() as f64 >= 0.97 * 3000.0, "{} creates in 3 s at 1000/s", all.len());
        assert!(busiest_second(&all) <= 1000, "{} in one second", busiest_second(&all));
        assert!(busiest_second(&a) <= 600 && busiest_second(&b) <= 600, "a campaign went over its own rate");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_already_due_is_taken_without_waiting_for_the_timer() {
        // Slots 101 µs apart, off whole milliseconds: a sleep for one that has
        // gone by would still wait for the timer's next millisecond (on a
        // paused clock, the clock jumps there).
        let limits = RateLimits::new(10_000);
        limits.until_ready("c", Some(10_000)).await;
        tokio::time::advance(Duration::from_micros(5_050)).await;
        for i in 0..40 {
            let before = Instant::now();
            limits.until_ready("c", Some(10_000)).await;
            assert_eq!(Instant::now(), before, "slot {i} was due and still waited");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_starts_afresh_without_a_burst() {
        let limits = RateLimits::new(10_000);
        drive(&limits, ("c", None), 1, 64, jitter(2)).await;
        // Idle for longer than the catch-up allowance, though within a window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut at_once = 0;
        while limits.try_acquire("c", None) {
            at_once += 1;
        }
        assert_eq!(at_once, 1, "the first create after idling goes alone");
        // And the pace resumes on the new grid, one period later.
        tokio::time::advance(Pacer::new(10_000).period()).await;
        assert!(limits.try_acquire("c", None));
        assert!(!limits.try_acquire("c", None));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_checks_before_a_send_never_put_more_than_the_rate_in_a_second() {
        // The checks ran after the send log counted the create: creates whose
        // checks were quick caught up with those whose checks were slow (1,019
        // request starts in some 1.0101 s at 1,000/s on a loaded machine).
        let (sent, end) = sends_after_uneven_delays(100, 40, Delay::InCheck).await;
        assert!(busiest_second(&sent) <= 100, "{} in one second", busiest_second(&sent));
        let in_time = sent.iter().filter(|&&t| t <= end).count();
        assert!(in_time >= 291, "{in_time} of 300 sent within 3 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_stops_the_create_takes_no_place_in_the_window() {
        let limits = RateLimits::new(2);
        let stopped = limits.turn_to_send(|| std::future::ready(Some("paused"))).await;
        assert_eq!(stopped, Err("paused"));
        let start = Instant::now();
        for _ in 0..2 {
            limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        }
        assert_eq!(Instant::now(), start, "two creates fit the window: the stopped one was not counted");
        limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        assert!(Instant::now() >= start + Duration::from_secs(1), "a third in the same second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_already_granted_waits_out_a_429s_hold_before_its_check() {
        // Granted before the 429 came back: without the wait it would go out
        // into Studio's still-full second and draw another 429.
        let limits = RateLimits::new(1000);
        assert!(limits.try_acquire("c", None));
        let start = Instant::now();
        limits.hold_for(Duration::from_secs(1));
        let checked = Mutex::new(None);
        let sent = limits
            .turn_to_send(|| {
                *checked.lock().unwrap() = Some(Instant::now());
                std::future::ready(None::<()>)
            })
            .await
            .unwrap();
        assert!(sent >= start + Duration::from_secs(1), "sent during the hold");
        assert!(
            checked.lock().unwrap().is_some_and(|t| t >= start + Duration::from_secs(1)),
            "checked before the hold ended"
        );
    }

    /// When the send log lets the `cap + 1`-th of creates sent at once go.
    async fn window_now(limits: &RateLimits, cap: usize) -> Duration {
        tokio::time::advance(Duration::from_secs(5)).await;
        let start = Instant::now();
        for _ in 0..=cap {
            limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        }
        Instant::now() - start
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_widens_the_margin_once_an_episode_at_most_twice_and_quiet_narrows_it() {
        let limits = RateLimits::new(10);
        // The timer wakes on whole milliseconds: up to one after the instant.
        let about = |d: Duration, ms: f64| {
            let d = d.as_secs_f64() * 1000.0;
            assert!(d >= ms && d < ms + 1.0, "a window of {d} ms, not {ms}");
        };
        about(window_now(&limits, 10).await, 1010.1);
        let first = limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        let also_in_flight = limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        limits.create_throttled(first);
        assert!((limits.margin() - 0.0175).abs() < 1e-9, "{}", limits.margin());
        // Another create of the same episode (sent before the margin changed).
        limits.create_throttled(also_in_flight);
        assert!((limits.margin() - 0.0175).abs() < 1e-9, "one episode counted twice: {}", limits.margin());
        assert!((limits.account.period().as_secs_f64() - 1.0 / (10.0 * 0.9825)).abs() < 1e-9);
        about(window_now(&limits, 10).await, 1017.8);
        // A create sent since: a new episode, a second step; then no more.
        for steps in [2, 2] {
            tokio::time::advance(Duration::from_millis(5)).await;
            let sent = limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
            tokio::time::advance(Duration::from_millis(5)).await;
            limits.create_throttled(sent);
            assert!((limits.margin() - 0.01 - 0.0075 * f64::from(steps)).abs() < 1e-9, "{}", limits.margin());
        }
        about(window_now(&limits, 10).await, 1025.6);
        // The last 429 (not the last change) starts the five quiet minutes:
        // one more, at the widest margin, 200 s after it widened.
        tokio::time::advance(Duration::from_secs(200)).await;
        let sent = limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        limits.create_throttled(sent);
        tokio::time::advance(MARGIN_RELAX - Duration::from_secs(10)).await;
        limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        assert!((limits.margin() - 0.025).abs() < 1e-9, "narrowed early");
        tokio::time::advance(Duration::from_secs(10)).await;
        // The create that finds the margin narrowed is sent under it: its
        // 429 is a new episode.
        let first_narrow = limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        assert!((limits.margin() - 0.0175).abs() < 1e-9, "{}", limits.margin());
        limits.create_throttled(first_narrow);
        assert!((limits.margin() - 0.025).abs() < 1e-9, "a 429 right after narrowing was not counted");
        for margin in [0.0175, 0.01] {
            tokio::time::advance(MARGIN_RELAX).await;
            limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
            assert!((limits.margin() - margin).abs() < 1e-9, "{}", limits.margin());
        }
        about(window_now(&limits, 10).await, 1010.1);
    }

    /// The margin follows the spread of answer times over the last ten
    /// seconds, up to the 429 steps' widest, and never below what 429s set.
    #[tokio::test(start_paused = true)]
    async fn the_margin_widens_with_the_spread_of_answer_times_and_narrows_when_it_passes() {
        let limits = RateLimits::new(10);
        let answered = |took: u64| limits.create_answered(Instant::now() - Duration::from_micros(took));
        let close = |want: f64| assert!((limits.margin() - want).abs() < 1e-9, "{} not {want}", limits.margin());
        answered(300);
        close(0.01);
        // 0.3 to 15.3 ms: 1.5 %, on the pace and the send log's window alike.
        answered(15_300);
        close(0.015);
        assert!((limits.account.period().as_secs_f64() - 1.0 / (10.0 * 0.985)).abs() < 1e-9);
        let window = window_now(&limits, 10).await.as_secs_f64() * 1000.0;
        assert!((1015.2..1016.3).contains(&window), "a window of {window} ms");
        // A second's spread asks for more than the widest margin.
        answered(1_000_300);
        close(0.025);
        // Ten seconds of even answers and the spread is gone.
        tokio::time::advance(SPREAD_HORIZON).await;
        answered(500);
        answered(700);
        close(0.01);
        // A 429's step is kept under a narrower spread, and a wider one wins.
        let sent = limits.turn_to_send(|| std::future::ready(None::<()>)).await.unwrap();
        limits.create_throttled(sent);
        close(0.0175);
        answered(20_500);
        close(0.02);
        tokio::time::advance(SPREAD_HORIZON).await;
        answered(500);
        close(0.0175);
    }
}
