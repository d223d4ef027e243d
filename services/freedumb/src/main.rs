//! `freedumb`: every FREEDUMB service in one binary. `freedumb serve auth`
//! runs one service, `freedumb serve all` runs them all in one process.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    freedumb::cli::main(freedumb::cli::Cli::parse())
}
