//! The backing services the platform needs (Postgres, Redis, RabbitMQ): how
//! to find them in a URL, whether they answer, and how to start the local
//! ones when they do not.
//!
//! "Answers" means a TCP connect succeeds within a second. That is enough to
//! tell "not started" from "started", which is what a person at the terminal
//! needs to know; whether credentials and databases are right is for
//! `freedumb` itself to say, and it says it precisely.

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::bail;

/// Long enough for a loaded local machine, short enough that a missing
/// service is reported at once.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One kind of backing service.
#[derive(Debug)]
pub struct Backing {
    pub name: &'static str,
    /// URL schemes that mean this service, as `freedumb` accepts them.
    pub schemes: &'static [&'static str],
    pub default_port: u16,
    pub example: &'static str,
    /// How to start it on a development machine or in CI (`.ci/run` uses the
    /// same commands).
    pub start: &'static str,
}

pub const POSTGRES: Backing = Backing {
    name: "Postgres",
    schemes: &["postgres", "postgresql"],
    default_port: 5432,
    example: "postgres://postgres@127.0.0.1:5432/freedumb",
    start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
};

pub const REDIS: Backing = Backing {
    name: "Redis",
    schemes: &["redis", "rediss"],
    default_port: 6379,
    example: "redis://127.0.0.1:6379",
    start: r#"redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no"#,
};

pub const RABBITMQ: Backing = Backing {
    name: "RabbitMQ",
    schemes: &["amqp", "amqps"],
    default_port: 5672,
    example: "amqp://guest:guest@127.0.0.1:5672/%2f",
    start: "rabbitmq-server -detached",
};

pub const MONGODB: Backing = Backing {
    name: "MongoDB",
    schemes: &["mongodb"],
    default_port: 27017,
    example: "mongodb://admin@127.0.0.1:27017/freedumb_logs",
    start: "mongod --fork --logpath /tmp/mongod.log",
};

/// Where a service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Backing {
    /// The host and port of a URL for this service. The error says what was
    /// expected and never repeats the URL, which may hold a password.
    pub fn address(&self, url: &str) -> Result<Address, String> {
        parse_address(url, self.schemes, self.default_port).ok_or_else(|| {
            let schemes: Vec<_> = self.schemes.iter().map(|s| format!("{s}://")).collect();
            format!("expected a {} URL with a host, such as {}", schemes.join(" or "), self.example)
        })
    }
}

/// Just enough URL parsing to find the host and port: the authority is what
/// follows `scheme://` up to the path, minus any `user:password@`.
fn parse_address(url: &str, schemes: &[&str], default_port: u16) -> Option<Address> {
    let (scheme, rest) = url.split_once("://")?;
    if !schemes.contains(&scheme) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
    let (host, port) = match host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:5432`.
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => default_port,
        Some(port) => port.parse().ok().filter(|&port| port != 0)?,
    };
    Some(Address { host: host.to_owned(), port })
}

/// Whether something accepts TCP connections at `address`, trying each
/// resolved address in turn (`localhost` may be `::1` first).
pub fn reachable(address: &Address, timeout: Duration) -> std::io::Result<()> {
    let mut last_error = None;
    for socket_addr in (address.host.as_str(), address.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&socket_addr, timeout) {
            Ok(_) => return Ok(()),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the host name resolved to no address")))
}

/// Checks every service, prints one line each on stderr, and fails naming
/// every service that did not answer with the command that starts it.
/// Checking all before failing saves a round trip per missing service.
pub fn require(services: &[(&Backing, Address)]) -> anyhow::Result<()> {
    require_saying(services, &mut |line| eprintln!("{line}"))
}

/// `require`, each line said through `say` (the container verbs' progress).
pub fn require_saying(services: &[(&Backing, Address)], say: &mut dyn FnMut(String)) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (service, address) in services {
        match reachable(address, CONNECT_TIMEOUT) {
            Ok(()) => say(format!("{:<9} {address}: answers", service.name)),
            Err(err) => {
                say(format!("{:<9} {address}: {err}", service.name));
                problems.push(format!(
                    "{} is not reachable at {address} ({err}); start it with:\n    {}",
                    service.name, service.start
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn address(host: &str, port: u16) -> Address {
        Address { host: host.to_owned(), port }
    }

    #[test]
    fn a_url_gives_its_host_and_port_without_the_credentials() {
        assert_eq!(RABBITMQ.address("amqp://guest:guest@127.0.0.1:5673/%2f"), Ok(address("127.0.0.1", 5673)));
        assert_eq!(POSTGRES.address("postgresql://u:p%40ss@db.internal/freedumb"), Ok(address("db.internal", 5432)));
    }

    #[test]
    fn a_url_without_a_port_gets_the_default_one() {
        assert_eq!(REDIS.address("redis://127.0.0.1"), Ok(address("127.0.0.1", 6379)));
        assert_eq!(REDIS.address("redis://localhost/0"), Ok(address("localhost", 6379)));
    }

    #[test]
    fn ipv6_literals_keep_their_brackets_out_of_the_host() {
        let parsed = POSTGRES.address("postgres://postgres@[::1]:5433/freedumb").unwrap();
        assert_eq!(parsed, address("::1", 5433));
        assert_eq!(parsed.to_string(), "[::1]:5433");
        assert_eq!(REDIS.address("redis://[::1]"), Ok(address("::1", 6379)));
    }

    #[test]
    fn wrong_schemes_missing_hosts_and_bad_ports_are_rejected_without_echoing_the_url() {
        for url in ["mysql://root:hunter2@db/x", "redis://", "redis://:6379", "redis://h:port", "redis://h:0", "h:6379"]
        {
            let err = REDIS.address(url).unwrap_err();
            assert!(err.starts_with("expected a redis:// or rediss:// URL"), "{url}: {err}");
            assert!(!err.contains("hunter2"));
        }
    }

    #[test]
    fn a_listening_port_is_reachable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        reachable(&address("127.0.0.1", port), CONNECT_TIMEOUT).unwrap();
    }

    #[test]
    fn a_closed_port_fails_the_check_naming_the_service_and_how_to_start_it() {
        // Bind, note the port, close it: nothing listens there afterwards.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let open = TcpListener::bind("127.0.0.1:0").unwrap();
        let open_port = open.local_addr().unwrap().port();

        let err = require(&[(&POSTGRES, address("127.0.0.1", open_port)), (&REDIS, address("127.0.0.1", port))])
            .unwrap_err()
            .to_string();

        assert!(err.starts_with(&format!("Redis is not reachable at 127.0.0.1:{port} (")), "{err}");
        assert!(err.contains(REDIS.start), "{err}");
        assert!(!err.contains("Postgres"), "{err}");
    }
}
