//! The simulator's Flow endpoints (flows as code): validate, create, update,
//! fetch and list Flows, their revisions and their test users. Flows live only
//! in memory, every revision's definition kept, so deploy tests can count them,
//! and Executions created on a Flow run its latest revision (see `run`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::{SharedState, authed_form, authenticate, base_url, json_response, lock, twilio_error};

/// A Flow the simulator holds, with every revision's definition.
#[derive(Debug, Clone)]
pub(super) struct SimFlow {
    sid: String,
    name: String,
    status: String,
    pub(super) revisions: Vec<Value>,
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
    for (i, state) in states.iter().enumerate() {
        for (j, t) in state["transitions"].as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
            let next = t["next"].as_str().unwrap_or("");
            if !next.is_empty() && !states.iter().any(|s| s["name"].as_str() == Some(next)) {
                errors.push(json!({
                    "message": format!("transition to {next:?}, which is not a widget of this flow"),
                    "property_path": format!("#/states/{i}/transitions/{j}/next"),
                }));
            }
        }
    }
    let initial = definition["initial_state"].as_str().unwrap_or("");
    if !states.iter().any(|s| s["name"].as_str() == Some(initial)) {
        errors.push(json!({ "message": format!("initial_state {initial:?} is not a state"), "property_path": "#/initial_state" }));
    }
    if errors.is_empty() { Ok(definition) } else { Err(invalid(errors)) }
}

/// Adds `definition` as Flow `sid`'s latest revision, creating the Flow
/// (published) when it is new: how a test or a rehearsal installs a Flow
/// without going through the API.
pub(super) fn install(flows: &mut HashMap<String, SimFlow>, sid: &str, name: &str, definition: Value) {
    let flow = flows.entry(sid.to_string()).or_insert_with(|| SimFlow {
        sid: sid.to_string(),
        name: name.to_string(),
        status: "published".into(),
        revisions: Vec::new(),
        messages: Vec::new(),
        test_users: Vec::new(),
    });
    flow.name = name.to_string();
    flow.revisions.push(definition);
    flow.messages.push("installed".into());
}

pub(super) async fn validate_flow(State(shared): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match authed_form(&shared, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    match check_definition(&form) {
        Ok(_) => json_response(StatusCode::OK, json!({ "valid": true })),
        Err(r) => r,
    }
}

pub(super) async fn create_flow(State(shared): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
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

pub(super) async fn update_flow(
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
        return flow_not_found(&sid);
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

pub(super) async fn fetch_flow(
    State(shared): State<SharedState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    match state.flows.get(&sid) {
        Some(flow) => json_response(StatusCode::OK, flow_json(flow, &base_url(&headers))),
        None => flow_not_found(&sid),
    }
}

pub(super) async fn list_flows(State(shared): State<SharedState>, headers: HeaderMap) -> Response {
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

pub(super) async fn flow_revisions(
    State(shared): State<SharedState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    let Some(flow) = state.flows.get(&sid) else {
        return flow_not_found(&sid);
    };
    let revisions: Vec<Value> = (1..=flow.revisions.len()).rev().map(|n| revision_json(flow, n)).collect();
    json_response(
        StatusCode::OK,
        json!({ "revisions": revisions, "meta": { "next_page_url": null, "key": "revisions" } }),
    )
}

pub(super) async fn flow_revision(
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

pub(super) async fn get_test_users(
    State(shared): State<SharedState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let state = lock(&shared.state);
    match state.flows.get(&sid) {
        Some(f) => json_response(StatusCode::OK, json!({ "sid": f.sid, "test_users": f.test_users })),
        None => flow_not_found(&sid),
    }
}

pub(super) async fn set_test_users(
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

fn flow_not_found(sid: &str) -> Response {
    twilio_error(StatusCode::NOT_FOUND, 20404, &format!("The requested resource /v2/Flows/{sid} was not found"))
}
