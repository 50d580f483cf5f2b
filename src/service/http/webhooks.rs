//! Twilio's webhooks: Event Streams deliveries (`POST /webhooks/studio`) and
//! inbound messages with Advanced Opt-Out (`POST /webhooks/messaging`), each
//! checked against Twilio's signature before anything is done.

use super::*;

/// Checks a Twilio webhook's `X-Twilio-Signature`: an HMAC, keyed with the
/// auth token, over the URL Twilio posted to (`FLOWCAST_PUBLIC_URL` and this
/// request's path and query, else `http://{Host}`), followed, for a form post,
/// by every field. Why it fails, for the 403.
fn check_signature(
    config: &HttpConfig,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    fields: &[(String, String)],
) -> Result<(), &'static str> {
    let token =
        config.webhook_token.as_ref().ok_or("no auth token configured to check signatures (set TWILIO_AUTH_TOKEN)")?;
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).ok_or("unsigned request")?;
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or(uri.path());
    let base = match &config.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    let settings = headers.get(webhook::SIGNATURE_SETTINGS_HEADER).map(|v| v.to_str().unwrap_or_default());
    let algorithm = SignatureAlgorithm::from_settings(settings)
        .ok_or("X-Twilio-Webhooks-Signature-Settings names no supported algorithm (HMAC_SHA1, HMAC_SHA256)")?;
    let signed = webhook::form_signing_string(&format!("{base}{path_and_query}"), fields);
    if webhook::signature_is_valid(algorithm, token.expose(), &signed, signature) {
        Ok(())
    } else {
        Err("bad signature")
    }
}

/// The 403 for a webhook delivery refused, logged with why.
fn refused(why: &str) -> Response {
    tracing::warn!(reason = why, "webhook refused");
    error(StatusCode::FORBIDDEN, "forbidden", why)
}

pub(super) async fn studio_webhook<S: StudioApi>(
    State(state): St<S>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Response {
    if let Err(why) = check_signature(&state.config, &uri, &headers, &[]) {
        return refused(why);
    }
    if !webhook::body_hash_is_valid(uri.query().unwrap_or(""), &body) {
        return refused("bodySHA256 does not match the body");
    }
    let (count, ended) = match webhook::parse_events(&body) {
        Ok(parsed) => parsed,
        Err(e) => return bad_request(e),
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

/// `POST /webhooks/messaging`: Twilio's inbound-message webhook, signed like
/// every Twilio webhook (over the URL and every posted field). With Advanced
/// Opt-Out, `OptOutType=STOP` suppresses `From` for every campaign and
/// `OptOutType=START` lifts it; other messages are accepted and ignored.
pub(super) async fn messaging_webhook<S: StudioApi>(
    State(state): St<S>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Response {
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    if let Err(why) = check_signature(&state.config, &uri, &headers, &fields) {
        return refused(why);
    }
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let kind = field("OptOutType").map(str::to_ascii_uppercase);
    let Some(from) = field("From").and_then(|f| Phone::parse(f, None).ok()) else {
        return empty_twiml();
    };
    let svc = &state.service;
    let now = svc.now_ms();
    let result = match kind.as_deref() {
        Some("STOP") => {
            let reason = format!("opt-out ({})", field("Body").map(str::trim).unwrap_or("STOP"));
            svc.store.suppress(&from, &Scope::All, Some(&reason), "messaging webhook", now).await.map(|_| "suppressed")
        }
        // An opt-in lifts only what Twilio's opt-outs put there; an entry added
        // by hand or imported (a do-not-contact request) stays.
        Some("START") => svc.store.unsuppress_from(&from, &["messaging webhook", "studio"]).await.map(|_| "lifted"),
        _ => Ok("none"),
    };
    match result {
        Ok(action) => {
            if action != "none" {
                tracing::info!(phone = %from.masked(), action, "opt-out webhook");
            }
            empty_twiml()
        }
        Err(e) => store_error(e),
    }
}

/// Twilio reads a messaging webhook's answer as TwiML; an empty document
/// sends no reply.
fn empty_twiml() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], "<Response/>").into_response()
}
