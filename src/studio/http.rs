//! The reqwest client for Studio v2: Basic auth, form-encoded bodies,
//! `Parameters` as a JSON string, request timeouts, and every answer classified.

use std::fmt;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use serde::Deserialize;

use super::{CreateRequest, Execution, ListFilter, StudioApi, StudioError, StudioResult};
use crate::domain::FlowSid;

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

    /// API key credentials when `TWILIO_API_KEY`/`TWILIO_API_SECRET` are set,
    /// else `TWILIO_ACCOUNT_SID`/`TWILIO_AUTH_TOKEN`.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let (Some(key), Some(secret)) = (var("TWILIO_API_KEY"), var("TWILIO_API_SECRET")) {
            return Some(Credentials::new(key, secret));
        }
        if let (Some(sid), Some(token)) = (var("TWILIO_ACCOUNT_SID"), var("TWILIO_AUTH_TOKEN")) {
            return Some(Credentials::new(sid, token));
        }
        None
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("secret", &"<redacted>").finish()
    }
}

/// The base URL as Twilio's helper libraries build it: `FLOWCAST_STUDIO_URL` wins;
/// else `https://studio.{edge}.{region}.twilio.com` from `TWILIO_EDGE` and
/// `TWILIO_REGION` (an edge alone implies region `us1`).
pub fn base_url_from_env(override_url: Option<&str>) -> String {
    let var = |k: &str| std::env::var(k).ok();
    base_url(override_url, var("TWILIO_EDGE").as_deref(), var("TWILIO_REGION").as_deref())
}

/// [`base_url_from_env`] without the environment.
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
    client: reqwest::Client,
    base: String,
    credentials: Credentials,
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    executions: Vec<Execution>,
    #[serde(default)]
    meta: Option<ListMeta>,
}

#[derive(Deserialize)]
struct ListMeta {
    next_page_url: Option<String>,
}

impl HttpStudio {
    pub fn new(config: StudioConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("flowcast/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(HttpStudio {
            client,
            base: config.base_url.trim_end_matches('/').to_string(),
            credentials: config.credentials,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and classifies the answer. `ambiguous` marks requests that
    /// change state (a create), whose timeout or 5xx leaves their effect unknown.
    async fn send<T: serde::de::DeserializeOwned>(
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
        let request = request.basic_auth(&self.credentials.username, Some(&self.credentials.secret));
        let response = request.send().await.map_err(|e| transport_error(&e, ambiguous))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body = response.text().await.map_err(|e| transport_error(&e, ambiguous))?;
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
    fn next_page(&self, next: &str) -> String {
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

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A Flow as Studio describes it (the fields flowcast uses).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct FlowInfo {
    pub sid: String,
    #[serde(default)]
    pub friendly_name: Option<String>,
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub definition: Option<serde_json::Value>,
}

/// One revision of a Flow.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct FlowRevision {
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub commit_message: Option<String>,
    #[serde(default)]
    pub date_created: Option<String>,
    #[serde(default)]
    pub definition: Option<serde_json::Value>,
}

/// The Flow API (flows as code). Not part of [`StudioApi`]: only the `flows`
/// commands use it, always over HTTP.
impl HttpStudio {
    /// `POST /v2/Flows/Validate`; a refusal carries Studio's list of problems in
    /// the error's `details`.
    pub async fn validate_flow(&self, name: &str, status: &str, definition: &str) -> StudioResult<()> {
        #[derive(Deserialize)]
        struct Valid {
            #[serde(default)]
            valid: Option<bool>,
        }
        let form = [("FriendlyName", name), ("Status", status), ("Definition", definition)];
        let answer: Valid =
            self.send("flow_validate", self.client.post(self.url("/v2/Flows/Validate")).form(&form), false).await?;
        match answer.valid {
            Some(false) => Err(StudioError::Invalid(super::TwilioError::from_body(
                200,
                r#"{"message": "Studio says the definition is not valid"}"#,
            ))),
            _ => Ok(()),
        }
    }

    /// `POST /v2/Flows`: a new Flow.
    pub async fn create_flow(
        &self,
        name: &str,
        status: &str,
        definition: &str,
        message: &str,
    ) -> StudioResult<FlowInfo> {
        let form = [("FriendlyName", name), ("Status", status), ("Definition", definition), ("CommitMessage", message)];
        self.send("flow_create", self.client.post(self.url("/v2/Flows")).form(&form), false).await
    }

    /// `POST /v2/Flows/{FW}`: a new revision of an existing Flow.
    pub async fn update_flow(
        &self,
        sid: &str,
        status: &str,
        definition: &str,
        message: &str,
    ) -> StudioResult<FlowInfo> {
        let form = [("Status", status), ("Definition", definition), ("CommitMessage", message)];
        self.send("flow_update", self.client.post(self.url(&format!("/v2/Flows/{sid}"))).form(&form), false).await
    }

    /// `GET /v2/Flows/{FW}`.
    pub async fn fetch_flow(&self, sid: &str) -> StudioResult<FlowInfo> {
        self.send("flow_fetch", self.client.get(self.url(&format!("/v2/Flows/{sid}"))), false).await
    }

    /// `GET /v2/Flows`, every page.
    pub async fn list_flows(&self) -> StudioResult<Vec<FlowInfo>> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            flows: Vec<FlowInfo>,
            #[serde(default)]
            meta: Option<ListMeta>,
        }
        let mut out = Vec::new();
        let mut page: Page = self
            .send("flow_list", self.client.get(self.url("/v2/Flows")).query(&[("PageSize", "1000")]), false)
            .await?;
        for _ in 0..10_000 {
            out.append(&mut page.flows);
            let Some(next) = page.meta.and_then(|m| m.next_page_url).filter(|n| !n.is_empty()) else { break };
            page = self.send("flow_list", self.client.get(self.next_page(&next)), false).await?;
        }
        Ok(out)
    }

    /// `GET /v2/Flows/{FW}/Revisions`, newest first (first page, up to 1000).
    pub async fn flow_revisions(&self, sid: &str) -> StudioResult<Vec<FlowRevision>> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            revisions: Vec<FlowRevision>,
        }
        let page: Page = self
            .send(
                "flow_revisions",
                self.client.get(self.url(&format!("/v2/Flows/{sid}/Revisions"))).query(&[("PageSize", "1000")]),
                false,
            )
            .await?;
        Ok(page.revisions)
    }

    /// `GET /v2/Flows/{FW}/Revisions/{n}` (`LatestRevision` for the newest).
    pub async fn flow_revision(&self, sid: &str, revision: &str) -> StudioResult<FlowRevision> {
        self.send("flow_revision", self.client.get(self.url(&format!("/v2/Flows/{sid}/Revisions/{revision}"))), false)
            .await
    }

    /// `GET /v2/Flows/{FW}/TestUsers`.
    pub async fn test_users(&self, sid: &str) -> StudioResult<Vec<String>> {
        #[derive(Deserialize)]
        struct Users {
            #[serde(default)]
            test_users: Vec<String>,
        }
        let users: Users = self
            .send("flow_test_users", self.client.get(self.url(&format!("/v2/Flows/{sid}/TestUsers"))), false)
            .await?;
        Ok(users.test_users)
    }

    /// `POST /v2/Flows/{FW}/TestUsers` with `TestUsers` repeated.
    pub async fn set_test_users(&self, sid: &str, users: &[String]) -> StudioResult<Vec<String>> {
        #[derive(Deserialize)]
        struct Users {
            #[serde(default)]
            test_users: Vec<String>,
        }
        let form: Vec<(&str, &str)> = users.iter().map(|u| ("TestUsers", u.as_str())).collect();
        let users: Users = self
            .send(
                "flow_test_users",
                self.client.post(self.url(&format!("/v2/Flows/{sid}/TestUsers"))).form(&form),
                false,
            )
            .await?;
        Ok(users.test_users)
    }
}

impl StudioApi for HttpStudio {
    async fn create_execution(&self, flow: &FlowSid, request: &CreateRequest) -> StudioResult<Execution> {
        let form =
            [("To", request.to.as_str()), ("From", request.from.as_str()), ("Parameters", request.parameters.as_str())];
        self.send("create", self.client.post(self.url(&format!("/v2/Flows/{flow}/Executions"))).form(&form), true).await
    }

    async fn fetch_execution(&self, flow: &FlowSid, sid: &str) -> StudioResult<Execution> {
        self.send("fetch", self.client.get(self.url(&format!("/v2/Flows/{flow}/Executions/{sid}"))), false).await
    }

    async fn end_execution(&self, flow: &FlowSid, sid: &str) -> StudioResult<Execution> {
        let form = [("Status", "ended")];
        self.send("end", self.client.post(self.url(&format!("/v2/Flows/{flow}/Executions/{sid}"))).form(&form), false)
            .await
    }

    async fn list_executions(&self, flow: &FlowSid, filter: &ListFilter) -> StudioResult<Vec<Execution>> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(status) = filter.status {
            // The OpenAPI description names the filter `status`; Twilio's docs and
            // helper libraries write `Status`. Both are sent so either server reads it.
            query.push(("status", status.to_string()));
            query.push(("Status", status.to_string()));
        }
        if let Some(from) = filter.date_created_from {
            query.push(("DateCreatedFrom", rfc3339(from)));
        }
        if let Some(to) = filter.date_created_to {
            query.push(("DateCreatedTo", rfc3339(to)));
        }
        query.push(("PageSize", filter.page_size.unwrap_or(1000).clamp(1, 1000).to_string()));
        let mut found = Vec::new();
        let mut page: ListPage = self
            .send("list", self.client.get(self.url(&format!("/v2/Flows/{flow}/Executions"))).query(&query), false)
            .await?;
        // Bounded: Studio pages are ≤1000 rows; 10,000 pages is far past any real list.
        for _ in 0..10_000 {
            found.append(&mut page.executions);
            let Some(next) = page.meta.and_then(|m| m.next_page_url).filter(|n| !n.is_empty()) else {
                break;
            };
            page = self.send("list", self.client.get(self.next_page(&next)), false).await?;
        }
        if let Some(status) = filter.status {
            // Whatever the server did with the filter, return only what was asked.
            found.retain(|e| e.status.as_deref().is_none_or(|s| s == status));
        }
        Ok(found)
    }

    async fn execution_context(&self, flow: &FlowSid, sid: &str) -> StudioResult<serde_json::Value> {
        #[derive(Deserialize)]
        struct ContextBody {
            #[serde(default)]
            context: serde_json::Value,
        }
        let body: ContextBody = self
            .send("context", self.client.get(self.url(&format!("/v2/Flows/{flow}/Executions/{sid}/Context"))), false)
            .await?;
        Ok(body.context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_follows_region_and_edge_like_twilios_helpers() {
        assert_eq!(base_url(None, None, None), "https://studio.twilio.com");
        assert_eq!(base_url(None, Some("sydney"), Some("au1")), "https://studio.sydney.au1.twilio.com");
        assert_eq!(base_url(None, Some("dublin"), None), "https://studio.dublin.us1.twilio.com");
        assert_eq!(base_url(None, None, Some("ie1")), "https://studio.ie1.twilio.com");
        assert_eq!(base_url(Some("http://127.0.0.1:4010/"), Some("sydney"), None), "http://127.0.0.1:4010");
    }

    #[test]
    fn credentials_never_print_their_secret() {
        let c = Credentials::new("ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "very-secret-token");
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
