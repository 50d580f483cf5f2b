//! What commands print: dry runs, status, reports.

use std::io::Write;

use anyhow::anyhow;
use serde_json::json;

use super::{CommandResult, Failure, folders, open_store};
use crate::campaign::{self, Campaign};
use crate::config::Config;
use crate::domain::JobState;
use crate::schedule::{Clock, SystemClock};
use crate::store::Store;
use crate::views;

/// Jobs read from the ledger per page while a report streams.
const REPORT_PAGE: u32 = 1_000;

/// `--dry-run`: counts, first rows, due times; nothing is called or written.
pub(super) async fn dry_run(config: &Config, campaign: &Campaign) -> CommandResult {
    let suppressed = super::suppressed_for(config, campaign).await?;
    let dry = crate::runs::dry_run(campaign, 5, SystemClock.now(), &suppressed).map_err(Failure::input)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "dry run of {} ({}): nothing will be sent", campaign.name, campaign.kind);
    for w in &campaign.warnings {
        let _ = writeln!(out, "{}:{}: warning: {}", w.file.display(), w.line, w.message);
    }
    let expiring = if dry.would_expire > 0 { format!(", {} would expire", dry.would_expire) } else { String::new() };
    let suppressed = if dry.suppressed > 0 { format!(", {} suppressed", dry.suppressed) } else { String::new() };
    let _ = writeln!(
        out,
        "{} rows: {} would be sent{expiring}{suppressed}, {} rejected, {} duplicates",
        dry.counts.rows,
        dry.counts.imported - dry.would_expire - dry.suppressed,
        dry.counts.rejected,
        dry.counts.duplicates
    );
    let flow = match &campaign.flow {
        campaign::FlowRef::Sid(s) => s.to_string(),
        campaign::FlowRef::Name(n) => format!("{n} (flows/{n}.json)"),
    };
    let _ = writeln!(out, "flow {flow}, from {}, on_conflict {}", campaign.from.as_str(), campaign.on_conflict.name());
    match (dry.earliest_due, dry.latest_due) {
        (Some(a), Some(b)) => {
            let _ = writeln!(out, "due from {} to {}", a.to_rfc3339(), b.to_rfc3339());
        }
        _ => {
            let _ = writeln!(out, "due: at once");
        }
    }
    for spec in &dry.first {
        let due = spec.due_at.map_or("now".to_string(), |d| d.to_rfc3339());
        let _ = writeln!(
            out,
            "  line {:>5}  {}  due {}  Parameters={}",
            spec.line,
            spec.phone,
            due,
            spec.parameters.to_object().unwrap_or_else(|e| e.to_string().into())
        );
    }
    for (r, outcome) in dry.refused.iter().take(20) {
        let _ = writeln!(
            out,
            "{}:{}: {outcome}: {}",
            campaign.contacts.as_deref().unwrap_or(&campaign.source).display(),
            r.line,
            r.reason
        );
    }
    if dry.refused.len() > 20 {
        let _ = writeln!(out, "… and {} more refused rows", dry.refused.len() - 20);
    }
    Ok(0)
}

/// Prints up to `limit` rejected or duplicate rows of a run's import.
pub(super) async fn print_refused_rows(store: &Store, run_id: i64, limit: usize) {
    let Ok(rows) = store.refused_rows(run_id).await else {
        return;
    };
    let source = store.get_run(run_id).await.map(|r| r.campaign).unwrap_or_default();
    for row in rows.iter().take(limit) {
        eprintln!("{source}: contacts line {}: {}: {}", row.line, row.outcome, row.reason);
    }
    if rows.len() > limit {
        eprintln!("… and {} more; `flowcast report {run_id}` lists them all", rows.len() - limit);
    }
}

/// `flowcast status [CAMPAIGN] [--json]`
pub(super) async fn status(config: &Config, only: Option<&str>, as_json: bool) -> CommandResult {
    // The numbering metadata (for the campaign files' `from` numbers) loads
    // on a thread of its own while the ledger is opened and read: it costs as
    // much as parsing hundreds of campaign files.
    std::thread::spawn(crate::domain::Phone::load_metadata);
    let store = open_store(config).await?;
    let now = SystemClock.now();
    let mut runs = Vec::new();
    for run in store.list_runs(only, 50).await.map_err(Failure::input)? {
        let (counts, outcomes) =
            crate::runs::summarise(&store, &run, now.timestamp_millis()).await.map_err(Failure::input)?;
        runs.push(views::run(&run, &counts, &outcomes));
    }
    let outbox = store.outbox_counts().await.map_err(Failure::input)?;
    let instances: Vec<serde_json::Value> = store
        .instances(now.timestamp_millis())
        .await
        .map_err(Failure::input)?
        .iter()
        .map(|i| {
            json!({
                "name": i.name, "leader": i.leader, "seen_at": views::time(i.seen_at),
                "address": i.address, "campaigns_differ": i.differs,
            })
        })
        .collect();
    let loaded = campaign::load_folder(&folders(config))
        .map_err(|e| Failure::input(anyhow!("campaigns folder {}: {e}", config.campaigns.display())))?;
    let mut campaigns = Vec::new();
    for c in loaded.campaigns.iter().filter(|c| only.is_none_or(|o| o == c.name)) {
        let next = c.schedule.as_ref().and_then(|s| s.next_fire(c.timezone, now));
        let mut summary = c.summary(next);
        summary["status"] = json!(if c.enabled { "enabled" } else { "disabled" });
        campaigns.push(summary);
    }
    let refused: Vec<_> = loaded
        .refused
        .iter()
        .filter(|(p, _)| only.is_none_or(|o| p.file_stem().is_some_and(|s| s == o)))
        .map(|(p, e)| json!({ "file": p.display().to_string(), "status": "refused", "errors": e.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>() }))
        .collect();
    if as_json {
        let mut body = json!({ "campaigns": campaigns, "refused": refused, "runs": runs, "notify": outbox });
        if store.is_shared() {
            body["instances"] = json!(instances);
        }
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "CAMPAIGNS");
    if campaigns.is_empty() && refused.is_empty() {
        let _ = writeln!(out, "  (none in {})", config.campaigns.display());
    }
    for c in &campaigns {
        let next = match (&c["next_fire_local"], &c["next_fire_utc"]) {
            (serde_json::Value::String(l), serde_json::Value::String(u)) => {
                format!("next {l} ({u})")
            }
            _ => "runs once when its file appears".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<28} {:<16} {:<8} {}",
            c["name"].as_str().unwrap_or_default(),
            c["kind"].as_str().unwrap_or_default(),
            c["status"].as_str().unwrap_or_default(),
            next
        );
    }
    for r in &refused {
        let _ = writeln!(out, "  {:<28} refused", r["file"].as_str().unwrap_or_default());
        for e in r["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "      {}", e.as_str().unwrap_or_default());
        }
    }
    let _ = writeln!(out, "RUNS");
    if runs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for r in &runs {
        let jobs = r["jobs"].as_object().cloned().unwrap_or_default();
        let counts: Vec<String> = JobState::ALL
            .iter()
            .filter_map(|s| jobs.get(s.as_str()).and_then(|v| v.as_i64()).map(|n| format!("{s} {n}")))
            .collect();
        let _ = writeln!(
            out,
            "  #{:<5} {:<28} {:<10} {:>5.1}%  {}{}",
            r["id"],
            r["campaign"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["progress"].as_f64().unwrap_or_default() * 100.0,
            counts.join(", "),
            r["reason"].as_str().map(|s| format!("  ({s})")).unwrap_or_default()
        );
        for (name, summary) in r["outcomes"].as_object().into_iter().flatten() {
            let _ = writeln!(out, "         {name}: {}", outcome_line(summary));
        }
    }
    if store.is_shared() {
        let _ = writeln!(out, "INSTANCES");
        if instances.is_empty() {
            let _ = writeln!(out, "  (none live)");
        }
        for i in &instances {
            let differs = i["campaigns_differ"].as_array().filter(|d| !d.is_empty()).map(|d| {
                let names: Vec<&str> = d.iter().filter_map(|v| v.as_str()).collect();
                format!("  campaign files differ from the version in force: {}", names.join(", "))
            });
            let _ = writeln!(
                out,
                "  {:<28} {:<8} seen {}{}",
                i["name"].as_str().unwrap_or_default(),
                if i["leader"].as_bool() == Some(true) { "leader" } else { "" },
                i["seen_at"].as_str().unwrap_or_default(),
                differs.unwrap_or_default()
            );
        }
    }
    if outbox != Default::default() {
        let _ = writeln!(out, "EVENTS");
        let _ = writeln!(
            out,
            "  {} delivered, {} waiting, {} given up{}",
            outbox.delivered,
            outbox.pending,
            outbox.gave_up,
            if outbox.gave_up > 0 { " (GET /api/outbox?state=gave_up lists them)" } else { "" }
        );
    }
    Ok(0)
}

/// One outcome field's summary on one line: answers, the most common values,
/// the mean and NPS where they apply, and how many gave no answer.
fn outcome_line(summary: &serde_json::Value) -> String {
    let mut values: Vec<(String, i64)> = summary["values"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(v, n)| (v.clone(), n.as_i64().unwrap_or_default()))
        .collect();
    let answers: i64 = values.iter().map(|(_, n)| n).sum();
    values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut parts = vec![format!("{answers} answer(s)")];
    if !values.is_empty() {
        let top: Vec<String> = values.iter().take(5).map(|(v, n)| format!("{v} ×{n}")).collect();
        let more = if values.len() > 5 { format!(", … {} more", values.len() - 5) } else { String::new() };
        parts.push(format!("{}{more}", top.join(", ")));
    }
    if let Some(mean) = summary["mean"].as_f64() {
        parts.push(format!("mean {mean:.2}"));
    }
    if let Some(nps) = summary["nps"].as_f64() {
        parts.push(format!("NPS {nps:.0}"));
    }
    parts.push(format!("no answer {}", summary["no_answer"].as_i64().unwrap_or_default()));
    parts.join("; ")
}

/// Neutralises a CSV cell that a spreadsheet would run as a formula. E.164
/// numbers (`+` and digits) are left as they are: they are not formulas.
pub(crate) fn csv_safe(cell: &str) -> String {
    let is_phone = cell.len() > 1 && cell.starts_with('+') && cell[1..].bytes().all(|b| b.is_ascii_digit());
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') if !is_phone => format!("'{cell}"),
        _ => cell.to_string(),
    }
}

/// `flowcast report RUN [--format csv|json]`: one row per job, then the import's
/// rejected and duplicate rows, streamed page by page from the ledger.
pub(super) async fn report(config: &Config, run_id: i64, as_json: bool) -> CommandResult {
    let store = open_store(config).await?;
    let run = store.get_run(run_id).await.map_err(Failure::input)?;
    let refused = store.refused_rows(run_id).await.map_err(Failure::input)?;
    let stdout = std::io::stdout();
    let io = |e: std::io::Error| Failure::input(anyhow!("writing the report: {e}"));
    let mut after = 0;
    if as_json {
        // JSON lines would be easier to stream, but a report is one document: an
        // array written element by element.
        let mut out = std::io::BufWriter::new(stdout.lock());
        out.write_all(b"[").map_err(io)?;
        let mut first = true;
        let mut element = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>, value: serde_json::Value| {
            if !first {
                out.write_all(b",")?;
            }
            first = false;
            out.write_all(b"\n")?;
            serde_json::to_writer(&mut *out, &value)?;
            Ok::<(), std::io::Error>(())
        };
        loop {
            let page = store.jobs_page(run_id, None, after, REPORT_PAGE).await.map_err(Failure::input)?;
            for j in &page {
                element(&mut out, views::job(j)).map_err(io)?;
            }
            match page.last() {
                Some(last) if page.len() == REPORT_PAGE as usize => after = last.id,
                _ => break,
            }
        }
        for row in refused {
            let value = json!({ "run": run.id, "job": null, "line": row.line, "phone": row.raw_phone, "state": row.outcome, "reason": row.reason });
            element(&mut out, value).map_err(io)?;
        }
        out.write_all(b"\n]\n").map_err(io)?;
        out.flush().map_err(io)?;
    } else {
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(stdout.lock()));
        let columns = views::report_columns(&run.outcomes);
        w.write_record(&columns).map_err(|e| io(e.into()))?;
        loop {
            let page = store.jobs_page(run_id, None, after, REPORT_PAGE).await.map_err(Failure::input)?;
            for j in &page {
                w.write_record(views::job_cells(j, &run.outcomes).iter().map(|c| csv_safe(c)))
                    .map_err(|e| io(e.into()))?;
            }
            match page.last() {
                Some(last) if page.len() == REPORT_PAGE as usize => after = last.id,
                _ => break,
            }
        }
        for row in refused {
            let mut full = vec![
                run.id.to_string(),
                String::new(),
                row.line.to_string(),
                row.raw_phone,
                row.outcome.to_string(),
                row.reason,
            ];
            full.resize(columns.len(), String::new());
            w.write_record(full.iter().map(|c| csv_safe(c))).map_err(|e| io(e.into()))?;
        }
        w.flush().map_err(io)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_but_phones_are_not() {
        assert_eq!(csv_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_safe("+1+2"), "'+1+2");
        assert_eq!(csv_safe("+12015550123"), "+12015550123");
        assert_eq!(csv_safe("plain"), "plain");
    }
}
