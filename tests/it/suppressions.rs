//! Contact safety: the suppression list, kept from the command line, the API
//! and Twilio's opt-out webhook, checked when a run imports and again right
//! before each create.

use std::time::Duration;

use flowcast::service::webhook::{form_signing_string, sign};
use flowcast::studio::simulator::{NOT_MOBILE_NUMBER, SimConfig, Simulator, UNSUBSCRIBED_NUMBER};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, eventually};

const PUBLIC: &str = "https://flowcast.example.com";

fn studio_env(url: &str) -> Vec<(&str, &str)> {
    vec![
        ("FLOWCAST_STUDIO_URL", url),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("FLOWCAST_RATE", "500"),
    ]
}

async fn report(app: &TestApp, run: i64) -> Vec<Value> {
    let out = app.flowcast(&["report", &run.to_string(), "--format", "json"], &[]).await;
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

#[tokio::test]
async fn a_suppressed_number_is_never_contacted_by_the_campaigns_its_scope_covers() {
    // Executions end at once, so the second campaign meets no 409.
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(5);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("reminders.toml", campaign_toml("c.csv", ""));
    app.write("promo.toml", campaign_toml("c.csv", "").replace("kind = \"reminder\"", "kind = \"survey\""));
    let add = |args: Vec<&str>| {
        let mut all = vec!["suppress", "add"];
        all.extend(args);
        all.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for args in [
        add(vec![&numbers[0], "--reason", "asked not to be texted"]),
        add(vec![&numbers[1], "--scope", "survey"]),
        add(vec![&numbers[2], "--scope", "promo"]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = app.flowcast(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    }
    let bad = app.flowcast(&["suppress", "add", "2015550100"], &[]).await;
    assert_eq!(bad.status.code(), Some(1), "a number without +country is refused: {}", stdout(&bad));

    let url = sim.url();
    let reminders = app.flowcast(&["run", "reminders"], &studio_env(&url)).await;
    assert!(stdout(&reminders).contains("4 sent, 1 skipped"), "{}", stdout(&reminders));
    let promo = app.flowcast(&["run", "promo"], &studio_env(&url)).await;
    assert!(stdout(&promo).contains("2 sent, 3 skipped"), "{}", stdout(&promo));

    let reached: Vec<String> = sim.executions().into_iter().map(|e| e.to).collect();
    assert!(!reached.contains(&numbers[0]), "suppressed everywhere");
    assert_eq!(reached.iter().filter(|p| **p == numbers[1]).count(), 1, "only the reminder, not the survey");
    assert_eq!(reached.iter().filter(|p| **p == numbers[2]).count(), 1, "only the reminder, not promo");
    let rows = report(&app, 1).await;
    let first = rows.iter().find(|r| r["phone"] == json!(numbers[0])).unwrap();
    assert_eq!(first["state"], "skipped");
    assert_eq!(first["reason"], "suppressed: scope all, asked not to be texted");

    let listed = app.flowcast(&["suppress", "list", "--json"], &[]).await;
    let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 3);
    assert_eq!(list["suppressions"][0]["source"], "cli");
    let removed = app.flowcast(&["suppress", "remove", &numbers[0]], &[]).await;
    assert!(stdout(&removed).contains("1 entry removed"), "{}", stdout(&removed));
}

#[tokio::test]
async fn an_import_counts_every_row_and_an_export_reads_back_in() {
    let app = TestApp::new();
    let file = app.dir.path().join("dnc.csv");
    std::fs::write(
        &file,
        "phone,scope,reason\n+12015550001,,complaint\n+12015550002,survey,\n+12015550001,,again\nnot-a-phone,,\n+12015550003,Bad Scope,\n",
    )
    .unwrap();

    let out = app.flowcast(&["suppress", "import", file.to_str().unwrap()], &[]).await;

    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "some rows were rejected: {text}");
    assert!(text.contains("2 added, 1 already present, 2 rejected"), "{text}");
    assert!(text.contains("dnc.csv:5: rejected") && text.contains("dnc.csv:6: rejected: scope"), "{text}");
    let export = stdout(&app.flowcast(&["suppress", "export"], &[]).await);
    assert!(export.starts_with("phone,scope,reason,source,created_at\n"), "{export}");
    assert!(export.contains("+12015550001,all,complaint,import,"), "{export}");
    let again = app.dir.path().join("again.csv");
    std::fs::write(&again, &export).unwrap();
    let out = app.flowcast(&["suppress", "import", again.to_str().unwrap()], &[]).await;
    assert!(stdout(&out).contains("0 added, 2 already present, 0 rejected"), "{}", stdout(&out));
}

#[tokio::test]
async fn an_opt_out_that_arrives_mid_run_wins_over_the_jobs_already_imported() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(8);
    app.write("c.csv", contacts_csv(&numbers));
    // 2/s: the last contact is due seconds after the first is sent.
    app.write("c.toml", campaign_toml("c.csv", "rate = 2"));
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_PUBLIC_URL", PUBLIC)]).await;
    assert!(eventually(Duration::from_secs(10), async || !sim.executions().is_empty()).await, "{}", served.log());
    let last = numbers.last().unwrap();
    let client = reqwest::Client::new();

    let added = client
        .post(format!("{}/api/suppressions", served.url))
        .json(&json!({ "phone": last, "scope": "all", "reason": "opted out by phone" }))
        .send()
        .await
        .unwrap();

    assert_eq!(added.status(), 201);
    let finished = eventually(Duration::from_secs(20), async || {
        let run: Value = client.get(format!("{}/api/runs/1", served.url)).send().await.unwrap().json().await.unwrap();
        run["state"] == "finished"
    })
    .await;
    assert!(finished, "{}", served.log());
    assert!(!sim.executions().iter().any(|e| e.to == *last), "no Execution after the suppression");
    assert_eq!(sim.executions().len(), 7);
    let jobs: Value =
        client.get(format!("{}/api/runs/1/jobs?state=skipped", served.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(jobs["jobs"][0]["phone"], json!(last));
    assert_eq!(jobs["jobs"][0]["reason"], "suppressed: scope all, opted out by phone");
    let listed: Value =
        client.get(format!("{}/api/suppressions", served.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["suppressions"][0]["source"], "api");
    let gone =
        client.delete(format!("{}/api/suppressions/{}", served.url, last.replace('+', "%2B"))).send().await.unwrap();
    assert_eq!(gone.status(), 200);
    let (code, _) = served.terminate().await;
    assert_eq!(code, Some(0));
}

async fn post_messaging(served: &Served, fields: &[(&str, &str)], signed: bool) -> u16 {
    let owned: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut request = reqwest::Client::new().post(format!("{}/webhooks/messaging", served.url)).form(&owned);
    if signed {
        let signature = sign(TOKEN, &form_signing_string(&format!("{PUBLIC}/webhooks/messaging"), &owned));
        request = request.header("x-twilio-signature", signature);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn twilios_opt_out_webhook_suppresses_on_stop_and_lifts_on_start() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_PUBLIC_URL", PUBLIC)]).await;
    let stop = [
        ("From", "+12015550007"),
        ("To", "+15017122661"),
        ("Body", "stop"),
        ("OptOutType", "STOP"),
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("NumMedia", ""),
    ];
    let list = async || -> Value {
        reqwest::Client::new()
            .get(format!("{}/api/suppressions", served.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };

    assert_eq!(post_messaging(&served, &stop, false).await, 403, "unsigned");
    assert_eq!(list().await["suppressions"].as_array().unwrap().len(), 0);
    assert_eq!(post_messaging(&served, &stop, true).await, 200);
    let entries = list().await;
    assert_eq!(entries["suppressions"][0]["phone"], "+12015550007");
    assert_eq!(entries["suppressions"][0]["source"], "messaging webhook");
    assert_eq!(entries["suppressions"][0]["reason"], "opt-out (stop)");
    let mut start = stop;
    start[2] = ("Body", "start");
    start[3] = ("OptOutType", "START");
    assert_eq!(post_messaging(&served, &start, true).await, 200);
    assert_eq!(list().await["suppressions"].as_array().unwrap().len(), 0, "START lifts it");
    // A do-not-contact entry someone added stays, whatever the number texts.
    let added = reqwest::Client::new()
        .post(format!("{}/api/suppressions", served.url))
        .json(&json!({ "phone": "+12015550007", "reason": "asked by letter" }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    assert_eq!(post_messaging(&served, &start, true).await, 200);
    assert_eq!(list().await["suppressions"][0]["reason"], "asked by letter", "an opt-in lifts only Twilio's opt-outs");
    let (_, log) = served.terminate().await;
    assert!(!log.contains("+12015550007"), "phones are masked in logs");
}

#[tokio::test]
async fn twilios_unsubscribed_error_on_a_create_suppresses_the_contact() {
    let mut server = mockito::Server::new_async().await;
    let _m = server
        .mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str())
        .with_status(400)
        .with_body(r#"{"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}"#)
        .create_async()
        .await;
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let url = server.url();

    let out = app.flowcast(&["run", "c"], &studio_env(&url)).await;

    assert!(stdout(&out).contains("0 sent, 1 skipped"), "{}{}", stdout(&out), stderr(&out));
    let rows = report(&app, 1).await;
    assert_eq!(rows[0]["reason"], "suppressed: scope all, Twilio error 21610: the recipient unsubscribed");
    let list: Value = serde_json::from_slice(&app.flowcast(&["suppress", "list", "--json"], &[]).await.stdout).unwrap();
    assert_eq!(list["suppressions"][0]["phone"], json!(phones(1)[0]));
    assert_eq!(list["suppressions"][0]["source"], "studio");
}

#[tokio::test]
async fn a_reply_that_is_an_opt_out_keyword_suppresses_the_contact_when_its_outcome_is_read() {
    let numbers = phones(3);
    let replies = [(numbers[0].clone(), Some("STOP".to_string())), (numbers[1].clone(), Some("2".to_string()))];
    let sim =
        Simulator::start(SimConfig { replies: replies.into_iter().collect(), ..SimConfig::default() }).await.unwrap();
    sim.install_flow(
        FLOW,
        "ask",
        json!({
            "description": "ask once",
            "states": [
                {"name": "Trigger", "type": "trigger", "transitions": [{"event": "incomingRequest", "next": "ask"}]},
                {"name": "ask", "type": "send-and-wait-for-reply", "properties": {"body": "Reply 1 or 2"},
                 "transitions": [{"event": "incomingMessage"}, {"event": "timeout"}, {"event": "deliveryFailure"}]}
            ],
            "initial_state": "Trigger",
            "flags": {"allow_concurrent_calls": true}
        }),
    );
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let url = sim.url();
    let run = app.flowcast(&["run", "c"], &studio_env(&url)).await;
    assert!(stdout(&run).contains("3 sent"), "{}{}", stdout(&run), stderr(&run));
    assert!(sim.wait_until(Duration::from_secs(10), |e| e.iter().all(|e| e.status == "ended")).await);

    let collected = app.flowcast(&["collect"], &studio_env(&url)).await;

    assert!(stdout(&collected).contains("3 outcome(s) read back"), "{}", stdout(&collected));
    let list: Value = serde_json::from_slice(&app.flowcast(&["suppress", "list", "--json"], &[]).await.stdout).unwrap();
    let entries = list["suppressions"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only the contact who replied STOP: {entries:?}");
    assert_eq!(entries[0]["phone"], json!(numbers[0]));
    assert_eq!(entries[0]["reason"], "replied STOP");
}

#[tokio::test]
async fn a_dry_run_and_validate_count_the_suppressed_contacts_without_creating_a_ledger() {
    let app = TestApp::new();
    let numbers = phones(4);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let before = app.flowcast(&["validate"], &[]).await;
    assert!(stdout(&before).contains("4 contacts, 0 rejected, 0 duplicates\n"), "{}", stdout(&before));
    assert!(!app.db.exists(), "checking a campaign creates no ledger");
    for (phone, scope) in [(&numbers[0], "all"), (&numbers[1], "reminder"), (&numbers[2], "survey")] {
        app.flowcast(&["suppress", "add", phone, "--scope", scope], &[]).await;
    }

    let dry = app.flowcast(&["run", "c", "--dry-run"], &[]).await;
    let validated = app.flowcast(&["validate"], &[]).await;

    assert!(stdout(&dry).contains("4 rows: 2 would be sent, 2 suppressed, 0 rejected"), "{}", stdout(&dry));
    assert!(stdout(&validated).contains("0 duplicates, 2 suppressed"), "{}", stdout(&validated));
}

#[tokio::test]
async fn a_send_twilio_refuses_in_a_flow_suppresses_the_contact_when_its_outcome_is_read() {
    let reachable = phones(1).remove(0);
    let numbers = [UNSUBSCRIBED_NUMBER.to_string(), NOT_MOBILE_NUMBER.to_string(), reachable.clone()];
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    install_notify_flow(&sim);
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&numbers));
    app.write("reminders.toml", campaign_toml("c.csv", ""));
    let url = sim.url();
    let ended = async || sim.wait_until(Duration::from_secs(10), |e| e.iter().all(|e| e.status == "ended")).await;
    let first = app.flowcast(&["run", "reminders"], &studio_env(&url)).await;
    assert!(stdout(&first).contains("3 sent"), "{}{}", stdout(&first), stderr(&first));
    assert!(ended().await);

    let mut logged = studio_env(&url);
    logged.push(("FLOWCAST_LOG", "info"));

    let collected = app.flowcast(&["collect"], &logged).await;

    assert!(stdout(&collected).contains("3 outcome(s) read back"), "{}{}", stdout(&collected), stderr(&collected));
    let log = stderr(&collected);
    assert!(log.contains("suppressed: learned from the Execution"), "{log}");
    assert!(!log.contains(NOT_MOBILE_NUMBER) && !log.contains(UNSUBSCRIBED_NUMBER), "phones are masked in logs: {log}");
    let list: Value = serde_json::from_slice(&app.flowcast(&["suppress", "list", "--json"], &[]).await.stdout).unwrap();
    let entries = list["suppressions"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "only the two numbers Twilio refused: {entries:?}");
    let entry =
        |phone: &str| entries.iter().find(|e| e["phone"] == phone).unwrap_or_else(|| panic!("{phone}: {entries:?}"));
    let unsubscribed = entry(UNSUBSCRIBED_NUMBER);
    assert_eq!(
        (&unsubscribed["scope"], &unsubscribed["reason"], &unsubscribed["source"]),
        (&json!("all"), &json!("Twilio error 21610: the recipient unsubscribed"), &json!("studio"))
    );
    let not_mobile = entry(NOT_MOBILE_NUMBER);
    assert_eq!(
        (&not_mobile["scope"], &not_mobile["reason"], &not_mobile["source"]),
        (&json!("sms"), &json!("Twilio error 21614: not a mobile number"), &json!("studio"))
    );

    // Another SMS campaign skips both; a voice campaign still calls the number
    // that cannot take a text, never the one who unsubscribed.
    app.write("follow-up.toml", campaign_toml("c.csv", ""));
    let again = app.flowcast(&["run", "follow-up"], &studio_env(&url)).await;
    assert!(stdout(&again).contains("1 sent, 2 skipped"), "{}{}", stdout(&again), stderr(&again));
    assert!(ended().await);
    app.write("calls.toml", campaign_toml("c.csv", "channel = \"voice\""));
    let calls = app.flowcast(&["run", "calls"], &studio_env(&url)).await;
    assert!(stdout(&calls).contains("2 sent, 1 skipped"), "{}{}", stdout(&calls), stderr(&calls));

    let row = |rows: &[Value], phone: &str| rows.iter().find(|r| r["phone"] == phone).cloned().unwrap();
    let follow_up = report(&app, 2).await;
    for (phone, scope) in [(UNSUBSCRIBED_NUMBER, "all"), (NOT_MOBILE_NUMBER, "sms")] {
        let skipped = row(&follow_up, phone);
        assert_eq!(skipped["state"], "skipped", "{skipped}");
        assert!(
            skipped["reason"].as_str().unwrap().starts_with(&format!("suppressed: scope {scope}, Twilio error")),
            "{skipped}"
        );
    }
    let voice = report(&app, 3).await;
    assert_eq!(row(&voice, NOT_MOBILE_NUMBER)["state"], "sent");
    assert_eq!(row(&voice, UNSUBSCRIBED_NUMBER)["state"], "skipped");
    let reached = |to: &str| sim.executions().iter().filter(|e| e.to == to).count();
    assert_eq!((reached(UNSUBSCRIBED_NUMBER), reached(NOT_MOBILE_NUMBER), reached(&reachable)), (1, 2, 3));
}

#[tokio::test]
async fn a_failed_send_is_read_from_the_context_of_the_step_that_left_its_widget() {
    const SID: &str = "FN0123456789abcdef0123456789abcdef";
    const FAILED: &str = "FT00000000000000000000000000000002";
    let phone = phones(1).remove(0);
    let mut server = mockito::Server::new_async().await;
    let executions = format!("/v2/Flows/{FLOW}/Executions");
    let execution = |status: &str| {
        json!({"sid": SID, "account_sid": ACCOUNT, "flow_sid": FLOW, "contact_channel_address": phone,
               "status": status, "date_created": "2026-11-28T10:00:00Z", "context": {}})
        .to_string()
    };
    let step = |sid: &str, name: &str, from: &str, to: &str| {
        json!({"sid": sid, "execution_sid": SID, "flow_sid": FLOW, "name": name, "context": {},
               "transitioned_from": from, "transitioned_to": to, "date_created": "2026-11-28T10:00:00Z"})
    };
    let mocks = [
        server.mock("POST", executions.as_str()).with_status(201).with_body(execution("active")),
        server.mock("GET", format!("{executions}/{SID}").as_str()).with_body(execution("ended")),
        // The widget ran again after a wait and its second message went out,
        // so the Execution's Context shows only that one.
        server.mock("GET", format!("{executions}/{SID}/Context").as_str()).with_body(
            json!({"context": {"widgets": {"notify": {"outbound": {"To": phone, "Status": "sent", "ErrorCode": null}}}}})
                .to_string(),
        ),
        // Studio's Step list leaves each Step's context empty.
        server.mock("GET", format!("{executions}/{SID}/Steps").as_str()).match_query(mockito::Matcher::Any).with_body(
            json!({"steps": [
                step("FT00000000000000000000000000000001", "incomingRequest", "Trigger", "notify"),
                step(FAILED, "failed", "notify", "wait"),
                step("FT00000000000000000000000000000003", "timeout", "wait", "notify"),
                step("FT00000000000000000000000000000004", "sent", "notify", "Ended"),
            ], "meta": {"key": "steps", "next_page_url": null}})
            .to_string(),
        ),
    ];
    let _mocks = futures_util::future::join_all(mocks.map(|m| m.create_async())).await;
    let failed_context = server
        .mock("GET", format!("{executions}/{SID}/Steps/{FAILED}/Context").as_str())
        .with_body(
            json!({"step_sid": FAILED, "context": {"widgets": {"notify": {
                "MessageStatus": "failed", "ErrorCode": "21610", "To": phone,
                "outbound": {"To": phone, "Status": "accepted", "ErrorCode": null}
            }}}})
            .to_string(),
        )
        .create_async()
        .await;
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(std::slice::from_ref(&phone)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let url = server.url();
    let run = app.flowcast(&["run", "c"], &studio_env(&url)).await;
    assert!(stdout(&run).contains("1 sent"), "{}{}", stdout(&run), stderr(&run));

    let collected = app.flowcast(&["collect"], &studio_env(&url)).await;

    assert!(stdout(&collected).contains("1 outcome(s) read back"), "{}{}", stdout(&collected), stderr(&collected));
    failed_context.assert_async().await;
    let list: Value = serde_json::from_slice(&app.flowcast(&["suppress", "list", "--json"], &[]).await.stdout).unwrap();
    assert_eq!(list["suppressions"][0]["phone"], json!(phone), "{list}");
    assert_eq!(list["suppressions"][0]["scope"], "all");
    assert_eq!(list["suppressions"][0]["reason"], "Twilio error 21610: the recipient unsubscribed");
}

/// A Flow that sends one message (and ends either way), as the simulator runs it.
fn install_notify_flow(sim: &Simulator) {
    sim.install_flow(
        FLOW,
        "notify",
        json!({
            "description": "tell once",
            "states": [
                {"name": "Trigger", "type": "trigger", "transitions": [{"event": "incomingRequest", "next": "notify"}]},
                {"name": "notify", "type": "send-message", "properties": {"body": "See you tomorrow, {{flow.data.name}}"},
                 "transitions": [{"event": "sent"}, {"event": "failed"}]}
            ],
            "initial_state": "Trigger",
            "flags": {"allow_concurrent_calls": true}
        }),
    );
}

#[tokio::test]
async fn a_voice_campaigns_failed_text_suppresses_who_unsubscribed_but_not_for_sms_a_number_that_cannot_text() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    // A voice Flow that also texts: its 21614 says nothing about the calls.
    install_notify_flow(&sim);
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&[UNSUBSCRIBED_NUMBER.to_string(), NOT_MOBILE_NUMBER.to_string()]));
    app.write("calls.toml", campaign_toml("c.csv", "channel = \"voice\""));
    let url = sim.url();
    let run = app.flowcast(&["run", "calls"], &studio_env(&url)).await;
    assert!(stdout(&run).contains("2 sent"), "{}{}", stdout(&run), stderr(&run));
    assert!(sim.wait_until(Duration::from_secs(10), |e| e.iter().all(|e| e.status == "ended")).await);

    let collected = app.flowcast(&["collect"], &studio_env(&url)).await;

    assert!(stdout(&collected).contains("2 outcome(s) read back"), "{}{}", stdout(&collected), stderr(&collected));
    let list: Value = serde_json::from_slice(&app.flowcast(&["suppress", "list", "--json"], &[]).await.stdout).unwrap();
    let entries = list["suppressions"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!((&entries[0]["phone"], &entries[0]["scope"]), (&json!(UNSUBSCRIBED_NUMBER), &json!("all")));
}
