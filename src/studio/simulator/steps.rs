//! The Steps endpoints of an Execution: the list (paged as Studio pages, with
//! `PageSize` and `meta.next_page_url`), one Step, and one Step's context.
//!
//! Studio promises no order for Steps, so the list is served in SID order,
//! which is random: a client must follow `transitioned_from` and
//! `transitioned_to` rather than trust positions or the second-precision
//! `date_created`. An Execution the simulator does not interpret has no Steps.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::executions::{paged, with_execution};
use super::run::SimStep;
use super::{Shared, SharedState, SimExecution, base_url, json_response, twilio_error};

fn step_url(e: &SimExecution, step: &SimStep, base: &str) -> String {
    format!("{base}/v2/Flows/{}/Executions/{}/Steps/{}", e.flow_sid, e.sid, step.sid)
}

fn step_json(e: &SimExecution, step: &SimStep, base: &str) -> Value {
    let url = step_url(e, step, base);
    json!({
        "sid": step.sid,
        "account_sid": e.account_sid,
        "flow_sid": e.flow_sid,
        "execution_sid": e.sid,
        "parent_step_sid": null,
        "name": step.name,
        "context": step.context,
        "transitioned_from": step.from,
        "transitioned_to": step.to,
        "type": step.widget_type,
        "date_created": step.date_created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "date_updated": null,
        "url": url,
        "links": { "step_context": format!("{url}/Context") },
    })
}

pub(super) async fn list_steps(
    State(shared): State<SharedState>,
    Path((flow, sid)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    with_execution(&shared, &headers, &flow, &sid, |state, e| {
        let mut steps: Vec<&SimStep> = state.runs.get(&sid).map(|run| run.steps.iter().collect()).unwrap_or_default();
        steps.sort_by(|a, b| a.sid.cmp(&b.sid));
        let base = base_url(&headers);
        let list_url = format!("{base}/v2/Flows/{flow}/Executions/{sid}/Steps");
        let (range, meta) = paged(&query, &list_url, steps.len(), "steps");
        let items: Vec<Value> = steps[range].iter().map(|step| step_json(e, step, &base)).collect();
        json_response(StatusCode::OK, json!({ "steps": items, "meta": meta }))
    })
}

/// Answers with what `view` makes of one Step, or Studio's 401 or 404.
fn answer_step(
    shared: &Shared,
    headers: &HeaderMap,
    (flow, sid, step): (String, String, String),
    view: fn(&SimExecution, &SimStep, &str) -> Value,
) -> Response {
    with_execution(shared, headers, &flow, &sid, |state, e| {
        match state.runs.get(&sid).and_then(|run| run.steps.iter().find(|s| s.sid == step)) {
            Some(found) => json_response(StatusCode::OK, view(e, found, &base_url(headers))),
            None => twilio_error(
                StatusCode::NOT_FOUND,
                20404,
                &format!("The requested resource /v2/Flows/{flow}/Executions/{sid}/Steps/{step} was not found"),
            ),
        }
    })
}

pub(super) async fn fetch_step(
    State(shared): State<SharedState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    answer_step(&shared, &headers, path, step_json)
}

pub(super) async fn step_context(
    State(shared): State<SharedState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    answer_step(&shared, &headers, path, |e, step, base| {
        json!({
            "account_sid": e.account_sid,
            "context": step.context,
            "execution_sid": e.sid,
            "flow_sid": e.flow_sid,
            "step_sid": step.sid,
            "url": format!("{}/Context", step_url(e, step, base)),
        })
    })
}
