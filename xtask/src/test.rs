//! `cargo xtask test`: every test in the workspace, against a real Postgres,
//! Redis and RabbitMQ.
//!
//! The integration tests need both servers. Checking first turns "forty
//! tests failed with connection refused" into one line that says which
//! server is down and how to start it; and because the check fails the run,
//! a missing server can never make the suite pass by testing less.

use std::path::Path;
use std::process::Stdio;

use anyhow::anyhow;
use clap::Args;

use crate::backing::{self, Backing};
use crate::process;

/// The servers the integration tests use unless TEST_POSTGRES_URL,
/// TEST_REDIS_URL and TEST_RABBITMQ_URL say otherwise; the same defaults as
/// `freedumb_kit::testing` and `services/freedumb/tests/it/helpers.rs`.
const SERVERS: [(&Backing, &str, &str); 3] = [
    (&backing::POSTGRES, "TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
    (&backing::REDIS, "TEST_REDIS_URL", "redis://127.0.0.1:6379"),
    (&backing::RABBITMQ, "TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
];

/// Run the workspace's tests (nextest when installed) against a real
/// Postgres, Redis and RabbitMQ.
#[derive(Debug, Args)]
pub struct Test {
    /// Passed on unchanged to `cargo nextest run`, or to `cargo test` when
    /// nextest is not installed.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

impl Test {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        eprintln!("==> checking the servers the tests need");
        let servers = SERVERS
            .iter()
            .map(|&(kind, var, default)| {
                let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
                let address = kind.address(&url).map_err(|err| anyhow!("{var}: {err}"))?;
                Ok((kind, address))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        backing::require(&servers)?;

        eprintln!("==> running the tests");
        let mut cmd = process::cargo();
        cmd.current_dir(root).env("RUST_BACKTRACE", "1");
        if nextest_installed() {
            cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        } else {
            eprintln!("cargo-nextest is not installed (`cargo install cargo-nextest --locked`); using cargo test");
            cmd.args(["test", "--workspace", "--no-fail-fast"]);
        }
        process::run(cmd.args(&self.args))
    }
}

fn nextest_installed() -> bool {
    process::cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
