//! `flowcast suppress add|remove|list|import|export`: the suppression list
//! from the command line.

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use serde_json::json;

use super::{CommandResult, Failure, open_store};
use crate::cli::SuppressCommand;
use crate::config::Config;
use crate::contacts::{ContactReader, ReadOptions, Row};
use crate::domain::{Phone, Scope};
use crate::store::{Store, Suppression};
use crate::views;

/// Entries read from the ledger per page while listing.
const PAGE: u32 = 1_000;

pub(super) async fn command(config: &Config, command: SuppressCommand) -> CommandResult {
    let store = open_store(config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    match command {
        SuppressCommand::Add { phones, scope, reason } => {
            let scope = Scope::parse(&scope).map_err(|e| Failure::input(anyhow!("--scope: {e}")))?;
            let mut bad = 0;
            for raw in &phones {
                match Phone::parse(raw, None) {
                    Ok(phone) => {
                        let added = store
                            .suppress(&phone, &scope, reason.as_deref(), "cli", now)
                            .await
                            .map_err(Failure::input)?;
                        println!(
                            "{phone}: {} (scope {scope})",
                            if added { "suppressed" } else { "already suppressed" }
                        );
                    }
                    Err(e) => {
                        println!("{raw}: not suppressed: {e}; write it in E.164 (+15017122661)");
                        bad += 1;
                    }
                }
            }
            Ok(if bad > 0 { 1 } else { 0 })
        }
        SuppressCommand::Remove { phones, scope } => {
            let scope =
                scope.map(|s| Scope::parse(&s)).transpose().map_err(|e| Failure::input(anyhow!("--scope: {e}")))?;
            let mut bad = 0;
            for raw in &phones {
                match Phone::parse(raw, None) {
                    Ok(phone) => {
                        let removed = store.unsuppress(&phone, scope.as_ref()).await.map_err(Failure::input)?;
                        println!("{phone}: {removed} entr{} removed", if removed == 1 { "y" } else { "ies" });
                    }
                    Err(e) => {
                        println!("{raw}: {e}");
                        bad += 1;
                    }
                }
            }
            Ok(if bad > 0 { 1 } else { 0 })
        }
        SuppressCommand::List { json } => list(&store, json).await,
        SuppressCommand::Export => export(&store).await,
        SuppressCommand::Import { file } => import(&store, &file, now).await,
    }
}

/// Every entry, page by page.
async fn each(store: &Store, mut f: impl FnMut(&Suppression) -> std::io::Result<()>) -> Result<(), Failure> {
    let mut after = 0;
    loop {
        let page = store.suppressions(after, PAGE).await.map_err(Failure::input)?;
        for entry in &page {
            f(entry).map_err(|e| Failure::input(anyhow!("writing the list: {e}")))?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = last.id,
            _ => return Ok(()),
        }
    }
}

async fn list(store: &Store, as_json: bool) -> CommandResult {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if as_json {
        let mut all = Vec::new();
        each(store, |s| {
            all.push(views::suppression(s));
            Ok(())
        })
        .await?;
        writeln!(out, "{}", serde_json::to_string_pretty(&json!({ "suppressions": all })).unwrap_or_default())
            .map_err(|e| Failure::input(anyhow!("writing the list: {e}")))?;
        return Ok(0);
    }
    let mut n = 0;
    each(store, |s| {
        n += 1;
        writeln!(
            out,
            "{:<16} {:<20} {:<22} {}{}",
            s.phone.as_str(),
            s.scope.as_text(),
            views::time(s.created_at),
            s.source,
            s.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default()
        )
    })
    .await?;
    writeln!(out, "{n} entr{}", if n == 1 { "y" } else { "ies" }).map_err(|e| Failure::input(anyhow!("{e}")))?;
    Ok(0)
}

/// The list as CSV, in the columns `suppress import` reads.
async fn export(store: &Store) -> CommandResult {
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(std::io::stdout().lock()));
    let io = |e: csv::Error| Failure::input(anyhow!("writing the list: {e}"));
    w.write_record(["phone", "scope", "reason", "source", "created_at"]).map_err(io)?;
    let mut rows = Vec::new();
    each(store, |s| {
        rows.push([
            s.phone.as_str().to_string(),
            s.scope.as_text(),
            super::output::csv_safe(s.reason.as_deref().unwrap_or_default()),
            s.source.clone(),
            views::time(s.created_at),
        ]);
        Ok(())
    })
    .await?;
    for row in rows {
        w.write_record(&row).map_err(io)?;
    }
    w.flush().map_err(|e| Failure::input(anyhow!("writing the list: {e}")))?;
    Ok(0)
}

/// `suppress import FILE.csv`: columns `phone` and, optionally, `scope` and
/// `reason`; every row is counted as added, already present or rejected.
async fn import(store: &Store, file: &Path, now: i64) -> CommandResult {
    let options = ReadOptions { phone_column: "phone".into(), default_region: None, timezone: chrono_tz::UTC };
    let mut reader = ContactReader::open(file, options).map_err(Failure::input)?;
    let (mut added, mut present, mut rejected) = (0, 0, 0);
    let shown = file.display();
    loop {
        let row = match reader.next_row() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => return Err(Failure::input(e)),
        };
        match row {
            Row::Rejected(r) => {
                println!("{shown}:{}: rejected: {}", r.line, r.reason);
                rejected += 1;
            }
            Row::Contact(c) => {
                let scope = match c.get("scope").map(str::trim).filter(|s| !s.is_empty()) {
                    None => Scope::All,
                    Some(text) => match Scope::parse(text) {
                        Ok(scope) => scope,
                        Err(e) => {
                            println!("{shown}:{}: rejected: {e}", c.line);
                            rejected += 1;
                            continue;
                        }
                    },
                };
                let reason = c.get("reason").map(str::trim).filter(|r| !r.is_empty());
                if store.suppress(&c.phone, &scope, reason, "import", now).await.map_err(Failure::input)? {
                    added += 1;
                } else {
                    present += 1;
                }
            }
        }
    }
    println!("{shown}: {added} added, {present} already present, {rejected} rejected");
    Ok(if rejected > 0 { 1 } else { 0 })
}
