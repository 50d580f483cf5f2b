//! The simulator runs Studio Flow definitions: a survey asks, splits on the
//! answer, sets variables and thanks, over real loopback HTTP; what happened
//! is read back as Studio serves it (status, Context, Steps), and every ending
//! can be delivered, signed, to an Event Streams sink.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use flowcast::domain::FlowSid;
use flowcast::service::webhook::{SignatureAlgorithm, body_hash_is_valid, parse_events, signature_is_valid};
use flowcast::studio::simulator::{EventSink, SimConfig, Simulator};
use flowcast::studio::{CreateRequest, HttpStudio, StudioApi};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::helpers::*;

const SURVEY: &str = "FWbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const FROM: &str = "+15017122661";

/// Ask for a 0-10 score; 9-10, 7-8 and 0-6 each set their band and the score,
/// then thank; anything else is unclear; no answer ends at the timeout.
fn survey() -> Value {
    let band = |name: &str| {
        json!({"name": name, "type": "set-variables",
               "transitions": [{"event": "next", "next": "thank"}],
               "properties": {"variables": [
                   {"key": "score", "value": "{{widgets.ask.inbound.Body}}"},
                   {"key": "band", "value": name}]}})
    };
    let condition = |kind: &str, value: &str| json!([{"friendly_name": value, "arguments": ["{{widgets.ask.inbound.Body}}"], "type": kind, "value": value}]);
    json!({
        "description": "one-question survey",
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true},
        "states": [
            {"name": "Trigger", "type": "trigger", "transitions": [
                {"event": "incomingMessage"}, {"event": "incomingRequest", "next": "ask"}]},
            {"name": "ask", "type": "send-and-wait-for-reply",
             "transitions": [{"event": "incomingMessage", "next": "split_score"}, {"event": "timeout"},
                             {"event": "deliveryFailure"}],
             "properties": {"from": "{{flow.channel.address}}", "timeout": "3600",
                            "body": "Hi {{flow.data.name}}, from 0 to 10, would you recommend us?"}},
            {"name": "split_score", "type": "split-based-on",
             "properties": {"input": "{{widgets.ask.inbound.Body}}"},
             "transitions": [
                {"event": "noMatch", "next": "unclear"},
                {"event": "match", "next": "promoter", "conditions": condition("matches_any_of", "9,10")},
                {"event": "match", "next": "passive", "conditions": condition("matches_any_of", "7,8")},
                {"event": "match", "next": "detractor", "conditions": condition("regex", "^[0-6]$")}]},
            band("promoter"), band("passive"), band("detractor"),
            {"name": "thank", "type": "send-message", "transitions": [{"event": "sent"}, {"event": "failed"}],
             "properties": {"to": "{{contact.channel.address}}",
                            "body": "Thanks {{flow.data.name}}: {{flow.variables.score}} ({{flow.variables.band}})."}},
            {"name": "unclear", "type": "send-message", "transitions": [{"event": "sent"}],
             "properties": {"body": "Sorry, we need a number from 0 to 10."}}
        ]
    })
}

async fn simulator_with_survey(config: SimConfig) -> Simulator {
    let sim = Simulator::start(SimConfig { lifetime: None, ..config }).await.unwrap();
    sim.install_flow(SURVEY, "survey", survey());
    sim
}

fn survey_flow() -> FlowSid {
    FlowSid::parse(SURVEY).unwrap()
}

async fn ask(studio: &HttpStudio, phone: &str) -> String {
    let request = CreateRequest { to: phone.into(), from: FROM.into(), parameters: json!({"name": "Ada"}).to_string() };
    studio.create_execution(&survey_flow(), &request).await.unwrap().sid
}

async fn all_ended(sim: &Simulator) {
    let ended = sim.wait_until(Duration::from_secs(10), |es| es.iter().all(|e| e.status == "ended")).await;
    assert!(ended, "every Execution ends within ten seconds: {:?}", sim.executions());
}

fn replies(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Option<String>> {
    pairs.iter().map(|(phone, reply)| (phone.to_string(), reply.map(str::to_string))).collect()
}

/// Every Step of an Execution, read a page of two at a time.
async fn steps(base: &str, flow: &str, sid: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut url = format!("{base}/v2/Flows/{flow}/Executions/{sid}/Steps?PageSize=2");
    let mut all = Vec::new();
    loop {
        let page: Value = client.get(&url).basic_auth(ACCOUNT, Some(TOKEN)).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["meta"]["key"], "steps");
        all.extend(page["steps"].as_array().unwrap().iter().cloned());
        match page["meta"]["next_page_url"].as_str() {
            Some(next) => url = next.to_string(),
            None => return all,
        }
    }
}

/// The Steps in the order they happened, found by following each Step's
/// `transitioned_to` to the next one's `transitioned_from`, from the trigger.
fn in_flow_order(steps: &[Value]) -> Vec<Value> {
    let mut ordered = Vec::new();
    let mut at = "Trigger".to_string();
    while let Some(step) = steps.iter().find(|s| s["transitioned_from"] == at.as_str()) {
        ordered.push(step.clone());
        at = step["transitioned_to"].as_str().unwrap().to_string();
        if at == "Ended" {
            break;
        }
    }
    ordered
}

fn path(steps: &[Value]) -> Vec<String> {
    steps.iter().map(|s| format!("{} -{}-> {}", s["transitioned_from"], s["name"], s["transitioned_to"])).collect()
}

#[tokio::test]
async fn a_reply_in_each_band_sets_the_score_and_band_and_each_widget_keeps_its_messages() {
    let sim = simulator_with_survey(SimConfig {
        replies: replies(&[
            ("+12015550100", Some("10")),
            ("+12015550101", Some(" 7 ")),
            ("+12015550102", Some("3")),
            ("+12015550103", Some("maybe")),
        ]),
        ..SimConfig::default()
    })
    .await;
    let studio = http_studio(&sim.url());
    let mut sids = Vec::new();
    for phone in ["+12015550100", "+12015550101", "+12015550102", "+12015550103"] {
        sids.push(ask(&studio, phone).await);
    }
    all_ended(&sim).await;

    let expected = [("10", "promoter"), (" 7 ", "passive"), ("3", "detractor")];
    for (sid, (reply, band)) in sids.iter().zip(expected) {
        assert_eq!(studio.fetch_execution(&survey_flow(), sid).await.unwrap().status.as_deref(), Some("ended"));
        let context = studio.execution_context(&survey_flow(), sid).await.unwrap();
        assert_eq!(context["flow"]["variables"], json!({"score": reply, "band": band}));
        assert_eq!(context["flow"]["data"]["name"], "Ada");
        assert_eq!(context["flow"]["channel"]["address"], FROM);
        let ask = &context["widgets"]["ask"];
        assert_eq!(ask["outbound"]["Body"], "Hi Ada, from 0 to 10, would you recommend us?");
        assert_eq!(ask["outbound"]["From"], FROM);
        assert_eq!(ask["inbound"]["Body"], reply);
        assert_eq!(context["widgets"]["thank"]["outbound"]["Body"], format!("Thanks Ada: {reply} ({band})."));
        assert_eq!(context["widgets"]["thank"]["outbound"]["To"], context["contact"]["channel"]["address"]);
    }
    let unclear = studio.execution_context(&survey_flow(), &sids[3]).await.unwrap();
    assert_eq!(unclear["flow"]["variables"], json!({}));
    assert_eq!(unclear["widgets"]["unclear"]["outbound"]["Body"], "Sorry, we need a number from 0 to 10.");
    assert!(unclear["widgets"].get("thank").is_none());
}

#[tokio::test]
async fn a_contact_who_never_replies_is_waited_for_then_ends_through_the_timeout() {
    let sim = simulator_with_survey(SimConfig {
        reply_delay: Duration::from_secs(1),
        replies: replies(&[("+12015550100", None)]),
        ..SimConfig::default()
    })
    .await;
    let studio = http_studio(&sim.url());
    let sid = ask(&studio, "+12015550100").await;

    let waiting = studio.fetch_execution(&survey_flow(), &sid).await.unwrap();
    assert!(waiting.is_active(), "the Execution waits for the reply delay");
    all_ended(&sim).await;

    let context = studio.execution_context(&survey_flow(), &sid).await.unwrap();
    assert!(context["widgets"]["ask"]["outbound"]["Body"].is_string());
    assert!(context["widgets"]["ask"].get("inbound").is_none());
    assert_eq!(context["flow"]["variables"], json!({}));
    let steps = in_flow_order(&steps(&sim.url(), SURVEY, &sid).await);
    assert_eq!(path(&steps), ["\"Trigger\" -\"incomingRequest\"-> \"ask\"", "\"ask\" -\"timeout\"-> \"Ended\""]);
}

#[tokio::test]
async fn steps_are_paged_in_no_particular_order_name_each_widget_and_end_in_ended() {
    let sim = simulator_with_survey(SimConfig::default()).await;
    let studio = http_studio(&sim.url());
    let phones = phones(8);
    let mut sids = Vec::new();
    for phone in &phones {
        sids.push(ask(&studio, phone).await);
    }
    all_ended(&sim).await;

    let mut served_in_flow_order = 0;
    for sid in &sids {
        let served = steps(&sim.url(), SURVEY, sid).await;
        let ordered = in_flow_order(&served);
        assert_eq!(
            ordered.len(),
            served.len(),
            "one chain from the trigger holds every Step: {}",
            path(&served).join(", ")
        );
        assert_eq!(ordered.last().unwrap()["transitioned_to"], "Ended");
        assert_eq!(ordered[0]["type"], "trigger");
        assert_eq!(ordered[0]["name"], "incomingRequest");
        for step in &served {
            let step_sid = step["sid"].as_str().unwrap();
            assert!(step_sid.len() == 34 && step_sid.starts_with("FT"), "{step_sid}");
            assert!(step_sid[2..].chars().all(|c| c.is_ascii_hexdigit()), "{step_sid}");
            assert_eq!(step["execution_sid"], sid.as_str());
            assert!(step["date_created"].as_str().is_some());
        }
        served_in_flow_order += usize::from(served == ordered);
    }
    assert!(served_in_flow_order < sids.len(), "Studio promises no order, and the simulator keeps none");

    // A promoter's Steps, widget by widget, and one Step and its context read on their own.
    let promoter = replies(&[(phones[0].as_str(), Some("9"))]);
    let sim = simulator_with_survey(SimConfig { replies: promoter, ..SimConfig::default() }).await;
    let studio = http_studio(&sim.url());
    let sid = ask(&studio, &phones[0]).await;
    all_ended(&sim).await;
    let ordered = in_flow_order(&steps(&sim.url(), SURVEY, &sid).await);
    let widgets: Vec<(&str, &str, &str)> = ordered
        .iter()
        .map(|s| (s["transitioned_from"].as_str().unwrap(), s["type"].as_str().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        widgets,
        [
            ("Trigger", "trigger", "incomingRequest"),
            ("ask", "send-and-wait-for-reply", "incomingMessage"),
            ("split_score", "split-based-on", "match"),
            ("promoter", "set-variables", "next"),
            ("thank", "send-message", "sent"),
        ]
    );
    let last = ordered.last().unwrap();
    assert_eq!(last["execution_sid"], sid.as_str());
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).basic_auth(ACCOUNT, Some(TOKEN)).send().await.unwrap() }
    };
    let fetched: Value = get(last["url"].as_str().unwrap().to_string()).await.json().await.unwrap();
    assert_eq!(&fetched, last);
    let context: Value = get(last["links"]["step_context"].as_str().unwrap().to_string()).await.json().await.unwrap();
    assert_eq!(context["step_sid"], last["sid"]);
    assert_eq!(context["context"]["flow"]["variables"]["score"], "9");
    let missing = get(format!("{}/v2/Flows/{SURVEY}/Executions/{sid}/Steps/FT{:032x}", sim.url(), 0)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_default_mix_takes_every_branch_of_the_split_over_40_contacts() {
    let seed = seed("default_mix");
    let sim = simulator_with_survey(SimConfig { reply_seed: seed, ..SimConfig::default() }).await;
    let studio = http_studio(&sim.url());
    let mut sids = Vec::new();
    for phone in phones(40) {
        sids.push(ask(&studio, &phone).await);
    }
    all_ended(&sim).await;

    let mut outcomes = BTreeSet::new();
    for sid in &sids {
        let context = studio.execution_context(&survey_flow(), sid).await.unwrap();
        let reply = context["widgets"]["ask"]["inbound"]["Body"].as_str();
        let outcome = match (reply, context["flow"]["variables"]["band"].as_str()) {
            (None, _) => "no reply".to_string(),
            (Some(_), None) => "unclear".to_string(),
            (Some(reply), Some(band)) => {
                let score: u32 = reply.trim().parse().unwrap();
                let expected = match score {
                    9..=10 => "promoter",
                    7..=8 => "passive",
                    _ => "detractor",
                };
                assert_eq!(band, expected, "reply {reply:?} went to the right band");
                band.to_string()
            }
        };
        outcomes.insert(outcome);
    }
    assert_eq!(outcomes, BTreeSet::from(["detractor", "no reply", "passive", "promoter", "unclear"].map(String::from)));
}

#[tokio::test]
async fn an_execution_on_a_flow_the_simulator_does_not_know_stays_active_with_no_steps() {
    let sim = simulator_with_survey(SimConfig::default()).await;
    let studio = http_studio(&sim.url());
    let flow = FlowSid::parse(FLOW).unwrap();
    let request = CreateRequest { to: "+12015550100".into(), from: FROM.into(), parameters: r#"{"a":1}"#.into() };
    let sid = studio.create_execution(&flow, &request).await.unwrap().sid;

    assert!(studio.fetch_execution(&flow, &sid).await.unwrap().is_active());
    let context = studio.execution_context(&flow, &sid).await.unwrap();
    assert_eq!(context["flow"]["data"], json!({"a": 1}));
    assert!(context.get("widgets").is_none());
    assert!(steps(&sim.url(), FLOW, &sid).await.is_empty());
}

/// What the sink received: the full URL it was posted to, the signature and the body.
struct Delivery {
    url: String,
    signature: String,
    body: Bytes,
}

/// An Event Streams sink on loopback that refuses its first delivery with a
/// 503 and takes the rest; every delivery, refused or not, is passed on.
async fn flaky_sink() -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = base.clone();
    let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let (tx, seen, origin) = (tx.clone(), seen.clone(), origin.clone());
        async move {
            let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let _ = tx.send(Delivery { url: format!("{origin}{uri}"), signature, body });
            let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            if first { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
        }
    };
    let app = axum::Router::new().route("/sink", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("{base}/sink"), rx)
}

async fn next_delivery(deliveries: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.recv()).await;
    delivery.expect("a delivery within ten seconds").expect("the sink is still listening")
}

#[tokio::test]
async fn the_event_sink_receives_signed_deliveries_that_verify_and_a_refused_one_is_retried() {
    let (sink_url, mut deliveries) = flaky_sink().await;
    let sink = EventSink { url: sink_url.clone(), auth_token: TOKEN.into() };
    let sim = simulator_with_survey(SimConfig { event_sink: Some(sink), ..SimConfig::default() }).await;
    let studio = http_studio(&sim.url());
    let sid = ask(&studio, "+12015550100").await;

    let received = [next_delivery(&mut deliveries).await, next_delivery(&mut deliveries).await];
    let (refused, retried) = (&received[0], &received[1]);
    assert_eq!(refused.body, retried.body, "the retry sends the same event");
    for delivery in &received {
        assert!(delivery.url.starts_with(&format!("{sink_url}?bodySHA256=")));
        assert!(
            signature_is_valid(SignatureAlgorithm::HmacSha1, TOKEN, &delivery.url, &delivery.signature),
            "{}",
            delivery.url
        );
        assert!(!signature_is_valid(SignatureAlgorithm::HmacSha1, "another token", &delivery.url, &delivery.signature));
        assert!(body_hash_is_valid(delivery.url.split_once('?').unwrap().1, &delivery.body));
    }
    let (count, ended) = parse_events(&retried.body).unwrap();
    assert_eq!(count, 1);
    assert_eq!(ended[0].execution_sid, sid);
    assert_eq!(ended[0].ended_reason.as_deref(), Some("FLOW_END"));
    assert!(ended[0].ended_at.is_some());
    let event: Value = serde_json::from_slice(&retried.body).unwrap();
    assert_eq!(event[0]["data"]["flow_sid"], SURVEY);
    assert_eq!(event[0]["data"]["contact_channel_address"], "+12015550100");

    // An Execution ended by a request is delivered too, with its own reason.
    let flow = FlowSid::parse(FLOW).unwrap();
    let request = CreateRequest { to: "+12015550101".into(), from: FROM.into(), parameters: "{}".into() };
    let other = studio.create_execution(&flow, &request).await.unwrap().sid;
    studio.end_execution(&flow, &other).await.unwrap();
    let delivery = next_delivery(&mut deliveries).await;
    assert!(signature_is_valid(SignatureAlgorithm::HmacSha1, TOKEN, &delivery.url, &delivery.signature));
    let (_, ended) = parse_events(&delivery.body).unwrap();
    assert_eq!(ended[0].execution_sid, other);
    assert_eq!(ended[0].ended_reason.as_deref(), Some("ENDED_BY_API"));
}

#[tokio::test]
async fn flowcast_simulator_takes_replies_from_a_csv_and_runs_flows_deployed_to_it() {
    let app = TestApp::new();
    let replies = app.dir.path().join("replies.csv");
    std::fs::write(&replies, "phone,reply\n+12015550100,8\n+12015550101,\n").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .args(["simulator", "--listen", "127.0.0.1:0", "--lifetime", "0s", "--replies"])
        .arg(&replies)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = first.rsplit(' ').next().unwrap().to_string();
    let studio = http_studio(&url);
    let flow = studio.create_flow("survey", "published", &survey().to_string(), "first").await.unwrap();
    let flow = FlowSid::parse(&flow.sid).unwrap();

    for (phone, band) in [("+12015550100", Some("passive")), ("+12015550101", None)] {
        let request = CreateRequest { to: phone.into(), from: FROM.into(), parameters: "{}".into() };
        let sid = studio.create_execution(&flow, &request).await.unwrap().sid;
        // Another process: its record can only be polled, with a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while studio.fetch_execution(&flow, &sid).await.unwrap().is_active() {
            assert!(tokio::time::Instant::now() < deadline, "{phone}'s Execution ends");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let context = studio.execution_context(&flow, &sid).await.unwrap();
        assert_eq!(context["flow"]["variables"]["band"].as_str(), band, "{phone}");
    }

    let out = app.flowcast(&["simulator", "--listen", "127.0.0.1:0", "--replies", "missing.csv"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--replies"), "{}", stderr(&out));
}
