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
    let run = app.start_run("c.toml");

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
    let run = app.start_run("c.toml");

    let started = Instant::now();
    app.dispatch_with(run, http_studio(&sim.url()), 10).await;
    let elapsed = started.elapsed().as_secs_f64();

    assert_eq!(sim.executions().len(), 30);
    assert!(elapsed >= 2.5, "30 creates at an account rate of 10/s took only {elapsed:.2}s");
}
