//! A local Studio: the Execution endpoints flowcast uses, over real HTTP on
//! 127.0.0.1, behaving as Studio does where it matters to flowcast.
//!
//! - Basic auth required (and checked, when credentials are configured) → 401.
//! - Requests validated as Studio validates them: form-encoded, `To` and
//!   `From` required, `Parameters` a JSON object string, Flow SIDs `FW` + 32 hex.
//! - One active Execution per (Flow, contact): a second create answers 409
//!   (Twilio error 20409) naming the active SID, unless configured not to.
//! - Executions end after a configurable lifetime, or when ended by a request.
//! - More creates than the configured rate in any one second → 429 (20429).
//! - Every Execution created is kept, for tests to assert against, and is
//!   served as JSON at `GET /_simulator/executions`.
//! - Flows can be validated, created, updated and read back with their
//!   revisions and test users, for the `flows` commands.
//! - An Execution on a Flow whose definition it holds (created through its Flow
//!   API, or put there with [`Simulator::install_flow`]) is run: messages are
//!   rendered and recorded, contacts answer as configured (or by a seeded mix
//!   that takes every branch), splits and variables work, and the Execution
//!   ends with its Flow, its Context and Steps served as Studio serves them.
//!   A message to Twilio's test number `+15005550004` fails with 21610 (the
//!   recipient unsubscribed), one to `+15005550009` with 21614 (not a mobile
//!   number), shown in the widget's entry as Studio shows a failed send.
//!   An Execution on any other Flow stays active until its lifetime or a
//!   request ends it, with only its Parameters in its context.
//! - Every ending can be delivered, signed, to an Event Streams sink.
//!
//! The files split it by job: this one holds the [`Simulator`] handle, its
//! configuration and shared state, the router and the helpers every handler
//! uses (auth, form bodies, Twilio-shaped errors); `executions` (with paging),
//! `steps` and `flows` hold the handlers of each resource; `faults` holds
//! [`Faults`] and the seeded rolls that inject them into creates; `run` is the
//! interpreter, with `liquid` (templates), `split` (conditions) and `replies`
//! (what contacts answer); `events` delivers Execution-ended events.

// Handlers return early with a ready Response; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

mod events;
mod executions;
mod faults;
mod flows;
mod liquid;
mod replies;
mod run;
mod split;
mod steps;

pub use events::EventSink;
pub use faults::{FaultKind, Faults};
pub use replies::read_replies;
pub use run::{NOT_MOBILE_NUMBER, UNSUBSCRIBED_NUMBER};

use flows::SimFlow;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// An Execution on a Flow the simulator does not interpret ends by itself
    /// this long after it starts; `None`: only when ended. (An interpreted one
    /// ends with its Flow.)
    pub lifetime: Option<Duration>,
    /// Creates accepted per second; more get 429.
    pub rate_cap: Option<u32>,
    /// When set, only these Basic-auth credentials are accepted.
    pub credentials: Option<(String, String)>,
    /// Whether a 409 body names the active Execution's SID (Studio's bodies vary).
    pub conflict_names_sid: bool,
    pub faults: Faults,
    /// How long, in real time, a contact takes to answer a
    /// `send-and-wait-for-reply`, and how long one who never answers is waited
    /// for before the widget's `timeout` (the widget's own timeout is not used).
    pub reply_delay: Duration,
    /// Each contact's answer, by address; `None`: never answers. Contacts not
    /// listed answer from the default mix.
    pub replies: HashMap<String, Option<String>>,
    /// The seed of the default mix of answers.
    pub reply_seed: u64,
    /// Where to deliver an event each time an Execution ends.
    pub event_sink: Option<EventSink>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            lifetime: Some(Duration::from_secs(5)),
            rate_cap: None,
            credentials: None,
            conflict_names_sid: true,
            faults: Faults::default(),
            reply_delay: Duration::ZERO,
            replies: HashMap::new(),
            reply_seed: 0,
            event_sink: None,
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
    /// Set when a request ended it (as opposed to its lifetime or its Flow).
    pub ended_by_request: bool,
    #[serde(skip)]
    created_instant: Option<Instant>,
}

impl SimExecution {
    /// When the create was admitted, on the clock the rate cap counts with
    /// (`date_created` is the wall clock, which may step or slew against it, so
    /// a window measured on it can hold one create more than the cap allowed).
    /// A foreign Execution (`start_foreign_execution`) counts from when it
    /// was started; `None` only for one built by hand in a unit test.
    pub fn admitted_at(&self) -> Option<Instant> {
        self.created_instant
    }
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
    injected_by_kind: [u64; FaultKind::COUNT],
    burst_left: u32,
    flows: HashMap<String, SimFlow>,
    rng: Option<rand::rngs::StdRng>,
    /// Interpreted Executions' runs, by Execution SID.
    runs: HashMap<String, run::FlowRun>,
    /// The default mix's place, by (Flow, widget).
    mixes: HashMap<(String, String), replies::MixCursor>,
    /// Woken on every create and every end.
    changed: Arc<Notify>,
    /// Where endings go to be delivered to the event sink.
    ended: Option<mpsc::UnboundedSender<events::Ended>>,
}

struct Shared {
    config: Mutex<SimConfig>,
    state: Mutex<SimState>,
    /// Cancelled when the simulator is dropped: stops runs and deliveries.
    stop: CancellationToken,
}

impl Shared {
    fn lifetime(&self) -> Option<Duration> {
        lock(&self.config).lifetime
    }
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
    _stop_tasks: DropGuard,
}

impl Simulator {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        Self::start_on("127.0.0.1:0".parse().expect("a literal socket address"), config).await
    }

    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        let (ended, deliveries) = mpsc::unbounded_channel();
        let state = SimState { ended: Some(ended), ..SimState::default() };
        let stop_tasks = CancellationToken::new();
        let shared =
            Arc::new(Shared { config: Mutex::new(config), state: Mutex::new(state), stop: stop_tasks.clone() });
        tokio::spawn(events::deliver_all(Arc::downgrade(&shared), deliveries, stop_tasks.clone()));
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
        Ok(Simulator { shared, addr, _stop: stop, _stop_tasks: stop_tasks.drop_guard() })
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
        let lifetime = self.shared.lifetime();
        let mut state = lock(&self.shared.state);
        state.expire(lifetime, Instant::now());
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

    /// How many faults of `kind` were injected (a throttle burst counts once).
    pub fn injected(&self, kind: FaultKind) -> u64 {
        lock(&self.shared.state).injected_by_kind[kind.index()]
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
        state.insert(flow, contact, "+15005550006", json!({}), "AC00000000000000000000000000000000", Instant::now())
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
    /// `admitted` is the instant the rate cap counted the create at.
    fn insert(
        &mut self,
        flow: &str,
        to: &str,
        from: &str,
        parameters: Value,
        account: &str,
        admitted: Instant,
    ) -> String {
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
            created_instant: Some(admitted),
        });
        self.by_sid.insert(sid.clone(), index);
        self.active.insert((flow.to_string(), to.to_string()), index);
        self.changed.notify_waiters();
        sid
    }

    /// Ends an active Execution (the event sink hears of it); returns it, ended or not.
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
            let e = &self.executions[index];
            if let Some(ended) = &self.ended {
                // The receiver lives as long as the simulator; a send can only
                // fail while it is being dropped, when nobody is listening.
                let _ = ended.send(events::Ended {
                    execution_sid: e.sid.clone(),
                    account_sid: e.account_sid.clone(),
                    flow_sid: e.flow_sid.clone(),
                    contact: e.to.clone(),
                    reason: if by_request { events::ENDED_BY_API } else { events::FLOW_END },
                    date_created: e.date_created,
                    date_updated: e.date_updated,
                    flow_revision: self.runs.get(sid).map(|run| run.revision),
                });
            }
            self.changed.notify_waiters();
        }
        Some(&self.executions[index])
    }

    /// Active Executions that only their lifetime ends: those not interpreted.
    fn lifetime_bound(&self) -> impl Iterator<Item = &SimExecution> {
        self.active.values().map(|&i| &self.executions[i]).filter(|e| !self.runs.contains_key(&e.sid))
    }

    /// Ends every active Execution whose lifetime is over. Interpreted ones end
    /// with their Flow instead.
    fn expire(&mut self, lifetime: Option<Duration>, now: Instant) {
        let Some(lifetime) = lifetime else {
            return;
        };
        let over: Vec<String> = self
            .lifetime_bound()
            .filter(|e| e.created_instant.is_some_and(|t| now.duration_since(t) >= lifetime))
            .map(|e| e.sid.clone())
            .collect();
        for sid in over {
            self.end(&sid, false);
        }
    }

    /// When the next lifetime runs out, if any will.
    fn next_expiry(&self, lifetime: Option<Duration>) -> Option<Instant> {
        let lifetime = lifetime?;
        self.lifetime_bound().filter_map(|e| e.created_instant).map(|t| t + lifetime).min()
    }
}

type SharedState = Arc<Shared>;

fn router(shared: SharedState) -> Router {
    Router::new()
        .route("/v2/Flows/{flow}/Executions", get(executions::list_executions).post(executions::create_execution))
        .route(
            "/v2/Flows/{flow}/Executions/{sid}",
            get(executions::fetch_execution).post(executions::update_execution).delete(executions::delete_execution),
        )
        .route("/v2/Flows/{flow}/Executions/{sid}/Context", get(executions::execution_context))
        .route("/v2/Flows/{flow}/Executions/{sid}/Steps", get(steps::list_steps))
        .route("/v2/Flows/{flow}/Executions/{sid}/Steps/{step}", get(steps::fetch_step))
        .route("/v2/Flows/{flow}/Executions/{sid}/Steps/{step}/Context", get(steps::step_context))
        .route("/_simulator/executions", get(executions::dump_executions))
        .route("/_simulator/stats", get(executions::stats))
        .route("/v2/Flows", post(flows::create_flow).get(flows::list_flows))
        .route("/v2/Flows/{sid}/Revisions", get(flows::flow_revisions))
        .route("/v2/Flows/{sid}/Revisions/{revision}", get(flows::flow_revision))
        .route("/v2/Flows/{sid}/TestUsers", get(flows::get_test_users).post(flows::set_test_users))
        .route("/v2/Flows/Validate", post(flows::validate_flow))
        .route("/v2/Flows/{sid}", get(flows::fetch_flow).post(flows::update_flow))
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

/// Studio's answer to one create too many: 429 (20429), retry after a second.
fn too_many_requests() -> Response {
    let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
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

/// Basic auth, then the form body: what every state-changing endpoint needs.
fn authed_form(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<Vec<(String, String)>, Response> {
    authenticate(shared, headers)?;
    read_form(headers, body)
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

fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
