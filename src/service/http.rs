//! The service's HTTP surface: health, metrics, the JSON API, the dashboard
//! page, run control, and the Event Streams webhook.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use super::Service;
use super::webhook;
use crate::config::Secret;
use crate::domain::{JobState, RunAction};
use crate::runs::ControlError;
use crate::store::StoreError;
use crate::studio::StudioApi;
use crate::views;

/// The dashboard: one self-contained page, compiled into the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Settings of the HTTP surface.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// When set, everything but `/healthz` and the webhook needs it, as
    /// `Authorization: Bearer TOKEN` (or as the password of Basic auth, which
    /// browsers send by themselves once asked).
    pub admin_token: Option<Secret>,
    /// The auth token that Twilio signs Event Streams deliveries with.
    pub webhook_token: Option<Secret>,
    /// The public base URL Twilio posts to (`FLOWCAST_PUBLIC_URL`), e.g.
    /// `https://flowcast.example.com`; signatures are over this URL.
    pub public_url: Option<String>,
}

struct HttpState<S: StudioApi> {
    service: Arc<Service<S>>,
    config: HttpConfig,
}

type St<S> = State<Arc<HttpState<S>>>;

/// The service's routes.
pub fn router<S: StudioApi>(service: Arc<Service<S>>, config: HttpConfig) -> Router {
    let state = Arc::new(HttpState { service, config });
    let guarded = Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics::<S>))
        .route("/api/campaigns", get(campaigns::<S>))
        .route("/api/runs", get(runs::<S>))
        .route("/api/runs/{id}", get(get_run::<S>))
        .route("/api/runs/{id}/jobs", get(jobs::<S>))
        .route("/api/runs/{id}/{action}", post(control::<S>))
        .route("/api/problems", get(problems::<S>))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_token::<S>));
    Router::new()
        .route("/healthz", get(healthz::<S>))
        .route("/webhooks/studio", post(studio_webhook::<S>))
        .merge(guarded)
        .with_state(state)
}

fn json_body(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_body(status, json!({ "error": message.into() }))
}

async fn require_token<S: StudioApi>(State(state): St<S>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.config.admin_token {
        let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let given = if let Some(bearer) = header.strip_prefix("Bearer ") {
            bearer.to_string()
        } else if let Some(basic) = header.strip_prefix("Basic ") {
            base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|d| d.split_once(':').map(|(_, password)| password.to_string()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        if !constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"flowcast\""));
            return response;
        }
    }
    next.run(request).await
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
        StoreError::RunNotFound(id) => error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Keyset paging from a query: `after` (the last id seen) and `limit`
/// (clamped to `1..=max`, `default` when absent).
struct Page {
    after: i64,
    limit: u32,
}

impl Page {
    fn from_query(q: &HashMap<String, String>, default: u32, max: u32) -> Self {
        let after = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
        let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(default).clamp(1, max);
        Page { after, limit }
    }

    /// The `after` of the next page, when this one was full.
    fn next_after(&self, ids: impl DoubleEndedIterator<Item = i64> + ExactSizeIterator) -> Option<i64> {
        let full = ids.len() as u32 == self.limit;
        ids.last().filter(|_| full)
    }
}

async fn healthz<S: StudioApi>(State(state): St<S>) -> Response {
    if state.service.store.is_writable().await {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "ledger not writable\n").into_response()
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
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

async fn runs<S: StudioApi>(State(state): St<S>, Query(q): Query<HashMap<String, String>>) -> Response {
    let store = &state.service.store;
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50u32).clamp(1, 500);
    let list = match store.list_runs(q.get("campaign").map(String::as_str), limit).await {
        Ok(list) => list,
        Err(e) => return store_error(e),
    };
    let mut out = Vec::with_capacity(list.len());
    for run in list {
        match store.run_counts(run.id).await {
            Ok(counts) => out.push(views::run(&run, &counts)),
            Err(e) => return store_error(e),
        }
    }
    json_body(StatusCode::OK, json!({ "runs": out }))
}

async fn get_run<S: StudioApi>(State(state): St<S>, Path(id): Path<i64>) -> Response {
    let store = &state.service.store;
    let run = match store.get_run(id).await {
        Ok(run) => run,
        Err(e) => return store_error(e),
    };
    match store.run_counts(id).await {
        Ok(counts) => json_body(StatusCode::OK, views::run(&run, &counts)),
        Err(e) => store_error(e),
    }
}

async fn jobs<S: StudioApi>(
    State(state): St<S>,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = match q.get("state").map(|s| s.parse::<JobState>()).transpose() {
        Ok(filter) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let page = Page::from_query(&q, 100, 1000);
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

async fn problems<S: StudioApi>(State(state): St<S>, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(20u32).clamp(1, 200);
    match state.service.store.recent_problems(limit).await {
        Ok(list) => json_body(StatusCode::OK, json!({ "jobs": list.iter().map(views::job).collect::<Vec<_>>() })),
        Err(e) => store_error(e),
    }
}

async fn control<S: StudioApi>(State(state): St<S>, Path((id, action)): Path<(i64, String)>) -> Response {
    let Ok(action) = action.parse::<RunAction>() else {
        return error(StatusCode::NOT_FOUND, format!("unknown action {action:?}; use {}", RunAction::choices()));
    };
    let service = &state.service;
    match crate::runs::control(&service.store, id, action, service.now_ms()).await {
        Ok(t) => {
            service.wake.notify_one();
            json_body(StatusCode::OK, json!({ "id": id, "previous": t.from, "state": t.to }))
        }
        Err(ControlError::Store(e)) => store_error(e),
        Err(e @ ControlError::NotAllowed(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ ControlError::Contended(_)) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn studio_webhook<S: StudioApi>(
    State(state): St<S>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let forbidden = |why: &str| {
        tracing::warn!(reason = why, "webhook refused");
        error(StatusCode::FORBIDDEN, why)
    };
    let Some(token) = &state.config.webhook_token else {
        return forbidden("no auth token configured to check signatures (set TWILIO_AUTH_TOKEN)");
    };
    let Some(signature) = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()) else {
        return forbidden("unsigned request");
    };
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/webhooks/studio");
    let base = match &state.config.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    let url = format!("{base}{path_and_query}");
    if !webhook::signature_is_valid(token.expose(), &url, signature) {
        return forbidden("bad signature");
    }
    if !webhook::body_hash_is_valid(uri.query().unwrap_or(""), &body) {
        return forbidden("bodySHA256 does not match the body");
    }
    let (count, ended) = match webhook::parse_events(&body) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let now = state.service.now_ms();
    let ended_count = ended.len();
    let mut woken = 0;
    for e in &ended {
        let at = e.ended_at.unwrap_or(now);
        match state.service.store.record_execution_end(&e.execution_sid, at, e.ended_reason.as_deref(), now).await {
            Ok((_, w)) => woken += w,
            Err(e) => return store_error(e),
        }
    }
    if woken > 0 {
        state.service.dispatcher.wake_all();
    }
    if ended_count > 0 {
        // Their outcomes can be read back now.
        state.service.collector.wake();
    }
    json_body(StatusCode::OK, json!({ "accepted": count, "ended": ended_count, "woken": woken }))
}
