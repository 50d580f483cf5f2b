//! `POST /api/campaigns/{name}/runs`: start a run now, with the campaign's
//! CSV (empty body), a CSV body (`text/csv`), or a JSON array of contact
//! objects (`application/json`). An `Idempotency-Key` header makes a retried
//! request answer with the run the first one made.

use super::*;
use crate::service::{ApiRun, ApiRunError, Contacts};

/// The longest idempotency key taken (Stripe's limit).
const MAX_KEY_LEN: usize = 255;

/// The largest body taken: about 100,000 contacts of a few columns. Bigger
/// lists belong in a campaign's CSV file.
pub(super) const MAX_CONTACTS_BODY: usize = 16 * 1024 * 1024;

pub(super) async fn start_run<S: StudioApi>(
    State(state): St<S>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Response {
    let svc = &state.service;
    if !svc.campaigns().iter().any(|c| c.name == name) {
        return unknown_campaign(&name);
    }
    let run_key = match idempotency_key(&headers) {
        Ok(Some(key)) => format!("api-key:{key}"),
        Ok(None) => format!("api:{}:{}", svc.now_ms(), rand::random::<u64>()),
        Err(refusal) => return *refusal,
    };
    let contacts = match contacts_of(&headers, &body) {
        Ok(contacts) => contacts,
        Err((status, code, message)) => return error(status, code, message),
    };
    match svc.start_api_run(&name, run_key, contacts).await {
        Ok(started) => {
            let (id, status) = match started {
                ApiRun::New(id) => (id, StatusCode::CREATED),
                ApiRun::Existing(id) => (id, StatusCode::OK),
            };
            let run = match svc.store.get_run(id).await {
                Ok(run) => run,
                Err(e) => return store_error(e),
            };
            match run_view(svc, &run).await {
                Ok(view) => {
                    let mut response = json_body(status, view);
                    if let Ok(location) = HeaderValue::from_str(&format!("/api/runs/{id}")) {
                        response.headers_mut().insert(header::LOCATION, location);
                    }
                    response
                }
                Err(e) => store_error(e),
            }
        }
        Err(e) => api_error(e),
    }
}

fn unknown_campaign(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", format!("no campaign named {name:?} is in force"))
}

/// The request's `Idempotency-Key`, trimmed, if it has one; a refusal when
/// it is empty, too long or not visible ASCII.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(key)) if !key.trim().is_empty() && key.len() <= MAX_KEY_LEN => Ok(Some(key.trim().to_string())),
        Some(_) => {
            Err(Box::new(bad_request(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"))))
        }
    }
}

/// A refused start or push, in the API's error shape.
fn api_error(e: ApiRunError) -> Response {
    match e {
        ApiRunError::UnknownCampaign(name) => unknown_campaign(&name),
        e @ ApiRunError::Flow(_) => error(StatusCode::CONFLICT, "flow_unresolved", e.to_string()),
        e @ ApiRunError::NotPushed(_) => error(StatusCode::CONFLICT, "not_an_api_campaign", e.to_string()),
        ApiRunError::Contacts(message) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_contacts", message),
        ApiRunError::NothingValid(rows) => json_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": {
                "code": "invalid_rows",
                "message": format!("none of the {} contacts can be sent; nothing was started", rows.len()),
                "rows": rows,
            }}),
        ),
        ApiRunError::Store(e) => store_error(e),
    }
}

/// The most contacts one push may carry.
pub(super) const MAX_PUSH: usize = 1_000;

/// `POST /api/campaigns/{name}/contacts`: one contact object, or an array of
/// up to [`MAX_PUSH`], each with the phone column, the template columns and an
/// optional `"key"`; they join the campaign's open run at once. A contact
/// whose key was pushed before answers with the job it made (so does a retry
/// of a request with the same `Idempotency-Key`).
pub(super) async fn push_contacts<S: StudioApi>(
    State(state): St<S>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Response {
    let svc = &state.service;
    if !svc.campaigns().iter().any(|c| c.name == name) {
        return unknown_campaign(&name);
    }
    let request_key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(refusal) => return *refusal,
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return bad_request(format!("body: {e}; send a contact object or an array of them")),
    };
    let mut list = match value {
        Value::Array(list) => list,
        one @ Value::Object(_) => vec![one],
        _ => return bad_request("body: send a contact object or an array of them"),
    };
    if list.is_empty() || list.len() > MAX_PUSH {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_contacts",
            format!("a push carries 1 to {MAX_PUSH} contacts, not {}", list.len()),
        );
    }
    // `key` identifies the contact for retries; it is not a column of its row.
    let mut keys = Vec::with_capacity(list.len());
    for (i, contact) in list.iter_mut().enumerate() {
        let given = match contact.as_object_mut().map(|o| o.remove("key")) {
            Some(Some(Value::String(key))) if !key.is_empty() && key.len() <= MAX_KEY_LEN => Some(key),
            Some(Some(Value::Number(n))) => Some(n.to_string()),
            Some(None) | None => None,
            Some(Some(_)) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_contacts",
                    format!("contacts[{i}].key must be a string of 1 to {MAX_KEY_LEN} characters or a number"),
                );
            }
        };
        keys.push(
            given.map(|k| format!("key:{k}")).or_else(|| request_key.as_ref().map(|r| format!("request:{r}:{i}"))),
        );
    }
    let csv = match crate::contacts::csv_from_json(&Value::Array(list)) {
        Ok(csv) => csv,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_contacts", e),
    };
    match svc.push_contacts(&name, csv, keys).await {
        Ok(pushed) => {
            let contacts: Vec<Value> = pushed
                .contacts
                .iter()
                .enumerate()
                .map(|(index, c)| {
                    json!({ "index": index, "job": c.job, "result": c.outcome, "state": c.state, "reason": c.reason })
                })
                .collect();
            let created = pushed.contacts.iter().any(|c| c.outcome == crate::store::PushOutcome::Created);
            json_body(
                if created { StatusCode::CREATED } else { StatusCode::OK },
                json!({ "run": pushed.run, "contacts": contacts }),
            )
        }
        Err(e) => api_error(e),
    }
}

/// The request's contacts, by its content type; an empty body means the
/// campaign's own CSV.
fn contacts_of(headers: &HeaderMap, body: &Bytes) -> Result<Contacts, (StatusCode, &'static str, String)> {
    if body.is_empty() {
        return Ok(Contacts::CampaignFile);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "text/csv" => Ok(Contacts::Given(body.to_vec())),
        "application/json" => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| (StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}")))?;
            crate::contacts::csv_from_json(&value)
                .map(Contacts::Given)
                .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, "invalid_contacts", e))
        }
        _ => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send contacts as text/csv or application/json (an array of objects), or no body for the campaign's CSV"
                .into(),
        )),
    }
}
