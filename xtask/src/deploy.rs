//! `cargo xtask deploy`: the whole platform on this machine, as one
//! `freedumb serve all` process, in the foreground.
//!
//! The steps, in order: check that the backing services answer, build
//! `freedumb`, generate (or reuse) local secrets, migrate, start, wait for
//! `/ready`, then wait for Ctrl-C and stop `freedumb` the way an orchestrator
//! would, with SIGTERM and a drain period. Each step fails with what to do
//! about it, so a fresh checkout gets from `git clone` to a running platform
//! by following the messages.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::environment::{self, Environment};
use crate::secrets::{self, Secrets};
use crate::{backing, process};

/// How long `freedumb` gets to answer `/ready` after it starts: migrations
/// have already run, so this covers connecting to Postgres and Redis.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// `freedumb` drains for up to 30 s (`SHUTDOWN_TIMEOUT_SECS`); a little more
/// before SIGKILL, so that a clean drain is never cut short.
const STOP_TIMEOUT: Duration = Duration::from_secs(35);
/// The exit code `freedumb` uses for a configuration error.
const FREEDUMB_EXIT_CONFIG: i32 = 2;

/// Build and run the whole platform locally, in the foreground, until Ctrl-C.
#[derive(Debug, Args)]
pub struct Deploy {
    /// The environment to deploy, as in environments/NAME.toml. Only `local`
    /// works so far.
    #[arg(long, value_name = "NAME", default_value = "local")]
    env: String,
    /// Serve on this port instead of the one in the environment file.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Build with the dev profile instead of release: quicker to build,
    /// slower to run.
    #[arg(long)]
    debug: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
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
        if self.env != "local" {
            bail!(
                "environment `{}` is not supported yet: only `local` is; the others arrive with the environments issue",
                self.env
            );
        }
        let environment = environment::load(&environment::path(root, &self.env))?;
        let port = self.port.unwrap_or(environment.platform.port);
        let address = connect_address(environment.platform.host, port);

        step("checking backing services");
        let services = environment.backing_services().map_err(anyhow::Error::msg)?;
        backing::require(&services)?;
        // Otherwise an old instance would answer `/ready` for the new one,
        // which is about to fail on the busy port.
        if TcpStream::connect_timeout(&address, backing::CONNECT_TIMEOUT).is_ok() {
            bail!("something already listens on {address}; stop it, or deploy on another port with --port");
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
        let (secrets, origin) = secrets::load_or_generate(&root.join(secrets::FILE))?;
        match origin {
            secrets::Origin::Generated => eprintln!("generated new secrets in {}", secrets::FILE),
            secrets::Origin::Reused => eprintln!("reusing the secrets in {}", secrets::FILE),
        }
        let vars = freedumb_env(&environment, &self.env, port, &secrets);

        step("migrating the database");
        let mut migrate = Command::new(&binary);
        migrate.args(["migrate", "--create-database"]).envs(vars.iter().map(|(k, v)| (k, v)));
        let status = migrate.status().with_context(|| format!("failed to start {}", binary.display()))?;
        check_freedumb_exit("freedumb migrate --create-database", status)?;

        // Installed now rather than at the start: until here, Ctrl-C should
        // simply kill us and the cargo or migration we are waiting for.
        let (stop_tx, stop_rx) = mpsc::channel();
        ctrlc::set_handler(move || {
            let _ = stop_tx.send(());
        })
        .context("failed to install the Ctrl-C handler")?;

        step("starting freedumb serve all");
        let child = Command::new(&binary)
            .args(["serve", "all"])
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        let mut served = Served { child, status: None };

        let base_url = format!("http://{address}");
        if !wait_until_ready(&mut served, &format!("{base_url}/ready"), &stop_rx)? {
            return stop(&mut served);
        }
        print_hints(&base_url, &self.env, served.child.id());

        loop {
            match stop_rx.recv_timeout(POLL_INTERVAL) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return stop(&mut served),
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(status) = served.try_wait()? {
                        // A Ctrl-C in the terminal reaches freedumb as well,
                        // and it may be quicker to exit than we are to notice.
                        if stop_rx.try_recv().is_ok() {
                            return stop(&mut served);
                        }
                        bail!("freedumb exited by itself: {}", describe_exit(status));
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
fn freedumb_binary(root: &Path, cargo_target_dir: Option<&OsStr>, profile: Profile) -> PathBuf {
    let target_dir = match cargo_target_dir.filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    target_dir.join(profile.dir()).join(format!("freedumb{}", std::env::consts::EXE_SUFFIX))
}

/// The variables `freedumb` reads, from the environment file, the secrets
/// and the command line. Set explicitly, so that a `PORT` or `DATABASE_URL`
/// left in the caller's shell cannot redirect a local deployment.
fn freedumb_env(environment: &Environment, name: &str, port: u16, secrets: &Secrets) -> Vec<(&'static str, String)> {
    let platform = &environment.platform;
    let mut vars = vec![
        ("ENVIRONMENT", name.to_owned()),
        ("HOST", platform.host.to_string()),
        ("PORT", port.to_string()),
        ("LOG_LEVEL", platform.log_level.clone()),
        ("DATABASE_URL", environment.postgres.url().to_owned()),
        ("REDIS_URL", environment.redis.url().to_owned()),
        // Read by no service yet; passed now so that the ones that will
        // need it find the same environment.
        ("RABBITMQ_URL", environment.rabbitmq.url().to_owned()),
    ];
    vars.extend(secrets.vars().map(|(key, value)| (key, value.to_owned())));
    vars
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

/// The running `freedumb serve all`. Dropping it stops the process, so that
/// an early return (a timeout, an error) never leaves a server behind.
struct Served {
    child: Child,
    status: Option<ExitStatus>,
}

impl Served {
    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("failed to check on freedumb")?;
        }
        Ok(self.status)
    }

    /// SIGTERM, then up to `STOP_TIMEOUT` for the drain, then SIGKILL.
    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // Safe against pid reuse: until we reap the child, its pid stays
        // ours, even after it exits.
        let pid = self.child.id().to_string();
        match Command::new("kill").args(["-TERM", &pid]).status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("`kill -TERM {pid}` failed ({status}); waiting for freedumb anyway"),
            Err(err) => eprintln!("failed to run `kill -TERM {pid}` ({err}); waiting for freedumb anyway"),
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().context("failed to kill freedumb")?;
        let status = self.child.wait().context("failed to wait for freedumb")?;
        self.status = Some(status);
        bail!("freedumb did not stop within {} s of SIGTERM, so it was killed", STOP_TIMEOUT.as_secs())
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

/// Polls `/ready` until it answers 200 (`Ok(true)`) or a stop was asked for
/// (`Ok(false)`); fails if freedumb exits or is not ready in time.
fn wait_until_ready(served: &mut Served, url: &str, stop_rx: &Receiver<()>) -> anyhow::Result<bool> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = served.try_wait()? {
            if stop_rx.try_recv().is_ok() {
                return Ok(false);
            }
            bail!("freedumb exited before it was ready: {}", describe_exit(status));
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
                "freedumb was not ready within {} s; the last answer from {url} was {answer}",
                READY_TIMEOUT.as_secs()
            );
        }
        match stop_rx.recv_timeout(POLL_INTERVAL) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(false),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn stop(served: &mut Served) -> anyhow::Result<()> {
    step("stopping freedumb (SIGTERM, then it drains open requests)");
    let status = served.terminate()?;
    if !status.success() {
        bail!("freedumb exited with {status} while stopping");
    }
    eprintln!("freedumb stopped");
    Ok(())
}

fn print_hints(base_url: &str, environment: &str, pid: u32) {
    println!(
        r#"
freedumb is ready at {base_url} (environment `{environment}`, pid {pid})

  curl {base_url}/ready
  curl {base_url}/v1/auth/register -H 'content-type: application/json' \
    -d '{{"email":"ada@example.com","password":"correct horse battery staple"}}'

  API description: {base_url}/openapi.json    metrics: {base_url}/metrics

Press Ctrl-C to stop it."#
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
        let environment = environment::load(&environment::path(&root, "local")).unwrap();
        let dir = crate::scratch::ScratchDir::new("deploy");
        let (secrets, _) = secrets::load_or_generate(&dir.path().join("secrets.env")).unwrap();

        let vars = freedumb_env(&environment, "local", 3100, &secrets);

        let value = |key: &str| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
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
    fn other_environments_are_refused_until_they_exist() {
        let deploy = Deploy { env: "staging".to_owned(), port: None, debug: false };
        let err = deploy.run(Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(err.starts_with("environment `staging` is not supported yet"), "{err}");
        assert!(err.contains("environments issue"), "{err}");
    }
}
