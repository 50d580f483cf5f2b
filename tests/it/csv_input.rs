//! Contacts CSVs that used to be misread: an unclosed quote, CRLF line endings,
//! oversized headers and fields, and contacts paths that are not regular files.
//! Each is seen the way a user sees it: through `validate`, or a run's import.

use std::sync::Arc;

use flowcast::domain::{FlowSid, RunState, Trigger};
use flowcast::runs::{Imports, start};
use flowcast::schedule::SystemClock;

use crate::helpers::*;

async fn validate(app: &TestApp) -> (i32, String) {
    let out = app.flowcast(&["validate", app.campaigns.join("c.toml").to_str().unwrap()], &[]).await;
    (out.status.code().unwrap_or(-1), stdout(&out))
}

/// 1,000 data rows, the third of which (line 4) opens a quote it never closes.
fn csv_with_an_unclosed_quote_on_line_4() -> String {
    let mut csv = contacts_csv(&phones(2));
    csv.push_str("+12125550199,\"Ann\n");
    for p in phones(1000).iter().skip(3) {
        csv.push_str(&format!("{p},Someone\n"));
    }
    csv
}

#[tokio::test]
async fn validate_refuses_an_unmatched_quote_naming_the_line_it_opened_on() {
    let app = TestApp::new();
    app.write("c.csv", csv_with_an_unclosed_quote_on_line_4());
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("c.csv:4: ") && out.contains("quote"), "{out}");
    assert!(!out.contains("3 rows, 3 contacts"), "{out}");
    assert!(out.contains("0 valid, 1 problem(s)"), "{out}");
}

#[tokio::test]
async fn a_run_of_a_file_with_an_unmatched_quote_is_cancelled_naming_the_file_and_line() {
    let app = TestApp::new();
    app.write("c.csv", csv_with_an_unclosed_quote_on_line_4());
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (campaign, store) = (app.campaign("c.toml"), app.store().await);
    let (now, flow) = (chrono::Utc::now().timestamp_millis(), FlowSid::parse(FLOW).unwrap());
    let run = start(&store, &campaign, &flow, Trigger::Manual, "k".into(), now, now).await.unwrap().expect("a new run");
    let import = Imports::default().spawn(&store, &campaign, run, Arc::new(SystemClock)).expect("an import starts");
    let err = import.await.unwrap().expect_err("the import is refused").to_string();
    assert!(err.contains("c.csv:4: "), "{err}");
    let row = store.get_run(run).await.unwrap();
    assert_eq!(row.state, RunState::Cancelled);
    let reason = row.state_reason.unwrap_or_default();
    assert!(reason.contains("c.csv:4: "), "{reason}");
}

#[tokio::test]
async fn validate_reports_rows_of_a_crlf_file_at_their_own_lines() {
    let app = TestApp::new();
    app.write(
        "c.csv",
        "\u{feff}phone,first_name\r\n+12015550100,Ann\r\n+12015550101,\"Bob\r\nSmith\"\r\nnot-a-number,Cy\r\n\r\n+1201555,Di\r\n",
    );
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("c.csv:5: column \"phone\": \"not-a-number\""), "{out}");
    assert!(out.contains("c.csv:7: column \"phone\": \"+1201555\""), "{out}");
    assert!(out.contains("4 rows, 2 contacts, 2 rejected, 0 duplicates"), "{out}");
}

#[tokio::test]
async fn validate_refuses_a_header_wider_than_the_limit_naming_the_limit() {
    let app = TestApp::new();
    let extra: Vec<String> = (0..999).map(|i| format!("c{i}")).collect();
    app.write("c.csv", format!("phone,first_name,{}\n", extra.join(",")));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("c.csv:1: the header has 1001 columns"), "{out}");
    assert!(out.contains("1000"), "{out}");
}

#[tokio::test]
async fn a_ten_megabyte_field_does_not_validate() {
    let app = TestApp::new();
    let mut csv = contacts_csv(&phones(3));
    csv.push_str(&format!("+12015559999,\"{}\"\n", "x".repeat(10 * 1024 * 1024)));
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("c.csv:5: column \"first_name\"") && out.contains("64 KiB"), "{out}");
    assert!(out.contains("4 rows, 3 contacts, 1 rejected, 0 duplicates"), "{out}");
}

#[cfg(unix)]
#[tokio::test]
async fn validate_refuses_a_named_pipe_as_contacts_naming_its_path() {
    let app = TestApp::new();
    let fifo = app.campaigns.join("c.csv");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{}: is a named pipe (FIFO), not a regular file", fifo.display())), "{out}");
}
