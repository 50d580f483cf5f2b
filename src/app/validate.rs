//! `flowcast validate [PATH…]`: every campaign file (or the ones named) and
//! its CSV, one `file:line: message` per problem, then a summary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::{CommandResult, Failure, folders};
use crate::campaign;
use crate::domain::RowOutcome;
use crate::runs::dry_run;

pub(super) fn validate(config: &crate::config::Config, paths: &[PathBuf]) -> CommandResult {
    let folders = folders(config);
    let files = if paths.is_empty() {
        campaign::list_campaign_files(&config.campaigns)
            .with_context(|| format!("campaigns folder {}", config.campaigns.display()))
            .map_err(Failure::input)?
    } else {
        paths.to_vec()
    };
    let mut problems = 0usize;
    let mut warnings = 0usize;
    let mut valid = 0usize;
    let mut out = std::io::stdout().lock();
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
        let dry = match dry_run(&c, 0, chrono::Utc::now()) {
            Ok(dry) => dry,
            Err(e) => {
                let _ = writeln!(out, "{e}");
                problems += 1;
                continue;
            }
        };
        let csv = c.contacts.display();
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
        let _ = writeln!(
            out,
            "{}: {} ({}): {} rows, {} contacts, {} rejected, {} duplicates",
            file.display(),
            c.name,
            c.kind,
            dry.counts.rows,
            dry.counts.imported,
            dry.counts.rejected,
            dry.counts.duplicates
        );
    }
    let _ =
        writeln!(out, "{} file(s) checked: {valid} valid, {problems} problem(s), {warnings} warning(s)", files.len());
    Ok(if problems == 0 && !files.is_empty() { 0 } else { 1 })
}
