//! The analytics crate's integration tests: its projections against a real
//! Postgres (a database of each test's own), driven straight through the
//! handlers, without a broker.

mod batches;
