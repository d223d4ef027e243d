//! `cargo xtask`: the FREEDUMB ops toolkit, in Rust so that it runs wherever
//! cargo does and needs no shell scripts beyond `.ci/run`.
//!
//! Wired into cargo by the `xtask` alias in `.cargo/config.toml` (see
//! <https://github.com/matklad/cargo-xtask>). This file only parses the
//! command line, finds the project root and dispatches: each verb lives in
//! its own module with a `run` method.

mod backing;
mod deploy;
mod environment;
mod process;
mod secrets;
mod test;

#[cfg(test)]
mod scratch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "The FREEDUMB ops toolkit.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Deploy(deploy::Deploy),
    Test(test::Test),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = project_root();
    let result = match cli.command {
        Command::Deploy(cmd) => cmd.run(&root),
        Command::Test(cmd) => cmd.run(&root),
    };
    // Printed by hand rather than by returning the error from `main`: that
    // would add a stack trace whenever RUST_BACKTRACE is set, and the
    // messages here already say what went wrong and what to do.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory. Cargo sets
/// `CARGO_MANIFEST_DIR` for `cargo run`; the compile-time value covers a
/// binary started by hand.
fn project_root() -> PathBuf {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}
