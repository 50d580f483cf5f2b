//! The dispatcher against the simulator over loopback HTTP: one Execution per
//! contact, the three 409 policies, adoption of our own Executions, retries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flowcast::dispatch::{DispatchSettings, Dispatcher, RateLimits, RunEnd};
use flowcast::domain::{FlowSid, JobState};
use flowcast::schedule::SystemClock;
use flowcast::store::JobRow;
use flowcast::studio::simulator::{SimConfig, Simulator};
use flowcast::studio::{CreateRequest, Execution, HttpStudio, ListFilter, Step, StudioApi, StudioError, StudioResult};
use serde_json::json;

use crate::helpers::*;

async fn jobs(app: &TestApp, run: i64) -> Vec<JobRow> {
    app.jobs(run).await
}

fn sim_config(lifetime: Option<Duration>) -> SimConfig {
    SimConfig { lifetime, ..SimConfig::default() }
}

/// A run of campaign `c` (with `extra` lines) over `n` contacts, started;
/// the contacts' phones and the run.
async fn started_run(app: &TestApp, n: usize, extra: &str) -> (Vec<String>, i64) {
    let numbers = phones(n);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", extra));
    (numbers, app.start_run("c.toml").await)
}

#[tokio::test]
async fn a_thousand_contacts_get_exactly_one_execution_each() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(1000);
    app.write("big.csv", contacts_csv(&numbers));
    app.write("big.toml", campaign_toml("big.csv", ""));
    let run = app.start_run("big.toml").await;

    let end = app.dispatch(run, &sim.url()).await;
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");

    let executions = sim.executions();
    assert_eq!(executions.len(), 1000);
    let to: HashSet<&str> = executions.iter().map(|e| e.to.as_str()).collect();
    assert_eq!(to.len(), 1000, "one Execution per contact");
    assert_eq!(to, numbers.iter().map(String::as_str).collect());
    let rows = jobs(&app, run).await;
    let by_sid: HashMap<&str, &JobRow> = rows.iter().map(|j| (j.execution_sid.as_deref().unwrap(), j)).collect();
    for e in &executions {
        assert!(e.to.starts_with("+1201555") && e.to.len() == 12, "E.164: {}", e.to);
        assert_eq!(e.from, "+15017122661");
        let job = by_sid[e.sid.as_str()];
        assert_eq!(job.state, flowcast::domain::JobState::Sent);
        assert_eq!(job.phone.as_str(), e.to);
        let index: usize = numbers.iter().position(|n| *n == e.to).unwrap();
        assert_eq!(e.parameters["name"], json!(format!("Name{index}")));
        assert_eq!(e.parameters["clinic"], json!("Main St"));
        assert_eq!(e.parameters["flowcast"], json!({ "campaign": "big", "run": run, "job": job.id }));
    }
    every_create_is_kept_on_its_row(&app, 1000);
}

/// A job whose Parameters the ledger holds damaged (values that are not its
/// run's keys', or not an object) fails as invalid and nothing is sent for
/// it; the run's other jobs go out with their own.
#[tokio::test]
async fn a_job_whose_stored_parameters_are_damaged_fails_as_invalid_and_is_not_sent() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (numbers, run) = started_run(&app, 3, "").await;
    let ids: Vec<i64> = jobs(&app, run).await.iter().map(|j| j.id).collect();
    ledger_write(&app, &format!("UPDATE jobs SET parameters = '[1]' WHERE id = {}", ids[1]));

    let end = app.dispatch(run, &sim.url()).await;
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    let rows = jobs(&app, run).await;
    assert_eq!(states(&rows), vec![JobState::Sent, JobState::Failed, JobState::Sent]);
    let reason = rows[1].reason.as_ref().unwrap().to_string();
    assert!(
        reason.starts_with("invalid: ") && reason.contains("neither a JSON object nor values for its run's keys"),
        "{reason}"
    );
    let to: HashSet<String> = sim.executions().iter().map(|e| e.to.clone()).collect();
    assert_eq!(to, HashSet::from([numbers[0].clone(), numbers[2].clone()]));
    for e in sim.executions() {
        assert_eq!(e.parameters["clinic"], json!("Main St"), "{}", e.to);
    }
}

/// Each create's record reached the ledger in the batch that recorded its
/// job sent, so each of the `sent` job rows keeps its own, whenever the
/// batches went, and no row of `studio_calls` was written.
fn every_create_is_kept_on_its_row(app: &TestApp, sent: i64) {
    let rows = ledger_rows(app, "SELECT COUNT(*) FROM studio_calls");
    assert_eq!(rows, vec![vec![json!(0)]], "no create's record written apart from its job's outcome");
    let rows = ledger_rows(app, "SELECT COUNT(*) FROM jobs WHERE create_on_row = 1");
    assert_eq!(rows, vec![vec![json!(sent)]]);
}

/// A create's audit record names the Execution; what was sent is the job's
/// own: its phone (To), its run's sender (From) and its Parameters with the
/// `flowcast` key (a copy of them in every record doubled its size). A
/// create Studio answered is kept by the job row alone (`create_on_row`;
/// `studio_call_trail` shows it with the other calls); a create Studio
/// refused is a row of its own and names To and From itself.
#[tokio::test]
async fn a_creates_record_and_its_job_say_together_what_was_sent() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(3);
    // The last contact is busy in another Execution: its create meets a 409.
    sim.start_foreign_execution(FLOW, &numbers[2]);
    app.write("few.csv", contacts_csv(&numbers));
    app.write("few.toml", campaign_toml("few.csv", "on_conflict = \"skip\""));
    let run = app.start_run("few.toml").await;
    let end = app.dispatch(run, &sim.url()).await;
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    let executions = sim.executions();
    assert_eq!(executions.len(), 3, "two sent and the foreign one");
    let rows = ledger_rows(
        &app,
        "SELECT c.request, c.response, c.execution_sid, j.execution_sid, j.run_id, j.id, j.phone, r.from_addr, \
                c.outcome, c.at, j.sent_at, j.zone \
         FROM studio_call_trail c JOIN jobs j ON j.id = c.job_id JOIN runs r ON r.id = j.run_id \
         WHERE c.operation = 'create' ORDER BY j.id",
    );
    assert_eq!(rows.len(), 3, "one record per create: {rows:?}");
    // A create Studio answered is kept by its job row alone; the refused
    // one is a row of its own.
    let own_rows = ledger_rows(&app, "SELECT outcome FROM studio_calls WHERE operation = 'create'");
    assert_eq!(own_rows, vec![vec![json!("conflict")]], "no row repeats what a sent job's row says");
    let on_rows = ledger_rows(&app, "SELECT COUNT(*) FROM jobs WHERE create_on_row = 1");
    assert_eq!(on_rows, vec![vec![json!(2)]]);
    for r in &rows {
        let phone = r[6].as_str().unwrap();
        if phone == numbers[2] {
            assert_eq!(r[8], json!("conflict"), "{r:?}");
            assert_eq!(r[0], json!(format!("To={phone} From=+15017122661")), "{r:?}");
            continue;
        }
        assert_eq!(r[8], json!("ok"), "{r:?}");
        assert_eq!(r[9], r[10], "its time is the job's: {r:?}");
        assert_eq!(r[11], json!(""), "a sent job's zone served its send window alone: {r:?}");
        let trail = app.store().await.calls_for_job(r[5].as_i64().unwrap()).await.unwrap();
        assert_eq!(
            trail.iter().map(|c| (c.operation.as_str(), c.outcome.as_str())).collect::<Vec<_>>(),
            vec![("create", "ok")],
            "the job's trail shows the create: {trail:?}"
        );
        assert_eq!(trail[0].execution_sid.as_ref(), r[3].as_str().map(str::to_string).as_ref());
        assert_eq!(r[0], json!(""), "a create that succeeded does not repeat To and From: {r:?}");
        assert_eq!(r[1], serde_json::Value::Null, "the SID is kept once: {r:?}");
        assert_eq!(r[2], r[3], "{r:?}");
        let sent = executions.iter().find(|e| json!(e.sid) == r[2]).expect("the recorded Execution exists");
        assert_eq!(json!(sent.to), r[6]);
        assert_eq!(json!(sent.from), r[7]);
        assert_eq!(r[4], json!(run), "{r:?}");
        let mut parameters = stored_parameters(&app, r[5].as_i64().unwrap());
        parameters["flowcast"] = json!({ "campaign": "few", "run": run, "job": r[5] });
        assert_eq!(sent.parameters, parameters, "the job's Parameters and key are what was sent");
    }
}

/// One dispatcher serving two runs at once (as `serve` does) keeps each
/// create with its job's outcome: a run's batch does not carry off the
/// records of the other run's jobs still in flight.
#[tokio::test]
async fn two_runs_on_one_dispatcher_keep_each_create_with_its_jobs_outcome() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(600);
    app.write("a.csv", contacts_csv(&numbers[..300]));
    app.write("b.csv", contacts_csv(&numbers[300..]));
    app.write("a.toml", campaign_toml("a.csv", ""));
    app.write("b.toml", campaign_toml("b.csv", "").replace("reminder", "survey"));
    let (a, b) = (app.start_run("a.toml").await, app.start_run("b.toml").await);
    let dispatcher = Dispatcher::new(
        app.store().await,
        Arc::new(http_studio(&sim.url())),
        Arc::new(SystemClock),
        fast_settings(),
        Arc::new(RateLimits::new(1000)),
    );
    let (ea, eb) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(dispatcher.run_to_end(a), dispatcher.run_to_end(b))
    })
    .await
    .expect("both runs end within a minute");
    assert!(matches!(ea.unwrap(), RunEnd::Finished(_)) && matches!(eb.unwrap(), RunEnd::Finished(_)));
    assert_eq!(sim.executions().len(), 600);
    every_create_is_kept_on_its_row(&app, 600);
}

/// A job row keeps its create's record only when it records that create's
/// Execution: a job settled otherwise while its create was out, or recorded
/// sent with another Execution (found by reconciliation, say), leaves the
/// create's record a row of its own.
#[tokio::test]
async fn a_create_whose_job_does_not_record_it_keeps_its_own_row() {
    use flowcast::domain::JobOutcome;
    use flowcast::store::{SettledJob, StudioCall};
    let app = TestApp::new();
    let (_, run) = started_run(&app, 3, "").await;
    let store = app.store().await;
    let now = chrono::Utc::now().timestamp_millis();
    let claimed = store.claim_due(run, now, 10, false, Default::default()).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let sid = |i: usize| format!("FN{i:032}");
    let create = |i: usize, job: i64| StudioCall {
        run_id: Some(run),
        job_id: Some(job),
        at: now + 1,
        operation: "create",
        request: String::new(),
        http_status: None,
        response: None,
        outcome: "ok".into(),
        execution_sid: Some(sid(i)),
        note: None,
    };
    let settled = |i: usize, job: i64| SettledJob {
        job_id: job,
        outcome: JobOutcome::Sent { sid: sid(i) },
        attempts_sent: 1,
        at: now + 2,
    };
    let ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
    // Job 0 is settled (expired) while its create is out, so the create's
    // answer no longer applies to it. Job 1 is recorded sent with another Execution than its create's (found
    // by reconciliation, say); job 2 with its create's own.
    let expired = SettledJob { job_id: ids[0], outcome: JobOutcome::Expired, attempts_sent: 0, at: now + 1 };
    store.record_outcomes(vec![expired], vec![], Duration::from_secs(60)).await.unwrap();
    let outcomes = vec![settled(0, ids[0]), settled(9, ids[1]), settled(2, ids[2])];
    let calls = vec![create(0, ids[0]), create(1, ids[1]), create(2, ids[2])];
    store.record_outcomes(outcomes, calls, Duration::from_secs(60)).await.unwrap();
    let rows =
        ledger_rows(&app, "SELECT job_id, execution_sid FROM studio_calls WHERE operation = 'create' ORDER BY job_id");
    assert_eq!(
        rows,
        vec![vec![json!(ids[0]), json!(sid(0))], vec![json!(ids[1]), json!(sid(1))]],
        "the creates no job row records are rows of their own"
    );
    let flags = ledger_rows(&app, "SELECT id, create_on_row FROM jobs ORDER BY id");
    assert_eq!(flags.iter().map(|r| r[1].clone()).collect::<Vec<_>>(), vec![json!(0), json!(0), json!(1)]);
    let states: Vec<JobState> = app.jobs(run).await.iter().map(|j| j.state).collect();
    assert_eq!(states, vec![JobState::Expired, JobState::Sent, JobState::Sent]);
    for (i, id) in ids.iter().enumerate() {
        let trail = store.calls_for_job(*id).await.unwrap();
        assert_eq!(trail.len(), 1, "job {i}: {trail:?}");
        assert_eq!((trail[0].operation.as_str(), trail[0].execution_sid.clone()), ("create", Some(sid(i))));
    }
}

/// A job's trail lists its rows in the order they were written, whatever
/// clock timed them (processes and instances do not share one), and the
/// create its row keeps after the last row timed at or before its send.
#[tokio::test]
async fn a_jobs_trail_is_in_write_order_with_its_kept_create_where_its_send_was() {
    use flowcast::domain::JobOutcome;
    use flowcast::store::{SettledJob, StudioCall};
    let app = TestApp::new();
    let (_, run) = started_run(&app, 1, "").await;
    let store = app.store().await;
    let now = chrono::Utc::now().timestamp_millis();
    let job = store.claim_due(run, now, 10, false, Default::default()).await.unwrap().remove(0).id;
    let call = |operation: &'static str, at: i64, sid: &str, note: Option<&str>| StudioCall {
        run_id: Some(run),
        job_id: Some(job),
        at,
        operation,
        request: String::new(),
        http_status: None,
        response: None,
        outcome: "ok".into(),
        execution_sid: Some(sid.to_string()),
        note: note.map(str::to_string),
    };
    // Two calls of the attempt, the second timed earlier by another clock.
    store.record_calls(vec![call("end", now + 100, "FNa", Some("first"))]).await.unwrap();
    store.record_calls(vec![call("fetch", now + 50, "FNb", Some("second"))]).await.unwrap();
    let sent =
        SettledJob { job_id: job, outcome: JobOutcome::Sent { sid: "FNc".into() }, attempts_sent: 1, at: now + 200 };
    store.record_outcomes(vec![sent], vec![call("create", now + 199, "FNc", None)], Duration::ZERO).await.unwrap();
    // A later call (an end of the Execution, say).
    store.record_calls(vec![call("end", now + 300, "FNc", Some("later"))]).await.unwrap();
    let trail: Vec<(String, Option<String>)> =
        store.calls_for_job(job).await.unwrap().into_iter().map(|c| (c.operation, c.execution_sid)).collect();
    let expected = [("end", "FNa"), ("fetch", "FNb"), ("create", "FNc"), ("end", "FNc")];
    assert_eq!(trail, expected.map(|(o, s)| (o.to_string(), Some(s.to_string()))).to_vec());
    let kept = ledger_rows(&app, "SELECT create_on_row FROM jobs");
    assert_eq!(kept, vec![vec![json!(1)]], "the create is kept on the row");
}

#[tokio::test]
async fn skip_policy_creates_nothing_for_active_contacts_and_records_the_active_sid() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(5);
    let busy: Vec<String> = numbers[..2].iter().map(|p| sim.start_foreign_execution(FLOW, p)).collect();
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", "on_conflict = \"skip\""));
    let run = app.start_run("c.toml").await;

    app.dispatch(run, &sim.url()).await;

    let rows = jobs(&app, run).await;
    for (i, job) in rows.iter().enumerate() {
        if i < 2 {
            assert_eq!(job.state, flowcast::domain::JobState::Skipped);
            assert_eq!(job.reason.as_ref().map(ToString::to_string).as_deref(), Some("conflict"));
            assert_eq!(job.execution_sid.as_deref(), Some(busy[i].as_str()));
        } else {
            assert_eq!(job.state, flowcast::domain::JobState::Sent);
        }
    }
    let executions = sim.executions();
    assert_eq!(executions.len(), 5, "2 foreign + 3 created");
    assert!(
        executions.iter().filter(|e| e.status == "active").count() == 5,
        "the busy contacts' Executions were left alone"
    );
}

#[tokio::test]
async fn end_policy_ends_each_active_execution_then_creates_its_own() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(4);
    let busy: Vec<String> = numbers[..2].iter().map(|p| sim.start_foreign_execution(FLOW, p)).collect();
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", "on_conflict = \"end\""));
    let run = app.start_run("c.toml").await;

    app.dispatch(run, &sim.url()).await;

    let executions = sim.executions();
    for sid in &busy {
        let e = executions.iter().find(|e| &e.sid == sid).unwrap();
        assert_eq!(e.status, "ended");
        assert!(e.ended_by_request, "flowcast ended it");
    }
    let rows = jobs(&app, run).await;
    assert!(rows.iter().all(|j| j.state == flowcast::domain::JobState::Sent), "{rows:?}");
    for job in &rows[..2] {
        let ours = job.execution_sid.as_deref().unwrap();
        assert!(!busy.iter().any(|b| b == ours), "a new Execution, not the ended one");
        let calls = app.store().await.calls_for_job(job.id).await.unwrap();
        let ended = calls.iter().find(|c| c.operation == "end").expect("the end is recorded");
        assert!(ended.note.as_deref().unwrap().contains("on_conflict = \"end\""), "{ended:?}");
    }
    assert_eq!(executions.len(), 6);
}

#[tokio::test]
async fn wait_policy_creates_after_the_active_execution_ends() {
    // The foreign Execution stays active until its Flow is finished here,
    // once the job has met it: an Execution ending by its lifetime could end
    // before a slow machine's first create, which then met no conflict.
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (numbers, run) = started_run(&app, 3, "on_conflict = \"wait\"\nmax_wait = \"30s\"").await;
    let busy = sim.start_foreign_execution(FLOW, &numbers[0]);
    let finish_once_met = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while sim.conflicts() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sim.finish_execution(&busy);
    };

    let url = sim.url();
    let (end, ()) = tokio::join!(app.dispatch(run, &url), finish_once_met);
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");

    let rows = jobs(&app, run).await;
    assert!(rows.iter().all(|j| j.state == flowcast::domain::JobState::Sent), "{rows:?}");
    let executions = sim.executions();
    let foreign = executions.iter().find(|e| e.sid == busy).unwrap();
    assert!(!foreign.ended_by_request, "wait never ends someone else's Execution");
    let ours = executions.iter().find(|e| Some(e.sid.as_str()) == rows[0].execution_sid.as_deref()).unwrap();
    assert!(ours.date_created >= foreign.date_updated - chrono::Duration::seconds(1));
    assert_eq!(sim.conflicts(), 1, "waiting polls the Execution, it does not hammer create");
}

#[tokio::test]
async fn wait_policy_past_max_wait_fails_with_conflict_timeout() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(2);
    sim.start_foreign_execution(FLOW, &numbers[1]);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", "on_conflict = \"wait\"\nmax_wait = \"1s\""));
    let run = app.start_run("c.toml").await;

    app.dispatch(run, &sim.url()).await;

    let rows = jobs(&app, run).await;
    assert_eq!(rows[0].state, flowcast::domain::JobState::Sent);
    assert_eq!(rows[1].state, flowcast::domain::JobState::Failed);
    assert_eq!(rows[1].reason.as_ref().map(ToString::to_string).as_deref(), Some("conflict_timeout"));
}

#[tokio::test]
async fn a_409_that_names_no_sid_is_resolved_by_listing_active_executions() {
    let sim = Simulator::start(SimConfig { lifetime: None, conflict_names_sid: false, ..SimConfig::default() })
        .await
        .unwrap();
    let app = TestApp::new();
    let numbers = phones(3);
    // Another contact's active Execution must not be mistaken for this one's.
    sim.start_foreign_execution(FLOW, "+12015559999");
    let busy = sim.start_foreign_execution(FLOW, &numbers[1]);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", "on_conflict = \"skip\""));
    let run = app.start_run("c.toml").await;

    app.dispatch(run, &sim.url()).await;

    let rows = jobs(&app, run).await;
    assert_eq!(rows[1].state, flowcast::domain::JobState::Skipped);
    assert_eq!(rows[1].execution_sid.as_deref(), Some(busy.as_str()));
    let calls = app.store().await.calls_for_job(rows[1].id).await.unwrap();
    assert!(calls.iter().any(|c| c.operation == "list"), "{calls:?}");
}

#[tokio::test]
async fn an_active_execution_carrying_our_own_job_key_is_adopted_not_skipped() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(2);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", "on_conflict = \"skip\""));
    let run = app.start_run("c.toml").await;
    let first = jobs(&app, run).await[0].id;
    // As if an earlier attempt's answer was lost: Studio has our Execution.
    let studio = http_studio(&sim.url());
    let flow = FlowSid::parse(FLOW).unwrap();
    let earlier = studio
        .create_execution(
            &flow,
            &CreateRequest {
                to: numbers[0].clone(),
                from: "+15017122661".into(),
                parameters: json!({ "flowcast": { "campaign": "c", "run": run, "job": first } }).to_string(),
            },
        )
        .await
        .unwrap();

    app.dispatch(run, &sim.url()).await;

    let rows = jobs(&app, run).await;
    assert_eq!(rows[0].state, flowcast::domain::JobState::Sent);
    assert_eq!(rows[0].execution_sid.as_deref(), Some(earlier.sid.as_str()));
    assert_eq!(sim.executions().iter().filter(|e| e.to == numbers[0]).count(), 1, "no second Execution");
}

#[tokio::test]
async fn a_job_left_dispatching_by_a_crash_is_reconciled_before_any_resend() {
    // The earlier Execution has already ended: a 409 would not reveal it, only
    // the listing since the attempt began does.
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(3);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let run = app.start_run("c.toml").await;
    let store = app.store().await;
    let claimed =
        store.claim_due(run, chrono::Utc::now().timestamp_millis(), 1, false, Default::default()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let job = &claimed[0];
    let studio = http_studio(&sim.url());
    let flow = FlowSid::parse(FLOW).unwrap();
    let created = studio
        .create_execution(
            &flow,
            &CreateRequest {
                to: job.phone.as_str().to_string(),
                from: "+15017122661".into(),
                parameters: json!({ "flowcast": { "campaign": "c", "run": run, "job": job.id } }).to_string(),
            },
        )
        .await
        .unwrap();
    sim.finish_execution(&created.sid);
    // ... and the process died here, before recording the outcome.

    app.dispatch(run, &sim.url()).await;

    let rows = jobs(&app, run).await;
    let adopted = rows.iter().find(|r| r.id == job.id).unwrap();
    assert_eq!(adopted.state, flowcast::domain::JobState::Sent);
    assert_eq!(adopted.execution_sid.as_deref(), Some(created.sid.as_str()));
    assert_eq!(sim.executions().len(), 3, "exactly one Execution per contact");
}

/// A dispatch that stops on a ledger error (here a claim the ledger refuses)
/// still writes the Studio call records it holds: the create that went out
/// before the error is in its job's trail, for reconciliation to match.
#[tokio::test]
async fn a_dispatch_stopped_by_a_ledger_error_writes_the_creates_it_holds() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 3, "").await;
    // The ledger refuses to mark the third contact's job (CSV line 4) in flight.
    inject_job_fault(&app, "refuse_line_4", "UPDATE OF state", "NEW.state = 'dispatching' AND NEW.line = 4");
    // The second create never returns: the first one's outcome settles while
    // a request is still out, and with no batch due for a minute the next
    // claim (the third job's) comes before that outcome's batch: the record
    // and the outcome wait in memory when the claim is refused.
    let studio = FailingCreates::held_at_second(http_studio(&sim.url()), Arc::new(tokio::sync::Semaphore::new(0)));
    let settings = DispatchSettings { concurrency: 2, flush_every: Duration::from_secs(60), ..fast_settings() };
    let dispatcher = Dispatcher::new(
        app.store().await,
        Arc::new(studio),
        Arc::new(SystemClock),
        settings,
        Arc::new(RateLimits::new(1000)),
    );
    let end = tokio::time::timeout(Duration::from_secs(60), dispatcher.run_to_end(run)).await.expect("it stops");
    let error = end.expect_err("the refused claim stops the dispatch").to_string();
    assert!(error.contains("injected fault"), "{error}");

    let executions = sim.executions();
    assert_eq!(executions.len(), 1, "one create answered, one held, one never claimed");
    let store = app.store().await;
    for job in jobs(&app, run).await {
        let trail = store.calls_for_job(job.id).await.unwrap();
        let calls: Vec<(&str, Option<&str>)> =
            trail.iter().map(|c| (c.operation.as_str(), c.execution_sid.as_deref())).collect();
        if job.phone.as_str() == executions[0].to {
            assert_eq!(job.state, JobState::Dispatching, "its outcome was not written: {job:?}");
            assert_eq!(calls, vec![("create", Some(executions[0].sid.as_str()))], "its create is kept");
        } else {
            assert_eq!(calls, vec![], "{job:?}");
        }
    }
}

/// Wraps a Studio: fails the first `remaining` creates with `error`, and
/// with `hold`, keeps the create numbered `hold.0` (from 0) waiting until
/// `hold.1` gives it a permit.
struct FailingCreates {
    inner: HttpStudio,
    remaining: AtomicU32,
    error: StudioError,
    hold: Option<(u32, Arc<tokio::sync::Semaphore>)>,
    creates: AtomicU32,
}

impl FailingCreates {
    fn new(inner: HttpStudio, failures: u32, error: StudioError) -> Self {
        FailingCreates { inner, remaining: AtomicU32::new(failures), error, hold: None, creates: AtomicU32::new(0) }
    }

    /// Fails nothing; the second create waits for a permit of `gate`.
    fn held_at_second(inner: HttpStudio, gate: Arc<tokio::sync::Semaphore>) -> Self {
        let unused = StudioError::Transient { message: "unused".into(), status: None, ambiguous: false };
        FailingCreates { hold: Some((1, gate)), ..FailingCreates::new(inner, 0, unused) }
    }
}

impl StudioApi for FailingCreates {
    async fn create_execution(&self, flow: &FlowSid, request: &CreateRequest) -> StudioResult<Execution> {
        let n = self.creates.fetch_add(1, Ordering::SeqCst);
        if let Some((held, gate)) = &self.hold
            && n == *held
        {
            let _go = gate.acquire().await.expect("the gate is never closed");
        }
        if self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(self.error.clone());
        }
        self.inner.create_execution(flow, request).await
    }
    async fn fetch_execution(&self, flow: &FlowSid, sid: &str) -> StudioResult<Execution> {
        self.inner.fetch_execution(flow, sid).await
    }
    async fn end_execution(&self, flow: &FlowSid, sid: &str) -> StudioResult<Execution> {
        self.inner.end_execution(flow, sid).await
    }
    async fn list_executions(&self, flow: &FlowSid, filter: &ListFilter) -> StudioResult<Vec<Execution>> {
        self.inner.list_executions(flow, filter).await
    }
    async fn execution_context(&self, flow: &FlowSid, sid: &str) -> StudioResult<serde_json::Value> {
        self.inner.execution_context(flow, sid).await
    }
    async fn list_steps(&self, flow: &FlowSid, execution: &str) -> StudioResult<Vec<Step>> {
        self.inner.list_steps(flow, execution).await
    }
    async fn step_context(&self, flow: &FlowSid, execution: &str, step: &str) -> StudioResult<serde_json::Value> {
        self.inner.step_context(flow, execution, step).await
    }
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_until_they_succeed() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 1, "").await;
    let studio = FailingCreates::new(
        http_studio(&sim.url()),
        2,
        StudioError::Transient { message: "HTTP 503".into(), status: Some(503), ambiguous: false },
    );

    app.dispatch_with(run, studio, 1000).await;

    let rows = jobs(&app, run).await;
    assert_eq!(rows[0].state, flowcast::domain::JobState::Sent);
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(rows[0].last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(sim.executions().len(), 1);
}

#[tokio::test]
async fn transient_failures_past_the_bound_fail_the_job_with_the_last_error() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 1, "").await;
    let studio = FailingCreates::new(
        http_studio(&sim.url()),
        100,
        StudioError::Transient { message: "connection reset".into(), status: None, ambiguous: true },
    );

    app.dispatch_with(run, studio, 1000).await;

    let rows = jobs(&app, run).await;
    assert_eq!(rows[0].state, flowcast::domain::JobState::Failed);
    assert_eq!(rows[0].reason.as_ref().map(ToString::to_string).as_deref(), Some("transient"));
    assert_eq!(rows[0].last_error.as_deref(), Some("connection reset"));
    assert_eq!(rows[0].attempts, i64::from(fast_settings().max_failures));
    assert!(sim.executions().is_empty());
}

#[tokio::test]
async fn an_outcome_is_recorded_while_every_request_slot_is_still_busy() {
    // One request slot: the second contact's create hangs while the first's
    // outcome waits to be recorded. The loop must not wait for a slot to
    // free up (nor its idle poll, a minute here) before recording it.
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 2, "").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let studio = FailingCreates::held_at_second(http_studio(&sim.url()), Arc::clone(&gate));
    let settings = DispatchSettings { concurrency: 1, idle_poll: Duration::from_secs(60), ..fast_settings() };
    let (_dispatcher, running) = spawn_dispatch(&app, run, studio, settings).await;

    // (If the first create took over 200 ms, its outcome may be recorded
    // before the second job is claimed: the states then pass through
    // [Sent, Pending] first.)
    let expected = [JobState::Sent, JobState::Dispatching];
    let rows = jobs_once(&app, run, |rows| states(rows) == expected).await;
    assert_eq!(states(&rows), expected, "the first outcome while the second create hangs");
    assert_eq!(sim.executions().len(), 1);

    gate.add_permits(1);
    let end = tokio::time::timeout(Duration::from_secs(20), running).await.expect("the run ends").unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    assert!(jobs(&app, run).await.iter().all(|j| j.state == JobState::Sent));
}

/// Dispatches `run` to its end in a task of its own (at 1,000/s).
async fn spawn_dispatch<S: StudioApi>(
    app: &TestApp,
    run: i64,
    studio: S,
    settings: DispatchSettings,
) -> (Arc<Dispatcher<S>>, tokio::task::JoinHandle<RunEnd>) {
    let dispatcher = Arc::new(Dispatcher::new(
        app.store().await,
        Arc::new(studio),
        Arc::new(SystemClock),
        settings,
        Arc::new(RateLimits::new(1000)),
    ));
    let running = tokio::spawn({
        let dispatcher = Arc::clone(&dispatcher);
        async move { dispatcher.run_to_end(run).await.unwrap() }
    });
    (dispatcher, running)
}

/// The run's jobs once `done` holds for them, or as they are after 20 s.
async fn jobs_once(app: &TestApp, run: i64, done: impl Fn(&[JobRow]) -> bool) -> Vec<JobRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = jobs(app, run).await;
        if done(&rows) || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn states(rows: &[JobRow]) -> Vec<JobState> {
    rows.iter().map(|j| j.state).collect()
}

/// Studio's 429 for a create, asking for `retry_after`.
fn too_many_requests(retry_after: Duration) -> StudioError {
    StudioError::Throttled {
        error: flowcast::studio::TwilioError {
            status: 429,
            code: Some(20429),
            message: "Too Many Requests".into(),
            more_info: None,
            details: Vec::new(),
        },
        retry_after: Some(retry_after),
    }
}

#[tokio::test]
async fn an_outcome_is_recorded_while_a_429_holds_every_create() {
    // The first create is throttled for a minute; the run loop then waits
    // for a send token for the second job. The first job's outcome (back to
    // pending, due after the hold) must not wait with it.
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 2, "").await;
    let throttled = too_many_requests(Duration::from_secs(60));
    let studio = FailingCreates::new(http_studio(&sim.url()), 1, throttled);
    let settings = DispatchSettings { concurrency: 1, ..fast_settings() };
    let (dispatcher, running) = spawn_dispatch(&app, run, studio, settings).await;

    let held_past = chrono::Utc::now().timestamp_millis() + 30_000;
    let rows = jobs_once(&app, run, |rows| rows[0].due_at > held_past).await;
    assert_eq!(states(&rows), [JobState::Pending, JobState::Pending], "the throttled job is back during the hold");
    assert!(rows[0].due_at > held_past, "due after the Retry-After");
    assert_eq!(rows[0].attempts, 0, "a 429 is no attempt");
    assert!(sim.executions().is_empty(), "nothing is sent during the hold");

    dispatcher.shutdown_token().cancel();
    let end = tokio::time::timeout(Duration::from_secs(20), running).await.expect("the run stops").unwrap();
    assert!(matches!(end, RunEnd::Interrupted), "{end:?}");
}

#[tokio::test]
async fn a_429_for_a_create_widens_the_accounts_margin_below_the_rate() {
    // Studio counts arrivals: a 429 says the way there bunched creates up by
    // more than the 1 % margin leaves room for, so the pace widens it.
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 3, "").await;
    let throttled = too_many_requests(Duration::from_millis(20));
    let studio = FailingCreates::new(http_studio(&sim.url()), 1, throttled);
    let (dispatcher, running) = spawn_dispatch(&app, run, studio, fast_settings()).await;
    assert!((dispatcher.limits().margin() - 0.01).abs() < 1e-9, "{}", dispatcher.limits().margin());

    let end = tokio::time::timeout(Duration::from_secs(20), running).await.expect("the run ends").unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    assert_eq!(sim.executions().len(), 3, "the throttled contact is sent after the hold");
    // One 429, one step of 0.75 %; the spread of the answer times (a
    // connection opened, a slow test machine) may ask for more, up to 2.5 %.
    let margin = dispatcher.limits().margin();
    assert!((0.0175 - 1e-9..=0.025 + 1e-9).contains(&margin), "{margin}");
}

#[tokio::test]
async fn a_slow_answer_widens_the_accounts_margin_before_any_429() {
    // Studio counts arrivals: a create whose way there took longer than
    // another's can reach Studio in the same second as creates admitted a
    // second after it. The pace leaves room for the spread of answer times
    // rather than wait for a 429 (which holds every create for a second).
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 3, "").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let studio = FailingCreates::held_at_second(http_studio(&sim.url()), Arc::clone(&gate));
    let (dispatcher, running) = spawn_dispatch(&app, run, studio, fast_settings()).await;
    assert!((dispatcher.limits().margin() - 0.01).abs() < 1e-9, "{}", dispatcher.limits().margin());

    // The second create, admitted, waits at the gate while the other two are
    // answered; then a second more: its answer comes at least a second after
    // its admission, theirs (already in) however slow this machine is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (dispatcher.studio().creates.load(Ordering::SeqCst) < 3 || sim.executions().len() < 2)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    gate.add_permits(1);
    let end = tokio::time::timeout(Duration::from_secs(20), running).await.expect("the run ends").unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    assert_eq!(sim.executions().len(), 3);
    assert_eq!(sim.throttled(), 0);
    let margin = dispatcher.limits().margin();
    assert!((margin - 0.025).abs() < 1e-9, "the widest margin, 2.5 %, for a spread of a second: {margin}");
}

#[tokio::test]
async fn throttling_backs_off_and_never_counts_as_an_attempt() {
    let sim = Simulator::start(SimConfig { lifetime: None, rate_cap: Some(5), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 12, "").await;

    // The account rate is far above what the simulator accepts.
    let end = app.dispatch_with(run, http_studio(&sim.url()), 1000).await;

    assert!(matches!(end, RunEnd::Finished(_)));
    assert!(sim.throttled() > 0, "the simulator did answer 429");
    let rows = jobs(&app, run).await;
    assert!(rows.iter().all(|j| j.state == flowcast::domain::JobState::Sent && j.attempts == 1), "{rows:?}");
    assert_eq!(sim.executions().len(), 12);
}

#[tokio::test]
async fn refused_credentials_stop_the_run_and_leave_untouched_jobs_pending() {
    let sim = Simulator::start(SimConfig {
        lifetime: None,
        credentials: Some(("ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into(), "right".into())),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let app = TestApp::new();
    let (_, run) = started_run(&app, 20, "").await;

    let end = app.dispatch(run, &sim.url()).await;

    let RunEnd::Stopped(reason) = end else { panic!("{end:?}") };
    assert!(reason.to_string().contains("refused the credentials"), "{reason}");
    assert!(!reason.to_string().contains(TOKEN), "the secret never appears in errors");
    let counts = app.store().await.run_counts(run).await.unwrap();
    assert_eq!(counts.get(flowcast::domain::JobState::Pending), 20, "{counts:?}");
    let stored = app.store().await.get_run(run).await.unwrap();
    assert_eq!(stored.state, flowcast::domain::RunState::Paused);
    assert!(sim.executions().is_empty());
}

#[tokio::test]
async fn a_crashed_attempt_whose_job_expired_meanwhile_is_reconciled_not_expired() {
    let sim = Simulator::start(sim_config(None)).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(1);
    let mut csv = String::from("phone,first_name,appointment_at\n");
    csv.push_str(&format!("{},Ada,2030-01-01T09:00:00Z\n", numbers[0]));
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", "expires = \"{{appointment_at}}\""));
    let run = app.start_run("c.toml").await;
    let store = app.store().await;
    let claimed =
        store.claim_due(run, chrono::Utc::now().timestamp_millis(), 1, false, Default::default()).await.unwrap();
    let job = &claimed[0];
    let created = http_studio(&sim.url())
        .create_execution(
            &FlowSid::parse(FLOW).unwrap(),
            &CreateRequest {
                to: job.phone.as_str().to_string(),
                from: "+15017122661".into(),
                parameters: json!({ "flowcast": { "campaign": "c", "run": run, "job": job.id } }).to_string(),
            },
        )
        .await
        .unwrap();
    // The process died mid-request, and came back after the appointment.
    let later = std::sync::Arc::new(flowcast::schedule::ManualClock::new("2030-01-02T00:00:00Z".parse().unwrap()));

    let end = app.dispatcher_on(&sim.url(), later).await.run_until_idle(run).await.unwrap();

    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    let rows = jobs(&app, run).await;
    assert_eq!(rows[0].state, flowcast::domain::JobState::Sent, "Studio had it: adopted, not expired");
    assert_eq!(rows[0].execution_sid.as_deref(), Some(created.sid.as_str()));
}
