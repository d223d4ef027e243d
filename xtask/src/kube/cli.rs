//! The Kubernetes side of the verbs: `deploy`, `diff`, `rollback`, `status`
//! and `logs` with a kubernetes environment (staging, prod) come here from
//! their modules, which keep the flags of the other kinds.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::deploy::{Deployer, Options, Outcome, image_of};
use super::{Cluster, Connect, namespace, plan, status};
use crate::build::Output;
use crate::environment::Environment;
use crate::progress::Progress;
use crate::render::{self, context::Upstreams};

/// What `--dry-run` and `diff` fail with when something would change: exit
/// status 1, as `kubectl diff`, with the diff already printed.
#[derive(Debug)]
pub struct WouldChange;

impl std::fmt::Display for WouldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cluster differs from the render (diff above)")
    }
}

impl std::error::Error for WouldChange {}

/// The flags of a Kubernetes deploy (and of `rollback`, `diff`).
#[derive(Debug, Clone, Args)]
pub struct Apply {
    #[command(flatten)]
    pub connect: Connect,
    /// Take over fields another field manager owns (server-side apply's
    /// force); without it, a conflict fails the deploy naming the manager
    /// and the fields.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Leave out custom resources whose CRD the cluster lacks (a warning
    /// naming what installs it) instead of failing.
    #[arg(long)]
    pub skip_missing_crds: bool,
    /// Delete the members of the set that are no longer rendered (listed
    /// first); never anything outside the set.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: PersistentVolumeClaims and Namespaces too.
    #[arg(long, requires = "prune")]
    pub prune_allow_data_loss: bool,
    /// Seconds the rollouts get at most (each Deployment's progress
    /// deadline fails it sooner).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
}

/// What the command line gives when no flag is passed (a derived default
/// would give the rollouts no time at all).
impl Default for Apply {
    fn default() -> Self {
        Apply {
            connect: Connect::default(),
            force_conflicts: false,
            skip_missing_crds: false,
            prune: false,
            prune_allow_data_loss: false,
            timeout: DEFAULT_TIMEOUT_SECS,
        }
    }
}

const DEFAULT_TIMEOUT_SECS: u64 = 900;

impl Apply {
    fn options(&self, dry_run: bool) -> Options {
        Options {
            dry_run,
            force_conflicts: self.force_conflicts,
            skip_missing_crds: self.skip_missing_crds,
            prune: self.prune,
            prune_allow_data_loss: self.prune_allow_data_loss,
            timeout: Duration::from_secs(self.timeout),
        }
    }
}

/// The objects of `environment`'s render, refused when the render fails
/// its policy (prod's images must be named by digest), unless only
/// compared.
fn objects(
    root: &Path,
    environment: &Environment,
    compare_only: bool,
    progress: &Progress,
) -> anyhow::Result<Vec<plan::Object>> {
    let files = render::render(root, environment, Upstreams::Deployed)?;
    let findings = crate::policy::check(environment, &files)?;
    if !findings.is_empty() {
        let list: Vec<String> = findings.iter().map(ToString::to_string).collect();
        if !compare_only {
            bail!(
                "environment `{}` fails its policy, so it is not deployed ({} finding(s); `cargo xtask check --env {}`):\n  {}",
                environment.name,
                list.len(),
                environment.name,
                list.join("\n  ")
            );
        }
        for finding in list {
            progress.warn(format!("policy: {finding}"));
        }
    }
    plan::objects(&files)
}

fn summary_text(outcome: &Outcome) -> String {
    let mut text =
        format!("{}/{} runs {} (revision {})\n", outcome.context, outcome.namespace, outcome.image, outcome.revision);
    if !outcome.changed {
        text.push_str("nothing changed\n");
    }
    for pruned in &outcome.pruned {
        text.push_str(&format!("pruned {pruned}\n"));
    }
    text
}

/// `deploy --env staging|prod [--dry-run]`.
pub fn deploy(
    root: &Path,
    environment: &Environment,
    flags: &Apply,
    dry_run: bool,
    output: Output,
) -> anyhow::Result<()> {
    let changed = Progress::reporting(output, |progress| {
        let objects = objects(root, environment, dry_run, progress)?;
        let image = image_of(&objects);
        let cluster = Cluster::connect(&flags.connect, environment)?;
        progress.step(format!("deploying `{}` to {}/{}", environment.name, cluster.context, namespace(environment)?));
        let mut deployer = Deployer::new(
            cluster.client.clone(),
            &cluster.context,
            namespace(environment)?,
            flags.options(dry_run),
            progress,
        );
        let outcome = cluster.block_on(deployer.deploy(objects, &image))?;
        if dry_run {
            print!("{}", outcome.diff);
        }
        progress.finish(|| if dry_run { String::new() } else { summary_text(&outcome) }, &outcome);
        Ok(dry_run && outcome.changed)
    })?;
    if changed { Err(WouldChange.into()) } else { Ok(()) }
}

/// `rollback --env staging|prod`.
pub fn rollback(environment: &Environment, flags: &Apply, output: Output) -> anyhow::Result<()> {
    Progress::reporting(output, |progress| {
        let cluster = Cluster::connect(&flags.connect, environment)?;
        let mut deployer = Deployer::new(
            cluster.client.clone(),
            &cluster.context,
            namespace(environment)?,
            flags.options(false),
            progress,
        );
        let outcome = cluster.block_on(deployer.roll_back())?;
        progress.finish(|| summary_text(&outcome), &outcome);
        Ok(())
    })
}

/// Show what `deploy --env NAME` would change on the cluster: a server-side
/// dry-run apply against the live objects, one unified diff per object.
/// Exit status 0 when nothing would change, 1 when something would, 2 on
/// an error (as `kubectl diff`).
#[derive(Debug, Args)]
pub struct Diff {
    /// The kubernetes environment, as in environments/NAME.toml.
    #[arg(long, value_name = "NAME")]
    env: String,
    #[command(flatten)]
    apply: Apply,
}

impl Diff {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = crate::environment::load(root, &self.env)?;
        if environment.model.kubernetes.is_none() {
            bail!(
                "`diff` compares a kubernetes environment with its cluster; `{}` is a {} one",
                self.env,
                environment.model.kind
            );
        }
        deploy(root, &environment, &self.apply, true, Output::Text)
    }
}

/// `status --env staging|prod`.
pub fn status(environment: &Environment, connect: &Connect, output: Output) -> anyhow::Result<()> {
    let cluster = Cluster::connect(connect, environment)?;
    let namespace = namespace(environment)?;
    let rows = cluster.block_on(status::status(&cluster.client, namespace))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows).expect("serialisable")),
        Output::Text if rows.is_empty() => println!("{}/{namespace} has no workload of the set", cluster.context),
        Output::Text => print!("{}", status::table(&rows)),
    }
    Ok(())
}

/// `logs SERVICE --env staging|prod [--follow]`.
pub fn logs(
    environment: &Environment,
    connect: &Connect,
    service: &str,
    follow: bool,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    let cluster = Cluster::connect(connect, environment)?;
    let namespace = namespace(environment)?;
    let tail = tail.map(|n| n as i64).or(if follow { Some(10) } else { Some(status::DEFAULT_TAIL) });
    let mut out = std::io::stdout();
    cluster.block_on(status::logs(&cluster.client, namespace, service, follow, tail, &mut out))
}
