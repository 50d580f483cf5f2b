//! Schedules on a clock the test drives: local time across both daylight-saving
//! changes in Berlin and New York, missed ticks across a restart, one run per tick.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowcast::flows::SidOnly;
use flowcast::schedule::ManualClock;
use flowcast::service::{Service, ServiceSettings};
use flowcast::studio::HttpStudio;

use crate::helpers::*;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn service(app: &TestApp, clock: Arc<ManualClock>, catch_up: Duration) -> Service<HttpStudio> {
    // Nothing is dispatched in these tests; the URL is never called.
    let dispatcher = app.dispatcher_on("http://127.0.0.1:9", clock.clone()).await;
    Service::new(
        app.store().await,
        dispatcher,
        clock,
        app.folders(),
        ServiceSettings { catch_up, ..ServiceSettings::default() },
        Box::new(SidOnly),
    )
}

fn scheduled(app: &TestApp, schedule: &str, zone: &str) {
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("s.toml", campaign_toml("c.csv", &format!("schedule = \"{schedule}\"\ntimezone = \"{zone}\"")));
}

/// Steps the clock from `from` to `to` in `step`s, firing schedules at each
/// step, and returns the ticks of the runs created, in order.
async fn walk(
    app: &TestApp,
    svc: &Service<HttpStudio>,
    clock: &ManualClock,
    from: &str,
    to: &str,
    step: chrono::Duration,
) -> Vec<DateTime<Utc>> {
    let mut now = utc(from);
    while now <= utc(to) {
        clock.set(now);
        svc.fire_schedules(now).await;
        now += step;
    }
    let mut ticks: Vec<DateTime<Utc>> = app
        .store()
        .await
        .list_runs(Some("s"), 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| DateTime::from_timestamp_millis(r.scheduled_at).unwrap())
        .collect();
    ticks.sort();
    ticks
}

async fn start(app: &TestApp, at: &str, catch_up: Duration) -> (Arc<ManualClock>, Service<HttpStudio>) {
    let clock = Arc::new(ManualClock::new(utc(at)));
    let svc = service(app, clock.clone(), catch_up).await;
    svc.scan().await;
    (clock, svc)
}

#[tokio::test]
async fn a_berlin_nine_oclock_schedule_fires_at_nine_local_through_spring_forward() {
    let app = TestApp::new();
    scheduled(&app, "0 9 * * *", "Europe/Berlin");
    let (clock, svc) = start(&app, "2026-03-27T00:00:00Z", Duration::from_secs(3600)).await;
    let ticks =
        walk(&app, &svc, &clock, "2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z", chrono::Duration::minutes(10)).await;
    assert_eq!(
        ticks,
        [
            utc("2026-03-27T08:00:00Z"), // CET, UTC+1
            utc("2026-03-28T08:00:00Z"),
            utc("2026-03-29T07:00:00Z"), // CEST from 29 March, UTC+2
            utc("2026-03-30T07:00:00Z"),
        ]
    );
}

#[tokio::test]
async fn a_berlin_nine_oclock_schedule_fires_at_nine_local_through_fall_back() {
    let app = TestApp::new();
    scheduled(&app, "0 9 * * *", "Europe/Berlin");
    let (clock, svc) = start(&app, "2026-10-24T00:00:00Z", Duration::from_secs(3600)).await;
    let ticks =
        walk(&app, &svc, &clock, "2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z", chrono::Duration::minutes(10)).await;
    assert_eq!(ticks, [utc("2026-10-24T07:00:00Z"), utc("2026-10-25T08:00:00Z"), utc("2026-10-26T08:00:00Z")]);
}

#[tokio::test]
async fn a_new_york_time_skipped_by_spring_forward_fires_once_just_after_the_gap() {
    // 2026-03-08 02:30 does not exist in New York: clocks go from 02:00 to 03:00.
    let app = TestApp::new();
    scheduled(&app, "30 2 * * *", "America/New_York");
    let (clock, svc) = start(&app, "2026-03-07T00:00:00Z", Duration::from_secs(3600)).await;
    let ticks =
        walk(&app, &svc, &clock, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z", chrono::Duration::minutes(5)).await;
    assert_eq!(
        ticks,
        [
            utc("2026-03-07T07:30:00Z"), // 02:30 EST
            utc("2026-03-08T07:00:00Z"), // 03:00 EDT, the first instant after the gap
            utc("2026-03-09T06:30:00Z"), // 02:30 EDT
        ]
    );
}

#[tokio::test]
async fn a_new_york_time_inside_the_repeated_fall_back_hour_fires_once() {
    // 2026-11-01 01:30 happens twice in New York (EDT, then EST).
    let app = TestApp::new();
    scheduled(&app, "30 1 * * *", "America/New_York");
    let (clock, svc) = start(&app, "2026-10-31T00:00:00Z", Duration::from_secs(3600)).await;
    let ticks =
        walk(&app, &svc, &clock, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z", chrono::Duration::minutes(5)).await;
    assert_eq!(
        ticks,
        [
            utc("2026-10-31T05:30:00Z"), // 01:30 EDT
            utc("2026-11-01T05:30:00Z"), // the first 01:30 (EDT) only
            utc("2026-11-02T06:30:00Z"), // 01:30 EST
        ]
    );
}

#[tokio::test]
async fn a_berlin_time_inside_the_repeated_hour_fires_once_and_one_in_the_gap_fires_after_it() {
    let app = TestApp::new();
    scheduled(&app, "30 2 * * *", "Europe/Berlin");
    let (clock, svc) = start(&app, "2026-03-28T00:00:00Z", Duration::from_secs(3600)).await;
    let spring =
        walk(&app, &svc, &clock, "2026-03-28T00:00:00Z", "2026-03-30T00:00:00Z", chrono::Duration::minutes(5)).await;
    assert_eq!(spring, [utc("2026-03-28T01:30:00Z"), utc("2026-03-29T01:00:00Z")]);

    let app = TestApp::new();
    scheduled(&app, "30 2 * * *", "Europe/Berlin");
    let (clock, svc) = start(&app, "2026-10-24T12:00:00Z", Duration::from_secs(3600)).await;
    let fall =
        walk(&app, &svc, &clock, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z", chrono::Duration::minutes(5)).await;
    assert_eq!(fall, [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]);
}

#[tokio::test]
async fn six_field_lines_fire_on_the_second() {
    let app = TestApp::new();
    scheduled(&app, "15 0 12 * * *", "UTC");
    let (clock, svc) = start(&app, "2026-07-01T11:59:00Z", Duration::from_secs(3600)).await;
    let ticks =
        walk(&app, &svc, &clock, "2026-07-01T11:59:00Z", "2026-07-01T12:01:00Z", chrono::Duration::seconds(5)).await;
    assert_eq!(ticks, [utc("2026-07-01T12:00:15Z")]);
}

#[tokio::test]
async fn ticks_missed_while_down_fire_on_start_when_younger_than_catch_up() {
    let app = TestApp::new();
    scheduled(&app, "0 * * * *", "UTC");
    let (clock, svc) = start(&app, "2026-07-01T00:30:00Z", Duration::from_secs(2 * 3600)).await;
    assert!(svc.fire_schedules(clock.now_utc()).await.is_empty());
    drop(svc);

    // Down from 00:30 until 05:30: ticks at 01, 02, 03 are older than 2 h.
    let clock = Arc::new(ManualClock::new(utc("2026-07-01T05:30:00Z")));
    let restarted = service(&app, clock.clone(), Duration::from_secs(2 * 3600)).await;
    restarted.scan().await;
    let fired = restarted.fire_schedules(utc("2026-07-01T05:30:00Z")).await;
    assert_eq!(fired.len(), 2);
    let ticks: Vec<i64> =
        app.store().await.list_runs(Some("s"), 100).await.unwrap().iter().map(|r| r.scheduled_at).collect();
    assert_eq!(ticks, [utc("2026-07-01T05:00:00Z").timestamp_millis(), utc("2026-07-01T04:00:00Z").timestamp_millis()]);

    // Firing again, or restarting again, makes no second run of any tick.
    assert!(restarted.fire_schedules(utc("2026-07-01T05:30:00Z")).await.is_empty());
    drop(restarted);
    let again = service(&app, clock.clone(), Duration::from_secs(24 * 3600)).await;
    again.scan().await;
    assert!(again.fire_schedules(utc("2026-07-01T05:59:00Z")).await.is_empty(), "skipped ticks stay skipped");
    assert_eq!(again.fire_schedules(utc("2026-07-01T06:00:00Z")).await.len(), 1);
    assert_eq!(app.store().await.list_runs(Some("s"), 100).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_one_off_file_runs_once_per_content_and_never_again_for_the_same_content() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(2)));
    let body = campaign_toml("c.csv", "");
    app.write("drop.toml", &body);
    let (clock, svc) = start(&app, "2026-07-01T00:00:00Z", Duration::from_secs(3600)).await;
    assert_eq!(app.store().await.list_runs(Some("drop"), 10).await.unwrap().len(), 1, "runs when it appears");

    // Touched (rewritten with the same bytes): no new run. The pause lets the
    // file's modification time move, so the scan does read it again.
    std::thread::sleep(Duration::from_millis(20));
    app.write("drop.toml", &body);
    assert!(svc.scan().await.is_empty());

    // A restart sees the same content: no new run.
    drop(svc);
    let restarted = service(&app, clock.clone(), Duration::from_secs(3600)).await;
    assert!(restarted.scan().await.is_empty());

    // A new drop of its CSV is new content: a new run.
    app.write("c.csv", contacts_csv(&phones(3)));
    assert_eq!(restarted.scan().await.len(), 1);
    // Back to the first content: that content already ran.
    app.write("c.csv", contacts_csv(&phones(2)));
    assert!(restarted.scan().await.is_empty());
    assert_eq!(app.store().await.list_runs(Some("drop"), 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_previous_version_in_force_and_removal_stops_new_runs() {
    let app = TestApp::new();
    scheduled(&app, "0 * * * *", "UTC");
    let (_clock, svc) = start(&app, "2026-07-01T00:30:00Z", Duration::from_secs(3600)).await;
    app.write("s.toml", "kind = \"reminder\"\nflow = \"FWnope\"\n");
    svc.scan().await;
    assert_eq!(svc.campaigns().len(), 1, "the previous version stays in force");
    assert_eq!(svc.fire_schedules(utc("2026-07-01T01:00:00Z")).await.len(), 1);

    std::fs::remove_file(app.campaigns.join("s.toml")).unwrap();
    svc.scan().await;
    assert!(svc.campaigns().is_empty());
    assert!(svc.fire_schedules(utc("2026-07-01T02:00:00Z")).await.is_empty());
    assert!(app.store().await.get_campaign("s").await.unwrap().unwrap().removed_at.is_some());
}
