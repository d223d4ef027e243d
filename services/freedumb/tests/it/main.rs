//! The integration tests of the `freedumb` binary: one test binary, one
//! module per story.

mod auth;
mod helpers;
mod malformed_input;
mod observability;
mod process;
mod readiness;
