//! Contact safety across campaigns: per-contact caps (`[contact_limits]`) and
//! a campaign's `dedupe` rule, checked where a job is claimed so that runs
//! dispatching at once cannot both take the last allowed contact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowcast::dispatch::{DispatchSettings, Dispatcher, RateLimits, RunEnd};
use flowcast::domain::{ContactLimits, JobOutcome, JobReason, JobState, ReasonKind};
use flowcast::schedule::{Clock, ManualClock};
use flowcast::store::SettledJob;
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::Value;

use crate::helpers::*;

fn capped(max_per_day: u32) -> DispatchSettings {
    DispatchSettings {
        contact_limits: ContactLimits { max_per_day: Some(max_per_day), ..Default::default() },
        ..fast_settings()
    }
}

async fn dispatcher(
    app: &TestApp,
    url: &str,
    clock: Arc<dyn Clock>,
    settings: DispatchSettings,
) -> Dispatcher<flowcast::studio::HttpStudio> {
    Dispatcher::new(app.store().await, Arc::new(http_studio(url)), clock, settings, Arc::new(RateLimits::new(1000)))
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// Executions per phone so far.
fn reached(sim: &Simulator) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in sim.executions() {
        *counts.entry(e.to).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn a_contact_over_the_daily_cap_waits_until_the_cap_allows_and_an_exempt_campaign_neither_waits_nor_counts() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(4);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("reminders.toml", campaign_toml("c.csv", ""));
    app.write("survey.toml", campaign_toml("c.csv", "").replace("kind = \"reminder\"", "kind = \"survey\""));
    app.write(
        "notices.toml",
        campaign_toml("c.csv", "contact_limits = \"exempt\"").replace("reminder", "delivery-notice"),
    );
    let t0 = at("2030-01-01T09:00:00Z");
    let clock = Arc::new(ManualClock::new(t0));
    let d = dispatcher(&app, &sim.url(), clock.clone(), capped(1)).await;

    let reminders = app.start_run_at("reminders.toml", t0).await;
    assert!(matches!(d.run_until_idle(reminders).await.unwrap(), RunEnd::Finished(_)));
    let reminder_sent = app.jobs(reminders).await[0].sent_at.unwrap();

    // The survey an hour after the reminders: everyone had a counted contact
    // today, so every job waits until that reminder is a day old.
    clock.set(at("2030-01-01T10:00:00Z"));
    let survey = app.start_run_at("survey.toml", clock.now_utc()).await;
    match d.run_until_idle(survey).await.unwrap() {
        RunEnd::Idle { next_due_at } => assert_eq!(next_due_at, reminder_sent + 86_400_000),
        other => panic!("the survey waits, got {other:?}"),
    }
    assert!(reached(&sim).values().all(|n| *n == 1), "no survey yet: {:?}", reached(&sim));
    for job in app.jobs(survey).await {
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.due_at, reminder_sent + 86_400_000, "deferred to the first instant the cap allows");
    }

    // An exempt campaign reaches everyone again at once: it is not capped.
    clock.set(at("2030-01-01T11:00:00Z"));
    let notices = app.start_run_at("notices.toml", clock.now_utc()).await;
    assert!(matches!(d.run_until_idle(notices).await.unwrap(), RunEnd::Finished(_)));
    assert!(reached(&sim).values().all(|n| *n == 2), "{:?}", reached(&sim));

    // A day after the reminders the survey goes: the notices (sent two hours
    // after the reminders) are not counted, so they do not hold it back.
    clock.set(at("2030-01-02T09:00:00Z"));
    assert!(matches!(d.run_until_idle(survey).await.unwrap(), RunEnd::Finished(_)));
    assert_eq!(reached(&sim).len(), 4);
    assert!(reached(&sim).values().all(|n| *n == 3), "{:?}", reached(&sim));
}

#[tokio::test]
async fn a_job_the_cap_would_carry_past_its_expiry_is_skipped_with_the_reason() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(2);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("reminders.toml", campaign_toml("c.csv", ""));
    app.write("flash.toml", campaign_toml("c.csv", "expires = \"2030-01-01 18:00\"").replace("reminder", "survey"));
    let t0 = at("2030-01-01T09:00:00Z");
    let clock = Arc::new(ManualClock::new(t0));
    let d = dispatcher(&app, &sim.url(), clock.clone(), capped(1)).await;
    let reminders = app.start_run_at("reminders.toml", t0).await;
    d.run_until_idle(reminders).await.unwrap();

    clock.set(at("2030-01-01T12:00:00Z"));
    let flash = app.start_run_at("flash.toml", clock.now_utc()).await;
    let end = d.run_until_idle(flash).await.unwrap();

    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    for job in app.jobs(flash).await {
        assert_eq!(job.state, JobState::Skipped);
        assert_eq!(job.reason.unwrap().to_string(), "frequency_cap: max_per_day 1");
    }
    assert_eq!(sim.executions().len(), 2, "only the reminders");
}

#[tokio::test]
async fn an_attempt_in_flight_holds_a_contact_back_only_until_its_fate_is_known() {
    // Found by contact_safety (FLOWCAST_TEST_SEED=5216567931067004698): a job
    // claimed while another campaign's attempt for the same phone was out was
    // moved a whole day on, and then that attempt sent nothing (the contact
    // had opted out of it).
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("reminders.toml", campaign_toml("c.csv", ""));
    // The survey is sent today or not at all.
    app.write("flash.toml", campaign_toml("c.csv", "expires = \"2030-01-01 18:00\"").replace("reminder", "survey"));
    let t0 = at("2030-01-01T09:00:00Z");
    let (reminders, flash) = (app.start_run_at("reminders.toml", t0).await, app.start_run_at("flash.toml", t0).await);
    let store = app.store().await;
    let limits = capped(1).contact_limits;
    let t0 = t0.timestamp_millis();
    let out = store.claim_due(reminders, t0, 10, false, limits).await.unwrap();
    assert_eq!(out.len(), 1);

    // The reminder's attempt is out, its fate unknown, when the survey's job
    // comes up: it may count, so the survey waits, but not on a guess.
    let claimed = store.claim_due(flash, t0 + 10, 10, false, limits).await.unwrap();
    assert!(claimed.is_empty(), "not while the reminder may be sent: {claimed:?}");
    let held = app.jobs(flash).await.remove(0);
    assert_eq!(held.state, JobState::Pending, "not skipped on a send that may never happen: {held:?}");
    assert!(held.due_at < t0 + 60_000, "looked at again shortly, not a day later: {held:?}");

    // The reminder is not sent after all (the contact was in another Execution).
    let conflict = JobOutcome::Skipped { reason: JobReason::new(ReasonKind::Conflict), sid: None };
    let settled = SettledJob { job_id: out[0].id, outcome: conflict, attempts_sent: 1, at: t0 + 20 };
    store.record_outcomes(vec![settled], vec![], Duration::from_secs(300)).await.unwrap();

    let claimed = store.claim_due(flash, held.due_at, 10, false, limits).await.unwrap();
    assert_eq!(claimed.len(), 1, "the survey goes: nothing counted today");
}

#[tokio::test]
async fn two_runs_dispatching_at_once_never_take_more_than_the_cap_between_them() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(40);
    app.write("c.csv", contacts_csv(&numbers));
    app.write("a.toml", campaign_toml("c.csv", ""));
    app.write("b.toml", campaign_toml("c.csv", "").replace("reminder", "survey"));
    let now = Utc::now();
    let (a, b) = (app.start_run_at("a.toml", now).await, app.start_run_at("b.toml", now).await);
    let clock: Arc<dyn Clock> = Arc::new(flowcast::schedule::SystemClock);
    let (da, db) = (
        dispatcher(&app, &sim.url(), clock.clone(), capped(1)).await,
        dispatcher(&app, &sim.url(), clock, capped(1)).await,
    );

    let (ea, eb) = tokio::join!(da.run_until_idle(a), db.run_until_idle(b));
    ea.unwrap();
    eb.unwrap();

    let counts = reached(&sim);
    assert_eq!(counts.len(), 40, "everyone reached once: {counts:?}");
    assert!(counts.values().all(|n| *n == 1), "no one twice: {counts:?}");
    let waiting = [a, b].len() * 40 - sim.executions().len();
    let mut pending = 0;
    for run in [a, b] {
        pending += app.jobs(run).await.iter().filter(|j| j.state == JobState::Pending).count();
    }
    assert_eq!(pending, waiting, "the rest wait for tomorrow");
}

fn orders_csv(rows: &[(&str, &str)]) -> String {
    let mut csv = String::from("phone,order_id\n");
    for (phone, order) in rows {
        csv.push_str(&format!("{phone},{order}\n"));
    }
    csv
}

async fn report(app: &TestApp, run: i64) -> Vec<Value> {
    let out = app.flowcast(&["report", &run.to_string(), "--format", "json"], &[]).await;
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

#[tokio::test]
async fn a_cumulative_csv_dropped_again_sends_only_to_the_new_keys_whatever_the_phone() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let n = phones(6);
    let dedupe = "dedupe = { key = \"{{order_id}}\", within = \"30d\" }";
    app.write(
        "deliveries.toml",
        campaign_toml("orders.csv", dedupe).replace("name = \"{{first_name}}\"", "order = \"{{order_id}}\""),
    );
    app.write("orders.csv", orders_csv(&[(&n[0], "A1"), (&n[1], "A2"), (&n[2], "A3")]));
    let env = [
        ("FLOWCAST_STUDIO_URL", sim.url()),
        ("TWILIO_ACCOUNT_SID", ACCOUNT.to_string()),
        ("TWILIO_AUTH_TOKEN", TOKEN.to_string()),
        ("FLOWCAST_RATE", "500".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = app.flowcast(&["run", "deliveries"], &env).await;
    assert_eq!(first.status.code(), Some(0), "{}{}", stdout(&first), stderr(&first));

    // The same file with two more orders, and order A3 now under another phone.
    app.write("orders.csv", orders_csv(&[(&n[0], "A1"), (&n[1], "A2"), (&n[5], "A3"), (&n[3], "A4"), (&n[4], "A5")]));
    let second = app.flowcast(&["run", "deliveries"], &env).await;

    assert!(stdout(&second).contains("2 sent, 3 skipped"), "{}", stdout(&second));
    let orders: Vec<String> =
        sim.executions().iter().map(|e| e.parameters["order"].as_str().unwrap().to_string()).collect();
    assert_eq!(orders.len(), 5, "{orders:?}");
    for key in ["A1", "A2", "A3", "A4", "A5"] {
        assert_eq!(orders.iter().filter(|o| *o == key).count(), 1, "{key} once: {orders:?}");
    }
    let rows = report(&app, 2).await;
    let a3 = rows.iter().find(|r| r["phone"] == n[5].as_str()).unwrap();
    assert_eq!(a3["state"], "skipped");
    assert_eq!(a3["reason"], "already_sent: run 1, job 3", "names the earlier run and job");
}

#[tokio::test]
async fn overlapping_runs_of_a_deduping_campaign_send_each_key_once() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let n = phones(30);
    let rows: Vec<(&str, String)> = n.iter().enumerate().map(|(i, p)| (p.as_str(), format!("K{}", i % 20))).collect();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(p, k)| (*p, k.as_str())).collect();
    app.write("orders.csv", orders_csv(&rows));
    app.write(
        "d.toml",
        campaign_toml("orders.csv", "dedupe = { key = \"{{order_id}}\", within = \"1d\" }")
            .replace("name = \"{{first_name}}\"", "order = \"{{order_id}}\""),
    );
    // Both runs import before either sends: only the claim can tell them apart.
    let now = Utc::now();
    let later = now + chrono::Duration::milliseconds(1);
    let (a, b) = (app.start_run_at("d.toml", now).await, app.start_run_at("d.toml", later).await);
    let clock: Arc<dyn Clock> = Arc::new(flowcast::schedule::SystemClock);
    let (da, db) = (
        dispatcher(&app, &sim.url(), clock.clone(), fast_settings()).await,
        dispatcher(&app, &sim.url(), clock, fast_settings()).await,
    );

    let (ea, eb) = tokio::join!(da.run_to_end(a), db.run_to_end(b));
    ea.unwrap();
    eb.unwrap();

    let mut orders: Vec<String> =
        sim.executions().iter().map(|e| e.parameters["order"].as_str().unwrap().to_string()).collect();
    orders.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("K{i}")).collect();
    expected.sort();
    assert_eq!(orders, expected, "each key exactly once across both runs");
    for run in [a, b] {
        for job in app.jobs(run).await.iter().filter(|j| j.state == JobState::Skipped) {
            assert!(job.reason.as_ref().unwrap().to_string().starts_with("already_sent: run "), "{:?}", job.reason);
        }
    }
}

#[tokio::test]
async fn a_key_already_sent_is_skipped_when_the_run_imports_before_any_send_slot() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let n = phones(3);
    app.write("orders.csv", orders_csv(&[(&n[0], "B1"), (&n[1], "B2")]));
    app.write(
        "d.toml",
        campaign_toml("orders.csv", "dedupe = { key = \"{{order_id}}\", within = \"7d\" }")
            .replace("name = \"{{first_name}}\"", "order = \"{{order_id}}\""),
    );
    let first = app.start_run("d.toml").await;
    app.dispatch(first, &sim.url()).await;

    app.write("orders.csv", orders_csv(&[(&n[0], "B1"), (&n[1], "B2"), (&n[2], "B3")]));
    let second = app.start_run("d.toml").await;

    // Imported, not dispatched: the two known keys are settled already.
    let jobs = app.jobs(second).await;
    let states: Vec<(JobState, Option<String>)> =
        jobs.iter().map(|j| (j.state, j.reason.as_ref().map(ToString::to_string))).collect();
    assert_eq!(
        states,
        [
            (JobState::Skipped, Some("already_sent: run 1, job 1".into())),
            (JobState::Skipped, Some("already_sent: run 1, job 2".into())),
            (JobState::Pending, None),
        ]
    );
}
