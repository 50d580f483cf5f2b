//! The service's HTTP surface (this far): health and run control.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::Service;
use super::control::{Action, ControlError, control_run};
use crate::store::StoreError;
use crate::studio::StudioApi;

struct HttpState<S: StudioApi> {
    service: Arc<Service<S>>,
    /// Required as `Authorization: Bearer …` on the API when set.
    admin_token: Option<String>,
}

/// The service's routes. `admin_token`, when set, guards everything but
/// `/healthz` (and, later, the webhook).
pub fn router<S: StudioApi>(service: Arc<Service<S>>, admin_token: Option<String>) -> Router {
    let state = Arc::new(HttpState { service, admin_token });
    let api = Router::new()
        .route("/api/runs/{id}", get(get_run::<S>))
        .route("/api/runs/{id}/{action}", post(control::<S>))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_token::<S>));
    Router::new().route("/healthz", get(healthz::<S>)).merge(api).with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": message.into() }).to_string())
        .into_response()
}

async fn require_token<S: StudioApi>(State(state): State<Arc<HttpState<S>>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.admin_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
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

async fn healthz<S: StudioApi>(State(state): State<Arc<HttpState<S>>>) -> Response {
    let store = state.service.store.clone();
    let writable = tokio::task::spawn_blocking(move || store.is_writable()).await.unwrap_or(false);
    if writable {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "ledger not writable\n").into_response()
    }
}

async fn get_run<S: StudioApi>(State(state): State<Arc<HttpState<S>>>, Path(id): Path<i64>) -> Response {
    let store = state.service.store.clone();
    let found =
        tokio::task::spawn_blocking(move || store.get_run(id).and_then(|r| Ok((r, store.run_counts(id)?)))).await;
    match found {
        Ok(Ok((run, counts))) => {
            let mut body = serde_json::to_value(&run).unwrap_or_default();
            body["jobs"] = serde_json::to_value(&counts.0).unwrap_or_default();
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Ok(Err(StoreError::RunNotFound(_))) => error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn control<S: StudioApi>(
    State(state): State<Arc<HttpState<S>>>,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
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
            let body = json!({ "id": id, "previous": from, "state": to.as_str() });
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Ok(Err(ControlError::Store(StoreError::RunNotFound(_)))) => {
            error(StatusCode::NOT_FOUND, format!("run {id} not found"))
        }
        Ok(Err(e @ ControlError::NotAllowed { .. })) => error(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
