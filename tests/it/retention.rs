//! Retention: `flowcast purge` and `serve`'s daily purge remove the personal
//! data of runs over longer ago than a duration (phones become keyed hashes,
//! Parameters, outcome values, rejected rows and Studio calls go), keep
//! counts and states, never touch the suppression list, and leave no copy of
//! what they removed in the ledger's files.

use std::time::Duration;

use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::Value;

use crate::helpers::*;
use crate::service::{Served, eventually};

fn env(url: &str) -> Vec<(&str, &str)> {
    vec![
        ("FLOWCAST_STUDIO_URL", url),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("FLOWCAST_RATE", "500"),
    ]
}

/// A survey of `numbers` whose outcome reads the contact's name back from
/// the Execution's Context, plus a row with a bad number and a duplicate.
fn survey(app: &TestApp, numbers: &[String]) {
    let mut csv = String::from("phone,first_name\n");
    for (i, p) in numbers.iter().enumerate() {
        csv.push_str(&format!("{p},Name{i}\n"));
    }
    csv.push_str("201-555-BAD,Badrow\n");
    csv.push_str(&format!("{},Duprow\n", numbers[0]));
    app.write("c.csv", csv);
    app.write(
        "c.toml",
        format!(
            "kind = \"survey\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"c.csv\"\n\
             [parameters]\nname = \"{{{{first_name}}}}\"\n[outcomes]\nname = \"flow.data.name\"\n"
        ),
    );
}

/// Runs the survey to its end against the simulator and reads every outcome back.
async fn run_survey(app: &TestApp, sim: &Simulator) {
    let run = app.flowcast(&["run", "c"], &env(&sim.url())).await;
    assert_eq!(run.status.code(), Some(0), "{}{}", stdout(&run), stderr(&run));
    let collect = app.flowcast(&["collect", "1"], &env(&sim.url())).await;
    assert!(stdout(&collect).contains("0 still open"), "{}{}", stdout(&collect), stderr(&collect));
}

/// The personal values of the survey: each number (with and without its
/// `+`), each name, and the refused rows' values.
fn personal_values(numbers: &[String]) -> Vec<String> {
    let mut values: Vec<String> = numbers.iter().flat_map(|p| [p.clone(), p[1..].to_string()]).collect();
    values.extend((0..numbers.len()).map(|i| format!("Name{i}")));
    values.extend(["201-555-BAD".to_string(), "Badrow".into(), "Duprow".into()]);
    values
}

/// The values of `values` found in `text`.
fn found<'a>(text: &str, values: &'a [String]) -> Vec<&'a str> {
    values.iter().filter(|v| text.contains(v.as_str())).map(String::as_str).collect()
}

/// The ledger's files, byte for byte (the database and its write-ahead log).
fn ledger_bytes(app: &TestApp) -> String {
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", app.db.display());
        all.extend(std::fs::read(&path).unwrap_or_default());
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn purge_replaces_phones_with_hashes_removes_every_personal_value_and_says_what_it_removed() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(4);
    survey(&app, &numbers);
    let add = app.flowcast(&["suppress", "add", &numbers[3], "--reason", "asked by phone"], &[]).await;
    assert_eq!(add.status.code(), Some(0), "{}", stderr(&add));
    run_survey(&app, &sim).await;
    let values = personal_values(&numbers);
    let json_report = async || stdout(&app.flowcast(&["report", "1", "--format", "json"], &[]).await);
    let before = json_report().await;
    assert!(found(&before, &values).contains(&"Name0") && before.contains(&numbers[0]), "{before}");

    let dry = app.flowcast(&["purge", "--older-than", "0s", "--dry-run"], &[]).await;
    let too_young = app.flowcast(&["purge", "--older-than", "30d"], &[]).await;
    let purge = app.flowcast(&["purge", "--older-than", "0s"], &[]).await;
    let again = app.flowcast(&["purge", "--older-than", "0s"], &[]).await;

    // The suppressed contact's job was skipped at import: 3 creates.
    let counts = "1 run finished before ";
    let removed = ": 4 jobs, 3 Studio calls, 2 import rows\n";
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(stdout(&dry).starts_with(&format!("would purge {counts}")), "{}", stdout(&dry));
    assert!(stdout(&dry).ends_with(removed), "{}", stdout(&dry));
    assert!(stdout(&too_young).starts_with("purged 0 runs finished before "), "{}", stdout(&too_young));
    assert_eq!(purge.status.code(), Some(0), "{}", stderr(&purge));
    assert!(stdout(&purge).starts_with(&format!("purged {counts}")), "{}", stdout(&purge));
    assert!(stdout(&purge).ends_with(removed), "{}", stdout(&purge));
    assert!(stdout(&again).starts_with("purged 0 runs"), "purging twice is a no-op: {}", stdout(&again));

    let after = json_report().await;
    assert_eq!(found(&after, &values), Vec::<&str>::new(), "{after}");
    let rows: Vec<Value> = serde_json::from_str(&after).unwrap();
    assert_eq!(rows.len(), 4, "the jobs stay; the refused rows go (the run keeps their counts): {after}");
    assert!(rows.iter().all(|r| r["phone"].as_str().unwrap().starts_with("hash:")), "{after}");
    let states: Vec<&str> = rows.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["sent", "sent", "sent", "skipped"]);
    assert_eq!(rows[3]["reason"], "suppressed: scope all, asked by phone");
    assert!(rows[0]["execution_sid"].as_str().unwrap().starts_with("FN"));
    let csv = stdout(&app.flowcast(&["report", "1"], &[]).await);
    assert_eq!(found(&csv, &values), Vec::<&str>::new(), "{csv}");
    let status: Value =
        serde_json::from_slice(&app.flowcast(&["status", "--json"], &[]).await.stdout).expect("status JSON");
    let run = &status["runs"][0];
    assert!(run["purged_at"].is_i64(), "{run}");
    assert_eq!((&run["rows_total"], &run["rejected"], &run["duplicates"]), (&6.into(), &1.into(), &1.into()));
    let list = stdout(&app.flowcast(&["suppress", "list", "--json"], &[]).await);
    assert!(list.contains(&numbers[3]), "the suppression list is never purged: {list}");
    // Nothing removed lingers in the files: not in free pages, not in the log.
    let file = ledger_bytes(&app);
    let lingering: Vec<&str> = found(&file, &values).into_iter().filter(|v| !numbers[3].ends_with(v)).collect();
    assert_eq!(lingering, Vec::<&str>::new());
}

#[tokio::test]
async fn purge_takes_the_configured_retention_and_says_what_it_needs_without_one() {
    let app = TestApp::new();

    let none = app.flowcast(&["purge"], &[]).await;
    let bad = app.flowcast(&["purge"], &[("FLOWCAST_RETENTION", "90 days")]).await;
    std::fs::write(app.dir.path().join("flowcast.toml"), "retention = \"keep\"\n").unwrap();
    let kept = app.flowcast(&["purge", "--dry-run"], &[]).await;
    std::fs::write(app.dir.path().join("flowcast.toml"), "retention = \"90d\"\n").unwrap();
    let configured = app.flowcast(&["purge", "--dry-run"], &[]).await;
    std::fs::write(app.dir.path().join("flowcast.toml"), "retention = \"3 months\"\n").unwrap();
    let bad_file = app.flowcast(&["purge", "--older-than", "1d"], &[]).await;

    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    assert!(
        stderr(&none).contains("purge needs --older-than DURATION (e.g. 90d), or `retention`"),
        "{}",
        stderr(&none)
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("FLOWCAST_RETENTION: duration \"90 days\""), "{}", stderr(&bad));
    assert_eq!(kept.status.code(), Some(2), "keep never purges: {}", stderr(&kept));
    assert_eq!(configured.status.code(), Some(0), "{}", stderr(&configured));
    if on_postgres() {
        // A server's ledger is never "missing": an empty one has nothing to purge.
        assert!(stdout(&configured).contains("would purge 0 runs"), "{}", stdout(&configured));
    } else {
        assert!(stdout(&configured).contains("nothing to purge: no ledger at"), "{}", stdout(&configured));
    }
    assert!(!app.db.exists(), "a purge never creates a ledger");
    assert_eq!(bad_file.status.code(), Some(1));
    assert!(stderr(&bad_file).contains("flowcast.toml: retention: duration \"3 months\""), "{}", stderr(&bad_file));
}

#[tokio::test]
async fn serve_purges_at_start_when_retention_is_set_and_its_api_shows_the_hashes() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(3);
    survey(&app, &numbers);
    run_survey(&app, &sim).await;
    // The campaign's files go, so serve starts no run of its own.
    std::fs::remove_file(app.campaigns.join("c.toml")).unwrap();

    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_RETENTION", "0s")]).await;

    let purged = "retention: purged 1 run finished before ";
    assert!(eventually(Duration::from_secs(10), async || served.log().contains(purged)).await, "{}", served.log());
    let jobs: Value =
        reqwest::get(format!("{}/api/runs/1/jobs", served.url)).await.unwrap().json().await.expect("jobs JSON");
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["phone"].as_str().unwrap().starts_with("hash:") && j["state"] == "sent"));
    let run: Value = reqwest::get(format!("{}/api/runs/1", served.url)).await.unwrap().json().await.unwrap();
    assert!(run["purged_at"].is_i64(), "{run}");
    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0), "the daily purge stops with the service: {log}");
    assert!(log.contains(": 3 jobs, 3 Studio calls, 2 import rows"), "{log}");
    assert_eq!(found(&log, &personal_values(&numbers)), Vec::<&str>::new(), "{log}");
}
