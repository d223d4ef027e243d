//! The investment crate's integration tests: the market-data client against
//! a stub of its provider (started here, on a free port) and the real Redis.

mod market_data;
mod stub;
