//! The simulator's Execution endpoints: create (with the rate cap, injected
//! faults and the one-active-Execution rule, and the start of its run when
//! its Flow is known), list with Studio's filters and paging, fetch, end
//! (update or delete) and context, plus the `/_simulator/executions` dump and
//! `/_simulator/stats` counts that tests in another process read.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::run::base_context;
use super::{
    Shared, SharedState, SimExecution, SimState, authed_form, authenticate, base_url, json_response, lock, read_form,
    too_many_requests, twilio_error,
};

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

pub(super) async fn create_execution(
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
/// new Execution (running, when its Flow is known, whatever answer follows).
/// `Ok((body, Some(delay)))` asks for a slow answer.
#[allow(clippy::too_many_arguments)]
fn commit_create(
    shared: &Arc<Shared>,
    flow: &str,
    to: &str,
    from: &str,
    parameters: Value,
    account: &str,
    base: &str,
) -> Result<(Value, Option<Duration>), Response> {
    // Only what a create needs: the whole configuration holds every reply.
    let (lifetime, rate_cap, conflict_names_sid, faults) = {
        let config = lock(&shared.config);
        (config.lifetime, config.rate_cap, config.conflict_names_sid, config.faults.clone())
    };
    let mut state = lock(&shared.state);
    let now = Instant::now();
    state.expire(lifetime, now);
    state.fault_before_create(&faults)?;
    if let Some(cap) = rate_cap {
        while state.recent_creates.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            state.recent_creates.pop_front();
        }
        if state.recent_creates.len() >= cap as usize {
            state.throttled += 1;
            return Err(too_many_requests());
        }
        state.recent_creates.push_back(now);
    }
    if let Some(&index) = state.active.get(&(flow.to_string(), to.to_string())) {
        state.conflicts += 1;
        let sid = state.executions[index].sid.clone();
        let message = if conflict_names_sid {
            format!("Execution {sid} is already active for this contact")
        } else {
            "Execution is already active for this contact".to_string()
        };
        return Err(twilio_error(StatusCode::CONFLICT, 20409, &message));
    }
    let sid = state.insert(flow, to, from, parameters, account, now);
    state.start_run(shared, &sid);
    let body = execution_json(&state.executions[state.by_sid[&sid]], base);
    let slow = state.fault_after_create(&faults)?;
    Ok((body, slow))
}

struct ListQuery {
    status: Option<String>,
    date_created_from: Option<String>,
    date_created_to: Option<String>,
}

pub(super) async fn list_executions(
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
    let lifetime = shared.lifetime();
    let mut state = lock(&shared.state);
    state.expire(lifetime, Instant::now());
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
    let (range, meta) = paged(&query, &format!("{base}/v2/Flows/{flow}/Executions"), matching.len(), "executions");
    let items: Vec<Value> = matching[range].iter().map(|e| execution_json(e, &base)).collect();
    json_response(StatusCode::OK, json!({ "executions": items, "meta": meta }))
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

pub(super) async fn fetch_execution(
    State(shared): State<SharedState>,
    Path((flow, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticate(&shared, &headers) {
        return r;
    }
    let lifetime = shared.lifetime();
    let mut state = lock(&shared.state);
    state.expire(lifetime, Instant::now());
    match find(&state, &flow, &sid) {
        Ok(e) => json_response(StatusCode::OK, execution_json(e, &base_url(&headers))),
        Err(r) => r,
    }
}

pub(super) async fn update_execution(
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
    let lifetime = shared.lifetime();
    let mut state = lock(&shared.state);
    state.expire(lifetime, Instant::now());
    if let Err(r) = find(&state, &flow, &sid) {
        return r;
    }
    let e = state.end(&sid, true).expect("found just above").clone();
    json_response(StatusCode::OK, execution_json(&e, &base_url(&headers)))
}

pub(super) async fn delete_execution(
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

/// Authenticates, then answers with what `answer` makes of the Execution, or
/// Studio's 401 or 404.
pub(super) fn with_execution(
    shared: &Shared,
    headers: &HeaderMap,
    flow: &str,
    sid: &str,
    answer: impl FnOnce(&SimState, &SimExecution) -> Response,
) -> Response {
    if let Err(r) = authenticate(shared, headers) {
        return r;
    }
    let state = lock(&shared.state);
    match find(&state, flow, sid) {
        Ok(e) => answer(&state, e),
        Err(r) => r,
    }
}

pub(super) async fn execution_context(
    State(shared): State<SharedState>,
    Path((flow, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    with_execution(&shared, &headers, &flow, &sid, |state, e| {
        let base = base_url(&headers);
        let context = state.runs.get(&sid).map_or_else(|| base_context(e), |run| run.context(e));
        json_response(
            StatusCode::OK,
            json!({
                "account_sid": e.account_sid,
                "context": context,
                "flow_sid": e.flow_sid,
                "execution_sid": e.sid,
                "url": format!("{base}/v2/Flows/{}/Executions/{}/Context", e.flow_sid, e.sid),
            }),
        )
    })
}

pub(super) async fn dump_executions(State(shared): State<SharedState>) -> Response {
    let lifetime = shared.lifetime();
    let mut state = lock(&shared.state);
    state.expire(lifetime, Instant::now());
    json_response(StatusCode::OK, serde_json::to_value(&state.executions).unwrap_or(Value::Null))
}

/// Counts, for benchmarks and tests that live in another process.
pub(super) async fn stats(State(shared): State<SharedState>) -> Response {
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

/// One page of a list at `list_url`, as Studio pages: `PageSize` (50 unless
/// given, 1 to 1000) and `Page` from the query; the range of the `total` items
/// it holds, and its `meta` with the URLs of this, the first, the previous and
/// the next page, every other query parameter kept.
pub(super) fn paged(query: &[(String, String)], list_url: &str, total: usize, key: &str) -> (Range<usize>, Value) {
    let number = |k: &str| query.iter().find(|(name, _)| name == k).and_then(|(_, v)| v.parse::<usize>().ok());
    let page_size = number("PageSize").unwrap_or(50).clamp(1, 1000);
    let page = number("Page").unwrap_or(0);
    let mut kept: Vec<(String, String)> =
        query.iter().filter(|(k, _)| k != "Page" && k != "PageToken" && k != "PageSize").cloned().collect();
    kept.push(("PageSize".into(), page_size.to_string()));
    let page_url = |n: usize| {
        let mut qs = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            qs.append_pair(k, v);
        }
        qs.append_pair("Page", &n.to_string());
        qs.append_pair("PageToken", &format!("PT{n}"));
        format!("{list_url}?{}", qs.finish())
    };
    let start = page.saturating_mul(page_size).min(total);
    let end = start.saturating_add(page_size).min(total);
    let meta = json!({
        "page": page,
        "page_size": page_size,
        "first_page_url": page_url(0),
        "previous_page_url": (page > 0).then(|| page_url(page - 1)),
        "next_page_url": (end < total).then(|| page_url(page + 1)),
        "url": page_url(page),
        "key": key,
    });
    (start..end, meta)
}
