//! The Twilio Event Streams sink: `POST /webhooks/studio`.
//!
//! Twilio signs each delivery with `X-Twilio-Signature`: base64 of an HMAC,
//! keyed with the account's auth token, over the full URL it posted to. The
//! HMAC is SHA-1 unless the delivery carries `X-Twilio-Webhooks-Signature-Settings`
//! (e.g. `key=KS…,algorithm=HMAC_SHA256`), which names the algorithm. For
//! JSON bodies that URL carries a `bodySHA256` query parameter, the hex
//! SHA-256 of the raw body, which is checked too. Anything unsigned or
//! mis-signed gets 403.
//!
//! Twilio does not always sign the URL in the same form: sometimes with the
//! port, sometimes without. Its own validators (twilio-python's
//! `RequestValidator.validate`, twilio-node's `validateRequest`) accept a
//! signature over the URL without its port or with it (the scheme's default
//! when none is written); so does this one.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha1::Sha1;
use sha2::Sha256;

/// The header that names the signature's algorithm when it is not HMAC-SHA1.
pub const SIGNATURE_SETTINGS_HEADER: &str = "x-twilio-webhooks-signature-settings";

/// The HMAC a signature is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    HmacSha1,
    HmacSha256,
}

impl SignatureAlgorithm {
    /// The algorithm a delivery was signed with, from its
    /// `X-Twilio-Webhooks-Signature-Settings` header (comma-separated
    /// `name=value` pairs, `algorithm=HMAC_SHA256` among them); HMAC-SHA1
    /// without the header. None for an algorithm this does not know, which
    /// must be refused rather than guessed.
    pub fn from_settings(settings: Option<&str>) -> Option<SignatureAlgorithm> {
        let Some(settings) = settings else {
            return Some(SignatureAlgorithm::HmacSha1);
        };
        let named = settings
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("algorithm"))
            .map(|(_, value)| value.trim())?;
        if named.eq_ignore_ascii_case("HMAC_SHA256") {
            Some(SignatureAlgorithm::HmacSha256)
        } else if named.eq_ignore_ascii_case("HMAC_SHA1") {
            Some(SignatureAlgorithm::HmacSha1)
        } else {
            None
        }
    }

    fn mac(self, key: &str, data: &str) -> Vec<u8> {
        // HMAC accepts keys of any length.
        match self {
            SignatureAlgorithm::HmacSha1 => {
                let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("any key length");
                mac.update(data.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            SignatureAlgorithm::HmacSha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
                mac.update(data.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn verifies(self, key: &str, data: &str, given: &[u8]) -> bool {
        // verify_slice compares in constant time.
        match self {
            SignatureAlgorithm::HmacSha1 => Hmac::<Sha1>::new_from_slice(key.as_bytes()).is_ok_and(|mut mac| {
                mac.update(data.as_bytes());
                mac.verify_slice(given).is_ok()
            }),
            SignatureAlgorithm::HmacSha256 => Hmac::<Sha256>::new_from_slice(key.as_bytes()).is_ok_and(|mut mac| {
                mac.update(data.as_bytes());
                mac.verify_slice(given).is_ok()
            }),
        }
    }
}

/// Whether `signature` (the header, base64) is Twilio's signature of `url`
/// with `algorithm`, in either of the URL's forms ([`signed_url_forms`]).
pub fn signature_is_valid(algorithm: SignatureAlgorithm, auth_token: &str, url: &str, signature: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    signed_url_forms(url).iter().any(|form| algorithm.verifies(auth_token, form, &given))
}

/// The forms of `url` Twilio may have signed: without a port, and with one
/// (the one written, else the scheme's default: 443 for https, 80 for http).
/// Everything else in the URL is kept byte for byte.
pub fn signed_url_forms(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    // An IPv6 host is in brackets and has colons of its own.
    let host_end = if host_port.starts_with('[') { host_port.find(']').map_or(0, |i| i + 1) } else { 0 };
    let (host, port) = match host_port[host_end..].rfind(':').map(|i| i + host_end) {
        Some(colon) if host_port[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            (&host_port[..colon], Some(&host_port[colon + 1..]))
        }
        _ => (host_port, None),
    };
    let default = if scheme.eq_ignore_ascii_case("https") {
        Some("443")
    } else if scheme.eq_ignore_ascii_case("http") {
        Some("80")
    } else {
        None
    };
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    match port.filter(|p| !p.is_empty()).or(default) {
        Some(port) => vec![without, format!("{scheme}://{userinfo}{host}:{port}{tail}")],
        None => vec![without],
    }
}

/// What Twilio signs for a form-encoded webhook: the URL, then every posted
/// field's name and value (empty ones included), sorted by name.
pub fn form_signing_string(url: &str, fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = url.to_string();
    for (k, v) in sorted {
        out.push_str(k);
        out.push_str(v);
    }
    out
}

/// Signs `url` with HMAC-SHA1, as Twilio does by default (for tests and for
/// documentation).
pub fn sign(auth_token: &str, url: &str) -> String {
    sign_with(SignatureAlgorithm::HmacSha1, auth_token, url)
}

/// Signs `url` with `algorithm`, as Twilio does (for tests and documentation).
pub fn sign_with(algorithm: SignatureAlgorithm, auth_token: &str, url: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(algorithm.mac(auth_token, url))
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
        let sha1 = SignatureAlgorithm::HmacSha1;
        assert!(signature_is_valid(sha1, token, &url, &signature));
        assert!(!signature_is_valid(sha1, "other", &url, &signature));
        assert!(!signature_is_valid(sha1, token, &url.replace("https", "http"), &signature));
        assert!(!signature_is_valid(sha1, token, &url, "not base64!"));
        assert!(!signature_is_valid(SignatureAlgorithm::HmacSha256, token, &url, &signature));
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
    fn a_url_is_tried_without_its_port_and_with_it_or_its_schemes_default() {
        let forms = |url: &str| signed_url_forms(url);
        assert_eq!(forms("https://a.example/x?q=1"), ["https://a.example/x?q=1", "https://a.example:443/x?q=1"]);
        assert_eq!(forms("https://a.example:443/x"), ["https://a.example/x", "https://a.example:443/x"]);
        assert_eq!(forms("http://a.example"), ["http://a.example", "http://a.example:80"]);
        assert_eq!(forms("https://a.example:8443/x"), ["https://a.example/x", "https://a.example:8443/x"]);
        assert_eq!(forms("http://[::1]:8080/x"), ["http://[::1]/x", "http://[::1]:8080/x"]);
        assert_eq!(forms("http://[::1]/x"), ["http://[::1]/x", "http://[::1]:80/x"]);
        assert_eq!(forms("https://u:p@a.example/x"), ["https://u:p@a.example/x", "https://u:p@a.example:443/x"]);
        // The query is kept as sent, even where it holds a colon.
        assert_eq!(forms("https://a.example/x?t=1:2")[1], "https://a.example:443/x?t=1:2");
    }

    #[test]
    fn the_signature_settings_header_names_the_algorithm() {
        let algorithm = |h: Option<&str>| SignatureAlgorithm::from_settings(h);
        assert_eq!(algorithm(None), Some(SignatureAlgorithm::HmacSha1));
        assert_eq!(algorithm(Some("key=KS1,algorithm=HMAC_SHA256")), Some(SignatureAlgorithm::HmacSha256));
        assert_eq!(algorithm(Some(" algorithm = hmac_sha256 , key=KS1")), Some(SignatureAlgorithm::HmacSha256));
        assert_eq!(algorithm(Some("key=KS1,algorithm=HMAC_SHA1")), Some(SignatureAlgorithm::HmacSha1));
        assert_eq!(algorithm(Some("key=KS1,algorithm=HMAC_MD5")), None);
        assert_eq!(algorithm(Some("key=KS1")), None, "a header that names no algorithm is not guessed at");
        // A known HMAC-SHA256 test vector (RFC 4231, test case 2).
        let tag = SignatureAlgorithm::HmacSha256.mac("Jefe", "what do ya want for nothing?");
        assert_eq!(
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn form_webhooks_are_signed_over_the_url_and_every_field_as_twilios_validator_does() {
        // Signatures computed with twilio-python's RequestValidator (9.x) for
        // the same token, URL and fields.
        let fields =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let call = fields(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]);
        let url = form_signing_string("https://mycompany.com/myapp.php?foo=1&bar=2", &call);
        assert!(signature_is_valid(SignatureAlgorithm::HmacSha1, "12345", &url, "GvWf1cFY/Q7PnoempGyD5oXAezc="));
        let stop = fields(&[
            ("From", "+12015550100"),
            ("OptOutType", "STOP"),
            ("Body", "STOP"),
            ("MessageSid", "SM00000000000000000000000000000001"),
            ("Empty", ""),
        ]);
        for base in ["https://flowcast.example.com", "https://flowcast.example.com:443"] {
            let url = form_signing_string(&format!("{base}/webhooks/messaging"), &stop);
            assert!(
                signature_is_valid(SignatureAlgorithm::HmacSha1, "12345", &url, "QmqvKQ7lVc9O7u9/hxajnFYJjZw="),
                "{base}"
            );
        }
        let tampered = form_signing_string("https://flowcast.example.com/webhooks/messaging", &stop[..4]);
        assert!(!signature_is_valid(SignatureAlgorithm::HmacSha1, "12345", &tampered, "QmqvKQ7lVc9O7u9/hxajnFYJjZw="));
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
