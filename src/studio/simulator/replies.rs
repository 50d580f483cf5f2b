//! What contacts answer to a `send-and-wait-for-reply`: the reply configured
//! for them (`SimConfig::replies`, or a `phone,reply` CSV), or else one drawn
//! from a seeded default mix built so that a rehearsal takes every branch.
//!
//! The mix looks at the `split-based-on` the reply leads to and offers, for
//! each of its transitions, a reply that really takes it (checked by routing
//! the split on a copy of the context holding that reply), plus no reply at
//! all. Contacts reaching the same widget of the same Flow take the offers in
//! seeded shuffled rounds, so any N contacts in a row, N being the number of
//! offers, take every branch between them, whatever the seed.

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use super::split;

/// Reads a replies file: a CSV with a header naming `phone` and `reply`
/// columns (any order, other columns ignored). An empty reply means the
/// contact never replies; a phone listed twice is a mistake.
pub fn read_replies(path: &Path) -> Result<HashMap<String, Option<String>>, String> {
    let file = path.display();
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_path(path).map_err(|e| format!("{file}: {e}"))?;
    let headers = reader.headers().map_err(|e| format!("{file}: {e}"))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("{file}: the header names no {name:?} column (expected phone,reply)"))
    };
    let (phone_at, reply_at) = (column("phone")?, column("reply")?);
    let mut replies = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("{file}: {e}"))?;
        let line = record.position().map_or(0, |p| p.line());
        let phone = record.get(phone_at).unwrap_or_default().trim();
        if phone.is_empty() {
            return Err(format!("{file}:{line}: no phone"));
        }
        let reply = record.get(reply_at).unwrap_or_default();
        let reply = (!reply.trim().is_empty()).then(|| reply.to_string());
        if replies.insert(phone.to_string(), reply).is_some() {
            return Err(format!("{file}:{line}: {phone} is listed twice"));
        }
    }
    Ok(replies)
}

/// Where one Flow widget's contacts are in the default mix: the current round's
/// shuffled order of offers and how far into it they are.
pub(super) struct MixCursor {
    rng: StdRng,
    order: Vec<usize>,
    next: usize,
}

impl MixCursor {
    fn new(seed: u64, flow: &str, widget: &str) -> Self {
        MixCursor {
            rng: StdRng::seed_from_u64(seed ^ fnv1a(flow) ^ fnv1a(widget).rotate_left(17)),
            order: Vec::new(),
            next: 0,
        }
    }

    /// The offer for the next contact among `offers`, starting a new shuffled
    /// round when one is complete (or when the number of offers changed).
    fn next_index(&mut self, offers: usize) -> usize {
        if self.next >= self.order.len() || self.order.len() != offers {
            self.order = (0..offers).collect();
            self.order.shuffle(&mut self.rng);
            self.next = 0;
        }
        self.next += 1;
        self.order[self.next - 1]
    }
}

/// A stable hash (the standard library's may change between releases), so a
/// seed replays the same mix on any build.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// What decides one contact's answers during one step of its Execution.
pub(super) struct Answers<'a> {
    /// The reply configured for this contact, if any (`Some(None)`: never replies).
    pub configured: Option<Option<String>>,
    pub seed: u64,
    pub flow: &'a str,
    pub mixes: &'a mut HashMap<(String, String), MixCursor>,
}

impl Answers<'_> {
    /// The contact's answer to the message `widget` has just sent; `None` is no reply.
    pub(super) fn answer(&mut self, definition: &Value, widget: &str, context: &Value) -> Option<String> {
        if let Some(configured) = &self.configured {
            return configured.clone();
        }
        let offers = offers(definition, widget, context);
        let key = (self.flow.to_string(), widget.to_string());
        let seed = self.seed;
        let cursor = self.mixes.entry(key).or_insert_with(|| MixCursor::new(seed, self.flow, widget));
        offers[cursor.next_index(offers.len())].clone()
    }
}

/// The default mix at `widget`: one reply per transition of the split its
/// `incomingMessage` leads to (those no reply can take are left out), then no
/// reply. Without such a split, a plain "yes" and no reply.
fn offers(definition: &Value, widget: &str, context: &Value) -> Vec<Option<String>> {
    let states = definition["states"].as_array().map(Vec::as_slice).unwrap_or_default();
    let state = |name: &str| states.iter().find(|s| s["name"].as_str() == Some(name));
    let split = state(widget)
        .and_then(|w| w["transitions"].as_array())
        .and_then(|ts| ts.iter().find(|t| t["event"].as_str() == Some("incomingMessage")))
        .and_then(|t| t["next"].as_str())
        .and_then(state)
        .filter(|s| s["type"].as_str() == Some("split-based-on"));
    let mut offers: Vec<Option<String>> = match split {
        None => vec![Some("yes".to_string())],
        Some(split) => {
            let transitions = split["transitions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let routes_to =
                |i: usize, reply: &String| split::route(split, &replying(context, widget, reply)) == Some(i);
            (0..transitions.len())
                .flat_map(|i| {
                    let conditions = transitions[i]["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
                    // Every listed answer of a `matches_any_of` that takes this
                    // branch is an offer of its own, so that a survey's 0 to 10
                    // are all given, not just the first of them.
                    let listed: Vec<String> = conditions
                        .iter()
                        .filter(|c| c["type"].as_str() == Some("matches_any_of"))
                        .flat_map(|c| {
                            super::liquid::render(c["value"].as_str().unwrap_or_default(), context)
                                .split(',')
                                .map(|v| v.trim().to_string())
                                .collect::<Vec<_>>()
                        })
                        .filter(|reply| !reply.is_empty() && routes_to(i, reply))
                        .collect();
                    if !listed.is_empty() {
                        return listed.into_iter().map(Some).collect::<Vec<_>>();
                    }
                    let generic = split::candidates(&Value::Null, context);
                    conditions
                        .iter()
                        .flat_map(|c| split::candidates(c, context))
                        .chain(generic)
                        .find(|reply| routes_to(i, reply))
                        .map(Some)
                        .into_iter()
                        .collect()
                })
                .collect()
        }
    };
    offers.push(None);
    offers
}

/// A copy of `context` in which `widget` has received `reply`.
fn replying(context: &Value, widget: &str, reply: &str) -> Value {
    let mut context = context.clone();
    context["widgets"][widget]["inbound"] = json!({ "Body": reply });
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> Value {
        json!({"states": [
            {"name": "ask", "type": "send-and-wait-for-reply",
             "transitions": [{"event": "incomingMessage", "next": "split"}, {"event": "timeout"}]},
            {"name": "split", "type": "split-based-on", "properties": {"input": "{{widgets.ask.inbound.Body}}"},
             "transitions": [
                {"event": "noMatch", "next": "unclear"},
                {"event": "match", "next": "yes", "conditions": [{"type": "matches_any_of", "value": "yes,y"}]},
                {"event": "match", "next": "shadowed", "conditions": [{"type": "equal_to", "value": "Y"}]},
                {"event": "match", "next": "no", "conditions": [{"type": "starts_with", "value": "n"}]}]}
        ]})
    }

    #[test]
    fn the_mix_offers_a_reply_per_reachable_branch_and_no_reply() {
        let context = json!({"widgets": {}});
        let offers = offers(&definition(), "ask", &context);
        // "Y" is caught by the earlier "yes,y" condition, so no reply reaches its
        // branch; each answer a list names is offered.
        assert_eq!(offers, vec![Some("maybe".into()), Some("yes".into()), Some("y".into()), Some("n".into()), None]);
    }

    #[test]
    fn any_round_of_contacts_takes_every_offer_whatever_the_seed() {
        for seed in 0..20 {
            let mut mixes = HashMap::new();
            let mut answers = Answers { configured: None, seed, flow: "FW1", mixes: &mut mixes };
            let round: Vec<_> = (0..5).map(|_| answers.answer(&definition(), "ask", &json!({}))).collect();
            for offer in offers(&definition(), "ask", &json!({})) {
                assert!(round.contains(&offer), "seed {seed}: {offer:?} missing from {round:?}");
            }
        }
    }

    #[test]
    fn a_configured_reply_wins_over_the_mix() {
        let mut mixes = HashMap::new();
        let mut answers = Answers { configured: Some(None), seed: 1, flow: "FW1", mixes: &mut mixes };
        assert_eq!(answers.answer(&definition(), "ask", &json!({})), None);
        assert!(mixes.is_empty());
    }

    #[test]
    fn a_replies_file_maps_phones_to_replies_and_blank_to_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "\u{feff}reply,phone\n9,+12015550100\n,+12015550101\n\"yes, please\",+12015550102\n")
            .unwrap();
        let replies = read_replies(&path).unwrap();
        assert_eq!(replies["+12015550100"].as_deref(), Some("9"));
        assert_eq!(replies["+12015550101"], None);
        assert_eq!(replies["+12015550102"].as_deref(), Some("yes, please"));

        std::fs::write(&path, "phone,reply\n+12015550100,1\n+12015550100,2\n").unwrap();
        assert!(read_replies(&path).unwrap_err().ends_with(":3: +12015550100 is listed twice"));
        std::fs::write(&path, "number,reply\n").unwrap();
        assert!(read_replies(&path).unwrap_err().contains("no \"phone\" column"));
    }
}
