//! Signed outbound events: written to the outbox with the change they report,
//! POSTed with `flowcast-signature`, retried until delivered (also across a
//! `serve` restart), each delivered once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::Value;

use crate::helpers::*;
use crate::service::{Served, eventually};

const SECRET: &str = "whsec-test-not-a-secret";

/// A receiver that answers 503 to its first `fail_first` requests, and to
/// every request while `down` is set; it keeps every request it accepted.
#[derive(Clone, Default)]
struct Receiver {
    fail_first: usize,
    seen: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<(HeaderMap, String)>>>,
}

impl Receiver {
    async fn start(self) -> (String, Receiver) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/flowcast", listener.local_addr().unwrap());
        let state = self.clone();
        let app = axum::Router::new().route(
            "/hooks/flowcast",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let n = state.seen.fetch_add(1, Ordering::SeqCst);
                    if n < state.fail_first || state.down.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    state.accepted.lock().unwrap().push((headers, String::from_utf8_lossy(&body).into_owned()));
                    StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, self)
    }

    fn accepted(&self) -> Vec<(HeaderMap, Value)> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b)| (h.clone(), serde_json::from_str(b).expect("a JSON event")))
            .collect()
    }
}

/// What a receiver does to trust an event: recompute the HMAC over `t.body`
/// and refuse an old `t` (a replay).
fn verify(headers: &HeaderMap, body: &str) -> bool {
    let header = headers["flowcast-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(",v1=").unwrap();
    let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
    let fresh = (chrono::Utc::now().timestamp() - t).abs() < 300;
    fresh && flowcast::notify::signature(SECRET, t, body) == header && v1.len() == 64
}

fn campaign_with_notify(url: &str) -> String {
    campaign_toml("c.csv", &format!("notify = {{ url = \"{url}\" }}"))
}

#[tokio::test]
async fn a_receiver_that_fails_three_times_gets_each_event_once_with_a_valid_signature() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let (url, receiver) = Receiver { fail_first: 3, ..Default::default() }.start().await;
    let app = TestApp::new();
    let numbers = phones(3);
    app.write("c.csv", contacts_csv(&numbers));
    let added = app.flowcast(&["suppress", "add", &numbers[2]], &[]).await;
    assert_eq!(added.status.code(), Some(0));
    let served = Served::start_with(
        &app,
        &sim.url(),
        &[("FLOWCAST_NOTIFY_SECRET", SECRET), ("FLOWCAST_NOTIFY_RETRY", "1s"), ("FLOWCAST_OUTCOME_AFTER", "1s")],
    )
    .await;
    app.write("c.toml", campaign_with_notify(&url));

    // Two outcomes, one skipped job, and the run's end: four events.
    assert!(
        eventually(Duration::from_secs(30), async || receiver.accepted().len() >= 4).await,
        "{} accepted of {} requests\n{}",
        receiver.accepted().len(),
        receiver.seen.load(Ordering::SeqCst),
        served.log()
    );
    let events = receiver.accepted();
    assert!(receiver.seen.load(Ordering::SeqCst) >= 7, "three refusals, then the four events");
    let mut by_type: HashMap<String, usize> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for (headers, event) in &events {
        let body = serde_json::to_string(event).unwrap();
        let raw = receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .find(|(_, b)| serde_json::from_str::<Value>(b).unwrap() == *event)
            .unwrap()
            .1
            .clone();
        assert!(verify(headers, &raw), "signature of {body}");
        assert!(ids.insert(event["id"].as_str().unwrap().to_string()), "each event once: {body}");
        *by_type.entry(event["type"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(by_type.get("outcome"), Some(&2), "{by_type:?}");
    assert_eq!(by_type.get("job.skipped"), Some(&1), "{by_type:?}");
    assert_eq!(by_type.get("run.finished"), Some(&1), "{by_type:?}");
    let skipped = events.iter().find(|(_, e)| e["type"] == "job.skipped").unwrap();
    assert_eq!(skipped.1["phone"], numbers[2].as_str());
    assert!(skipped.1["reason"].as_str().unwrap().starts_with("suppressed"));
    let outcome = events.iter().find(|(_, e)| e["type"] == "outcome").unwrap();
    assert_eq!(outcome.1["campaign"], "c");
    assert_eq!(outcome.1["outcome"]["state"], "known", "{}", outcome.1);

    // The deliverer records a delivery once the receiver's answer is in.
    let outbox_url = format!("{}/api/outbox", served.url);
    let recorded = eventually(Duration::from_secs(10), async || {
        let outbox: Value = reqwest::get(&outbox_url).await.unwrap().json().await.unwrap();
        outbox["counts"]["delivered"] == 4
    })
    .await;
    let outbox: Value = reqwest::get(&outbox_url).await.unwrap().json().await.unwrap();
    assert!(recorded, "{outbox}");
    assert!(outbox["events"].as_array().unwrap().iter().any(|e| e["attempts"].as_i64() > Some(1)), "{outbox}");
}

#[tokio::test]
async fn events_written_while_the_receiver_is_down_are_delivered_after_a_serve_restart() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let (url, receiver) = Receiver::default().start().await;
    receiver.down.store(true, Ordering::SeqCst);
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(2)));
    let env = [("FLOWCAST_NOTIFY_SECRET", SECRET), ("FLOWCAST_NOTIFY_RETRY", "1s")];
    let served = Served::start_with(&app, &sim.url(), &env).await;
    app.write(
        "c.toml",
        campaign_toml("c.csv", &format!("notify = {{ url = \"{url}\", events = [\"run.finished\"] }}")),
    );
    assert!(
        eventually(Duration::from_secs(20), async || receiver.seen.load(Ordering::SeqCst) >= 1).await,
        "the event was tried while the receiver was down\n{}",
        served.log()
    );
    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    let status = app.flowcast(&["status"], &[]).await;
    assert!(stdout(&status).contains("0 delivered, 1 waiting, 0 given up"), "{}", stdout(&status));

    receiver.down.store(false, Ordering::SeqCst);
    let served = Served::start_with(&app, &sim.url(), &env).await;
    assert!(eventually(Duration::from_secs(20), async || receiver.accepted().len() == 1).await, "{}", served.log());
    let (headers, event) = receiver.accepted().remove(0);
    assert_eq!(event["type"], "run.finished");
    assert_eq!(event["jobs"]["sent"], 2, "{event}");
    let raw = receiver.accepted.lock().unwrap()[0].1.clone();
    assert!(verify(&headers, &raw));
}
