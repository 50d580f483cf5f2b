//! `flowcast validate`: each mistake gives its precise `file:line: message` and
//! exit 1; good files exit 0.

use crate::helpers::*;

async fn validate(app: &TestApp, file: &str) -> (i32, String) {
    let out = app.flowcast(&["validate", app.campaigns.join(file).to_str().unwrap()], &[]).await;
    (out.status.code().unwrap_or(-1), stdout(&out))
}

fn good_csv(app: &TestApp) {
    app.write("c.csv", contacts_csv(&phones(3)));
}

#[tokio::test]
async fn a_valid_campaign_passes_with_a_summary() {
    let app = TestApp::new();
    good_csv(&app);
    app.write("ok.toml", campaign_toml("c.csv", "schedule = \"0 9 * * Mon-Fri\"\ntimezone = \"America/New_York\""));
    let (code, out) = validate(&app, "ok.toml").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 rows, 3 contacts, 0 rejected, 0 duplicates"), "{out}");
    assert!(out.contains("1 valid, 0 problem(s)"), "{out}");
}

#[tokio::test]
async fn malformed_toml_names_the_line() {
    let app = TestApp::new();
    good_csv(&app);
    app.write("bad.toml", "kind = \"reminder\"\nflow = \"FW0123456789abcdef0123456789abcdef\n");
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:2: "), "{out}");
}

#[tokio::test]
async fn an_unknown_key_is_refused_at_its_line() {
    let app = TestApp::new();
    good_csv(&app);
    app.write("bad.toml", campaign_toml("c.csv", "colour = \"blue\""));
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:5: unknown field `colour`"), "{out}");
}

#[tokio::test]
async fn a_bad_cron_line_is_refused() {
    let app = TestApp::new();
    good_csv(&app);
    app.write("bad.toml", campaign_toml("c.csv", "schedule = \"0 9 * *\""));
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:5: schedule: \"0 9 * *\" has 4 fields"), "{out}");
    app.write("bad2.toml", campaign_toml("c.csv", "schedule = \"0 25 * * *\""));
    let (code, out) = validate(&app, "bad2.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad2.toml:5: schedule: \"0 25 * * *\" is not a valid cron line"), "{out}");
}

#[tokio::test]
async fn an_unknown_time_zone_is_refused() {
    let app = TestApp::new();
    good_csv(&app);
    app.write("bad.toml", campaign_toml("c.csv", "timezone = \"Mars/Olympus\""));
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:5: timezone \"Mars/Olympus\" is not an IANA time zone"), "{out}");
}

#[tokio::test]
async fn a_malformed_flow_sid_is_refused() {
    let app = TestApp::new();
    good_csv(&app);
    app.write("bad.toml", "kind = \"survey\"\nflow = \"FW12345\"\nfrom = \"+15017122661\"\ncontacts = \"c.csv\"\n");
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:2: flow: \"FW12345\" is not a Flow SID"), "{out}");
}

#[tokio::test]
async fn a_contacts_path_escaping_the_folder_is_refused() {
    let app = TestApp::new();
    std::fs::write(app.dir.path().join("outside.csv"), contacts_csv(&phones(1))).unwrap();
    app.write("bad.toml", campaign_toml("../outside.csv", ""));
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:4: contacts \"../outside.csv\" is outside the campaigns folder"), "{out}");
    app.write("abs.toml", campaign_toml("/etc/passwd", ""));
    let (code, out) = validate(&app, "abs.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("abs.toml:4: contacts \"/etc/passwd\" must be relative"), "{out}");
}

#[tokio::test]
async fn a_template_naming_a_missing_column_is_refused() {
    let app = TestApp::new();
    good_csv(&app);
    app.write("bad.toml", campaign_toml("c.csv", "send_at = \"{{appointment_at}} - 24h\""));
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:5: send_at: column \"appointment_at\" is not in"), "{out}");
}

#[tokio::test]
async fn every_problem_in_a_file_is_reported_at_once() {
    let app = TestApp::new();
    good_csv(&app);
    app.write(
        "bad.toml",
        "kind = \"newsletter\"\nflow = \"FW1\"\nfrom = \"12345\"\ncontacts = \"c.csv\"\non_conflict = \"retry\"\nrate = 0\n",
    );
    let (code, out) = validate(&app, "bad.toml").await;
    assert_eq!(code, 1);
    for expected in
        ["bad.toml:1: kind", "bad.toml:2: flow", "bad.toml:3: from", "bad.toml:5: on_conflict", "bad.toml:6: rate"]
    {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test]
async fn invalid_numbers_are_reported_row_by_row_and_the_counts_add_up() {
    let app = TestApp::new();
    app.write(
        "c.csv",
        "phone,first_name\n+12015550100,Ann\nnot-a-number,Bob\n+1201555,Cy\n+12015550100,Dup\n,Empty\n+12015550101,Eve\n",
    );
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app, "c.toml").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("c.csv:3: column \"phone\": \"not-a-number\""), "{out}");
    assert!(out.contains("c.csv:4: column \"phone\": \"+1201555\""), "{out}");
    assert!(out.contains("c.csv:5: warning: duplicate phone +12015550100"), "{out}");
    assert!(out.contains("c.csv:6: column \"phone\": phone number is empty"), "{out}");
    assert!(out.contains("6 rows, 2 contacts, 3 rejected, 1 duplicates"), "{out}");
}

#[tokio::test]
async fn a_missing_template_value_rejects_only_that_row() {
    let app = TestApp::new();
    app.write("c.csv", "phone,first_name\n+12015550100,Ann\n+12015550101,\n");
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app, "c.toml").await;
    assert_eq!(code, 1);
    assert!(out.contains("c.csv:3: parameters.name: column \"first_name\" is empty"), "{out}");
    assert!(out.contains("2 rows, 1 contacts, 1 rejected"), "{out}");
}

#[tokio::test]
async fn blank_lines_a_bom_and_quoted_commas_and_newlines_are_fine() {
    let app = TestApp::new();
    app.write(
        "c.csv",
        b"\xef\xbb\xbfphone,first_name\r\n\r\n+12015550100,\"Doe, Jane\"\r\n+12015550101,\"multi\nline\"\r\n\r\n"
            .as_slice(),
    );
    app.write("c.toml", campaign_toml("c.csv", ""));
    let (code, out) = validate(&app, "c.toml").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 rows, 2 contacts, 0 rejected, 0 duplicates"), "{out}");
}

#[tokio::test]
async fn the_shipped_examples_all_pass() {
    let app = TestApp::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("campaigns");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, app.campaigns.join(path.file_name().unwrap())).unwrap();
    }
    // The examples name their Flows: the definitions come along.
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    for entry in std::fs::read_dir(flows).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, app.flows.join(path.file_name().unwrap())).unwrap();
    }
    let out = app.flowcast(&["validate"], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for kind in ["(reminder)", "(delivery-notice)", "(survey)"] {
        assert!(text.contains(kind), "an example of each kind: {text}");
    }
}

#[tokio::test]
async fn the_shipped_flow_definitions_pass_flows_validate() {
    let app = TestApp::new();
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    for entry in std::fs::read_dir(flows).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, app.flows.join(path.file_name().unwrap())).unwrap();
    }
    let env_file = app.flows.join("example.env");
    let out = app.flowcast(&["flows", "validate", "--simulate", "--env-file", env_file.to_str().unwrap()], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for name in ["appointment-reminder", "delivery-notice", "satisfaction-survey"] {
        assert!(text.contains(&format!("{name}.json: valid")), "{text}");
    }
    assert!(text.contains("0 warning(s)"), "no example asks for an opt-out keyword: {text}");
}
