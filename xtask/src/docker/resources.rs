//! The engine's objects besides containers: images pulled from a registry,
//! networks and named volumes. Each `ensure_*` creates what is missing and
//! says whether it did, so that a second run can report "nothing to do".
//!
//! Networks and volumes carry the project label, like containers: `down`
//! finds them by it (and never touches another project's).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, bail};
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use futures::StreamExt;

use super::Engine;
use crate::progress::{Event, Progress};

fn not_found(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

fn label_filter(labels: &BTreeMap<String, String>) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect())])
}

impl Engine {
    /// Whether the engine has `image` (a name or an id).
    pub fn has_image(&self, image: &str) -> anyhow::Result<bool> {
        match self.runtime.block_on(self.docker.inspect_image(image)) {
            Ok(_) => Ok(true),
            Err(err) if not_found(&err) => Ok(false),
            Err(err) => Err(err).with_context(|| format!("failed to inspect image {image}")),
        }
    }

    /// Makes sure the engine has `image`, pulling it through the API when it
    /// does not, with the registry's status lines streamed to `progress`.
    /// `needed_by` names what needs it, for the messages. Returns whether it
    /// pulled. A pull that fails names the image and the registry's error,
    /// and the engine is left as it was.
    pub fn ensure_image(&self, image: &str, needed_by: &str, progress: &Progress) -> anyhow::Result<bool> {
        if self.has_image(image)? {
            return Ok(false);
        }
        progress.emit(Event::ImagePulling { image: image.to_owned(), needed_by: needed_by.to_owned() });
        let started = Instant::now();
        // Untagged, the Engine API pulls every tag of the repository.
        let options = CreateImageOptionsBuilder::new().from_image(&pull_reference(image)).build();
        let mut log = progress.build_log();
        let pulled: anyhow::Result<()> = self.runtime.block_on(async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            // The last status of each layer: "Downloading" comes once per
            // chunk, and one line per change is enough.
            let mut last: HashMap<String, String> = HashMap::new();
            while let Some(info) = stream.next().await {
                let info = info.map_err(|err| anyhow::anyhow!("{}", engine_message(&err)))?;
                if let Some(detail) = info.error_detail {
                    bail!("{}", detail.message.unwrap_or_default().trim());
                }
                if let Some(status) = info.status {
                    let id = info.id.unwrap_or_default();
                    if last.get(&id) != Some(&status) {
                        let line = if id.is_empty() { format!("{status}\n") } else { format!("{id}: {status}\n") };
                        let _ = log.write_all(line.as_bytes());
                        last.insert(id, status);
                    }
                }
            }
            Ok(())
        });
        let _ = log.flush();
        if let Err(err) = pulled {
            bail!(
                "the image {image} (for {needed_by}) is not on this engine and could not be pulled: {err:#}; \
                 pull or load it by hand, or name an image the engine has"
            );
        }
        if !self.has_image(image)? {
            bail!("the pull of {image} (for {needed_by}) ended without an error, but the engine has no such image");
        }
        progress.emit(Event::ImagePulled { image: image.to_owned(), seconds: started.elapsed().as_secs_f64() });
        Ok(true)
    }

    /// Creates the bridge network `name` with `subnet` unless it exists;
    /// whether it created it. One that exists with another subnet is an
    /// error: its containers would have to move to a new one.
    pub fn ensure_network(&self, name: &str, subnet: &str, labels: &BTreeMap<String, String>) -> anyhow::Result<bool> {
        match self.runtime.block_on(self.docker.inspect_network(name, None)) {
            Ok(network) => {
                let subnets: Vec<String> = network
                    .ipam
                    .and_then(|ipam| ipam.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|config| config.subnet)
                    .collect();
                if !subnets.iter().any(|s| s == subnet) {
                    bail!(
                        "network {name} exists with subnet {}, but the environment says {subnet}; take the \
                         deployment down (`cargo xtask down`, which removes the network) and deploy again",
                        subnets.join(", ")
                    );
                }
                return Ok(false);
            }
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(err).with_context(|| format!("failed to inspect network {name}")),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            ipam: Some(Ipam {
                driver: Some("default".to_owned()),
                config: Some(vec![IpamConfig { subnet: Some(subnet.to_owned()), ..Default::default() }]),
                options: None,
            }),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.runtime
            .block_on(self.docker.create_network(request))
            .with_context(|| format!("failed to create network {name} ({subnet})"))?;
        Ok(true)
    }

    /// The names of the networks with all of `labels`.
    pub fn networks(&self, labels: &BTreeMap<String, String>) -> anyhow::Result<Vec<String>> {
        let options = ListNetworksOptionsBuilder::new().filters(&label_filter(labels)).build();
        let networks =
            self.runtime.block_on(self.docker.list_networks(Some(options))).context("failed to list networks")?;
        let mut names: Vec<String> = networks.into_iter().filter_map(|n| n.name).collect();
        names.sort();
        Ok(names)
    }

    /// Removes a network; gone already is fine.
    pub fn remove_network(&self, name: &str) -> anyhow::Result<()> {
        match self.runtime.block_on(self.docker.remove_network(name)) {
            Ok(()) => Ok(()),
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("failed to remove network {name}")),
        }
    }

    /// Creates the named volume unless it exists; whether it created it.
    pub fn ensure_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> anyhow::Result<bool> {
        match self.runtime.block_on(self.docker.inspect_volume(name)) {
            Ok(_) => return Ok(false),
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(err).with_context(|| format!("failed to inspect volume {name}")),
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.runtime
            .block_on(self.docker.create_volume(request))
            .with_context(|| format!("failed to create volume {name}"))?;
        Ok(true)
    }

    /// The names of the volumes with all of `labels`.
    pub fn volumes(&self, labels: &BTreeMap<String, String>) -> anyhow::Result<Vec<String>> {
        let options = ListVolumesOptionsBuilder::new().filters(&label_filter(labels)).build();
        let response =
            self.runtime.block_on(self.docker.list_volumes(Some(options))).context("failed to list volumes")?;
        let mut names: Vec<String> = response.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect();
        names.sort();
        Ok(names)
    }

    /// Removes a named volume and its data; gone already is fine.
    pub fn remove_volume(&self, name: &str) -> anyhow::Result<()> {
        let options = RemoveVolumeOptionsBuilder::new().force(false).build();
        match self.runtime.block_on(self.docker.remove_volume(name, Some(options))) {
            Ok(()) => Ok(()),
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("failed to remove volume {name}")),
        }
    }
}

/// `image` as the engine should pull it: with the tag `latest` when it names
/// neither a tag (a `:` after its last `/`; one before it is a registry's
/// port) nor a digest (`@sha256:...`), as `docker pull` does.
pub fn pull_reference(image: &str) -> String {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || name.contains(':') { image.to_owned() } else { format!("{image}:latest") }
}

/// What the engine said, without bollard's wrapping (`Docker responded with
/// status code 404: ...`) when there is a message.
fn engine_message(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::pull_reference;

    #[test]
    fn an_image_without_a_tag_or_digest_is_pulled_as_latest_and_only_that() {
        assert_eq!(pull_reference("postgres"), "postgres:latest");
        assert_eq!(pull_reference("library/postgres"), "library/postgres:latest");
        assert_eq!(pull_reference("registry:5000/x"), "registry:5000/x:latest", "5000 is the registry's port");
        assert_eq!(pull_reference("registry:5000/team/x:1.2"), "registry:5000/team/x:1.2");
        assert_eq!(pull_reference("postgres:15-alpine"), "postgres:15-alpine");
        let pinned = format!("x@sha256:{}", "a".repeat(64));
        assert_eq!(pull_reference(&pinned), pinned);
        let both = format!("registry:5000/x:1@sha256:{}", "b".repeat(64));
        assert_eq!(pull_reference(&both), both);
    }
}
