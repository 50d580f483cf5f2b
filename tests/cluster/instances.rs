//! Several `serve` instances on one PostgreSQL ledger. These need a server:
//! they skip, saying so, when `FLOWCAST_TEST_POSTGRES` is unset.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use flowcast::domain::JobState;
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::Value;

use crate::helpers::*;
use crate::served::Served;

/// The account rate every instance is given; together they must keep to it.
const RATE: u32 = 100;

/// One test at a time: each starts several processes, and the busiest second
/// it measures should be the instances' doing, not the machine's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TestApp whose ledger is a fresh PostgreSQL schema.
async fn app_on_postgres(label: &str) -> Option<TestApp> {
    let ledger = flowcast::store::postgres::test_ledger(label).await?;
    let mut app = TestApp::new();
    app.ledger = ledger;
    Some(app)
}

/// A campaigns folder of its own for one instance, with these files.
fn folder(app: &TestApp, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = app.dir.path().join(format!("campaigns-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

async fn start(app: &TestApp, dir: &std::path::Path, sim: &Simulator, name: &str) -> Served {
    let rate = RATE.to_string();
    Served::start_in(
        app,
        dir,
        &sim.url(),
        &[("FLOWCAST_INSTANCE", name), ("FLOWCAST_RATE", &rate), ("FLOWCAST_REQUEST_TIMEOUT", "3s")],
    )
    .await
}

async fn instances(url: &str) -> Vec<Value> {
    let body: Value = reqwest::get(format!("{url}/api/instances")).await.unwrap().json().await.unwrap();
    body.as_array().cloned().unwrap_or_default()
}

/// Polls `check` every 100 ms until it holds or `within` passes.
async fn wait_for<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most creates in any one-second window, sliding, as Studio counts, on
/// the clock the simulator's cap admits them by (the wall-clock `date_created`
/// may slew against it by the microseconds that put one more in a window).
fn busiest_second(sim: &Simulator) -> usize {
    let mut times: Vec<_> = sim.executions().iter().filter_map(|e| e.admitted_at()).collect();
    times.sort();
    let (mut most, mut start) = (0, 0);
    for end in 0..times.len() {
        while times[end] - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_send_once_fire_each_tick_once_and_keep_the_rate_when_a_follower_and_then_the_leader_die() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(app) = app_on_postgres("three instances").await else { return };
    // Executions end at once: each tick's run reaches the same three contacts.
    let config = SimConfig { lifetime: Some(Duration::ZERO), rate_cap: Some(RATE), ..SimConfig::default() };
    let sim = Simulator::start(config).await.unwrap();
    let big = phones(5_000);
    let ticked: Vec<String> = (0..3).map(|i| format!("+1201556{i:04}")).collect();
    let (big_csv, ticked_csv) = (contacts_csv(&big), contacts_csv(&ticked));
    let big_toml = campaign_toml("big.csv", "");
    let ticked_toml = campaign_toml("ticked.csv", "schedule = \"*/3 * * * * *\"\ntimezone = \"UTC\"");
    let files = [
        ("big.csv", big_csv.as_str()),
        ("big.toml", &big_toml),
        ("ticked.csv", &ticked_csv),
        ("ticked.toml", &ticked_toml),
    ];
    let dirs: Vec<PathBuf> = ["one", "two", "three"].iter().map(|n| folder(&app, n, &files)).collect();

    // The same folder deployed to three instances, started one after another.
    let mut served = HashMap::new();
    for (name, dir) in ["one", "two", "three"].iter().zip(&dirs) {
        served.insert(name.to_string(), start(&app, dir, &sim, name).await);
    }
    let any = served["one"].url.clone();
    wait_for(Duration::from_secs(20), "three instances are live and one leads", || {
        let any = any.clone();
        async move {
            let live = instances(&any).await;
            live.len() == 3 && live.iter().filter(|i| i["leader"] == true).count() == 1
        }
    })
    .await;
    let live = instances(&any).await;
    let leader = live.iter().find(|i| i["leader"] == true).unwrap()["name"].as_str().unwrap().to_string();
    let follower = live.iter().find(|i| i["leader"] != true).unwrap()["name"].as_str().unwrap().to_string();

    // A follower dies mid-run, with creates in flight; later the leader does.
    assert!(sim.wait_until(Duration::from_secs(60), |e| e.len() >= 1_000).await, "the run got going");
    served.remove(&follower).unwrap().kill().await;
    assert!(sim.wait_until(Duration::from_secs(60), |e| e.len() >= 2_500).await, "the run went on");
    let leader_died = chrono::Utc::now();
    served.remove(&leader).unwrap().kill().await;
    let (survivor_name, survivor) = served.into_iter().next().unwrap();
    wait_for(Duration::from_secs(20), "the survivor leads", || {
        let url = survivor.url.clone();
        async move { instances(&url).await.iter().any(|i| i["leader"] == true && i["this"] == true) }
    })
    .await;

    let store = app.store().await;
    wait_for(Duration::from_secs(120), "the big run finished", || {
        let store = store.clone();
        async move {
            let runs = store.list_runs(Some("big"), 10).await.unwrap();
            runs.len() == 1 && runs[0].finished_at.is_some()
        }
    })
    .await;
    // Two ticks after the leader died were fired by the new one.
    wait_for(Duration::from_secs(30), "the new leader fired ticks", || {
        let store = store.clone();
        async move {
            let runs = store.list_runs(Some("ticked"), 1000).await.unwrap();
            runs.iter().filter(|r| r.scheduled_at > leader_died.timestamp_millis()).count() >= 2
        }
    })
    .await;
    // Stop the schedule, then let every started run finish.
    std::fs::remove_file(
        dirs[["one", "two", "three"].iter().position(|n| *n == survivor_name).unwrap()].join("ticked.toml"),
    )
    .unwrap();
    let before = store.list_runs(Some("ticked"), 1000).await.unwrap().len();
    wait_for(Duration::from_secs(60), "every run finished", || {
        let store = store.clone();
        async move {
            let runs = store.list_runs(None, 1000).await.unwrap();
            runs.iter().all(|r| r.finished_at.is_some())
        }
    })
    .await;
    let log = survivor.terminate().await.1;

    // One Execution per contact of the big run.
    let executions = sim.executions();
    let mut per_phone: HashMap<&str, usize> = HashMap::new();
    for e in &executions {
        *per_phone.entry(e.to.as_str()).or_default() += 1;
    }
    for phone in &big {
        assert_eq!(per_phone.get(phone.as_str()), Some(&1), "{phone}: not exactly one Execution\n{log}");
    }
    // Each tick fired once: one run per tick, three seconds apart, no gap.
    let mut ticks: Vec<i64> =
        store.list_runs(Some("ticked"), 1000).await.unwrap().iter().map(|r| r.scheduled_at).collect();
    assert!(ticks.len() >= before, "no tick run vanished");
    ticks.sort();
    assert!(ticks.len() >= 3, "ticks fired: {ticks:?}");
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 3_000, "ticks fired once each, none missed: {ticks:?}");
    }
    for phone in &ticked {
        assert_eq!(per_phone.get(phone.as_str()), Some(&ticks.len()), "{phone}: one Execution per tick run");
    }
    // Together, never over the account rate. The busiest second is printed,
    // not asserted: it is the simulator's own cap at work, measured on the
    // instants the cap admitted by, so it cannot exceed the rate; what the
    // instances did shows in how often they leaned on it. The simulator refuses (429) a create over the rate, as Studio does: the
    // instances together kept to it, give or take the jitter of three
    // processes, PostgreSQL and the simulator on two cores (0 to 16 refused
    // and retried in the runs seen, under 0.4 %). Without the shared grid each
    // instance paces itself at the full rate and only the 429s hold it back:
    // 93 refused of 5,066 when tried, over the 1 % allowed here.
    let busiest = busiest_second(&sim);
    let creates = sim.executions().len();
    eprintln!("busiest second: {busiest} creates; 429s: {} of {creates} creates", sim.throttled());
    // The pace the three reached together before the first death (a figure
    // for the README, not asserted: timing on a shared machine).
    let mut times: Vec<_> = sim.executions().iter().map(|e| e.date_created).collect();
    times.sort();
    let span = (times[999] - times[99]).num_milliseconds().max(1) as f64 / 1000.0;
    eprintln!("three instances together: {:.1} creates/s of {RATE}/s (creates 100 to 1,000)", 900.0 / span);
    assert!(sim.throttled() as usize * 100 <= creates, "{} creates refused over the rate", sim.throttled());
    // Every job ended, with a reason where it was not sent.
    for run in store.list_runs(None, 1000).await.unwrap() {
        for job in app.jobs(run.id).await {
            assert!(!matches!(job.state, JobState::Pending | JobState::Dispatching), "job {} open", job.id);
            assert!(job.state == JobState::Sent || job.reason.is_some(), "job {} ended without a reason", job.id);
        }
    }
}

#[tokio::test]
async fn instances_list_who_leads_and_report_a_campaign_file_that_differs_between_them() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(app) = app_on_postgres("instances").await else { return };
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let csv = contacts_csv(&phones(2));
    let a = campaign_toml("c.csv", "enabled = false");
    let b = campaign_toml("c.csv", "enabled = false\nrate = 5");
    let first = folder(&app, "first", &[("c.csv", &csv), ("c.toml", &a)]);
    let second = folder(&app, "second", &[("c.csv", &csv), ("c.toml", &b)]);
    let one = start(&app, &first, &sim, "first").await;
    wait_for(Duration::from_secs(20), "the first instance leads", || {
        let url = one.url.clone();
        async move { instances(&url).await.iter().any(|i| i["leader"] == true) }
    })
    .await;
    let two = start(&app, &second, &sim, "second").await;
    wait_for(Duration::from_secs(20), "the second file is reported as different", || {
        let url = two.url.clone();
        async move {
            let live = instances(&url).await;
            live.len() == 2
                && live.iter().any(|i| i["name"] == "second" && i["campaigns_differ"] == serde_json::json!(["c"]))
        }
    })
    .await;
    let live = instances(&two.url).await;
    let first_row = live.iter().find(|i| i["name"] == "first").unwrap();
    assert_eq!(first_row["leader"], true);
    assert_eq!(first_row["campaigns_differ"], serde_json::json!([]));
    let health = reqwest::get(format!("{}/healthz", two.url)).await.unwrap().text().await.unwrap();
    assert!(
        health.starts_with("ok\n") && health.contains("leader: false") && health.contains("lease_age_ms: "),
        "{health}"
    );

    let status = app.flowcast(&["status"], &[]).await;
    let text = stdout(&status);
    assert!(text.contains("INSTANCES") && text.contains("first") && text.contains("leader"), "{text}");
    assert!(text.contains("campaign files differ from the version in force: c"), "{text}");

    // The leader leaves; the other takes its role within seconds.
    let (code, _) = one.terminate().await;
    assert_eq!(code, Some(0));
    wait_for(Duration::from_secs(10), "the second instance leads", || {
        let url = two.url.clone();
        async move { instances(&url).await.iter().any(|i| i["name"] == "second" && i["leader"] == true) }
    })
    .await;
    let _ = two.terminate().await;
}

/// A TCP relay to the test PostgreSQL server that a test can cut: `down`
/// drops every connection through it and refuses new ones until `up`.
struct Relay {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(upstream: String) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, l) = (open.clone(), links.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                l.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay { addr, open, links, _accepting: accepting }
    }

    fn down(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn up(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_away_nothing_is_sent_and_when_it_is_back_the_run_ends_with_one_execution_each() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(ledger) = flowcast::store::postgres::test_ledger("postgres away").await else { return };
    // The ledger's server, reached through a relay the test can cut.
    let config: tokio_postgres::Config = ledger.parse().unwrap();
    let (host, port) = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(tokio_postgres::config::Host::Tcp(h)), Some(p)) => (h.clone(), *p),
        _ => {
            eprintln!("skipped: FLOWCAST_TEST_POSTGRES is not a host:port URL");
            return;
        }
    };
    let relay = Relay::to(format!("{host}:{port}")).await;
    let Some(through) = ledger.split_once(&format!("{host}:{port}")).map(|(a, b)| format!("{a}{}{b}", relay.addr))
    else {
        eprintln!("skipped: the URL does not name {host}:{port}");
        return;
    };
    let mut app = TestApp::new();
    app.ledger = through;
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let contacts = phones(300);
    app.write("c.csv", contacts_csv(&contacts));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let served = Served::start_in(
        &app,
        &app.campaigns,
        &sim.url(),
        &[("FLOWCAST_INSTANCE", "only"), ("FLOWCAST_RATE", "30"), ("FLOWCAST_REQUEST_TIMEOUT", "2s")],
    )
    .await;
    assert!(sim.wait_until(Duration::from_secs(30), |e| e.len() >= 60).await, "the run got going");

    relay.down();
    // What was already out lands; after that, nothing more is created.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_cut = sim.executions().len();
    let health = reqwest::get(format!("{}/healthz", served.url)).await.unwrap();
    assert_eq!(health.status(), 503, "healthz says the ledger is away");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.executions().len(), at_cut, "no create while the ledger is away");
    assert!(at_cut < contacts.len(), "the run was cut mid-way");

    relay.up();
    let store = app.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let runs = store.list_runs(Some("c"), 10).await.unwrap();
        if runs.len() == 1 && runs[0].finished_at.is_some() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let counts = store.run_counts(runs[0].id).await.unwrap();
            panic!("the run did not finish: {counts:?}, {} Executions\n{}", sim.executions().len(), served.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = served.terminate().await.1;
    let executions = sim.executions();
    let mut per_phone: HashMap<&str, usize> = HashMap::new();
    for e in &executions {
        *per_phone.entry(e.to.as_str()).or_default() += 1;
    }
    for phone in &contacts {
        assert_eq!(per_phone.get(phone.as_str()), Some(&1), "{phone}: not exactly one Execution\n{log}");
    }
    let run = store.list_runs(Some("c"), 10).await.unwrap()[0].id;
    assert!(app.jobs(run).await.iter().all(|j| j.state == JobState::Sent), "every job sent");
}
