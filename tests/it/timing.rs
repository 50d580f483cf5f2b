//! Per-contact timing on a clock the test drives: send windows in each contact's
//! zone, `send_at`, and `expires`.

use std::sync::Arc;

use chrono::{DateTime, Timelike, Utc};
use flowcast::dispatch::RunEnd;
use flowcast::schedule::ManualClock;
use flowcast::store::JobRow;
use flowcast::studio::simulator::{SimConfig, Simulator};

use crate::helpers::*;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn ms(s: &str) -> i64 {
    utc(s).timestamp_millis()
}

async fn jobs_by_phone(app: &TestApp, run: i64) -> std::collections::HashMap<String, JobRow> {
    app.jobs(run).await.into_iter().map(|j| (j.phone.as_str().to_string(), j)).collect()
}

#[tokio::test]
async fn jobs_wait_for_the_send_window_in_each_contacts_own_zone() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write(
        "c.csv",
        "phone,first_name,timezone\n\
         +12015550001,NewYork,America/New_York\n\
         +12015550002,Berlin,Europe/Berlin\n\
         +12015550003,Tokyo,Asia/Tokyo\n",
    );
    app.write("c.toml", campaign_toml("c.csv", "send_window = { start = \"09:00\", end = \"17:00\" }"));
    // 12:00 UTC: 08:00 in New York (too early), 14:00 in Berlin, 21:00 in Tokyo (too late).
    let clock = Arc::new(ManualClock::new(utc("2026-07-01T12:00:00Z")));
    let run = app.start_run_at("c.toml", utc("2026-07-01T12:00:00Z")).await;
    let jobs = jobs_by_phone(&app, run).await;
    assert_eq!(jobs["+12015550002"].due_at, ms("2026-07-01T12:00:00Z"));
    assert_eq!(jobs["+12015550001"].due_at, ms("2026-07-01T13:00:00Z"), "09:00 EDT");
    assert_eq!(jobs["+12015550003"].due_at, ms("2026-07-02T00:00:00Z"), "09:00 JST the next day");
    let dispatcher = app.dispatcher_on(&sim.url(), clock.clone()).await;

    let end = dispatcher.run_until_idle(run).await.unwrap();
    assert!(matches!(end, RunEnd::Idle { next_due_at } if next_due_at == ms("2026-07-01T13:00:00Z")), "{end:?}");
    assert_eq!(sim.executions().iter().map(|e| e.to.as_str()).collect::<Vec<_>>(), ["+12015550002"]);

    clock.set(utc("2026-07-01T13:00:00Z"));
    let end = dispatcher.run_until_idle(run).await.unwrap();
    assert!(matches!(end, RunEnd::Idle { next_due_at } if next_due_at == ms("2026-07-02T00:00:00Z")), "{end:?}");
    assert_eq!(sim.executions().len(), 2);

    clock.set(utc("2026-07-02T00:00:00Z"));
    let end = dispatcher.run_until_idle(run).await.unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");

    let jobs = jobs_by_phone(&app, run).await;
    for (phone, zone) in [
        ("+12015550001", chrono_tz::America::New_York),
        ("+12015550002", chrono_tz::Europe::Berlin),
        ("+12015550003", chrono_tz::Asia::Tokyo),
    ] {
        let job = &jobs[phone];
        assert_eq!(job.state, flowcast::domain::JobState::Sent);
        let local = DateTime::from_timestamp_millis(job.sent_at.unwrap()).unwrap().with_timezone(&zone);
        assert!((9..17).contains(&local.hour()), "{phone} sent at {local}, outside 09:00-17:00");
    }
}

#[tokio::test]
async fn a_job_due_when_its_window_has_closed_waits_for_the_next_opening() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", "phone,first_name,timezone\n+12015550001,Ann,Europe/Berlin\n");
    app.write("c.toml", campaign_toml("c.csv", "send_window = { start = \"09:00\", end = \"17:00\" }"));
    // Imported inside the window (10:00 Berlin), but dispatch only gets to it at
    // 18:00 Berlin: it must not be sent then.
    let run = app.start_run_at("c.toml", utc("2026-07-01T08:00:00Z")).await;
    let clock = Arc::new(ManualClock::new(utc("2026-07-01T16:00:00Z")));
    let dispatcher = app.dispatcher_on(&sim.url(), clock.clone()).await;

    let end = dispatcher.run_until_idle(run).await.unwrap();

    assert!(matches!(end, RunEnd::Idle { next_due_at } if next_due_at == ms("2026-07-02T07:00:00Z")), "{end:?}");
    assert!(sim.executions().is_empty(), "nothing is sent outside the window");
    assert_eq!(jobs_by_phone(&app, run).await["+12015550001"].attempts, 0);
}

#[tokio::test]
async fn send_at_defers_each_contact_and_expired_jobs_are_never_sent() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write(
        "c.csv",
        "phone,first_name,appointment_at\n\
         +12015550001,Past,2026-07-01T11:00:00Z\n\
         +12015550002,Soon,2026-07-01T13:00:00Z\n\
         +12015550003,Later,2026-07-01T20:00:00Z\n\
         +12015550004,Tomorrow,2026-07-02T10:00:00Z\n",
    );
    app.write(
        "c.toml",
        campaign_toml(
            "c.csv",
            "send_at = \"{{appointment_at}} - 2h\"\nexpires = \"{{appointment_at}}\"\ntimezone = \"UTC\"\nsend_window = { start = \"09:00\", end = \"19:00\" }",
        ),
    );
    let clock = Arc::new(ManualClock::new(utc("2026-07-01T12:00:00Z")));
    let run = app.start_run_at("c.toml", utc("2026-07-01T12:00:00Z")).await;
    let dispatcher = app.dispatcher_on(&sim.url(), clock.clone()).await;

    dispatcher.run_until_idle(run).await.unwrap();
    let jobs = jobs_by_phone(&app, run).await;
    assert_eq!(jobs["+12015550001"].state, flowcast::domain::JobState::Expired, "its appointment has passed");
    assert_eq!(jobs["+12015550002"].state, flowcast::domain::JobState::Sent, "send_at is past, expiry ahead");
    assert_eq!(jobs["+12015550003"].state, flowcast::domain::JobState::Pending);
    assert_eq!(jobs["+12015550003"].due_at, ms("2026-07-01T18:00:00Z"));
    // 08:00 is before the window: moved to 09:00.
    assert_eq!(jobs["+12015550004"].due_at, ms("2026-07-02T09:00:00Z"));

    clock.set(utc("2026-07-01T18:00:00Z"));
    dispatcher.run_until_idle(run).await.unwrap();
    assert_eq!(jobs_by_phone(&app, run).await["+12015550003"].state, flowcast::domain::JobState::Sent);

    // The service was down until after the last appointment.
    clock.set(utc("2026-07-02T10:30:00Z"));
    let end = dispatcher.run_until_idle(run).await.unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    let jobs = jobs_by_phone(&app, run).await;
    assert_eq!(jobs["+12015550004"].state, flowcast::domain::JobState::Expired);
    let sent: Vec<String> = sim.executions().into_iter().map(|e| e.to).collect();
    assert_eq!(sent, ["+12015550002", "+12015550003"]);
}

#[tokio::test]
async fn expired_jobs_end_in_bulk_without_taking_a_send_slot() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let mut csv = String::from("phone,first_name,appointment_at\n");
    for (i, p) in phones(100).iter().enumerate() {
        csv.push_str(&format!("{p},Name{i},2020-01-01T09:00:00Z\n"));
    }
    csv.push_str("+12015559999,Fresh,2099-01-01T09:00:00Z\n");
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", "expires = \"{{appointment_at}}\""));
    let run = app.start_run("c.toml").await;
    // 10/s: were each expired job to take a slot first, these 100 would hold the
    // account's limiter for ten seconds.
    let limits = Arc::new(flowcast::dispatch::RateLimits::new(10));
    let dispatcher = flowcast::dispatch::Dispatcher::new(
        app.store().await,
        Arc::new(http_studio(&sim.url())),
        Arc::new(flowcast::schedule::SystemClock),
        fast_settings(),
        Arc::clone(&limits),
    );

    let end = dispatcher.run_to_end(run).await.unwrap();

    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    let jobs = app.jobs(run).await;
    let expired = jobs.iter().filter(|j| j.state == flowcast::domain::JobState::Expired).count();
    assert_eq!(expired, 100);
    assert!(jobs.iter().filter(|j| j.state == flowcast::domain::JobState::Expired).all(|j| j.attempts == 0));
    assert_eq!(sim.executions().len(), 1, "only the contact whose expiry is ahead");
    assert_eq!(limits.granted(), 1, "one send slot, for the one create");
}
