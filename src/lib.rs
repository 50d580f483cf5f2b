//! flowcast: scheduled outbound campaigns over Twilio Studio.
//!
//! The data path, and where each part lives:
//!
//! 1. [`campaign`] reads `campaigns/*.toml` into validated [`campaign::Campaign`]s,
//!    reporting every mistake as `file:line: message`.
//! 2. [`contacts`] streams the campaign's CSV, normalising phones to E.164 and
//!    rejecting bad rows with their line and reason.
//! 3. [`store`] (the only SQL) records a run and one job per contact in the SQLite
//!    ledger, in batched transactions.
//! 4. [`dispatch`] claims due jobs, holds the account-wide and per-campaign rates,
//!    calls Studio through [`studio`] (the only HTTP to Twilio) and records each
//!    outcome, settling 409 conflicts by the campaign's policy.
//! 5. [`app`] wires these into the commands of `flowcast` (the binary is a thin
//!    shell over it); [`schedule`] holds cron and the clock.
//!
//! [`domain`] holds the pure types everything shares.

pub mod app;
pub mod campaign;
pub mod cli;
pub mod config;
pub mod contacts;
pub mod dispatch;
pub mod domain;
pub mod flows;
pub mod import;
pub mod schedule;
pub mod service;
pub mod store;
pub mod studio;
pub mod telemetry;
