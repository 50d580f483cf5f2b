//! `peer` (by name only): `flowcast run` against the loop it replaces, on one
//! Studio simulator in its own process (429 above 10,000 creates a second).
//!
//! 1. `flowcast run` (the release binary, as a user starts it: start-up,
//!    import and dispatch included) of a 20,000-contact campaign at an account
//!    and campaign rate of 10,000/s.
//! 2. `benches/peer_loop.py`: the official `twilio` helper library, one
//!    `executions.create` per row, sequential, over the same contacts (the
//!    rows flowcast imports: valid numbers, first of each phone) with the same
//!    Parameters. It runs from a virtualenv the scenario makes with
//!    `python3 -m venv` and `pip install twilio` (in `target/peer-venv`, or the
//!    Python named by `FLOWCAST_PEER_PYTHON`); without one, or in a smoke run
//!    (which installs nothing), this part says it skipped.
//!
//! Start-up, for both, is the time from spawning the process to the first
//! Execution the simulator records (both clocks are this machine's). flowcast
//! is on target when its wall time is within start-up plus 1.15 × 20,000 /
//! 10,000 s. To tell what bounds it, its import time (the run's state in the
//! ledger, read while it runs) and its achieved rate while importing and
//! after are reported apart; `FLOWCAST_BENCH_PEER_CONCURRENCY` sets flowcast's
//! requests in flight (its default otherwise).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{FLOW, SimProcess, Workspace, load_average, proc_cpu_seconds, workspace};

const RATE: u32 = 10_000;
const FROM: &str = "+15017122661";

fn contacts() -> usize {
    if std::env::var("FLOWCAST_BENCH_SMOKE").is_ok() { 500 } else { 20_000 }
}

/// The table's rows for the scenario's result.
pub(super) fn rows(r: &Value) -> Vec<(String, String, String, String)> {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let contacts = r["contacts"].as_u64().unwrap_or(0);
    let ideal = contacts as f64 / f64::from(RATE);
    let mut rows = vec![(
        format!("flowcast run, {contacts} contacts at {RATE}/s (account and campaign)"),
        format!("{:.2} s wall", f("flowcast_s")),
        format!(
            "{} Executions ({}); start-up {:.0} ms (spawn → first Execution; the run in the ledger after {:.0} ms; \
             `--version` alone {:.1} ms); \
             import {:.2} s; sends first → last {:.2} s at {:.0}/s ({:.0}/s while importing, {:.0}/s after); \
             last Execution → exit {:.0} ms; CPU s: flowcast {:.2}, simulator {:.2}; 429s {}; load {} → {}",
            r["flowcast_executions"],
            r["exit"].as_str().unwrap_or("?"),
            f("startup_ms"),
            f("run_created_ms"),
            f("version_ms"),
            f("import_s"),
            f("send_span_s"),
            f("achieved_per_s"),
            f("per_s_importing"),
            f("per_s_after_import"),
            f("tail_ms"),
            f("flowcast_cpu_s"),
            f("simulator_cpu_s"),
            r["throttled"],
            r["load_before"].as_str().unwrap_or("?"),
            r["load_mid"].as_str().unwrap_or("?"),
        ),
        format!(
            "≤ start-up + 1.15 × {ideal:.1} s = {:.2} s: {}",
            f("target_s"),
            if r["target_met"].as_bool() == Some(true) { "met" } else { "missed" }
        ),
    )];
    if let Some(reason) = r["peer_skipped"].as_str() {
        rows.push(("peer loop (Python, twilio helper)".into(), "skipped".into(), reason.into(), String::new()));
    } else {
        rows.push((
            format!("peer loop: Python, twilio {}, one create per row", r["twilio"].as_str().unwrap_or("?")),
            format!("{:.2} s wall", f("peer_s")),
            format!(
                "{} Executions for {} rows, {} failed; same phones as flowcast: {}; start-up {:.0} ms; {:.0}/s; \
                 CPU s: simulator {:.2}; load {} → {}",
                r["peer_executions"],
                r["peer_rows"],
                r["peer_failed"],
                if r["same_phones"].as_bool() == Some(true) { "yes" } else { "no" },
                f("peer_startup_ms"),
                f("peer_per_s"),
                f("peer_simulator_cpu_s"),
                r["load_mid"].as_str().unwrap_or("?"),
                r["load_after"].as_str().unwrap_or("?"),
            ),
            format!("peer / flowcast: {:.1}×", f("ratio")),
        ));
    }
    rows
}

pub(super) fn scenario() -> Value {
    let contacts = contacts();
    let sim = SimProcess::start(Some(RATE));
    let sim_pid = sim.child.id().to_string();
    let ws = workspace(contacts, &format!("rate = {RATE}"));
    let peer_csv = ws.db.with_file_name("peer.csv");
    let kept = write_peer_csv(&ws.folders.campaigns.join("c.csv"), &peer_csv);
    let load_before = load_average();

    let version_ms = version_ms();
    let sim_cpu_before = proc_cpu_seconds(&sim_pid);
    let flowcast = run_flowcast(&ws, &sim.url);
    let sim_cpu_flowcast = proc_cpu_seconds(&sim_pid) - sim_cpu_before;
    let load_mid = load_average();
    let throttled = sim.stats()["throttled"].clone();
    let executions = sim.executions();
    let all = executions.as_array().cloned().unwrap_or_default();
    let ours = &all[..];
    let times = created_times(ours);
    let n = times.len();
    let startup = times.first().map_or(0.0, |t| seconds_between(flowcast.spawned, *t));
    let span = if n > 1 { seconds_between(times[0], times[n - 1]) } else { 0.0 };
    let tail = times.last().map_or(0.0, |t| seconds_between(*t, flowcast.exited));
    // Sends before the import's end shared the machine with the import;
    // sends after it had the dispatcher alone.
    let (importing, after) = match (flowcast.imported, times.first()) {
        (Some(end), Some(&first)) => {
            let before = times.iter().filter(|t| **t <= end).count();
            let during = if before > 0 { per_s(before, seconds_between(first, end)) } else { 0.0 };
            let from = end.max(first);
            let after = if n > before { per_s(n - before, seconds_between(from, times[n - 1])) } else { 0.0 };
            (during, after)
        }
        _ => (0.0, 0.0),
    };
    let since_spawn = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| seconds_between(flowcast.spawned, t));
    let ideal = contacts as f64 / f64::from(RATE);
    let target = startup + 1.15 * ideal;
    let mut result = json!({
        "contacts": contacts, "valid": kept,
        "flowcast_s": flowcast.wall, "flowcast_executions": n, "exit": flowcast.exit,
        "startup_ms": startup * 1000.0, "version_ms": version_ms * 1000.0,
        "run_created_ms": since_spawn(flowcast.run_seen) * 1000.0,
        "import_s": since_spawn(flowcast.imported) - since_spawn(flowcast.run_seen),
        "send_span_s": span, "achieved_per_s": per_s(n.saturating_sub(1), span),
        "per_s_importing": importing, "per_s_after_import": after, "tail_ms": tail * 1000.0,
        "flowcast_cpu_s": flowcast.cpu, "simulator_cpu_s": sim_cpu_flowcast, "throttled": throttled,
        "target_s": target, "target_met": flowcast.wall <= target,
        "load_before": load_before, "load_mid": load_mid,
    });
    if !flowcast.exit.starts_with("exit status: 0") {
        eprintln!("peer: flowcast run ended with {}; its output ends:\n{}", flowcast.exit, flowcast.tail);
    }

    let python = match python() {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("peer: the Python loop is skipped: {reason}");
            result["peer_skipped"] = reason.into();
            result["load_after"] = load_average().into();
            return result;
        }
    };
    let sim_cpu_before = proc_cpu_seconds(&sim_pid);
    let peer = run_peer(&python, &peer_csv, &sim.url);
    let sim_cpu_peer = proc_cpu_seconds(&sim_pid) - sim_cpu_before;
    let all = sim.executions().as_array().cloned().unwrap_or_default();
    let theirs = &all[n.min(all.len())..];
    let peer_times = created_times(theirs);
    let m = peer_times.len();
    let phones = |list: &[Value]| -> HashSet<String> {
        list.iter().filter_map(|e| e["to"].as_str().map(String::from)).collect()
    };
    let peer_span = if m > 1 { seconds_between(peer_times[0], peer_times[m - 1]) } else { 0.0 };
    result["peer_s"] = peer.wall.into();
    result["peer_executions"] = m.into();
    result["peer_rows"] = peer.report["rows"].clone();
    result["peer_failed"] = peer.report["failed"].clone();
    result["peer_loop_s"] = peer.report["loop_s"].clone();
    result["twilio"] = peer.report["twilio"].clone();
    result["peer_exit"] = peer.exit.into();
    result["peer_startup_ms"] = (peer_times.first().map_or(0.0, |t| seconds_between(peer.spawned, *t)) * 1000.0).into();
    result["peer_per_s"] = per_s(m.saturating_sub(1), peer_span).into();
    result["peer_simulator_cpu_s"] = sim_cpu_peer.into();
    result["same_phones"] = (phones(ours) == phones(theirs)).into();
    result["ratio"] = (if flowcast.wall > 0.0 { peer.wall / flowcast.wall } else { 0.0 }).into();
    result["load_after"] = load_average().into();
    result
}

/// Writes the rows of `csv` that flowcast imports (a valid number, the first
/// row of each phone) to `out`, unchanged; returns how many.
fn write_peer_csv(csv: &Path, out: &Path) -> usize {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    writeln!(w, "{}", lines.next().unwrap()).unwrap();
    let mut seen = HashSet::new();
    for line in lines {
        let raw = line.split(',').next().unwrap_or("");
        if let Ok(phone) = flowcast::domain::Phone::parse(raw, None)
            && seen.insert(phone.as_str().to_string())
        {
            writeln!(w, "{line}").unwrap();
        }
    }
    seen.len()
}

struct Finished {
    spawned: DateTime<Utc>,
    exited: DateTime<Utc>,
    wall: f64,
    /// CPU seconds at the last look before it exited (every 10 ms).
    cpu: f64,
    exit: String,
    tail: String,
    /// When the run's row was first seen in the ledger, and when it was first
    /// seen past `expanding` (its import done); looked at every 10 ms.
    run_seen: Option<DateTime<Utc>>,
    imported: Option<DateTime<Utc>>,
}

/// A command with none of the shell's flowcast or Twilio settings, which
/// would change what is measured, and the bench's fake credentials.
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOWCAST_") || k.starts_with("TWILIO_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("TWILIO_ACCOUNT_SID", "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").env("TWILIO_AUTH_TOKEN", "bench-token");
    cmd
}

/// `flowcast --version`, the process's own start and exit cost: the median
/// of five.
fn version_ms() -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let _ = clean(env!("CARGO_BIN_EXE_flowcast")).arg("--version").stdout(Stdio::null()).status();
            started.elapsed().as_secs_f64()
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn run_flowcast(ws: &Workspace, studio_url: &str) -> Finished {
    let log = ws.db.with_file_name("run.log");
    let mut cmd = clean(env!("CARGO_BIN_EXE_flowcast"));
    cmd.args(["--db", ws.db.to_str().unwrap(), "--campaigns", ws.folders.campaigns.to_str().unwrap()])
        .args(["--flows", ws.folders.flows.to_str().unwrap(), "run", "c"])
        .env("FLOWCAST_STUDIO_URL", studio_url)
        .env("FLOWCAST_RATE", RATE.to_string());
    if let Ok(c) = std::env::var("FLOWCAST_BENCH_PEER_CONCURRENCY") {
        cmd.env("FLOWCAST_CONCURRENCY", c);
    }
    let out = std::fs::File::create(&log).unwrap();
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    let (mut run_seen, mut imported) = (None, None);
    let mut ledger = None;
    let finished = watch(cmd, || {
        if imported.is_some() {
            return;
        }
        // Read-only and one short statement a time: WAL lets flowcast write on.
        if ledger.is_none() {
            ledger = rusqlite::Connection::open_with_flags(&ws.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok();
        }
        let Some(conn) = &ledger else { return };
        let state: Option<String> = conn.query_row("SELECT state FROM runs WHERE id = 1", [], |r| r.get(0)).ok();
        let Some(state) = state else { return };
        let now = Utc::now();
        run_seen.get_or_insert(now);
        if state != "expanding" {
            imported = Some(now);
        }
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    Finished { tail: lines[lines.len().saturating_sub(10)..].join("\n"), run_seen, imported, ..finished }
}

/// Runs `cmd` to its end, looking at its CPU time (and calling `look`) every
/// 10 ms.
fn watch(mut cmd: Command, mut look: impl FnMut()) -> Finished {
    let spawned = Utc::now();
    let started = Instant::now();
    let mut child = cmd.spawn().expect("the command starts");
    let pid = child.id().to_string();
    let mut cpu = 0.0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        cpu = proc_cpu_seconds(&pid);
        look();
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed().as_secs_f64();
    let exit = status.to_string();
    Finished { spawned, exited: Utc::now(), wall, cpu, exit, tail: String::new(), run_seen: None, imported: None }
}

struct PeerRun {
    spawned: DateTime<Utc>,
    wall: f64,
    exit: String,
    report: Value,
}

fn run_peer(python: &Path, csv: &Path, studio_url: &str) -> PeerRun {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer_loop.py");
    let out = csv.with_file_name("peer.out");
    let mut cmd = clean(python);
    cmd.arg(script).arg(csv).args([FLOW, FROM, studio_url]);
    cmd.stdout(std::fs::File::create(&out).unwrap()).stderr(Stdio::inherit());
    let finished = watch(cmd, || {});
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let report = text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()).unwrap_or(Value::Null);
    PeerRun { spawned: finished.spawned, wall: finished.wall, exit: finished.exit, report }
}

/// A Python that can import the `twilio` helper: `FLOWCAST_PEER_PYTHON`, or
/// the virtualenv in `target/peer-venv`, made and filled here when missing
/// (never in a smoke run: it installs nothing).
fn python() -> Result<PathBuf, String> {
    let has_twilio = |p: &Path| {
        Command::new(p)
            .args(["-c", "import twilio.rest"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if let Ok(p) = std::env::var("FLOWCAST_PEER_PYTHON") {
        let p = PathBuf::from(p);
        return if has_twilio(&p) {
            Ok(p)
        } else {
            Err(format!("FLOWCAST_PEER_PYTHON ({}) cannot import twilio", p.display()))
        };
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peer-venv");
    let python = venv.join("bin/python");
    if has_twilio(&python) {
        return Ok(python);
    }
    if std::env::var("FLOWCAST_BENCH_SMOKE").is_ok() {
        return Err(format!("no virtualenv with twilio at {}, and a smoke run installs nothing", venv.display()));
    }
    eprintln!("peer: making {} (python3 -m venv, pip install twilio)", venv.display());
    let step = |cmd: &mut Command, what: &str| -> Result<(), String> {
        // pip's chatter goes to the bench's stderr, not into its result.
        let status = cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit()).status();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{what} failed ({s})")),
            Err(e) => Err(format!("{what} could not start: {e}")),
        }
    };
    step(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
    step(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "twilio"]), "pip install twilio")?;
    if has_twilio(&python) { Ok(python) } else { Err("twilio does not import after pip install".into()) }
}

fn created_times(executions: &[Value]) -> Vec<DateTime<Utc>> {
    let mut times: Vec<DateTime<Utc>> =
        executions.iter().filter_map(|e| e["date_created"].as_str().and_then(|t| t.parse().ok())).collect();
    times.sort();
    times
}

fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6
}

fn per_s(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
}
