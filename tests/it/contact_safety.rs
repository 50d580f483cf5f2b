//! The randomized acceptance test of contact safety (issue 13): four campaigns
//! dispatched by `flowcast serve` at once under a daily cap of 1, while
//! suppressions arrive before and during dispatch (command line, API, Twilio's
//! opt-out webhook) and a deduping campaign's CSV is dropped a second time.
//! Whatever the seed, no suppressed number gets an Execution whose create went
//! out after its suppression was recorded, nobody is contacted over the cap, no
//! dedupe key is sent twice, and every job in every report is sent or says why
//! not. The seed is printed; `FLOWCAST_TEST_SEED` replays one.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowcast::service::webhook::{form_signing_string, sign};
use flowcast::studio::simulator::{SimConfig, SimExecution, Simulator};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, eventually};

const PUBLIC: &str = "https://flowcast.example.com";
const HOUR_MS: i64 = 3_600_000;

/// One campaign of the scenario and the rows of its CSV.
struct Plan {
    name: &'static str,
    kind: &'static str,
    exempt: bool,
    dedupe: bool,
    rate: u32,
    /// (phone, order id) in file order; phones are distinct within a file.
    rows: Vec<(String, String)>,
}

impl Plan {
    fn toml(&self) -> String {
        let mut extra = String::new();
        if self.exempt {
            extra.push_str("contact_limits = \"exempt\"\n");
        }
        if self.dedupe {
            extra.push_str("dedupe = { key = \"{{order_id}}\", within = \"30d\" }\n");
        }
        format!(
            "kind = \"{}\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"{}.csv\"\nrate = {}\n{extra}\n\
             [parameters]\norder = \"{{{{order_id}}}}\"\n",
            self.kind, self.name, self.rate
        )
    }

    /// Whether a suppression in `scope` keeps this campaign from a contact
    /// (every campaign here reaches people by SMS, the default channel).
    fn covered_by(&self, scope: &str) -> bool {
        scope == "all" || scope == "sms" || scope == self.kind || scope == self.name
    }
}

fn orders_csv(rows: &[(String, String)]) -> String {
    let mut csv = String::from("phone,order_id\n");
    for (phone, order) in rows {
        csv.push_str(&format!("{phone},{order}\n"));
    }
    csv
}

/// Replaces a file in one step, as a careful user (or `mv`) drops it: serve
/// never reads it half-written.
fn drop_file(app: &TestApp, name: &str, text: &str) {
    let staged = app.dir.path().join(format!("{name}.staged"));
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, app.campaigns.join(name)).unwrap();
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The keyword of a job's reason: the text before `": "`.
fn keyword(reason: &str) -> &str {
    reason.split(':').next().unwrap_or_default()
}

/// The `flowcast` key an Execution's Parameters carry: (campaign, run, job).
fn flowcast_key(e: &SimExecution) -> (String, i64, i64) {
    let key = &e.parameters["flowcast"];
    (
        key["campaign"].as_str().expect("an Execution flowcast made names its campaign").to_string(),
        key["run"].as_i64().expect("and its run"),
        key["job"].as_i64().expect("and its job"),
    )
}

/// A suppression the test made, and when its request was answered (after
/// the entry was committed to the ledger), on this machine's clock.
struct Suppressed {
    phone: String,
    scope: String,
    acked_at: i64,
}

struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        self.client.get(format!("{}{path}", self.url)).send().await.unwrap().json().await.unwrap()
    }

    async fn suppress(&self, phone: &str, scope: &str) -> Suppressed {
        let answer = self
            .client
            .post(format!("{}/api/suppressions", self.url))
            .json(&json!({ "phone": phone, "scope": scope, "reason": "asked over the API" }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201, "{phone} newly suppressed in scope {scope}");
        Suppressed { phone: phone.to_string(), scope: scope.to_string(), acked_at: now_ms() }
    }

    /// Twilio's signed inbound-message webhook with `OptOutType=STOP`.
    async fn opt_out(&self, phone: &str, n: usize) -> Suppressed {
        let fields: Vec<(String, String)> = [
            ("From", phone.to_string()),
            ("To", "+15017122661".to_string()),
            ("Body", "STOP".to_string()),
            ("OptOutType", "STOP".to_string()),
            ("MessageSid", format!("SM{n:032}")),
            ("NumMedia", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let signature = sign(TOKEN, &form_signing_string(&format!("{PUBLIC}/webhooks/messaging"), &fields));
        let answer = self
            .client
            .post(format!("{}/webhooks/messaging", self.url))
            .header("x-twilio-signature", signature)
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "the signed opt-out is accepted");
        Suppressed { phone: phone.to_string(), scope: "all".to_string(), acked_at: now_ms() }
    }

    /// The runs serve has started, oldest first.
    async fn runs(&self) -> Vec<Value> {
        let mut runs = self.get("/api/runs").await["runs"].as_array().unwrap().clone();
        runs.sort_by_key(|r| r["id"].as_i64());
        runs
    }

    /// Every run has `expected` runs and each is finished, or has nothing in
    /// flight and only jobs the cap moved to tomorrow left pending.
    async fn settled(&self, expected: usize) -> bool {
        let runs = self.runs().await;
        if runs.len() < expected {
            return false;
        }
        let tomorrowish = now_ms() + 12 * HOUR_MS;
        for run in runs {
            match run["state"].as_str() {
                Some("finished") => continue,
                Some("active") => {}
                _ => return false,
            }
            if run["jobs"]["dispatching"].as_i64().unwrap_or(0) > 0 {
                return false;
            }
            if run["jobs"]["pending"].as_i64().unwrap_or(0) > 0 {
                let pending = self.get(&format!("/api/runs/{}/jobs?state=pending&limit=1000", run["id"])).await;
                for job in pending["jobs"].as_array().unwrap() {
                    let due: DateTime<Utc> = job["due_at"].as_str().unwrap().parse().unwrap();
                    if due.timestamp_millis() < tomorrowish {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// A job as the ledger holds it, for what reports do not show: when its last
/// attempt was claimed and when it was imported.
struct LedgerJob {
    attempt_started_at: Option<i64>,
    created_at: i64,
}

/// What the test reads straight from the SQLite file once serve has stopped:
/// neither the report nor the API shows when an attempt was claimed, nor a
/// suppression's time to the millisecond (they print whole seconds).
struct Ledger {
    jobs: HashMap<i64, LedgerJob>,
    /// Each entry's `created_at`, by (phone, scope).
    suppressions: HashMap<(String, String), i64>,
    /// The jobs whose create the audit records as answered with each
    /// Execution SID.
    creates: HashMap<String, Vec<i64>>,
}

fn ledger(app: &TestApp) -> Ledger {
    let int = |v: &serde_json::Value| v.as_i64();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let jobs = ledger_rows(app, "SELECT id, attempt_started_at, created_at FROM jobs")
        .iter()
        .map(|r| (int(&r[0]).unwrap(), LedgerJob { attempt_started_at: int(&r[1]), created_at: int(&r[2]).unwrap() }))
        .collect();
    let suppressions = ledger_rows(app, "SELECT phone, scope, created_at FROM suppressions")
        .iter()
        .map(|r| ((text(&r[0]), text(&r[1])), int(&r[2]).unwrap()))
        .collect();
    let mut creates: HashMap<String, Vec<i64>> = HashMap::new();
    for r in ledger_rows(
        app,
        "SELECT execution_sid, job_id FROM studio_call_trail WHERE operation = 'create' AND outcome = 'ok'",
    ) {
        creates.entry(text(&r[0])).or_default().push(int(&r[1]).unwrap());
    }
    Ledger { jobs, suppressions, creates }
}

/// Every job of `phone` across runs, for a failure's message.
fn history(app: &TestApp, phone: &str) -> String {
    // A test's own phone numbers: digits and `+` only, safe to write inline.
    assert!(phone.chars().all(|c| c == '+' || c.is_ascii_digit()));
    let rows = ledger_rows(
        app,
        &format!(
            "SELECT r.campaign, j.run_id, j.id, j.state, j.reason, j.attempt_started_at, j.sent_at, j.due_at, j.updated_at \
             FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.phone = '{phone}' ORDER BY j.id"
        ),
    );
    rows.iter()
        .map(|r| {
            format!(
                "{} run {} job {}: {} {} claimed {} sent {} due {} updated {}",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn suppressions_caps_and_dedupe_hold_across_overlapping_runs_whatever_arrives_when() {
    let seed = seed("contact_safety");
    let mut rng = StdRng::seed_from_u64(seed);
    // Executions that end at once, or that are still active when the next
    // campaign reaches the same contact (a 409: skipped, reason `conflict`).
    let lifetime = if rng.random_bool(0.5) { Duration::ZERO } else { Duration::from_millis(300) };
    let sim = Simulator::start(SimConfig { lifetime: Some(lifetime), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();

    // The pool, and the phones given a part to play so that every seed meets
    // each case at least once.
    let mut pool = phones(rng.random_range(60..=120));
    pool.shuffle(&mut rng);
    let [pre_all, pre_kind, pre_name, capped, mid_all, mid_kind, mid_name, mid_stop, private_a, private_b, moved] =
        std::array::from_fn(|i| pool[i].clone());
    let others: Vec<String> = pool[11..].to_vec();
    let mids = [mid_all.clone(), mid_kind.clone(), mid_name.clone(), mid_stop.clone()];

    let mut order_ids = 0..;
    let mut order = || format!("O{}", order_ids.next().unwrap());
    let mut rows_of =
        |phones: Vec<String>| -> Vec<(String, String)> { phones.into_iter().map(|p| (p, order())).collect() };

    // The slow campaign: the phones suppressed mid-run come last, seconds after
    // its first Execution, so they are still pending when their suppression
    // arrives.
    let mut reminders: Vec<String> = vec![pre_all.clone(), pre_kind.clone(), capped.clone()];
    reminders.extend(others.iter().filter(|_| rng.random_bool(0.6)).cloned());
    for p in &others {
        if reminders.len() >= 30 {
            break;
        }
        if !reminders.contains(p) {
            reminders.push(p.clone());
        }
    }
    reminders.shuffle(&mut rng);
    let mut last = mids.to_vec();
    last.shuffle(&mut rng);
    reminders.extend(last);

    let mut survey: Vec<String> = vec![pre_all.clone(), pre_kind.clone(), pre_name.clone(), capped.clone()];
    survey.extend(others.iter().filter(|_| rng.random_bool(0.5)).cloned());
    survey.shuffle(&mut rng);
    let mut notices: Vec<String> = vec![pre_all.clone(), pre_name.clone()];
    notices.extend(others.iter().filter(|_| rng.random_bool(0.5)).cloned());
    notices.shuffle(&mut rng);
    let mut deliveries: Vec<String> = vec![pre_all.clone(), private_a.clone(), private_b.clone()];
    deliveries.extend(others.iter().filter(|_| rng.random_bool(0.5)).cloned());
    deliveries.shuffle(&mut rng);

    let reminders = rows_of(reminders);
    let survey = rows_of(survey);
    let notices = rows_of(notices);
    let mut first_drop = rows_of(deliveries);
    // Some orders come twice under different phones (a parcel for two people):
    // the key alone decides, so only one of them is sent.
    let repeats = (first_drop.len() / 10).max(1);
    for _ in 0..repeats {
        let from = rng.random_range(0..first_drop.len() - 1);
        let to = rng.random_range(from + 1..first_drop.len());
        if ![&private_a, &private_b].contains(&&first_drop[from].0)
            && ![&private_a, &private_b].contains(&&first_drop[to].0)
        {
            first_drop[to].1 = first_drop[from].1.clone();
        }
    }
    // The second drop is cumulative: the same rows, then new orders for people
    // not in the first, and an old order under a phone new to the file.
    let mut second_drop = first_drop.clone();
    let in_first: HashSet<&String> = first_drop.iter().map(|(p, _)| p).collect();
    let newcomers: Vec<String> =
        others.iter().filter(|p| !in_first.contains(p)).filter(|_| rng.random_bool(0.5)).cloned().collect();
    second_drop.extend(rows_of(newcomers));
    let old = first_drop[rng.random_range(0..first_drop.len())].1.clone();
    second_drop.push((moved.clone(), old));

    let plans = [
        Plan {
            name: "reminders",
            kind: "reminder",
            exempt: false,
            dedupe: false,
            rate: rng.random_range(8..=12),
            rows: reminders,
        },
        Plan {
            name: "survey",
            kind: "survey",
            exempt: false,
            dedupe: false,
            rate: rng.random_range(20..=40),
            rows: survey,
        },
        Plan {
            name: "notices",
            kind: "delivery-notice",
            exempt: true,
            dedupe: false,
            rate: rng.random_range(20..=40),
            rows: notices,
        },
        Plan {
            name: "deliveries",
            kind: "delivery-notice",
            exempt: rng.random_bool(0.5),
            dedupe: true,
            rate: rng.random_range(20..=40),
            rows: first_drop,
        },
    ];
    let plan = |name: &str| plans.iter().find(|p| p.name == name).unwrap();
    eprintln!(
        "contact_safety: {} phones, lifetime {lifetime:?}, rates {:?}, deliveries exempt: {}",
        pool.len(),
        plans.iter().map(|p| (p.name, p.rate, p.rows.len())).collect::<Vec<_>>(),
        plan("deliveries").exempt
    );

    // Before dispatch: from the command line before serve starts, and over the
    // API before any campaign file appears.
    let mut suppressed: Vec<Suppressed> = Vec::new();
    for (phone, scope) in [(&pre_all, "all"), (&pre_kind, "survey")] {
        let out = app.flowcast(&["suppress", "add", phone, "--scope", scope, "--reason", "asked by letter"], &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
        suppressed.push(Suppressed { phone: phone.clone(), scope: scope.to_string(), acked_at: now_ms() });
    }
    let served = Served::start_with(
        &app,
        &sim.url(),
        &[("FLOWCAST_PUBLIC_URL", PUBLIC), ("FLOWCAST_MAX_PER_DAY", "1"), ("FLOWCAST_RATE", "50")],
    )
    .await;
    let api = Api { client: reqwest::Client::new(), url: served.url.clone() };
    suppressed.push(api.suppress(&pre_name, "notices").await);

    // Every campaign appears at once: CSVs first, so each file is whole when
    // serve reads it.
    for p in &plans {
        drop_file(&app, &format!("{}.csv", p.name), &orders_csv(&p.rows));
    }
    for p in &plans {
        drop_file(&app, &format!("{}.toml", p.name), &p.toml());
    }

    // During dispatch, as soon as the slow campaign has sent something: the
    // phones at the end of its file, in each scope, and one opt-out by text.
    let sent_by = |campaign: &str| sim.executions().iter().filter(|e| flowcast_key(e).0 == campaign).count();
    assert!(
        eventually(Duration::from_secs(20), async || sent_by("reminders") > 0).await,
        "the reminders start: {}",
        served.log()
    );
    suppressed.push(api.suppress(&mid_all, "all").await);
    suppressed.push(api.suppress(&mid_kind, "reminder").await);
    suppressed.push(api.suppress(&mid_name, "reminders").await);
    suppressed.push(api.opt_out(&mid_stop, 1).await);

    // More of both at random moments (after the k-th Execution), and the
    // deduping campaign's file dropped again among them.
    let scopes = ["all", "sms", "reminder", "survey", "delivery-notice", "reminders", "notices", "deliveries"];
    let mut extra: Vec<String> = others.clone();
    extra.shuffle(&mut rng);
    extra.truncate(rng.random_range(2..=5));
    let mut moments: Vec<(usize, Option<String>)> =
        extra.into_iter().map(|p| (rng.random_range(1..=30), Some(p))).collect();
    moments.push((rng.random_range(1..=30), None));
    moments.sort_by_key(|(k, _)| *k);
    let mut opt_outs = 1;
    for (k, phone) in moments {
        eventually(Duration::from_secs(10), async || sim.executions().len() >= k).await;
        match phone {
            Some(phone) if rng.random_bool(0.3) => {
                opt_outs += 1;
                suppressed.push(api.opt_out(&phone, opt_outs).await);
            }
            Some(phone) => suppressed.push(api.suppress(&phone, scopes[rng.random_range(0..scopes.len())]).await),
            None => {
                // Once the first drop is imported: serve starts a new run for
                // the new content, which overlaps the first if that is still going.
                let imported = eventually(Duration::from_secs(20), async || {
                    api.runs().await.iter().any(|r| r["campaign"] == "deliveries" && r["state"] != "expanding")
                })
                .await;
                assert!(imported, "{}", served.log());
                drop_file(&app, "deliveries.csv", &orders_csv(&second_drop));
            }
        }
    }

    let settled = eventually(Duration::from_secs(60), async || api.settled(plans.len() + 1).await).await;
    let runs = api.runs().await;
    assert!(settled, "every run finishes or waits for tomorrow: {runs:#?}\n{}", served.log());
    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0), "{log}");

    let executions = sim.executions();
    let Ledger { jobs, suppressions: entries, creates } = ledger(&app);
    let campaign_of: HashMap<i64, &Plan> =
        runs.iter().map(|r| (r["id"].as_i64().unwrap(), plan(r["campaign"].as_str().unwrap()))).collect();
    let delivery_runs: Vec<i64> =
        runs.iter().filter(|r| r["campaign"] == "deliveries").map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(runs.len(), plans.len() + 1, "one run per campaign, and a second for the new content: {runs:#?}");
    assert_eq!(delivery_runs.len(), 2, "{runs:#?}");

    // The list holds exactly what was added, each entry once.
    let listed = app.flowcast(&["suppress", "list", "--json"], &[]).await;
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed = listed["suppressions"].as_array().unwrap();
    assert_eq!(listed.len(), suppressed.len(), "{listed:#?}");
    assert_eq!(entries.len(), suppressed.len());
    for s in &suppressed {
        let created_at = entries[&(s.phone.clone(), s.scope.clone())];
        assert!(created_at <= s.acked_at, "an entry is recorded before it is acknowledged");
    }

    // 1. No Execution whose create went out after a suppression covering it was
    // recorded. The ledger commits `attempt_started_at` when it claims a job,
    // before the last check and the create; the audit's `studio_calls.at` is
    // taken when Studio's answer comes back, and the simulator's
    // `date_created` when the request arrives — both after the check, so a
    // create that passed its check a moment before the suppression committed
    // would look like a violation there. The entry is committed before its
    // request is answered: a claim after that answer must have seen it.
    for e in &executions {
        let (campaign, _, job) = flowcast_key(e);
        let claimed = jobs[&job].attempt_started_at.expect("a sent job was claimed");
        for s in suppressed.iter().filter(|s| s.phone == e.to && plan(&campaign).covered_by(&s.scope)) {
            assert!(
                claimed <= s.acked_at,
                "{} got Execution {} from {campaign} (job {job}, claimed at {claimed}) after its suppression in scope {} was recorded (by {})",
                e.to,
                e.sid,
                s.scope,
                s.acked_at
            );
        }
    }

    // 2. Across the campaigns that count, at most one Execution per phone (all
    // of this test's Executions fall within a few minutes, so in one day).
    let mut counted: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &executions {
        let (campaign, _, _) = flowcast_key(e);
        if !plan(&campaign).exempt {
            counted.entry(e.to.as_str()).or_default().push(&e.sid);
        }
    }
    let over: Vec<_> = counted.iter().filter(|(_, sids)| sids.len() > 1).collect();
    assert!(over.is_empty(), "contacts over the cap of 1 a day: {over:?}");

    // 3. Each order at most once from the deduping campaign, across both runs.
    let mut by_order: HashMap<&str, usize> = HashMap::new();
    for e in executions.iter().filter(|e| flowcast_key(e).0 == "deliveries") {
        *by_order.entry(e.parameters["order"].as_str().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = by_order.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "orders sent twice: {twice:?}");

    // Each Execution is the one create the audit records for its job.
    let by_sid: HashMap<&str, &SimExecution> = executions.iter().map(|e| (e.sid.as_str(), e)).collect();
    assert_eq!(by_sid.len(), executions.len());
    for e in &executions {
        assert_eq!(creates.get(&e.sid), Some(&vec![flowcast_key(e).2]), "the audit records {}'s create", e.sid);
    }

    // 4. Every contact of every file is in its run's report, sent or with the
    // reason it was not; what the cap holds back waits for tomorrow.
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut sent_jobs = 0;
    for (&run, p) in &campaign_of {
        let rows = if p.dedupe && run == delivery_runs[1] { &second_drop } else { &p.rows };
        let order_of: HashMap<&str, &str> = rows.iter().map(|(p, o)| (p.as_str(), o.as_str())).collect();
        let out = app.flowcast(&["report", &run.to_string(), "--format", "json"], &[]).await;
        let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut reported: Vec<&str> = report.iter().map(|r| r["phone"].as_str().unwrap()).collect();
        reported.sort();
        let mut expected: Vec<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();
        expected.sort();
        assert_eq!(reported, expected, "run {run} of {} reports every row of its file, once", p.name);
        for r in &report {
            let phone = r["phone"].as_str().unwrap();
            let id = r["job"].as_i64().expect("a job, not a refused row");
            let reason = r["reason"].as_str().unwrap_or_default();
            let covering = |s: &&Suppressed| s.phone == phone && p.covered_by(&s.scope);
            match r["state"].as_str().unwrap() {
                "sent" => {
                    sent_jobs += 1;
                    let sid = r["execution_sid"].as_str().unwrap();
                    assert_eq!(by_sid.get(sid).map(|e| flowcast_key(e).2), Some(id), "{r}");
                }
                "skipped" => {
                    *counts.entry(keyword(reason).to_string()).or_default() += 1;
                    match keyword(reason) {
                        "suppressed" => assert!(suppressed.iter().any(|s| covering(&s)), "{r}"),
                        "already_sent" => {
                            let order = order_of[phone];
                            let sent = executions
                                .iter()
                                .any(|e| flowcast_key(e).0 == "deliveries" && e.parameters["order"] == order);
                            assert!(p.dedupe && sent, "order {order} was sent once: {r}");
                        }
                        // Past its expiry before the cap allows it (no
                        // campaign here expires, but the reason must hold).
                        "frequency_cap" => assert!(!p.exempt && counted.contains_key(phone), "{r}"),
                        // Someone else's Execution was still active.
                        "conflict" => assert!(!lifetime.is_zero() && executions.iter().any(|e| e.to == phone), "{r}"),
                        other => panic!("a skipped job with reason {other:?}: {r}"),
                    }
                }
                "pending" => {
                    // Held by the cap: due a day after a contact that counted,
                    // never on an attempt that then sent nothing.
                    let due: DateTime<Utc> = r["due_at"].as_str().unwrap().parse().unwrap();
                    assert!(due.timestamp_millis() > now_ms() + 12 * HOUR_MS, "{r}");
                    assert!(!p.exempt, "an exempt campaign is never held back: {r}");
                    assert!(
                        counted.contains_key(phone),
                        "held back by a contact that counts: {r}\n{}",
                        history(&app, phone)
                    );
                    *counts.entry("deferred".into()).or_default() += 1;
                }
                other => panic!("run {run} of {}: a job {other}: {r}", p.name),
            }
            // Imported after its suppression was recorded: skipped at import.
            if suppressed.iter().any(|s| covering(&s) && s.acked_at < jobs[&id].created_at) {
                assert_eq!((r["state"].as_str(), keyword(reason)), (Some("skipped"), "suppressed"), "{r}");
            }
        }
    }
    assert_eq!(sent_jobs, executions.len(), "every Execution is a sent job and the other way round");

    // The cases the scenario forces happened, so no seed passes vacuously.
    let reminder_run = runs.iter().find(|r| r["campaign"] == "reminders").unwrap()["id"].as_i64().unwrap();
    let out = app.flowcast(&["report", &reminder_run.to_string(), "--format", "json"], &[]).await;
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for phone in &mids {
        let row = report.iter().find(|r| r["phone"] == phone.as_str()).unwrap();
        let s = suppressed.iter().find(|s| s.phone == *phone).unwrap();
        let created = entries[&(s.phone.clone(), s.scope.clone())];
        assert_eq!(keyword(row["reason"].as_str().unwrap_or_default()), "suppressed", "{row}");
        assert!(
            jobs[&row["job"].as_i64().unwrap()].created_at < created,
            "the job was pending when its suppression (scope {}) arrived: {row}",
            s.scope
        );
    }
    assert!(listed.iter().any(|s| s["source"] == "messaging webhook" && s["phone"] == mid_stop.as_str()));
    assert!(counts.get("already_sent").copied().unwrap_or(0) > 0, "a key sent before is skipped: {counts:?}");
    assert!(
        counts.get("deferred").copied().unwrap_or(0) + counts.get("frequency_cap").copied().unwrap_or(0) > 0,
        "someone is held back by the cap: {counts:?}"
    );
    eprintln!("contact_safety: {} Executions, skipped and deferred jobs: {counts:?}", executions.len());
}
