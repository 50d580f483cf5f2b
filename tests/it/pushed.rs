//! Contacts pushed one at a time (or in batches) to a campaign with
//! `trigger = "api"`: `POST /api/campaigns/{name}/contacts`.

use std::time::Duration;

use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, campaigns_in_force, eventually};

/// A campaign fed over HTTP: no CSV, no schedule.
fn pushed_campaign() -> String {
    format!(
        "kind = \"delivery-notice\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ntrigger = \"api\"\ncontact_limits = \"exempt\"\n[parameters]\norder = \"{{{{order_id}}}}\"\n"
    )
}

#[tokio::test]
async fn a_thousand_pushed_contacts_with_a_retried_batch_make_a_thousand_jobs_and_executions() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("parcels.toml", pushed_campaign());
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_RATE", "1000")]).await;
    campaigns_in_force(&served).await;
    let client = reqwest::Client::new();
    let numbers = phones(1000);
    let url = format!("{}/api/campaigns/parcels/contacts", served.url);

    for (b, chunk) in numbers.chunks(250).enumerate() {
        let batch: Vec<Value> =
            chunk.iter().enumerate().map(|(i, p)| json!({"phone": p, "order_id": format!("O{b}-{i}")})).collect();
        let push = || client.post(&url).header("Idempotency-Key", format!("batch-{b}")).json(&batch).send();
        let first = push().await.unwrap();
        assert_eq!(first.status(), 201, "batch {b}");
        let first: Value = first.json().await.unwrap();
        assert!(first["contacts"].as_array().unwrap().iter().all(|c| c["result"] == "created"), "{first}");
        if b == 1 {
            // The client lost the answer and sends the same batch again.
            let again = push().await.unwrap();
            assert_eq!(again.status(), 200);
            let again: Value = again.json().await.unwrap();
            assert!(again["contacts"].as_array().unwrap().iter().all(|c| c["result"] == "existing"), "{again}");
            assert_eq!(again["contacts"][7]["job"], first["contacts"][7]["job"]);
        }
    }

    assert!(
        eventually(Duration::from_secs(30), async || sim.executions().len() >= 1000).await,
        "{} Executions\n{}",
        sim.executions().len(),
        served.log()
    );
    let executions = sim.executions();
    assert_eq!(executions.len(), 1000, "one Execution per contact");
    let mut reached: Vec<&str> = executions.iter().map(|e| e.to.as_str()).collect();
    reached.sort();
    reached.dedup();
    assert_eq!(reached.len(), 1000);
    // The ledger records outcomes in batches, a moment after Studio has them.
    let runs_url = format!("{}/api/runs", served.url);
    let recorded = eventually(Duration::from_secs(10), async || {
        let runs: Value = client.get(&runs_url).send().await.unwrap().json().await.unwrap();
        runs["runs"][0]["jobs"]["sent"] == 1000
    })
    .await;
    let runs: Value = client.get(&runs_url).send().await.unwrap().json().await.unwrap();
    let runs = runs["runs"].as_array().unwrap();
    assert!(recorded, "{}", runs[0]);
    assert_eq!(runs.len(), 1, "one open run for the day: {runs:?}");
    assert_eq!(runs[0]["trigger"], "contacts");
}

#[tokio::test]
async fn a_contact_key_pushed_again_is_a_no_op_and_bad_pushes_are_named() {
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("parcels.toml", pushed_campaign());
    app.write("c.csv", contacts_csv(&phones(1)));
    app.write("file-based.toml", campaign_toml("c.csv", "schedule = \"0 0 1 1 *\""));
    let served = Served::start(&app, &sim.url()).await;
    campaigns_in_force(&served).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/campaigns/parcels/contacts", served.url);

    let one = json!({"phone": "+12015550100", "order_id": "A1", "key": "order-A1"});
    let first: Value = client.post(&url).json(&one).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["contacts"][0]["result"], "created", "{first}");
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() == 1).await, "{}", served.log());
    // …and recorded in the ledger (outcomes are written in batches).
    let runs_url = format!("{}/api/runs", served.url);
    let recorded = eventually(Duration::from_secs(10), async || {
        let runs: Value = client.get(&runs_url).send().await.unwrap().json().await.unwrap();
        runs["runs"][0]["jobs"]["sent"] == 1
    })
    .await;
    assert!(recorded, "{}", served.log());
    let again = client.post(&url).json(&json!({"phone": "+12015550199", "order_id": "A1", "key": "order-A1"})).send();
    let again: Value = again.await.unwrap().json().await.unwrap();
    assert_eq!(again["contacts"][0]["result"], "existing");
    assert_eq!(again["contacts"][0]["job"], first["contacts"][0]["job"]);
    assert_eq!(again["contacts"][0]["state"], "sent");
    let bad: Value = client
        .post(&url)
        .json(&json!([{"phone": "nope", "order_id": "A2"}, {"phone": "+12015550101"}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["contacts"][0]["result"], "rejected", "{bad}");
    assert!(bad["contacts"][1]["reason"].as_str().unwrap().contains("order_id"), "{bad}");
    // The repeat and the refused rows made no job, so nothing more can be sent.
    let runs: Value = client.get(format!("{}/api/runs", served.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(runs["runs"][0]["jobs"], json!({"sent": 1}), "{runs}");
    assert_eq!(runs["runs"][0]["rejected"], 2, "{runs}");
    assert_eq!(sim.executions().len(), 1);

    for (path, body, status, code) in [
        ("file-based", json!({"phone": "+12015550100"}), 409, "not_an_api_campaign"),
        ("nobody", json!({"phone": "+12015550100"}), 404, "not_found"),
        ("parcels", json!([]), 422, "invalid_contacts"),
        ("parcels", json!("text"), 400, "bad_request"),
    ] {
        let answer =
            client.post(format!("{}/api/campaigns/{path}/contacts", served.url)).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), status, "{path} {body}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
    }
}
