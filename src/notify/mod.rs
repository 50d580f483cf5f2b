//! Delivering signed events: the ledger's triggers write each event to the
//! outbox in the same transaction as the change it reports; this loop POSTs
//! them, oldest first and in order per job, and records every attempt.
//!
//! Each request carries `flowcast-signature: t=UNIX,v1=HEX`, the HMAC-SHA256
//! of `t.body` keyed with `FLOWCAST_NOTIFY_SECRET`, so a receiver can check
//! that flowcast sent it and refuse an old one replayed. A 2xx answer
//! delivers the event; anything else (or no answer) is retried with
//! exponential backoff until the event is older than the give-up age, and
//! then it is marked given up — visible in `status`, the API and the metrics.
//! Delivery is at least once: a receiver dedupes by the event's `id`.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::schedule::Clock;
use crate::store::{OutboxEvent, Store, StoreError};

/// How events are delivered.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// First retry delay; each retry doubles it, up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// An event still undelivered this long after it was written is given up.
    pub give_up_after: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Requests in flight at most (each for a different job).
    pub concurrency: usize,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 8,
        }
    }
}

/// The `flowcast-signature` header's value for `body` sent at Unix second `t`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", crate::domain::hex(&mac.finalize().into_bytes()))
}

/// The delay before retry number `attempt` (1 for the first retry), before
/// jitter: the base, doubling, up to the cap.
pub fn retry_delay(settings: &NotifySettings, attempt: u32) -> Duration {
    let doubled = settings.retry_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    doubled.min(settings.retry_cap)
}

/// [`retry_delay`] spread by ±25 %, so that events refused together (a
/// receiver that was down) do not all come back in the same instant.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.75..1.25))
}

/// Delivers the outbox until shut down.
#[derive(Clone)]
pub struct Deliverer {
    store: Store,
    client: reqwest::Client,
    secret: Option<Secret>,
    clock: Arc<dyn Clock>,
    settings: NotifySettings,
}

impl Deliverer {
    pub fn new(store: Store, secret: Option<Secret>, clock: Arc<dyn Clock>, settings: NotifySettings) -> Self {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("flowcast/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds");
        Deliverer { store, client, secret, clock, settings }
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Delivers what is due until `shutdown`, waking at the next due time or
    /// after a short while (new events are written by other tasks).
    ///
    /// Without a secret it says so once events are due, and stops: nothing
    /// can be sent before a restart with one, and asking again (every 10 ms,
    /// the events being due) cost serve 7.5 % of a core while idle.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.pass().await {
                Ok(_) => {}
                Err(DeliverError::NoSecret(n)) => {
                    tracing::error!(
                        events = n,
                        "FLOWCAST_NOTIFY_SECRET is not set: events wait in the outbox unsent (they would be unsigned)"
                    );
                    return;
                }
                Err(DeliverError::Store(e)) => tracing::error!(error = %e, "cannot read the outbox"),
            }
            let wait = match self.store.outbox_next_due().await {
                Ok(Some(due)) => Duration::from_millis((due - self.now_ms()).clamp(10, 1_000) as u64),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: every event due now, delivered or rescheduled. Returns how
    /// many were delivered.
    pub async fn pass(&self) -> Result<usize, DeliverError> {
        let mut delivered = 0;
        loop {
            let due = self.store.outbox_due(self.now_ms(), 256).await?;
            if due.is_empty() {
                return Ok(delivered);
            }
            let Some(secret) = &self.secret else { return Err(DeliverError::NoSecret(due.len())) };
            let mut progressed = false;
            for chunk in due.chunks(self.settings.concurrency.max(1)) {
                let attempts = chunk.iter().map(|event| self.attempt(secret, event));
                for ok in futures_util::future::join_all(attempts).await {
                    if ok? {
                        delivered += 1;
                        progressed = true;
                    }
                }
            }
            // Nothing went through: the rest waits for its retry time.
            if !progressed {
                return Ok(delivered);
            }
        }
    }

    /// POSTs one event and records the attempt; `true` when delivered.
    async fn attempt(&self, secret: &Secret, event: &OutboxEvent) -> Result<bool, DeliverError> {
        let t = self.now_ms() / 1000;
        let sent = self
            .client
            .post(&event.url)
            .header("content-type", "application/json")
            .header("flowcast-signature", signature(secret.expose(), t, &event.body))
            .header("flowcast-event-id", &event.event_id)
            .body(event.body.clone())
            .send()
            .await;
        let now = self.now_ms();
        let error = match sent {
            Ok(answer) if answer.status().is_success() => {
                self.store.outbox_delivered(event.id, now).await?;
                crate::telemetry::notify_event("delivered");
                return Ok(true);
            }
            Ok(answer) => format!("HTTP {}", answer.status().as_u16()),
            // The URL is the receiver's; the error names no secret.
            Err(e) => format!("no answer: {}", without_url(e)),
        };
        let attempt = u32::try_from(event.attempts + 1).unwrap_or(u32::MAX);
        let retry_at = now + jittered(retry_delay(&self.settings, attempt)).as_millis() as i64;
        let give_up = retry_at - event.created_at > self.settings.give_up_after.as_millis() as i64;
        if give_up {
            tracing::error!(event = %event.event_id, kind = %event.event_type, run = event.run_id, attempts = attempt, %error, "event given up");
            crate::telemetry::notify_event("gave_up");
        } else {
            tracing::warn!(event = %event.event_id, kind = %event.event_type, attempts = attempt, %error, "event not delivered; will retry");
            crate::telemetry::notify_event("retried");
        }
        self.store.outbox_failed(event.id, error, (!give_up).then_some(retry_at), now).await?;
        Ok(false)
    }
}

/// reqwest's error text without the URL (which may carry a token in its query).
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out: "
    } else if e.is_connect() {
        "cannot connect: "
    } else {
        ""
    };
    format!("{kind}{}", e.without_url())
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("FLOWCAST_NOTIFY_SECRET is not set; {0} event(s) wait")]
    NoSecret(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_the_time_and_the_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature("s3cret", 1_700_000_000, "{\"a\":1}"),
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }

    /// A ledger with one event due: a finished run's `run.finished`, for a
    /// receiver that is not there.
    async fn a_ledger_with_an_event_due() -> (tempfile::TempDir, Store) {
        use crate::domain::{CampaignKind, Channel, ConflictPolicy, FlowSid, NotifyRule, Trigger};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_path(&dir.path().join("l.db")).await.unwrap();
        // Nothing listens on port 9 of loopback: every attempt fails at once.
        let rule = NotifyRule::parse("http://127.0.0.1:9/hooks", Some(&["run.finished".into()])).unwrap();
        let run = crate::store::NewRun {
            campaign: "c".into(),
            kind: CampaignKind::Reminder,
            trigger: Trigger::Manual,
            run_key: "k".into(),
            scheduled_at: 0,
            source: "c.toml".into(),
            flow: FlowSid::parse("FW0123456789abcdef0123456789abcdef").unwrap(),
            from: "+15017122661".into(),
            policy: ConflictPolicy::from_parts("skip", None).unwrap(),
            rate: None,
            window: None,
            outcomes: Vec::new(),
            channel: Channel::Sms,
            limits_exempt: false,
            dedupe_within: None,
            notify: Some(rule),
        };
        let now = chrono::Utc::now().timestamp_millis();
        let id = store.create_run(run, now).await.unwrap().unwrap();
        store.finish_expansion(id, now).await.unwrap();
        assert!(store.finish_run_if_done(id, now).await.unwrap());
        assert_eq!(store.outbox_counts().await.unwrap().pending, 1, "the trigger wrote the event");
        (dir, store)
    }

    #[tokio::test]
    async fn an_event_past_its_give_up_age_is_given_up_and_counted_as_such() {
        let (_dir, store) = a_ledger_with_an_event_due().await;
        let settings = NotifySettings { give_up_after: Duration::ZERO, ..Default::default() };
        let deliverer =
            Deliverer::new(store.clone(), Some(Secret::new("s")), Arc::new(crate::schedule::SystemClock), settings);
        assert_eq!(deliverer.pass().await.unwrap(), 0);

        let counts = store.outbox_counts().await.unwrap();
        assert_eq!((counts.pending, counts.gave_up), (0, 1), "{counts:?}");
        let page = store.outbox_page(Some("gave_up".into()), 0, 10).await.unwrap();
        assert!(page[0].last_error.as_deref().is_some_and(|e| e.starts_with("no answer")), "{page:?}");
    }

    #[tokio::test]
    async fn without_a_secret_the_deliverer_says_so_and_stops_reading_the_outbox() {
        let (_dir, store) = a_ledger_with_an_event_due().await;
        let deliverer =
            Deliverer::new(store.clone(), None, Arc::new(crate::schedule::SystemClock), NotifySettings::default());
        // It used to read the due events again every 10 ms for as long as
        // serve ran; the timeout only bounds the failure.
        let run = tokio::time::timeout(Duration::from_secs(20), deliverer.run(CancellationToken::new())).await;
        assert!(run.is_ok(), "the deliverer went on reading an outbox it cannot send");
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!((counts.pending, counts.delivered, counts.gave_up), (1, 0, 0), "the event waits, untouched");
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let s = NotifySettings {
            retry_base: Duration::from_secs(10),
            retry_cap: Duration::from_secs(60),
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=5).map(|a| retry_delay(&s, a).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
    }
}
