//! The HTTP client against mockito: every call, what it sends (as the OpenAPI
//! description requires) and how each class of answer is read.

use std::time::Duration;

use flowcast::domain::FlowSid;
use flowcast::studio::{CreateRequest, ListFilter, StudioApi, StudioError};
use mockito::Matcher;
use serde_json::json;

use crate::helpers::*;

const SID: &str = "FN0123456789abcdef0123456789abcdef";

fn flow() -> FlowSid {
    FlowSid::parse(FLOW).unwrap()
}

fn execution_body(sid: &str, to: &str, status: &str) -> String {
    json!({
        "sid": sid, "account_sid": ACCOUNT, "flow_sid": FLOW, "contact_channel_address": to,
        "status": status, "date_created": "2026-11-28T01:00:00Z", "context": {}
    })
    .to_string()
}

fn request() -> CreateRequest {
    CreateRequest {
        to: "+12015550123".into(),
        from: "+15017122661".into(),
        parameters: json!({"name": "Ada"}).to_string(),
    }
}

fn basic_auth() -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}")))
}

#[tokio::test]
async fn create_sends_a_form_with_to_from_and_parameters_as_a_json_string() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str())
        .match_header("authorization", basic_auth().as_str())
        .match_header("content-type", "application/x-www-form-urlencoded")
        .match_body(Matcher::AllOf(vec![
            Matcher::UrlEncoded("To".into(), "+12015550123".into()),
            Matcher::UrlEncoded("From".into(), "+15017122661".into()),
            Matcher::UrlEncoded("Parameters".into(), r#"{"name":"Ada"}"#.into()),
        ]))
        .with_status(201)
        .with_body(execution_body(SID, "+12015550123", "active"))
        .create_async()
        .await;

    let created = http_studio(&server.url()).create_execution(&flow(), &request()).await.unwrap();

    mock.assert_async().await;
    assert_eq!(created.sid, SID);
    assert!(created.is_active());
}

async fn create_answered_with(status: usize, body: &str, headers: &[(&str, &str)]) -> StudioError {
    let mut server = mockito::Server::new_async().await;
    let mut mock =
        server.mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str()).with_status(status).with_body(body);
    for (k, v) in headers {
        mock = mock.with_header(*k, v);
    }
    let _mock = mock.create_async().await;
    http_studio(&server.url()).create_execution(&flow(), &request()).await.unwrap_err()
}

#[tokio::test]
async fn a_409_is_a_conflict_naming_the_active_execution_from_either_body_shape() {
    let classic = create_answered_with(
        409,
        &json!({"code": 20409, "message": format!("Execution {SID} is active"), "status": 409}).to_string(),
        &[],
    )
    .await;
    assert!(matches!(&classic, StudioError::Conflict { active_sid: Some(s), .. } if s.as_str() == SID), "{classic:?}");
    let problem = create_answered_with(
        409,
        &json!({"type": "https://www.twilio.com/docs/errors/20409", "title": "Conflict", "status": 409, "code": 20409, "detail": "active", "execution": {"sid": SID}}).to_string(),
        &[],
    )
    .await;
    assert!(
        matches!(&problem, StudioError::Conflict { active_sid: Some(s), error } if s.as_str() == SID && error.code == Some(20409)),
        "{problem:?}"
    );
    let bare = create_answered_with(409, r#"{"code": 20409, "message": "Conflict", "status": 409}"#, &[]).await;
    assert!(matches!(bare, StudioError::Conflict { active_sid: None, .. }));
}

#[tokio::test]
async fn a_429_is_throttled_with_its_retry_after() {
    let e = create_answered_with(
        429,
        r#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#,
        &[("Retry-After", "2")],
    )
    .await;
    assert!(matches!(e, StudioError::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(2)), "{e:?}");
}

#[tokio::test]
async fn auth_not_found_invalid_and_server_errors_are_told_apart() {
    let e = create_answered_with(401, r#"{"code": 20003, "message": "Authenticate", "status": 401}"#, &[]).await;
    assert!(matches!(e, StudioError::Unauthorized(ref t) if t.code == Some(20003)), "{e:?}");
    let e = create_answered_with(403, r#"{"code": 20003, "message": "Forbidden", "status": 403}"#, &[]).await;
    assert!(matches!(e, StudioError::Unauthorized(_)));
    let e = create_answered_with(404, r#"{"code": 20404, "message": "Not found", "status": 404}"#, &[]).await;
    assert!(matches!(e, StudioError::NotFound(_)));
    let e = create_answered_with(400, r#"{"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}"#, &[])
        .await;
    assert!(
        matches!(e, StudioError::Invalid(ref t) if t.code == Some(21211) && t.message.contains("Invalid 'To'")),
        "{e:?}"
    );
    let e = create_answered_with(503, "<html>unavailable</html>", &[]).await;
    assert!(matches!(e, StudioError::Transient { status: Some(503), ambiguous: true, .. }), "{e:?}");
}

#[tokio::test]
async fn an_answer_that_is_not_valid_utf8_is_read_with_its_bad_bytes_replaced() {
    let mut server = mockito::Server::new_async().await;
    let body: Vec<u8> =
        [&br#"{"code": 21211, "message": "Invalid 'To' "#[..], b"\xff\xfe", br#"", "status": 400}"#].concat();
    let _mock = server
        .mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str())
        .with_status(400)
        .with_body(body)
        .create_async()
        .await;
    let e = http_studio(&server.url()).create_execution(&flow(), &request()).await.unwrap_err();
    assert!(
        matches!(e, StudioError::Invalid(ref t) if t.code == Some(21211) && t.message.contains("Invalid 'To' \u{fffd}\u{fffd}")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_create_that_times_out_is_ambiguous_and_a_refused_connection_is_not() {
    let mut server = mockito::Server::new_async().await;
    let _slow = server
        .mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str())
        .with_status(201)
        .with_chunked_body(|w| {
            std::thread::sleep(Duration::from_millis(1500));
            w.write_all(b"{}")
        })
        .create_async()
        .await;
    let studio = flowcast::studio::HttpStudio::new(flowcast::studio::StudioConfig {
        base_url: server.url(),
        credentials: flowcast::studio::Credentials::new(ACCOUNT, TOKEN),
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
    })
    .unwrap();
    let e = studio.create_execution(&flow(), &request()).await.unwrap_err();
    assert!(matches!(e, StudioError::Transient { ambiguous: true, .. }), "{e:?}");

    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = http_studio(&format!("http://127.0.0.1:{port}")).create_execution(&flow(), &request()).await.unwrap_err();
    assert!(matches!(e, StudioError::Transient { ambiguous: false, .. }), "{e:?}");
}

#[tokio::test]
async fn fetch_end_and_context_use_their_endpoints() {
    let mut server = mockito::Server::new_async().await;
    let path = format!("/v2/Flows/{FLOW}/Executions/{SID}");
    let fetch = server
        .mock("GET", path.as_str())
        .with_status(200)
        .with_body(execution_body(SID, "+12015550123", "active"))
        .create_async()
        .await;
    let end = server
        .mock("POST", path.as_str())
        .match_body(Matcher::UrlEncoded("Status".into(), "ended".into()))
        .with_status(200)
        .with_body(execution_body(SID, "+12015550123", "ended"))
        .create_async()
        .await;
    let context = server
        .mock("GET", format!("{path}/Context").as_str())
        .with_status(200)
        .with_body(json!({"context": {"flow": {"data": {"flowcast": {"job": 7}}}}, "execution_sid": SID}).to_string())
        .create_async()
        .await;
    let studio = http_studio(&server.url());

    assert!(studio.fetch_execution(&flow(), SID).await.unwrap().is_active());
    assert!(!studio.end_execution(&flow(), SID).await.unwrap().is_active());
    let ctx = studio.execution_context(&flow(), SID).await.unwrap();
    assert_eq!(ctx["flow"]["data"]["flowcast"]["job"], 7);
    fetch.assert_async().await;
    end.assert_async().await;
    context.assert_async().await;
}

#[tokio::test]
async fn list_sends_its_filters_and_follows_next_page_url_on_the_configured_host() {
    let mut server = mockito::Server::new_async().await;
    let path = format!("/v2/Flows/{FLOW}/Executions");
    // The next page points at Twilio's host: the client must stay on ours. It
    // carries no DateCreatedFrom, so only the second mock matches it.
    let next = format!("https://studio.twilio.com{path}?status=active&PageSize=1000&Page=1&PageToken=PT1");
    let first = server
        .mock("GET", path.as_str())
        .match_query(Matcher::AllOf(vec![
            Matcher::UrlEncoded("Status".into(), "active".into()),
            Matcher::UrlEncoded("DateCreatedFrom".into(), "2026-11-28T00:00:00Z".into()),
            Matcher::UrlEncoded("PageSize".into(), "1000".into()),
        ]))
        .with_status(200)
        .with_body(json!({"executions": [serde_json::from_str::<serde_json::Value>(&execution_body(SID, "+12015550123", "active")).unwrap()], "meta": {"next_page_url": next}}).to_string())
        .create_async()
        .await;
    let second = server
        .mock("GET", path.as_str())
        .match_query(Matcher::UrlEncoded("PageToken".into(), "PT1".into()))
        .with_status(200)
        .with_body(json!({"executions": [serde_json::from_str::<serde_json::Value>(&execution_body("FNffffffffffffffffffffffffffffffff", "+12015550124", "active")).unwrap()], "meta": {"next_page_url": null}}).to_string())
        .create_async()
        .await;
    let filter = ListFilter {
        status: Some("active"),
        date_created_from: Some("2026-11-28T00:00:00Z".parse().unwrap()),
        ..ListFilter::default()
    };

    let all = http_studio(&server.url()).list_executions(&flow(), &filter).await.unwrap();

    first.assert_async().await;
    second.assert_async().await;
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn steps_are_listed_across_pages_and_a_steps_context_is_read() {
    let mut server = mockito::Server::new_async().await;
    let base = format!("/v2/Flows/{FLOW}/Executions/{SID}/Steps");
    let step = |sid: &str, from: &str, to: &str| {
        json!({ "sid": sid, "account_sid": ACCOUNT, "flow_sid": FLOW, "execution_sid": SID, "parent_step_sid": null,
                "name": from, "context": {}, "transitioned_from": from, "transitioned_to": to, "type": "x",
                "date_created": "2026-11-28T01:00:00Z", "date_updated": null, "url": "u", "links": {} })
    };
    let first = server
        .mock("GET", base.as_str())
        .match_header("authorization", basic_auth().as_str())
        .match_query(Matcher::UrlEncoded("PageSize".into(), "1000".into()))
        .with_body(
            json!({ "steps": [step("FT00000000000000000000000000000001", "Trigger", "ask")],
                    "meta": { "key": "steps", "next_page_url": format!("https://studio.twilio.com{base}?PageSize=1000&Page=1&PageToken=PT1") } })
            .to_string(),
        )
        .create_async()
        .await;
    let second = server
        .mock("GET", base.as_str())
        .match_query(Matcher::UrlEncoded("PageToken".into(), "PT1".into()))
        .with_body(
            json!({ "steps": [step("FT00000000000000000000000000000002", "ask", "Ended")],
                    "meta": { "key": "steps", "next_page_url": null } })
            .to_string(),
        )
        .create_async()
        .await;
    let context = server
        .mock("GET", format!("{base}/FT00000000000000000000000000000002/Context").as_str())
        .with_body(json!({ "context": { "widgets": { "ask": { "inbound": { "Body": "9" } } } }, "step_sid": "FT00000000000000000000000000000002" }).to_string())
        .create_async()
        .await;
    let studio = http_studio(&server.url());

    let steps = studio.list_steps(&flow(), SID).await.unwrap();
    let ctx = studio.step_context(&flow(), SID, "FT00000000000000000000000000000002").await.unwrap();

    first.assert_async().await;
    second.assert_async().await;
    context.assert_async().await;
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1].transitioned_to.as_deref(), Some("Ended"));
    assert_eq!(ctx["widgets"]["ask"]["inbound"]["Body"], "9");
    let gone = server
        .mock("GET", format!("/v2/Flows/{FLOW}/Executions/FN0123456789abcdef0123456789abcdee/Steps").as_str())
        .match_query(Matcher::Any)
        .with_status(404)
        .with_body(r#"{"code": 20404, "message": "not found", "status": 404}"#)
        .create_async()
        .await;
    let err = studio.list_steps(&flow(), "FN0123456789abcdef0123456789abcdee").await.unwrap_err();
    gone.assert_async().await;
    assert_eq!(err.class(), "not_found");
}

/// Reads one HTTP/1 request (head and `Content-Length` body) from `socket`;
/// `false` when the client closed the connection first.
async fn read_request(socket: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + length {
                return true;
            }
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_create_whose_connection_closes_unanswered_is_sent_once_and_left_ambiguous() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    // A server that answers the first create and closes the connection on
    // every later one after reading it whole (as a server that crashed while
    // acting on it would).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let body = execution_body(SID, "+12015550123", "active");
    tokio::spawn({
        let requests = Arc::clone(&requests);
        async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                // Each connection on its own: the client may open a new one.
                let (requests, body) = (Arc::clone(&requests), body.clone());
                tokio::spawn(async move {
                    while read_request(&mut socket).await {
                        if requests.fetch_add(1, Ordering::SeqCst) > 0 {
                            break;
                        }
                        let answer = format!(
                            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        socket.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        }
    });
    let studio = http_studio(&url);
    assert_eq!(studio.create_execution(&flow(), &request()).await.unwrap().sid, SID);
    let e = studio.create_execution(&flow(), &request()).await.unwrap_err();
    assert!(
        matches!(e, StudioError::Transient { ambiguous: true, ref message, .. } if message.starts_with("request failed")),
        "{e:?}"
    );
    // Counted before its connection closed, so a resend would have been
    // counted before the error came back. This guards what the client is
    // built to do (reqwest's retries off); over HTTP/1 reqwest's default
    // policy would not have resent it either.
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}
