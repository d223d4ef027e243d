//! `cargo xtask build`: the `freedumb` image, through the Docker Engine API.
//!
//! The offline way, which needs no base image and no registry: cargo builds
//! `freedumb`, and the build context, made in memory (`docker::image`), puts
//! the binary, exactly the shared libraries it links, the CA certificates
//! and an unprivileged user on `scratch`. The image is tagged
//! `freedumb:<git sha>` (`-dirty` when the work tree has changes, `-debug`
//! for a dev-profile binary) and labelled with the OCI annotations.
//!
//! `--dockerfile` builds the environment's rendered multi-stage Dockerfile
//! instead (`cargo xtask render --env dev` writes it): the way for machines
//! that can pull `rust:` and `debian:` images. The context is the workspace,
//! made in memory and honouring the ignore files (`docker::dockerfile`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::docker::image::{Offline, Program};
use crate::docker::{Engine, dockerfile};
use crate::progress::{Event, Progress};
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
    /// Build the environment's rendered multi-stage Dockerfile (dev,
    /// staging, prod) from the workspace instead of offline: cargo runs in
    /// its Rust stage, so the engine needs its base images
    /// (platform.build.rust_image and runtime_image) or a registry to pull
    /// them from.
    #[arg(long, conflicts_with_all = ["binary", "debug"])]
    dockerfile: bool,
    /// `json`: one JSON event per line on stdout, the last a summary with
    /// the image, id and size (the schema is in xtask/src/progress.rs).
    /// `text` prints the image's tag on stdout, progress on stderr.
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
        Progress::reporting(self.output, |progress| {
            let built = self.build(root, progress)?;
            progress.finish(|| format!("{}\n", built.image), &built);
            Ok(())
        })
    }

    fn build(&self, root: &Path, progress: &Progress) -> anyhow::Result<Built> {
        let environment = environment::load(root, &self.env)?;
        if self.dockerfile {
            progress.step("connecting to the Docker engine");
            let engine = Engine::connect()?;
            return build_dockerfile(&engine, root, &environment, progress);
        }
        let uid = environment.model.platform.build.uid;
        let binary = match &self.binary {
            Some(binary) => binary.clone(),
            None => cargo_build(root, self.debug, progress)?,
        };
        progress.step("connecting to the Docker engine");
        let engine = Engine::connect()?;
        build_offline(&engine, root, &binary, self.debug, uid, progress)
    }
}

/// Builds `freedumb` with cargo and returns where the binary is.
pub fn cargo_build(root: &Path, debug: bool, progress: &Progress) -> anyhow::Result<PathBuf> {
    progress.step(format!("building freedumb ({} profile)", if debug { "dev" } else { "release" }));
    let mut cargo = process::cargo();
    cargo.current_dir(root).args(["build", "-p", "freedumb"]);
    if !debug {
        cargo.arg("--release");
    }
    // cargo draws its own progress on the terminal: the bars step aside.
    progress.suspend(|| process::run(&mut cargo))?;
    let profile = if debug { "debug" } else { "release" };
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    Ok(target_dir.join(profile).join("freedumb"))
}

/// Builds the offline image of `binary` and returns what the engine has.
pub fn build_offline(
    engine: &Engine,
    root: &Path,
    binary: &Path,
    debug: bool,
    uid: u32,
    progress: &Progress,
) -> anyhow::Result<Built> {
    if !binary.is_file() {
        bail!("{} does not exist; build it first (cargo build -p freedumb)", binary.display());
    }
    let revision = git(root, &["rev-parse", "HEAD"])?;
    let dirty = !git(root, &["status", "--porcelain"])?.is_empty();
    let tag = image_tag(&revision, dirty, debug);
    let labels = labels(root, revision, debug);
    let offline = Offline::for_binary(binary, uid, labels)?;
    build_context(engine, offline.context()?, tag, progress)
}

/// The image's labels: OCI annotations (title, description, revision,
/// source) and its profile.
fn labels(root: &Path, revision: String, debug: bool) -> BTreeMap<String, String> {
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
    labels
}

/// Builds the `runtime` stage of `environment`'s rendered multi-stage
/// Dockerfile from the workspace (`docker::dockerfile`), tagged and
/// labelled as the offline image is (`io.freedumb.build` says which way),
/// and returns what the engine has.
pub fn build_dockerfile(
    engine: &Engine,
    root: &Path,
    environment: &environment::Environment,
    progress: &Progress,
) -> anyhow::Result<Built> {
    progress.step(format!("rendering the Dockerfile of `{}` and packing the workspace", environment.name));
    let (text, context) = dockerfile::rendered_context(root, environment)?;
    progress.step(format!("the build context: {:.1} MB", context.len() as f64 / 1e6));
    let revision = git(root, &["rev-parse", "HEAD"])?;
    let dirty = !git(root, &["status", "--porcelain"])?.is_empty();
    let tag = image_tag(&revision, dirty, false);
    let mut labels = labels(root, revision, false);
    labels.insert("io.freedumb.build".to_owned(), "dockerfile".to_owned());
    reported(engine, tag, progress, |tag| {
        let request = dockerfile::Request { tag, target: "runtime", labels: &labels };
        engine.build_dockerfile(&text, context, &request, progress)
    })
}

/// Builds `context` as `tag`, reporting it, and returns what the engine has.
fn build_context(engine: &Engine, context: Vec<u8>, tag: String, progress: &Progress) -> anyhow::Result<Built> {
    reported(engine, tag, progress, |tag| engine.build(context, tag, &mut progress.build_log()))
}

/// Runs `build` (which returns the image id) between the started and
/// finished events, and returns what the engine has.
fn reported(
    engine: &Engine,
    tag: String,
    progress: &Progress,
    build: impl FnOnce(&str) -> anyhow::Result<String>,
) -> anyhow::Result<Built> {
    progress.emit(Event::BuildStarted { image: tag.clone() });
    let started = Instant::now();
    let id = build(&tag)?;
    let size = engine.image_size(&tag)?.unwrap_or_default();
    progress.emit(Event::BuildFinished {
        image: tag.clone(),
        id: id.clone(),
        size,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(Built { image: tag, id, size })
}

/// Builds the gateway image: this machine's nginx and its libraries on
/// scratch. Tagged by its content, `freedumb-gateway:<digest>`, not by the
/// git revision: a deployment recreates its gateway only when nginx itself
/// changed, never because of an unrelated commit.
pub fn build_gateway(engine: &Engine, nginx: &Path, uid: u32, progress: &Progress) -> anyhow::Result<Built> {
    build_gateway_labelled(engine, nginx, uid, BTreeMap::new(), progress)
}

/// `build_gateway` with `extra` labels, which change its content and so its
/// tag (the end-to-end test makes a second gateway image this way).
pub fn build_gateway_labelled(
    engine: &Engine,
    nginx: &Path,
    uid: u32,
    extra: BTreeMap<String, String>,
    progress: &Progress,
) -> anyhow::Result<Built> {
    let mut labels = BTreeMap::from([
        ("org.opencontainers.image.title".to_owned(), "freedumb-gateway".to_owned()),
        ("org.opencontainers.image.description".to_owned(), "FREEDUMB gateway: nginx on scratch".to_owned()),
    ]);
    labels.extend(extra);
    let nginx = absolute(nginx)?;
    let offline = Offline::for_program(Program::Gateway, &nginx, uid, labels)?;
    let context = offline.context()?;
    let tag = format!("{GATEWAY_IMAGE}:{}", digest(&context));
    if let Some(size) = engine.image_size(&tag)? {
        // Tagged by content: the engine has exactly this image already.
        let id = engine.image_id(&tag)?;
        return Ok(Built { image: tag, id, size });
    }
    build_context(engine, context, tag, progress)
}

/// FNV-1a of `bytes`, 12 hex digits: enough to tell builds apart.
fn digest(bytes: &[u8]) -> String {
    crate::digest::hex(bytes)[..12].to_owned()
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
