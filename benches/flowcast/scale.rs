//! scale: a large SQLite ledger of finished jobs spread over many runs and
//! campaigns, then what it costs: the ledger's bytes per finished job, the RSS
//! of `flowcast serve` on it with every campaign file in force, the time of
//! `flowcast status`, and the response time of each GET route of the API.
//!
//! The ledger is not dispatched through Studio (ten million creates would take
//! hours): it is made by `Store::open_path` (the product's own schema and
//! migrations) and filled with direct inserts shaped as a dispatch leaves its
//! rows: a sent job with its Execution SID, send and outcome times and read-back
//! outcome, its `create` audit record; a few failed and skipped jobs and
//! refused CSV rows; and, as every campaign had `notify`, one event per job in
//! the outbox (delivered, but for the newest run's last ones: given up, then
//! pending, as while a receiver is down). Building takes minutes, so the file is kept under
//! `target/bench-scale/` and reused while its sizes and layout version match.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::{FLOW, Folders, ServeProcess, SimProcess, Store, load_average, proc_peak_rss_mb, spawn_serve};

/// Bump when the rows the builder writes or the schema's indexes change, so
/// a cached ledger of the old layout is not reused (a migrated one keeps the
/// pages its dropped indexes freed, and its size would not tell).
const LAYOUT: u32 = 9;

#[derive(Clone, Copy, Debug)]
struct Sizes {
    jobs: usize,
    campaigns: usize,
    runs_per_campaign: usize,
    /// The newest run is this big (a campaign of a million contacts); the
    /// other runs share the rest evenly.
    big_run: usize,
    /// Requests per API route.
    requests: usize,
    /// The newest run's last events: this many pending, and before them
    /// as many given up.
    undelivered: usize,
}

fn sizes() -> Sizes {
    if std::env::var("FLOWCAST_BENCH_SMOKE").is_ok() {
        Sizes { jobs: 20_000, campaigns: 20, runs_per_campaign: 5, big_run: 2_000, requests: 3, undelivered: 100 }
    } else {
        Sizes {
            jobs: 10_000_000,
            campaigns: 1_000,
            runs_per_campaign: 5,
            big_run: 1_000_000,
            requests: 5,
            undelivered: 1_000,
        }
    }
}

/// What the builder knows of the ledger it made, kept next to it; its
/// presence marks a complete build.
fn meta_path(db: &Path) -> PathBuf {
    db.with_extension("json")
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-scale")
}

/// A deterministic 64-bit mix (splitmix64): the same ledger on every build.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn campaign_name(c: usize) -> String {
    format!("clinic-{c:04}")
}

/// A campaign's `k`th contact: the same people are reached by each run of
/// their campaign, as a recurring reminder does. Distinct for distinct `k`
/// (a run holds a phone once): the country by `k % 4`, the number within it
/// by `k / 4` scrambled by a bijection, so numbers look random.
fn phone(campaign: usize, k: usize) -> (String, &'static str) {
    let i = (k / 4) as u64;
    let areas = [201, 212, 305, 312, 415, 503, 617, 646, 702, 713, 818, 917];
    match k % 4 {
        // 600 million UK mobiles, +44 7400 000000 – +44 7999 999999.
        0 => {
            let n = (i * 2_654_435_761 + campaign as u64 * 7_919) % 600_000_000;
            (format!("+447{}{:06}", 400 + n / 1_000_000, n % 1_000_000), "Europe/London")
        }
        // 100 million German mobiles, +49 151 and eight digits.
        1 => (format!("+49151{:08}", (i * 2_654_435_761 + campaign as u64 * 7_919) % 100_000_000), "Europe/Berlin"),
        // 7 million numbers per US area code (exchanges 200–899), the area
        // code chosen by the campaign.
        _ => {
            let j = i * 2 + (k % 4 - 2) as u64;
            let n = (j * 2_654_431 + campaign as u64 * 7_919) % 7_000_000;
            let area = areas[(campaign + (j / 7_000_000) as usize) % areas.len()];
            (format!("+1{area}{}{:04}", 200 + n / 10_000, n % 10_000), "America/New_York")
        }
    }
}

fn build(db: &Path, s: Sizes) -> Value {
    let started = Instant::now();
    let partial = db.with_extension("building.db");
    for p in [partial.clone(), partial.with_extension("db-wal"), partial.with_extension("db-shm")] {
        let _ = std::fs::remove_file(p);
    }
    // The product's schema, migrations and pragmas.
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { drop(Store::open_path(&partial).await.expect("the ledger opens")) });
    }
    let mut conn = Connection::open(&partial).unwrap();
    // Speed only for the build: a crash leaves a partial file that is thrown away.
    conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -2000000; PRAGMA temp_store = MEMORY;").unwrap();
    let runs = s.campaigns * s.runs_per_campaign;
    let small = (s.jobs - s.big_run) / (runs - 1);
    // Runs a day apart per campaign, all over in the last months; now is when
    // the newest run finished.
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000i64;
    let outcome_fields = r#"[{"name":"decision","path":"flow.variables.decision","type":"string"}]"#;
    let decisions = ["confirm", "reschedule", "no_reply"];
    let ended_in = ["confirmed", "rescheduled", "reply_timeout"];
    let first_names = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Linus", "Margaret"];
    let mut job_id: i64 = 0;
    let mut big = json!({});
    let mut tx = conn.transaction().unwrap();
    let mut in_tx = 0usize;
    for r in 0..runs {
        let run_id = (r + 1) as i64;
        let c = r % s.campaigns;
        let n = if r + 1 == runs { s.jobs - small * (runs - 1) } else { small };
        let created = now - ((runs - r) as i64) * day / s.campaigns as i64 - day;
        let name = campaign_name(c);
        let rejected = n / 200;
        tx.prepare_cached(
            "INSERT INTO runs (id, campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
             on_conflict, state, rows_total, imported, rejected, duplicates, created_at, expanded_at, finished_at, \
             import_line, outcome_fields, parameter_keys) \
             VALUES (?1, ?2, 'reminder', 'schedule', ?3, ?4, ?5, ?6, '+15017122661', 'skip', 'finished', ?7, ?8, ?9, 0, \
                     ?4, ?10, ?11, ?12, ?13, '[\"appointment\",\"clinic\",\"name\"]')",
        )
        .unwrap()
        .execute(params![
            run_id,
            name,
            chrono::DateTime::from_timestamp_millis(created).unwrap().to_rfc3339(),
            created,
            format!("campaigns/{name}.toml"),
            FLOW,
            (n + rejected) as i64,
            n as i64,
            rejected as i64,
            created + 2_000,
            created + n as i64 * 50 + 600_000,
            (n + rejected + 1) as i64,
            outcome_fields,
        ])
        .unwrap();
        if r + 1 == runs {
            big = json!({ "run": run_id, "first_job": job_id + 1, "last_job": job_id + n as i64, "jobs": n });
        }
        {
            let mut job = tx
                .prepare_cached(
                    "INSERT INTO jobs (id, run_id, phone, line, zone, parameters, state, reason, due_at, attempts, \
                     attempt_started_at, execution_sid, last_error, created_at, updated_at, sent_at, finished_at, \
                     outcome_state, outcome_polls, execution_status, ended_in, outcome, create_on_row) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
                             ?21, ?22, ?23)",
                )
                .unwrap();
            let mut call = tx
                .prepare_cached(
                    "INSERT INTO studio_calls (run_id, job_id, at, operation, request, http_status, response, outcome, \
                     execution_sid) VALUES (?1, ?2, ?3, 'create', ?4, ?5, ?6, ?7, ?8)",
                )
                .unwrap();
            let mut event = tx
                .prepare_cached(
                    "INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, attempts, \
                     next_attempt_at, delivered_at, gave_up_at, last_error) \
                     VALUES (?1, ?2, ?3, ?4, 'https://hooks.example.com/flowcast', ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .unwrap();
            // One event per job, written when the job settled, as the
            // triggers write it; delivered a moment later, but the newest
            // run's last ones.
            let mut add_event = |job_id: i64,
                                 k: usize,
                                 kind: &str,
                                 at: i64,
                                 phone: &str,
                                 state: &str,
                                 reason: Option<&str>,
                                 outcome: &str| {
                let id = format!("evt_{:016x}{:016x}", mix(job_id as u64 ^ 0xe7e7), mix(job_id as u64 ^ 0x7e7e));
                let time = chrono::DateTime::from_timestamp_millis(at).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ");
                let body = json!({
                    "id": id, "type": kind, "time": time.to_string(), "campaign": name, "run": run_id, "job": job_id,
                    "phone": phone, "state": state, "reason": reason,
                    "outcome": serde_json::from_str::<Value>(outcome).unwrap(),
                })
                .to_string();
                let last = r + 1 == runs;
                let (attempts, next, delivered, gave_up, error) = if last && k + s.undelivered >= n {
                    (3, now + 60_000, None, None, Some("HTTP 503"))
                } else if last && k + 2 * s.undelivered >= n {
                    (12, at, None, Some(at + 86_400_000), Some("HTTP 503"))
                } else {
                    (1, at, Some(at + 150), None, None)
                };
                event
                    .execute(params![id, kind, run_id, job_id, body, at, attempts, next, delivered, gave_up, error])
                    .unwrap();
            };
            // A sent job's SID key, as the dispatcher writes it with the send.
            let mut key =
                tx.prepare_cached("INSERT INTO execution_keys (key, job_id) VALUES (substr(?2, 3, 8), ?1)").unwrap();
            let mut refused = tx
                .prepare_cached(
                    "INSERT INTO import_rows (run_id, line, raw_phone, outcome, reason) \
                     VALUES (?1, ?2, ?3, 'rejected', ?4)",
                )
                .unwrap();
            for k in 0..n {
                job_id += 1;
                let h = mix(job_id as u64 ^ 0x5ca1e);
                let (phone, zone) = phone(c, k);
                let line = (k + 2) as i64;
                // The values alone, as the import stores them: the keys
                // (sorted, as the campaign's table renders them) are the run's.
                let params_json = format!(
                    r#"["2026-{:02}-{:02} {:02}:{:02}","Clinic {c}","{}"]"#,
                    1 + (h >> 8) % 12,
                    1 + (h >> 12) % 28,
                    8 + (h >> 16) % 10,
                    15 * ((h >> 20) % 4),
                    first_names[(h % 8) as usize],
                );
                let sent_at = created + 2_000 + k as i64 * 50;
                // 97 % sent, 2 % refused by Studio, 1 % suppressed at import.
                match h % 100 {
                    0 | 1 => {
                        let error = "Twilio error 21211: Invalid 'To' Phone Number";
                        job.execute(params![
                            job_id,
                            run_id,
                            phone,
                            line,
                            zone,
                            params_json,
                            "failed",
                            format!("invalid: {error}"),
                            created,
                            1,
                            sent_at - 120,
                            None::<String>,
                            format!("400: {error}"),
                            created,
                            sent_at,
                            None::<i64>,
                            sent_at,
                            None::<String>,
                            0,
                            None::<String>,
                            None::<String>,
                            None::<String>,
                            0,
                        ])
                        .unwrap();
                        call.execute(params![
                            run_id,
                            job_id,
                            sent_at,
                            format!("To={phone} From=+15017122661"),
                            400,
                            format!("Studio refused the request (400): {error}"),
                            "invalid",
                            None::<String>,
                        ])
                        .unwrap();
                        let reason = format!("invalid: {error}");
                        add_event(job_id, k, "job.failed", sent_at, &phone, "failed", Some(&reason), "null");
                    }
                    2 => {
                        job.execute(params![
                            job_id,
                            run_id,
                            phone,
                            line,
                            zone,
                            params_json,
                            "skipped",
                            "suppressed: scope all, STOP received",
                            created,
                            0,
                            None::<i64>,
                            None::<String>,
                            None::<String>,
                            created,
                            created,
                            None::<i64>,
                            created,
                            None::<String>,
                            0,
                            None::<String>,
                            None::<String>,
                            None::<String>,
                            0,
                        ])
                        .unwrap();
                        let reason = Some("suppressed: scope all, STOP received");
                        add_event(job_id, k, "job.skipped", created, &phone, "skipped", reason, "null");
                    }
                    _ => {
                        let sid = format!("FN{:016x}{:016x}", mix(h), mix(h ^ 1));
                        let pick = ((h >> 40) % 3) as usize;
                        job.execute(params![
                            job_id,
                            run_id,
                            phone,
                            line,
                            // Blanked once sent: it served the send window alone.
                            "",
                            params_json,
                            "sent",
                            None::<String>,
                            created,
                            1,
                            sent_at - 120,
                            sid,
                            None::<String>,
                            created,
                            sent_at + 300_000,
                            sent_at,
                            sent_at,
                            "known",
                            1,
                            "ended",
                            ended_in[pick],
                            format!(r#"{{"decision":"{}"}}"#, decisions[pick]),
                            1,
                        ])
                        .unwrap();
                        key.execute(params![job_id, sid]).unwrap();
                        // As the dispatcher records a create that succeeded:
                        // on the job row alone (`create_on_row`; its SID,
                        // To, From and Parameters are the job's and its
                        // run's), no row of `studio_calls`.
                        let outcome = format!(
                            r#"{{"state":"known","status":"ended","ended_in":"{}","values":{{"decision":"{}"}}}}"#,
                            ended_in[pick], decisions[pick]
                        );
                        add_event(job_id, k, "outcome", sent_at + 300_000, &phone, "sent", None, &outcome);
                    }
                }
            }
            for i in 0..rejected {
                refused
                    .execute(params![
                        run_id,
                        (n + 2 + i) as i64,
                        "555-01",
                        "not a valid phone number for region US (too short)"
                    ])
                    .unwrap();
            }
        }
        in_tx += n;
        if in_tx >= 200_000 {
            tx.commit().unwrap();
            tx = conn.transaction().unwrap();
            in_tx = 0;
            eprintln!("scale: {job_id} of {} jobs written ({:.0} s)", s.jobs, started.elapsed().as_secs_f64());
        }
    }
    tx.commit().unwrap();
    // No ANALYZE: the product never runs it, so its query plans are made
    // without statistics, and so are those measured here.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap_or(());
    drop(conn);
    let _ = std::fs::remove_file(partial.with_extension("db-wal"));
    let _ = std::fs::remove_file(partial.with_extension("db-shm"));
    std::fs::rename(&partial, db).unwrap();
    let meta = json!({
        "jobs": s.jobs, "runs": runs, "campaigns": s.campaigns, "big": big,
        "build_seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(meta_path(db), meta.to_string()).unwrap();
    meta
}

/// The ledger file's size with its WAL checkpointed into it, what the outbox
/// and its indexes take of it, and what each table and index takes (from
/// SQLite's `dbstat`, when the build has it).
fn ledger_bytes(db: &Path) -> (u64, u64, Vec<(String, u64)>) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap_or(());
    let mut parts: Vec<(String, u64)> = conn
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .and_then(|mut st| st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?.collect())
        .unwrap_or_default();
    let outbox = parts.iter().filter(|(name, _)| name.contains("outbox")).map(|(_, b)| b).sum();
    parts.truncate(16);
    drop(conn);
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    (size(db.to_path_buf()) + size(db.with_extension("db-wal")), outbox, parts)
}

/// One campaign file per campaign with a schedule that does not fire while
/// measured (1 January, 03:00), its own small CSV, and an outcome field.
fn campaign_files(dir: &Path, campaigns: usize) -> Folders {
    let folders = Folders { campaigns: dir.join("campaigns"), flows: dir.join("flows") };
    std::fs::create_dir_all(&folders.campaigns).unwrap();
    std::fs::create_dir_all(&folders.flows).unwrap();
    for c in 0..campaigns {
        let name = campaign_name(c);
        let csv: String = std::iter::once("phone,first_name,appointment_at\n".to_string())
            .chain((0..20).map(|k| format!("{},{},2030-03-02 10:00\n", phone(c, k).0, ["Ada", "Ken"][k % 2])))
            .collect();
        std::fs::write(folders.campaigns.join(format!("{name}.csv")), csv).unwrap();
        std::fs::write(
            folders.campaigns.join(format!("{name}.toml")),
            format!(
                "kind = \"reminder\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"{name}.csv\"\n\
                 schedule = \"0 3 1 1 *\"\ntimezone = \"America/New_York\"\non_conflict = \"skip\"\n\
                 [parameters]\nname = \"{{{{first_name}}}}\"\nappointment = \"{{{{appointment_at}}}}\"\n\
                 clinic = \"Clinic {c}\"\n[outcomes]\ndecision = \"flow.variables.decision\"\n"
            ),
        )
        .unwrap();
    }
    folders
}

/// VmRSS and VmHWM of a process, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn summary(mut times: Vec<f64>) -> Value {
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    json!({ "median_ms": median, "max_ms": times.last().copied().unwrap_or(0.0), "n": times.len() })
}

/// `flowcast status` as a user runs it: its own process on the ledger file
/// (it reads the ledger directly; WAL lets it read beside serve).
fn time_status(db: &Path, folders: &Folders, json_out: bool) -> f64 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowcast"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOWCAST_") || k.starts_with("TWILIO_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--db", db.to_str().unwrap(), "--campaigns", folders.campaigns.to_str().unwrap()]).args([
        "--flows",
        folders.flows.to_str().unwrap(),
        "status",
    ]);
    if json_out {
        cmd.arg("--json");
    }
    let started = Instant::now();
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().expect("flowcast status runs");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    ms
}

pub(super) async fn scenario() -> Value {
    let s = sizes();
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join(format!("ledger-v{LAYOUT}-{}j-{}c.db", s.jobs, s.campaigns));
    let meta: Value = match std::fs::read_to_string(meta_path(&db)).ok().and_then(|t| serde_json::from_str(&t).ok()) {
        Some(meta) if db.exists() => {
            eprintln!("scale: reusing {}", db.display());
            meta
        }
        _ => {
            eprintln!("scale: building {} ({} jobs; minutes at full size)", db.display(), s.jobs);
            let dbc = db.clone();
            tokio::task::spawn_blocking(move || build(&dbc, s)).await.unwrap()
        }
    };
    // A ledger built by an older flowcast gets this one's migrations (an
    // index added since), as serve would give it, before it is measured.
    drop(Store::open_path(&db).await.expect("the ledger opens"));
    let (bytes, outbox_bytes, parts) = ledger_bytes(&db);
    let jobs = meta["jobs"].as_u64().unwrap_or(1).max(1);
    let per_job: Vec<Value> =
        parts.iter().map(|(name, b)| json!({ "name": name, "bytes_per_job": *b as f64 / jobs as f64 })).collect();

    let work = tempfile::tempdir().unwrap();
    let folders = campaign_files(work.path(), s.campaigns);
    let sim = SimProcess::start(None);
    let load_before = load_average();
    let started = Instant::now();
    let mut serve = spawn_serve(db.to_str().unwrap(), &folders, &sim.url, &[], &work.path().join("serve.log"));
    let pid = serve.child.id();
    let client = reqwest::Client::new();
    let base = serve.url.clone();
    let in_force = wait_for_campaigns(&mut serve, &client, s.campaigns).await;
    let startup_s = started.elapsed().as_secs_f64();
    // Let the first scans and schedule bookkeeping settle.
    tokio::time::sleep(Duration::from_secs(if s.requests > 3 { 10 } else { 1 })).await;
    let (rss_idle, _) = rss_mb(pid);
    // A ledger from before kept summaries has none: serve keeps every
    // settled run's in the background. How long that takes is the one-time
    // cost of the upgrade; the pages below are measured after it.
    let runs = meta["runs"].as_u64().unwrap_or(0);
    let summarised_s = wait_for_summaries(&db, runs, started, &mut serve).await;
    let (rss_summarised, _) = rss_mb(pid);

    let big = &meta["big"];
    let run = big["run"].as_i64().unwrap_or(1);
    let first = big["first_job"].as_i64().unwrap_or(0);
    let last = big["last_job"].as_i64().unwrap_or(0);
    let deep = first + (last - first) * 9 / 10;
    let small_run = run / 2;
    let routes: Vec<(String, String)> = vec![
        ("GET /healthz".into(), "/healthz".into()),
        ("GET /metrics".into(), "/metrics".into()),
        ("GET / (dashboard)".into(), "/".into()),
        ("GET /api/openapi.json".into(), "/api/openapi.json".into()),
        ("GET /api/campaigns".into(), "/api/campaigns".into()),
        ("GET /api/runs".into(), "/api/runs".into()),
        ("GET /api/runs?limit=500".into(), "/api/runs?limit=500".into()),
        ("GET /api/runs?campaign=".into(), format!("/api/runs?campaign={}", campaign_name(0))),
        ("GET /api/runs/{big}".into(), format!("/api/runs/{run}")),
        ("GET /api/runs/{small}".into(), format!("/api/runs/{small_run}")),
        ("GET /api/runs/{big}/jobs".into(), format!("/api/runs/{run}/jobs")),
        ("GET /api/runs/{big}/jobs?limit=1000".into(), format!("/api/runs/{run}/jobs?limit=1000")),
        ("GET /api/runs/{big}/jobs deep page".into(), format!("/api/runs/{run}/jobs?after={deep}")),
        ("GET /api/runs/{big}/jobs?state=failed".into(), format!("/api/runs/{run}/jobs?state=failed")),
        (
            "GET /api/runs/{big}/jobs?state=failed deep".into(),
            format!("/api/runs/{run}/jobs?state=failed&after={deep}"),
        ),
        ("GET /api/runs/{big}/jobs?state=pending".into(), format!("/api/runs/{run}/jobs?state=pending")),
        ("GET /api/problems".into(), "/api/problems".into()),
        ("GET /api/outbox".into(), "/api/outbox".into()),
        ("GET /api/outbox?state=pending".into(), "/api/outbox?state=pending".into()),
        ("GET /api/outbox?state=gave_up".into(), "/api/outbox?state=gave_up".into()),
        ("GET /api/outbox?state=delivered".into(), "/api/outbox?state=delivered".into()),
        ("GET /api/instances".into(), "/api/instances".into()),
        ("GET /api/suppressions".into(), "/api/suppressions".into()),
    ];
    let mut pages = Vec::new();
    let mut slowest = (String::new(), 0.0f64);
    let mut rss_peak_sampled = rss_idle;
    for (label, path) in &routes {
        let mut times = Vec::new();
        let mut status = 0;
        for _ in 0..s.requests {
            let t = Instant::now();
            let answer = client.get(format!("{base}{path}")).send().await.expect("serve answers");
            status = answer.status().as_u16();
            let _ = answer.bytes().await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            rss_peak_sampled = rss_peak_sampled.max(rss_mb(pid).0);
        }
        let sum = summary(times);
        if sum["median_ms"].as_f64().unwrap_or(0.0) > slowest.1 {
            slowest = (label.clone(), sum["median_ms"].as_f64().unwrap_or(0.0));
        }
        eprintln!("scale: {label}: {sum} ({status})");
        pages.push(json!({ "route": label, "path": path, "status": status, "ms": sum }));
    }
    let mut status_ms = Vec::new();
    let mut status_json_ms = Vec::new();
    for _ in 0..s.requests.min(3) {
        status_ms.push(time_status(&db, &folders, false));
        status_json_ms.push(time_status(&db, &folders, true));
    }
    let (rss_end, hwm) = rss_mb(pid);
    let alive = serve.child.try_wait().ok().flatten().is_none();
    let log = serve.log_tail();
    drop(serve);
    json!({
        "jobs": jobs, "runs": meta["runs"], "campaigns": s.campaigns, "in_force": in_force, "big_run": big,
        "ledger_bytes": bytes, "bytes_per_job": bytes as f64 / jobs as f64, "parts": per_job,
        "bytes_per_job_without_events": bytes.saturating_sub(outbox_bytes) as f64 / jobs as f64,
        "build_seconds": meta["build_seconds"],
        "serve_startup_s": startup_s, "serve_rss_idle_mb": rss_idle, "serve_rss_end_mb": rss_end,
        "summarised_s": summarised_s, "serve_rss_summarised_mb": rss_summarised,
        "serve_rss_sampled_max_mb": rss_peak_sampled, "serve_peak_rss_mb": hwm, "serve_alive": alive,
        "status_ms": summary(status_ms), "status_json_ms": summary(status_json_ms),
        "pages": pages, "slowest": { "route": slowest.0, "median_ms": slowest.1 },
        "load_before": load_before, "load_after": load_average(), "peak_rss_self_mb": proc_peak_rss_mb("self"),
        "serve_log_tail": if alive { Value::Null } else { json!(log) },
    })
}

/// Waits until serve lists every campaign file as in force; returns how many
/// it listed.
/// Seconds from serve's start until every run of the ledger has a kept
/// summary (`None`: not within ten minutes).
async fn wait_for_summaries(db: &Path, runs: u64, started: Instant, serve: &mut ServeProcess) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let kept: i64 = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM run_summaries", [], |r| r.get(0)))
            .unwrap_or(0);
        if kept as u64 >= runs {
            return Some(started.elapsed().as_secs_f64());
        }
        if let Ok(Some(status)) = serve.child.try_wait() {
            panic!("serve exited ({status}):\n{}", serve.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

async fn wait_for_campaigns(serve: &mut ServeProcess, client: &reqwest::Client, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{}/api/campaigns", serve.url)).send().await
            && let Ok(v) = r.json::<Value>().await
            && let Some(list) = v["campaigns"].as_array()
            && (list.len() >= want || Instant::now() > deadline)
        {
            return list.len();
        }
        if let Ok(Some(status)) = serve.child.try_wait() {
            panic!("serve exited ({status}):\n{}", serve.log_tail());
        }
        assert!(Instant::now() < deadline, "serve never answered:\n{}", serve.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table's rows for a scale result.
pub(super) fn rows(r: &Value) -> Vec<(String, String, String, String)> {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let parts: Vec<String> = r["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .take(8)
        .map(|p| format!("{} {:.0}", p["name"].as_str().unwrap_or("?"), f(&p["bytes_per_job"])))
        .collect();
    let pages: Vec<String> = r["pages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {:.1}/{:.1}",
                p["route"].as_str().unwrap_or("?").trim_start_matches("GET "),
                f(&p["ms"]["median_ms"]),
                f(&p["ms"]["max_ms"])
            )
        })
        .collect();
    let size = format!("{} jobs, {} runs, {} campaign files", r["jobs"], r["runs"], r["campaigns"]);
    vec![
        (
            format!("scale: ledger of {size}"),
            format!(
                "{:.0} bytes per finished job, {:.0} without its event",
                f(&r["bytes_per_job"]),
                f(&r["bytes_per_job_without_events"])
            ),
            format!("{:.2} GB in all; per job: {}", f(&r["ledger_bytes"]) / 1e9, parts.join(", ")),
            "≤ 300 bytes per finished job".into(),
        ),
        (
            "scale: serve on it".into(),
            format!("peak RSS {:.0} MB", f(&r["serve_peak_rss_mb"])),
            format!(
                "idle {:.0} MB after start; every run's summary kept {} ({:.0} MB then); {:.0} MB after the pages; \
                 {} campaigns in force after {:.1} s; load {} → {}",
                f(&r["serve_rss_idle_mb"]),
                r["summarised_s"].as_f64().map_or("not within 10 min".to_string(), |s| format!("{s:.1} s after start")),
                f(&r["serve_rss_summarised_mb"]),
                f(&r["serve_rss_end_mb"]),
                r["in_force"],
                f(&r["serve_startup_s"]),
                r["load_before"].as_str().unwrap_or("?"),
                r["load_after"].as_str().unwrap_or("?")
            ),
            "< 150 MB".into(),
        ),
        (
            "scale: `flowcast status`".into(),
            format!("{:.0} ms median", f(&r["status_ms"]["median_ms"])),
            format!(
                "max {:.0} ms; `status --json` {:.0} ms median",
                f(&r["status_ms"]["max_ms"]),
                f(&r["status_json_ms"]["median_ms"])
            ),
            "≤ 200 ms".into(),
        ),
        (
            "scale: API pages (median/max ms)".into(),
            format!(
                "slowest {} {:.0} ms median",
                r["slowest"]["route"].as_str().unwrap_or("?"),
                f(&r["slowest"]["median_ms"])
            ),
            pages.join("; "),
            "≤ 200 ms each".into(),
        ),
    ]
}
