//! Pure domain types: no async, no SQL, no HTTP.
//!
//! Everything here is built by parsing, so a value that exists is valid: a
//! [`Phone`] is E.164, a [`FlowSid`] has Studio's shape, a [`ConflictPolicy`]
//! carries its own bound. The edges (store, studio, dispatch) only move these
//! values around.

mod duration;
mod job;
mod phone;
mod policy;
mod sid;
mod template;
mod window;

pub use duration::{format_duration, parse_duration};
pub use job::{JobState, RunState};
pub use phone::{Phone, PhoneError, parse_region};
pub use policy::{ConflictPolicy, backoff_delay};
pub use sid::{ExecutionSid, FlowSid, SidError, find_execution_sid};
pub use template::{Template, TemplateError, TimeTemplate, parse_instant};
pub use window::SendWindow;
