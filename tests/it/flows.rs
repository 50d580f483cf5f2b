//! Flows as code: local checks, deploy → unchanged skip → update, the lock file
//! per account, and campaigns that name their Flow.

use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::json;

use crate::helpers::*;

fn definition(greeting: &str) -> String {
    json!({
        "description": "reminder",
        "states": [
            {"name": "Trigger", "type": "trigger", "transitions": [{"event": "incomingRequest", "next": "say"}]},
            {"name": "say", "type": "send-message", "properties": {"body": greeting}}
        ],
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true}
    })
    .to_string()
}

fn studio_env<'a>(url: &'a str, account: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("FLOWCAST_STUDIO_URL", url),
        ("TWILIO_ACCOUNT_SID", account),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("FLOWCAST_RATE", "200"),
    ]
}

#[tokio::test]
async fn deploy_creates_then_skips_unchanged_then_updates_and_keeps_each_accounts_mapping() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    std::fs::write(app.flows.join("reminder.json"), definition("Hello ${CLINIC}")).unwrap();
    let url = sim.url();

    // An unset placeholder is an error naming the file and the variable.
    let out = app.flowcast(&["flows", "deploy"], &studio_env(&url, ACCOUNT)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("reminder.json: ${CLINIC} is not set"), "{}", stdout(&out));
    assert!(sim.flow_revisions().is_empty(), "nothing was sent");

    let env_file = app.dir.path().join("staging.env");
    std::fs::write(&env_file, "CLINIC=Main St\n").unwrap();
    let env_arg = env_file.to_str().unwrap();
    let out = app
        .flowcast(&["flows", "deploy", "--env-file", env_arg, "--message", "first"], &studio_env(&url, ACCOUNT))
        .await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("created FW"), "{}", stdout(&out));
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(app.flows.join("flows.lock.toml")).unwrap()).unwrap();
    let sid = lock[ACCOUNT]["reminder"]["sid"].as_str().unwrap().to_string();
    assert_eq!(sim.flow_revisions()[&sid], 1);

    let out = app.flowcast(&["flows", "deploy", "--env-file", env_arg], &studio_env(&url, ACCOUNT)).await;
    assert!(stdout(&out).contains("unchanged since revision 1; not re-sent"), "{}", stdout(&out));
    assert_eq!(sim.flow_revisions()[&sid], 1);

    std::fs::write(&env_file, "CLINIC=Harbour Rd\n").unwrap();
    let out = app.flowcast(&["flows", "deploy", "--env-file", env_arg, "--draft"], &studio_env(&url, ACCOUNT)).await;
    assert!(stdout(&out).contains(&format!("updated {sid} revision 2 (draft)")), "{}", stdout(&out));
    assert_eq!(sim.flow_revisions()[&sid], 2);

    // Another account gets its own Flow; both mappings are kept.
    let other = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let out = app.flowcast(&["flows", "deploy", "--env-file", env_arg], &studio_env(&url, other)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(app.flows.join("flows.lock.toml")).unwrap()).unwrap();
    assert_eq!(lock[ACCOUNT]["reminder"]["sid"].as_str().unwrap(), sid);
    assert_eq!(lock[ACCOUNT]["reminder"]["revision"].as_integer(), Some(2));
    assert_ne!(lock[other]["reminder"]["sid"].as_str().unwrap(), sid);
}

#[tokio::test]
async fn a_campaign_names_its_flow_and_runs_only_where_it_is_deployed() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    std::fs::write(app.flows.join("reminder.json"), definition("Hi")).unwrap();
    app.write("c.csv", contacts_csv(&phones(3)));
    app.write("c.toml", campaign_toml("c.csv", "").replace(FLOW, "reminder"));
    let url = sim.url();

    let out = app.flowcast(&["run", "c"], &studio_env(&url, ACCOUNT)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("flow \"reminder\" is not deployed for account {ACCOUNT}")),
        "{}",
        stderr(&out)
    );
    assert!(sim.executions().is_empty());

    let out = app.flowcast(&["flows", "deploy"], &studio_env(&url, ACCOUNT)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = app.flowcast(&["run", "c"], &studio_env(&url, ACCOUNT)).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(app.flows.join("flows.lock.toml")).unwrap()).unwrap();
    let sid = lock[ACCOUNT]["reminder"]["sid"].as_str().unwrap();
    assert!(sim.executions().iter().all(|e| e.flow_sid == sid) && sim.executions().len() == 3);
}

#[tokio::test]
async fn local_checks_refuse_bad_shapes_and_bodies_over_a_megabyte_before_sending() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let app = TestApp::new();
    std::fs::write(
        app.flows.join("broken.json"),
        r#"{"description": "x", "states": [], "initial_state": "Trigger", "flags": {}}"#,
    )
    .unwrap();
    std::fs::write(app.flows.join("notjson.json"), "{ nope").unwrap();
    let huge = "x".repeat(1_100_000);
    std::fs::write(app.flows.join("huge.json"), definition(&huge)).unwrap();
    let url = sim.url();

    let out = app.flowcast(&["flows", "validate"], &studio_env(&url, ACCOUNT)).await;

    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("broken.json: initial_state \"Trigger\" names no state"), "{text}");
    assert!(text.contains("notjson.json:1: not JSON"), "{text}");
    assert!(
        text.contains("huge.json: the request would be") && text.contains("Studio refuses bodies over 1000000 bytes"),
        "{text}"
    );
    assert!(sim.flow_revisions().is_empty());
}

#[tokio::test]
async fn studios_validation_problems_are_printed_one_per_line() {
    let mut server = mockito::Server::new_async().await;
    let _m = server
        .mock("POST", "/v2/Flows/Validate")
        .match_body(mockito::Matcher::Regex("FriendlyName=reminder".into()))
        .with_status(400)
        .with_body(
            json!({"code": 20001, "message": "Invalid Flow Definition", "status": 400, "details": {"errors": [
                {"message": "must have required property 'service'", "property_path": "#/states/1/properties"},
                {"message": "unknown widget type", "property_path": "#/states/1/type"}
            ]}})
            .to_string(),
        )
        .create_async()
        .await;
    let app = TestApp::new();
    std::fs::write(app.flows.join("reminder.json"), definition("Hi")).unwrap();
    let url = server.url();

    let out = app.flowcast(&["flows", "validate", "reminder"], &studio_env(&url, ACCOUNT)).await;

    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("reminder.json: #/states/1/properties: must have required property 'service'"), "{text}");
    assert!(text.contains("reminder.json: #/states/1/type: unknown widget type"), "{text}");
}

#[tokio::test]
async fn flow_calls_send_what_the_api_requires() {
    let mut server = mockito::Server::new_async().await;
    let create = server
        .mock("POST", "/v2/Flows")
        .match_body(mockito::Matcher::AllOf(vec![
            mockito::Matcher::UrlEncoded("FriendlyName".into(), "reminder".into()),
            mockito::Matcher::UrlEncoded("Status".into(), "published".into()),
            mockito::Matcher::UrlEncoded("CommitMessage".into(), "v1".into()),
            mockito::Matcher::Regex("Definition=".into()),
        ]))
        .with_status(201)
        .with_body(
            json!({"sid": "FW0123456789abcdef0123456789abcdef", "revision": 1, "status": "published"}).to_string(),
        )
        .create_async()
        .await;
    let update = server
        .mock("POST", "/v2/Flows/FW0123456789abcdef0123456789abcdef")
        .match_body(mockito::Matcher::UrlEncoded("Status".into(), "draft".into()))
        .with_status(200)
        .with_body(json!({"sid": "FW0123456789abcdef0123456789abcdef", "revision": 2, "status": "draft"}).to_string())
        .create_async()
        .await;
    let missing = server
        .mock("GET", "/v2/Flows/FWffffffffffffffffffffffffffffffff")
        .with_status(404)
        .with_body(r#"{"code":20404,"message":"not found","status":404}"#)
        .create_async()
        .await;
    let studio = http_studio(&server.url());

    let flow = studio.create_flow("reminder", "published", "{}", "v1").await.unwrap();
    assert_eq!(flow.revision, Some(1));
    let flow = studio.update_flow(&flow.sid, "draft", "{}", "v2").await.unwrap();
    assert_eq!(flow.revision, Some(2));
    let err = studio.fetch_flow("FWffffffffffffffffffffffffffffffff").await.unwrap_err();
    assert_eq!(err.class(), "not_found");
    create.assert_async().await;
    update.assert_async().await;
    missing.assert_async().await;
}

#[tokio::test]
async fn revisions_diff_test_users_and_pull_round_trip_through_the_simulator() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let app = TestApp::new();
    let url = sim.url();
    let env = studio_env(&url, ACCOUNT);
    std::fs::write(app.flows.join("reminder.json"), definition("one")).unwrap();
    assert_eq!(app.flowcast(&["flows", "deploy", "--message", "first"], &env).await.status.code(), Some(0));
    std::fs::write(app.flows.join("reminder.json"), definition("two")).unwrap();
    assert_eq!(app.flowcast(&["flows", "deploy", "--message", "second"], &env).await.status.code(), Some(0));

    let out = app.flowcast(&["flows", "revisions", "reminder"], &env).await;
    let text = stdout(&out);
    assert!(text.contains("2 revision(s)") && text.contains("second") && text.contains("first"), "{text}");

    let same = app.flowcast(&["flows", "diff", "reminder"], &env).await;
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    std::fs::write(app.flows.join("reminder.json"), definition("three")).unwrap();
    let differs = app.flowcast(&["flows", "diff", "reminder"], &env).await;
    assert_eq!(differs.status.code(), Some(1));
    assert!(
        stdout(&differs).contains("/states/1/properties/body: \"three\" (local) vs \"two\" (Studio)"),
        "{}",
        stdout(&differs)
    );

    let set = app.flowcast(&["flows", "test-users", "reminder", "+12015550100", "+12015550101"], &env).await;
    assert!(stdout(&set).contains("test users: +12015550100, +12015550101"), "{}", stdout(&set));
    let shown = app.flowcast(&["flows", "test-users", "reminder"], &env).await;
    assert!(stdout(&shown).contains("+12015550101"), "{}", stdout(&shown));

    // A Flow built in the Console is adopted by pull --all; existing files are
    // kept unless --force.
    let console = http_studio(&url)
        .create_flow("Delivery Notice (Console)", "published", &definition("console"), "")
        .await
        .unwrap();
    let out = app.flowcast(&["flows", "pull", "--all"], &env).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("reminder.json: exists; not overwritten"), "{text}");
    assert!(text.contains(&format!("delivery-notice-console.json: pulled {}", console.sid)), "{text}");
    let pulled: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.flows.join("delivery-notice-console.json")).unwrap())
            .unwrap();
    assert_eq!(pulled["states"][1]["properties"]["body"], "console");
    let out = app.flowcast(&["flows", "pull", "reminder", "--force"], &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(app.flowcast(&["flows", "diff", "reminder"], &env).await.status.code(), Some(0), "pulled = deployed");
    // A pulled definition deploys as unchanged.
    let out = app.flowcast(&["flows", "deploy", "delivery-notice-console"], &env).await;
    assert!(stdout(&out).contains("unchanged"), "{}", stdout(&out));
}

#[tokio::test]
async fn list_revisions_and_test_users_calls_and_their_error_classes() {
    let mut server = mockito::Server::new_async().await;
    let sid = "FW0123456789abcdef0123456789abcdef";
    let page2 = format!("{}/v2/Flows?PageSize=1000&Page=1&PageToken=PT1", server.url());
    let _list1 = server
        .mock("GET", "/v2/Flows")
        .match_query(mockito::Matcher::UrlEncoded("PageSize".into(), "1000".into()))
        .with_status(200)
        .with_body(json!({"flows": [{"sid": sid, "friendly_name": "a"}], "meta": {"next_page_url": page2}}).to_string())
        .expect(1)
        .create_async()
        .await;
    let _list2 = server
        .mock("GET", "/v2/Flows")
        .match_query(mockito::Matcher::UrlEncoded("PageToken".into(), "PT1".into()))
        .with_status(200)
        .with_body(json!({"flows": [{"sid": "FWffffffffffffffffffffffffffffffff", "friendly_name": "b"}], "meta": {"next_page_url": null}}).to_string())
        .create_async()
        .await;
    let _revisions = server
        .mock("GET", format!("/v2/Flows/{sid}/Revisions").as_str())
        .match_query(mockito::Matcher::Any)
        .with_status(200)
        .with_body(
            json!({"revisions": [{"revision": 2, "commit_message": "b"}, {"revision": 1, "commit_message": "a"}]})
                .to_string(),
        )
        .create_async()
        .await;
    let _latest = server
        .mock("GET", format!("/v2/Flows/{sid}/Revisions/LatestRevision").as_str())
        .with_status(200)
        .with_body(json!({"revision": 2, "definition": {"states": []}}).to_string())
        .create_async()
        .await;
    let set = server
        .mock("POST", format!("/v2/Flows/{sid}/TestUsers").as_str())
        .match_body("TestUsers=%2B12015550100&TestUsers=%2B12015550101")
        .with_status(200)
        .with_body(json!({"sid": sid, "test_users": ["+12015550100", "+12015550101"]}).to_string())
        .create_async()
        .await;
    let _unauthorised = server
        .mock("GET", "/v2/Flows/FW00000000000000000000000000000401/TestUsers")
        .with_status(401)
        .with_body(r#"{"code": 20003, "message": "Authenticate", "status": 401}"#)
        .create_async()
        .await;
    let _throttled = server
        .mock("GET", "/v2/Flows/FW00000000000000000000000000000429")
        .with_status(429)
        .with_header("Retry-After", "3")
        .with_body(r#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#)
        .create_async()
        .await;
    let studio = http_studio(&server.url());

    let flows = studio.list_flows().await.unwrap();
    assert_eq!(flows.iter().map(|f| f.friendly_name.clone().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
    let revisions = studio.flow_revisions(sid).await.unwrap();
    assert_eq!(revisions.iter().map(|r| r.revision.unwrap()).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(studio.flow_revision(sid, "LatestRevision").await.unwrap().revision, Some(2));
    let users = studio.set_test_users(sid, &["+12015550100".into(), "+12015550101".into()]).await.unwrap();
    assert_eq!(users.len(), 2);
    set.assert_async().await;
    let err = studio.test_users("FW00000000000000000000000000000401").await.unwrap_err();
    assert_eq!(err.class(), "unauthorised");
    let err = studio.fetch_flow("FW00000000000000000000000000000429").await.unwrap_err();
    assert!(
        matches!(err, flowcast::studio::StudioError::Throttled { retry_after: Some(d), .. } if d.as_secs() == 3),
        "{err:?}"
    );
}

#[tokio::test]
async fn flow_commands_retry_a_throttled_call() {
    let mut server = mockito::Server::new_async().await;
    let sid = "FW0123456789abcdef0123456789abcdef";
    let path = format!("/v2/Flows/{sid}/Revisions");
    let throttled = server
        .mock("GET", path.as_str())
        .match_query(mockito::Matcher::Any)
        .with_status(429)
        .with_header("Retry-After", "0")
        .with_body(r#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#)
        .expect(1)
        .create_async()
        .await;
    let ok = server
        .mock("GET", path.as_str())
        .match_query(mockito::Matcher::Any)
        .with_status(200)
        .with_body(json!({"revisions": [{"revision": 1, "commit_message": "only"}]}).to_string())
        .create_async()
        .await;
    let app = TestApp::new();
    std::fs::write(
        app.flows.join("flows.lock.toml"),
        format!("[{ACCOUNT}.reminder]\nsid = \"{sid}\"\nrevision = 1\nhash = \"x\"\n"),
    )
    .unwrap();
    let url = server.url();

    let out = app.flowcast(&["flows", "revisions", "reminder"], &studio_env(&url, ACCOUNT)).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("1 revision(s)"), "{}", stdout(&out));
    throttled.assert_async().await;
    ok.assert_async().await;
}

#[tokio::test]
async fn pull_force_keeps_the_placeholders_a_definition_was_deployed_with() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let app = TestApp::new();
    let url = sim.url();
    let env = studio_env(&url, ACCOUNT);
    std::fs::write(app.flows.join("reminder.json"), definition("Hello from ${CLINIC}")).unwrap();
    let vars = app.dir.path().join("clinic.env");
    std::fs::write(&vars, "CLINIC=Main St\n").unwrap();
    let deployed = app.flowcast(&["flows", "deploy", "--env-file", vars.to_str().unwrap()], &env).await;
    assert_eq!(deployed.status.code(), Some(0), "{}{}", stdout(&deployed), stderr(&deployed));

    let out = app.flowcast(&["flows", "pull", "reminder", "--force"], &env).await;

    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let pulled: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.flows.join("reminder.json")).unwrap()).unwrap();
    assert_eq!(pulled["states"][1]["properties"]["body"], "Hello from ${CLINIC}", "not the resolved value");
}

#[tokio::test]
async fn a_transition_to_a_widget_that_does_not_exist_is_refused() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let app = TestApp::new();
    let url = sim.url();
    let mut flow: serde_json::Value = serde_json::from_str(&definition("hi")).unwrap();
    flow["states"][1]["transitions"] = json!([{"event": "sent", "next": "nowhere"}]);
    std::fs::write(app.flows.join("reminder.json"), flow.to_string()).unwrap();

    let out = app.flowcast(&["flows", "validate"], &studio_env(&url, ACCOUNT)).await;

    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("goes to \"nowhere\", which is not a state"), "{text}");
    // Studio (here, the simulator) refuses it too, when asked directly.
    let refused = http_studio(&url).validate_flow("x", "published", &flow.to_string()).await.unwrap_err();
    assert!(refused.to_string().contains("Invalid Flow Definition"), "{refused}");
}
