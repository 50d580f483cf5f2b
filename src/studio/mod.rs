//! The only HTTP to Twilio: the [`StudioApi`] trait, its reqwest client
//! [`HttpStudio`], the classification of Studio's answers into what the caller
//! does next, and the built-in [`simulator`].
//!
//! This file holds what every caller shares: the trait, the types it speaks in
//! and the error classes. The client is split by job so that each file reads on
//! its own: `client` (configuration, credentials, sending, paging, transport
//! errors), `executions` (the [`StudioApi`] calls) and `flows` (the Flow API).

mod client;
mod executions;
mod flows;
pub mod simulator;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{ExecutionSid, FlowSid};

pub use client::{Credentials, HttpStudio, StudioConfig, base_url};
pub use flows::{FlowInfo, FlowRevision};

/// An Execution as Studio describes it (the fields flowcast uses).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct Execution {
    pub sid: String,
    #[serde(default)]
    pub flow_sid: Option<String>,
    #[serde(default)]
    pub contact_channel_address: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub date_created: Option<String>,
}

impl Execution {
    pub fn is_active(&self) -> bool {
        self.status.as_deref() == Some("active")
    }
}

/// One Step of an Execution: a transition from one widget to the next. The
/// last Step of an ended Execution transitions to `Ended`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct Step {
    pub sid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub transitioned_from: Option<String>,
    #[serde(default)]
    pub transitioned_to: Option<String>,
    #[serde(default)]
    pub date_created: Option<String>,
    /// The Execution's context as this Step left it, when the list carries it
    /// (else ask for the Step's Context).
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

/// What a create sends: `To`, `From`, and `Parameters` as a JSON string.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub to: String,
    pub from: String,
    pub parameters: String,
}

/// Filters for listing a Flow's Executions.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<&'static str>,
    pub date_created_from: Option<chrono::DateTime<chrono::Utc>>,
    pub date_created_to: Option<chrono::DateTime<chrono::Utc>>,
    pub page_size: Option<u32>,
    /// Stop following pages once this many are found (newest first, as
    /// Studio lists them); `None`: every page.
    pub max: Option<usize>,
}

/// Twilio's error body, read from either shape it uses:
/// `{code, message, more_info, status}` or `{type, title, status, code, detail}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioError {
    pub status: u16,
    pub code: Option<i64>,
    pub message: String,
    pub more_info: Option<String>,
    /// Problems listed in the body's `details.errors` (a flow validation lists
    /// each with its `property_path`).
    pub details: Vec<String>,
}

impl TwilioError {
    /// Reads an error body; anything unreadable keeps the HTTP status and a
    /// short excerpt of the body.
    pub fn from_body(status: u16, body: &str) -> Self {
        #[derive(Deserialize)]
        struct Raw {
            code: Option<serde_json::Value>,
            message: Option<String>,
            more_info: Option<String>,
            title: Option<String>,
            detail: Option<String>,
            #[serde(rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            details: Option<serde_json::Value>,
        }
        match serde_json::from_str::<Raw>(body) {
            Ok(raw) => {
                let code = raw.code.and_then(|c| c.as_i64().or_else(|| c.as_str().and_then(|s| s.parse().ok())));
                let message = raw
                    .message
                    .or(match (raw.title, raw.detail) {
                        (Some(t), Some(d)) => Some(format!("{t}: {d}")),
                        (t, d) => t.or(d),
                    })
                    .unwrap_or_else(|| format!("HTTP {status}"));
                let details = raw
                    .details
                    .as_ref()
                    .and_then(|d| d["errors"].as_array())
                    .map(|errors| {
                        errors
                            .iter()
                            .map(|e| match (e["property_path"].as_str(), e["message"].as_str()) {
                                (Some(path), Some(m)) => format!("{path}: {m}"),
                                (None, Some(m)) => m.to_string(),
                                _ => e.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                TwilioError { status, code, message, more_info: raw.more_info.or(raw.kind), details }
            }
            Err(_) => {
                let excerpt: String = body.chars().take(200).collect();
                let message = if excerpt.trim().is_empty() { format!("HTTP {status}") } else { excerpt };
                TwilioError { status, code: None, message, more_info: None, details: Vec::new() }
            }
        }
    }
}

impl fmt::Display for TwilioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "HTTP {} (Twilio error {code}): {}", self.status, self.message),
            None => write!(f, "HTTP {}: {}", self.status, self.message),
        }
    }
}

/// A failed Studio call, classified by what the caller should do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StudioError {
    /// 409: the contact is in an active Execution (its SID when the body names it).
    #[error("conflict: {error}")]
    Conflict { error: TwilioError, active_sid: Option<ExecutionSid> },
    /// 429: not processed; safe to retry after a pause.
    #[error("throttled: {error}")]
    Throttled { error: TwilioError, retry_after: Option<Duration> },
    /// 401/403: the credentials were refused.
    #[error("unauthorised: {0}")]
    Unauthorized(TwilioError),
    /// 404: the Flow or Execution does not exist (for this account).
    #[error("not found: {0}")]
    NotFound(TwilioError),
    /// Any other 4xx: the request itself is wrong; retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(TwilioError),
    /// 5xx, timeouts, resets. `ambiguous`: the request may have been processed.
    #[error("transient: {message}")]
    Transient { message: String, status: Option<u16>, ambiguous: bool },
}

impl StudioError {
    /// The outcome's short name, as the audit trail and metrics use it.
    pub fn class(&self) -> &'static str {
        match self {
            StudioError::Conflict { .. } => "conflict",
            StudioError::Throttled { .. } => "throttled",
            StudioError::Unauthorized(_) => "unauthorised",
            StudioError::NotFound(_) => "not_found",
            StudioError::Invalid(_) => "invalid",
            StudioError::Transient { ambiguous: true, .. } => "ambiguous",
            StudioError::Transient { .. } => "transient",
        }
    }

    /// The HTTP status, when Studio answered at all.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            StudioError::Conflict { error, .. }
            | StudioError::Throttled { error, .. }
            | StudioError::Unauthorized(error)
            | StudioError::NotFound(error)
            | StudioError::Invalid(error) => Some(error.status),
            StudioError::Transient { status, .. } => *status,
        }
    }

    /// Classifies a non-2xx answer.
    pub fn from_response(status: u16, retry_after: Option<Duration>, body: &str, ambiguous_on_5xx: bool) -> Self {
        let error = TwilioError::from_body(status, body);
        match status {
            409 => StudioError::Conflict { active_sid: crate::domain::find_execution_sid(body), error },
            429 => StudioError::Throttled { error, retry_after },
            401 | 403 => StudioError::Unauthorized(error),
            404 => StudioError::NotFound(error),
            500..=599 => {
                StudioError::Transient { message: error.to_string(), status: Some(status), ambiguous: ambiguous_on_5xx }
            }
            _ => StudioError::Invalid(error),
        }
    }
}

pub type StudioResult<T> = Result<T, StudioError>;

/// Studio's Execution API, as flowcast uses it. Implemented over HTTP by
/// [`HttpStudio`]; tests may implement it to inject faults.
pub trait StudioApi: Send + Sync + 'static {
    fn create_execution(
        &self,
        flow: &FlowSid,
        request: &CreateRequest,
    ) -> impl Future<Output = StudioResult<Execution>> + Send;

    fn fetch_execution(&self, flow: &FlowSid, sid: &str) -> impl Future<Output = StudioResult<Execution>> + Send;

    /// Ends an active Execution (`Status=ended`).
    fn end_execution(&self, flow: &FlowSid, sid: &str) -> impl Future<Output = StudioResult<Execution>> + Send;

    /// Every Execution matching `filter`, following `meta.next_page_url`.
    fn list_executions(
        &self,
        flow: &FlowSid,
        filter: &ListFilter,
    ) -> impl Future<Output = StudioResult<Vec<Execution>>> + Send;

    /// The Execution's context (`flow.data` holds the Parameters it was given).
    fn execution_context(
        &self,
        flow: &FlowSid,
        sid: &str,
    ) -> impl Future<Output = StudioResult<serde_json::Value>> + Send;

    /// Every Step of an Execution, following `meta.next_page_url`, in the
    /// order Studio gives them (it promises none).
    fn list_steps(&self, flow: &FlowSid, execution: &str) -> impl Future<Output = StudioResult<Vec<Step>>> + Send;

    /// One Step's context (what the widget saw and produced).
    fn step_context(
        &self,
        flow: &FlowSid,
        execution: &str,
        step: &str,
    ) -> impl Future<Output = StudioResult<serde_json::Value>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_twilio_error_shapes_are_read() {
        let classic = TwilioError::from_body(
            400,
            r#"{"code": 21211, "message": "Invalid 'To' Phone Number", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        );
        assert_eq!(classic.code, Some(21211));
        assert_eq!(classic.message, "Invalid 'To' Phone Number");
        let problem = TwilioError::from_body(
            409,
            r#"{"type": "https://www.twilio.com/docs/errors/20409", "title": "Conflict", "status": 409, "code": 20409, "detail": "Execution is active"}"#,
        );
        assert_eq!(problem.code, Some(20409));
        assert_eq!(problem.message, "Conflict: Execution is active");
        let html = TwilioError::from_body(502, "<html>bad gateway</html>");
        assert_eq!(html.code, None);
        assert!(html.message.contains("bad gateway"));
    }

    #[test]
    fn answers_are_classified_by_what_to_do_next() {
        let sid = "FN0123456789abcdef0123456789abcdef";
        let conflict =
            StudioError::from_response(409, None, &format!(r#"{{"code":20409,"message":"{sid} active"}}"#), true);
        assert!(matches!(conflict, StudioError::Conflict { active_sid: Some(ref s), .. } if s.as_str() == sid));
        assert_eq!(StudioError::from_response(429, None, "{}", true).class(), "throttled");
        assert_eq!(StudioError::from_response(401, None, "{}", true).class(), "unauthorised");
        assert_eq!(StudioError::from_response(403, None, "{}", true).class(), "unauthorised");
        assert_eq!(StudioError::from_response(404, None, "{}", true).class(), "not_found");
        assert_eq!(StudioError::from_response(400, None, "{}", true).class(), "invalid");
        assert_eq!(StudioError::from_response(503, None, "{}", true).class(), "ambiguous");
        assert_eq!(StudioError::from_response(503, None, "{}", false).class(), "transient");
    }
}
