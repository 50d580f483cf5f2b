//! flowcast: scheduled outbound campaigns over Twilio Studio.
//!
//! The data path, and where each part lives:
//!
//! 1. [`campaign`] reads `campaigns/*.toml` into validated [`campaign::Campaign`]s,
//!    reporting every mistake as `file:line: message`.
//! 2. [`contacts`] streams the campaign's CSV, normalising phones to E.164 and
//!    rejecting bad rows with their line and reason.
//! 3. [`runs`] is the run lifecycle every caller shares: it freezes a campaign
//!    into a run, imports the CSV into one job per contact, and applies pause,
//!    resume and cancel with the transitions the domain allows.
//! 4. [`store`] (the only SQL) keeps runs, jobs and the audit trail in the
//!    ledger, behind async methods that take and return [`domain`] types.
//! 5. [`dispatch`] claims due jobs, holds the account-wide and per-campaign rates,
//!    calls Studio through [`studio`] (the only HTTP to Twilio), settles 409
//!    conflicts by the policy's pure decision, and records each outcome;
//!    [`collect`] reads each Execution back afterwards (status, the widget it
//!    ended in, the campaign's outcome fields); [`notify`] delivers the signed
//!    events the ledger writes to its outbox with each change they report.
//! 6. [`service`] is `flowcast serve`: the folder watcher, [`schedule`]d ticks,
//!    one dispatch task per run, and the HTTP API; [`views`] are the JSON shapes
//!    of runs and jobs that it, `status` and `report` share.
//! 7. [`app`] wires these into the commands of `flowcast` (the binary is a thin
//!    shell over it, parsed by [`cli`], configured by [`config`]); [`flows`]
//!    keeps Studio Flow definitions as code; [`telemetry`] counts what happens.
//!
//! [`domain`] holds the pure types everything shares: no I/O, one text form per
//! state, policy and reason.

pub mod app;
pub mod campaign;
pub mod cli;
pub mod collect;
pub mod config;
pub mod contacts;
pub mod dispatch;
pub mod domain;
pub mod flows;
pub mod notify;
pub mod runs;
pub mod schedule;
pub mod service;
pub mod store;
pub mod studio;
pub mod telemetry;
pub mod views;
