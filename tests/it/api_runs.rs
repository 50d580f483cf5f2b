//! Runs started over HTTP: `POST /api/campaigns/{name}/runs` with the
//! campaign's CSV, a CSV body or a JSON array, and an `Idempotency-Key` that
//! makes a retried request find the run the first one made.

use std::time::Duration;

use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, campaigns_in_force, eventually};

/// A campaign that serve does not start by itself: its schedule fires once a
/// year, so every run in these tests is one the API started.
fn yearly(contacts: &str) -> String {
    campaign_toml(contacts, "schedule = \"0 0 1 1 *\"")
}

/// Serve answers before its first scan of the folder: wait until the
/// campaign is in force.
async fn started(app: &TestApp, sim: &Simulator) -> Served {
    let served = Served::start(app, &sim.url()).await;
    campaigns_in_force(&served).await;
    served
}

async fn run_state(client: &reqwest::Client, url: &str, id: i64) -> Value {
    client.get(format!("{url}/api/runs/{id}")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_run_started_twice_with_one_idempotency_key_makes_one_run() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("notices.toml", yearly("c.csv"));
    let served = started(&app, &sim).await;
    let client = reqwest::Client::new();
    let contacts = json!([
        {"phone": "+12015550100", "first_name": "Ada"},
        {"phone": "+12015550101", "first_name": "Grace"},
        {"phone": "+12015550102", "first_name": "Edsger"},
    ]);
    let post = || {
        client
            .post(format!("{}/api/campaigns/notices/runs", served.url))
            .header("Idempotency-Key", "order-batch-17")
            .json(&contacts)
            .send()
    };

    let first = post().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers()["location"].to_str().unwrap().starts_with("/api/runs/"));
    let first: Value = first.json().await.unwrap();
    let again = post().await.unwrap();
    assert_eq!(again.status(), 200, "a repeat answers with the run already made");
    let again: Value = again.json().await.unwrap();

    assert_eq!(first["id"], again["id"]);
    let id = first["id"].as_i64().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || run_state(&client, &served.url, id).await["state"] == "finished")
            .await,
        "{}",
        served.log()
    );
    let runs: Value = client.get(format!("{}/api/runs", served.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "one run: {runs}");
    let names: Vec<String> =
        sim.executions().iter().map(|e| e.parameters["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for name in ["Ada", "Grace", "Edsger"] {
        assert!(names.contains(&name.to_string()), "{names:?}");
    }
}

#[tokio::test]
async fn a_csv_body_is_read_like_a_file_and_a_body_with_nothing_valid_is_refused_row_by_row() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(2)));
    app.write("notices.toml", yearly("c.csv"));
    let served = started(&app, &sim).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/campaigns/notices/runs", served.url);

    let csv = "phone,first_name\n+12015550100,Ada\nnot-a-phone,Bob\n+12015550101,\n";
    let answer = client.post(&url).header("content-type", "text/csv").body(csv).send().await.unwrap();
    assert_eq!(answer.status(), 201);
    let run: Value = answer.json().await.unwrap();
    assert_eq!((run["rows"].as_i64(), run["rejected"].as_i64()), (Some(3), Some(2)), "{run}");
    let id = run["id"].as_i64().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || run_state(&client, &served.url, id).await["state"] == "finished")
            .await
    );
    assert_eq!(sim.executions().len(), 1);
    let report = app.flowcast(&["report", &id.to_string()], &[]).await;
    assert!(stdout(&report).contains("not-a-phone"), "rejected rows are in the report: {}", stdout(&report));

    let none_valid = json!([{"phone": "12", "first_name": "A"}, {"phone": "+12015550109"}]);
    let answer = client.post(&url).json(&none_valid).send().await.unwrap();
    assert_eq!(answer.status(), 422);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_rows");
    let rows = body["error"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["index"].as_i64(), rows[1]["index"].as_i64()), (Some(0), Some(1)));
    assert!(rows[1]["reason"].as_str().unwrap().contains("first_name"), "{body}");
    let runs: Value = client.get(format!("{}/api/runs", served.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "the refused request made no run");
}

#[tokio::test]
async fn an_empty_body_runs_the_campaigns_csv_and_mistakes_get_the_apis_error_shape() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(4)));
    app.write("notices.toml", yearly("c.csv"));
    let served = started(&app, &sim).await;
    let client = reqwest::Client::new();

    let answer = client.post(format!("{}/api/campaigns/notices/runs", served.url)).send().await.unwrap();
    assert_eq!(answer.status(), 201);
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() == 4).await, "{}", served.log());
    let run: Value = answer.json().await.unwrap();
    assert_eq!(run["trigger"], "api", "{run}");

    for (path, content_type, body, status, code) in [
        ("nobody", "application/json", "[]", 404, "not_found"),
        ("notices", "text/plain", "hello", 415, "unsupported_media_type"),
        ("notices", "application/json", "{\"phone\": 1}", 422, "invalid_contacts"),
        ("notices", "application/json", "[{", 400, "bad_request"),
        ("notices", "text/csv", "name\nAda\n", 422, "invalid_contacts"),
    ] {
        let answer = client
            .post(format!("{}/api/campaigns/{path}/runs", served.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{path} {content_type} {body}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }
}
