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
use super::control::{Action, ControlError, control_run};
use super::webhook;
use crate::store::StoreError;
use crate::studio::StudioApi;

/// The dashboard: one self-contained page, compiled into the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Settings of the HTTP surface.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// When set, everything but `/healthz` and the webhook needs it, as
    /// `Authorization: Bearer TOKEN` (or as the password of Basic auth, which
    /// browsers send by themselves once asked).
    pub admin_token: Option<String>,
    /// The auth token that Twilio signs Event Streams deliveries with.
    pub webhook_token: Option<String>,
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
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
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

/// Runs ledger work off the async threads.
async fn with_store<S: StudioApi, T: Send + 'static>(
    state: &Arc<HttpState<S>>,
    f: impl FnOnce(&Service<S>) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let service = Arc::clone(&state.service);
    match tokio::task::spawn_blocking(move || f(&service)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(StoreError::RunNotFound(id))) => Err(error(StatusCode::NOT_FOUND, format!("run {id} not found"))),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn healthz<S: StudioApi>(State(state): St<S>) -> Response {
    let store = state.service.store.clone();
    let writable = tokio::task::spawn_blocking(move || store.is_writable()).await.unwrap_or(false);
    if writable {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "ledger not writable\n").into_response()
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn metrics<S: StudioApi>(State(state): St<S>) -> Response {
    match with_store(&state, |svc| svc.store.jobs_by_state()).await {
        Ok(by_state) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            crate::telemetry::render(&by_state),
        )
            .into_response(),
        Err(r) => r,
    }
}

fn time(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

async fn campaigns<S: StudioApi>(State(state): St<S>) -> Response {
    let result = with_store(&state, |svc| {
        let rows = svc.store.list_campaigns()?;
        let refused = svc.refused();
        let mut out = Vec::new();
        for c in svc.campaigns() {
            let row = rows.iter().find(|r| r.name == c.name);
            let next = row.and_then(|r| r.next_fire_at);
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
        let in_force: Vec<_> = svc.campaigns().into_iter().map(|c| c.source).collect();
        for (file, e) in refused.into_iter().filter(|(p, _)| !in_force.contains(p)) {
            out.push(json!({
                "name": null,
                "file": file.display().to_string(),
                "status": "refused",
                "errors": e.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }));
        }
        Ok(out)
    })
    .await;
    match result {
        Ok(list) => json_body(StatusCode::OK, json!({ "campaigns": list })),
        Err(r) => r,
    }
}

fn run_json(run: &crate::store::RunRow, counts: &crate::store::RunCounts) -> Value {
    let mut body = serde_json::to_value(run).unwrap_or_default();
    let total = counts.total();
    body["jobs"] = serde_json::to_value(&counts.0).unwrap_or_default();
    body["total"] = json!(total);
    body["progress"] = json!(if total > 0 { (total - counts.open()) as f64 / total as f64 } else { 1.0 });
    body["created"] = time(Some(run.created_at));
    body["finished"] = time(run.finished_at);
    body
}

async fn runs<S: StudioApi>(State(state): St<S>, Query(q): Query<HashMap<String, String>>) -> Response {
    let campaign = q.get("campaign").cloned();
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50u32).clamp(1, 500);
    let result = with_store(&state, move |svc| {
        let mut out = Vec::new();
        for run in svc.store.list_runs(campaign.as_deref(), limit)? {
            let counts = svc.store.run_counts(run.id)?;
            out.push(run_json(&run, &counts));
        }
        Ok(out)
    })
    .await;
    match result {
        Ok(list) => json_body(StatusCode::OK, json!({ "runs": list })),
        Err(r) => r,
    }
}

async fn get_run<S: StudioApi>(State(state): St<S>, Path(id): Path<i64>) -> Response {
    match with_store(&state, move |svc| Ok(run_json(&svc.store.get_run(id)?, &svc.store.run_counts(id)?))).await {
        Ok(body) => json_body(StatusCode::OK, body),
        Err(r) => r,
    }
}

fn job_json(j: &crate::store::JobRow) -> Value {
    json!({
        "id": j.id, "run": j.run_id, "line": j.line, "phone": j.phone, "state": j.state, "reason": j.reason,
        "execution_sid": j.execution_sid, "attempts": j.attempts, "due_at": time(Some(j.due_at)),
        "expires_at": time(j.expires_at), "sent_at": time(j.sent_at), "finished_at": time(j.finished_at),
        "last_error": j.last_error, "execution_ended_at": time(j.execution_ended_at), "ended_reason": j.ended_reason,
    })
}

async fn jobs<S: StudioApi>(
    State(state): St<S>,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = q.get("state").cloned();
    if let Some(s) = &filter
        && s.parse::<crate::domain::JobState>().is_err()
    {
        return error(StatusCode::BAD_REQUEST, format!("unknown state {s:?}"));
    }
    let after = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0i64);
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100u32).clamp(1, 1000);
    let result = with_store(&state, move |svc| {
        svc.store.get_run(id)?;
        svc.store.jobs_page(id, filter.as_deref(), after, limit)
    })
    .await;
    match result {
        Ok(page) => {
            let next = (page.len() as u32 == limit).then(|| page.last().map(|j| j.id)).flatten();
            json_body(
                StatusCode::OK,
                json!({ "jobs": page.iter().map(job_json).collect::<Vec<_>>(), "next_after": next }),
            )
        }
        Err(r) => r,
    }
}

async fn problems<S: StudioApi>(State(state): St<S>, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(20u32).clamp(1, 200);
    match with_store(&state, move |svc| svc.store.recent_problems(limit)).await {
        Ok(list) => json_body(StatusCode::OK, json!({ "jobs": list.iter().map(job_json).collect::<Vec<_>>() })),
        Err(r) => r,
    }
}

async fn control<S: StudioApi>(State(state): St<S>, Path((id, action)): Path<(i64, String)>) -> Response {
    let Some(action) = Action::parse(&action) else {
        return error(StatusCode::NOT_FOUND, format!("unknown action {action:?}; use pause, resume or cancel"));
    };
    let service = Arc::clone(&state.service);
    let result = tokio::task::spawn_blocking(move || {
        let now = service.dispatcher_now_ms();
        control_run(&service.store, id, action, now)
    })
    .await;
    match result {
        Ok(Ok((from, to))) => {
            state.service.wake.notify_one();
            json_body(StatusCode::OK, json!({ "id": id, "previous": from, "state": to.as_str() }))
        }
        Ok(Err(ControlError::Store(StoreError::RunNotFound(_)))) => {
            error(StatusCode::NOT_FOUND, format!("run {id} not found"))
        }
        Ok(Err(e @ ControlError::NotAllowed { .. })) => error(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
    if !webhook::signature_is_valid(token, &url, signature) {
        return forbidden("bad signature");
    }
    if !webhook::body_hash_is_valid(uri.query().unwrap_or(""), &body) {
        return forbidden("bodySHA256 does not match the body");
    }
    let (count, ended) = match webhook::parse_events(&body) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let now = state.service.dispatcher_now_ms();
    let ended_count = ended.len();
    let result = with_store(&state, move |svc| {
        let mut woken = 0;
        for e in &ended {
            let (_, w) = svc.store.record_execution_end(
                &e.execution_sid,
                e.ended_at.unwrap_or(now),
                e.ended_reason.as_deref(),
                now,
            )?;
            woken += w;
        }
        Ok(woken)
    })
    .await;
    match result {
        Ok(woken) => {
            if woken > 0 {
                state.service.dispatcher.wake_all();
            }
            json_body(StatusCode::OK, json!({ "accepted": count, "ended": ended_count, "woken": woken }))
        }
        Err(r) => r,
    }
}
