//! `cargo xtask build`: the `freedumb` image, through the Docker Engine API.
//!
//! The offline way, which needs no base image and no registry: cargo builds
//! `freedumb`, and the build context, made in memory (`docker::image`), puts
//! the binary, exactly the shared libraries it links, the CA certificates
//! and an unprivileged user on `scratch`. The image is tagged
//! `freedumb:<git sha>` (`-dirty` when the work tree has changes, `-debug`
//! for a dev-profile binary) and labelled with the OCI annotations.
//!
//! The rendered multi-stage Dockerfile (`cargo xtask render --env dev`) is
//! the way for machines that can pull `rust:` and `debian:` images; it needs
//! BuildKit (cache mounts), which this verb does not drive yet.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::docker::Engine;
use crate::docker::image::{Offline, Program};
use crate::{environment, process};

/// The repository of every image this builds.
pub const IMAGE: &str = "freedumb";
/// The repository of the gateway image.
pub const GATEWAY_IMAGE: &str = "freedumb-gateway";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Build the freedumb image (offline: the binary and its libraries on scratch).
#[derive(Debug, Args)]
pub struct Build {
    /// Build freedumb with the dev profile: quicker to build, slower and
    /// much larger (the image is tagged and labelled `debug`).
    #[arg(long)]
    debug: bool,
    /// Put this freedumb binary in the image instead of building one.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// The environment whose platform.build.uid the image runs as.
    #[arg(long, value_name = "NAME", default_value = "dev")]
    env: String,
    /// `json` prints one object (image, id, size) on stdout, for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// An image the engine now has.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    pub image: String,
    pub id: String,
    pub size: i64,
}

impl Build {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = environment::load(root, &self.env)?;
        let uid = environment.model.platform.build.uid;
        let binary = match &self.binary {
            Some(binary) => binary.clone(),
            None => cargo_build(root, self.debug)?,
        };
        step("connecting to the Docker engine");
        let engine = Engine::connect()?;
        step(&format!("building the image from {}", binary.display()));
        let started = Instant::now();
        // Build output goes to stderr, so that stdout carries only the result.
        let built = build_offline(&engine, root, &binary, self.debug, uid, &mut std::io::stderr())?;
        match self.output {
            Output::Json => println!("{}", serde_json::to_string(&built).expect("serialisable")),
            Output::Text => println!(
                "built {} ({}, {:.1} MB) in {:.1} s",
                built.image,
                built.id,
                built.size as f64 / 1e6,
                started.elapsed().as_secs_f64()
            ),
        }
        Ok(())
    }
}

/// Builds `freedumb` with cargo and returns where the binary is.
pub fn cargo_build(root: &Path, debug: bool) -> anyhow::Result<PathBuf> {
    step("building freedumb");
    let mut cargo = process::cargo();
    cargo.current_dir(root).args(["build", "-p", "freedumb"]);
    if !debug {
        cargo.arg("--release");
    }
    process::run(&mut cargo)?;
    let profile = if debug { "debug" } else { "release" };
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    Ok(target_dir.join(profile).join("freedumb"))
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Builds the offline image of `binary` and returns what the engine has.
pub fn build_offline(
    engine: &Engine,
    root: &Path,
    binary: &Path,
    debug: bool,
    uid: u32,
    out: &mut dyn Write,
) -> anyhow::Result<Built> {
    if !binary.is_file() {
        bail!("{} does not exist; build it first (cargo build -p freedumb)", binary.display());
    }
    let revision = git(root, &["rev-parse", "HEAD"])?;
    let dirty = !git(root, &["status", "--porcelain"])?.is_empty();
    let tag = image_tag(&revision, dirty, debug);
    let mut labels = BTreeMap::from([
        ("org.opencontainers.image.title".to_owned(), "freedumb".to_owned()),
        ("org.opencontainers.image.description".to_owned(), description(debug).to_owned()),
        ("org.opencontainers.image.revision".to_owned(), revision),
        ("io.freedumb.profile".to_owned(), if debug { "debug" } else { "release" }.to_owned()),
    ]);
    if let Ok(source) = git(root, &["config", "--get", "remote.origin.url"])
        && !source.is_empty()
    {
        labels.insert("org.opencontainers.image.source".to_owned(), source);
    }
    let offline = Offline::for_binary(binary, uid, labels)?;
    let context = offline.context()?;
    let id = engine.build(context, &tag, out)?;
    let size = engine.image_size(&tag)?.unwrap_or_default();
    Ok(Built { image: tag, id, size })
}

/// Builds the gateway image: this machine's nginx and its libraries on
/// scratch. Tagged by its content, `freedumb-gateway:<digest>`, not by the
/// git revision: a deployment recreates its gateway only when nginx itself
/// changed, never because of an unrelated commit.
pub fn build_gateway(engine: &Engine, nginx: &Path, uid: u32) -> anyhow::Result<Built> {
    let labels = BTreeMap::from([
        ("org.opencontainers.image.title".to_owned(), "freedumb-gateway".to_owned()),
        ("org.opencontainers.image.description".to_owned(), "FREEDUMB gateway: nginx on scratch".to_owned()),
    ]);
    let nginx = absolute(nginx)?;
    let offline = Offline::for_program(Program::Gateway, &nginx, uid, labels)?;
    let context = offline.context()?;
    let tag = format!("{GATEWAY_IMAGE}:{}", digest(&context));
    let id = engine.build(context, &tag, &mut std::io::sink())?;
    let size = engine.image_size(&tag)?.unwrap_or_default();
    Ok(Built { image: tag, id, size })
}

/// FNV-1a of `bytes`, 12 hex digits: enough to tell builds apart.
fn digest(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")[..12].to_owned()
}

/// A program's absolute path: as given when it has a directory, else the
/// first match on PATH.
fn absolute(program: &Path) -> anyhow::Result<PathBuf> {
    if program.components().count() > 1 {
        return Ok(program.to_owned());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{} is not on PATH", program.display()))
}

fn description(debug: bool) -> &'static str {
    if debug { "FREEDUMB services, DEBUG build (dev profile, for tests only)" } else { "FREEDUMB services" }
}

/// `freedumb:<12 hex digits>[-dirty][-debug]`.
pub fn image_tag(revision: &str, dirty: bool, debug: bool) -> String {
    let short = &revision[..revision.len().min(12)];
    format!("{IMAGE}:{short}{}{}", if dirty { "-dirty" } else { "" }, if debug { "-debug" } else { "" })
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .with_context(|| format!("failed to run `git {}`", args.join(" ")))?;
    if !output.status.success() {
        bail!("`git {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_names_the_revision_and_says_dirty_and_debug() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(image_tag(sha, false, false), "freedumb:0123456789ab");
        assert_eq!(image_tag(sha, true, false), "freedumb:0123456789ab-dirty");
        assert_eq!(image_tag(sha, true, true), "freedumb:0123456789ab-dirty-debug");
    }
}
