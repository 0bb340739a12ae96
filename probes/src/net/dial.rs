//! Opening a fresh connection phase by phase — resolve, TCP connect, TLS handshake — each timed
//! and bounded by one deadline, each failure classified and explained in one line.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use url::Host;

use super::tls::Handshake;
use crate::result::Phases;

/// Why an exchange produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What kind of failure, for classification and metrics.
    pub kind: FailureKind,
    /// A one-line explanation for humans.
    pub message: String,
    /// The phases completed before the failure; the failing phase is left at zero.
    pub phases: Phases,
}

/// Classes of [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The host name could not be resolved.
    Resolve,
    /// No TCP connection could be opened.
    Connect,
    /// The TLS handshake failed (certificate, protocol, or connection lost during it).
    Tls,
    /// The deadline passed; the message names the phase.
    Timeout,
    /// The body exceeded the size limit, on the wire or decoded.
    BodyTooLarge,
    /// The connection broke while sending the request or reading the answer.
    Io,
    /// The request could not be formed or the answer could not be understood.
    Protocol,
}

impl FailureKind {
    /// A lowercase name for logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Resolve => "resolve",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::BodyTooLarge => "body_too_large",
            FailureKind::Io => "io",
            FailureKind::Protocol => "protocol",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One connection being opened: the phases so far and the deadline they answer to.
#[derive(Debug)]
pub struct Dial {
    /// Phases completed so far.
    pub phases: Phases,
    /// When the exchange began (timeouts say how long they waited).
    pub started: Instant,
    /// Instant by which everything must be done.
    pub deadline: Instant,
}

impl Dial {
    /// Starts timing now.
    pub fn new(deadline: Instant) -> Dial {
        Dial {
            phases: Phases::default(),
            started: Instant::now(),
            deadline,
        }
    }

    /// A failure carrying the phases so far.
    pub fn fail(&self, kind: FailureKind, message: String) -> Failure {
        Failure {
            kind,
            message,
            phases: self.phases,
        }
    }

    /// A timeout while `doing` something (a phrase ending in the phase name in parentheses).
    pub fn timeout(&self, doing: &str) -> Failure {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.fail(
            FailureKind::Timeout,
            // Tenths: the budget the user set, not the microseconds spent before the send began.
            format!("timed out after {elapsed:.1}s {doing}"),
        )
    }

    /// Resolves `host` (skipped, zero time, for IP literals) with the system resolver.
    pub async fn resolve(
        &mut self,
        host: &Host<String>,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Failure> {
        let name = match host {
            Host::Ipv4(ip) => return Ok(vec![SocketAddr::new(IpAddr::V4(*ip), port)]),
            Host::Ipv6(ip) => return Ok(vec![SocketAddr::new(IpAddr::V6(*ip), port)]),
            Host::Domain(name) => name,
        };
        let start = Instant::now();
        let lookup = tokio::net::lookup_host((name.as_str(), port));
        let addrs: Vec<SocketAddr> = match timeout_at(self.deadline, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                let message = format!("could not resolve {name}: {e}");
                return Err(self.fail(FailureKind::Resolve, message));
            }
            Err(_) => return Err(self.timeout(&format!("resolving {name} (resolve)"))),
        };
        self.phases.resolve = start.elapsed();
        if addrs.is_empty() {
            let message = format!("could not resolve {name}: no addresses found");
            return Err(self.fail(FailureKind::Resolve, message));
        }
        Ok(addrs)
    }

    /// Connects to the first address that accepts; the phase spans all attempts.
    pub async fn connect(
        &mut self,
        addrs: &[SocketAddr],
    ) -> Result<(TcpStream, SocketAddr), Failure> {
        let start = Instant::now();
        let mut failures = Vec::new();
        for &addr in addrs {
            match timeout_at(self.deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    self.phases.connect = start.elapsed();
                    // Small request writes must not wait for Nagle: it would show up as
                    // server processing time.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%addr, error = %e, "TCP_NODELAY could not be set.");
                    }
                    return Ok((stream, addr));
                }
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "Connect attempt failed.");
                    failures.push(format!("{} connecting to {addr}: {e}", connect_error(&e)));
                }
                Err(_) => {
                    return Err(self.timeout(&format!("during connect to {addr} (connect)")));
                }
            }
        }
        Err(self.fail(FailureKind::Connect, failures.join("; ")))
    }

    /// Resolves and connects to `host:port`.
    pub async fn open(
        &mut self,
        host: &Host<String>,
        port: u16,
    ) -> Result<(TcpStream, SocketAddr), Failure> {
        let addrs = self.resolve(host, port).await?;
        self.connect(&addrs).await
    }

    /// A full TLS handshake over `stream` as `name`; `host` names the peer in messages.
    pub async fn tls<S>(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        host: &str,
        stream: S,
    ) -> Result<(TlsStream<S>, Handshake), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let start = Instant::now();
        let connector = TlsConnector::from(config);
        match timeout_at(self.deadline, connector.connect(name, stream)).await {
            Ok(Ok(tls)) => {
                self.phases.tls = start.elapsed();
                let handshake = Handshake::of(tls.get_ref().1);
                Ok((tls, handshake))
            }
            Ok(Err(e)) => {
                let message = format!("TLS handshake with {host} failed: {}", chain(&e));
                Err(self.fail(FailureKind::Tls, message))
            }
            Err(_) => Err(self.timeout("during the TLS handshake (tls)")),
        }
    }
}

/// `host:port` as written in a probe (`db.internal:5432`, `127.0.0.1:6379`, `[::1]:53`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host: a name or an IP literal.
    pub host: Host<String>,
    /// The port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port`; `default_port` applies when the port is left out.
    pub fn parse(text: &str, default_port: Option<u16>) -> Result<Endpoint, String> {
        let text = text.trim();
        let (host, port) = match text.rsplit_once(':') {
            // `::1` alone is an address without a port, not host `:` port `1`.
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
            _ => (text, None),
        };
        let port = match (port, default_port) {
            (Some(p), _) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port `{p}` in `{text}`"))?,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(format!(
                    "`{text}` has no port; write host:port, e.g. db.internal:5432"
                ));
            }
        };
        if host.is_empty() {
            return Err(format!("`{text}` has no host; write host:port"));
        }
        let host = if host.starts_with('[') {
            Host::parse(host)
        } else if let Ok(ip) = host.parse::<std::net::Ipv6Addr>() {
            Ok(Host::Ipv6(ip))
        } else {
            Host::parse(host)
        }
        .map_err(|e| format!("invalid host `{host}` in `{text}`: {e}"))?;
        Ok(Endpoint { host, port })
    }

    /// The host as text, without IPv6 brackets (for SNI and messages).
    pub fn host_text(&self) -> String {
        match &self.host {
            Host::Domain(d) => d.clone(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The error and its causes joined with ": ", repeats (wrappers that echo their cause) dropped.
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if parts.last().is_none_or(|last| !last.ends_with(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// A short phrase for why a TCP connect failed.
pub fn connect_error(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::TimedOut => "connection timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::AddrNotAvailable => "address not available",
        io::ErrorKind::PermissionDenied => "permission denied",
        _ => "could not connect",
    }
}

/// A short phrase for an I/O error on an open connection.
pub fn io_error(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::BrokenPipe => "connection closed by the server",
        io::ErrorKind::UnexpectedEof => "connection closed early",
        _ => "connection error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_names_addresses_and_default_ports() {
        let e = Endpoint::parse("db.internal:5432", None).expect("parses");
        assert_eq!(e.host, Host::Domain("db.internal".to_string()));
        assert_eq!(e.port, 5432);
        let e = Endpoint::parse("[::1]:53", None).expect("parses");
        assert_eq!(e.host_text(), "::1");
        assert_eq!(e.to_string(), "[::1]:53");
        let e = Endpoint::parse("::1", Some(53)).expect("parses");
        assert_eq!(e.port, 53);
        let e = Endpoint::parse("127.0.0.1", Some(53)).expect("parses");
        assert_eq!(e.to_string(), "127.0.0.1:53");
        assert!(
            Endpoint::parse("db.internal", None)
                .expect_err("no port")
                .contains("has no port")
        );
        assert!(
            Endpoint::parse("db:99999", None)
                .expect_err("bad port")
                .contains("invalid port `99999`")
        );
        assert!(Endpoint::parse(":80", None).is_err());
    }
}
