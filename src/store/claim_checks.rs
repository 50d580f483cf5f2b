//! The per-job checks a claim makes before a job goes out: the run's dedupe
//! rule and the per-contact caps. Both backends look up the same facts (an
//! earlier job with the key, a phone's recent contacts) in their own SQL and
//! ask these functions what to do with the job, so the rules live once.
//!
//! No I/O here: the verdicts are pure functions of what was looked up.

use crate::domain::{ContactLimits, JobReason, ReasonKind};

/// How soon a job held back only by another job's attempt still out (its
/// dedupe key, or a contact the caps would count) looks again.
pub(crate) const IN_FLIGHT_RECHECK_MS: i64 = 1_000;

/// A due job before the checks.
pub(crate) struct Candidate {
    pub id: i64,
    pub phone: String,
    pub dedupe_key: Option<String>,
    pub expires_at: Option<i64>,
    /// The start of an attempt of unknown fate, if any.
    pub ambiguous_since: Option<i64>,
}

impl Candidate {
    /// An attempt whose fate is unknown is reconciled before anything else:
    /// it may already be the contact the checks would count, so it is claimed
    /// unchecked.
    pub fn needs_checks(&self) -> bool {
        self.ambiguous_since.is_none()
    }
}

/// An earlier job of the same campaign with the same dedupe key.
pub(crate) struct Earlier {
    pub run: i64,
    pub job: i64,
    /// Its attempt is out (or its fate unknown): not yet known to be sent.
    pub in_flight: bool,
}

/// The instants (ms) of a phone's contacts by campaigns that count.
#[derive(Default)]
pub(crate) struct Contacts {
    /// Executions sent.
    pub sent: Vec<i64>,
    /// Attempts out, or of unknown fate: they may yet be contacts, or not.
    pub in_flight: Vec<i64>,
}

/// What a check decided for a job it holds back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// End the job `skipped` with this reason.
    Skip(JobReason),
    /// Leave it pending, due again at this instant (ms).
    Defer(i64),
}

/// The dedupe rule, given the earliest other job of the campaign with the
/// same key sent (or going out) within the run's dedupe window. `None`: the
/// job may go.
pub(crate) fn dedupe_verdict(earlier: Option<Earlier>, now: i64) -> Option<Verdict> {
    match earlier? {
        Earlier { run, job, in_flight: false } => {
            Some(Verdict::Skip(JobReason::with_detail(ReasonKind::AlreadySent, format!("run {run}, job {job}"))))
        }
        // Its attempt may yet fail: look again shortly rather than skip on a
        // send that never happened.
        Earlier { in_flight: true, .. } => Some(Verdict::Defer(now + IN_FLIGHT_RECHECK_MS)),
    }
}

/// The per-contact caps, given the phone's contacts within the caps' horizon.
/// `None`: the job may go.
pub(crate) fn caps_verdict(
    caps: &ContactLimits,
    contacts: Contacts,
    expires_at: Option<i64>,
    now: i64,
) -> Option<Verdict> {
    let Contacts { sent, in_flight } = contacts;
    // Only Executions known to be sent move the job on, or end it.
    let allowed = caps.next_allowed(&sent, now);
    if allowed > now {
        if expires_at.is_some_and(|e| e <= allowed) || allowed == i64::MAX {
            return Some(Verdict::Skip(JobReason::with_detail(ReasonKind::FrequencyCap, caps.describe())));
        }
        return Some(Verdict::Defer(allowed));
    }
    // Attempts still out may yet count, or may send nothing (an opt-out, a
    // 409, a failure): not now, but look again shortly rather than a day later
    // on a send that never happened.
    if !in_flight.is_empty() && caps.next_allowed(&[sent, in_flight].concat(), now) > now {
        return Some(Verdict::Defer(now + IN_FLIGHT_RECHECK_MS));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;
    const DAY: i64 = 86_400_000;

    fn one_a_day() -> ContactLimits {
        ContactLimits { max_per_day: Some(1), ..ContactLimits::default() }
    }

    #[test]
    fn a_job_with_no_earlier_key_may_go() {
        assert_eq!(dedupe_verdict(None, NOW), None);
    }

    #[test]
    fn a_key_already_sent_skips_the_job_naming_the_earlier_one() {
        let verdict = dedupe_verdict(Some(Earlier { run: 3, job: 41, in_flight: false }), NOW);
        let Some(Verdict::Skip(reason)) = verdict else { panic!("skipped, got {verdict:?}") };
        assert_eq!(reason.kind, ReasonKind::AlreadySent);
        assert!(reason.to_string().contains("run 3, job 41"), "{reason}");
    }

    #[test]
    fn a_key_whose_attempt_is_still_out_looks_again_shortly() {
        let verdict = dedupe_verdict(Some(Earlier { run: 3, job: 41, in_flight: true }), NOW);
        assert_eq!(verdict, Some(Verdict::Defer(NOW + IN_FLIGHT_RECHECK_MS)));
    }

    #[test]
    fn a_contact_under_its_caps_may_go() {
        let contacts = Contacts { sent: vec![NOW - 2 * DAY], in_flight: vec![] };
        assert_eq!(caps_verdict(&one_a_day(), contacts, None, NOW), None);
    }

    #[test]
    fn a_contact_at_its_cap_is_moved_to_when_the_cap_allows() {
        let contacts = Contacts { sent: vec![NOW - 1_000], in_flight: vec![] };
        let verdict = caps_verdict(&one_a_day(), contacts, None, NOW);
        let Some(Verdict::Defer(at)) = verdict else { panic!("deferred, got {verdict:?}") };
        assert!(at > NOW && at <= NOW - 1_000 + DAY + 1, "deferred to {at}");
    }

    #[test]
    fn a_contact_at_its_cap_past_the_jobs_expiry_is_skipped_as_capped() {
        let contacts = Contacts { sent: vec![NOW - 1_000], in_flight: vec![] };
        let verdict = caps_verdict(&one_a_day(), contacts, Some(NOW + 60_000), NOW);
        let Some(Verdict::Skip(reason)) = verdict else { panic!("skipped, got {verdict:?}") };
        assert_eq!(reason.kind, ReasonKind::FrequencyCap);
    }

    #[test]
    fn an_attempt_still_out_that_would_fill_the_cap_holds_the_job_briefly() {
        let contacts = Contacts { sent: vec![], in_flight: vec![NOW - 500] };
        assert_eq!(caps_verdict(&one_a_day(), contacts, None, NOW), Some(Verdict::Defer(NOW + IN_FLIGHT_RECHECK_MS)));
    }

    #[test]
    fn unlimited_caps_let_every_job_go() {
        let contacts = Contacts { sent: vec![NOW - 1; 50], in_flight: vec![NOW; 50] };
        assert_eq!(caps_verdict(&ContactLimits::default(), contacts, None, NOW), None);
    }
}
