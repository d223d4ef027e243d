//! The command line: `freedumb serve TARGET...`, `freedumb migrate`, `freedumb replay`,
//! `freedumb targets`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use freedumb_kit::config::{Config, Env};
use freedumb_kit::server::{Application, StartError, shutdown_signal};
use freedumb_kit::{Service, db, telemetry};

use crate::registry;

/// Exit code for a configuration error: the process was told something it
/// cannot work with, and restarting it will not help.
pub const EXIT_CONFIG: u8 = 2;

/// The port of `serve all` (and of any list of targets) when `PORT` is unset.
pub const PLATFORM_PORT: u16 = 3000;

#[derive(Debug, Parser)]
#[command(name = "freedumb", version, about = "The FREEDUMB platform: every service and worker in one binary.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one or more services on one port.
    ///
    /// `all` serves every service in one process, the single-machine
    /// default. Configuration comes from environment variables (PORT,
    /// DATABASE_URL, REDIS_URL, JWT_ACCESS_SECRET, ...); see README.md.
    Serve {
        /// Services to serve: `all`, or names such as `auth` (space or comma separated).
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Run background workers, such as `recurring`.
    ///
    /// A worker process serves only /health, /ready and /metrics. `serve all`
    /// runs every worker too.
    Worker {
        #[arg(required = true, value_name = "WORKER")]
        names: Vec<String>,
    },
    /// Apply the database migrations of the given services (default: all), then exit.
    Migrate {
        #[arg(value_name = "TARGET", default_value = registry::ALL)]
        targets: Vec<String>,
        /// Create the database named in DATABASE_URL first if it does not exist.
        #[arg(long)]
        create_database: bool,
    },
    /// Re-send the current state of every producer to one consumer's queues.
    ///
    /// For a consumer that starts over existing data (a new service, a
    /// projection rebuilt on an empty schema): every service's snapshot
    /// (one `transaction.created` per transaction, one `category.created` per
    /// category, ...) goes to the target's own queues only, so no other
    /// consumer sees it. Start the target once before, so its queues exist.
    /// Reads DATABASE_URL, RABBITMQ_URL, EVENTS_EXCHANGE and DEPLOYMENT as
    /// the services do.
    Replay {
        /// The consuming service, such as `analytics`.
        #[arg(long, value_name = "SERVICE")]
        to: String,
    },
    /// List the targets this binary can run.
    Targets,
    /// Exit 0 if a running freedumb answers 200 on /health, 1 otherwise.
    ///
    /// For container health checks in images without a shell or curl.
    Healthcheck {
        /// The URL to ask; defaults to http://127.0.0.1:$PORT/health.
        #[arg(long)]
        url: Option<String>,
    },
}

pub fn main(cli: Cli) -> ExitCode {
    if let Command::Healthcheck { url } = &cli.command {
        let url = url.clone().unwrap_or_else(|| crate::healthcheck::default_url(std::env::var("PORT").ok().as_deref()));
        return match crate::healthcheck::check(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("freedumb: unhealthy: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("freedumb: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { targets } => serve(&targets, registry::resolve, &Env::process()).await,
            Command::Worker { names } => serve(&names, registry::resolve_workers, &Env::process()).await,
            Command::Migrate { targets, create_database } => migrate(&targets, create_database, &Env::process()).await,
            Command::Replay { to } => replay(&to, &Env::process()).await,
            Command::Targets => {
                for service in registry::SERVICES {
                    println!("{:<12} port {:<5} schema {}", service.name(), service.default_port(), service.schema());
                }
                for worker in registry::WORKERS {
                    println!(
                        "{:<12} port {:<5} schema {} (worker: freedumb worker {})",
                        worker.name(),
                        worker.default_port(),
                        worker.schema(),
                        worker.name()
                    );
                }
                println!("{:<12} every service above, in one process", registry::ALL);
                Ok(())
            }
            Command::Healthcheck { .. } => unreachable!("answered before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // One line, no backtrace, never a value: the variable and what it wants.
        Err(StartError::Config(err)) => {
            eprintln!("freedumb: configuration error: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(StartError::Other(err)) => {
            eprintln!("freedumb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

type Resolver = fn(&[String]) -> Result<Vec<&'static dyn Service>, String>;

pub async fn serve(targets: &[String], resolve: Resolver, env: &Env) -> Result<(), StartError> {
    let services = resolve(targets).map_err(|message| StartError::Other(anyhow::anyhow!(message)))?;
    // One named service gets the seed's port for it (auth 3001, ...); `all`
    // or a list shares the platform port.
    let single = match (targets, services.as_slice()) {
        ([name], [one]) if name.as_str() == one.name() => Some(*one),
        _ => None,
    };
    let (default_port, default_name) = match single {
        Some(one) => (one.default_port(), format!("freedumb-{}", one.name())),
        None => (PLATFORM_PORT, "freedumb".to_owned()),
    };
    let authenticates = services.iter().any(|service| service.authenticates());
    let config = Config::from_env_for(env, default_port, &default_name, authenticates)?;
    // A second init only happens in tests; the first subscriber stays.
    let _ = telemetry::init(&config);
    let app = Application::build(config, env, &services).await?;
    let names: Vec<_> = services.iter().map(|s| s.name()).collect();
    tracing::info!(port = app.port(), targets = %names.join(","), "listening");
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}

pub async fn migrate(targets: &[String], create_database: bool, env: &Env) -> Result<(), StartError> {
    let services = registry::resolve(targets).map_err(|message| StartError::Other(anyhow::anyhow!(message)))?;
    let url = env.url("DATABASE_URL", &["postgres", "postgresql"])?;
    if create_database && db::create_database_if_missing(&url).await? {
        println!("created the database");
    }
    let mut done = Vec::new();
    for service in services {
        // Workers share their service's schema; migrate each schema once.
        if done.contains(&service.schema()) {
            continue;
        }
        done.push(service.schema());
        db::migrate(&url, service.schema(), service.migrator()).await?;
        println!("{}: migrations applied to schema {}", service.name(), service.schema());
    }
    Ok(())
}

/// `freedumb replay --to SERVICE`: see [`Command::Replay`].
pub async fn replay(to: &str, env: &Env) -> Result<(), StartError> {
    let everything: Vec<&'static dyn Service> = registry::SERVICES.iter().chain(registry::WORKERS).copied().collect();
    let consumers =
        || everything.iter().filter(|s| !s.subscriptions().is_empty()).map(|s| s.name()).collect::<Vec<_>>().join(", ");
    let Some(target) = everything.iter().copied().find(|s| s.name() == to) else {
        return Err(StartError::Other(anyhow::anyhow!(
            "unknown service `{to}`; services that consume events are: {}",
            consumers()
        )));
    };
    if target.subscriptions().is_empty() {
        return Err(StartError::Other(anyhow::anyhow!(
            "the {to} service consumes no events; services that do are: {}",
            consumers()
        )));
    }
    let url = env.url("DATABASE_URL", &["postgres", "postgresql"])?;
    let bus = freedumb_kit::events::Bus::from_env_alone(env, &url)?;
    let db = db::Db::new(db::lazy_pool(&url, 2)?, freedumb_kit::metrics::Metrics::new());
    let report = freedumb_kit::events::replay(&db, &bus, &everything, target).await?;
    for (queue, kinds) in &report.sent {
        for (kind, count) in kinds {
            println!("{queue:<50} {kind:<32} {count:>9}");
        }
    }
    println!("replayed {} events to {to} (deployment {})", report.total(), bus.deployment());
    Ok(())
}
