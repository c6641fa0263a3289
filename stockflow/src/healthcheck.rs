//! `stockflow healthcheck`: asks a running stockflow's `/readyz` (at `http.listen`, or `--url`)
//! and exits 0 if it answers 200: a container's `HEALTHCHECK` without curl in the image.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Checks `http://HOST:PORT/PATH` (plain HTTP/1.0); `listen` is used when `url` is `None`, with
/// an unspecified address (`0.0.0.0`, `[::]`) asked on loopback.
pub fn check(listen: &str, url: Option<&str>) -> Result<()> {
    let (authority, path) = match url {
        Some(u) => {
            let rest = u
                .strip_prefix("http://")
                .context("--url must be an http:// address")?;
            match rest.split_once('/') {
                Some((a, p)) => (a.to_string(), format!("/{p}")),
                None => (rest.to_string(), "/readyz".to_string()),
            }
        }
        None => (
            listen
                .replace("0.0.0.0:", "127.0.0.1:")
                .replace("[::]:", "[::1]:"),
            "/readyz".to_string(),
        ),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) == Some("200") {
        return Ok(());
    }
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    bail!("{path} answered {status:?}: {body}")
}
