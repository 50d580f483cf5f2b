//! `flowcast executions list|end`, `flowcast cancel RUN --end-active` and
//! `POST /api/runs/{id}/cancel?end_active=true`, against a simulator that
//! keeps every Execution active until it is ended.

use std::time::Duration;

use flowcast::domain::{JobState, RunState};
use flowcast::store::JobRow;
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::Value;

use crate::helpers::*;
use crate::service::{Served, eventually};

fn creds(url: &str) -> Vec<(&str, &str)> {
    vec![("FLOWCAST_STUDIO_URL", url), ("TWILIO_ACCOUNT_SID", ACCOUNT), ("TWILIO_AUTH_TOKEN", TOKEN)]
}

/// A simulator whose Executions stay active until ended.
async fn keeping_executions_active() -> Simulator {
    Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap()
}

/// A run of `n` contacts, every one sent (so every one in an active Execution).
async fn sent_run(app: &TestApp, sim: &Simulator, n: usize) -> i64 {
    app.write("c.csv", contacts_csv(&phones(n)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let run = app.start_run("c.toml").await;
    app.dispatch(run, &sim.url()).await;
    run
}

/// A campaign whose first `now` contacts are due at once and the rest
/// tomorrow: once dispatched, its run is still going, with some contacts in
/// active Executions and the rest pending.
fn write_half_due_campaign(app: &TestApp, now: usize, later: usize) {
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let mut csv = String::from("phone,first_name,due\n");
    for (i, phone) in phones(now + later).iter().enumerate() {
        let due = if i < now { &past } else { &tomorrow };
        csv.push_str(&format!("{phone},Name{i},{due}\n"));
    }
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", "send_at = \"{{due}}\"\ntimezone = \"UTC\""));
}

/// The Executions the simulator still has active.
fn active(sim: &Simulator) -> Vec<String> {
    sim.executions().into_iter().filter(|e| e.status == "active").map(|e| e.sid).collect()
}

/// Asserts each sent job's audit trail records the end of its own Execution,
/// and the job records that it ended.
async fn assert_each_end_audited(app: &TestApp, jobs: &[JobRow], asked_by: &str) {
    let store = app.store().await;
    for job in jobs.iter().filter(|j| j.state == JobState::Sent) {
        let sid = job.execution_sid.clone().expect("a sent job has its Execution");
        let calls = store.calls_for_job(job.id).await.unwrap();
        let end = calls
            .iter()
            .find(|c| c.operation == "end")
            .unwrap_or_else(|| panic!("job {} has no end in its audit trail: {calls:?}", job.id));
        assert_eq!(end.outcome, "ok", "{end:?}");
        assert_eq!(end.execution_sid.as_deref(), Some(sid.as_str()));
        assert_eq!(end.note.as_deref(), Some(format!("{asked_by} ended {sid}").as_str()));
    }
    for job in app.jobs(jobs[0].run_id).await.iter().filter(|j| j.state == JobState::Sent) {
        assert_eq!(job.ended_reason.as_deref(), Some("ended by flowcast"), "{job:?}");
        assert!(job.execution_ended_at.is_some(), "{job:?}");
    }
}

#[tokio::test]
async fn a_runs_executions_are_listed_with_their_live_status() {
    let sim = keeping_executions_active().await;
    let app = TestApp::new();
    let run = sent_run(&app, &sim, 4).await;
    // Someone else's Execution on the same Flow is Studio's, not the run's.
    let foreign = sim.start_foreign_execution(FLOW, "+12015559999");
    let first = app.jobs(run).await[0].execution_sid.clone().unwrap();
    sim.finish_execution(&first);

    let out = app.flowcast(&["executions", "list", "--run", &run.to_string(), "--json"], &creds(&sim.url())).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = listed["executions"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{listed}");
    for (row, job) in rows.iter().zip(app.jobs(run).await) {
        assert_eq!(row["sid"], job.execution_sid.unwrap().as_str());
        assert_eq!(row["phone"], job.phone.as_str(), "the operator sees the whole number");
        let expected = if row["sid"] == first.as_str() { "ended" } else { "active" };
        assert_eq!(row["status"], expected, "{row}");
    }
    assert_eq!(listed["next_after"], Value::Null);

    // --active: the run's active ones, from Studio's list, without the foreign one.
    let out = app.flowcast(&["executions", "list", "--run", &run.to_string(), "--active"], &creds(&sim.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("run {run}: 3 active Execution(s)")), "{}", stdout(&out));
    assert!(!stdout(&out).contains(&foreign) && !stdout(&out).contains(&first), "{}", stdout(&out));

    // --flow: Studio's own list of the Flow, the foreign one included.
    let out = app.flowcast(&["executions", "list", "--flow", FLOW, "--active", "--json"], &creds(&sim.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sids: Vec<&str> = listed["executions"].as_array().unwrap().iter().map(|r| r["sid"].as_str().unwrap()).collect();
    assert_eq!(sids.len(), 4, "{listed}");
    assert!(sids.contains(&foreign.as_str()));

    // The Flow's list is cut at --limit, and says when there are more.
    let out = app.flowcast(&["executions", "list", "--flow", FLOW, "--limit", "2"], &creds(&sim.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().filter(|l| l.contains(" FN")).count(), 2, "{}", stdout(&out));
    assert!(stdout(&out).contains("more exist"), "{}", stdout(&out));

    // A run's jobs a page at a time, saying where the next one starts.
    let out =
        app.flowcast(&["executions", "list", "--run", &run.to_string(), "--limit", "2"], &creds(&sim.url())).await;
    let second_job = app.jobs(run).await[1].id;
    assert!(
        stdout(&out).contains(&format!("more: flowcast executions list --run {run} --after {second_job}")),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn executions_end_run_leaves_none_of_the_runs_executions_active_and_a_second_end_is_a_no_op() {
    let sim = keeping_executions_active().await;
    let app = TestApp::new();
    let run = sent_run(&app, &sim, 5).await;
    let foreign = sim.start_foreign_execution(FLOW, "+12015559999");
    assert_eq!(active(&sim).len(), 6);

    let out = app.flowcast(&["executions", "end", "--run", &run.to_string()], &creds(&sim.url())).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("run {run}: 5 ended, 0 already ended, 0 failed")), "{}", stdout(&out));
    assert_eq!(active(&sim), vec![foreign.clone()], "only the run's own Executions are ended");
    let jobs = app.jobs(run).await;
    assert_each_end_audited(&app, &jobs, "flowcast executions end --run").await;

    // Again: nothing left to end, every one reported as already ended.
    let out = app.flowcast(&["executions", "end", "--run", &run.to_string()], &creds(&sim.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("run {run}: 0 ended, 5 already ended, 0 failed")), "{}", stdout(&out));

    // By SID: the Flow comes from the run, and an ended one is not ended again.
    let sid = jobs[0].execution_sid.clone().unwrap();
    let out = app.flowcast(&["executions", "end", &sid, "--json"], &creds(&sim.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer["executions"][0]["outcome"], "already_ended", "{answer}");
    assert_eq!(answer["executions"][0]["job"], jobs[0].id);
    assert_eq!((answer["ended"].as_u64(), answer["already_ended"].as_u64()), (Some(0), Some(1)));

    // The foreign one, by SID with its Flow: ended, recorded for no job.
    let out = app.flowcast(&["executions", "end", &foreign, "--flow", FLOW], &creds(&sim.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("{foreign}  -  no job  ended")), "{}", stdout(&out));
    assert!(active(&sim).is_empty());
    let ended_by_request = sim.executions().iter().filter(|e| e.ended_by_request).count();
    assert_eq!(ended_by_request, 6, "each Execution was ended once");
}

#[tokio::test]
async fn ending_without_credentials_is_a_studio_error_and_changes_nothing() {
    let sim = keeping_executions_active().await;
    let app = TestApp::new();
    write_half_due_campaign(&app, 2, 2);
    let run = app.start_run("c.toml").await;

    let out = app.flowcast(&["cancel", &run.to_string(), "--end-active"], &[("FLOWCAST_STUDIO_URL", &sim.url())]).await;

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no Twilio credentials"), "{}", stderr(&out));
    assert_ne!(app.store().await.get_run(run).await.unwrap().state, RunState::Cancelled, "the run goes on");
}

#[tokio::test]
async fn cancel_end_active_cancels_the_run_then_ends_its_active_executions() {
    let sim = keeping_executions_active().await;
    let app = TestApp::new();
    write_half_due_campaign(&app, 3, 2);
    let run = app.start_run("c.toml").await;
    let dispatcher = app.dispatcher_on(&sim.url(), std::sync::Arc::new(flowcast::schedule::SystemClock)).await;
    dispatcher.run_until_idle(run).await.unwrap();
    assert_eq!(active(&sim).len(), 3);

    let out = app.flowcast(&["cancel", &run.to_string(), "--end-active"], &creds(&sim.url())).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("run {run}: active → cancelled")), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("run {run}: 3 ended, 0 already ended, 0 failed")), "{}", stdout(&out));
    assert!(active(&sim).is_empty(), "no Execution of the run is left active");
    assert_eq!(sim.executions().len(), 3, "nothing more was sent");
    let jobs = app.jobs(run).await;
    assert_eq!(jobs.iter().filter(|j| j.state == JobState::Cancelled).count(), 2);
    assert_each_end_audited(&app, &jobs, "flowcast cancel --end-active").await;
}

#[tokio::test]
async fn cancel_over_http_with_end_active_ends_the_runs_active_executions() {
    let sim = keeping_executions_active().await;
    let app = TestApp::new();
    let served = Served::start(&app, &sim.url()).await;
    // serve runs the dropped campaign: 3 contacts now, 2 tomorrow.
    write_half_due_campaign(&app, 3, 2);
    assert!(eventually(Duration::from_secs(20), async || active(&sim).len() == 3).await, "{}", served.log());
    let client = reqwest::Client::new();
    let cancel = format!("{}/api/runs/1/cancel?end_active=true", served.url);

    let answer = client.post(&cancel).send().await.unwrap();

    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["state"], "cancelled", "{body}");
    assert_eq!(body["previous"], "active", "{body}");
    assert_eq!((body["ended"].as_u64(), body["end_failed"].as_u64()), (Some(3), Some(0)), "{body}");
    assert!(active(&sim).is_empty(), "no Execution of the run is left active");
    let jobs = app.jobs(1).await;
    assert_each_end_audited(&app, &jobs, "POST /api/runs/1/cancel?end_active=true").await;

    // A second one: the run stays cancelled and nothing is left to end.
    let again: Value = client.post(&cancel).send().await.unwrap().json().await.unwrap();
    assert_eq!((again["ended"].as_u64(), again["already_ended"].as_u64()), (Some(0), Some(3)), "{again}");
    // end_active is for cancel only, and must say yes or no.
    let pause = client.post(format!("{}/api/runs/1/pause?end_active=true", served.url)).send().await.unwrap();
    assert_eq!(pause.status(), 400);
    let bad = client.post(format!("{}/api/runs/1/cancel?end_active=maybe", served.url)).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(sim.executions().len(), 3, "nothing more was sent");
}
