//! The suppression list over HTTP: `GET`, `POST /api/suppressions` and
//! `DELETE /api/suppressions/{phone}`.

use super::*;

pub(super) async fn list_suppressions<S: StudioApi>(State(state): St<S>, RawQuery(query): RawQuery) -> Response {
    let page = match Page::from_query(&Params::new(query), 100, 1000) {
        Ok(page) => page,
        Err(e) => return bad_request(e),
    };
    match state.service.store.suppressions(page.after, page.limit).await {
        Ok(list) => {
            let next = page.next_after(list.iter().map(|s| s.id));
            let entries: Vec<Value> = list.iter().map(views::suppression).collect();
            json_body(StatusCode::OK, json!({ "suppressions": entries, "next_after": next }))
        }
        Err(e) => store_error(e),
    }
}

/// `POST /api/suppressions` with `{"phone", "scope", "reason"}` (scope
/// defaults to `all`): 201 when added, 200 when it was already there.
pub(super) async fn add_suppression<S: StudioApi>(State(state): St<S>, ApiBody(body): ApiBody) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        phone: String,
        scope: Option<String>,
        reason: Option<String>,
    }
    let entry: Entry = match serde_json::from_slice(&body) {
        Ok(entry) => entry,
        Err(e) => {
            return bad_request(format!(
                "body: {e}; send {{\"phone\": \"+15017122661\", \"scope\": \"all\", \"reason\": \"…\"}}"
            ));
        }
    };
    let phone = match Phone::parse(&entry.phone, None) {
        Ok(phone) => phone,
        Err(e) => return bad_request(format!("phone: {e}; write it in E.164 (+15017122661)")),
    };
    let scope = match Scope::parse(entry.scope.as_deref().unwrap_or("all")) {
        Ok(scope) => scope,
        Err(e) => return bad_request(format!("scope: {e}")),
    };
    let svc = &state.service;
    match svc.store.suppress(&phone, &scope, entry.reason.as_deref(), "api", svc.now_ms()).await {
        Ok(added) => json_body(
            if added { StatusCode::CREATED } else { StatusCode::OK },
            json!({ "phone": phone.as_str(), "scope": scope.as_text(), "added": added }),
        ),
        Err(e) => store_error(e),
    }
}

/// `DELETE /api/suppressions/{phone}[?scope=S]`: lifts the phone's entries.
pub(super) async fn remove_suppression<S: StudioApi>(
    State(state): St<S>,
    ApiPath(phone): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let phone = match Phone::parse(&phone, None) {
        Ok(phone) => phone,
        Err(e) => return bad_request(format!("phone: {e}")),
    };
    let params = Params::new(query);
    let scope = match params.get("scope").map(Scope::parse).transpose() {
        Ok(scope) => scope,
        Err(e) => return bad_request(format!("scope: {e}")),
    };
    match state.service.store.unsuppress(&phone, scope.as_ref()).await {
        Ok(0) => error(StatusCode::NOT_FOUND, "not_found", format!("{phone} is not suppressed")),
        Ok(removed) => json_body(StatusCode::OK, json!({ "phone": phone.as_str(), "removed": removed })),
        Err(e) => store_error(e),
    }
}
