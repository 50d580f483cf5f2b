//! flowcast's integration tests: one binary, real SQLite files in temp folders,
//! real HTTP over loopback to the built-in Studio simulator or to mockito.

mod helpers;

mod commands;
mod crash;
mod dashboard;
mod dispatch;
mod faults;
mod flows;
mod import;
mod operator;
mod rates;
mod schedule;
mod service;
mod simulator_flows;
mod studio_http;
mod timing;
mod validate;
