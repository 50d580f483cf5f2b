//! Outcomes read back from Studio: every sent job's Execution, once it has
//! ended, gives its status and the campaign's outcome fields (read from its
//! Context) to the ledger, found by polling or by an Event Streams delivery,
//! across restarts; reports and the API show them.

use std::time::Duration;

use flowcast::service::webhook::{body_sha256, sign};
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, eventually};

const PUBLIC: &str = "https://flowcast.example.com";

/// A campaign whose outcome fields read the Parameters back from the
/// Execution's Context (the simulator keeps them as `flow.data`), so their
/// expected values are the CSV's.
fn campaign_with_outcomes(app: &TestApp, contacts: usize) {
    let mut csv = String::from("phone,first_name,visits\n");
    for (i, p) in phones(contacts).iter().enumerate() {
        csv.push_str(&format!("{p},Name{i},{i}\n"));
    }
    app.write("c.csv", csv);
    app.write(
        "c.toml",
        format!(
            "kind = \"survey\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"c.csv\"\n\
             [parameters]\nname = \"{{{{first_name}}}}\"\nvisits = \"{{{{visits}}}}\"\n\
             [outcomes]\nname = \"flow.data.name\"\nvisits = {{ path = \"flow.data.visits\", type = \"integer\" }}\n\
             missing = \"flow.variables.never_set\"\n"
        ),
    );
}

fn env(url: &str) -> Vec<(&str, &str)> {
    vec![
        ("FLOWCAST_STUDIO_URL", url),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("FLOWCAST_RATE", "500"),
        // Polling would not ask for an hour: what `collect` reads, it reads
        // because it asks at once.
        ("FLOWCAST_OUTCOME_AFTER", "1h"),
    ]
}

/// A simulator whose Executions run until finished, and an app that has sent
/// [`campaign_with_outcomes`] to `contacts` contacts through it.
async fn sent_with_outcomes(contacts: usize) -> (Simulator, TestApp) {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    campaign_with_outcomes(&app, contacts);
    let run = app.flowcast(&["run", "c"], &env(&sim.url())).await;
    assert_eq!(run.status.code(), Some(0), "{}{}", stdout(&run), stderr(&run));
    (sim, app)
}

async fn report(app: &TestApp) -> Vec<Value> {
    let out = app.flowcast(&["report", "1", "--format", "json"], &[]).await;
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array().unwrap().iter().filter(|r| !r["job"].is_null()).cloned().collect()
}

#[tokio::test]
async fn collect_reads_each_ended_execution_back_and_leaves_running_ones_open_across_restarts() {
    let (sim, app) = sent_with_outcomes(6).await;
    let url = sim.url();
    let executions = sim.executions();
    for e in &executions[..4] {
        sim.finish_execution(&e.sid);
    }

    let first = app.flowcast(&["collect"], &env(&url)).await;

    assert_eq!(first.status.code(), Some(0), "{}{}", stdout(&first), stderr(&first));
    assert!(stdout(&first).contains("4 outcome(s) read back, 2 still open"), "{}", stdout(&first));
    // A new process (a restart) picks up what is left.
    for e in &executions[4..] {
        sim.finish_execution(&e.sid);
    }
    let second = app.flowcast(&["collect", "1"], &env(&url)).await;
    assert!(stdout(&second).contains("2 outcome(s) read back, 0 still open"), "{}", stdout(&second));

    let rows = report(&app).await;
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let i: usize = phones(6).iter().position(|p| p == row["phone"].as_str().unwrap()).unwrap();
        assert_eq!(row["outcome_state"], "known", "{row}");
        assert_eq!(row["status"], "ended", "{row}");
        assert_eq!(row["outcome"]["name"], json!(format!("Name{i}")), "{row}");
        assert_eq!(row["outcome"]["visits"], json!(i), "typed as an integer: {row}");
        assert_eq!(row["outcome"]["missing"], Value::Null, "an absent path is empty, not an error");
    }
    let csv = stdout(&app.flowcast(&["report", "1"], &[]).await);
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with("status,ended_in,outcome.missing,outcome.name,outcome.visits"), "{header}");
    let status = stdout(&app.flowcast(&["status"], &[]).await);
    assert!(status.contains("visits: 6 answer(s)") && status.contains("mean 2.50"), "{status}");
}

async fn deliver_ended(served: &Served, sid: &str) -> u16 {
    let body = json!([{
        "specversion": "1.0",
        "type": "com.twilio.studio.flow.execution.ended",
        "source": "AB00000000000000000000000001",
        "id": "NO00000000000000000000000001",
        "data": { "execution_sid": sid, "account_sid": ACCOUNT, "flow_sid": FLOW, "status": "ended",
                  "ended_reason": "FLOW_END", "date_updated": "2026-01-01T00:00:05.000Z" }
    }])
    .to_string();
    let query = format!("bodySHA256={}", body_sha256(body.as_bytes()));
    let signature = sign(TOKEN, &format!("{PUBLIC}/webhooks/studio?{query}"));
    reqwest::Client::new()
        .post(format!("{}/webhooks/studio?{query}", served.url))
        .header("content-type", "application/json")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn serve_reads_an_execution_back_as_soon_as_event_streams_says_it_ended() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    campaign_with_outcomes(&app, 3);
    let url = sim.url();
    let served = Served::start_with(
        &app,
        &url,
        &[("FLOWCAST_PUBLIC_URL", PUBLIC), ("FLOWCAST_OUTCOME_AFTER", "1h"), ("FLOWCAST_READ_RATE", "100")],
    )
    .await;
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() == 3).await, "{}", served.log());
    let client = reqwest::Client::new();
    let jobs_url = format!("{}/api/runs/1/jobs", served.url);
    let jobs = async || -> Vec<Value> {
        let body: Value = client.get(&jobs_url).send().await.unwrap().json().await.unwrap();
        body["jobs"].as_array().cloned().unwrap_or_default()
    };
    let ended = sim.executions()[0].sid.clone();
    sim.finish_execution(&ended);

    assert_eq!(deliver_ended(&served, &ended).await, 200);

    let read_back = eventually(Duration::from_secs(10), async || {
        jobs().await.iter().any(|j| j["execution_sid"] == json!(ended) && j["outcome_state"] == "known")
    })
    .await;
    assert!(read_back, "read back after the delivery: {:?}\n{}", jobs().await, served.log());
    let open: Vec<Value> = jobs().await.into_iter().filter(|j| j["outcome_state"] == "open").collect();
    assert_eq!(open.len(), 2, "the others are not due for an hour: {open:?}");
    let run: Value = client.get(format!("{}/api/runs/1", served.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(run["outcomes"]["name"]["no_answer"], 0, "{run}");
    assert_eq!(run["outcomes"]["name"]["values"].as_object().unwrap().len(), 1, "{run}");
    let (code, _) = served.terminate().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn the_example_reminder_rehearsed_with_simulate_reads_back_every_patients_decision() {
    let app = TestApp::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, to) in [(root.join("campaigns"), &app.campaigns), (root.join("flows"), &app.flows)] {
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }

    let out = app.flowcast(&["run", "appointment-reminders", "--simulate"], &[]).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let rows = report(&app).await;
    assert_eq!(rows.len(), 10);
    let mut decisions = std::collections::BTreeSet::new();
    for row in &rows {
        assert_eq!(row["outcome_state"], "known", "{row}");
        assert_eq!(row["status"], "ended", "{row}");
        let decision = row["outcome"]["decision"].as_str().unwrap().to_string();
        // Each decision ends in its own widget of the example Flow.
        let ended_in = match decision.as_str() {
            "confirm" => "confirmed",
            "reschedule" => "rescheduled",
            "unclear" => "unclear",
            "no_reply" => "set_no_reply",
            other => panic!("unexpected decision {other:?}: {row}"),
        };
        assert_eq!(row["ended_in"], ended_in, "{row}");
        decisions.insert(decision);
    }
    assert_eq!(decisions.len(), 4, "ten patients take every branch: {decisions:?}");
}

#[tokio::test]
async fn an_execution_studio_refuses_to_show_is_given_up_on_not_asked_forever() {
    let mut server = mockito::Server::new_async().await;
    let sid = "FN0123456789abcdef0123456789abcdef";
    let _create = server
        .mock("POST", format!("/v2/Flows/{FLOW}/Executions").as_str())
        .with_status(201)
        .with_body(json!({ "sid": sid, "flow_sid": FLOW, "status": "active" }).to_string())
        .create_async()
        .await;
    let _fetch = server
        .mock("GET", format!("/v2/Flows/{FLOW}/Executions/{sid}").as_str())
        .with_status(400)
        .with_body(r#"{"code": 20001, "message": "Bad request", "status": 400}"#)
        .create_async()
        .await;
    let app = TestApp::new();
    campaign_with_outcomes(&app, 1);
    let url = server.url();
    assert_eq!(app.flowcast(&["run", "c"], &env(&url)).await.status.code(), Some(0));

    let out = app.flowcast(&["collect"], &env(&url)).await;

    assert!(stdout(&out).contains("1 outcome(s) read back, 0 still open"), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(report(&app).await[0]["outcome_state"], "unknown");
}

async fn status_run(app: &TestApp) -> Value {
    let out = app.flowcast(&["status", "--json"], &[]).await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    status["runs"][0].clone()
}

#[tokio::test]
async fn a_settled_runs_summary_is_kept_once_and_status_the_api_and_metrics_agree_with_it() {
    let (sim, app) = sent_with_outcomes(6).await;
    let url = sim.url();
    let executions = sim.executions();
    for e in &executions[..4] {
        sim.finish_execution(&e.sid);
    }
    app.flowcast(&["collect"], &env(&url)).await;

    // Finished, two outcomes still to read back: counted on every request.
    let open = status_run(&app).await;
    assert_eq!(open["outcomes"]["visits"]["values"].as_object().map(|v| v.len()), Some(4), "{open}");
    assert!(ledger_rows(&app, "SELECT run_id FROM run_summaries").is_empty(), "nothing kept while outcomes are open");

    for e in &executions[4..] {
        sim.finish_execution(&e.sid);
    }
    app.flowcast(&["collect"], &env(&url)).await;
    let settled = status_run(&app).await;

    assert_eq!(settled["state"], "finished", "{settled}");
    assert_eq!(settled["jobs"], json!({"sent": 6}), "{settled}");
    assert_eq!(settled["outcomes"]["visits"]["values"].as_object().map(|v| v.len()), Some(6), "{settled}");
    assert_eq!(settled["outcomes"]["visits"]["mean"], 2.5, "{settled}");
    let kept = ledger_rows(&app, "SELECT run_id, counts FROM run_summaries");
    assert_eq!(kept, vec![vec![json!(1), json!("{\"sent\":6}")]], "kept once settled");
    assert_eq!(status_run(&app).await, settled, "the kept summary reads back as counted");

    // Serve on a folder without the campaign: with it, serve would start
    // the file's own one-off run (the CLI's run is not one), whose sends
    // race the reads below.
    let no_campaigns = app.dir.path().join("no-campaigns");
    std::fs::create_dir_all(&no_campaigns).unwrap();
    let served = Served::start_in(&app, &no_campaigns, &url, &[]).await;
    let api: Value = reqwest::get(format!("{}/api/runs/1", served.url)).await.unwrap().json().await.unwrap();
    assert_eq!(api, settled, "the API shows what status shows");
    let metrics = reqwest::get(format!("{}/metrics", served.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "flowcast_jobs{state=\"sent\"} 6"), "{metrics}");
    served.terminate().await;
}

#[tokio::test]
async fn serve_keeps_a_settled_runs_summary_without_being_asked() {
    let (sim, app) = sent_with_outcomes(3).await;
    let url = sim.url();
    for e in sim.executions() {
        sim.finish_execution(&e.sid);
    }
    let collect = app.flowcast(&["collect"], &env(&url)).await;
    assert!(stdout(&collect).contains("0 still open"), "{}", stdout(&collect));
    assert!(ledger_rows(&app, "SELECT run_id FROM run_summaries").is_empty(), "nothing has asked for it yet");

    let served = Served::start(&app, &url).await;

    let kept =
        eventually(Duration::from_secs(15), async || !ledger_rows(&app, "SELECT run_id FROM run_summaries").is_empty())
            .await;
    assert!(kept, "serve kept no summary of the settled run:\n{}", served.log());
    served.terminate().await;
}
