//! The core of the reqwest client for Studio v2: how to reach it (base URL,
//! credentials, timeouts), sending a request with Basic auth and classifying the
//! answer, following `next_page_url` safely, and telling apart transport errors
//! that may have reached Studio from those that cannot have. The endpoints
//! themselves live by resource, in `executions` and `flows`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

use super::{StudioError, StudioResult};

/// Basic-auth credentials. The secret half never prints (`Debug` hides it).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    secret: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, secret: impl Into<String>) -> Self {
        Credentials { username: username.into(), secret: secret.into() }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("secret", &"<redacted>").finish()
    }
}

/// The base URL as Twilio's helper libraries build it: an override (the
/// configured studio URL) wins; else `https://studio.{edge}.{region}.twilio.com`
/// (an edge alone implies region `us1`).
pub fn base_url(override_url: Option<&str>, edge: Option<&str>, region: Option<&str>) -> String {
    if let Some(url) = override_url.map(str::trim).filter(|u| !u.is_empty()) {
        return url.trim_end_matches('/').to_string();
    }
    let edge = edge.map(str::trim).filter(|v| !v.is_empty());
    let region = region.map(str::trim).filter(|v| !v.is_empty());
    match (edge, region) {
        (Some(edge), region) => format!("https://studio.{edge}.{}.twilio.com", region.unwrap_or("us1")),
        (None, Some(region)) => format!("https://studio.{region}.twilio.com"),
        (None, None) => "https://studio.twilio.com".to_string(),
    }
}

/// How to reach Studio.
#[derive(Debug, Clone)]
pub struct StudioConfig {
    pub base_url: String,
    pub credentials: Credentials,
    /// Whole-request timeout; a create that times out is ambiguous.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// Studio over HTTP.
#[derive(Debug, Clone)]
pub struct HttpStudio {
    pub(super) client: reqwest::Client,
    base: String,
    /// `Basic …` of the credentials, encoded once rather than per request;
    /// marked sensitive, so it never prints.
    authorization: HeaderValue,
    /// Each flow's create URL, parsed once: a URL given as text is parsed
    /// at every request, and creates are most of the requests.
    create_urls: Arc<Mutex<HashMap<String, reqwest::Url>>>,
}

/// Flows whose create URL is kept at most; past it the map starts afresh.
const CREATE_URLS: usize = 1_024;

/// The paging part of a list answer, read by every list endpoint.
#[derive(Deserialize)]
pub(super) struct ListMeta {
    pub(super) next_page_url: Option<String>,
}

impl HttpStudio {
    pub fn new(config: StudioConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("flowcast/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            // The client never retries a request it has sent: what is sent
            // again, and when, is the dispatcher's to decide (a create sent
            // twice is a contact reached twice). Over HTTP/1, all this client
            // speaks, reqwest's default policy had nothing to retry, yet it
            // copied every request for a retry that could not come. (Were
            // HTTP/2 turned on, this would also give up the retries of
            // streams the server refused unread; deliberately, as above.)
            // Redirects are still followed as HTTP defines them: a 307 or
            // 308 says the request was not acted on there.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .build()?;
        Ok(HttpStudio {
            client,
            base: config.base_url.trim_end_matches('/').to_string(),
            authorization: basic_authorization(&config.credentials),
            create_urls: Arc::default(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The URL that creates an Execution of `flow`, parsed; `None` when the
    /// base URL does not parse (the request then fails as it would as text).
    pub(super) fn create_url(&self, flow: &str) -> Option<reqwest::Url> {
        let mut urls = self.create_urls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(url) = urls.get(flow) {
            return Some(url.clone());
        }
        let url = reqwest::Url::parse(&self.url(&format!("/v2/Flows/{flow}/Executions"))).ok()?;
        if urls.len() >= CREATE_URLS {
            urls.clear();
        }
        urls.insert(flow.to_string(), url.clone());
        Some(url)
    }

    /// Sends a request and classifies the answer. `ambiguous` marks requests that
    /// change state (a create), whose timeout or 5xx leaves their effect unknown.
    pub(super) async fn send<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
        ambiguous: bool,
    ) -> StudioResult<T> {
        let started = std::time::Instant::now();
        let result = self.send_inner(request, ambiguous).await;
        crate::telemetry::studio_latency(operation, started.elapsed().as_secs_f64());
        result
    }

    async fn send_inner<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        ambiguous: bool,
    ) -> StudioResult<T> {
        let request = request.header(AUTHORIZATION, self.authorization.clone());
        let response = request.send().await.map_err(|e| transport_error(&e, ambiguous))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        // Read as bytes and decoded as `text()` would (invalid UTF-8 replaced,
        // not refused), without its copy when the body is valid. Validated
        // first by `from_utf8`, which checks ASCII a word at a time:
        // `from_utf8_lossy` went a byte at a time, 5,700 instructions for a
        // create's answer under callgrind.
        let bytes = response.bytes().await.map_err(|e| transport_error(&e, ambiguous))?;
        let body = match std::str::from_utf8(&bytes) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(&bytes),
        };
        if (200..300).contains(&status) {
            serde_json::from_str(&body).map_err(|e| StudioError::Transient {
                message: format!("HTTP {status} with an unreadable body: {e}"),
                status: Some(status),
                ambiguous,
            })
        } else {
            Err(StudioError::from_response(status, retry_after, &body, ambiguous))
        }
    }

    /// A `next_page_url` is followed on our own base URL only, so credentials are
    /// never sent to a host the user did not configure.
    pub(super) fn next_page(&self, next: &str) -> String {
        match reqwest::Url::parse(next) {
            Ok(url) => {
                let mut path = url.path().to_string();
                if let Some(q) = url.query() {
                    path.push('?');
                    path.push_str(q);
                }
                self.url(&path)
            }
            Err(_) => self.url(next),
        }
    }
}

/// The `Authorization` header of Basic auth, as reqwest's `basic_auth` writes it.
fn basic_authorization(credentials: &Credentials) -> HeaderValue {
    use base64::Engine;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", credentials.username, credentials.secret));
    // Base64 is always a valid header value.
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// `request` with `pairs` as its `application/x-www-form-urlencoded` body,
/// byte for byte what reqwest's `form` writes (the WHATWG form serializer).
///
/// Written here because every create pays for it: `form` goes through
/// serde and appends the encoding a slice at a time (a JSON Parameters
/// value is a third punctuation, each mark a slice of its own): 8,700
/// instructions a create under callgrind, 4,700 this way.
pub(super) fn with_form(request: reqwest::RequestBuilder, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    request.header(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded")).body(form_body(pairs))
}

/// `name=value` pairs joined by `&`, each side form-encoded: ASCII letters,
/// digits and `*-._` as they are, a space as `+`, every other byte (each
/// byte of a character outside ASCII too) as `%XX` in upper case.
fn form_body(pairs: &[(&str, &str)]) -> String {
    fn encoded_len(text: &str) -> usize {
        text.bytes().map(|b| usize::from(FORM_WIDTH[usize::from(b)])).sum()
    }
    fn encode(out: &mut Vec<u8>, text: &str) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for b in text.bytes() {
            if b == b' ' {
                out.push(b'+');
            } else if FORM_WIDTH[usize::from(b)] == 1 {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
        }
    }
    let len = pairs.iter().map(|(name, value)| encoded_len(name) + encoded_len(value) + 2).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        encode(&mut out, name);
        out.push(b'=');
        encode(&mut out, value);
    }
    // Only ASCII was written.
    String::from_utf8(out).expect("a form body is ASCII")
}

/// The bytes each byte takes in a form body: 1 kept (a space too, as `+`),
/// 3 as `%XX`. A table, where the ranges tested byte by byte cost twice the
/// instructions.
const FORM_WIDTH: [u8; 256] = {
    let mut width = [3u8; 256];
    let mut b = 0;
    while b < 256 {
        if matches!(b as u8, b' ' | b'*' | b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z' | b'_' | b'a'..=b'z') {
            width[b] = 1;
        }
        b += 1;
    }
    width
};

fn transport_error(e: &reqwest::Error, ambiguous: bool) -> StudioError {
    // A refused connection never reached Studio; anything later might have.
    let reached = !e.is_connect();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest errors name the URL, never the credentials.
    StudioError::Transient { message: format!("{kind}: {e}"), status: None, ambiguous: ambiguous && reached }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_header_is_reqwests_basic_auth_and_never_prints() {
        let credentials = Credentials::new("AC0123456789abcdef0123456789abcdef", "s3cret:with colon");
        let reqwest_s = reqwest::Client::new()
            .get("http://127.0.0.1/")
            .basic_auth(&credentials.username, Some(&credentials.secret))
            .build()
            .unwrap();
        let ours = basic_authorization(&credentials);
        assert_eq!(reqwest_s.headers()[AUTHORIZATION].to_str().unwrap(), ours.to_str().unwrap());
        let studio = HttpStudio::new(StudioConfig {
            base_url: "http://127.0.0.1:9".into(),
            credentials,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        })
        .unwrap();
        let shown = format!("{studio:?}");
        assert!(!shown.contains("s3cret") && !shown.contains(ours.to_str().unwrap()), "{shown}");
    }

    #[test]
    fn the_base_url_follows_region_and_edge_like_twilios_helpers() {
        assert_eq!(base_url(None, None, None), "https://studio.twilio.com");
        assert_eq!(base_url(None, Some("sydney"), Some("au1")), "https://studio.sydney.au1.twilio.com");
        assert_eq!(base_url(None, Some("dublin"), None), "https://studio.dublin.us1.twilio.com");
        assert_eq!(base_url(None, None, Some("ie1")), "https://studio.ie1.twilio.com");
        assert_eq!(base_url(Some("http://127.0.0.1:4010/"), Some("sydney"), None), "http://127.0.0.1:4010");
    }

    #[test]
    fn a_flows_create_url_is_parsed_once_and_is_the_text_url() {
        let studio = |base: &str| {
            HttpStudio::new(StudioConfig {
                base_url: base.into(),
                credentials: Credentials::new("AC0123456789abcdef0123456789abcdef", "s"),
                timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
            })
            .unwrap()
        };
        let s = studio("http://127.0.0.1:4010/prefix/");
        let (a, b) = ("FW0123456789abcdef0123456789abcdef", "FW00000000000000000000000000000000");
        for flow in [a, b, a] {
            let url = s.create_url(flow).expect("a base URL that parses");
            assert_eq!(url.as_str(), s.url(&format!("/v2/Flows/{flow}/Executions")));
        }
        assert_eq!(s.create_urls.lock().unwrap().len(), 2);
        assert!(studio("not a url").create_url(a).is_none(), "left to fail as text, as before");
    }

    #[test]
    fn a_form_body_is_what_reqwests_form_writes() {
        let every_ascii: String = (0u8..128).map(char::from).collect();
        let values = [
            "",
            "plain",
            "+14155550100",
            r#"{"name":"Zoë O'Brien","note":"50% off & more = yes","flowcast":{"job":1}}"#,
            "a b+c&d=e%f/g?h#i",
            "日本語 ✓ 😀",
            every_ascii.as_str(),
        ];
        for value in values {
            let pairs = [("To", "+14155550100"), ("Parameters", value), ("Name with space", value)];
            let reqwest_s = reqwest::Client::new().post("http://127.0.0.1/").form(&pairs).build().unwrap();
            let ours = with_form(reqwest::Client::new().post("http://127.0.0.1/"), &pairs).build().unwrap();
            assert_eq!(ours.body().unwrap().as_bytes(), reqwest_s.body().unwrap().as_bytes(), "{value:?}");
            assert_eq!(ours.headers()[CONTENT_TYPE], reqwest_s.headers()[CONTENT_TYPE]);
        }
        assert_eq!(form_body(&[]), "");
    }

    #[test]
    fn credentials_never_print_their_secret() {
        let c = Credentials::new("ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "very-secret-token");
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
