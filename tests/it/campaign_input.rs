//! What a new user meets first: validating a folder, running from another
//! directory, warnings that do not refuse a file, and dry runs that say which
//! jobs would expire before their window opens.

use std::path::Path;
use std::process::Output;

use crate::helpers::*;

/// Runs `flowcast` in `cwd` with exactly `args`: no `--flows` or other folder
/// flags unless the test passes them.
async fn flowcast_in(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowcast"));
    cmd.current_dir(cwd).args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOWCAST_") || k.starts_with("TWILIO_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().await.expect("flowcast runs")
}

#[tokio::test]
async fn validate_given_a_folder_checks_every_campaign_file_in_it() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(2)));
    app.write("one.toml", campaign_toml("c.csv", ""));
    app.write("two.toml", campaign_toml("c.csv", "timezone = \"Mars/Olympus\""));
    let folder = app.campaigns.to_str().unwrap();
    let out = app.flowcast(&["validate", folder], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("one.toml: one (reminder): 2 rows, 2 contacts"), "{text}");
    assert!(text.contains("two.toml:5: timezone \"Mars/Olympus\""), "{text}");
    assert!(text.contains("2 file(s) checked: 1 valid, 1 problem(s), 0 warning(s)"), "{text}");
}

#[tokio::test]
async fn named_flows_are_found_beside_the_campaigns_folder_from_any_directory() {
    let app = TestApp::new();
    std::fs::write(app.flows.join("reminder.json"), "{}").unwrap();
    app.write("c.csv", contacts_csv(&phones(2)));
    app.write("r.toml", campaign_toml("c.csv", "").replace(FLOW, "reminder"));
    let elsewhere = tempfile::tempdir().unwrap();
    let campaigns = app.campaigns.to_str().unwrap();
    let db = app.ledger.as_str();

    let out = flowcast_in(elsewhere.path(), &["--db", db, "--campaigns", campaigns, "validate"]).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));

    // A flows folder given explicitly still wins.
    let empty = elsewhere.path().join("no-flows");
    std::fs::create_dir(&empty).unwrap();
    let flows = empty.to_str().unwrap();
    let out =
        flowcast_in(elsewhere.path(), &["--db", db, "--campaigns", campaigns, "--flows", flows, "validate"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("r.toml:2: flow \"reminder\": no definition"), "{}", stdout(&out));
}

#[tokio::test]
async fn max_wait_next_to_skip_is_a_warning_and_the_campaign_is_valid() {
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(2)));
    app.write("s.toml", campaign_toml("c.csv", "on_conflict = \"skip\"\nmax_wait = \"1h\""));
    let out = app.flowcast(&["validate"], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let warning = format!(
        "{}:6: warning: max_wait only applies with on_conflict = \"wait\"; it is ignored",
        app.campaigns.join("s.toml").display()
    );
    assert!(text.contains(&warning), "{text}");
    assert!(text.contains("1 file(s) checked: 1 valid, 0 problem(s), 1 warning(s)"), "{text}");
}

/// Two contacts due 06:00 UTC on 2 January 2030, in a window that opens at
/// 08:00: the first expires at 07:00, before the window opens; the second at
/// 10:00.
fn window_after_expiry(app: &TestApp) {
    app.write(
        "c.csv",
        "phone,first_name,due,until\n+12015550100,Ann,2030-01-02 06:00,2030-01-02 07:00\n+12015550101,Bob,2030-01-02 06:00,2030-01-02 10:00\n",
    );
    app.write(
        "w.toml",
        campaign_toml(
            "c.csv",
            "send_at = \"{{due}}\"\nexpires = \"{{until}}\"\nsend_window = { start = \"08:00\", end = \"09:00\" }",
        ),
    );
}

#[tokio::test]
async fn a_dry_run_counts_a_job_whose_window_opens_after_it_expires_as_would_expire() {
    let app = TestApp::new();
    window_after_expiry(&app);
    let out = app.flowcast(&["run", "w", "--dry-run"], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("2 rows: 1 would be sent, 1 would expire, 0 rejected, 0 duplicates"), "{text}");
}

#[tokio::test]
async fn validate_counts_jobs_that_would_expire_in_its_summary() {
    let app = TestApp::new();
    window_after_expiry(&app);
    let out = app.flowcast(&["validate"], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("2 rows, 2 contacts, 0 rejected, 0 duplicates, 1 would expire"), "{text}");
}

#[tokio::test]
async fn a_job_that_expires_exactly_when_its_window_opens_would_expire() {
    let app = TestApp::new();
    app.write("c.csv", "phone,first_name,due,until\n+12015550100,Ann,2030-01-02 06:00,2030-01-02 08:00\n");
    app.write(
        "w.toml",
        campaign_toml(
            "c.csv",
            "send_at = \"{{due}}\"\nexpires = \"{{until}}\"\nsend_window = { start = \"08:00\", end = \"09:00\" }",
        ),
    );
    let out = app.flowcast(&["run", "w", "--dry-run"], &[]).await;
    assert!(stdout(&out).contains("1 rows: 0 would be sent, 1 would expire"), "{}", stdout(&out));
}
