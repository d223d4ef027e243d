//! The integration tests of the `freedumb` binary: one test binary, one
//! module per story.

mod auth;
mod budget_input;
mod budgets;
mod events;
mod helpers;
mod import;
mod ledger;
mod malformed_input;
mod observability;
mod process;
mod readiness;
mod recurring;
