//! The operator's view: the JSON API and its auth, metrics, the Event Streams
//! webhook, and what the logs show.

use std::time::Duration;

use flowcast::service::webhook::{body_sha256, sign};
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, eventually, free_port};

const ADMIN: &str = "admin-secret-for-tests";
const PUBLIC: &str = "https://flowcast.example.com";

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).bearer_auth(ADMIN).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_api_needs_the_admin_token_when_one_is_set_but_health_does_not() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_ADMIN_TOKEN", ADMIN)]).await;
    let client = reqwest::Client::new();

    for path in ["/", "/metrics", "/api/campaigns", "/api/runs", "/api/runs/1", "/api/problems"] {
        let r = client.get(format!("{}{path}", served.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let r = client.get(format!("{}{path}", served.url)).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    let r = client.post(format!("{}/api/runs/1/pause", served.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(format!("{}/api/campaigns", served.url)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Browsers send the token as Basic auth once the page asks for it.
    let r = client.get(format!("{}/", served.url)).basic_auth("admin", Some(ADMIN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<title>flowcast</title>"));
    let r = client.get(format!("{}/healthz", served.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0));
    assert!(!log.contains(ADMIN), "the admin token is never logged");
}

#[tokio::test]
async fn serve_refuses_a_network_address_without_an_admin_token() {
    let app = TestApp::new();
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let out = app.flowcast(&["serve", "--simulate"], &[("FLOWCAST_LISTEN", listen.as_str())]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("without FLOWCAST_ADMIN_TOKEN"), "{}", stderr(&out));
}

#[tokio::test]
async fn campaigns_runs_and_jobs_are_served_as_json_with_paging_and_a_state_filter() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let busy = sim.start_foreign_execution(FLOW, "+12015550003");
    let app = TestApp::new();
    app.write("bad.toml", "kind = \"survey\"\n");
    let served = Served::start(&app, &sim.url()).await;
    app.write("c.csv", contacts_csv(&phones(25)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() == 25).await, "{}", served.log());
    let client = reqwest::Client::new();
    let base = &served.url;
    let finished = eventually(Duration::from_secs(10), async || {
        app.store().await.get_run(1).await.map(|r| r.state == flowcast::domain::RunState::Finished).unwrap_or(false)
    })
    .await;
    assert!(finished);

    let (_, campaigns) = get(&client, &format!("{base}/api/campaigns")).await;
    let list = campaigns["campaigns"].as_array().unwrap();
    let c = list.iter().find(|c| c["name"] == "c").unwrap();
    assert_eq!(c["kind"], "reminder");
    let refused = list.iter().find(|c| c["status"] == "refused").unwrap();
    assert!(refused["errors"][0].as_str().unwrap().contains("bad.toml:1: missing field"), "{refused}");

    let (_, run) = get(&client, &format!("{base}/api/runs/1")).await;
    assert_eq!(run["jobs"], json!({ "sent": 24, "skipped": 1 }));
    assert_eq!(run["total"], 25);
    assert_eq!(run["progress"], 1.0);
    let (_, runs) = get(&client, &format!("{base}/api/runs")).await;
    assert_eq!(runs["runs"][0]["id"], 1);

    // Paging: 10 at a time, in id order, until next_after is null.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let (_, page) = get(&client, &format!("{base}/api/runs/1/jobs?limit=10&after={after}")).await;
        let jobs = page["jobs"].as_array().unwrap();
        seen.extend(jobs.iter().map(|j| j["id"].as_i64().unwrap()));
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let (_, skipped) = get(&client, &format!("{base}/api/runs/1/jobs?state=skipped")).await;
    assert_eq!(skipped["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(skipped["jobs"][0]["execution_sid"], busy);
    assert_eq!(skipped["jobs"][0]["reason"], "conflict");
    let (code, _) = get(&client, &format!("{base}/api/runs/1/jobs?state=lost")).await;
    assert_eq!(code, 400);
    let (code, _) = get(&client, &format!("{base}/api/runs/7/jobs")).await;
    assert_eq!(code, 404);
    let (_, problems) = get(&client, &format!("{base}/api/problems")).await;
    assert_eq!(problems["jobs"][0]["phone"], "+12015550003");

    let (_, log) = served.terminate().await;
    assert!(!log.contains("+12015550003"), "phone numbers are masked in logs:\n{log}");
}

#[tokio::test]
async fn metrics_expose_every_family_in_prometheus_text() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    // A schedule that fires every second gives a schedule lag to observe.
    app.write("c.csv", contacts_csv(&phones(3)));
    app.write("every-second.toml", campaign_toml("c.csv", "schedule = \"* * * * * *\""));
    let served = Served::start(&app, &sim.url()).await;
    assert!(eventually(Duration::from_secs(15), async || sim.executions().len() >= 3).await, "{}", served.log());
    let text = reqwest::get(format!("{}/metrics", served.url)).await.unwrap().text().await.unwrap();
    for family in flowcast::telemetry::FAMILIES {
        assert!(
            text.lines().any(|l| l.starts_with(family) || l.starts_with(&format!("{family}_bucket"))),
            "{family} missing from:\n{text}"
        );
    }
    assert!(text.contains("flowcast_jobs{state=\"sent\"}"), "{text}");
    assert!(text.contains("flowcast_studio_request_duration_seconds_bucket{operation=\"create\""), "{text}");
    assert!(text.contains("flowcast_executions_created_total"), "{text}");
    served.terminate().await;
}

/// Posts `body` to the webhook the way Twilio does: bodySHA256 in the URL, the
/// URL (as configured publicly) signed with `token`.
async fn deliver(served: &Served, token: &str, body: &str) -> u16 {
    let query = format!("bodySHA256={}", body_sha256(body.as_bytes()));
    let signature = sign(token, &format!("{PUBLIC}/webhooks/studio?{query}"));
    reqwest::Client::new()
        .post(format!("{}/webhooks/studio?{query}", served.url))
        .header("content-type", "application/json")
        .header("x-twilio-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ended_event(sid: &str, reason: &str) -> String {
    json!([{
        "specversion": "1.0",
        "type": "com.twilio.studio.flow.execution.ended",
        "source": "AB00000000000000000000000001",
        "id": "NO00000000000000000000000001",
        "dataschema": "https://events-schemas.twilio.com/Studio.FlowExecutionEvent/2",
        "data": {
            "execution_sid": sid, "account_sid": ACCOUNT, "flow_sid": FLOW, "contact_channel_address": "+12015550000",
            "status": "ended", "ended_reason": reason,
            "date_created": "2026-01-01T00:00:00.000Z", "date_updated": "2026-01-01T00:00:05.000Z"
        }
    }])
    .to_string()
}

#[tokio::test]
async fn the_webhook_accepts_only_twilio_signed_deliveries_and_records_ended_executions() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_PUBLIC_URL", PUBLIC)]).await;
    app.write("c.csv", contacts_csv(&phones(2)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() == 2).await);
    assert!(
        eventually(Duration::from_secs(10), async || app
            .store()
            .await
            .get_run(1)
            .await
            .map(|r| r.state == flowcast::domain::RunState::Finished)
            .unwrap_or(false))
        .await
    );
    let ours = sim.executions()[0].sid.clone();
    let body = ended_event(&ours, "FLOW_END");
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/studio", served.url);

    // Refused: unsigned, signed with another token, tampered body, no body hash.
    let r = client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(deliver(&served, "not-the-token", &body).await, 403);
    let query = format!("bodySHA256={}", body_sha256(body.as_bytes()));
    let signature = sign(TOKEN, &format!("{PUBLIC}/webhooks/studio?{query}"));
    let tampered = client
        .post(format!("{url}?{query}"))
        .header("x-twilio-signature", &signature)
        .body(body.replace("FLOW_END", "OTHER"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 403);
    let no_hash = client
        .post(&url)
        .header("x-twilio-signature", sign(TOKEN, &format!("{PUBLIC}/webhooks/studio")))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(no_hash.status(), 403);

    // Accepted, twice (a duplicate delivery changes nothing), and unknown types too.
    assert_eq!(deliver(&served, TOKEN, &body).await, 200);
    assert_eq!(deliver(&served, TOKEN, &ended_event(&ours, "LATER_DUPLICATE")).await, 200);
    let unknown = json!([{ "type": "com.twilio.messaging.message.delivered", "data": {} }]).to_string();
    assert_eq!(deliver(&served, TOKEN, &unknown).await, 200);
    // An Execution flowcast never made is ignored.
    assert_eq!(deliver(&served, TOKEN, &ended_event("FNffffffffffffffffffffffffffffffff", "FLOW_END")).await, 200);

    let job = app.jobs(1).await.into_iter().find(|j| j.execution_sid.as_deref() == Some(ours.as_str())).unwrap();
    assert_eq!(job.ended_reason.as_deref(), Some("FLOW_END"), "the first delivery wins");
    assert!(job.execution_ended_at.is_some());
    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0));
    assert!(!log.contains(TOKEN), "the auth token is never logged");
}

#[tokio::test]
async fn an_ended_event_wakes_the_jobs_waiting_on_that_execution() {
    use std::sync::Arc;

    use flowcast::dispatch::{DispatchSettings, Dispatcher, RateLimits, RunEnd};

    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(2);
    let busy = sim.start_foreign_execution(FLOW, &numbers[0]);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", "on_conflict = \"wait\"\nmax_wait = \"2h\""));
    let run = app.start_run("c.toml").await;
    // Polling alone would look at the active Execution again only in an hour.
    let settings = DispatchSettings { wait_poll: Duration::from_secs(3600), ..fast_settings() };
    let dispatcher = Dispatcher::new(
        app.store().await,
        Arc::new(http_studio(&sim.url())),
        Arc::new(flowcast::schedule::SystemClock),
        settings,
        Arc::new(RateLimits::new(1000)),
    );
    let end = dispatcher.run_until_idle(run).await.unwrap();
    let RunEnd::Idle { next_due_at } = end else { panic!("{end:?}") };
    assert!(next_due_at > chrono::Utc::now().timestamp_millis() + 3_000_000, "waiting an hour");

    sim.finish_execution(&busy);
    let now = chrono::Utc::now().timestamp_millis();
    let (recorded, woken) = app.store().await.record_execution_end(&busy, now, Some("FLOW_END"), now).await.unwrap();

    assert_eq!((recorded, woken), (0, 1), "not our Execution, but one of our jobs waits on it");
    let end = dispatcher.run_until_idle(run).await.unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    assert_eq!(sim.executions().iter().filter(|e| e.to == numbers[0]).count(), 2, "the foreign one, then ours");
}
