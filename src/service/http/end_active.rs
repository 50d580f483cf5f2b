//! `POST /api/runs/{id}/cancel?end_active=true`: after the cancel, the run's
//! Executions still active in Studio are ended by
//! [`crate::runs::end_active`], the code `flowcast cancel --end-active` runs.
//!
//! Ending goes at the service's read pace (shared with reading outcomes back),
//! so a large run can take longer than a request may. The work runs on its
//! own task: the answer comes when it is done (200, with `ended` and
//! `end_failed`), or, when it is not done in time, with the counts so far and
//! `"ending": true` (202) while it goes on; its end is logged either way.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{HttpState, Params, error, json_body, store_error};
use crate::runs::{EndError, EndProgress, EndSettings, RunEnded};
use crate::studio::StudioApi;

/// Reads `end_active` from the query: absent is `false`.
pub(super) fn requested(query: &Params) -> Result<bool, String> {
    match query.get("end_active") {
        None => Ok(false),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(format!("query parameter end_active: {other:?} is not true or false")),
    }
}

/// Ends run `id`'s active Executions and answers with `body` (the cancel's
/// answer) and what the ending did.
pub(super) async fn end_after_cancel<S: StudioApi>(state: &Arc<HttpState<S>>, id: i64, mut body: Value) -> Response {
    let service = Arc::clone(&state.service);
    let progress = Arc::new(EndProgress::default());
    let settings = EndSettings {
        concurrency: service.settings.collect.concurrency,
        // The dispatcher's creates in flight answer within its request
        // timeout and are recorded right after.
        settle: service.dispatcher.settings.ambiguous_settle + Duration::from_secs(5),
        asked_by: format!("POST /api/runs/{id}/cancel?end_active=true"),
    };
    let mut work = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let studio = service.dispatcher.studio();
            let reads = service.collector.reads();
            let result =
                crate::runs::end_active(&*studio, &service.store, id, &settings, reads, &progress, |_| {}).await;
            match &result {
                Ok(RunEnded { counts, in_flight }) => tracing::info!(
                    run = id,
                    ended = counts.ended,
                    already_ended = counts.already_ended,
                    failed = counts.failed,
                    in_flight,
                    "ended the run's active executions"
                ),
                Err(e) => tracing::warn!(run = id, error = %e, "ending the run's active executions stopped"),
            }
            result
        })
    };
    // Answered before the request's own time limit cuts it off.
    let answer_within = state.config.request_timeout.mul_f64(0.75);
    let finished = match tokio::time::timeout(answer_within, &mut work).await {
        Ok(joined) => joined,
        Err(_) => {
            let so_far = progress.counts();
            body["ending"] = json!(true);
            body["ended"] = json!(so_far.ended);
            body["end_failed"] = json!(so_far.failed);
            body["already_ended"] = json!(so_far.already_ended);
            return json_body(StatusCode::ACCEPTED, body);
        }
    };
    match finished {
        Ok(Ok(RunEnded { counts, in_flight })) => {
            body["ended"] = json!(counts.ended);
            body["end_failed"] = json!(counts.failed);
            body["already_ended"] = json!(counts.already_ended);
            body["in_flight"] = json!(in_flight);
            json_body(StatusCode::OK, body)
        }
        Ok(Err(EndError::Studio(e))) => error(
            StatusCode::BAD_GATEWAY,
            "studio_error",
            format!(
                "run {id} is {}, but its active Executions were not all ended: {e}",
                body["state"].as_str().unwrap_or("cancelled")
            ),
        ),
        Ok(Err(EndError::Store(e))) => store_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("ending run {id}'s executions: {e}")),
    }
}
