//! The Twilio Event Streams sink: `POST /webhooks/studio`.
//!
//! Twilio signs each delivery with `X-Twilio-Signature`: base64 of HMAC-SHA1,
//! keyed with the account's auth token, over the full URL it posted to. For JSON
//! bodies that URL carries a `bodySHA256` query parameter, the hex SHA-256 of the
//! raw body, which is checked too. Anything unsigned or mis-signed gets 403.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha1::Sha1;

/// Whether `signature` (the header, base64) is Twilio's signature of `url`.
pub fn signature_is_valid(auth_token: &str, url: &str, signature: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return false;
    };
    mac.update(url.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&given).is_ok()
}

/// Signs `url` as Twilio does (for tests and for documentation).
pub fn sign(auth_token: &str, url: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The hex SHA-256 of a body, as Twilio puts in `bodySHA256`.
pub fn body_sha256(body: &[u8]) -> String {
    crate::domain::sha256_hex(body)
}

/// Whether the query's `bodySHA256` matches the body.
pub fn body_hash_is_valid(query: &str, body: &[u8]) -> bool {
    let Some(given) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v) else {
        return false;
    };
    let expected = body_sha256(body);
    // Constant time over equal lengths; lengths are public (64 hex digits).
    given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a.to_ascii_lowercase() ^ b)) == 0
}

/// An Execution-ended event, the one event type flowcast acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionEnded {
    pub execution_sid: String,
    pub ended_reason: Option<String>,
    pub ended_at: Option<i64>,
}

pub const EXECUTION_ENDED: &str = "com.twilio.studio.flow.execution.ended";

/// Reads a delivery: a JSON array of CloudEvents (or one event). Returns the
/// number of events and the Execution-ended ones; other types are ignored.
pub fn parse_events(body: &[u8]) -> Result<(usize, Vec<ExecutionEnded>), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let events = match value {
        Value::Array(events) => events,
        event @ Value::Object(_) => vec![event],
        _ => return Err("body must be a JSON array of CloudEvents".into()),
    };
    let ended = events
        .iter()
        .filter(|e| e["type"].as_str() == Some(EXECUTION_ENDED))
        .filter_map(|e| {
            let data = &e["data"];
            let sid = data["execution_sid"].as_str()?.to_string();
            let ended_at = data["date_updated"]
                .as_str()
                .or(e["time"].as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis());
            Some(ExecutionEnded {
                execution_sid: sid,
                ended_reason: data["ended_reason"].as_str().map(str::to_string),
                ended_at,
            })
        })
        .collect();
    Ok((events.len(), ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_made_like_twilios_helpers_validates_and_any_change_does_not() {
        let token = "12345";
        let body = br#"[{"type":"com.twilio.studio.flow.execution.ended"}]"#;
        let url = format!("https://example.com/webhooks/studio?bodySHA256={}", body_sha256(body));
        let signature = sign(token, &url);
        assert!(signature_is_valid(token, &url, &signature));
        assert!(!signature_is_valid("other", &url, &signature));
        assert!(!signature_is_valid(token, &url.replace("https", "http"), &signature));
        assert!(!signature_is_valid(token, &url, "not base64!"));
        assert!(body_hash_is_valid(url.split_once('?').unwrap().1, body));
        assert!(!body_hash_is_valid(url.split_once('?').unwrap().1, b"[]"));
        assert!(!body_hash_is_valid("", body));
    }

    #[test]
    fn twilios_documented_example_signature_is_reproduced() {
        // Twilio's own signature-validation snippet (api-snippets,
        // security/signature_validation): this URL and these parameters, sorted
        // and appended, signed with auth token 12345, give this header.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ];
        let mut data = url.to_string();
        for (k, v) in params {
            data.push_str(k);
            data.push_str(v);
        }
        assert_eq!(sign("12345", &data), "GvWf1cFY/Q7PnoempGyD5oXAezc=");
    }

    #[test]
    fn only_execution_ended_events_are_acted_on() {
        let body = br#"[
            {"type": "com.twilio.studio.flow.execution.started", "data": {"execution_sid": "FN1"}},
            {"type": "com.twilio.studio.flow.execution.ended",
             "data": {"execution_sid": "FN2", "ended_reason": "FLOW_END", "date_updated": "2026-01-01T00:00:01.000Z"}},
            {"type": "com.example.unknown"}
        ]"#;
        let (count, ended) = parse_events(body).unwrap();
        assert_eq!(count, 3);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].execution_sid, "FN2");
        assert_eq!(ended[0].ended_reason.as_deref(), Some("FLOW_END"));
        assert!(parse_events(b"nope").is_err());
    }
}
