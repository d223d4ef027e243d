//! `cargo xtask`: the FREEDUMB ops toolkit, in Rust so that it runs wherever
//! cargo does and needs no shell scripts beyond `.ci/run`.
//!
//! Wired into cargo by the `xtask` alias in `.cargo/config.toml` (see
//! <https://github.com/matklad/cargo-xtask>). This file only parses the
//! command line, finds the project root and dispatches: each verb lives in
//! its own module with a `run` method.

mod backing;
mod bench;
mod bench_analytics;
mod build;
mod check;
mod containers;
mod deploy;
mod digest;
mod docker;
mod environment;
mod kube;
mod loadtest;
mod policy;
mod process;
mod progress;
mod render;
mod secrets;
mod test;
mod tools;

#[cfg(test)]
mod scratch;
#[cfg(test)]
mod seed;

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
    Render(render::Render),
    Check(check::Check),
    BenchRender(bench::BenchRender),
    BenchAnalytics(bench_analytics::BenchAnalytics),
    Build(build::Build),
    Status(containers::Status),
    Logs(containers::Logs),
    Down(containers::Down),
    Rollback(docker::deploy::Rollback),
    Loadtest(loadtest::Loadtest),
    Diff(kube::cli::Diff),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = project_root();
    let result = match cli.command {
        Command::Deploy(cmd) => cmd.run(&root),
        Command::Test(cmd) => cmd.run(&root),
        Command::Render(cmd) => cmd.run(&root),
        Command::Check(cmd) => cmd.run(&root),
        Command::BenchRender(cmd) => cmd.run(&root),
        Command::BenchAnalytics(cmd) => cmd.run(&root),
        Command::Build(cmd) => cmd.run(&root),
        Command::Status(cmd) => cmd.run(&root),
        Command::Logs(cmd) => cmd.run(&root),
        Command::Down(cmd) => cmd.run(&root),
        Command::Rollback(cmd) => cmd.run(&root),
        Command::Loadtest(cmd) => cmd.run(&root),
        Command::Diff(cmd) => {
            // kubectl diff's statuses: 0 the same, 1 different, 2 an error.
            return match cmd.run(&root) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) if err.is::<kube::cli::WouldChange>() => ExitCode::from(1),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(2)
                }
            };
        }
    };
    // Printed by hand rather than by returning the error from `main`: that
    // would add a stack trace whenever RUST_BACKTRACE is set, and the
    // messages here already say what went wrong and what to do.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `deploy --dry-run` found differences: they are printed already.
        Err(err) if err.is::<kube::cli::WouldChange>() => ExitCode::from(1),
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

/// The dev-profile `freedumb` under `$CARGO_TARGET_DIR` or `<root>/target`.
#[cfg(test)]
fn freedumb_debug_binary(root: &Path) -> PathBuf {
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    target_dir.join("debug").join(format!("freedumb{}", std::env::consts::EXE_SUFFIX))
}
