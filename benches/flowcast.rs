//! flowcast's benchmark harness: `cargo bench --bench flowcast` (full size,
//! a few minutes on a laptop) or `cargo bench --bench flowcast -- --smoke`
//! (seconds; CI runs it so the harness cannot rot). Prints one table.
//!
//! Each scenario runs in a child process of its own, so that its peak RSS is its
//! own; the Studio simulator runs in another child, so that its CPU and memory
//! are not counted as flowcast's. Scenarios:
//!
//! 1. import: a generated CSV (random valid numbers across several regions,
//!    5 columns) into jobs, end to end.
//! 2. dispatch: jobs against the simulator over loopback HTTP at an unlimited
//!    rate, durable ledger; Executions/s and CPU per Execution.
//! 3. rate: a cap of 20, 100, 1,000 and 10,000/s (30 s each, less at high
//!    rates) against a simulator answering 429 above the same rate: achieved
//!    mean, busiest sliding 1-second window, 429s; and two campaigns sharing a
//!    20/s cap.
//! 4. first: a campaign of a million contacts fires: time from the tick to the
//!    first Execution, then the whole run (peak RSS).
//! 5. push: `flowcast serve` (the release binary) with a `trigger = "api"`
//!    campaign; one contact at a time is POSTed to
//!    `/api/campaigns/{name}/contacts` and the time until the simulator has
//!    its Execution is measured (a free rate slot each time).
//! 6. cluster (by name, or in the smoke set; needs `FLOWCAST_TEST_POSTGRES`,
//!    skipped without): 1, 2 and 3 `flowcast serve` processes on one
//!    PostgreSQL ledger send one one-off campaign at an account rate set far
//!    above what they reach, until the run has ended; Executions/s from the
//!    first to the last create, and the CPU of each serve, of PostgreSQL and
//!    of the simulator meanwhile. Claims/s: the ledger alone, 1, 2 and 3
//!    claimers taking and settling jobs with no Studio call.
//! 7. pg-import (by name, or in the smoke set; needs `FLOWCAST_TEST_POSTGRES`,
//!    skipped without): the import, alone and beside sends at 1,000/s, into
//!    a PostgreSQL ledger.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowcast::campaign::{Folders, load_one};
use flowcast::dispatch::{DispatchSettings, Dispatcher, RateLimits, RunEnd};
use flowcast::domain::FlowSid;
use flowcast::domain::Trigger;
use flowcast::runs::{import_run, new_run};
use flowcast::schedule::SystemClock;
use flowcast::store::Store;
use flowcast::studio::simulator::{SimConfig, Simulator};
use flowcast::studio::{Credentials, HttpStudio, StudioConfig};
use serde_json::{Value, json};

// A crate root looks for its modules beside it; the scenarios live in
// `benches/flowcast/`, next to the harness they belong to.
#[path = "flowcast/peer.rs"]
mod peer;
#[path = "flowcast/scale.rs"]
mod scale;

const FLOW: &str = "FW0123456789abcdef0123456789abcdef";

#[derive(Clone, Copy)]
struct Sizes {
    import_rows: usize,
    dispatch_jobs: usize,
    rate_seconds: u64,
    first_contacts: usize,
}

fn sizes() -> Sizes {
    if let Some(rows) = std::env::var("FLOWCAST_BENCH_ROWS").ok().and_then(|r| r.parse().ok()) {
        // One size for every scenario, for profiling runs.
        return Sizes { import_rows: rows, dispatch_jobs: rows, rate_seconds: 3, first_contacts: rows };
    }
    if std::env::var("FLOWCAST_BENCH_SMOKE").is_ok() {
        Sizes { import_rows: 5_000, dispatch_jobs: 2_000, rate_seconds: 3, first_contacts: 5_000 }
    } else {
        Sizes { import_rows: 1_000_000, dispatch_jobs: 200_000, rate_seconds: 30, first_contacts: 1_000_000 }
    }
}

/// How long a rate row runs: the set duration, shortened at high rates so
/// that the simulator's dump of Executions stays near 100,000.
fn rate_seconds(s: Sizes, rate: u32) -> u64 {
    s.rate_seconds.min((100_000 / u64::from(rate.max(1))).max(3))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        let name = args.get(i + 1).cloned().unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
        let result = runtime.block_on(async {
            let result = scenario(&name, &args).await;
            drop_bench_schema().await;
            result
        });
        println!("RESULT {result}");
        return;
    }
    // `cargo bench` passes `--bench`; anything else that is not ours is ignored.
    let smoke = args.iter().any(|a| a == "--smoke");
    if smoke {
        // SAFETY: single-threaded here, before any child or runtime exists.
        unsafe { std::env::set_var("FLOWCAST_BENCH_SMOKE", "1") };
    }
    let only: Vec<&String> = args.iter().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |n: &str| only.is_empty() || only.iter().any(|o| o.as_str() == n);
    let s = sizes();
    println!("flowcast benchmarks ({}), machine: {}", if smoke { "smoke sizes" } else { "full sizes" }, machine());
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    if wanted("import") {
        rows.push(import_row(format!("import {} rows", s.import_rows), "", &child("import", &[])));
    }
    if wanted("dispatch") {
        let r = child("dispatch", &[]);
        rows.push((
            format!("dispatch {} jobs", s.dispatch_jobs),
            format!("{:.0} Executions/s", r["per_s"].as_f64().unwrap_or(0.0)),
            format!(
                "{:.1} µs CPU per Execution ({:.1} of it in the kernel); peak RSS {:.0} MB; {} created",
                r["cpu_us_per_execution"].as_f64().unwrap_or(0.0),
                r["kernel_us_per_execution"].as_f64().unwrap_or(0.0),
                r["peak_rss_mb"].as_f64().unwrap_or(0.0),
                r["executions"]
            ),
            "≥ 20,000 /s, ≤ 150 MB".into(),
        ));
    }
    if wanted("rate") {
        // One row per set rate with one campaign, then two campaigns sharing
        // Studio's own cap; the simulator answers 429 above the set rate.
        for (rate, campaigns) in [(20, 1), (20, 2), (100, 1), (1_000, 1), (10_000, 1)] {
            let seconds = rate_seconds(s, rate);
            let r = child("rate", &["--rate", &rate.to_string(), "--campaigns", &campaigns.to_string()]);
            rows.push(rate_row(format!("rate cap {rate}/s for {seconds} s, {campaigns} campaign(s)"), rate, &r, ""));
        }
        // The same with a large import into the ledger alongside.
        for rate in [20, 1_000] {
            rows.push(rate_beside_import_row(s, rate, &[], ""));
        }
    }
    if wanted("first") {
        let r = child("first", &[]);
        rows.push((
            format!("first send, {} contacts", s.first_contacts),
            format!("{:.0} ms tick → first Execution", r["first_ms"].as_f64().unwrap_or(0.0)),
            format!(
                "whole run {:.1} s ({:.0}/s); peak RSS {:.0} MB",
                r["total_s"].as_f64().unwrap_or(0.0),
                r["per_s"].as_f64().unwrap_or(0.0),
                r["peak_rss_mb"].as_f64().unwrap_or(0.0)
            ),
            "≤ 1 s; ≤ 150 MB".into(),
        ));
    }
    // It needs a PostgreSQL server (it says it skipped without one), and at
    // full size takes minutes: asked for by name, or in the smoke set at its
    // tiny size.
    if only.iter().any(|o| o.as_str() == "cluster") || (smoke && only.is_empty()) {
        for instances in 1..=3 {
            let r = child("cluster", &["--instances", &instances.to_string()]);
            if r.get("skipped").is_some() {
                eprintln!("cluster: skipped ({})", r["skipped"]);
                break;
            }
            let list = |key: &str, unit: &str| {
                r[key].as_array().map_or(String::new(), |v| {
                    v.iter().map(|x| format!("{:.1}{unit}", x.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(" + ")
                })
            };
            rows.push((
                format!("PostgreSQL, {instances} instance(s), {} contacts", r["contacts"]),
                format!("{:.0} Executions/s", r["executions_per_s"].as_f64().unwrap_or(0.0)),
                format!(
                    "ledger alone: {:.0} claims/s with {instances} claimer(s); {} Executions for {} imported \
                     (run {}) in {:.1} s; CPU s: serve {}, PostgreSQL backends {:.1} (all PostgreSQL {:.1}), \
                     simulator {:.1}; \
                     serve peak RSS {}; load {} → {}",
                    r["claims_per_s"].as_f64().unwrap_or(0.0),
                    r["executions"],
                    r["imported"],
                    r["state"].as_str().unwrap_or("not ended"),
                    r["send_seconds"].as_f64().unwrap_or(0.0),
                    list("serve_cpu_s", ""),
                    r["backends_cpu_s"].as_f64().unwrap_or(0.0),
                    r["postgres_cpu_s"].as_f64().unwrap_or(0.0),
                    r["simulator_cpu_s"].as_f64().unwrap_or(0.0),
                    list("serve_peak_rss_mb", " MB"),
                    r["load_before"].as_str().unwrap_or("?"),
                    r["load_after"].as_str().unwrap_or("?"),
                ),
                "one Execution per imported contact".into(),
            ));
        }
    }
    // A PostgreSQL ledger's import, alone and beside sends at 1,000/s: it
    // needs a PostgreSQL server (it says it skipped without one); asked for
    // by name, or in the smoke set at its tiny size.
    if only.iter().any(|o| o.as_str() == "pg-import") || (smoke && only.is_empty()) {
        let r = child("import", &["--postgres"]);
        if r.get("skipped").is_some() {
            eprintln!("pg-import: skipped ({})", r["skipped"]);
        } else {
            let label = format!("import {} rows, PostgreSQL ledger", s.import_rows);
            rows.push(import_row(label, " (flowcast's; the server's apart)", &r));
            rows.push(rate_beside_import_row(s, 1_000, &["--postgres"], ", PostgreSQL ledger"));
        }
    }
    // It may install the Python helper (pip), so it runs by name only.
    if only.iter().any(|o| o.as_str() == "peer") {
        rows.extend(peer::rows(&child("peer", &[])));
    }
    // Builds a ledger of ten million jobs on its first full-size run (kept
    // under target/bench-scale/): asked for by name, or in the smoke set at
    // its tiny size.
    if only.iter().any(|o| o.as_str() == "scale") || (smoke && only.is_empty()) {
        rows.extend(scale::rows(&child("scale", &[])));
    }
    if wanted("push") {
        let r = child("push", &[]);
        rows.push((
            format!("push one contact over HTTP, {} times", r["pushes"]),
            format!("{:.1} ms median POST → Execution", r["median_ms"].as_f64().unwrap_or(0.0)),
            format!(
                "p95 {:.1} ms, max {:.1} ms (serve and the simulator on loopback)",
                r["p95_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0)
            ),
            "< 100 ms".into(),
        ));
    }
    println!();
    println!("| scenario | result | details | target |");
    println!("|---|---|---|---|");
    for (a, b, c, d) in rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
}

/// A row of the rate table: achieved, busiest window, 429s, the margin the
/// run ended with, and `more` details.
/// The import scenario's row; `rss_note` follows the peak RSS figure.
fn import_row(label: String, rss_note: &str, r: &Value) -> (String, String, String, String) {
    (
        label,
        format!("{:.0} rows/s", r["rows_per_s"].as_f64().unwrap_or(0.0)),
        format!(
            "peak RSS {:.0} MB{rss_note}; {} imported, {} rejected; CPU {:.1} s{}",
            r["peak_rss_mb"].as_f64().unwrap_or(0.0),
            r["imported"],
            r["rejected"],
            r["cpu_s"].as_f64().unwrap_or(0.0),
            match r["postgres_cpu_s"].as_f64() {
                Some(pg) if pg > 0.0 => format!(", the server's {pg:.1} s"),
                _ => String::new(),
            }
        ),
        "≥ 150,000 rows/s, ≤ 150 MB".into(),
    )
}

/// A rate row with the import row's CSV imported into the same ledger
/// alongside; `extra` are more scenario arguments, `suffix` ends the label.
fn rate_beside_import_row(s: Sizes, rate: u32, extra: &[&str], suffix: &str) -> (String, String, String, String) {
    let seconds = rate_seconds(s, rate);
    let rows_alongside = s.import_rows.to_string();
    let rate_arg = rate.to_string();
    let mut args = vec!["--rate", rate_arg.as_str(), "--import-rows", rows_alongside.as_str()];
    args.extend_from_slice(extra);
    let r = child("rate", &args);
    let import = r["import_seconds"].as_f64().map_or_else(
        || format!("; import still going after {seconds} s, {} jobs written", r["import_jobs"]),
        |t| format!("; import done in {t:.1} s"),
    );
    let label = format!("rate cap {rate}/s for {seconds} s, importing {} rows alongside{suffix}", s.import_rows);
    rate_row(label, rate, &r, &import)
}

fn rate_row(label: String, rate: u32, r: &Value, more: &str) -> (String, String, String, String) {
    let mean = r["mean_per_s"].as_f64().unwrap_or(0.0);
    (
        label,
        format!("{mean:.2}/s mean ({:.1} %)", mean * 100.0 / f64::from(rate)),
        format!(
            "busiest 1 s window {}; 429s {}; margin below the rate at the end {:.2} %{more}",
            r["max_in_1s"],
            r["throttled"],
            r["margin_pct"].as_f64().unwrap_or(0.0)
        ),
        format!("≥ 97 % of {rate}, ≤ {rate} in any 1 s, 0 × 429"),
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cores} cores, {cpu}")
}

/// Runs a scenario in a child process and returns its result line.
fn child(name: &str, extra: &[&str]) -> Value {
    let exe = std::env::current_exe().expect("the bench binary");
    eprintln!("running {name} {}", extra.join(" "));
    let out =
        Command::new(exe).args(["--scenario", name]).args(extra).stderr(Stdio::inherit()).output().expect("a child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or("{}");
    serde_json::from_str(line).unwrap_or_else(|_| json!({}))
}

/// A simulator in a process of its own; killed on drop.
struct SimProcess {
    child: Child,
    url: String,
}

impl SimProcess {
    fn start(rate_cap: Option<u32>) -> SimProcess {
        let exe = std::env::current_exe().expect("the bench binary");
        let mut cmd = Command::new(exe);
        cmd.args(["--scenario", "simulator"]);
        if let Some(cap) = rate_cap {
            cmd.args(["--rate-cap", &cap.to_string()]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the simulator starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("the simulator says where it listens").unwrap();
            if let Some(url) = line.strip_prefix("LISTENING ") {
                break url.to_string();
            }
        };
        SimProcess { child, url }
    }

    fn stats(&self) -> Value {
        get_json(&format!("{}/_simulator/stats", self.url))
    }

    fn executions(&self) -> Value {
        get_json(&format!("{}/_simulator/executions", self.url))
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `flowcast serve` child (the release binary) on a port of its own; killed
/// on drop. Its log goes to a file, so that a serve that sends nothing can be
/// asked why (`log_tail`).
struct ServeProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

/// Starts `flowcast serve` on ledger `db` with `folders`, against the
/// simulator at `studio_url`, with `env` on top of the defaults below; its
/// stderr goes to `log`.
fn spawn_serve(db: &str, folders: &Folders, studio_url: &str, env: &[(&str, &str)], log: &Path) -> ServeProcess {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowcast"));
    // Only the settings given here: a FLOWCAST_* variable of the shell that
    // runs the bench (a ledger, a rate, a log filter) would change what is
    // measured.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOWCAST_") || k.starts_with("TWILIO_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--db", db, "--campaigns", folders.campaigns.to_str().unwrap()])
        .args(["--flows", folders.flows.to_str().unwrap(), "serve"])
        .env("FLOWCAST_STUDIO_URL", studio_url)
        .env("FLOWCAST_LISTEN", format!("127.0.0.1:{port}"))
        .env("TWILIO_ACCOUNT_SID", "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        .env("TWILIO_AUTH_TOKEN", "bench-token")
        .env("FLOWCAST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("serve's log file"));
    let child = cmd.spawn().expect("serve starts");
    ServeProcess { child, url: format!("http://127.0.0.1:{port}"), log: log.to_path_buf() }
}

impl ServeProcess {
    /// Waits until serve has a campaign in force (it answers before its
    /// first scan of the folder).
    async fn campaigns_in_force(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = client.get(format!("{}/api/campaigns", self.url)).send().await;
            if let Ok(r) = listed
                && let Ok(v) = r.json::<Value>().await
                && v["campaigns"].as_array().is_some_and(|c| !c.is_empty())
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited ({status}):\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "serve never listed the campaign:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines serve logged.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(url: &str) -> Value {
    // A blocking GET without another HTTP client: the bench has reqwest (async).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = url.to_string();
    std::thread::spawn(move || rt.block_on(async { reqwest::get(&url).await.unwrap().json::<Value>().await.unwrap() }))
        .join()
        .unwrap()
}

fn peak_rss_mb() -> f64 {
    proc_peak_rss_mb("self")
}

/// Peak RSS of process `pid` (or `self`) so far, in MB.
fn proc_peak_rss_mb(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn cpu_seconds() -> f64 {
    proc_cpu_seconds("self")
}

/// CPU time (user and system) of process `pid` (or `self`) so far, in seconds.
fn proc_cpu_seconds(pid: &str) -> f64 {
    let (user, kernel) = proc_cpu_split(pid);
    user + kernel
}

/// CPU time of process `pid` (or `self`) so far, in seconds: in user space
/// and in the kernel (system calls, page faults, and the loopback's TCP work
/// done on the process's behalf).
fn proc_cpu_split(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// CPU time so far of the PostgreSQL backends whose connections are named
/// `app` (the server must run on this machine).
async fn backends_cpu_seconds(app: &str) -> f64 {
    let Ok(url) = std::env::var("FLOWCAST_TEST_POSTGRES") else { return 0.0 };
    let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else { return 0.0 };
    let task = tokio::spawn(connection);
    let rows =
        client.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1", &[&app]).await.unwrap_or_default();
    drop(client);
    let _ = task.await;
    rows.iter().map(|r| proc_cpu_seconds(&r.get::<_, i32>(0).to_string())).sum()
}

/// The machine's load average over the last minute, as `uptime` shows it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

/// CPU time of every process on this machine named `postgres` (the server
/// and its backends, whoever they serve), in seconds: a difference of two
/// readings is the server's share of the machine in between, when it runs
/// here.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(String::from))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(|pid| proc_cpu_seconds(&pid))
        .sum()
}

/// Writes a CSV of `n` contacts with random valid numbers across regions.
fn generate_csv(path: &Path, n: usize, seed: u64) {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "phone,first_name,last_name,appointment_at,timezone").unwrap();
    let us_areas = [201, 212, 305, 312, 415, 503, 617, 646, 702, 713, 818, 917];
    let names = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Linus", "Margaret"];
    for i in 0..n {
        let (phone, zone) = match i % 4 {
            // +1 NPA NXX XXXX; exchanges 200-999 except N11.
            0 | 1 => {
                let area = us_areas[rng.random_range(0..us_areas.len())];
                let exchange = loop {
                    let e = rng.random_range(200..1000);
                    if e % 100 != 11 && e != 555 {
                        break e;
                    }
                };
                (format!("+1{area}{exchange}{:04}", rng.random_range(0..10_000)), "America/New_York")
            }
            // UK mobiles, +44 7400 000000 – +44 7999 999999.
            2 => (format!("+447{}{:06}", rng.random_range(400..1000), rng.random_range(0..1_000_000)), "Europe/London"),
            // German mobiles, +49 151 / 160 / 170 / 171 / 175 + 7 or 8 digits.
            _ => {
                let prefix = [151, 160, 170, 171, 175][rng.random_range(0..5)];
                (
                    format!("+49{prefix}{:07}{}", rng.random_range(0..10_000_000), rng.random_range(0..10)),
                    "Europe/Berlin",
                )
            }
        };
        writeln!(out, "{phone},{},Doe,2030-03-02 10:00,{zone}", names[i % names.len()]).unwrap();
    }
}

struct Workspace {
    _dir: tempfile::TempDir,
    folders: Folders,
    db: PathBuf,
}

fn workspace(rows: usize, extra: &str) -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    let campaigns = dir.path().join("campaigns");
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&campaigns).unwrap();
    std::fs::create_dir_all(&flows).unwrap();
    generate_csv(&campaigns.join("c.csv"), rows, 42);
    std::fs::write(
        campaigns.join("c.toml"),
        format!(
            "kind = \"reminder\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"c.csv\"\n{extra}\n[parameters]\nname = \"{{{{first_name}}}}\"\nappointment = \"{{{{appointment_at}}}}\"\n"
        ),
    )
    .unwrap();
    let db = dir.path().join("flowcast.db");
    Workspace { _dir: dir, folders: Folders { campaigns, flows }, db }
}

async fn create_run(ws: &Workspace, store: &Store, file: &str, key: &str) -> (flowcast::campaign::Campaign, i64) {
    let campaign = load_one(&ws.folders.campaigns.join(file), &ws.folders).unwrap_or_else(|e| panic!("{e}"));
    let now = Utc::now().timestamp_millis();
    let flow = FlowSid::parse(FLOW).unwrap();
    let run =
        store.create_run(new_run(&campaign, &flow, Trigger::Manual, key.into(), now), now).await.unwrap().unwrap();
    (campaign, run)
}

fn dispatcher(store: &Store, url: &str, account_rate: u32, concurrency: usize) -> Dispatcher<HttpStudio> {
    let studio = HttpStudio::new(StudioConfig {
        base_url: url.to_string(),
        credentials: Credentials::new("AC00000000000000000000000000000000", "bench"),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();
    let settings = DispatchSettings { concurrency, ..DispatchSettings::default() };
    Dispatcher::new(
        store.clone(),
        Arc::new(studio),
        Arc::new(SystemClock),
        settings,
        Arc::new(RateLimits::new(account_rate)),
    )
}

/// The scenario's ledger: the workspace's SQLite file, or with `--postgres`
/// a fresh schema on `FLOWCAST_TEST_POSTGRES` (`None` when it is unset).
async fn scenario_store(ws: &Workspace, args: &[String]) -> Option<Store> {
    if !args.iter().any(|a| a == "--postgres") {
        return Some(Store::open_path(&ws.db).await.unwrap());
    }
    let url = flowcast::store::postgres::test_ledger("postgres bench").await?;
    *BENCH_SCHEMA.lock().unwrap() = url.split("search_path%3D").nth(1).map(str::to_string);
    Some(Store::open(&flowcast::store::Ledger::parse(&url).unwrap()).await.unwrap())
}

/// The PostgreSQL schema a scenario made, dropped when it is done: a
/// million-row import leaves most of a gigabyte.
static BENCH_SCHEMA: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

async fn drop_bench_schema() {
    let Some(schema) = BENCH_SCHEMA.lock().unwrap().take() else { return };
    let Ok(url) = std::env::var("FLOWCAST_TEST_POSTGRES") else { return };
    let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else { return };
    let task = tokio::spawn(connection);
    if let Err(e) = client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await {
        eprintln!("bench schema {schema} left in place: {e}");
    }
    drop(client);
    let _ = task.await;
}

/// Claims per second on the ledger at `ledger` with `claimers` stores taking
/// batches of one run's `jobs` jobs and settling them as sent, no Studio call.
async fn claim_rate(ledger: &str, claimers: usize, jobs: usize) -> f64 {
    use flowcast::domain::{ContactLimits, JobOutcome};
    use flowcast::store::{Ledger, SettledJob};
    let address = Ledger::parse(ledger).unwrap();
    let ws = workspace(jobs, "");
    let store = Store::open(&address).await.unwrap();
    let (campaign, run) = create_run(&ws, &store, "c.toml", "claims").await;
    import_run(&store, &campaign, run, Utc::now().timestamp_millis(), async |_| {}).await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..claimers)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move {
                let store = Store::open(&address).await.unwrap();
                let mut taken = 0usize;
                loop {
                    let now = Utc::now().timestamp_millis();
                    let claimed = store.claim_due(run, now, 50, false, ContactLimits::default()).await.unwrap();
                    if claimed.is_empty() {
                        return taken;
                    }
                    taken += claimed.len();
                    let settled: Vec<SettledJob> = claimed
                        .iter()
                        .map(|j| SettledJob {
                            job_id: j.id,
                            outcome: JobOutcome::Sent { sid: format!("FN{:032x}", j.id) },
                            attempts_sent: 1,
                            at: now,
                        })
                        .collect();
                    store.record_outcomes(settled, Vec::new(), Duration::from_secs(60)).await.unwrap();
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

async fn scenario(name: &str, args: &[String]) -> Value {
    let s = sizes();
    match name {
        "simulator" => {
            let cap = arg(args, "--rate-cap").and_then(|c| c.parse().ok());
            // Executions end at once, so the simulator's own bookkeeping stays flat.
            let sim =
                Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), rate_cap: cap, ..SimConfig::default() })
                    .await
                    .unwrap();
            println!("LISTENING {}", sim.url());
            std::io::stdout().flush().unwrap();
            std::future::pending::<()>().await;
            unreachable!()
        }
        "import" => {
            let ws = workspace(s.import_rows, "default_region = \"US\"");
            let Some(store) = scenario_store(&ws, args).await else {
                return json!({ "skipped": "FLOWCAST_TEST_POSTGRES is unset" });
            };
            let (campaign, run) = create_run(&ws, &store, "c.toml", "import").await;
            let (cpu_before, postgres_before) = (cpu_seconds(), postgres_cpu_seconds());
            let started = Instant::now();
            let counts = import_run(&store, &campaign, run, Utc::now().timestamp_millis(), async |_| {}).await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            // The server's share, when the ledger is PostgreSQL: what of the
            // time was its work and what flowcast's.
            let postgres_cpu =
                if args.iter().any(|a| a == "--postgres") { postgres_cpu_seconds() - postgres_before } else { 0.0 };
            json!({
                "rows_per_s": counts.rows as f64 / secs, "seconds": secs, "imported": counts.imported,
                "rejected": counts.rejected, "peak_rss_mb": peak_rss_mb(), "cpu_s": cpu_seconds() - cpu_before,
                "postgres_cpu_s": postgres_cpu,
            })
        }
        "dispatch" => {
            let sim = SimProcess::start(None);
            let ws = workspace(s.dispatch_jobs, "");
            let store = Store::open_path(&ws.db).await.unwrap();
            let (campaign, run) = create_run(&ws, &store, "c.toml", "dispatch").await;
            import_run(&store, &campaign, run, Utc::now().timestamp_millis(), async |_| {}).await.unwrap();
            let d = dispatcher(&store, &sim.url, 1_000_000, 64);
            let cpu_before = cpu_seconds();
            let kernel_before = proc_cpu_split("self").1;
            let started = Instant::now();
            let end = d.run_to_end(run).await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu_before;
            let kernel = proc_cpu_split("self").1 - kernel_before;
            assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
            let created = sim.stats()["executions"].as_u64().unwrap_or(0);
            json!({
                "per_s": created as f64 / secs, "seconds": secs, "executions": created,
                "cpu_us_per_execution": cpu * 1e6 / created.max(1) as f64,
                "kernel_us_per_execution": kernel * 1e6 / created.max(1) as f64, "peak_rss_mb": peak_rss_mb(),
            })
        }
        "rate" => {
            let campaigns: usize = arg(args, "--campaigns").and_then(|c| c.parse().ok()).unwrap_or(1);
            let rate: u32 = arg(args, "--rate").and_then(|c| c.parse().ok()).unwrap_or(20);
            let seconds = rate_seconds(s, rate);
            let sim = SimProcess::start(Some(rate));
            // Enough contacts that no campaign runs dry before the time is up.
            let per_campaign = (rate as usize * seconds as usize) + 50;
            let ws = workspace(per_campaign * campaigns, "");
            let Some(store) = scenario_store(&ws, args).await else {
                return json!({ "skipped": "FLOWCAST_TEST_POSTGRES is unset" });
            };
            // Each campaign gets its own slice of the contacts.
            let csv = std::fs::read_to_string(ws.folders.campaigns.join("c.csv")).unwrap();
            let mut lines = csv.lines();
            let header = lines.next().unwrap().to_string();
            let rest: Vec<&str> = lines.collect();
            let mut runs = Vec::new();
            for k in 0..campaigns {
                let file = format!("c{k}.csv");
                let body = std::iter::once(header.as_str())
                    .chain(rest[k * per_campaign..(k + 1) * per_campaign].iter().copied())
                    .collect::<Vec<_>>()
                    .join("\n");
                std::fs::write(ws.folders.campaigns.join(&file), body + "\n").unwrap();
                let toml =
                    std::fs::read_to_string(ws.folders.campaigns.join("c.toml")).unwrap().replace("c.csv", &file);
                std::fs::write(ws.folders.campaigns.join(format!("c{k}.toml")), toml).unwrap();
                let (campaign, run) = create_run(&ws, &store, &format!("c{k}.toml"), &format!("rate{k}")).await;
                import_run(&store, &campaign, run, Utc::now().timestamp_millis(), async |_| {}).await.unwrap();
                runs.push(run);
            }
            // Requests in flight: 16 covers low rates; at 1,000/s and above a
            // loopback round trip and a claim take about a period each.
            // `FLOWCAST_BENCH_RATE_CONCURRENCY` sets it instead, to see what
            // bounds a row.
            let concurrency = std::env::var("FLOWCAST_BENCH_RATE_CONCURRENCY")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(if rate > 100 { 64 } else { 16 });
            // `--import-rows N`: another campaign's CSV of N rows is imported
            // into the same ledger while the creates go, as `serve` does when
            // a large campaign starts beside a running one.
            let import_rows: usize = arg(args, "--import-rows").and_then(|c| c.parse().ok()).unwrap_or(0);
            let big = if import_rows > 0 {
                generate_csv(&ws.folders.campaigns.join("big.csv"), import_rows, 7);
                let toml =
                    std::fs::read_to_string(ws.folders.campaigns.join("c.toml")).unwrap().replace("c.csv", "big.csv");
                std::fs::write(ws.folders.campaigns.join("big.toml"), toml).unwrap();
                Some(create_run(&ws, &store, "big.toml", "big").await)
            } else {
                None
            };
            let d = Arc::new(dispatcher(&store, &sim.url, rate, concurrency));
            let tasks: Vec<_> = runs
                .iter()
                .map(|&run| {
                    let d = Arc::clone(&d);
                    tokio::spawn(async move { d.run_to_end(run).await })
                })
                .collect();
            let big_run = big.as_ref().map(|(_, run)| *run);
            let importing = big.map(|(campaign, run)| {
                let store = store.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    import_run(&store, &campaign, run, Utc::now().timestamp_millis(), async |_| {}).await.unwrap();
                    started.elapsed().as_secs_f64()
                })
            });
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            d.shutdown_token().cancel();
            for t in tasks {
                let _ = t.await;
            }
            // How far the import got, and whether it was still going when
            // the time was up.
            let import_jobs = match big_run {
                Some(run) => Some(store.run_counts(run).await.unwrap().total()),
                None => None,
            };
            let import_seconds = match importing {
                Some(t) if t.is_finished() => t.await.ok(),
                Some(t) => {
                    t.abort();
                    None
                }
                None => None,
            };
            let mut times: Vec<DateTime<Utc>> = sim
                .executions()
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["date_created"].as_str().and_then(|t| t.parse().ok()))
                .collect();
            times.sort();
            let n = times.len();
            let span = if n > 1 { (times[n - 1] - times[0]).num_microseconds().unwrap_or(0) as f64 / 1e6 } else { 0.0 };
            // Busiest window of one second starting at any Execution.
            let mut max_in_1s = 0;
            let mut j = 0;
            for i in 0..n {
                while j < n && times[j] - times[i] < chrono::Duration::seconds(1) {
                    j += 1;
                }
                max_in_1s = max_in_1s.max(j - i);
            }
            json!({
                "mean_per_s": if span > 0.0 { (n - 1) as f64 / span } else { 0.0 },
                "max_in_1s": max_in_1s, "throttled": sim.stats()["throttled"], "executions": n,
                "margin_pct": d.limits().margin() * 100.0, "import_rows": import_rows,
                "import_seconds": import_seconds, "import_jobs": import_jobs,
            })
        }
        "first" => {
            let sim = SimProcess::start(None);
            let ws = workspace(s.first_contacts, "");
            let store = Store::open_path(&ws.db).await.unwrap();
            let d = dispatcher(&store, &sim.url, 1_000_000, 64);
            // The tick: the run is created and its import starts; the dispatcher
            // runs alongside, as `serve` does.
            let tick = Utc::now();
            let started = Instant::now();
            let (campaign, run) = create_run(&ws, &store, "c.toml", "first").await;
            let import = {
                let store = store.clone();
                tokio::spawn(async move {
                    import_run(&store, &campaign, run, Utc::now().timestamp_millis(), async |_| {}).await
                })
            };
            let end = d.run_to_end(run).await.unwrap();
            import.await.unwrap().unwrap();
            let secs = started.elapsed().as_secs_f64();
            assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
            let stats = sim.stats();
            let first: DateTime<Utc> = stats["first_created"].as_str().unwrap().parse().unwrap();
            let created = stats["executions"].as_u64().unwrap_or(0);
            json!({
                "first_ms": (first - tick).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                "total_s": secs, "per_s": created as f64 / secs, "executions": created, "peak_rss_mb": peak_rss_mb(),
            })
        }
        "phones" => {
            // How long phone normalisation alone takes, warm (for the README).
            let ws = workspace(200_000, "");
            let csv = std::fs::read_to_string(ws.folders.campaigns.join("c.csv")).unwrap();
            let raw: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
            let region = flowcast::domain::parse_region("US");
            for p in raw.iter().take(20_000) {
                let _ = flowcast::domain::Phone::parse(p, region);
            }
            let started = Instant::now();
            let mut valid = 0;
            for p in &raw {
                valid += flowcast::domain::Phone::parse(p, region).is_ok() as usize;
            }
            let secs = started.elapsed().as_secs_f64();
            json!({ "per_s": raw.len() as f64 / secs, "us_each": secs * 1e6 / raw.len() as f64, "valid": valid, "total": raw.len() })
        }
        "push" => {
            let sim = SimProcess::start(None);
            let ws = workspace(1, "");
            std::fs::remove_file(ws.folders.campaigns.join("c.toml")).unwrap();
            std::fs::write(
                ws.folders.campaigns.join("parcels.toml"),
                format!(
                    "kind = \"delivery-notice\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ntrigger = \"api\"\n[parameters]\norder = \"{{{{order}}}}\"\n"
                ),
            )
            .unwrap();
            let log = ws.db.with_extension("serve.log");
            let mut serve = spawn_serve(
                ws.db.to_str().unwrap(),
                &ws.folders,
                &sim.url,
                &[("FLOWCAST_RATE", "100"), ("FLOWCAST_LOG", "error")],
                &log,
            );
            let base = serve.url.clone();
            let client = reqwest::Client::new();
            serve.campaigns_in_force(&client).await;
            let pushes = if std::env::var("FLOWCAST_BENCH_SMOKE").is_ok() { 5 } else { 100 };
            let mut latencies = Vec::with_capacity(pushes);
            let stats = format!("{}/_simulator/stats", sim.url);
            let created = async || -> u64 {
                let v: Value = client.get(&stats).send().await.unwrap().json().await.unwrap();
                v["executions"].as_u64().unwrap_or(0)
            };
            for i in 0..pushes {
                let before = created().await;
                let started = Instant::now();
                let answer = client
                    .post(format!("{base}/api/campaigns/parcels/contacts"))
                    .json(&json!({"phone": format!("+1201555{i:04}"), "order": format!("O{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success(), "push {i}: {}", answer.status());
                while created().await <= before {
                    assert!(started.elapsed() < Duration::from_secs(10), "push {i} never became an Execution");
                }
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                // More than a rate slot apart, so each push finds one free.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(serve);
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            json!({ "pushes": pushes, "median_ms": at(0.5), "p95_ms": at(0.95), "max_ms": at(1.0) })
        }
        "cluster" => {
            let instances: usize = arg(args, "--instances").and_then(|c| c.parse().ok()).unwrap_or(1);
            let Some(ledger) = flowcast::store::postgres::test_ledger("cluster bench").await else {
                return json!({ "skipped": "FLOWCAST_TEST_POSTGRES is unset" });
            };
            let contacts = if std::env::var("FLOWCAST_BENCH_SMOKE").is_ok() { 500 } else { 20_000 };
            let load_before = load_average();
            let claims_per_s = claim_rate(&ledger, instances, contacts).await;
            // A fresh ledger for the end-to-end part.
            let ledger = flowcast::store::postgres::test_ledger("cluster bench").await.unwrap();
            let sim = SimProcess::start(None);
            let ws = workspace(contacts, "");
            // The serves' connections carry a name of their own, so that the
            // PostgreSQL backends working for them can be told from others'.
            let app = format!("flowcast-bench-{}", std::process::id());
            let serve_ledger = format!("{ledger}&application_name={app}");
            let postgres_cpu_before = postgres_cpu_seconds();
            let sim_cpu_before = proc_cpu_seconds(&sim.child.id().to_string());
            let started = Instant::now();
            let mut serves: Vec<ServeProcess> = (0..instances)
                .map(|i| {
                    let name = format!("bench-{i}");
                    let log = ws.db.with_file_name(format!("{name}.log"));
                    spawn_serve(
                        &serve_ledger,
                        &ws.folders,
                        &sim.url,
                        &[("FLOWCAST_INSTANCE", &name), ("FLOWCAST_RATE", "10000"), ("FLOWCAST_CONCURRENCY", "64")],
                        &log,
                    )
                })
                .collect();
            let client = reqwest::Client::new();
            for serve in &mut serves {
                serve.campaigns_in_force(&client).await;
            }
            // Done when the one-off run has ended: some generated numbers are
            // invalid on purpose, so fewer Executions than contacts are made.
            let deadline = Instant::now() + Duration::from_secs(600);
            let run = loop {
                let runs = client.get(format!("{}/api/runs", serves[0].url)).send().await;
                if let Ok(r) = runs
                    && let Ok(v) = r.json::<Value>().await
                    && let Some(run) = v["runs"].get(0)
                    && matches!(run["state"].as_str(), Some("finished" | "cancelled"))
                {
                    break run.clone();
                }
                if Instant::now() > deadline {
                    for s in &serves {
                        eprintln!(
                            "cluster: serve at {} did not finish the run; its log ends:\n{}",
                            s.url,
                            s.log_tail()
                        );
                    }
                    break Value::Null;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let wall = started.elapsed().as_secs_f64();
            let serve_cpu: Vec<f64> = serves.iter().map(|s| proc_cpu_seconds(&s.child.id().to_string())).collect();
            let serve_rss: Vec<f64> = serves.iter().map(|s| proc_peak_rss_mb(&s.child.id().to_string())).collect();
            let backends_cpu = backends_cpu_seconds(&app).await;
            let postgres_cpu = postgres_cpu_seconds() - postgres_cpu_before;
            let sim_cpu = proc_cpu_seconds(&sim.child.id().to_string()) - sim_cpu_before;
            drop(serves);
            let mut times: Vec<DateTime<Utc>> = sim
                .executions()
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["date_created"].as_str().and_then(|t| t.parse().ok()))
                .collect();
            times.sort();
            let n = times.len();
            let span = if n > 1 { (times[n - 1] - times[0]).num_microseconds().unwrap_or(0) as f64 / 1e6 } else { 0.0 };
            json!({
                "contacts": contacts, "imported": run["imported"], "state": run["state"], "executions": n,
                "executions_per_s": if span > 0.0 { (n - 1) as f64 / span } else { 0.0 },
                "send_seconds": span, "wall_seconds": wall,
                "serve_cpu_s": serve_cpu, "serve_peak_rss_mb": serve_rss,
                "backends_cpu_s": backends_cpu, "postgres_cpu_s": postgres_cpu, "simulator_cpu_s": sim_cpu,
                "claims_per_s": claims_per_s, "load_before": load_before, "load_after": load_average(),
            })
        }
        "peer" => peer::scenario(),
        "scale" => scale::scenario().await,
        other => json!({ "error": format!("unknown scenario {other}") }),
    }
}
