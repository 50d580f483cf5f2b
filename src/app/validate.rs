//! `flowcast validate [PATH…]`: every campaign file (or the ones named, or
//! every one in the folders named) and its CSV, one `file:line: message` per
//! problem, then a summary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::{CommandResult, Failure, folders};
use crate::campaign::{self, Folders};
use crate::domain::RowOutcome;
use crate::runs::dry_run;

/// The files to check, in groups that share the folders their paths are
/// checked against: the campaigns folder by default; a folder argument is a
/// campaigns folder of its own.
fn groups(config: &crate::config::Config, paths: &[PathBuf]) -> Result<Vec<(Folders, Vec<PathBuf>)>, Failure> {
    let list = |dir: &PathBuf| {
        campaign::list_campaign_files(dir)
            .with_context(|| format!("campaigns folder {}", dir.display()))
            .map_err(Failure::input)
    };
    if paths.is_empty() {
        return Ok(vec![(folders(config), list(&config.campaigns)?)]);
    }
    let mut groups: Vec<(Folders, Vec<PathBuf>)> = Vec::new();
    // Files named one by one share a group, so two of them claiming one name
    // are caught.
    let mut named_files: Option<usize> = None;
    for path in paths {
        if path.is_dir() {
            let dir_folders = Folders { campaigns: path.clone(), flows: config.flows_for(path) };
            groups.push((dir_folders, list(path)?));
        } else if let Some(at) = named_files {
            groups[at].1.push(path.clone());
        } else {
            named_files = Some(groups.len());
            groups.push((folders(config), vec![path.clone()]));
        }
    }
    Ok(groups)
}

pub(super) async fn validate(config: &crate::config::Config, paths: &[PathBuf]) -> CommandResult {
    let mut problems = 0usize;
    let mut warnings = 0usize;
    let mut valid = 0usize;
    let mut checked = 0usize;
    let mut out = std::io::stdout().lock();
    for (folders, files) in groups(config, paths)? {
        checked += files.len();
        for (file, loaded) in campaign::load_files(&files, &folders) {
            let c = match loaded {
                Ok(c) => c,
                Err(e) => {
                    for d in &e.diagnostics {
                        let _ = writeln!(out, "{d}");
                    }
                    problems += e.diagnostics.len();
                    continue;
                }
            };
            for w in &c.warnings {
                let _ = writeln!(out, "{}:{}: warning: {}", w.file.display(), w.line, w.message);
                warnings += 1;
            }
            let Some(csv) = c.contacts.as_deref().map(|p| p.display().to_string()) else {
                // Contacts pushed over HTTP: nothing to read until they arrive.
                let _ = writeln!(
                    out,
                    "{}: {} ({}): contacts come over HTTP (trigger = \"api\")",
                    file.display(),
                    c.name,
                    c.kind
                );
                valid += 1;
                continue;
            };
            let suppressed = super::suppressed_for(config, &c).await?;
            let dry = match dry_run(&c, 0, chrono::Utc::now(), &suppressed) {
                Ok(dry) => dry,
                Err(e) => {
                    let _ = writeln!(out, "{e}");
                    problems += 1;
                    continue;
                }
            };
            for (r, outcome) in &dry.refused {
                match outcome {
                    RowOutcome::Duplicate => {
                        let _ = writeln!(out, "{csv}:{}: warning: {}", r.line, r.reason);
                        warnings += 1;
                    }
                    RowOutcome::Rejected => {
                        let _ = writeln!(out, "{csv}:{}: {}", r.line, r.reason);
                        problems += 1;
                    }
                }
            }
            if dry.counts.rejected == 0 {
                valid += 1;
            }
            let mut expiring =
                if dry.would_expire > 0 { format!(", {} would expire", dry.would_expire) } else { String::new() };
            if dry.suppressed > 0 {
                expiring.push_str(&format!(", {} suppressed", dry.suppressed));
            }
            let _ = writeln!(
                out,
                "{}: {} ({}): {} rows, {} contacts, {} rejected, {} duplicates{expiring}",
                file.display(),
                c.name,
                c.kind,
                dry.counts.rows,
                dry.counts.imported,
                dry.counts.rejected,
                dry.counts.duplicates
            );
        }
    }
    let _ = writeln!(out, "{checked} file(s) checked: {valid} valid, {problems} problem(s), {warnings} warning(s)");
    Ok(if problems == 0 && checked > 0 { 0 } else { 1 })
}
