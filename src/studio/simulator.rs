//! A local Studio: the Execution endpoints flowcast uses, over real HTTP on
//! 127.0.0.1, behaving as Studio does where it matters to flowcast.
//!
//! - Basic auth required (and checked, when credentials are configured) → 401.
//! - Requests validated as the OpenAPI description says: form-encoded, `To` and
//!   `From` required, `Parameters` a JSON object string, Flow SIDs `FW` + 32 hex.
//! - One active Execution per (Flow, contact): a second create answers 409
//!   (Twilio error 20409) naming the active SID, unless configured not to.
//! - Executions end after a configurable lifetime, or when ended by a request.
//! - More creates than the configured rate in any one second → 429 (20429).
//! - Every Execution created is kept, for tests to assert against, and is
//!   served as JSON at `GET /_simulator/executions`.

// Handlers return early with a ready Response; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Faults the simulator injects into creates, each with its probability, drawn
/// from a seeded generator so that a failing run can be replayed.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub seed: u64,
    /// Answer 500 without creating anything.
    pub error_before: f64,
    /// Create the Execution, then answer 500.
    pub error_after: f64,
    /// Create the Execution, then drop the connection mid-answer.
    pub drop_after: f64,
    /// Create the Execution, then answer only after `slow_delay`.
    pub slow_after: f64,
    pub slow_delay: Duration,
    /// Start a burst of `burst_len` 429 answers.
    pub throttle_burst: f64,
    pub burst_len: u32,
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// An Execution ends by itself this long after it starts; `None`: only when ended.
    pub lifetime: Option<Duration>,
    /// Creates accepted per second; more get 429.
    pub rate_cap: Option<u32>,
    /// When set, only these Basic-auth credentials are accepted.
    pub credentials: Option<(String, String)>,
    /// Whether a 409 body names the active Execution's SID (Studio's bodies vary).
    pub conflict_names_sid: bool,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            lifetime: Some(Duration::from_secs(5)),
            rate_cap: None,
            credentials: None,
            conflict_names_sid: true,
            faults: Faults::default(),
        }
    }
}

/// One Execution the simulator created.
#[derive(Debug, Clone, Serialize)]
pub struct SimExecution {
    pub sid: String,
    pub account_sid: String,
    pub flow_sid: String,
    pub to: String,
    pub from: String,
    pub parameters: Value,
    pub status: String,
    pub date_created: DateTime<Utc>,
    pub date_updated: DateTime<Utc>,
    /// Set when a request ended it (as opposed to its lifetime).
    pub ended_by_request: bool,
    #[serde(skip)]
    created_instant: Option<Instant>,
}

#[derive(Default)]
struct SimState {
    executions: Vec<SimExecution>,
    by_sid: HashMap<String, usize>,
    active: HashMap<(String, String), usize>,
    recent_creates: VecDeque<Instant>,
    throttled: u64,
    conflicts: u64,
    faults_injected: u64,
    burst_left: u32,
    flows: HashMap<String, SimFlow>,
    rng: Option<rand::rngs::StdRng>,
}

impl SimState {
    fn roll(&mut self, seed: u64, p: f64) -> bool {
        use rand::{RngExt, SeedableRng};
        if p <= 0.0 {
            return false;
        }
        let rng = self.rng.get_or_insert_with(|| rand::rngs::StdRng::seed_from_u64(seed));
        rng.random::<f64>() < p
    }
}

struct Shared {
    config: Mutex<SimConfig>,
    state: Mutex<SimState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The simulator's state stays consistent between statements; a panic in a
    // test holding the lock should not hide the original failure behind poison.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Simulator {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        Self::start_on("127.0.0.1:0".parse().expect("a literal socket address"), config).await
    }

    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        let shared = Arc::new(Shared { config: Mutex::new(config), state: Mutex::new(SimState::default()) });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Simulator { shared, addr, _stop: stop })
    }

    /// The base URL to point `FLOWCAST_STUDIO_URL` at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every Execution created so far (refreshed for lifetimes).
    pub fn executions(&self) -> Vec<SimExecution> {
        let config = lock(&self.shared.config).clone();
        let mut state = lock(&self.shared.state);
        state.expire(&config, Instant::now());
        state.executions.clone()
    }

    /// 429s answered so far.
    pub fn throttled(&self) -> u64 {
        lock(&self.shared.state).throttled
    }

    /// Faults injected so far (each 500, dropped connection, slow answer or 429 of a burst).
    pub fn faults_injected(&self) -> u64 {
        lock(&self.shared.state).faults_injected
    }

    /// 409s answered so far.
    pub fn conflicts(&self) -> u64 {
        lock(&self.shared.state).conflicts
    }

    /// How many revisions each Flow has, by SID (for tests of deploys).
    pub fn flow_revisions(&self) -> HashMap<String, usize> {
        lock(&self.shared.state).flows.iter().map(|(sid, f)| (sid.clone(), f.revisions.len())).collect()
    }

    /// Puts `contact` into an active Execution of `flow` not made by flowcast (as
    /// if another tool or an inbound message had started it); returns its SID.
    pub fn start_foreign_execution(&self, flow: &str, contact: &str) -> String {
        let mut state = lock(&self.shared.state);
        state.insert(flow, contact, "+15005550006", json!({}), "AC00000000000000000000000000000000")
    }

    /// Ends an Execution as if its Flow had finished.
    pub fn finish_execution(&self, sid: &str) {
        lock(&self.shared.state).end(sid, false);
    }

    pub fn set_config(&self, config: SimConfig) {
        *lock(&self.shared.config) = config;
    }
}

impl SimState {
    fn insert(&mut self, flow: &str, to: &str, from: &str, parameters: Value, account: &str) -> String {
        // Random like Studio's, so SIDs from two simulator lifetimes never collide.
        let sid = format!("FN{:032x}", rand::random::<u128>());
        let now = Utc::now();
        let index = self.executions.len();
        self.executions.push(SimExecution {
            sid: sid.clone(),
            account_sid: account.to_string(),
            flow_sid: flow.to_string(),
            to: to.to_string(),
            from: from.to_string(),
            parameters,
            status: "active".into(),
            date_created: now,
            date_updated: now,
            ended_by_request: false,
            created_instant: Some(Instant::now()),
        });
        self.by_sid.insert(sid.clone(), index);
        self.active.insert((flow.to_string(), to.to_string()), index);
        sid
    }

    fn end(&mut self, sid: &str, by_request: bool) -> Option<&SimExecution> {
        let index = *self.by_sid.get(sid)?;
        let e = &mut self.executions[index];
        if e.status == "active" {
            e.status = "ended".into();
            e.date_updated = Utc::now();
            e.ended_by_request = by_request;
            let key = (e.flow_sid.clone(), e.to.clone());
            if self.active.get(&key) == Some(&index) {
                self.active.remove(&key);
            }
        }
        Some(&self.executions[index])
    }

    /// Ends every active Execution whose lifetime is over.
    fn expire(&mut self, config: &SimConfig, now: Instant) {
        let Some(lifetime) = config.lifetime else {
            return;
        };
        let over: Vec<String> = self
            .active
            .values()
            .map(|&i| &self.executions[i])
            .filter(|e| e.created_instant.is_some_and(|t| now.duration_since(t) >= lifetime))
            .map(|e| e.sid.clone())
            .collect();
        for sid in over {
            self.end(&sid, false);
        }
    }
}

type SharedState = Arc<Shared>;

fn router(shared: SharedState) -> Router {
    Router::new()
        .route("/v2/Flows/{flow}/Executions", get(list_executions).post(create_execution))
        .route(
            "/v2/Flows/{flow}/Executions/{sid}",
            get(fetch_execution).post(update_execution).delete(delete_execution),
        )
        .route("/v2/Flows/{flow}/Executions/{sid}/Context", get(execution_context))
        .route("/_simulator/executions", get(dump_executions))
        .route("/_simulator/stats", get(stats))
        .route("/v2/Flows", post(create_flow).get(list_flows))
        .route("/v2/Flows/{sid}/Revisions", get(flow_revisions))
        .route("/v2/Flows/{sid}/Revisions/{revision}", get(flow_revision))
        .route("/v2/Flows/{sid}/TestUsers", get(get_test_users).post(set_test_users))
        .route("/v2/Flows/Validate", post(validate_flow))
        .route("/v2/Flows/{sid}", get(fetch_flow).post(update_flow))
        .with_state(shared)
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Checks Basic auth; returns the account SID the request acts for.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let unauthorised = || twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authentication Error - invalid username");
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorised)?;
    let encoded = value.strip_prefix("Basic ").ok_or_else(unauthorised)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| unauthorised())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unauthorised())?;
    let (user, pass) = decoded.split_once(':').ok_or_else(unauthorised)?;
    if user.is_empty() || pass.is_empty() {
        return Err(unauthorised());
    }
    if let Some((u, p)) = &lock(&shared.config).credentials
        && (u != user || p != pass)
    {
        return Err(unauthorised());
    }
    Ok(if user.starts_with("AC") && user.len() == 34 {
        user.to_string()
    } else {
        "AC00000000000000000000000000000000".into()
    })
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34 && value.starts_with(prefix) && value[2..].chars().all(|c| c.is_ascii_hexdigit())
}

fn check_flow(flow: &str) -> Result<(), Response> {
    if is_sid(flow, "FW") {
        Ok(())
    } else {
        Err(twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /v2/Flows/{flow} was not found"),
        ))
    }
}

/// Basic auth, then the form body: what every state-changing endpoint needs.
fn authed_form(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<Vec<(String, String)>, Response> {
    authenticate(shared, headers)?;
    read_form(headers, body)
}

fn flow_not_found(sid: &str) -> Response {
    twilio_error(StatusCode::NOT_FOUND, 20404, &format!("The requested resource /v2/Flows/{sid} was not found"))
}

fn read_form(headers: &HeaderMap, body: &Bytes) -> Result<Vec<(String, String)>, Response> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            20001,
            "Request body must be application/x-www-form-urlencoded",
        ));
    }
    Ok(form_urlencoded::parse(body).into_owned().collect())
}

fn execution_json(e: &SimExecution, base: &str) -> Value {
    let url = format!("{base}/v2/Flows/{}/Executions/{}", e.flow_sid, e.sid);
    json!({
        "url": url,
        "sid": e.sid,
        "account_sid": e.account_sid,
        "flow_sid": e.flow_sid,
        "context": {},
        "contact_channel_address": e.to,
        "contact_sid": format!("FC{}", &e.sid[2..]),
        "flow_version": 1,
        "status": e.status,
        "date_created": e.date_created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "date_updated": e.date_updated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "initiated_by": "RE00000000000000000000000000000000",
        "links": {
            "steps": format!("{url}/Steps"),
            "execution_context": format!("{url}/Context"),
        }
    })
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn create_execution(
    State(shared): State<SharedState>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match authenticate(&shared, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = check_flow(&flow) {
        return r;
    }
    let form = match read_form(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let field =
        |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty());
    let Some(to) = field("To") else {
        return twilio_error(StatusCode::BAD_REQUEST, 20001, "Missing required parameter To in the post body");
    };
    let Some(from) = field("From") else {
        return twilio_error(StatusCode::BAD_REQUEST, 20001, "Missing required parameter From in the post body");
    };
    let parameters = match field("Parameters") {
        None => json!({}),
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return twilio_error(StatusCode::BAD_REQUEST, 20001, "Parameters must be a JSON object string");
            }
        },
    };
    let (body, slow) = match commit_create(&shared, &flow, &to, &from, parameters, &account, &base_url(&headers)) {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    json_response(StatusCode::CREATED, body)
}

/// The create under the state lock: rate cap, faults, the one-active rule, the
/// new Execution. `Ok((body, Some(delay)))` asks for a slow answer.
#[allow(clippy::too_many_arguments)]
fn commit_create(
    shared: &Shared,
    flow: &str,
    to: &str,
    from: &str,
    parameters: Value,
    account: &str,
    base: &str,
) -> Result<(Value, Option<Duration>), Response> {
    let config = lock(&shared.config).clone();
    let faults = config.faults.clone();
    let mut state = lock(&shared.state);
    let now = Instant::now();
    state.expire(&config, now);
    if state.burst_left > 0 || state.roll(faults.seed, faults.throttle_burst) {
        state.burst_left = if state.burst_left > 0 { state.burst_left - 1 } else { faults.burst_len.saturating_sub(1) };
        state.throttled += 1;
        state.faults_injected += 1;
        let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Err(r);
    }
    if state.roll(faults.seed, faults.error_before) {
        state.faults_injected += 1;
        return Err(twilio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error (injected, nothing created)",
        ));
    }
    if let Some(cap) = config.rate_cap {
        while state.recent_creates.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            state.recent_creates.pop_front();
        }
        if state.recent_creates.len() >= cap as usize {
            state.throttled += 1;
            let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return Err(r);
        }
        state.recent_creates.push_back(now);
    }
    if let Some(&index) = state.active.get(&(flow.to_string(), to.to_string())) {
        state.conflicts += 1;
        let sid = state.executions[index].sid.clone();
        let message = if config.conflict_names_sid {
            format!("Execution {sid} is already active for this contact")
        } else {
            "Execution is already active for this contact".to_string()
        };
        return Err(twilio_error(StatusCode::CONFLICT, 20409, &message));
    }
    let sid = state.insert(flow, to, from, parameters, account);
    let body = execution_json(&state.executions[state.by_sid[&sid]], base);
    // Faults after the Execution exists: the caller cannot know it was created.
    if state.roll(faults.seed, faults.error_after) {
        state.faults_injected += 1;
        return Err(twilio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error (injected, after create)",
        ));
    }
    if state.roll(faults.seed, faults.drop_after) {
        state.faults_injected += 1;
        let broken = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped (injected)"))
        });
        return Err((
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            axum::body::Body::from_stream(broken),
        )
            .into_response());
    }
    if state.roll(faults.seed, faults.slow_after) {
        state.faults_injected += 1;
        return Ok((body, Some(faults.slow_delay)));
    }
    Ok((body, None))
}

struct ListQuery {
    status: Option<String>,
    date_created_from: Option<String>,
    date_created_to: Option<String>,
    page_size: Option<usize>,
    page: Option<usize>,
}

async fn list_executions(
    State(shared): State<SharedState>,
    Path(flow): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    if let Err(r) = check_flow(&flow) {
        return r;
    }
    // Both spellings of the status filter are accepted; the first wins.
    let get = |k: &str| query.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone());
    let q = ListQuery {
        status: get("status").or_else(|| get("Status")),
        date_created_from: get("DateCreatedFrom"),
        date_created_to: get("DateCreatedTo"),
        page_size: get("PageSize").and_then(|v| v.parse().ok()),
        page: get("Page").and_then(|v| v.parse().ok()),
    };
    let parse_time = |t: &Option<String>| -> Result<Option<DateTime<Utc>>, Response> {
        match t {
            None => Ok(None),
            Some(text) => DateTime::parse_from_rfc3339(text)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| twilio_error(StatusCode::BAD_REQUEST, 20001, &format!("Invalid date-time {text}"))),
        }
    };
    let (from, to) = match (parse_time(&q.date_created_from), parse_time(&q.date_created_to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let page_size = q.page_size.unwrap_or(50).clamp(1, 1000);
    let page = q.page.unwrap_or(0);
    let config = lock(&shared.config).clone();
    let mut state = lock(&shared.state);
    state.expire(&config, Instant::now());
    // Studio lists newest first; Executions created within one second share a
    // date_created, so compare at second precision as Studio does.
    let matching: Vec<&SimExecution> = state
        .executions
        .iter()
        .rev()
        .filter(|e| e.flow_sid == flow)
        .filter(|e| q.status.as_deref().is_none_or(|s| e.status == s))
        .filter(|e| from.is_none_or(|f| e.date_created.timestamp() >= f.timestamp()))
        .filter(|e| to.is_none_or(|t| e.date_created.timestamp() < t.timestamp()))
        .collect();
    let base = base_url(&headers);
    let start = page * page_size;
    let items: Vec<Value> = matching.iter().skip(start).take(page_size).map(|e| execution_json(e, &base)).collect();
    let mut page_query: Vec<(String, String)> =
        query.iter().filter(|(k, _)| k != "Page" && k != "PageToken" && k != "PageSize").cloned().collect();
    page_query.push(("PageSize".into(), page_size.to_string()));
    let page_url = |n: usize| {
        let mut qs = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &page_query {
            qs.append_pair(k, v);
        }
        qs.append_pair("Page", &n.to_string());
        qs.append_pair("PageToken", &format!("PT{n}"));
        format!("{base}/v2/Flows/{flow}/Executions?{}", qs.finish())
    };
    let next = (start + page_size < matching.len()).then(|| page_url(page + 1));
    let body = json!({
        "executions": items,
        "meta": {
            "page": page,
            "page_size": page_size,
            "first_page_url": page_url(0),
            "previous_page_url": (page > 0).then(|| page_url(page - 1)),
            "next_page_url": next,
            "url": page_url(page),
            "key": "executions",
        }
    });
    json_response(StatusCode::OK, body)
}

fn find<'a>(state: &'a SimState, flow: &str, sid: &str) -> Result<&'a SimExecution, Response> {
    state.by_sid.get(sid).map(|&i| &state.executions[i]).filter(|e| e.flow_sid == flow).ok_or_else(|| {
        twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /v2/Flows/{flow}/Executions/{sid} was not found"),
        )
    })
}

async fn fetch_execution(
    State(shared): State<SharedState>,
    Path((flow, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let config = lock(&shared.config).clone();
    let mut state = lock(&shared.state);
    state.expire(&config, Instant::now());
    match find(&state, &flow, &sid) {
        Ok(e) => json_response(StatusCode::OK, execution_json(e, &base_url(&headers))),
        Err(r) => r,
    }
}

async fn update_execution(
    State(shared): State<SharedState>,
    Path((flow, sid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match authed_form(&shared, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    match form.iter().find(|(k, _)| k == "Status").map(|(_, v)| v.as_str()) {
        Some("ended") => {}
        Some(other) => {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                20001,
                &format!("Invalid Status {other}; only ended is allowed"),
            );
        }
        None => {
            return twilio_error(StatusCode::BAD_REQUEST, 20001, "Missing required parameter Status in the post body");
        }
    }
    let config = lock(&shared.config).clone();
    let mut state = lock(&shared.state);
    state.expire(&config, Instant::now());
    if let Err(r) = find(&state, &flow, &sid) {
        return r;
    }
    let e = state.end(&sid, true).expect("found just above").clone();
    json_response(StatusCode::OK, execution_json(&e, &base_url(&headers)))
}

async fn delete_execution(
    State(shared): State<SharedState>,
    Path((flow, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let mut state = lock(&shared.state);
    if let Err(r) = find(&state, &flow, &sid) {
        return r;
    }
    state.end(&sid, true);
    StatusCode::NO_CONTENT.into_response()
}

async fn execution_context(
    State(shared): State<SharedState>,
    Path((flow, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    let e = match find(&state, &flow, &sid) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let base = base_url(&headers);
    json_response(
        StatusCode::OK,
        json!({
            "account_sid": e.account_sid,
            "context": {
                "flow": {
                    "flow_sid": e.flow_sid,
                    "channel": { "address": e.from },
                    "data": e.parameters,
                },
                "contact": { "channel": { "address": e.to } },
            },
            "flow_sid": e.flow_sid,
            "execution_sid": e.sid,
            "url": format!("{base}/v2/Flows/{}/Executions/{}/Context", e.flow_sid, e.sid),
        }),
    )
}

async fn dump_executions(State(shared): State<SharedState>) -> Response {
    let config = lock(&shared.config).clone();
    let mut state = lock(&shared.state);
    state.expire(&config, Instant::now());
    json_response(StatusCode::OK, serde_json::to_value(&state.executions).unwrap_or(Value::Null))
}

/// Counts, for benchmarks and tests that live in another process.
async fn stats(State(shared): State<SharedState>) -> Response {
    let state = lock(&shared.state);
    let first = state.executions.iter().map(|e| e.date_created).min();
    let last = state.executions.iter().map(|e| e.date_created).max();
    json_response(
        StatusCode::OK,
        json!({
            "executions": state.executions.len(),
            "throttled": state.throttled,
            "conflicts": state.conflicts,
            "first_created": first.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            "last_created": last.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        }),
    )
}

/// A Flow the simulator holds, with every revision's definition.
#[derive(Debug, Clone)]
struct SimFlow {
    sid: String,
    name: String,
    status: String,
    revisions: Vec<Value>,
    messages: Vec<String>,
    test_users: Vec<String>,
}

fn flow_json(f: &SimFlow, base: &str) -> Value {
    json!({
        "sid": f.sid,
        "account_sid": "AC00000000000000000000000000000000",
        "friendly_name": f.name,
        "definition": f.revisions.last(),
        "status": f.status,
        "revision": f.revisions.len(),
        "valid": true,
        "errors": [],
        "warnings": [],
        "url": format!("{base}/v2/Flows/{}", f.sid),
    })
}

/// Checks a definition as Studio's validator does, in outline: JSON, states with
/// names and types, an initial state that exists. Problems come back as Studio
/// lists them, under `details.errors` with a `property_path`.
fn check_definition(form: &[(String, String)]) -> Result<Value, Response> {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let Some(text) = field("Definition") else {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            20001,
            "Missing required parameter Definition in the post body",
        ));
    };
    let invalid = |errors: Vec<Value>| {
        let body = json!({
            "code": 20001,
            "message": "Invalid Flow Definition",
            "more_info": "https://www.twilio.com/docs/errors/20001",
            "status": 400,
            "details": { "errors": errors, "warnings": [] },
        });
        (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    };
    let Ok(definition) = serde_json::from_str::<Value>(&text) else {
        return Err(invalid(vec![json!({ "message": "Definition is not valid JSON", "property_path": "#" })]));
    };
    let mut errors = Vec::new();
    let states = definition["states"].as_array().cloned().unwrap_or_default();
    if states.is_empty() {
        errors.push(json!({ "message": "must have at least one state", "property_path": "#/states" }));
    }
    for (i, state) in states.iter().enumerate() {
        if state["type"].as_str().is_none() {
            errors.push(json!({ "message": "state has no type", "property_path": format!("#/states/{i}") }));
        }
    }
    let initial = definition["initial_state"].as_str().unwrap_or("");
    if !states.iter().any(|s| s["name"].as_str() == Some(initial)) {
        errors.push(json!({ "message": format!("initial_state {initial:?} is not a state"), "property_path": "#/initial_state" }));
    }
    if errors.is_empty() { Ok(definition) } else { Err(invalid(errors)) }
}

async fn validate_flow(State(shared): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match authed_form(&shared, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    match check_definition(&form) {
        Ok(_) => json_response(StatusCode::OK, json!({ "valid": true })),
        Err(r) => r,
    }
}

async fn create_flow(State(shared): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match authed_form(&shared, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let definition = match check_definition(&form) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let flow = SimFlow {
        sid: format!("FW{:032x}", rand::random::<u128>()),
        name: field("FriendlyName").unwrap_or_default(),
        status: field("Status").unwrap_or_else(|| "draft".into()),
        revisions: vec![definition],
        messages: vec![field("CommitMessage").unwrap_or_default()],
        test_users: Vec::new(),
    };
    let body = flow_json(&flow, &base_url(&headers));
    lock(&shared.state).flows.insert(flow.sid.clone(), flow);
    json_response(StatusCode::CREATED, body)
}

async fn update_flow(
    State(shared): State<SharedState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match authed_form(&shared, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let Some(status) = field("Status") else {
        return twilio_error(StatusCode::BAD_REQUEST, 20001, "Missing required parameter Status in the post body");
    };
    let definition = if field("Definition").is_some() {
        match check_definition(&form) {
            Ok(d) => Some(d),
            Err(r) => return r,
        }
    } else {
        None
    };
    let mut state = lock(&shared.state);
    let Some(flow) = state.flows.get_mut(&sid) else {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /v2/Flows/{sid} was not found"),
        );
    };
    flow.status = status;
    if let Some(name) = field("FriendlyName") {
        flow.name = name;
    }
    if let Some(d) = definition {
        flow.revisions.push(d);
        flow.messages.push(field("CommitMessage").unwrap_or_default());
    }
    let body = flow_json(flow, &base_url(&headers));
    json_response(StatusCode::OK, body)
}

async fn fetch_flow(State(shared): State<SharedState>, Path(sid): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    match state.flows.get(&sid) {
        Some(flow) => json_response(StatusCode::OK, flow_json(flow, &base_url(&headers))),
        None => flow_not_found(&sid),
    }
}

async fn list_flows(State(shared): State<SharedState>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    let base = base_url(&headers);
    let mut flows: Vec<&SimFlow> = state.flows.values().collect();
    flows.sort_by(|a, b| a.name.cmp(&b.name));
    let list: Vec<Value> = flows.iter().map(|f| flow_json(f, &base)).collect();
    json_response(StatusCode::OK, json!({ "flows": list, "meta": { "next_page_url": null, "key": "flows" } }))
}

fn revision_json(f: &SimFlow, n: usize) -> Value {
    json!({
        "sid": f.sid,
        "friendly_name": f.name,
        "definition": f.revisions[n - 1],
        "status": f.status,
        "revision": n,
        "commit_message": f.messages.get(n - 1),
        "valid": true,
        "date_created": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

async fn flow_revisions(State(shared): State<SharedState>, Path(sid): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    let Some(flow) = state.flows.get(&sid) else {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /v2/Flows/{sid} was not found"),
        );
    };
    let revisions: Vec<Value> = (1..=flow.revisions.len()).rev().map(|n| revision_json(flow, n)).collect();
    json_response(
        StatusCode::OK,
        json!({ "revisions": revisions, "meta": { "next_page_url": null, "key": "revisions" } }),
    )
}

async fn flow_revision(
    State(shared): State<SharedState>,
    Path((sid, revision)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    let flow = state.flows.get(&sid);
    let n = match (flow, revision.as_str()) {
        (Some(f), "LatestPublished" | "LatestRevision") => f.revisions.len(),
        (Some(_), n) => n.parse().unwrap_or(0),
        (None, _) => 0,
    };
    match flow {
        Some(f) if (1..=f.revisions.len()).contains(&n) => json_response(StatusCode::OK, revision_json(f, n)),
        _ => twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /v2/Flows/{sid}/Revisions/{revision} was not found"),
        ),
    }
}

async fn get_test_users(State(shared): State<SharedState>, Path(sid): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    match state.flows.get(&sid) {
        Some(f) => json_response(StatusCode::OK, json!({ "sid": f.sid, "test_users": f.test_users })),
        None => flow_not_found(&sid),
    }
}

async fn set_test_users(
    State(shared): State<SharedState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match authed_form(&shared, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let users: Vec<String> = form.into_iter().filter(|(k, _)| k == "TestUsers").map(|(_, v)| v).collect();
    if users.is_empty() {
        return twilio_error(StatusCode::BAD_REQUEST, 20001, "Missing required parameter TestUsers in the post body");
    }
    let mut state = lock(&shared.state);
    match state.flows.get_mut(&sid) {
        Some(f) => {
            f.test_users = users;
            json_response(StatusCode::OK, json!({ "sid": f.sid, "test_users": f.test_users }))
        }
        None => flow_not_found(&sid),
    }
}
