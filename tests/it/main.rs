//! flowcast's integration tests: one binary, real SQLite files in temp folders,
//! real HTTP over loopback to the built-in Studio simulator or to mockito.

mod helpers;

mod api_runs;
mod campaign_input;
mod commands;
mod contact_limits;
mod contact_safety;
mod crash;
mod csv_input;
mod dashboard;
mod dispatch;
mod executions;
mod faults;
mod flows;
mod http_safety;
mod import;
mod notify;
mod openapi;
mod operator;
mod outcomes;
mod pushed;
mod rates;
mod retention;
mod schedule;
mod served;
mod service;
mod simulator_flows;
mod studio_http;
mod suppressions;
mod timing;
mod validate;
