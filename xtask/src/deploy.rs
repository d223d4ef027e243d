//! `cargo xtask deploy`: the whole platform on this machine, as one
//! `freedumb serve` process behind the rendered nginx gateway, in the
//! foreground. Everything comes from the `local` environment model, the
//! same one `render` reads.
//!
//! The steps, in order: check that the backing services and nginx are
//! there, build `freedumb`, generate (or reuse) local secrets, render the
//! gateway's configuration into `.local/gateway/`, migrate, start
//! `freedumb serve <enabled services>`, wait for `/ready`, start nginx,
//! wait for its `/health`, then wait for Ctrl-C and stop both the way an
//! orchestrator would: the gateway first (SIGQUIT, graceful), then
//! `freedumb` (SIGTERM and a drain period). Each step fails with what to do
//! about it, so a fresh checkout gets from `git clone` to a running platform
//! by following the messages.

use std::ffi::OsStr;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::environment::{self, Environment, Kind, vars};
use crate::render::{self, context::Upstreams};
use crate::secrets::{self, Secrets};
use crate::{backing, process, tools};

/// How long `freedumb` gets to answer `/ready` after it starts: migrations
/// have already run, so this covers connecting to Postgres and Redis.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long after a child exits we wait for our own Ctrl-C handler to
/// report the signal that probably made it exit.
const SIGNAL_GRACE: Duration = Duration::from_millis(500);
/// `freedumb` drains for up to 30 s (`SHUTDOWN_TIMEOUT_SECS`); a little more
/// before SIGKILL, so that a clean drain is never cut short.
const STOP_TIMEOUT: Duration = Duration::from_secs(35);
/// nginx finishes open requests on SIGQUIT; proxied ones wait for freedumb,
/// which is still running then.
const GATEWAY_STOP_TIMEOUT: Duration = Duration::from_secs(35);
/// nginx's prefix (pid, temporary files) and rendered configuration
/// (`conf/`), relative to the project root.
const GATEWAY_DIR: &str = ".local/gateway";
/// The exit code `freedumb` uses for a configuration error.
const FREEDUMB_EXIT_CONFIG: i32 = 2;

/// Build and run the whole platform locally, in the foreground, until Ctrl-C.
#[derive(Debug, Args)]
pub struct Deploy {
    /// The environment to deploy, as in environments/NAME.toml: a local one,
    /// a compose one (dev), which always runs as containers, or a
    /// kubernetes one (staging, prod), rolled out to its cluster through
    /// the Kubernetes API.
    #[arg(long, value_name = "NAME", default_value = "local")]
    env: String,
    /// Serve on this port instead of the one in the environment file.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Build with the dev profile instead of release: quicker to build,
    /// slower to run.
    #[arg(long)]
    debug: bool,
    /// Run the platform as containers on the Docker engine instead of as
    /// local processes, converging what runs there to the model (a
    /// changed image or setting rolls each replica in turn).
    #[arg(long)]
    containers: bool,
    /// With --containers (or a compose environment): deploy this image
    /// instead of building one.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// With --containers (or a compose environment): `json` writes one JSON
    /// event per line on stdout, the last a summary (the schema is in
    /// xtask/src/progress.rs); `text` shows progress bars on a terminal and
    /// plain lines elsewhere.
    #[arg(long, value_enum, default_value = "text")]
    output: crate::build::Output,
    /// A kubernetes environment: change nothing; print what would change
    /// (a server-side dry-run apply against the live objects, one unified
    /// diff per object) and exit 1 if anything would, 0 if nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    kubernetes: crate::kube::cli::Apply,
    #[command(flatten)]
    verify: crate::loadtest::Verify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Release,
    Dev,
}

impl Profile {
    /// The directory under the target directory that cargo builds into.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

impl Deploy {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let mut environment = environment::load(root, &self.env)?;
        if environment.model.kind == Kind::Kubernetes {
            if self.containers || self.image.is_some() || self.port.is_some() {
                bail!(
                    "environment `{}` is a kubernetes one: it runs the image its environment file names \
                     (platform.tag, platform.digest), so --containers, --image and --port do not apply",
                    self.env
                );
            }
            crate::kube::cli::deploy(root, &environment, &self.kubernetes, self.dry_run, self.output)?;
            if self.dry_run {
                return Ok(());
            }
            return self.verify.run_or_roll_back(root, &environment, || {
                crate::kube::cli::rollback(&environment, &self.kubernetes, self.output)
            });
        }
        if self.verify.verify && !(self.containers || environment.model.kind == Kind::Compose) {
            bail!("--verify checks a rollout that can be rolled back: a kubernetes deploy, or one with --containers");
        }
        if self.dry_run {
            bail!(
                "--dry-run compares a kubernetes environment with its cluster; `{}` is a {} one",
                self.env,
                environment.model.kind
            );
        }
        // A compose environment (dev) runs as containers: there is no other
        // way to deploy it from here.
        if self.containers || environment.model.kind == Kind::Compose {
            return crate::progress::Progress::reporting(self.output, |progress| {
                if environment.model.kind == Kind::Compose && environment.model.gateway.tls {
                    // The container gateway is started, checked and switched
                    // over plain HTTP, and certificates belong to the compose
                    // stack (nginx/ssl/): deployed from here, it serves HTTP.
                    environment.model.gateway.tls = false;
                    progress.warn(format!(
                        "the gateway of `{}` serves plain HTTP on port {} when deployed from here; the rendered \
                         compose file keeps TLS",
                        self.env, environment.model.gateway.http_port
                    ));
                }
                crate::docker::deploy::run(root, &environment, self.image.as_deref(), self.debug, progress)
            })
            .and_then(|()| {
                self.verify.run_or_roll_back(root, &environment, || {
                    let rollback = crate::docker::deploy::Rollback {
                        env: self.env.clone(),
                        output: self.output,
                        kubernetes: Default::default(),
                    };
                    crate::progress::Progress::reporting(self.output, |progress| rollback.roll_back(root, progress))
                })
            });
        }
        if self.image.is_some() || self.output == crate::build::Output::Json {
            bail!("--image and --output json are for container deploys: add --containers");
        }
        if environment.model.kind != Kind::Local {
            bail!(
                "environment `{}` is a {} environment, and this deploy runs local ones",
                self.env,
                environment.model.kind
            );
        }
        if let Some(which) = environment.used_backings().into_iter().find(|w| w.model(&environment).image.is_some()) {
            bail!(
                "environment `{}` runs {} as a container (`{}.image`): deploy it with --containers",
                self.env,
                which.kind().name,
                which.key()
            );
        }
        let platform = &environment.model.platform;
        let (Some(host), Some(file_port)) = (platform.host, platform.port) else {
            bail!("environment `{}` has no platform.host or platform.port", self.env);
        };
        let port = self.port.unwrap_or(file_port);
        // The gateway's upstream is rendered from the model: follow --port.
        environment.model.platform.port = Some(port);
        let address = connect_address(host, port);
        let gateway = &environment.model.gateway;
        let gateway_address =
            connect_address(gateway.listen_address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), gateway.http_port);
        let targets: Vec<String> = environment.services().map(|(name, _)| name.to_owned()).collect();

        step("checking backing services and nginx");
        let services = environment.backing_services().map_err(anyhow::Error::msg)?;
        backing::require(&services)?;
        let nginx = tools::require(&tools::NGINX)?;
        // Otherwise an old instance would answer `/ready` for the new one,
        // which is about to fail on the busy port.
        let mut listeners = vec![("freedumb".to_owned(), address), ("the gateway".to_owned(), gateway_address)];
        listeners
            .extend(environment.workers().map(|(name, w)| (format!("worker {name}"), connect_address(host, w.port))));
        for (what, address) in listeners {
            if TcpStream::connect_timeout(&address, backing::CONNECT_TIMEOUT).is_ok() {
                bail!(
                    "something already listens on {address}, where {what} would; stop it, or deploy on other ports \
                     (--port, gateway.http_port in {})",
                    environment::path(Path::new(""), &self.env).display()
                );
            }
        }

        let profile = if self.debug { Profile::Dev } else { Profile::Release };
        step("building freedumb");
        let mut build = process::cargo();
        build.current_dir(root).arg("build");
        if profile == Profile::Release {
            build.arg("--release");
        }
        process::run(build.args(["-p", "freedumb"]))?;
        let binary = freedumb_binary(root, std::env::var_os("CARGO_TARGET_DIR").as_deref(), profile);
        if !binary.is_file() {
            bail!(
                "cargo built freedumb, but {} does not exist; is `build.target-dir` set in a cargo config? Set CARGO_TARGET_DIR instead",
                binary.display()
            );
        }

        step("local secrets");
        let (secrets, origin) =
            secrets::load_or_generate(&root.join(secrets::FILE), &environment.model.secrets.supplied)?;
        match origin {
            secrets::Origin::Generated => eprintln!("generated new secrets in {}", secrets::FILE),
            secrets::Origin::Reused => eprintln!("reusing the secrets in {}", secrets::FILE),
            secrets::Origin::Extended(keys) => {
                eprintln!("reusing the secrets in {}, and generated {} for it", secrets::FILE, keys.join(", "))
            }
        }
        let vars = freedumb_env(&environment, port, &secrets);

        step("rendering the gateway");
        let gateway_dir = root.join(GATEWAY_DIR);
        let files = render::render(root, &environment, Upstreams::Deployed)?;
        let nginx_files: render::Files = files
            .into_iter()
            .filter_map(|(path, text)| match path.strip_prefix("nginx/") {
                Some(name) => Some((name.to_owned(), text)),
                None => (path == render::MARKER).then_some((path, text)),
            })
            .collect();
        fs::create_dir_all(&gateway_dir).with_context(|| format!("failed to create {}", gateway_dir.display()))?;
        let conf_dir = gateway_dir.join("conf");
        render::write(&nginx_files, &conf_dir)?;
        eprintln!("{}/nginx.conf: upstream {address}, listening on {gateway_address}", conf_dir.display());

        step("migrating the database");
        let mut migrate = Command::new(&binary);
        migrate.arg("migrate").args(&targets).arg("--create-database").envs(vars.iter().map(|(k, v)| (k, v)));
        let status = migrate.status().with_context(|| format!("failed to start {}", binary.display()))?;
        check_freedumb_exit(&format!("freedumb migrate {} --create-database", targets.join(" ")), status)?;

        // Installed now rather than at the start: until here, Ctrl-C should
        // simply kill us and the cargo or migration we are waiting for.
        let (stop_tx, stop_rx) = mpsc::channel();
        ctrlc::set_handler(move || {
            let _ = stop_tx.send(());
        })
        .context("failed to install the Ctrl-C handler")?;

        step(&format!("starting freedumb serve {}", targets.join(" ")));
        let child = Command::new(&binary)
            .arg("serve")
            .args(&targets)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        // Stopped in reverse order of start: the gateway first, so no new
        // request reaches a draining process.
        let mut processes = vec![Served::new("freedumb".to_owned(), child, "TERM", STOP_TIMEOUT)];
        let base_url = format!("http://{address}");
        if !wait_until_ready(&mut processes[0], &format!("{base_url}/ready"), &stop_rx)? {
            return stop(&mut processes);
        }

        // Each worker is a process of its own, on its own port, as in the
        // other environments.
        let workers: Vec<(String, u16)> = environment.workers().map(|(name, w)| (name.to_owned(), w.port)).collect();
        for (name, port) in &workers {
            step(&format!("starting freedumb worker {name}"));
            let child = Command::new(&binary)
                .args(["worker", name])
                .envs(vars.iter().map(|(k, v)| (k, v)))
                .env("PORT", port.to_string())
                .env("SERVICE_NAME", format!("freedumb-worker-{name}"))
                .spawn()
                .with_context(|| format!("failed to start {}", binary.display()))?;
            processes.push(Served::new(format!("worker {name}"), child, "TERM", STOP_TIMEOUT));
            let url = format!("http://{}/ready", connect_address(host, *port));
            if !wait_until_ready(processes.last_mut().expect("just pushed"), &url, &stop_rx)? {
                return stop(&mut processes);
            }
        }

        step("starting the nginx gateway");
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(format!("{}/", gateway_dir.display()))
            .args(["-e", "stderr", "-c"])
            .arg(conf_dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .spawn()
            .with_context(|| format!("failed to start {}", nginx.display()))?;
        // QUIT is nginx's graceful stop: open requests finish first.
        processes.push(Served::new("nginx".to_owned(), child, "QUIT", GATEWAY_STOP_TIMEOUT));
        let gateway_url = format!("http://{gateway_address}");
        if !wait_until_ready(processes.last_mut().expect("just pushed"), &format!("{gateway_url}/health"), &stop_rx)? {
            return stop(&mut processes);
        }
        print_hints(&gateway_url, &base_url, &self.env, &processes);

        loop {
            match stop_rx.recv_timeout(POLL_INTERVAL) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return stop(&mut processes),
                Err(RecvTimeoutError::Timeout) => {
                    let mut exited = None;
                    for process in processes.iter_mut() {
                        if let Some(status) = process.try_wait()? {
                            exited = Some((process.name.clone(), status));
                            break;
                        }
                    }
                    if let Some((name, status)) = exited {
                        // A Ctrl-C in the terminal reaches the children as
                        // well, and one may exit (cleanly, having drained)
                        // before our own handler has said so: give the
                        // handler a moment before calling it an exit by itself.
                        if stop_rx.recv_timeout(SIGNAL_GRACE).is_ok() {
                            return stop(&mut processes);
                        }
                        let _ = stop(&mut processes);
                        bail!("{name} exited by itself: {}", describe_exit(status));
                    }
                }
            }
        }
    }
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Where to reach a server bound to `host`: an unspecified bind address
/// (0.0.0.0, ::) listens on loopback too.
fn connect_address(host: IpAddr, port: u16) -> SocketAddr {
    let ip = match host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, port)
}

/// Where cargo puts the `freedumb` binary: `$CARGO_TARGET_DIR` (relative to
/// the root, where we run cargo) or `<root>/target`, then the profile's
/// directory. Asking `cargo metadata` would also see `build.target-dir` in a
/// cargo config, at the price of a JSON parser and another second per run.
pub(crate) fn freedumb_binary(root: &Path, cargo_target_dir: Option<&OsStr>, profile: Profile) -> PathBuf {
    let target_dir = match cargo_target_dir.filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    target_dir.join(profile.dir()).join(format!("freedumb{}", std::env::consts::EXE_SUFFIX))
}

/// The variables `freedumb` reads, from the environment model, the secrets
/// and the command line. Set explicitly, so that a `PORT` or `DATABASE_URL`
/// left in the caller's shell cannot redirect a local deployment.
fn freedumb_env(environment: &Environment, port: u16, secrets: &Secrets) -> Vec<(String, String)> {
    vars::local_process(environment, port, &|name| secrets.get(name).unwrap_or_default().to_owned())
}

fn check_freedumb_exit(what: &str, status: ExitStatus) -> anyhow::Result<()> {
    if !status.success() {
        bail!("`{what}` failed: {}", describe_exit(status));
    }
    Ok(())
}

/// An exit status, plus what it means when `freedumb` gave it a meaning.
fn describe_exit(status: ExitStatus) -> String {
    match status.code() {
        // freedumb's own line names the variable; the variables come from
        // the environment file and the secrets file.
        Some(FREEDUMB_EXIT_CONFIG) => format!("{status}, a configuration error (freedumb's message is above)"),
        _ => status.to_string(),
    }
}

/// A running child: `freedumb serve` or nginx. Dropping it stops the
/// process, so that an early return (a timeout, an error) never leaves a
/// server behind.
struct Served {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    /// The signal that stops it gracefully, as `kill` names it.
    signal: &'static str,
    timeout: Duration,
}

impl Served {
    fn new(name: String, child: Child, signal: &'static str, timeout: Duration) -> Self {
        Served { name, child, status: None, signal, timeout }
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().with_context(|| format!("failed to check on {}", self.name))?;
        }
        Ok(self.status)
    }

    /// The graceful signal, then up to `timeout` for the drain, then SIGKILL.
    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // Safe against pid reuse: until we reap the child, its pid stays
        // ours, even after it exits.
        let pid = self.child.id().to_string();
        let signal = format!("-{}", self.signal);
        match Command::new("kill").args([signal.as_str(), &pid]).status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("`kill {signal} {pid}` failed ({status}); waiting for {} anyway", self.name),
            Err(err) => eprintln!("failed to run `kill {signal} {pid}` ({err}); waiting for {} anyway", self.name),
        }
        let deadline = Instant::now() + self.timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().with_context(|| format!("failed to kill {}", self.name))?;
        let status = self.child.wait().with_context(|| format!("failed to wait for {}", self.name))?;
        self.status = Some(status);
        bail!("{} did not stop within {} s of SIG{}, so it was killed", self.name, self.timeout.as_secs(), self.signal)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.status.is_none()
            && let Err(err) = self.terminate()
        {
            eprintln!("{err:#}");
        }
    }
}

/// Polls `url` until it answers 200 (`Ok(true)`) or a stop was asked for
/// (`Ok(false)`); fails if the process exits or is not ready in time.
fn wait_until_ready(served: &mut Served, url: &str, stop_rx: &Receiver<()>) -> anyhow::Result<bool> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = served.try_wait()? {
            if stop_rx.try_recv().is_ok() {
                return Ok(false);
            }
            bail!("{} exited before it was ready: {}", served.name, describe_exit(status));
        }
        let answer = match agent.get(url).call() {
            Ok(_) => return Ok(true),
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_else(|err| format!("(unreadable body: {err})"));
                format!("HTTP {code}: {}", body.trim())
            }
            Err(ureq::Error::Transport(err)) => err.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} was not ready within {} s; the last answer from {url} was {answer}",
                served.name,
                READY_TIMEOUT.as_secs()
            );
        }
        match stop_rx.recv_timeout(POLL_INTERVAL) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(false),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Stops the processes in reverse order of start (the gateway first, so no
/// new request reaches a draining process), each gracefully.
fn stop(processes: &mut [Served]) -> anyhow::Result<()> {
    let mut failure = None;
    for process in processes.iter_mut().rev() {
        if process.status.is_some_and(|status| status.success()) {
            continue;
        }
        step(&format!("stopping {} (SIG{}, then it drains open requests)", process.name, process.signal));
        match process.terminate() {
            Ok(status) if status.success() => eprintln!("{} stopped", process.name),
            // Killed by the terminal's own SIGINT: nginx exits on it at once.
            Ok(status) if process.name == "nginx" => eprintln!("{} stopped ({status})", process.name),
            Ok(status) => {
                failure = failure.or(Some(anyhow::anyhow!("{} exited with {status} while stopping", process.name)))
            }
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    failure.map_or(Ok(()), Err)
}

fn print_hints(gateway_url: &str, base_url: &str, environment: &str, processes: &[Served]) {
    let pids: Vec<String> = processes.iter().map(|p| format!("{} pid {}", p.name, p.child.id())).collect();
    println!(
        r#"
freedumb is ready behind the gateway at {gateway_url} (environment `{environment}`;
{}; freedumb serves on {base_url})

  curl {gateway_url}/health
  curl {gateway_url}/v1/auth/register -H 'content-type: application/json' \
    -d '{{"email":"ada@example.com","password":"correct horse battery staple"}}'

  Directly, without the gateway: {base_url}/ready    API description: {base_url}/openapi.json    metrics: {base_url}/metrics

Press Ctrl-C to stop it."#,
        pids.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_under_root_target_by_default() {
        let root = Path::new("/src/freedumb");
        assert_eq!(freedumb_binary(root, None, Profile::Release), Path::new("/src/freedumb/target/release/freedumb"));
        assert_eq!(freedumb_binary(root, None, Profile::Dev), Path::new("/src/freedumb/target/debug/freedumb"));
    }

    #[test]
    fn cargo_target_dir_moves_the_binary() {
        let root = Path::new("/src/freedumb");
        let absolute = freedumb_binary(root, Some(OsStr::new("/var/cache/ci/target")), Profile::Release);
        assert_eq!(absolute, Path::new("/var/cache/ci/target/release/freedumb"));
        let relative = freedumb_binary(root, Some(OsStr::new("build")), Profile::Dev);
        assert_eq!(relative, Path::new("/src/freedumb/build/debug/freedumb"));
    }

    #[test]
    fn an_empty_cargo_target_dir_counts_as_unset() {
        let binary = freedumb_binary(Path::new("/src/freedumb"), Some(OsStr::new("")), Profile::Release);
        assert_eq!(binary, Path::new("/src/freedumb/target/release/freedumb"));
    }

    #[test]
    fn freedumb_gets_every_variable_it_reads_with_the_port_override() {
        let root = crate::project_root();
        let environment = environment::load(&root, "local").unwrap();
        let dir = crate::scratch::ScratchDir::new("deploy");
        let (secrets, _) =
            secrets::load_or_generate(&dir.path().join("secrets.env"), &environment.model.secrets.supplied).unwrap();

        let vars = freedumb_env(&environment, 3100, &secrets);

        let value = |key: &str| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(value("ENVIRONMENT"), Some("local"));
        assert_eq!(value("PORT"), Some("3100"));
        assert_eq!(value("HOST"), Some("127.0.0.1"));
        assert_eq!(value("DATABASE_URL"), Some("postgres://postgres@127.0.0.1:5432/freedumb"));
        assert_eq!(value("REDIS_URL"), Some("redis://127.0.0.1:6379"));
        assert_eq!(value("RABBITMQ_URL"), Some("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(value("LOG_LEVEL").is_some());
        for key in ["JWT_ACCESS_SECRET", "JWT_REFRESH_SECRET"] {
            assert!(value(key).is_some_and(|secret| secret.len() >= 32), "{key}");
        }
    }

    #[test]
    fn an_unspecified_bind_address_is_reached_over_loopback() {
        assert_eq!(connect_address("0.0.0.0".parse().unwrap(), 3000).to_string(), "127.0.0.1:3000");
        assert_eq!(connect_address("::".parse().unwrap(), 3000).to_string(), "[::1]:3000");
        assert_eq!(connect_address("10.0.0.5".parse().unwrap(), 3001).to_string(), "10.0.0.5:3001");
    }

    #[test]
    fn a_kubernetes_environment_is_not_run_as_containers_here() {
        let deploy = Deploy {
            env: "staging".to_owned(),
            port: None,
            debug: false,
            containers: true,
            image: None,
            output: crate::build::Output::Text,
            dry_run: false,
            kubernetes: Default::default(),
            verify: Default::default(),
        };
        let err = deploy.run(&crate::project_root()).unwrap_err().to_string();
        assert!(err.starts_with("environment `staging` is a kubernetes one"), "{err}");
        assert!(err.contains("--containers, --image and --port do not apply"), "{err}");
    }
}
