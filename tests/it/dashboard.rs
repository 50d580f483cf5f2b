//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), against a running `serve` with a run in progress. It checks
//! that the numbers shown match the API, clicks pause, sees the run paused, and
//! saves a screenshot.
//!
//! Needs Debian's `chromium` and `chromium-driver` (installed by .ci/run). Where
//! they are missing the test says so and passes, unless
//! `FLOWCAST_REQUIRE_BROWSER` is set, as CI sets it.

use std::time::Duration;

use base64::Engine;
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, free_port};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A minimal WebDriver client over reqwest.
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Option<Browser> {
        let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(driver) = driver else {
            assert!(
                std::env::var_os("FLOWCAST_REQUIRE_BROWSER").is_none(),
                "chromedriver is required but not installed"
            );
            eprintln!("SKIPPED: no chromedriver (apt-get install chromium chromium-driver to run the browser test)");
            return None;
        };
        let port = free_port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.json::<Value>().await.map(|v| v["value"]["ready"] == true).unwrap_or(false)
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver never became ready");
        let profile = tempfile::tempdir().unwrap();
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("/usr/bin/chromium");
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-quic", "--no-first-run", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        Some(Browser { http, session: format!("{base}/session/{session}"), _driver: child, _profile: profile })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json::<Value>().await.unwrap()["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let found =
            self.call(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css }))).await;
        found[ELEMENT].as_str().map(str::to_string)
    }

    async fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        self.call(reqwest::Method::GET, &format!("/element/{element}/text"), None).await.as_str().map(str::to_string)
    }

    /// Waits until the element's text satisfies `want`; returns the last text.
    async fn wait_text(&self, css: &str, want: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..200 {
            if let Some(t) = self.text(css).await {
                if want(&t) {
                    return t;
                }
                last = t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let source = self.call(reqwest::Method::GET, "/source", None).await;
        panic!("{css}: text never matched; last {last:?}\npage:\n{}", source.as_str().unwrap_or_default());
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap()
    }
}

async fn api(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn the_dashboard_shows_the_apis_numbers_and_pauses_a_run() {
    let Some(browser) = Browser::start().await else { return };
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let numbers = phones(300);
    sim.start_foreign_execution(FLOW, &numbers[0]);
    let app = TestApp::new();
    app.write("appointments.csv", contacts_csv(&numbers));
    app.write(
        "reminders.toml",
        campaign_toml("appointments.csv", "schedule = \"0 9 * * Mon-Fri\"\ntimezone = \"Europe/Berlin\"\nrate = 5"),
    );
    app.write("drop.csv", contacts_csv(&numbers[..200]));
    app.write("delivery.toml", campaign_toml("drop.csv", "rate = 5"));
    app.write("broken.toml", "kind = \"survey\"\nflow = \"FW123\"\n");
    let served = Served::start(&app, &sim.url()).await;
    let run = format!("{}/api/runs/1", served.url);
    for _ in 0..100 {
        if api(&run).await["jobs"]["sent"].as_i64().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    browser.goto(&served.url).await;
    browser.wait_text("tr[data-run=\"1\"] .state", |t| t == "active").await;
    let campaigns = api(&format!("{}/api/campaigns", served.url)).await;
    let reminders =
        campaigns["campaigns"].as_array().unwrap().iter().find(|c| c["name"] == "reminders").unwrap().clone();
    let next = browser.wait_text("tr[data-campaign=\"reminders\"] .next .mono", |t| !t.is_empty()).await;
    assert_eq!(next, reminders["next_fire_utc"].as_str().unwrap());
    let total = browser.wait_text("tr[data-run=\"1\"] .total b", |t| !t.is_empty()).await;
    assert_eq!(total, api(&run).await["total"].to_string());

    browser.click("button[data-action=\"pause\"][data-run=\"1\"]").await;
    browser.wait_text("tr[data-run=\"1\"] .state", |t| t == "paused").await;
    assert_eq!(api(&run).await["state"], "paused");
    // Once requests in flight settle, the page shows the API's numbers.
    for _ in 0..100 {
        if api(&run).await["jobs"]["dispatching"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = api(&run).await;
    let sent = after["jobs"]["sent"].to_string();
    browser.wait_text("tr[data-run=\"1\"] .count-sent b", |t| t == sent).await;
    let pending = after["jobs"]["pending"].to_string();
    browser.wait_text("tr[data-run=\"1\"] .count-pending b", |t| t == pending).await;
    assert_eq!(browser.wait_text("tr[data-run=\"1\"] .count-skipped b", |t| !t.is_empty()).await, "1");
    browser.wait_text("#problems tbody tr td:nth-child(4)", |t| t.starts_with("conflict")).await;
    browser.wait_text("tr[data-campaign$=\"broken.toml\"] .pill", |t| t == "refused").await;

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    if let Some(path) = std::env::var_os("FLOWCAST_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    eprintln!("screenshot: {}", out.display());
    served.terminate().await;
}
