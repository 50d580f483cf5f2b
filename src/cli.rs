//! The command line: commands, flags and the environment variables that stand
//! in for flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "flowcast", version, about = "Scheduled outbound campaigns over Twilio Studio")]
pub struct Cli {
    /// The ledger: a SQLite file path, or sqlite://PATH.
    #[arg(long, global = true, env = "FLOWCAST_DB", value_name = "PATH|URL")]
    pub db: Option<String>,
    /// The folder of campaign files.
    #[arg(long, global = true, env = "FLOWCAST_CAMPAIGNS", value_name = "DIR")]
    pub campaigns: Option<PathBuf>,
    /// The folder of Studio Flow definitions.
    #[arg(long, global = true, env = "FLOWCAST_FLOWS", value_name = "DIR")]
    pub flows: Option<PathBuf>,
    /// Service config file (default: ./flowcast.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the built-in Studio simulator instead of Twilio (no credentials needed).
    #[arg(long, global = true)]
    pub simulate: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check campaign files and their CSVs (all in the campaigns folder by default).
    Validate {
        /// Campaign files to check.
        paths: Vec<PathBuf>,
    },
    /// Start a run of one campaign now and dispatch it to the end.
    Run {
        /// Campaign name or file.
        campaign: String,
        /// Expand and print what would be sent; call nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Un-pause a run and finish it; without RUN, finish every unfinished run.
    Resume { run: Option<i64> },
    /// Campaigns, their next fire time, and runs with counts per job state.
    Status {
        campaign: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One row per job of a run.
    Report {
        run: i64,
        #[arg(long, value_enum, default_value = "csv")]
        format: ReportFormat,
    },
    /// Read outcomes back from Studio now (every sent job whose outcome is open).
    Collect {
        /// Only this run's jobs.
        run: Option<i64>,
        /// Keep collecting until every outcome is known or this long has passed (e.g. 10m).
        #[arg(long, default_value = "0s")]
        wait: String,
    },
    /// The suppression list: who must not be contacted.
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
    /// Remove the personal data of runs over longer ago than a duration: phones
    /// become keyed hashes; counts, states and suppressions stay.
    Purge {
        /// Runs finished or cancelled longer ago than this (e.g. 90d); default:
        /// `retention` from flowcast.toml or FLOWCAST_RETENTION.
        #[arg(long, value_name = "DURATION", value_parser = crate::domain::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Count what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pause a run: nothing more is sent until it is resumed.
    Pause { run: i64 },
    /// Cancel a run: its pending jobs are never sent.
    Cancel {
        run: i64,
        /// Then end the run's Executions still active in Studio (needs
        /// Studio credentials, or --simulate).
        #[arg(long)]
        end_active: bool,
    },
    /// Studio Executions of a run or a Flow: list them, end them.
    Executions {
        #[command(subcommand)]
        command: ExecutionsCommand,
    },
    /// The service: watch the campaigns folder, fire schedules, dispatch, serve HTTP.
    Serve,
    /// Studio Flow definitions kept in the flows folder.
    Flows {
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// Run the built-in Studio simulator as a server (for tests and demos).
    Simulator {
        #[arg(long, default_value = "127.0.0.1:4010")]
        listen: String,
        /// How long each Execution stays active (e.g. 5s); 0s: until ended.
        #[arg(long, default_value = "5s")]
        lifetime: String,
        /// Creates per second before 429s.
        #[arg(long)]
        rate_cap: Option<u32>,
        /// Contacts' answers to send-and-wait-for-reply widgets: a CSV with
        /// phone and reply columns (an empty reply: never answers). Contacts not
        /// listed answer from a mix that takes every branch.
        #[arg(long, value_name = "FILE")]
        replies: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SuppressCommand {
    /// Suppress numbers (E.164): no campaign in the scope contacts them again.
    Add {
        #[arg(required = true)]
        phones: Vec<String>,
        /// all, a campaign kind (reminder, delivery-notice, survey) or a campaign name.
        #[arg(long, default_value = "all")]
        scope: String,
        /// Why (kept with the entry and in skipped jobs' reasons).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift suppressions, in one scope or in every scope.
    Remove {
        #[arg(required = true)]
        phones: Vec<String>,
        #[arg(long)]
        scope: Option<String>,
    },
    /// Every entry.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add the rows of a CSV (columns phone, and optionally scope and reason).
    Import { file: PathBuf },
    /// Every entry as CSV (the columns import reads).
    Export,
}

#[derive(Debug, Subcommand)]
pub enum ExecutionsCommand {
    /// A run's Executions with their live status from Studio (a page of jobs
    /// at a time), or a Flow's Executions as Studio lists them.
    List {
        /// The run whose jobs' Executions to show.
        #[arg(long, required_unless_present = "flow", conflicts_with = "flow")]
        run: Option<i64>,
        /// A Flow, by name (flows/NAME.json, deployed) or SID.
        #[arg(long, value_name = "NAME|SID")]
        flow: Option<String>,
        /// Only Executions still active (a run: every one, from Studio's list).
        #[arg(long)]
        active: bool,
        /// Rows at most: a run's jobs per page, or a Flow's newest Executions.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// A run's next page: the jobs after this job id.
        #[arg(long, value_name = "JOB", requires = "run")]
        after: Option<i64>,
        /// A Flow's Executions created since this instant (RFC 3339) or this long ago (e.g. 2h).
        #[arg(long, value_name = "TIME|DURATION", requires = "flow")]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// End Executions: the SIDs given, or every one of a run still active.
    End {
        /// Execution SIDs (FN…).
        #[arg(value_name = "SID", required_unless_present = "run", conflicts_with = "run")]
        sids: Vec<String>,
        /// End every Execution of this run that is still active.
        #[arg(long)]
        run: Option<i64>,
        /// The Flow of the SIDs given (default: the Flow of the run whose job created each).
        #[arg(long, value_name = "NAME|SID", conflicts_with = "run")]
        flow: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Check definitions locally (JSON, shape, ${VAR}s, size), then with Studio.
    Validate {
        /// Flow names (files flows/NAME.json); all when none.
        names: Vec<String>,
        /// KEY=value lines for ${VAR} placeholders (over the environment).
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// Create or update each Flow in Studio; unchanged ones are not re-sent.
    Deploy {
        names: Vec<String>,
        /// Deploy as a draft instead of publishing.
        #[arg(long)]
        draft: bool,
        /// The revision's commit message.
        #[arg(long, value_name = "MSG")]
        message: Option<String>,
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// Fetch deployed definitions into the flows folder (adopt Console-built Flows).
    Pull {
        /// Flows to refresh from Studio (names in the lock file).
        names: Vec<String>,
        /// Every Flow of the account.
        #[arg(long)]
        all: bool,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Local definition vs the latest deployed revision (exit 1 when they differ).
    Diff {
        name: String,
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// The Flow's revision history.
    Revisions { name: String },
    /// Show, or set, the contact addresses allowed to test draft revisions.
    TestUsers { name: String, addresses: Vec<String> },
}
