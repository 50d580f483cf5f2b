//! Both rate limits hold at once. These check lower bounds on elapsed time
//! (a limiter can only slow things down), never upper bounds.

use std::time::Instant;

use flowcast::studio::simulator::{SimConfig, Simulator};

use crate::helpers::*;

#[tokio::test]
async fn a_campaign_rate_of_20_spreads_100_contacts_over_at_least_four_and_a_half_seconds() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(100)));
    app.write("c.toml", campaign_toml("c.csv", "rate = 20"));
    let run = app.start_run("c.toml").await;

    let started = Instant::now();
    app.dispatch_with(run, http_studio(&sim.url()), 1000).await;
    let elapsed = started.elapsed().as_secs_f64();

    assert_eq!(sim.executions().len(), 100);
    assert!(elapsed >= 4.5, "100 creates at 20/s took only {elapsed:.2}s");
}

#[tokio::test]
async fn an_account_rate_below_the_campaign_rate_wins() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(30)));
    app.write("c.toml", campaign_toml("c.csv", "rate = 100"));
    let run = app.start_run("c.toml").await;

    let started = Instant::now();
    app.dispatch_with(run, http_studio(&sim.url()), 10).await;
    let elapsed = started.elapsed().as_secs_f64();

    assert_eq!(sim.executions().len(), 30);
    assert!(elapsed >= 2.5, "30 creates at an account rate of 10/s took only {elapsed:.2}s");
}

#[tokio::test]
async fn a_small_run_is_not_starved_by_a_big_one_sharing_the_account_rate() {
    use std::sync::Arc;

    use flowcast::dispatch::RunEnd;
    use flowcast::schedule::SystemClock;

    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("big.csv", contacts_csv(&phones(400)));
    app.write("big.toml", campaign_toml("big.csv", ""));
    let small_phones: Vec<String> = (0..10).map(|i| format!("+1201555{:04}", 9000 + i)).collect();
    app.write("small.csv", contacts_csv(&small_phones));
    app.write("small.toml", campaign_toml("small.csv", ""));
    let big = app.start_run("big.toml").await;
    let small = app.start_run("small.toml").await;
    // One dispatcher, so both runs share one account limiter (40/s).
    let dispatcher = Arc::new(flowcast::dispatch::Dispatcher::new(
        app.store().await,
        Arc::new(http_studio(&sim.url())),
        Arc::new(SystemClock),
        fast_settings(),
        Arc::new(flowcast::dispatch::RateLimits::new(40)),
    ));
    let big_task = {
        let d = Arc::clone(&dispatcher);
        tokio::spawn(async move { d.run_to_end(big).await.unwrap() })
    };
    // The big run is well under way before the small one starts.
    assert!(sim.wait_until(std::time::Duration::from_secs(30), |e| e.len() >= 20).await, "the big run started");
    let end = dispatcher.run_to_end(small).await.unwrap();
    assert!(matches!(end, RunEnd::Finished(_)));
    let big_sent = sim.executions().iter().filter(|e| !small_phones.contains(&e.to)).count();

    // Sharing the rate, the small run's 10 finished while the big run sent a
    // share comparable to its own, far from all 400 of it.
    assert!(big_sent < 150, "the big run sent {big_sent} before the small run's 10 were done");
    dispatcher.shutdown_token().cancel();
    let _ = big_task.await;
}
