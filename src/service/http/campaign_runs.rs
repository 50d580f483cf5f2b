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
    body: Bytes,
) -> Response {
    let svc = &state.service;
    if !svc.campaigns().iter().any(|c| c.name == name) {
        return error(StatusCode::NOT_FOUND, "not_found", format!("no campaign named {name:?} is in force"));
    }
    let run_key = match headers.get("idempotency-key") {
        None => format!("api:{}:{}", svc.now_ms(), rand::random::<u64>()),
        Some(value) => match value.to_str() {
            Ok(key) if !key.trim().is_empty() && key.len() <= MAX_KEY_LEN => format!("api-key:{}", key.trim()),
            _ => {
                return bad_request(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"));
            }
        },
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
            match run_view(&svc.store, &run).await {
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
        Err(ApiRunError::UnknownCampaign(name)) => {
            error(StatusCode::NOT_FOUND, "not_found", format!("no campaign named {name:?} is in force"))
        }
        Err(e @ ApiRunError::Flow(_)) => error(StatusCode::CONFLICT, "flow_unresolved", e.to_string()),
        Err(ApiRunError::Contacts(message)) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_contacts", message),
        Err(ApiRunError::NothingValid(rows)) => json_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": {
                "code": "invalid_rows",
                "message": format!("none of the {} contacts can be sent; nothing was started", rows.len()),
                "rows": rows,
            }}),
        ),
        Err(ApiRunError::Store(e)) => store_error(e),
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
