//! The Kubernetes API, through kube-rs: how `deploy`, `diff`, `status`,
//! `logs` and `rollback` reach a staging or prod cluster (no kubectl, no
//! Helm, no files in between: the objects are the in-memory render).
//!
//! The shape is `docker/`'s: pure parts, unit-tested without a server
//! (`plan`: the objects and their order; `rollout`: what a Deployment's and a
//! Pod's state mean; `applyset`: the inventory and what to prune; `diff`:
//! what changes), and the parts that talk to the API (`wait`: watching
//! rollouts; `deploy`: apply, wait, roll back, prune; `status`: `status` and
//! `logs`). `Cluster` wraps the async client in a small runtime of its
//! own, so the verbs stay synchronous like the rest of xtask.
//!
//! A cluster is reached through a kubeconfig (`--kubeconfig`, else
//! `KUBECONFIG`, else `~/.kube/config`; `--context`, else its current
//! context) or, with none of those, the pod's in-cluster service account,
//! whose context is called `in-cluster`. An environment names the context
//! it belongs to (`kubernetes.context`), and nothing runs against another.

pub mod applyset;
pub mod cli;
pub mod deploy;
pub mod diff;
pub mod plan;
pub mod rollout;
pub mod status;
mod wait;

// The in-process API server the end-to-end tests deploy to (test support,
// never shipped).
#[cfg(test)]
mod e2e;
#[cfg(test)]
pub(crate) mod fake;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::environment::Environment;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "freedumb";
/// The context name of an in-cluster connection.
pub const IN_CLUSTER: &str = "in-cluster";

/// Which cluster: the flags every Kubernetes verb takes.
#[derive(Debug, Clone, Default, Args)]
pub struct Connect {
    /// The kubeconfig context to use [default: the kubeconfig's current
    /// context]. It must be the one the environment names
    /// (`kubernetes.context`).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig file [default: $KUBECONFIG, else ~/.kube/config;
    /// without any, the in-cluster service account].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// A connection to a cluster, with the runtime its calls run on.
pub struct Cluster {
    pub client: ::kube::Client,
    /// The context connected through (`in-cluster` without a kubeconfig).
    pub context: String,
    runtime: tokio::runtime::Runtime,
}

/// Makes ring rustls's process-wide provider, once, before any client is
/// built. kube asks for ring, but a workspace build also turns on aws-lc-rs
/// (reqwest's default), and rustls refuses to choose between two.
pub(crate) fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Cluster {
    /// Connects as `connect` says, refusing a context other than the one
    /// `environment` belongs to before anything is sent to it.
    pub fn connect(connect: &Connect, environment: &Environment) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the runtime for the Kubernetes API")?;
        let (config, context) = runtime.block_on(config(connect))?;
        guard(environment, &context)?;
        install_crypto();
        // The client's buffer spawns its worker on the current runtime.
        let _entered = runtime.enter();
        let client = ::kube::Client::try_from(config)
            .with_context(|| format!("failed to create a Kubernetes client for context `{context}`"))?;
        Ok(Cluster { client, context, runtime })
    }

    /// Runs `future` to completion on the cluster's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// The kubeconfig to read, if any: `--kubeconfig`, `KUBECONFIG`, `~/.kube/config`.
fn kubeconfig_path(connect: &Connect) -> Option<PathBuf> {
    if let Some(path) = &connect.kubeconfig {
        return Some(path.clone());
    }
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        // kubectl merges a list; the first file is the one with the
        // current context in every setup we support.
        return std::env::split_paths(&paths).next();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    Some(home.join(".kube").join("config")).filter(|path| path.is_file())
}

async fn config(connect: &Connect) -> anyhow::Result<(::kube::Config, String)> {
    let Some(path) = kubeconfig_path(connect) else {
        if let Some(context) = &connect.context {
            bail!(
                "--context {context} names a kubeconfig context, but there is no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config)"
            );
        }
        let config = ::kube::Config::incluster().context(
            "no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and not inside a cluster; point KUBECONFIG at \
             the cluster's kubeconfig",
        )?;
        return Ok((config, IN_CLUSTER.to_owned()));
    };
    let kubeconfig = ::kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("failed to read the kubeconfig {}", path.display()))?;
    let Some(context) = connect.context.clone().or_else(|| kubeconfig.current_context.clone()) else {
        bail!("{} has no current-context; pass --context", path.display());
    };
    if !kubeconfig.contexts.iter().any(|c| c.name == context) {
        let known: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
        bail!("{} has no context `{context}` (it has: {})", path.display(), known.join(", "));
    }
    let options = ::kube::config::KubeConfigOptions { context: Some(context.clone()), ..Default::default() };
    let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("failed to load context `{context}` from {}", path.display()))?;
    Ok((config, context))
}

/// The context guard: `environment` may only be deployed to the context it
/// names. One line naming both, so that it cannot be misread.
pub fn guard(environment: &Environment, context: &str) -> anyhow::Result<()> {
    let Some(kubernetes) = &environment.model.kubernetes else {
        bail!("environment `{}` is not a kubernetes environment", environment.name);
    };
    if kubernetes.context != context {
        bail!(
            "refusing to touch context `{context}`: environment `{}` belongs to context `{}` (kubernetes.context); \
             pass --context {}",
            environment.name,
            kubernetes.context,
            kubernetes.context
        );
    }
    Ok(())
}

/// The namespace an environment lives in.
pub fn namespace(environment: &Environment) -> anyhow::Result<&str> {
    match &environment.model.kubernetes {
        Some(kubernetes) => Ok(&kubernetes.namespace),
        None => bail!("environment `{}` is not a kubernetes environment", environment.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prod_is_refused_on_any_context_but_its_own_with_one_line_naming_both() {
        let prod = crate::environment::load(&crate::project_root(), "prod").unwrap();
        let own = prod.model.kubernetes.as_ref().unwrap().context.clone();
        assert!(guard(&prod, &own).is_ok());
        let err = guard(&prod, "kind-dev").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "refusing to touch context `kind-dev`: environment `prod` belongs to context `{own}` \
                 (kubernetes.context); pass --context {own}"
            )
        );
        assert!(!err.contains('\n'));
    }
}
