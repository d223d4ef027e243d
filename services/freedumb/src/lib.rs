//! The `freedumb` binary's library half: the service registry and the
//! commands, so integration tests drive exactly what the binary runs.

pub mod cli;
pub mod healthcheck;
pub mod registry;
