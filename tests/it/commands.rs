//! The `flowcast` binary end to end: run, dry run, exit codes, status, report,
//! pause/cancel/resume.

use flowcast::studio::simulator::{SimConfig, Simulator};

use crate::helpers::*;

fn creds(url: &str) -> Vec<(&str, &str)> {
    vec![
        ("FLOWCAST_STUDIO_URL", url),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("FLOWCAST_RATE", "200"),
    ]
}

#[tokio::test]
async fn run_sends_every_valid_contact_once_and_prints_a_summary() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let mut csv = contacts_csv(&phones(25));
    csv.push_str("bogus,Nobody\n");
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", ""));

    let out = app.flowcast(&["run", "c"], &creds(&sim.url())).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("25 sent, 0 skipped, 0 failed"), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 rejected"), "{}", stdout(&out));
    assert!(stderr(&out).contains("contacts line 27: rejected"), "{}", stderr(&out));
    assert_eq!(sim.executions().len(), 25);
    assert!(!stderr(&out).contains(TOKEN) && !stdout(&out).contains(TOKEN));
}

#[tokio::test]
async fn dry_run_prints_what_would_be_sent_and_calls_nothing() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(7)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    // No credentials and no Studio at all: a dry run must not need them.
    let out = app.flowcast(&["run", "c", "--dry-run"], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("7 rows: 7 would be sent, 0 rejected, 0 duplicates"), "{text}");
    assert!(text.contains("+12015550000"), "{text}");
    assert!(text.contains(r#""name":"Name0""#), "{text}");
    assert!(!app.db.exists(), "a dry run writes no ledger");
}

#[tokio::test]
async fn the_simulate_flag_needs_no_credentials() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(3)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let out = app.flowcast(&["run", "c", "--simulate"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("3 sent"), "{}", stdout(&out));
}

#[tokio::test]
async fn a_refused_campaign_file_exits_1_with_its_errors() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("c.toml", campaign_toml("c.csv", "timezone = \"Nowhere/Land\""));
    let out = app.flowcast(&["run", "c", "--simulate"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("c.toml:5: timezone \"Nowhere/Land\""), "{}", stderr(&out));
}

#[tokio::test]
async fn missing_credentials_exit_2_before_anything_is_recorded() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let out = app.flowcast(&["run", "c"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no Twilio credentials"), "{}", stderr(&out));
}

#[tokio::test]
async fn credentials_rejected_by_studio_exit_2_and_leave_jobs_pending_for_resume() {
    let sim = Simulator::start(SimConfig {
        lifetime: None,
        credentials: Some((ACCOUNT.into(), "the-right-token".into())),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(10)));
    app.write("c.toml", campaign_toml("c.csv", ""));

    let out = app.flowcast(&["run", "c"], &creds(&sim.url())).await;

    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("refused the credentials"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(TOKEN));
    assert!(stdout(&out).contains("10 pending"), "{}", stdout(&out));
    assert!(sim.executions().is_empty());

    // With the right token, resume finishes the same run.
    let url = sim.url();
    let good = [
        ("FLOWCAST_STUDIO_URL", url.as_str()),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", "the-right-token"),
        ("FLOWCAST_RATE", "200"),
    ];
    let out = app.flowcast(&["resume", "1"], &good).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("10 sent"), "{}", stdout(&out));
    assert_eq!(sim.executions().len(), 10);
}

#[tokio::test]
async fn an_invalid_request_fails_the_job_with_twilios_code_and_message() {
    let mut server = mockito::Server::new_async().await;
    let _m = server
        .mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str())
        .with_status(400)
        .with_body(r#"{"code": 21211, "message": "Invalid 'To' Phone Number", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#)
        .create_async()
        .await;
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(2)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let url = server.url();

    let out = app.flowcast(&["run", "c"], &creds(&url)).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("0 sent, 0 skipped, 2 failed"), "{}", stdout(&out));
    let report = app.flowcast(&["report", "1", "--format", "json"], &[]).await;
    let rows: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(rows[0]["state"], "failed");
    assert_eq!(rows[0]["reason"], "invalid: Twilio error 21211: Invalid 'To' Phone Number");
}

#[tokio::test]
async fn a_phone_quoted_in_studios_error_text_is_masked_in_debug_logs() {
    let mut server = mockito::Server::new_async().await;
    let _m = server
        .mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str())
        .with_status(400)
        .with_body(
            r#"{"code": 21211, "message": "The 'To' number +12015550000 is not a valid phone number.", "status": 400}"#,
        )
        .create_async()
        .await;
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let url = server.url();
    let mut env = creds(&url);
    env.push(("FLOWCAST_LOG", "flowcast=debug"));

    let out = app.flowcast(&["run", "c"], &env).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("job attempt settled"), "debug lines are on: {log}");
    assert!(!log.contains("+12015550000"), "the number never appears in full: {log}");
}

#[tokio::test]
async fn status_and_report_show_the_runs_outcome() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let busy = sim.start_foreign_execution(FLOW, "+12015550001");
    let app = TestApp::new();
    let mut csv = contacts_csv(&phones(3));
    csv.push_str("=cmd|' /C calc'!A0,Mallory\n");
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", "schedule = \"0 9 * * *\"\ntimezone = \"Europe/Berlin\""));
    let out = app.flowcast(&["run", "c"], &creds(&sim.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    app.write("broken.toml", "kind = \"reminder\"\n");
    let status = app.flowcast(&["status", "--json"], &[]).await;
    let body: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(body["refused"][0]["status"], "refused");
    assert!(body["refused"][0]["errors"][0].as_str().unwrap().contains("broken.toml:1: missing field"), "{body}");
    assert_eq!(body["runs"][0]["progress"], 1.0);
    let human = stdout(&app.flowcast(&["status"], &[]).await);
    assert!(human.contains("broken.toml") && human.contains("refused"), "{human}");
    assert!(human.contains("sent 2, skipped 1"), "{human}");
    assert_eq!(body["campaigns"][0]["name"], "c");
    assert!(body["campaigns"][0]["next_fire_local"].as_str().unwrap().contains("T09:00:00+01:00"));
    assert_eq!(body["runs"][0]["jobs"]["sent"], 2);
    assert_eq!(body["runs"][0]["jobs"]["skipped"], 1);
    assert_eq!(body["runs"][0]["rejected"], 1);

    let report = app.flowcast(&["report", "1"], &[]).await;
    let text = stdout(&report);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "run,job,line,phone,state,reason,execution_sid,attempts,due_at,sent_at,finished_at,last_error,execution_ended_at,ended_reason,status,ended_in"
    );
    assert!(text.contains(&format!("+12015550001,skipped,conflict,{busy}")), "{text}");
    // A formula in the input is neutralised in the export.
    assert!(text.contains(",'=cmd|"), "{text}");
    assert_eq!(text.lines().count(), 1 + 3 + 1, "{text}");
}

#[tokio::test]
async fn pause_and_cancel_control_a_run() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(4)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let run = app.start_run("c.toml").await;

    let out = app.flowcast(&["pause", &run.to_string()], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(app.store().await.get_run(run).await.unwrap().state, flowcast::domain::RunState::Paused);
    // A paused run claims nothing.
    assert!(app.store().await.claim_due(run, i64::MAX, 10, false, Default::default()).await.unwrap().is_empty());

    let out = app.flowcast(&["cancel", &run.to_string()], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let counts = app.store().await.run_counts(run).await.unwrap();
    assert_eq!(counts.get(flowcast::domain::JobState::Cancelled), 4);

    let out = app.flowcast(&["pause", &run.to_string()], &[]).await;
    assert_eq!(out.status.code(), Some(1), "a cancelled run cannot be paused");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_mask_phone_numbers() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(3)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let url = sim.url();
    let mut env = creds(&url);
    env.push(("FLOWCAST_LOG", "debug"));
    env.push(("FLOWCAST_LOG_FORMAT", "json"));

    let out = app.flowcast(&["run", "c"], &env).await;

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let logs: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON object"))
        .collect();
    assert!(logs.iter().any(|l| l["fields"]["message"] == "job attempt settled"), "{logs:?}");
    let text = stderr(&out);
    assert!(!text.contains("+12015550001"), "a full phone number in the logs:\n{text}");
    assert!(!text.contains(TOKEN), "a secret in the logs");
}
