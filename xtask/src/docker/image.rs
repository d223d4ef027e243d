//! The offline image: a build context, made in memory, that needs no base
//! image and no registry. It holds the `freedumb` binary, exactly the shared
//! libraries it links (as `ldd` resolves them on this machine, so the image
//! runs the same glibc the binary was linked against), the system's CA
//! certificates and an `/etc/passwd` naming the unprivileged user, laid out
//! under `rootfs/` and copied onto `scratch` by a five-line Dockerfile.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Where the binary lives in the image; the Dockerfile's entry point.
pub const BINARY_PATH: &str = "/usr/local/bin/freedumb";
/// Debian's bundle of every trusted CA, where rustls-native-certs and
/// OpenSSL look first.
pub const CA_CERTIFICATES: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where nginx lives in the gateway image (Debian's path).
pub const NGINX_PATH: &str = "/usr/sbin/nginx";
/// Where the gateway image expects its rendered configuration directory.
pub const GATEWAY_CONF_DIR: &str = "/etc/nginx/freedumb";

/// Which program the image runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `freedumb`: every service and worker.
    Freedumb,
    /// This machine's nginx (the one `cargo xtask check` validates the
    /// configuration with), for the gateway: its configuration is mounted
    /// at `GATEWAY_CONF_DIR/conf/`, its pid and temporary files go to /tmp.
    Gateway,
    /// This machine's `redis-server`, with `redis-cli` (the health check)
    /// and a shell (`sh -c`, which passes the password from the
    /// environment): what the end-to-end test runs as a Redis container,
    /// since no registry's `redis:` image can be pulled here. Its data
    /// directory, `/data`, belongs to the unprivileged user.
    Redis,
}

/// Where `redis-server` and `redis-cli` live in the Redis image (on the
/// engine's default PATH).
pub const REDIS_DIR: &str = "/usr/local/bin";

/// What goes into the image, before it is packed.
#[derive(Debug)]
pub struct Offline {
    pub program: Program,
    pub binary: PathBuf,
    /// Other programs the image holds: path in the image → file here.
    pub extras: BTreeMap<String, PathBuf>,
    /// Path in the image → file on this machine. `ldd` names the path the
    /// loader will look for; the content is read through any symlink.
    pub libraries: BTreeMap<String, PathBuf>,
    pub ca_certificates: PathBuf,
    pub uid: u32,
    /// `LABEL`s of the image (OCI annotations and ours).
    pub labels: BTreeMap<String, String>,
}

impl Offline {
    /// The image for `binary`, with its libraries found by `ldd`.
    pub fn for_binary(binary: &Path, uid: u32, labels: BTreeMap<String, String>) -> anyhow::Result<Self> {
        Self::for_program(Program::Freedumb, binary, uid, labels)
    }

    pub fn for_program(
        program: Program,
        binary: &Path,
        uid: u32,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let extras = match program {
            Program::Redis => {
                let cli = binary.with_file_name("redis-cli");
                if !cli.is_file() {
                    bail!("{} is missing; Debian's redis-tools has it", cli.display());
                }
                BTreeMap::from([
                    (format!("{REDIS_DIR}/redis-cli"), cli),
                    // Read through the symlink: Debian's /bin/sh is dash.
                    ("/bin/sh".to_owned(), PathBuf::from("/bin/sh")),
                ])
            }
            Program::Freedumb | Program::Gateway => BTreeMap::new(),
        };
        let mut libraries = libraries_of(binary)?;
        for extra in extras.values() {
            libraries.extend(libraries_of(extra)?);
        }
        let ca_certificates = PathBuf::from(CA_CERTIFICATES);
        if !ca_certificates.is_file() {
            bail!("{CA_CERTIFICATES} is missing; install Debian's ca-certificates package");
        }
        Ok(Offline { program, binary: binary.to_owned(), extras, libraries, ca_certificates, uid, labels })
    }

    /// The Dockerfile: everything is already laid out under `rootfs/`.
    /// Exec-form health check, since there is no shell in the image.
    pub fn dockerfile(&self) -> String {
        let uid = self.uid;
        let mut text = String::from(
            "# The offline freedumb image: no base image, made by `cargo xtask build`.\nFROM scratch\nCOPY rootfs/ /\n",
        );
        for (key, value) in &self.labels {
            text.push_str(&format!(
                "LABEL {}={}\n",
                serde_json::to_string(key).unwrap(),
                serde_json::to_string(value).unwrap()
            ));
        }
        text.push_str(&format!("USER {uid}:{uid}\n"));
        match self.program {
            Program::Freedumb => text.push_str(&format!(
                "EXPOSE 3000\n\
                 HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 CMD [\"{BINARY_PATH}\", \"healthcheck\"]\n\
                 ENTRYPOINT [\"{BINARY_PATH}\"]\nCMD [\"serve\", \"all\"]\n"
            )),
            // QUIT is nginx's graceful stop; HUP (a reload) re-reads the
            // configuration and lets the old workers finish their requests.
            Program::Gateway => text.push_str(&format!(
                "STOPSIGNAL SIGQUIT\n\
                 ENTRYPOINT [\"{NGINX_PATH}\", \"-p\", \"/tmp/\", \"-e\", \"stderr\", \"-c\", \"{GATEWAY_CONF_DIR}/conf/nginx.conf\", \"-g\", \"daemon off;\"]\n"
            )),
            // COPY sets root as the owner; the data directory must be the
            // user's, and a new named volume takes it over (owner included).
            Program::Redis => text.push_str(&format!(
                "COPY --chown={uid}:{uid} data/ /data/\nWORKDIR /data\nEXPOSE 6379\nCMD [\"redis-server\"]\n"
            )),
        }
        text
    }

    /// `/etc/passwd` and `/etc/group` with root and the service user, so
    /// that `USER` resolves to a name and nothing runs as an unknown uid.
    fn passwd(&self) -> (String, String) {
        let uid = self.uid;
        (
            format!(
                "root:x:0:0:root:/root:/sbin/nologin\nfreedumb:x:{uid}:{uid}:freedumb:/nonexistent:/sbin/nologin\n"
            ),
            format!("root:x:0:\nfreedumb:x:{uid}:\n"),
        )
    }

    /// The build context as a tar archive. Every entry has a fixed mtime and
    /// owner, so the same inputs give the same archive, and the engine's
    /// build cache gives the same image.
    pub fn context(&self) -> anyhow::Result<Vec<u8>> {
        let mut archive = tar::Builder::new(Vec::new());
        let mut add = |path: &str, mode: u32, data: &[u8]| -> anyhow::Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            archive.append_data(&mut header, path, data).with_context(|| format!("failed to add {path} to the context"))
        };
        add("Dockerfile", 0o644, self.dockerfile().as_bytes())?;
        let read = |path: &Path| fs::read(path).with_context(|| format!("failed to read {}", path.display()));
        let in_image = match self.program {
            Program::Freedumb => BINARY_PATH.to_owned(),
            Program::Gateway => NGINX_PATH.to_owned(),
            Program::Redis => format!("{REDIS_DIR}/redis-server"),
        };
        add(&format!("rootfs{in_image}"), 0o755, &read(&self.binary)?)?;
        for (in_image, on_host) in &self.extras {
            add(&format!("rootfs{in_image}"), 0o755, &read(on_host)?)?;
        }
        for (in_image, on_host) in &self.libraries {
            add(&format!("rootfs{in_image}"), 0o755, &read(on_host)?)?;
        }
        add(&format!("rootfs{CA_CERTIFICATES}"), 0o644, &read(&self.ca_certificates)?)?;
        let (passwd, group) = self.passwd();
        add("rootfs/etc/passwd", 0o644, passwd.as_bytes())?;
        add("rootfs/etc/group", 0o644, group.as_bytes())?;
        if self.program == Program::Redis {
            let mut header = tar::Header::new_gnu();
            header.set_size(0);
            header.set_mode(0o755);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Directory);
            archive
                .append_data(&mut header, "data/", std::io::empty())
                .context("failed to add data/ to the context")?;
        }
        archive.into_inner().context("failed to finish the build context")
    }
}

/// The shared libraries `program` links, as `ldd` resolves them here.
fn libraries_of(program: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("failed to run `ldd {}` (Debian's libc-bin has it)", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // A static binary makes ldd exit 1 with "not a dynamic executable".
    if !output.status.success() && !stdout.contains("=>") {
        return Ok(BTreeMap::new());
    }
    linked_libraries(&stdout).with_context(|| format!("`ldd {}`", program.display()))
}

/// The libraries in `ldd`'s output, by the absolute path the loader uses.
/// The vDSO has no file and is skipped; a library `ldd` cannot find is an
/// error, since the image would not start.
pub fn linked_libraries(ldd: &str) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut libraries = BTreeMap::new();
    for line in ldd.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} is not found on this machine", name.trim());
                }
                target.split_whitespace().next().unwrap_or_default()
            }
            // The loader itself (`/lib64/ld-linux-x86-64.so.2 (0x...)`) or the vDSO.
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libraries.insert(path.to_owned(), PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffc1d5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c0b9000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0e1bfd9000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1ade5000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c0ec000)
";

    #[test]
    fn the_loader_and_each_resolved_library_are_taken_and_the_vdso_is_not() {
        let libraries = linked_libraries(LDD).unwrap();
        let paths: Vec<&str> = libraries.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn a_library_ldd_cannot_find_is_an_error() {
        let err = linked_libraries("\tlibssl.so.3 => not found\n").unwrap_err().to_string();
        assert_eq!(err, "libssl.so.3 is not found on this machine");
    }

    #[test]
    fn the_context_holds_the_binary_its_libraries_certificates_and_user() {
        // Any small dynamically linked program will do.
        let binary = Path::new("/bin/true");
        let labels = BTreeMap::from([("org.opencontainers.image.revision".to_owned(), "abc".to_owned())]);
        let offline = Offline::for_binary(binary, 1001, labels).unwrap();

        let context = offline.context().unwrap();

        let mut archive = tar::Archive::new(context.as_slice());
        let mut entries = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            entries.insert(entry.path().unwrap().to_string_lossy().into_owned(), entry.header().mode().unwrap());
        }
        assert_eq!(entries.get("rootfs/usr/local/bin/freedumb"), Some(&0o755));
        assert_eq!(entries.get("rootfs/etc/ssl/certs/ca-certificates.crt"), Some(&0o644));
        assert!(entries.contains_key("rootfs/lib64/ld-linux-x86-64.so.2"), "{entries:?}");
        assert!(entries.keys().any(|path| path.ends_with("/libc.so.6")), "{entries:?}");
        assert!(entries.contains_key("rootfs/etc/passwd"));
        let dockerfile = offline.dockerfile();
        assert!(dockerfile.contains("FROM scratch\n"), "{dockerfile}");
        assert!(dockerfile.contains("USER 1001:1001\n"), "{dockerfile}");
        assert!(dockerfile.contains("LABEL \"org.opencontainers.image.revision\"=\"abc\"\n"), "{dockerfile}");
        assert!(offline.passwd().0.contains("freedumb:x:1001:1001:"));
    }

    #[test]
    fn the_same_inputs_give_the_same_context() {
        let offline = Offline::for_binary(Path::new("/bin/true"), 1001, BTreeMap::new()).unwrap();
        assert!(offline.context().unwrap() == offline.context().unwrap());
    }
}
