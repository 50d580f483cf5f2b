//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), against a running `serve`. With a run in progress it checks
//! that the numbers shown match the API, clicks pause, sees the run paused, and
//! saves a screenshot. With runs whose outcomes were read back it checks each
//! field's chart and Net Promoter Score against the API, opens a run's page and
//! pages through its jobs and their outcomes, and saves screenshots of both.
//!
//! Screenshots go to `target/tmp` (the run-control test's also to
//! `FLOWCAST_SCREENSHOT=path`); with `FLOWCAST_SCREENSHOT_DIR=docs` the outcomes
//! test also writes `dashboard.png` and `outcomes.png` there.
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
            // The console, to see whether the page's Content-Security-Policy
            // refused anything (a refused style or script fails silently).
            "goog:loggingPrefs": { "browser": "ALL" },
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
}

impl Drop for Browser {
    /// Ends the WebDriver session, so that chromedriver closes its browser:
    /// killing chromedriver alone (when its child is dropped) leaves chromium
    /// running with init as its parent, one more after every test. Plain
    /// blocking HTTP, as a drop cannot await; it also runs when a test panics.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some((host, path)) = self.session.strip_prefix("http://").and_then(|s| s.split_once('/')) else {
            return;
        };
        if let Ok(mut stream) = std::net::TcpStream::connect(host) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request =
                format!("DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_ok() {
                // chromedriver answers once the browser is closed.
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
    }
}

impl Browser {
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

    /// Runs `body` (a function body, e.g. `return document.title`) in the page
    /// and returns what it returns.
    async fn script(&self, body: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": body, "args": [] }))).await
    }

    /// Waits until `body` returns `true`.
    async fn wait_until(&self, body: &str) {
        for _ in 0..200 {
            if self.script(body).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let source = self.call(reqwest::Method::GET, "/source", None).await;
        panic!("never true: {body}\npage:\n{}", source.as_str().unwrap_or_default());
    }

    /// What the page wrote to the console about its Content-Security-Policy
    /// since the last call.
    async fn csp_violations(&self) -> Vec<String> {
        let log = self.call(reqwest::Method::POST, "/se/log", Some(json!({ "type": "browser" }))).await;
        let entries = log.as_array().unwrap_or_else(|| panic!("no console log: {log}"));
        entries
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| m.contains("Content Security Policy"))
            .map(str::to_string)
            .collect()
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({ "width": width, "height": height }))).await;
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

    // The run's own page controls it too, and follows it as it goes on.
    browser.goto(&format!("{}/#run=1", served.url)).await;
    browser.wait_text("#run-head .run-state", |t| t == "paused").await;
    browser.wait_until("return document.querySelectorAll('#jobs tbody tr[data-job]').length === 50;").await;
    let sent_rows = "return document.querySelectorAll('#jobs tbody .job-state.sent').length;";
    let sent_before = browser.script(sent_rows).await.as_u64().unwrap();
    browser.click("#run-head button[data-action=\"resume\"]").await;
    browser.wait_text("#run-head .run-state", |t| t == "active").await;
    assert_eq!(api(&run).await["state"], "active");
    browser
        .wait_until(&format!("return document.querySelectorAll('#jobs tbody .job-state.sent').length > {sent_before};"))
        .await;
    assert_eq!(browser.csp_violations().await, Vec::<String>::new());
    served.terminate().await;
}

/// Saves a screenshot as `target/tmp/{name}`, and as `{DIR}/{docs_name}` when
/// `FLOWCAST_SCREENSHOT_DIR=DIR` is set (e.g. `docs`, to refresh the pictures
/// the README shows).
fn keep_screenshot(png: &[u8], name: &str, docs_name: Option<&str>) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&out, png).unwrap();
    eprintln!("screenshot: {}", out.display());
    if let (Some(dir), Some(docs_name)) = (std::env::var_os("FLOWCAST_SCREENSHOT_DIR"), docs_name) {
        let kept = std::path::Path::new(&dir).join(docs_name);
        std::fs::write(&kept, png).unwrap();
        eprintln!("screenshot: {}", kept.display());
    }
}

/// The survey's contacts' (score, answer) cells: 26 promoters, 15 passives and
/// 14 detractors (NPS 100 × (26 − 14) / 55 ≈ +22), one reply that is no score
/// (and is markup, which the page must show as text), and four that never
/// answered. `answer` is the reply as written, so it has more distinct values
/// than fit in a chart.
fn survey_replies() -> Vec<(&'static str, &'static str)> {
    let groups: [(&str, &str, usize); 15] = [
        ("10", "10", 11),
        ("10", "10!", 3),
        ("9", "9", 11),
        ("9", "9 thanks", 1),
        ("8", "8", 9),
        ("7", "7", 6),
        ("6", "6", 4),
        ("5", "5", 3),
        ("4", "4", 2),
        ("3", "3", 2),
        ("2", "2", 1),
        ("1", "1", 1),
        ("0", "0", 1),
        ("<b>later</b>", "<b>later</b>", 1),
        ("", "", 4),
    ];
    let all: Vec<_> = groups.iter().flat_map(|&(score, answer, n)| std::iter::repeat_n((score, answer), n)).collect();
    // Mixed (37 and 60 share no factor), as replies come, rather than grouped.
    (0..all.len()).map(|i| all[i * 37 % all.len()]).collect()
}

/// A bar of a chart: its value (or kind, in brackets) and its count.
type Bar = (String, i64);

/// What a field's chart must show, from the API's summary: for `nps` every
/// score 0..10 (0 when nobody gave it); otherwise the 8 most common values; then
/// the rest as `(other)` (only when there is a rest), then `(no-answer)`. Pairs
/// of value (or bar kind, in brackets) and count.
fn expected_bars(kind: &str, summary: &Value) -> Vec<Bar> {
    let values = summary["values"].as_object().cloned().unwrap_or_default();
    let mut bars = Vec::new();
    let other: i64 = if kind == "nps" {
        for score in 0..=10 {
            bars.push((score.to_string(), values.get(&score.to_string()).and_then(Value::as_i64).unwrap_or(0)));
        }
        let is_score = |v: &str| v.parse::<i64>().is_ok_and(|s| (0..=10).contains(&s));
        values.iter().filter(|(v, _)| !is_score(v)).map(|(_, n)| n.as_i64().unwrap()).sum()
    } else {
        let mut ranked: Vec<Bar> = values.iter().map(|(v, n)| (v.clone(), n.as_i64().unwrap())).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest = ranked.iter().skip(8).map(|(_, n)| n).sum();
        bars.extend(ranked.into_iter().take(8));
        rest
    };
    if other > 0 {
        bars.push(("(other)".into(), other));
    }
    bars.push(("(no-answer)".into(), summary["no_answer"].as_i64().unwrap()));
    bars
}

/// The bars of one field's chart under `scope`, as the page shows them: each
/// bar's value (or kind, in brackets) and the count written on it, in page order.
async fn shown_bars(browser: &Browser, scope: &str, field: &str) -> Vec<Bar> {
    let script = format!(
        "return [...document.querySelectorAll('{scope} .field[data-field=\"{field}\"] .chart .item')]\
         .map((e) => [e.dataset.kind ? '(' + e.dataset.kind + ')' : e.dataset.value, e.querySelector('.n').firstChild.textContent.trim()]);"
    );
    let bars = browser.script(&script).await;
    bars.as_array()
        .unwrap_or_else(|| panic!("no bars: {bars}"))
        .iter()
        .map(|b| (b[0].as_str().unwrap().to_string(), b[1].as_str().unwrap().parse().unwrap()))
        .collect()
}

/// Checks a field's chart against the API: the same bars with the same counts.
/// Words come most common first; the order among equal counts is the page's
/// to choose.
async fn assert_chart(browser: &Browser, scope: &str, run: &Value, field: &str) {
    let kind = run["outcome_fields"].as_array().unwrap().iter().find(|f| f["name"] == field).unwrap()["type"].clone();
    let want = expected_bars(kind.as_str().unwrap(), &run["outcomes"][field]);
    let got = shown_bars(browser, scope, field).await;
    if kind == "nps" {
        assert_eq!(got, want, "{scope} {field}");
        return;
    }
    // Values first, then the bars in brackets (other, no answer).
    let split = |bars: &[Bar]| -> (Vec<Bar>, Vec<Bar>) { bars.iter().cloned().partition(|(v, _)| !v.starts_with('(')) };
    let ((mut got_values, got_rest), (mut want_values, want_rest)) = (split(&got), split(&want));
    assert!(got_values.windows(2).all(|w| w[0].1 >= w[1].1), "{scope} {field}: most common first: {got:?}");
    assert_eq!(got_rest, want_rest, "{scope} {field}: other and no answer");
    got_values.sort();
    want_values.sort();
    assert_eq!(got_values, want_values, "{scope} {field}");
}

/// The NPS as the page writes it: a whole number with its sign.
fn nps_text(nps: f64) -> String {
    let r = nps.round() as i64;
    if r > 0 { format!("+{r}") } else { r.to_string() }
}

/// Every job of a run, through the API's pages.
async fn api_jobs(base: &str, run: i64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = api(&format!("{base}/api/runs/{run}/jobs?after={after}&limit=7")).await;
        all.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => return all,
        }
    }
}

/// The jobs table on a run's page, one object per row.
async fn shown_jobs(browser: &Browser) -> Vec<Value> {
    let rows = browser
        .script(
            "return [...document.querySelectorAll('#jobs tbody tr[data-job]')].map((tr) => {\
               const text = (css) => { const c = tr.querySelector(css); return c ? c.textContent.trim() : null; };\
               const outcome = {};\
               for (const td of tr.querySelectorAll('td.outcome')) {\
                 const v = td.querySelector('.v');\
                 outcome[td.dataset.field] = { text: v.textContent, elements: v.children.length,\
                   note: td.querySelector('.note') ? td.querySelector('.note').title : null };\
               }\
               return { id: Number(tr.dataset.job), phone: text('.phone'), state: text('.job-state'),\
                        reason: text('.reason'), status: text('.status'), ended_in: text('.ended-in'), outcome };\
             });",
        )
        .await;
    rows.as_array().unwrap_or_else(|| panic!("no rows: {rows}")).clone()
}

/// Checks each row of the jobs table against the API's job: phone, state,
/// reason, status and every outcome field, written as text (never as markup).
fn assert_jobs(shown: &[Value], jobs: &[Value], fields: &[&str]) {
    assert_eq!(shown.len(), jobs.len(), "one row per job");
    for (row, job) in shown.iter().zip(jobs) {
        assert_eq!(row["id"], job["id"], "in id order");
        assert_eq!(row["phone"], job["phone"], "{row}");
        assert_eq!(row["state"], job["state"], "{row}");
        let reason = job["reason"].as_str().unwrap_or("");
        assert!(row["reason"].as_str().unwrap().starts_with(reason), "{row} {job}");
        let status = job["status"].as_str().or(job["outcome_state"].as_str()).unwrap_or("");
        assert_eq!(row["status"], status, "{row} {job}");
        assert_eq!(row["ended_in"], job["ended_in"].as_str().unwrap_or(""), "{row} {job}");
        for field in fields {
            let want = match &job["outcome"][field] {
                Value::Null => "—".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let cell = &row["outcome"][field];
            assert_eq!(cell["text"], want, "{field} of {job}");
            assert_eq!(cell["elements"], 0, "{field} of {job} is text, not markup");
            match job["outcome_notes"][field].as_str() {
                Some(note) => assert_eq!(cell["note"], note, "{job}"),
                None => assert!(cell["note"].is_null(), "{row}"),
            }
        }
    }
}

/// Whether the page is no wider than the window (tables may scroll inside
/// their own box, the page itself must not).
const FITS: &str = "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;";

#[tokio::test]
async fn the_dashboard_charts_each_runs_outcomes_and_a_runs_page_pages_through_its_jobs() {
    let Some(browser) = Browser::start().await else { return };
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let numbers = phones(82);
    let (patients, customers) = numbers.split_at(22);
    // Without [parameters] every CSV column is passed to the Flow, a blank one
    // too, and the simulator keeps the Parameters as the Execution's
    // `flow.data`: so the outcome fields read back exactly what the CSV says,
    // and a blank cell is a contact who never answered.
    let decisions = ["confirm", "reschedule", "confirm", "unclear", "confirm", "", "confirm", "reschedule"];
    let mut csv = String::from("phone,first_name,decision\n");
    for (i, p) in patients.iter().enumerate() {
        csv.push_str(&format!("{p},Name{i},{}\n", decisions[i % decisions.len()]));
    }
    app.write("appointments.csv", csv);
    app.write(
        "reminders.toml",
        format!(
            "kind = \"reminder\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"appointments.csv\"\n\
             schedule = \"0 9 * * Mon-Fri\"\ntimezone = \"America/New_York\"\n\
             [outcomes]\ndecision = \"flow.data.decision\"\n"
        ),
    );
    let mut csv = String::from("phone,name,score,answer\n");
    for (p, (score, answer)) in customers.iter().zip(survey_replies()) {
        csv.push_str(&format!("{p},Customer,{score},{answer}\n"));
    }
    app.write("survey.csv", csv);
    app.write(
        "survey.toml",
        format!(
            "kind = \"survey\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"survey.csv\"\n\
             schedule = \"0 0 10 * * Mon-Fri\"\ntimezone = \"Europe/Berlin\"\n\
             [outcomes]\nscore = {{ path = \"flow.data.score\", type = \"nps\" }}\nanswer = \"flow.data.answer\"\n"
        ),
    );
    // One patient is already in a conversation: skipped, a problem to show.
    sim.start_foreign_execution(FLOW, &patients[0]);
    let url = sim.url();
    let env = [
        ("FLOWCAST_STUDIO_URL", url.as_str()),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("FLOWCAST_RATE", "500"),
        ("FLOWCAST_OUTCOME_AFTER", "1h"),
    ];
    for campaign in ["reminders", "survey"] {
        let out = app.flowcast(&["run", campaign], &env).await;
        assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    }
    for e in sim.executions() {
        sim.finish_execution(&e.sid);
    }
    let collected = app.flowcast(&["collect"], &env).await;
    assert!(stdout(&collected).contains("81 outcome(s) read back, 0 still open"), "{}", stdout(&collected));
    app.write("broken.toml", "kind = \"survey\"\nflow = \"FW123\"\n");
    let served = Served::start(&app, &url).await;
    let base = served.url.clone();
    let survey = api(&format!("{base}/api/runs/2")).await;
    let nps = survey["outcomes"]["score"]["nps"].as_f64().unwrap_or_else(|| panic!("{survey}"));
    assert!((nps - 1200.0 / 55.0).abs() < 1e-9, "the scene is as meant: {survey}");
    let reminders = api(&format!("{base}/api/runs/1")).await;

    // The overview: a compact chart per field under each run.
    browser.goto(&base).await;
    let shown = browser
        .wait_text("tr[data-outcomes-of=\"2\"] .field[data-field=\"score\"] .nps-score", |t| !t.is_empty())
        .await;
    assert_eq!(shown, nps_text(nps));
    assert_eq!(shown, "+22");
    let overview = "tr[data-outcomes-of=\"2\"]";
    assert_chart(&browser, overview, &survey, "score").await;
    assert_chart(&browser, overview, &survey, "answer").await;
    assert_chart(&browser, "tr[data-outcomes-of=\"1\"]", &reminders, "decision").await;
    let mean = browser.text("tr[data-outcomes-of=\"2\"] .field[data-field=\"score\"] .mean b").await.unwrap();
    assert_eq!(
        mean.parse::<f64>().unwrap(),
        (survey["outcomes"]["score"]["mean"].as_f64().unwrap() * 100.0).round() / 100.0
    );
    let promoters = browser.text("tr[data-outcomes-of=\"2\"] .promoters b").await.unwrap();
    assert_eq!(promoters, "26");
    browser.wait_text("#problems tbody tr td:nth-child(4)", |t| t.starts_with("conflict")).await;
    browser.wait_text("tr[data-campaign$=\"broken.toml\"] .pill", |t| t == "refused").await;
    // serve works out the next fire times once it is up; the page shows them.
    for name in ["reminders", "survey"] {
        let next = browser.wait_text(&format!("tr[data-campaign=\"{name}\"] .next .mono"), |t| !t.is_empty()).await;
        let campaigns = api(&format!("{base}/api/campaigns")).await;
        let campaign = campaigns["campaigns"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        assert_eq!(next, campaign["next_fire_utc"].as_str().unwrap_or_else(|| panic!("{campaign}")));
    }
    browser.wait_until(FITS).await;
    let height = browser.script("return document.documentElement.scrollHeight;").await.as_u64().unwrap();
    // Tall enough for the whole page (the window's own frame takes some).
    browser.resize(1280, (height as u32 + 200).clamp(1000, 2400)).await;
    keep_screenshot(&browser.screenshot().await, "dashboard-outcomes.png", Some("dashboard.png"));
    browser.resize(1280, 1000).await;

    // A click on a run opens its page: the charts in full and its jobs, a page
    // at a time.
    browser.click("a.open-run[href=\"#run=2\"]").await;
    browser.wait_text("#run-head h2", |t| t.starts_with("Run #2")).await;
    assert_eq!(browser.script("return location.hash;").await, "#run=2");
    let shown = browser.wait_text("#run-outcomes .field[data-field=\"score\"] .nps-score", |t| !t.is_empty()).await;
    assert_eq!(shown, nps_text(nps));
    assert_chart(&browser, "#run-outcomes", &survey, "score").await;
    assert_chart(&browser, "#run-outcomes", &survey, "answer").await;
    browser.wait_until("return document.querySelectorAll('#jobs tbody tr[data-job]').length === 50;").await;
    let jobs = api_jobs(&base, 2).await;
    assert_eq!(jobs.len(), 60);
    assert_jobs(&shown_jobs(&browser).await, &jobs[..50], &["score", "answer"]);
    browser.resize(1280, 1400).await;
    keep_screenshot(&browser.screenshot().await, "outcomes.png", Some("outcomes.png"));
    browser.resize(1280, 1000).await;
    browser.wait_until("return !document.getElementById('more').hidden;").await;
    browser.click("#more").await;
    browser.wait_until("return document.querySelectorAll('#jobs tbody tr[data-job]').length === 60;").await;
    assert_jobs(&shown_jobs(&browser).await, &jobs, &["score", "answer"]);
    browser.wait_until("return document.getElementById('more').hidden;").await;
    let later = jobs.iter().find(|j| j["outcome"]["score"] == "<b>later</b>").expect("the reply that is no score");
    assert!(later["outcome_notes"]["score"].as_str().unwrap().contains("0 to 10"), "{later}");
    // A refresh (every two seconds) keeps what "more" loaded.
    let stamp = browser.text("#updated").await.unwrap();
    browser.wait_text("#updated", |t| t != stamp).await;
    assert_eq!(shown_jobs(&browser).await.len(), 60);

    // A run's page can be linked to.
    browser.goto(&format!("{base}/#run=1")).await;
    browser.wait_text("#run-head h2", |t| t.starts_with("Run #1")).await;
    browser.wait_until("return document.querySelectorAll('#jobs tbody tr[data-job]').length === 22;").await;
    assert_jobs(&shown_jobs(&browser).await, &api_jobs(&base, 1).await, &["decision"]);
    assert_chart(&browser, "#run-outcomes", &reminders, "decision").await;
    assert!(browser.wait_text("#jobs tbody tr[data-job] .reason", |t| !t.is_empty()).await.starts_with("conflict"));
    // Only the jobs in one state, and all of them again.
    browser.click("#job-state option[value=\"skipped\"]").await;
    browser.wait_until("return document.querySelectorAll('#jobs tbody tr[data-job]').length === 1;").await;
    assert_eq!(browser.text("#jobs tbody tr[data-job] .job-state").await.unwrap(), "skipped");
    browser.click("#job-state option[value=\"\"]").await;
    browser.wait_until("return document.querySelectorAll('#jobs tbody tr[data-job]').length === 22;").await;

    browser.goto(&format!("{base}/#run=99")).await;
    browser.wait_text("#run-head .err", |t| t == "Run #99 not found.").await;

    // On a phone the page is no wider than the screen.
    browser.resize(390, 844).await;
    browser.wait_until(FITS).await;
    browser.goto(&format!("{base}/#run=2")).await;
    browser.wait_text("#run-outcomes .field[data-field=\"score\"] .nps-score", |t| !t.is_empty()).await;
    browser.wait_until(FITS).await;
    browser.script("document.querySelector('#run-outcomes .field[data-field=\"score\"]').scrollIntoView();").await;
    keep_screenshot(&browser.screenshot().await, "outcomes-phone.png", None);
    browser.click("#run-head a.back").await;
    browser.wait_text("tr[data-run=\"2\"] .state", |t| !t.is_empty()).await;
    browser.wait_until(FITS).await;
    browser.script("document.querySelector('tr[data-run=\"2\"]').scrollIntoView();").await;
    keep_screenshot(&browser.screenshot().await, "dashboard-phone.png", None);
    assert_eq!(browser.csp_violations().await, Vec::<String>::new());
    served.terminate().await;
}

#[tokio::test]
async fn the_dashboard_shows_events_waiting_and_given_up() {
    let Some(browser) = Browser::start().await else { return };
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(2)));
    // Nothing listens on port 9 of loopback: the event waits for its retries.
    app.write(
        "c.toml",
        campaign_toml("c.csv", "notify = { url = \"http://127.0.0.1:9/hooks\", events = [\"run.finished\"] }"),
    );
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_NOTIFY_SECRET", "s")]).await;

    browser.goto(&served.url).await;
    let summary = browser.wait_text("#events-summary", |t| t.contains("1 waiting")).await;
    assert_eq!(summary, "0 delivered, 1 waiting, 0 given up");
    let outbox = api(&format!("{}/api/outbox", served.url)).await;
    assert_eq!(outbox["counts"]["pending"], 1, "{outbox}");
    browser.wait_text("#given-up tbody tr td", |t| t == "None given up.").await;
    assert!(browser.csp_violations().await.is_empty());
}
