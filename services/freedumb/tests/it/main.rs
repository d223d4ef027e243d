//! The integration tests of the `freedumb` binary: one test binary, one
//! module per story.

mod analytics;
mod auth;
mod backfill;
mod budget_input;
mod budgets;
mod contract;
mod events;
mod helpers;
mod import;
mod investment_prices;
mod investments;
mod ledger;
mod malformed_input;
mod observability;
mod process;
mod producer_events;
mod readiness;
mod recurring;
mod reports;
mod sign_out;
