//! `freedumb healthcheck`: asks a running `freedumb` whether it is healthy.
//!
//! Container images built `FROM scratch` have no shell, curl or wget, so a
//! Docker `HEALTHCHECK` runs the binary itself. A plain HTTP/1.1 GET over a
//! TCP socket is all it needs; no HTTP client library is linked for it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The default target: this container's own port.
pub fn default_url(port: Option<&str>) -> String {
    format!("http://127.0.0.1:{}/health", port.unwrap_or("3000"))
}

/// Succeeds when `url` answers 200.
pub fn check(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority} (expected host:port)"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: freedumb-healthcheck\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).context("no answer")?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("{url} answered {}", if status.is_empty() { "nothing" } else { status });
    }
    Ok(())
}
