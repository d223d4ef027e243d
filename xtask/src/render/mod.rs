//! `cargo xtask render`: the environment model through the Tera templates
//! under `templates/` into the files an environment is deployed from.
//!
//! Rendering happens in memory first ([`render`]), so a bad model or
//! template writes nothing. Writing goes to a temporary directory next to
//! the output, which then replaces the output whole ([`write`]); `--check`
//! compares instead of writing and prints a unified diff ([`compare`]).
//! Output is deterministic: the same model gives the same bytes, with
//! stable ordering and no timestamps.

pub mod context;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use similar::TextDiff;

use self::context::Upstreams;
use crate::environment::{self, Environment, Kind};

/// Where templates live, relative to the project root.
pub const TEMPLATES: &str = "templates";
/// The file that marks a directory as written by `render`, so that `render`
/// never replaces a directory it did not write (a GitOps checkout's root,
/// with its `.git`).
pub const MARKER: &str = ".rendered";

/// Rendered files: path relative to the output directory → contents.
pub type Files = BTreeMap<String, String>;

/// Render an environment's deployment files (compose, nginx, Kubernetes,
/// Dockerfile) from environments/ and templates/.
#[derive(Debug, Args)]
pub struct Render {
    /// The environment, as in environments/NAME.toml.
    #[arg(long, value_name = "NAME")]
    env: String,
    /// Write here, replacing the directory whole [default: target/rendered/NAME].
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    out: Option<PathBuf>,
    /// Write nothing; exit non-zero with a unified diff when DIR (a GitOps
    /// checkout, say) differs from what would be rendered.
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
}

impl Render {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = environment::load(root, &self.env)?;
        let files = render(root, &environment, Upstreams::Deployed)?;
        if let Some(dir) = &self.check {
            let diff = compare(&files, dir)?;
            if !diff.is_empty() {
                print!("{diff}");
                bail!(
                    "{} differs from what environment `{}` renders (diff above); run `cargo xtask render --env {} --out {}` to update it",
                    dir.display(),
                    self.env,
                    self.env,
                    dir.display()
                );
            }
            eprintln!("{} is up to date with environment `{}` ({} files)", dir.display(), self.env, files.len());
            return Ok(());
        }
        let out = self.out.clone().unwrap_or_else(|| default_out(root, &self.env));
        write(&files, &out)?;
        eprintln!("rendered environment `{}` into {} ({} files)", self.env, out.display(), files.len());
        Ok(())
    }
}

#[cfg(test)]
impl Render {
    pub fn parse_for_test(env: &str, out: Option<PathBuf>) -> Self {
        Render { env: env.to_owned(), out, check: None }
    }
}

pub fn default_out(root: &Path, env: &str) -> PathBuf {
    root.join("target").join("rendered").join(env)
}

/// The templates, loaded once per render: every file under `templates/`
/// ending in `.tera`, named by its path relative to that folder.
pub fn templates(root: &Path) -> anyhow::Result<tera::Tera> {
    let dir = root.join(TEMPLATES);
    let mut sources = Vec::new();
    collect(&dir, &dir, &mut sources)?;
    sources.sort();
    let mut tera = tera::Tera::default();
    // Nothing rendered here is HTML; each output quotes its own strings.
    tera.autoescape_on(vec![]);
    tera.add_raw_templates(sources).map_err(|err| anyhow!("{}", tera_error(&err)))?;
    Ok(tera)
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let path = entry.with_context(|| format!("failed to read {}", dir.display()))?.path();
        if path.is_dir() {
            collect(base, &path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "tera") {
            let name = path.strip_prefix(base).unwrap_or(&path).to_string_lossy().into_owned();
            let text = fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
            out.push((name, text));
        }
    }
    Ok(())
}

/// Tera's error and its causes on one line: the cause says which variable
/// or filter failed.
fn tera_error(err: &tera::Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The outputs of an environment kind: (output path, template).
fn outputs(kind: Kind) -> Vec<(&'static str, &'static str)> {
    let nginx =
        [("nginx/nginx.conf", "nginx/nginx.conf.tera"), ("nginx/proxy_params.conf", "nginx/proxy_params.conf.tera")];
    let image = [("Dockerfile", "Dockerfile.tera"), ("Dockerfile.dockerignore", "Dockerfile.dockerignore.tera")];
    match kind {
        Kind::Local => nginx.to_vec(),
        Kind::Compose => {
            let mut list = vec![
                ("docker-compose.yml", "compose/docker-compose.yml.tera"),
                (".env.example", "compose/env.example.tera"),
            ];
            list.extend(nginx);
            list.extend(image);
            list
        }
        Kind::Kubernetes => {
            let mut list = image.to_vec();
            list.extend([
                ("k8s/namespace.yaml", "k8s/namespace.yaml.tera"),
                ("k8s/configmap.yaml", "k8s/configmap.yaml.tera"),
                ("k8s/external-secret.yaml", "k8s/external-secret.yaml.tera"),
                ("k8s/network-policies.yaml", "k8s/network-policies.yaml.tera"),
            ]);
            list
        }
    }
}

/// Renders every output of `environment` in memory.
pub fn render(root: &Path, environment: &Environment, upstreams: Upstreams) -> anyhow::Result<Files> {
    let tera = templates(root)?;
    render_with(&tera, environment, upstreams)
}

/// The response header of a container deployment's gateway that names its
/// upstreams' version (see `render_gateway`).
pub const GATEWAY_UPSTREAMS_HEADER: &str = "X-Gateway-Upstreams";
/// The response header of a container deployment's gateway that names the
/// container answering: while a new gateway starts next to the old one on
/// the same port, it tells which of the two a connection reached.
pub const GATEWAY_INSTANCE_HEADER: &str = "X-Gateway-Instance";

/// The value of `GATEWAY_UPSTREAMS_HEADER` in a rendered nginx.conf.
pub fn gateway_upstreams_version(files: &Files) -> Option<String> {
    let conf = files.get("nginx.conf")?;
    let line = conf.lines().find(|line| line.contains(GATEWAY_UPSTREAMS_HEADER))?;
    line.split('"').nth(1).map(str::to_owned)
}

/// The gateway's files (`nginx/`, without the prefix) for a container
/// deployment, for the container `instance`: each service's upstream lists
/// the addresses of its serving replicas, `servers[service]`, instead of
/// the environment's one address.
pub fn render_gateway(
    root: &Path,
    environment: &Environment,
    servers: &std::collections::BTreeMap<String, Vec<String>>,
    instance: &str,
) -> anyhow::Result<Files> {
    let tera = templates(root)?;
    let mut context = context::build(environment, Upstreams::Deployed, Vec::new());
    // `reuseport` (SO_REUSEPORT) here only: a new gateway container binds
    // the port while the old one still holds it, on the host's network,
    // and both must set it. Nowhere else is it wanted. In compose and
    // Kubernetes the gateway has a network namespace of its own, so no
    // second process ever shares its port and the option would only change
    // how connections spread over workers. For `deploy` without containers
    // it would be harmful: a forgotten nginx of an earlier run would share
    // the port silently, serving old upstreams, instead of failing the
    // start with "address already in use".
    context.gateway.reuseport = true;
    for upstream in &mut context.gateway.upstreams {
        if let Some(addresses) = servers.get(&upstream.service).filter(|addresses| !addresses.is_empty()) {
            upstream.servers.clone_from(addresses);
        }
    }
    // Which upstreams answered: after a reload, a response carrying the new
    // value comes from a worker with the new configuration.
    let upstreams: Vec<&Vec<String>> = context.gateway.upstreams.iter().map(|u| &u.servers).collect();
    // Both on /health only: the toolkit's checks ask there, and no client
    // needs to learn container names.
    context.gateway.health_headers = vec![
        context::HeaderView {
            name: GATEWAY_UPSTREAMS_HEADER.to_owned(),
            value: crate::digest::hex(format!("{upstreams:?}").as_bytes()),
        },
        context::HeaderView { name: GATEWAY_INSTANCE_HEADER.to_owned(), value: instance.to_owned() },
    ];
    let base = tera::Context::from_serialize(&context).context("failed to build the template context")?;
    let mut files = Files::new();
    for (out, template) in outputs(environment.model.kind) {
        if let Some(name) = out.strip_prefix("nginx/") {
            let text = tera.render(template, &base).map_err(|err| {
                anyhow!(
                    "failed to render templates/{template} for environment `{}`: {}",
                    environment.name,
                    tera_error(&err)
                )
            })?;
            files.insert(name.to_owned(), tidy(&text));
        }
    }
    files.insert(MARKER.to_owned(), marker(environment));
    Ok(files)
}

pub fn render_with(tera: &tera::Tera, environment: &Environment, upstreams: Upstreams) -> anyhow::Result<Files> {
    let kind = environment.model.kind;
    let mut plan: Vec<(String, String, Option<usize>)> =
        outputs(kind).into_iter().map(|(out, template)| (out.to_owned(), template.to_owned(), None)).collect();
    if kind == Kind::Kubernetes {
        let mut k8s = Vec::new();
        if environment.model.gateway.tls {
            k8s.push(("k8s/certificate.yaml".to_owned(), "k8s/certificate.yaml.tera".to_owned(), None));
        }
        if environment.services().any(|(_, w)| !w.routes.is_empty()) {
            k8s.push(("k8s/ingress.yaml".to_owned(), "k8s/ingress.yaml.tera".to_owned(), None));
        }
        let count = environment.services().count() + environment.workers().count();
        for index in 0..count {
            k8s.push((String::new(), "k8s/workload.yaml.tera".to_owned(), Some(index)));
        }
        plan.extend(k8s);
    }
    // The workload files are named after the workloads; the kustomization
    // lists every file, so it needs the names first.
    let bare = context::build(environment, upstreams, Vec::new());
    for (out, _, index) in &mut plan {
        if let Some(index) = index {
            *out = format!("k8s/{}.yaml", bare.workloads[*index].name);
        }
    }
    let mut k8s_files: Vec<String> =
        plan.iter().filter_map(|(out, _, _)| out.strip_prefix("k8s/").map(str::to_owned)).collect();
    k8s_files.sort();
    if kind == Kind::Kubernetes {
        plan.push(("k8s/kustomization.yaml".to_owned(), "k8s/kustomization.yaml.tera".to_owned(), None));
    }
    let context = context::build(environment, upstreams, k8s_files);
    let mut base = tera::Context::from_serialize(&context).context("failed to build the template context")?;
    let mut files = Files::new();
    for (out, template, index) in plan {
        if let Some(index) = index {
            base.insert("workload", &context.workloads[index]);
        }
        let text = tera.render(&template, &base).map_err(|err| {
            anyhow!(
                "failed to render templates/{template} for environment `{}`: {}",
                environment.name,
                tera_error(&err)
            )
        })?;
        files.insert(out, tidy(&text));
    }
    files.insert(MARKER.to_owned(), marker(environment));
    Ok(files)
}

/// Trailing spaces go, runs of blank lines collapse to one, and the file
/// ends with exactly one newline: template control lines leave such
/// traces, and they would make diffs noisy.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn marker(environment: &Environment) -> String {
    format!(
        "Rendered by `cargo xtask render --env {}` from {} and templates/.\n\
         Every file here is generated and the directory is replaced whole on each render:\n\
         edit the environment files or the templates instead.\n",
        environment.name,
        environment
            .layered
            .layers
            .iter()
            .map(|layer| layer.path.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    )
}

/// Writes `files` into `out`, replacing it whole, or nothing on error: the
/// files go to a temporary directory beside `out`, which is then renamed.
pub fn write(files: &Files, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let is_ours = out.join(MARKER).is_file();
        let is_empty = fs::read_dir(out).with_context(|| format!("failed to read {}", out.display()))?.next().is_none();
        if !is_ours && !is_empty {
            bail!(
                "{} exists and was not written by `cargo xtask render` (no {MARKER} file); render replaces its output \
                 directory whole, so pick a new or empty directory",
                out.display()
            );
        }
    }
    let name = out.file_name().ok_or_else(|| anyhow!("{} is not a directory name", out.display()))?.to_string_lossy();
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("failed to create {}", parent.display()))?;
    let staging = parent.join(format!(".{name}.rendering-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = (|| -> anyhow::Result<()> {
        for (path, text) in files {
            let file = staging.join(path);
            if let Some(dir) = file.parent() {
                fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
            }
            fs::write(&file, text).with_context(|| format!("failed to write {}", file.display()))?;
        }
        if out.exists() {
            let old = parent.join(format!(".{name}.replaced-{}", std::process::id()));
            fs::rename(out, &old).with_context(|| format!("failed to move {} aside", out.display()))?;
            fs::rename(&staging, out).with_context(|| format!("failed to move the render into {}", out.display()))?;
            fs::remove_dir_all(&old).with_context(|| format!("failed to remove {}", old.display()))?;
        } else {
            fs::rename(&staging, out).with_context(|| format!("failed to move the render into {}", out.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// A unified diff from `dir` to `files`, empty when they agree. A file in
/// `dir` that would not be rendered counts as a difference too (render
/// would delete it), except under dot-directories such as `.git`.
pub fn compare(files: &Files, dir: &Path) -> anyhow::Result<String> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut existing = Vec::new();
    list(dir, dir, &mut existing)?;
    let mut diff = String::new();
    for (path, rendered) in files {
        let on_disk = dir.join(path);
        let current = match fs::read_to_string(&on_disk) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).with_context(|| format!("failed to read {}", on_disk.display())),
        };
        if current.as_deref() == Some(rendered.as_str()) {
            continue;
        }
        let old_name = if current.is_some() { format!("a/{path}") } else { "/dev/null".to_owned() };
        let text = TextDiff::from_lines(current.as_deref().unwrap_or(""), rendered.as_str())
            .unified_diff()
            .context_radius(3)
            .header(&old_name, &format!("b/{path}"))
            .to_string();
        diff.push_str(&text);
    }
    for path in existing {
        if !files.contains_key(&path) {
            let current = fs::read_to_string(dir.join(&path)).unwrap_or_default();
            let text = TextDiff::from_lines(current.as_str(), "")
                .unified_diff()
                .header(&format!("a/{path}"), "/dev/null")
                .to_string();
            diff.push_str(&text);
        }
    }
    Ok(diff)
}

fn list(base: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("failed to read {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if !name.to_string_lossy().starts_with('.') {
                list(base, &path, out)?;
            }
        } else {
            out.push(path.strip_prefix(base).unwrap_or(&path).to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(())
}

#[cfg(test)]
pub mod tests;

#[cfg(test)]
#[test]
fn tidy_trims_trailing_space_and_collapses_blank_lines() {
    assert_eq!(tidy("\n\na  \n\n\n\nb\n\n"), "a\n\nb\n");
}
