//! The interpreter: an Execution created on a Flow whose definition the
//! simulator holds is run, widget by widget, from the trigger's
//! `incomingRequest` transition until a transition with no `next` ends it.
//!
//! | widget | what it does | event |
//! |---|---|---|
//! | `send-message` | records the rendered message under `widgets.NAME.outbound` | `sent`, or `failed` (below) |
//! | `send-and-wait-for-reply` | records the message, then after `reply_delay` the contact's answer under `widgets.NAME.inbound` | `incomingMessage`, or `timeout` when no answer comes, or `deliveryFailure` (below) |
//! | `split-based-on` | routes on its conditions | `match` or `noMatch` |
//! | `set-variables` | sets `flow.variables.KEY` to each rendered value | `next` |
//! | anything else | nothing: follows its first transition (its success path, for the widgets that have one) | that transition's |
//!
//! A message to one of Twilio's test numbers fails as Twilio fails it, so a
//! rehearsal can meet the errors that suppress a contact: to `+15005550004`
//! with 21610 (the recipient unsubscribed), to `+15005550009` with 21614 (not
//! a mobile number). The widget's entry keeps the message as created under
//! `outbound` (`Status` `accepted`) and, beside it, the status callback Studio
//! merges in when the message fails (`MessageSid`, `MessageStatus` and
//! `SmsStatus` `failed`, `ErrorCode` as a string, `To`, `From`, `AccountSid`);
//! the widget then leaves on its failure event and no reply is waited for.
//!
//! Each transition is one Step, named by its event, from the widget that ran
//! to the next one (`Ended` for the last), with a copy of the context then.
//! Every Execution runs on a task of its own that sleeps while its contact
//! "types"; the state is only touched under the simulator's lock. As in
//! Studio, an Execution ends after 1,000 Steps whatever its Flow says, so a
//! loop in a definition cannot spin forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::liquid::render;
use super::replies::Answers;
use super::{Shared, SimExecution, SimState, Simulator, flows, lock, split};

const MAX_STEPS: usize = 1000;

/// Twilio's test number whose messages fail with 21610: the recipient unsubscribed.
pub const UNSUBSCRIBED_NUMBER: &str = "+15005550004";
/// Twilio's test number whose messages fail with 21614: not a mobile number.
pub const NOT_MOBILE_NUMBER: &str = "+15005550009";

/// The error Twilio fails a message to `to` with, for its test numbers.
fn send_error_for(to: &str) -> Option<u32> {
    match to.trim_start_matches("whatsapp:") {
        UNSUBSCRIBED_NUMBER => Some(21610),
        NOT_MOBILE_NUMBER => Some(21614),
        _ => None,
    }
}

/// A widget's entry after its message failed with `code`: the message as
/// created, and the status callback's fields that Studio puts beside it.
fn failed_send(outbound: Value, code: u32, e: &SimExecution) -> Value {
    let mut outbound = outbound;
    outbound["Status"] = json!("accepted");
    outbound["ErrorCode"] = Value::Null;
    outbound["ErrorMessage"] = Value::Null;
    json!({
        "MessageSid": outbound["Sid"],
        "SmsSid": outbound["Sid"],
        "MessageStatus": "failed",
        "SmsStatus": "failed",
        "ErrorCode": code.to_string(),
        "To": outbound["To"],
        "From": outbound["From"],
        "AccountSid": e.account_sid,
        "ApiVersion": "2010-04-01",
        "outbound": outbound,
    })
}

/// One transition of a run, as the Steps endpoints serve it.
#[derive(Debug, Clone)]
pub(super) struct SimStep {
    pub sid: String,
    /// The event that caused the transition.
    pub name: String,
    /// The type of the widget it left.
    pub widget_type: String,
    pub from: String,
    pub to: String,
    pub date_created: DateTime<Utc>,
    pub context: Value,
}

/// Where an interpreted Execution is, and what it has gathered.
#[derive(Debug)]
pub(super) struct FlowRun {
    /// The Flow revision it runs (1-based; later revisions do not affect it).
    pub revision: usize,
    at: Option<String>,
    variables: Map<String, Value>,
    widgets: Map<String, Value>,
    pub steps: Vec<SimStep>,
    /// While waiting at a `send-and-wait-for-reply`: the answer that will come
    /// (`Some(None)`: none will).
    reply: Option<Option<String>>,
}

/// What a run did when it was last moved on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// It waits for its contact; move it on again after the reply delay.
    Waiting,
    /// Its Flow has ended, and so has the Execution.
    Ended,
    /// There is nothing to run: the Execution was ended by a request, or is unknown.
    Gone,
}

/// The context of an Execution that is not interpreted, and the base of one that is.
pub(super) fn base_context(e: &SimExecution) -> Value {
    json!({
        "flow": {
            "flow_sid": e.flow_sid,
            "channel": { "address": e.from },
            "data": e.parameters,
        },
        "contact": { "channel": { "address": e.to } },
    })
}

fn message_sid() -> String {
    format!("SM{:032x}", rand::random::<u128>())
}

impl FlowRun {
    fn new(revision: usize) -> Self {
        FlowRun { revision, at: None, variables: Map::new(), widgets: Map::new(), steps: Vec::new(), reply: None }
    }

    /// The context as Studio shapes it: the Parameters under `flow.data`,
    /// variables under `flow.variables`, each widget's outputs under `widgets`.
    pub(super) fn context(&self, e: &SimExecution) -> Value {
        let mut context = base_context(e);
        context["flow"]["variables"] = Value::Object(self.variables.clone());
        context["widgets"] = Value::Object(self.widgets.clone());
        context
    }

    fn record(&mut self, e: &SimExecution, from: &str, widget_type: &str, event: &str, next: Option<&str>) {
        self.steps.push(SimStep {
            sid: format!("FT{:032x}", rand::random::<u128>()),
            name: event.to_string(),
            widget_type: widget_type.to_string(),
            from: from.to_string(),
            to: next.unwrap_or("Ended").to_string(),
            date_created: Utc::now(),
            context: self.context(e),
        });
        self.at = next.map(str::to_string);
    }

    /// Runs from where the run is until its contact must answer or its Flow ends.
    fn advance(&mut self, e: &SimExecution, definition: &Value, answers: &mut Answers) -> Progress {
        let states = definition["states"].as_array().map(Vec::as_slice).unwrap_or_default();
        let state = |name: &str| states.iter().find(|s| s["name"].as_str() == Some(name));
        if self.steps.is_empty() {
            let trigger = definition["initial_state"].as_str().unwrap_or("Trigger");
            let next = state(trigger).and_then(|t| next_on(t, "incomingRequest"));
            self.record(e, trigger, "trigger", "incomingRequest", next);
        }
        loop {
            let Some(name) = self.at.clone() else { return Progress::Ended };
            // A definition the simulator's validator let through always names
            // existing widgets; an installed one may not, and then it ends here.
            let Some(widget) = state(&name) else { return Progress::Ended };
            if self.steps.len() >= MAX_STEPS {
                tracing::warn!(execution = %e.sid, "an Execution reached {MAX_STEPS} Steps and was ended");
                return Progress::Ended;
            }
            let kind = widget["type"].as_str().unwrap_or_default();
            let context = self.context(e);
            let (event, next) = match kind {
                "send-message" => {
                    let outbound = message(widget, &context, e);
                    match outbound["To"].as_str().and_then(send_error_for) {
                        Some(code) => {
                            self.widgets.insert(name.clone(), failed_send(outbound, code, e));
                            fired(widget, "failed")
                        }
                        None => {
                            self.widgets.insert(name.clone(), json!({ "outbound": outbound }));
                            fired(widget, "sent")
                        }
                    }
                }
                "send-and-wait-for-reply" => match self.reply.take() {
                    None => {
                        let outbound = message(widget, &context, e);
                        match outbound["To"].as_str().and_then(send_error_for) {
                            // Nothing reached the contact, so no answer can come.
                            Some(code) => {
                                self.widgets.insert(name.clone(), failed_send(outbound, code, e));
                                fired(widget, "deliveryFailure")
                            }
                            None => {
                                self.widgets.insert(name.clone(), json!({ "outbound": outbound }));
                                self.reply = Some(answers.answer(definition, &name, &self.context(e)));
                                return Progress::Waiting;
                            }
                        }
                    }
                    Some(Some(body)) => {
                        let to = self.widgets[&name]["outbound"]["From"].clone();
                        self.widgets[&name]["inbound"] =
                            json!({ "Body": body, "From": e.to, "To": to, "MessageSid": message_sid() });
                        fired(widget, "incomingMessage")
                    }
                    Some(None) => fired(widget, "timeout"),
                },
                "split-based-on" => match split::route(widget, &context).map(|i| &widget["transitions"][i]) {
                    Some(t) => (t["event"].as_str().unwrap_or("match").to_string(), t["next"].as_str()),
                    None => ("noMatch".to_string(), None),
                },
                "set-variables" => {
                    for variable in widget["properties"]["variables"].as_array().map(Vec::as_slice).unwrap_or_default()
                    {
                        let Some(key) = variable["key"].as_str() else { continue };
                        let value = match &variable["value"] {
                            Value::String(template) => render(template, &context),
                            other => other.to_string(),
                        };
                        self.variables.insert(key.to_string(), Value::String(value));
                    }
                    fired(widget, "next")
                }
                _ => {
                    let first = &widget["transitions"][0];
                    (first["event"].as_str().unwrap_or("next").to_string(), first["next"].as_str())
                }
            };
            self.record(e, &name, kind, &event, next);
        }
    }
}

/// The `next` of the widget's transition on `event`, when it has one.
fn next_on<'a>(widget: &'a Value, event: &str) -> Option<&'a str> {
    widget["transitions"]
        .as_array()?
        .iter()
        .find(|t| t["event"].as_str() == Some(event))
        .and_then(|t| t["next"].as_str())
        .filter(|next| !next.is_empty())
}

fn fired<'a>(widget: &'a Value, event: &str) -> (String, Option<&'a str>) {
    (event.to_string(), next_on(widget, event))
}

/// A message a widget sends: its rendered body, from the Flow's address and to
/// the contact unless the widget says otherwise.
fn message(widget: &Value, context: &Value, e: &SimExecution) -> Value {
    let properties = &widget["properties"];
    let address = |key: &str, default: &str| {
        properties[key]
            .as_str()
            .map(|t| render(t, context))
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    json!({
        "Sid": message_sid(),
        "Body": render(properties["body"].as_str().unwrap_or_default(), context),
        "From": address("from", &e.from),
        "To": address("to", &e.to),
        "Status": "sent",
    })
}

impl SimState {
    /// Starts running Execution `sid` when its Flow's definition is known;
    /// returns whether it did.
    pub(super) fn start_run(&mut self, shared: &Arc<Shared>, sid: &str) -> bool {
        let Some(e) = self.by_sid.get(sid).map(|&i| &self.executions[i]) else { return false };
        let Some(revision) = self.flows.get(&e.flow_sid).map(|f| f.revisions.len()).filter(|&n| n > 0) else {
            return false;
        };
        let to = e.to.clone();
        self.runs.insert(sid.to_string(), FlowRun::new(revision));
        tokio::spawn(drive(Arc::clone(shared), sid.to_string(), to));
        true
    }

    /// Moves run `sid` on, ending its Execution when its Flow ends.
    fn advance_run(&mut self, sid: &str, configured: Option<Option<String>>, seed: u64) -> Progress {
        let Some(&index) = self.by_sid.get(sid) else { return Progress::Gone };
        let SimState { executions, flows, runs, mixes, .. } = &mut *self;
        let e = &executions[index];
        let Some(run) = runs.get_mut(sid).filter(|_| e.status == "active") else { return Progress::Gone };
        let Some(definition) = flows.get(&e.flow_sid).and_then(|f| f.revisions.get(run.revision - 1)) else {
            return Progress::Gone;
        };
        let mut answers = Answers { configured, seed, flow: &e.flow_sid, mixes };
        let progress = run.advance(e, definition, &mut answers);
        if progress == Progress::Ended {
            self.end(sid, false);
        }
        progress
    }
}

/// The task that runs one Execution: moves it on, sleeps while its contact
/// answers, and stops when it has ended or the simulator is dropped.
async fn drive(shared: Arc<Shared>, sid: String, contact: String) {
    loop {
        let (delay, configured, seed) = {
            let config = lock(&shared.config);
            (config.reply_delay, config.replies.get(&contact).cloned(), config.reply_seed)
        };
        let progress = lock(&shared.state).advance_run(&sid, configured, seed);
        if progress != Progress::Waiting {
            return;
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

impl Simulator {
    /// Makes `definition` the latest revision of Flow `sid` (created, published,
    /// when new). Executions created on it from then on run it; those already
    /// running keep the revision they started with.
    pub fn install_flow(&self, sid: &str, friendly_name: &str, definition: Value) {
        flows::install(&mut lock(&self.shared.state).flows, sid, friendly_name, definition);
    }

    /// Waits, at most `within`, until `done` holds of every Execution created so
    /// far (e.g. all of them ended); returns whether it did. Wakes on each
    /// create and each end rather than polling.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[SimExecution]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let changed = Arc::clone(&lock(&self.shared.state).changed);
        loop {
            let notified = changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a change made meanwhile still wakes us.
            notified.as_mut().enable();
            let lifetime = self.shared.lifetime();
            let (holds, next_expiry) = {
                let mut state = lock(&self.shared.state);
                state.expire(lifetime, Instant::now());
                (done(&state.executions), state.next_expiry(lifetime))
            };
            if holds {
                return true;
            }
            // Lifetimes run out without any request to notice them: wake then too.
            let wake = next_expiry.map_or(deadline, |t| deadline.min(tokio::time::Instant::from_std(t)));
            if tokio::time::timeout_at(wake, notified).await.is_err() && tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn execution(to: &str) -> SimExecution {
        SimExecution {
            sid: "FN00000000000000000000000000000001".into(),
            account_sid: "AC00000000000000000000000000000000".into(),
            flow_sid: "FW00000000000000000000000000000001".into(),
            to: to.into(),
            from: "+15017122661".into(),
            parameters: json!({}),
            status: "active".into(),
            date_created: Utc::now(),
            date_updated: Utc::now(),
            ended_by_request: false,
            created_instant: None,
        }
    }

    /// Runs a Flow that sends `notify`, then asks with `ask` either way.
    fn run_for(to: &str) -> (FlowRun, SimExecution) {
        let definition = json!({
            "initial_state": "Trigger",
            "states": [
                {"name": "Trigger", "type": "trigger", "transitions": [{"event": "incomingRequest", "next": "notify"}]},
                {"name": "notify", "type": "send-message", "properties": {"body": "Tomorrow at 9"},
                 "transitions": [{"event": "sent", "next": "ask"}, {"event": "failed", "next": "ask"}]},
                {"name": "ask", "type": "send-and-wait-for-reply", "properties": {"body": "Coming?"},
                 "transitions": [{"event": "incomingMessage"}, {"event": "timeout"}, {"event": "deliveryFailure"}]}
            ]
        });
        let e = execution(to);
        let mut mixes = HashMap::new();
        let mut answers =
            Answers { configured: Some(Some("yes".into())), seed: 0, flow: &e.flow_sid, mixes: &mut mixes };
        let mut run = FlowRun::new(1);
        while run.advance(&e, &definition, &mut answers) == Progress::Waiting {}
        (run, e)
    }

    #[test]
    fn a_message_to_twilios_test_numbers_fails_as_studio_shows_a_failed_send() {
        for (to, code) in [(UNSUBSCRIBED_NUMBER, 21610), (NOT_MOBILE_NUMBER, 21614)] {
            let (run, e) = run_for(to);

            let events: Vec<(&str, &str)> = run.steps.iter().map(|s| (s.from.as_str(), s.name.as_str())).collect();
            assert_eq!(events, [("Trigger", "incomingRequest"), ("notify", "failed"), ("ask", "deliveryFailure")]);
            let context = run.context(&e);
            for widget in ["notify", "ask"] {
                let entry = &context["widgets"][widget];
                assert_eq!(entry["ErrorCode"], code.to_string(), "{widget}");
                assert_eq!(entry["MessageStatus"], "failed");
                assert_eq!(entry["outbound"]["Status"], "accepted");
                assert!(entry.get("inbound").is_none(), "no answer to a message that never went");
            }
            assert_eq!(crate::domain::send_errors_in(&context, to), [code], "what flowcast reads back");
        }
        let (run, e) = run_for("+12015550100");
        assert_eq!(run.steps.last().map(|s| s.name.as_str()), Some("incomingMessage"));
        assert!(crate::domain::send_errors_in(&run.context(&e), "+12015550100").is_empty());
    }
}
