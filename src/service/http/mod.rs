//! The service's HTTP surface: health, metrics, the JSON API, the dashboard
//! page, run control, and the Event Streams webhook.
//!
//! Every refusal and error the API answers has one shape:
//! `{"error": {"code": "not_found", "message": "run 7 not found"}}`.
//! `src/service/openapi.json` describes every route, answer and error; it is
//! served at `/api/openapi.json`, and `tests/it/openapi.rs` checks the running
//! server against it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod campaign_runs;
mod end_active;
mod suppressions;
mod webhooks;

use suppressions::{add_suppression, list_suppressions, remove_suppression};
use webhooks::{messaging_webhook, studio_webhook};

use super::Service;
use super::guard::{Refusal, ServedHosts};
use super::listen;
use super::webhook::{self, SignatureAlgorithm};
use crate::config::Secret;
use crate::domain::{JobState, Phone, RunAction, Scope};
use crate::runs::ControlError;
use crate::store::StoreError;
use crate::studio::StudioApi;
use crate::views;

/// The dashboard: one self-contained page, compiled into the binary.
const DASHBOARD: &str = include_str!("../dashboard.html");

/// The OpenAPI 3.1 description of every route, compiled in so that what is
/// served is what the tests checked.
const OPENAPI: &str = include_str!("../openapi.json");

/// The dashboard's Content-Security-Policy: nothing but its own inline script
/// and style (by hash, so an injected script or style never runs), requests to
/// this origin only, and no framing (against clickjacking of its buttons).
static DASHBOARD_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        csp_hash(inline_element(DASHBOARD, "script")),
        csp_hash(inline_element(DASHBOARD, "style")),
    )
});

/// The text of the page's `<tag>…</tag>` element, exactly as a browser hashes
/// it for a CSP source.
fn inline_element<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = page.find(&open).map(|i| i + open.len()).expect("the dashboard has its inline element");
    let end = page[start..].find(&format!("</{tag}>")).expect("the element is closed") + start;
    &page[start..end]
}

fn csp_hash(text: &str) -> String {
    use sha2::Digest;
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes())))
}

/// Settings of the HTTP surface.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// When set, everything but `/healthz` and the webhook needs it, as
    /// `Authorization: Bearer TOKEN` (or as the password of Basic auth, which
    /// browsers send by themselves once asked).
    pub admin_token: Option<Secret>,
    /// The auth token that Twilio signs Event Streams deliveries with.
    pub webhook_token: Option<Secret>,
    /// The public base URL Twilio posts to (`FLOWCAST_PUBLIC_URL`), e.g.
    /// `https://flowcast.example.com`; signatures are over this URL, and its
    /// host is one the API answers to.
    pub public_url: Option<String>,
    /// The listen address as configured (`FLOWCAST_LISTEN`, e.g.
    /// `localhost:8080`): a name the API answers to besides the loopback
    /// names and the address bound.
    pub listen: Option<String>,
    /// How long a connection may take to deliver a request's head, counted
    /// from when it starts waiting for one: it bounds slow senders,
    /// connections that never send, and keep-alive connections left idle.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is
    /// closed (a stalled upload, a client that stopped reading). Longer than
    /// `request_timeout`, so it never cuts off a request being worked on.
    pub idle_timeout: Duration,
    /// How long a request may take, body included, before it is answered 408.
    pub request_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            admin_token: None,
            webhook_token: None,
            public_url: None,
            listen: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

struct HttpState<S: StudioApi> {
    service: Arc<Service<S>>,
    config: HttpConfig,
    hosts: ServedHosts,
}

type St<S> = State<Arc<HttpState<S>>>;

/// Serves the service's routes on `listener` until `shutdown`, with the
/// connection limits of `config`; returns once every connection is closed.
pub async fn serve<S: StudioApi>(
    listener: TcpListener,
    service: Arc<Service<S>>,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = listen::Limits {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    let app = router(service, config, listener.local_addr()?);
    listen::serve(listener, app, limits, shutdown).await;
    Ok(())
}

/// The service's routes, for a server bound to `bound`.
fn router<S: StudioApi>(service: Arc<Service<S>>, config: HttpConfig, bound: SocketAddr) -> Router {
    let hosts = ServedHosts::new(bound, config.listen.as_deref(), config.public_url.as_deref());
    let request_timeout = config.request_timeout;
    let state = Arc::new(HttpState { service, config, hosts });
    // Layers added later run first: the Host and Origin checks, then the token.
    let guarded = Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics::<S>))
        .route("/api/campaigns", get(campaigns::<S>))
        .route(
            "/api/campaigns/{name}/runs",
            post(campaign_runs::start_run::<S>)
                .layer(axum::extract::DefaultBodyLimit::max(campaign_runs::MAX_CONTACTS_BODY)),
        )
        .route("/api/campaigns/{name}/contacts", post(campaign_runs::push_contacts::<S>))
        .route("/api/runs", get(runs::<S>))
        .route("/api/runs/{id}", get(get_run::<S>))
        .route("/api/runs/{id}/jobs", get(jobs::<S>))
        .route("/api/runs/{id}/{action}", post(control::<S>))
        .route("/api/problems", get(problems::<S>))
        .route("/api/outbox", get(outbox::<S>))
        .route("/api/instances", get(instances::<S>))
        .route("/api/suppressions", get(list_suppressions::<S>).post(add_suppression::<S>))
        .route("/api/suppressions/{phone}", axum::routing::delete(remove_suppression::<S>))
        .route("/api/openapi.json", get(openapi))
        // Set before the guards, so a wrong method is told only to a caller
        // who may use the path.
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_token::<S>))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_served_origin::<S>));
    // Health probes address the machine by whatever name or IP they have and
    // learn nothing but "ok"; the webhook is posted by Twilio under the public
    // host and guarded by its signature.
    Router::new()
        .route("/healthz", get(healthz::<S>))
        .route("/webhooks/studio", post(studio_webhook::<S>))
        .route("/webhooks/messaging", post(messaging_webhook::<S>))
        .merge(guarded)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(async || error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .with_state(state)
}

fn json_body(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The API's one error shape.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_body(status, json!({ "error": { "code": code, "message": message.into() } }))
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A known path asked with a method it does not serve; the router adds the
/// `Allow` header naming the ones it does.
async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served at {}; the Allow header lists what is", uri.path()),
    )
}

/// Answers 408 to a request not complete in time (a body that stops
/// arriving, most likely) and closes its connection, whose unread body would
/// otherwise be taken for the next request.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request was not complete within {} s", limit.as_secs_f64()),
            );
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

async fn require_served_origin<S: StudioApi>(State(state): St<S>, request: Request, next: Next) -> Response {
    match state.hosts.check(request.method(), request.uri(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let (code, message) = match refusal {
                Refusal::Host(message) => ("host_not_served", message),
                Refusal::CrossSite(message) => ("cross_site", message),
            };
            tracing::warn!(reason = %message, "request refused");
            error(StatusCode::FORBIDDEN, code, message)
        }
    }
}

async fn require_token<S: StudioApi>(State(state): St<S>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.config.admin_token {
        let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let given = presented_token(header).unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong admin token");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"flowcast\""));
            return response;
        }
    }
    next.run(request).await
}

/// The token in an `Authorization` header: a Bearer token, or the password of
/// Basic auth. Scheme names are case-insensitive (`bearer` is `Bearer`).
fn presented_token(header: &str) -> Option<String> {
    let (scheme, credentials) = header.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(credentials.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(credentials).ok()?).ok()?;
        decoded.split_once(':').map(|(_, password)| password.to_string())
    } else {
        None
    }
}

/// Compares without an early exit, so the time taken does not reveal how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A ledger error as an answer: 404 for an unknown run, else 500.
fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::RunNotFound(id) => error(StatusCode::NOT_FOUND, "not_found", format!("run {id} not found")),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// Path parameters whose refusal (`/api/runs/abc`) is answered in the API's
/// error shape rather than as plain text.
struct ApiPath<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status.is_client_error() { "bad_request" } else { "internal" };
                Err(error(status, code, rejection.body_text()))
            }
        }
    }
}

/// A request body whose refusal (over the route's size limit, cut off) is
/// answered in the API's error shape rather than as plain text.
struct ApiBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Bytes::from_request(request, state).await {
            Ok(body) => Ok(ApiBody(body)),
            Err(rejection) => {
                let status = rejection.status();
                Err(if status == StatusCode::PAYLOAD_TOO_LARGE {
                    error(status, "payload_too_large", "the request body is over this endpoint's size limit")
                } else if status.is_client_error() {
                    error(status, "bad_request", format!("the request body cannot be read: {}", rejection.body_text()))
                } else {
                    error(status, "internal", rejection.body_text())
                })
            }
        }
    }
}

/// A request's query parameters.
struct Params(HashMap<String, String>);

impl Params {
    fn new(query: Option<String>) -> Self {
        Params(form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A whole-number parameter, `default` when absent; when it is not a
    /// whole number in range, a message naming it, for a 400.
    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("query parameter {name}: {text:?} is not a whole number in range")),
        }
    }

    /// `limit`, clamped to `1..=max`, `default` when absent.
    fn limit(&self, default: u32, max: u32) -> Result<u32, String> {
        Ok(self.number("limit", default)?.clamp(1, max))
    }
}

/// Keyset paging from a query: `after` (the last id seen) and `limit`
/// (clamped to `1..=max`, `default` when absent).
struct Page {
    after: i64,
    limit: u32,
}

impl Page {
    fn from_query(q: &Params, default: u32, max: u32) -> Result<Self, String> {
        Ok(Page { after: q.number("after", 0)?, limit: q.limit(default, max)? })
    }

    /// The `after` of the next page, when this one was full.
    fn next_after(&self, ids: impl DoubleEndedIterator<Item = i64> + ExactSizeIterator) -> Option<i64> {
        let full = ids.len() as u32 == self.limit;
        ids.last().filter(|_| full)
    }
}

async fn healthz<S: StudioApi>(State(state): St<S>) -> Response {
    let svc = &state.service;
    if svc.store.is_writable().await {
        if !svc.store.is_shared() {
            return (StatusCode::OK, "ok\n").into_response();
        }
        // Several instances: whether this one leads, and how long ago it
        // last renewed its leases (over a few seconds: others take them over).
        let age = svc.lease_age_ms().map_or_else(|| "none".to_string(), |ms| ms.to_string());
        let text = format!(
            "ok\ninstance: {}\nleader: {}\nlease_age_ms: {age}\n",
            svc.store.instance().unwrap_or(""),
            svc.is_leader()
        );
        (StatusCode::OK, text).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "ledger not writable")
    }
}

/// The instances sharing the ledger (an empty list on a SQLite ledger).
async fn instances<S: StudioApi>(State(state): St<S>) -> Response {
    let svc = &state.service;
    match svc.store.instances(svc.now_ms()).await {
        Ok(rows) => {
            let list: Vec<Value> = rows
                .iter()
                .map(|i| {
                    json!({
                        "name": i.name,
                        "leader": i.leader,
                        "seen_at": crate::views::time(i.seen_at),
                        "started_at": crate::views::time(i.started_at),
                        "address": i.address,
                        "this": i.this,
                        "campaigns_differ": i.differs,
                    })
                })
                .collect();
            json_body(StatusCode::OK, Value::Array(list))
        }
        Err(e) => store_error(e),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP.as_str()),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn metrics<S: StudioApi>(State(state): St<S>) -> Response {
    match state.service.store.jobs_by_state().await {
        Ok(by_state) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            crate::telemetry::render(&by_state),
        )
            .into_response(),
        Err(e) => store_error(e),
    }
}

async fn campaigns<S: StudioApi>(State(state): St<S>) -> Response {
    let svc = &state.service;
    let rows = match svc.store.list_campaigns().await {
        Ok(rows) => rows,
        Err(e) => return store_error(e),
    };
    let refused = svc.refused();
    let mut out = Vec::new();
    let in_force = svc.campaigns();
    for c in &in_force {
        let next = rows.iter().find(|r| r.name == c.name).and_then(|r| r.next_fire_at);
        let problems: Vec<String> = refused
            .iter()
            .filter(|(p, _)| *p == c.source)
            .flat_map(|(_, e)| e.diagnostics.iter().map(ToString::to_string))
            .collect();
        let mut summary = c.summary(next.and_then(chrono::DateTime::from_timestamp_millis));
        summary["status"] = json!(if !problems.is_empty() {
            "refused-edit"
        } else if c.enabled {
            "enabled"
        } else {
            "disabled"
        });
        summary["errors"] = json!(problems);
        out.push(summary);
    }
    for (file, e) in refused.into_iter().filter(|(p, _)| !in_force.iter().any(|c| c.source == *p)) {
        out.push(json!({
            "name": null,
            "file": file.display().to_string(),
            "status": "refused",
            "errors": e.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }));
    }
    json_body(StatusCode::OK, json!({ "campaigns": out }))
}

async fn runs<S: StudioApi>(State(state): St<S>, RawQuery(query): RawQuery) -> Response {
    let store = &state.service.store;
    let q = Params::new(query);
    let limit = match q.limit(50, 500) {
        Ok(limit) => limit,
        Err(message) => return bad_request(message),
    };
    let list = match store.list_runs(q.get("campaign"), limit).await {
        Ok(list) => list,
        Err(e) => return store_error(e),
    };
    let mut out = Vec::with_capacity(list.len());
    for run in list {
        match run_view(&state.service, &run).await {
            Ok(view) => out.push(view),
            Err(e) => return store_error(e),
        }
    }
    json_body(StatusCode::OK, json!({ "runs": out }))
}

/// A run with its counts and outcome summaries.
async fn run_view<S: StudioApi>(svc: &Service<S>, run: &crate::store::RunRow) -> Result<Value, StoreError> {
    let (counts, outcomes) = crate::runs::summarise(&svc.store, run, svc.now_ms()).await?;
    Ok(views::run(run, &counts, &outcomes))
}

async fn get_run<S: StudioApi>(State(state): St<S>, ApiPath(id): ApiPath<i64>) -> Response {
    let store = &state.service.store;
    let run = match store.get_run(id).await {
        Ok(run) => run,
        Err(e) => return store_error(e),
    };
    match run_view(&state.service, &run).await {
        Ok(view) => json_body(StatusCode::OK, view),
        Err(e) => store_error(e),
    }
}

async fn jobs<S: StudioApi>(State(state): St<S>, ApiPath(id): ApiPath<i64>, RawQuery(query): RawQuery) -> Response {
    let q = Params::new(query);
    let filter = match q.get("state").map(|s| s.parse::<JobState>()).transpose() {
        Ok(filter) => filter,
        Err(e) => return bad_request(format!("query parameter state: {e}")),
    };
    let page = match Page::from_query(&q, 100, 1000) {
        Ok(page) => page,
        Err(message) => return bad_request(message),
    };
    let store = &state.service.store;
    if let Err(e) = store.get_run(id).await {
        return store_error(e);
    }
    match store.jobs_page(id, filter, page.after, page.limit).await {
        Ok(list) => {
            let next = page.next_after(list.iter().map(|j| j.id));
            json_body(
                StatusCode::OK,
                json!({ "jobs": list.iter().map(views::job).collect::<Vec<_>>(), "next_after": next }),
            )
        }
        Err(e) => store_error(e),
    }
}

/// `GET /api/outbox[?state=pending|delivered|gave_up][&after=ID&limit=N]`:
/// the signed events, with their delivery attempts, and the counts.
async fn outbox<S: StudioApi>(State(state): St<S>, RawQuery(query): RawQuery) -> Response {
    let q = Params::new(query);
    let filter = q.get("state").map(str::to_string);
    if let Some(f) = &filter
        && !["pending", "delivered", "gave_up"].contains(&f.as_str())
    {
        return bad_request(format!("query parameter state: {f:?} must be pending, delivered or gave_up"));
    }
    let page = match Page::from_query(&q, 100, 1000) {
        Ok(page) => page,
        Err(message) => return bad_request(message),
    };
    let store = &state.service.store;
    let (list, counts) = match (store.outbox_page(filter, page.after, page.limit).await, store.outbox_counts().await) {
        (Ok(list), Ok(counts)) => (list, counts),
        (Err(e), _) | (_, Err(e)) => return store_error(e),
    };
    let next = page.next_after(list.iter().map(|e| e.id));
    let events: Vec<Value> = list
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "event_id": e.event_id, "type": e.event_type, "run": e.run_id, "job": e.job_id,
                "attempts": e.attempts, "created_at": e.created_at, "next_attempt_at": e.next_attempt_at,
                "delivered_at": e.delivered_at, "gave_up_at": e.gave_up_at, "last_error": e.last_error,
            })
        })
        .collect();
    json_body(StatusCode::OK, json!({ "counts": counts, "events": events, "next_after": next }))
}

async fn problems<S: StudioApi>(State(state): St<S>, RawQuery(query): RawQuery) -> Response {
    let limit = match Params::new(query).limit(20, 200) {
        Ok(limit) => limit,
        Err(message) => return bad_request(message),
    };
    match state.service.store.recent_problems(limit).await {
        Ok(list) => json_body(StatusCode::OK, json!({ "jobs": list.iter().map(views::job).collect::<Vec<_>>() })),
        Err(e) => store_error(e),
    }
}

async fn control<S: StudioApi>(
    State(state): St<S>,
    ApiPath((id, action)): ApiPath<(i64, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(action) = action.parse::<RunAction>() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown action {action:?}; use {}", RunAction::choices()),
        );
    };
    let end_active = match end_active::requested(&Params::new(query)) {
        Ok(true) if action != RunAction::Cancel => return bad_request("end_active=true goes with cancel only"),
        Ok(end_active) => end_active,
        Err(message) => return bad_request(message),
    };
    let service = &state.service;
    let changed = if end_active {
        crate::runs::cancel_for_end(&service.store, id, service.now_ms()).await
    } else {
        crate::runs::control(&service.store, id, action, service.now_ms()).await
    };
    match changed {
        Ok(t) => {
            service.wake.notify_one();
            let body = json!({ "id": id, "previous": t.from, "state": t.to });
            if end_active {
                return end_active::end_after_cancel(&state, id, body).await;
            }
            json_body(StatusCode::OK, body)
        }
        Err(ControlError::Store(e)) => store_error(e),
        Err(e @ ControlError::NotAllowed(_)) => error(StatusCode::CONFLICT, "conflict", e.to_string()),
        Err(e @ ControlError::Contended(_)) => error(StatusCode::CONFLICT, "conflict", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The other half of `tests/it/openapi.rs`, which calls every route the
    /// description lists: every route the router registers is listed.
    #[test]
    fn every_route_the_router_registers_is_in_the_api_description() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("the API description is JSON");
        let source = include_str!("mod.rs");
        let router = &source[source.find("fn router<").expect("the router is defined here")..];
        let router = &router[..router.find("\n}\n").expect("the router function ends")];
        let mut found = 0;
        for route in router.split(".route(\"").skip(1).filter_map(|rest| rest.split('"').next()) {
            // One route serves every run action; the description lists each.
            let paths: Vec<String> = if route.contains("{action}") {
                RunAction::ALL.iter().map(|a| route.replace("{action}", a.as_str())).collect()
            } else {
                vec![route.to_string()]
            };
            for path in paths {
                assert!(doc["paths"].get(&path).is_some(), "route {path} is not described in src/service/openapi.json");
            }
            found += 1;
        }
        assert!(found > 10, "only {found} routes found in fn router");
    }
}
