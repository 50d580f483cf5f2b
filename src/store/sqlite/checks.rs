//! SQLite's drain of the pre-send checks (see `store::checks`): on the
//! reader connection, on the blocking pool, each run of a batch read once
//! (most are of one run) and each contact's entry on its own.

use std::ops::Deref;

use rusqlite::Connection;

use super::suppressions::{self, Covering, RunFacts};
use crate::store::checks::{Answer, Draining};

/// Answers every waiting check with the connection `reader` gives, then
/// those that came meanwhile, until none is left.
pub(super) fn drain<C: Deref<Target = Connection>>(mut draining: Draining, reader: impl Fn() -> C) {
    while let Some(batch) = draining.next_batch() {
        let conn = reader();
        let mut runs: Vec<(i64, RunFacts)> = Vec::new();
        let mut covering = None;
        for check in batch {
            let answer = answer(&conn, &mut covering, &mut runs, check.run_id, &check.phone);
            // A caller that gave up waiting has dropped its receiver.
            let _ = check.reply.send(answer);
        }
    }
}

/// One check's answer, its run's facts read and the lookup's statement
/// taken once per batch (a failure to take it fails this check; the next
/// tries again).
fn answer<'c>(
    conn: &'c Connection,
    covering: &mut Option<Covering<'c>>,
    runs: &mut Vec<(i64, RunFacts)>,
    run_id: i64,
    phone: &str,
) -> Answer {
    let at = match runs.iter().position(|(id, _)| *id == run_id) {
        Some(at) => at,
        None => {
            runs.push((run_id, suppressions::run_facts(conn, run_id)?));
            runs.len() - 1
        }
    };
    let run = &runs[at].1;
    let covering = match covering {
        Some(covering) => covering,
        None => covering.insert(Covering::new(conn)?),
    };
    Ok((run.state, covering.find(phone, &run.scopes)?))
}
