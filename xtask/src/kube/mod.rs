//! Kubernetes deployments through the Kubernetes API (kube-rs). The
//! deployer lives beside this file; `fake` is the in-process API server its
//! tests deploy to (test support, never shipped).

#[cfg(test)]
pub(crate) mod fake;
