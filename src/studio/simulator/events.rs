//! The optional Event Streams sink: when an Execution ends, the simulator
//! POSTs what Twilio's webhook sink would, a JSON array of one CloudEvent of
//! type `com.twilio.studio.flow.execution.ended`, to the sink's URL with
//! `bodySHA256` (hex SHA-256 of the body) in its query, signed with
//! `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed with the auth token, over
//! that full URL.
//!
//! Deliveries are best effort, as Twilio's are: each goes out from its own
//! task (an ending never waits for one), is tried a few times with a doubling
//! pause when the sink fails or answers other than 2xx, and is then dropped.

use std::fmt;
use std::sync::Weak;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::{Shared, lock};

/// Where Execution-ended events go, and the auth token that signs them.
#[derive(Clone)]
pub struct EventSink {
    pub url: String,
    pub auth_token: String,
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token signs deliveries; it is a secret and never printed.
        f.debug_struct("EventSink").field("url", &self.url).field("auth_token", &"…").finish()
    }
}

/// The reason an Execution whose Flow reached its end (or whose lifetime ran
/// out) reports, as Studio reports a finished Flow.
pub(super) const FLOW_END: &str = "FLOW_END";
/// The reason the simulator reports for an Execution ended by a request.
pub(super) const ENDED_BY_API: &str = "ENDED_BY_API";

/// Tries per delivery, and the pause before the second (doubling after).
const ATTEMPTS: u32 = 4;
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// One Execution that ended, as the event describes it.
#[derive(Debug, Clone)]
pub(super) struct Ended {
    pub execution_sid: String,
    pub account_sid: String,
    pub flow_sid: String,
    pub contact: String,
    pub reason: &'static str,
    pub date_created: DateTime<Utc>,
    pub date_updated: DateTime<Utc>,
    pub flow_revision: Option<usize>,
}

/// Takes ended Executions off `ended` and delivers each to the sink configured
/// at that moment, until the simulator is dropped (`stop`).
pub(super) async fn deliver_all(shared: Weak<Shared>, mut ended: UnboundedReceiver<Ended>, stop: CancellationToken) {
    // Built at the first delivery: most simulators never have a sink.
    let mut client: Option<reqwest::Client> = None;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = ended.recv() => next,
        };
        let Some(event) = next else { return };
        let Some(sink) = shared.upgrade().and_then(|s| lock(&s.config).event_sink.clone()) else {
            continue;
        };
        if client.is_none() {
            match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
                Ok(built) => client = Some(built),
                Err(e) => {
                    tracing::warn!(error = %e, "the simulator cannot build an HTTP client; no events are delivered");
                    return;
                }
            }
        }
        let (client, stop) = (client.clone().expect("built just above"), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = deliver(&client, &sink, &event) => {}
            }
        });
    }
}

/// Posts one event, retrying; returns whether the sink took it.
async fn deliver(client: &reqwest::Client, sink: &EventSink, event: &Ended) -> bool {
    let body = json!([cloud_event(event)]).to_string();
    let url = signed_url(&sink.url, body.as_bytes());
    let signature = sign(&sink.auth_token, &url);
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(&url)
            .header("X-Twilio-Signature", &signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => return true,
            Ok(answer) => tracing::debug!(status = %answer.status(), attempt, "the event sink refused a delivery"),
            Err(e) => tracing::debug!(error = %e, attempt, "the event sink could not be reached"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    tracing::warn!(execution = %event.execution_sid, "an Execution-ended event was dropped after {ATTEMPTS} tries");
    false
}

/// The sink's URL with `bodySHA256` added to its query.
fn signed_url(url: &str, body: &[u8]) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}bodySHA256={}", crate::domain::sha256_hex(body))
}

/// `X-Twilio-Signature` for a request to `url`.
fn sign(auth_token: &str, url: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn cloud_event(e: &Ended) -> Value {
    let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut data = json!({
        "execution_sid": e.execution_sid,
        "account_sid": e.account_sid,
        "flow_sid": e.flow_sid,
        "contact_channel_address": e.contact,
        "status": "ended",
        "ended_reason": e.reason,
        "date_created": time(&e.date_created),
        "date_updated": time(&e.date_updated),
    });
    if let Some(revision) = e.flow_revision {
        data["flow_revision"] = json!(revision);
    }
    json!({
        "specversion": "1.0",
        "type": "com.twilio.studio.flow.execution.ended",
        "source": format!("/v2/Flows/{}/Executions/{}", e.flow_sid, e.execution_sid),
        "id": format!("EV{:032x}", rand::random::<u128>()),
        "dataschema": "https://events-schemas.twilio.com/Studio.FlowExecutionEvent/2",
        "datacontenttype": "application/json",
        "time": time(&e.date_updated),
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_hash_joins_any_query_the_sink_url_already_has() {
        assert!(signed_url("http://h/sink", b"[]").starts_with("http://h/sink?bodySHA256="));
        assert!(signed_url("http://h/sink?a=1", b"[]").starts_with("http://h/sink?a=1&bodySHA256="));
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let sink = EventSink { url: "http://h".into(), auth_token: "secret-token".into() };
        assert!(!format!("{sink:?}").contains("secret-token"));
    }
}
