//! Running other programs: cargo, `freedumb`, `kill`.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context, bail};

/// The cargo that started us, so a toolchain picked by rustup or `+nightly`
/// builds `freedumb` too.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// The command line as a user would type it, for progress lines and errors.
/// Only ever called on commands without secrets in their arguments: secrets
/// travel in environment variables, which this does not show.
pub fn display(cmd: &Command) -> String {
    let program = cmd.get_program().to_string_lossy();
    // `$CARGO` is an absolute path into the toolchain; `cargo` reads better.
    let program = if cmd.get_program() == cargo().get_program() { "cargo".into() } else { program };
    std::iter::once(program.into_owned())
        .chain(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with inherited stdio and fails unless it
/// succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = display(cmd);
    eprintln!("$ {shown}");
    let status = cmd.status().with_context(|| format!("failed to start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}
