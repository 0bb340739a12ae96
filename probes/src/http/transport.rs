//! HTTP/1.1 over a fresh connection per request, timing every phase honestly.
//!
//! Each [`Transport::send`] resolves the host, opens its own TCP connection, does a full TLS
//! handshake for `https` (session resumption is off), writes one request with
//! `Connection: close` and reads the response to its end. Nothing is pooled or cached, so the
//! five [`Phases`] describe what a first-time visitor pays:
//!
//! - resolve: `lookup_host`, skipped (zero) for IP literals;
//! - connect: `TcpStream::connect`, trying each resolved address in turn;
//! - tls: the rustls handshake;
//! - processing: from the first request byte handed to the socket to the first response byte
//!   read from it, both seen by a thin wrapper around the stream;
//! - transfer: from that first response byte to the end of the body.
//!
//! Every phase is bounded by [`Limits::deadline`], and the body (before and after
//! `Content-Encoding` decoding) by [`Limits::max_body_bytes`].

use std::error::Error as StdError;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, HOST, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, timeout_at};
use url::{Host, Url};

use crate::net::dial::chain;
use crate::net::tls::TlsConfigs;
use crate::net::{Dial, Failure};
use crate::result::Phases;

pub use crate::net::FailureKind;

/// Why a [`Transport::send`] produced no response.
pub type TransportFailure = Failure;

/// The state of one `send`: phases so far and the deadline they answer to.
type Run = Dial;

/// The `User-Agent` sent when the request does not carry one.
const USER_AGENT_VALUE: &str = concat!("patrol/", env!("CARGO_PKG_VERSION"));

/// Sends HTTP/1.1 requests, each over its own fresh connection.
///
/// Holds two prebuilt rustls configurations (verifying against the webpki roots, and accepting
/// any certificate); cloning is cheap and shares them.
#[derive(Clone)]
pub struct Transport {
    tls: TlsConfigs,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    /// The request method.
    pub method: http::Method,
    /// Absolute `http` or `https` URL; the request target is its path and query.
    pub url: Url,
    /// Headers in the order to send them. `Host` and `User-Agent` are added unless present;
    /// `Connection` and `Content-Length` are always set by the transport.
    pub headers: Vec<(String, String)>,
    /// The request body; empty for none.
    pub body: Bytes,
}

/// Bounds on one [`Transport::send`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Instant by which the whole exchange, body included, must be done.
    pub deadline: Instant,
    /// Largest body accepted, on the wire and again after decoding gzip/deflate.
    pub max_body_bytes: usize,
    /// Accept any server certificate (its expiry is still recorded).
    pub insecure: bool,
}

/// A complete response, body read to its end.
#[derive(Debug, Clone)]
pub struct IncomingResponse {
    /// The status code.
    pub status: u16,
    /// Headers with lowercased names. Repeated headers (`Set-Cookie`) are all kept in the order
    /// received; different names appear in the order each was first seen.
    pub headers: Vec<(String, String)>,
    /// The body, decoded when `Content-Encoding` is gzip or deflate.
    pub body: Bytes,
    /// How long each phase of the exchange took.
    pub phases: Phases,
    /// Unix seconds of the earliest `notAfter` in the peer's certificate chain (https only).
    pub cert_not_after: Option<i64>,
    /// The negotiated TLS version (`TLS 1.3`), https only.
    pub tls_version: Option<String>,
    /// The address actually connected to.
    pub remote_addr: SocketAddr,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Transport::new()
    }
}

impl Transport {
    /// Builds both TLS configurations: HTTP/1.1 ALPN only, no session resumption.
    pub fn new() -> Transport {
        Transport {
            tls: TlsConfigs::new(&[b"http/1.1"]),
        }
    }

    /// Sends `req` over a new connection and reads the whole response within `limits`.
    pub async fn send(
        &self,
        req: &OutgoingRequest,
        limits: &Limits,
    ) -> Result<IncomingResponse, TransportFailure> {
        let mut run = Run::new(limits.deadline);
        let target = Target::from_url(&req.url).map_err(|m| run.fail(FailureKind::Protocol, m))?;
        let request =
            build_request(req, &target).map_err(|m| run.fail(FailureKind::Protocol, m))?;

        let (tcp, remote_addr) = run.open(&target.host, target.port).await?;

        let mut peer = Peer {
            remote_addr,
            cert_not_after: None,
            tls_version: None,
        };
        if !target.tls {
            return run
                .exchange(tcp, request, peer, limits.max_body_bytes)
                .await;
        }
        let server_name = target
            .server_name()
            .map_err(|m| run.fail(FailureKind::Tls, m))?;
        let config = self.tls.get(limits.insecure);
        let host = target.host.to_string();
        let (tls, handshake) = run.tls(config, server_name, &host, tcp).await?;
        peer.cert_not_after = handshake.not_after;
        peer.tls_version = handshake.version;
        run.exchange(tls, request, peer, limits.max_body_bytes)
            .await
    }
}

/// Where to connect, taken from the URL.
struct Target {
    host: Host<String>,
    port: u16,
    tls: bool,
}

impl Target {
    fn from_url(url: &Url) -> Result<Target, String> {
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "unsupported URL scheme '{other}' in {url} (only http and https)"
                ));
            }
        };
        let host = url
            .host()
            .map(|h| h.to_owned())
            .ok_or_else(|| format!("URL has no host: {url}"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("URL has no port: {url}"))?;
        Ok(Target { host, port, tls })
    }

    fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        }
    }

    fn server_name(&self) -> Result<ServerName<'static>, String> {
        match (&self.host, self.ip()) {
            (_, Some(ip)) => Ok(ServerName::IpAddress(ip.into())),
            (Host::Domain(name), None) => ServerName::try_from(name.clone())
                .map_err(|e| format!("cannot use {name} as a TLS server name: {e}")),
            (host, None) => Err(format!("cannot use {host} as a TLS server name")),
        }
    }
}

/// Turns the request into hyper's form: origin-form target, transport-owned headers added.
fn build_request(req: &OutgoingRequest, target: &Target) -> Result<Request<Full<Bytes>>, String> {
    let url = &req.url;
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let uri: http::Uri = path_and_query
        .parse()
        .map_err(|e| format!("invalid request target {path_and_query}: {e}"))?;
    let mut request = Request::builder()
        .method(req.method.clone())
        .uri(uri)
        .body(Full::new(req.body.clone()))
        .map_err(|e| format!("invalid request: {e}"))?;

    let headers = request.headers_mut();
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid request header name '{name}'"))?;
        if name == CONNECTION || name == CONTENT_LENGTH {
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value for request header '{name}'"))?;
        headers.append(name, value);
    }
    if !headers.contains_key(HOST) {
        let host = match url.port() {
            Some(port) => format!("{}:{port}", target.host),
            None => target.host.to_string(),
        };
        let value = HeaderValue::from_str(&host).map_err(|_| format!("invalid host {host}"))?;
        headers.insert(HOST, value);
    }
    if !headers.contains_key(USER_AGENT) {
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    }
    if !req.body.is_empty() {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(req.body.len()));
    }
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(request)
}

impl Run {
    /// Writes the request and reads the response over an established stream.
    async fn exchange<S>(
        self,
        stream: S,
        request: Request<Full<Bytes>>,
        peer: Peer,
        max_body: usize,
    ) -> Result<IncomingResponse, TransportFailure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let marks = Arc::new(Marks::default());
        let io = TokioIo::new(Marked {
            inner: stream,
            marks: Arc::clone(&marks),
        });
        let handshake = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake::<_, Full<Bytes>>(io)
            .await;
        let (mut sender, conn) = match handshake {
            Ok(parts) => parts,
            Err(e) => {
                let message = format!("could not start the HTTP exchange: {}", chain(&e));
                return Err(self.fail(FailureKind::Protocol, message));
            }
        };
        let exchange = Exchange {
            head_only: request.method() == Method::HEAD,
            request_start: Instant::now(),
            marks,
            peer,
            max_body,
        };
        let exchange = exchange.run(self, &mut sender, request);

        // The connection is driven here, in this task, next to the exchange it serves.
        let mut exchange = pin!(exchange);
        let mut conn = pin!(conn);
        let mut conn_done = false;
        loop {
            tokio::select! {
                biased;
                outcome = &mut exchange => return outcome,
                result = &mut conn, if !conn_done => {
                    conn_done = true;
                    // The exchange sees the same error through its response or body.
                    if let Err(e) = result {
                        tracing::debug!(error = %chain(&e), "HTTP connection ended with an error.");
                    }
                }
            }
        }
    }
}

/// Where the connection went.
struct Peer {
    remote_addr: SocketAddr,
    cert_not_after: Option<i64>,
    tls_version: Option<String>,
}

/// What reading one response needs besides the [`Run`].
struct Exchange {
    /// A HEAD response announces a length it does not send.
    head_only: bool,
    /// Taken as the request's start if the stream saw no write (it always does in practice).
    request_start: Instant,
    marks: Arc<Marks>,
    peer: Peer,
    max_body: usize,
}

impl Exchange {
    /// Sends the request, waits for the head, then reads and decodes the body.
    async fn run(
        self,
        mut run: Run,
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> Result<IncomingResponse, TransportFailure> {
        let max_body = self.max_body;
        let response = match timeout_at(run.deadline, sender.send_request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(hyper_failure(&run, &e, "reading the response")),
            Err(_) => return Err(run.timeout("waiting for the response (processing)")),
        };
        let first_byte = self
            .marks
            .first_read
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        let sent = self
            .marks
            .first_write
            .get()
            .copied()
            .unwrap_or(self.request_start);
        run.phases.processing = first_byte.saturating_duration_since(sent);

        let (head, mut body) = response.into_parts();
        // Refuse an announced oversized body before downloading it.
        let bodiless = self.head_only
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED;
        let announced = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if !bodiless && announced.is_some_and(|length| length > max_body as u64) {
            return Err(too_large(&run, max_body, ""));
        }

        let mut buf = BytesMut::new();
        loop {
            let frame = match timeout_at(run.deadline, body.frame()).await {
                Ok(None) => break,
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => return Err(hyper_failure(&run, &e, "reading the body")),
                Err(_) => return Err(run.timeout("reading the body (transfer)")),
            };
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max_body {
                    return Err(too_large(&run, max_body, ""));
                }
                buf.extend_from_slice(&data);
            }
        }
        run.phases.transfer = first_byte.elapsed();

        let raw = buf.freeze();
        let codings: Vec<&[u8]> = head
            .headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let body = if raw.is_empty() || codings.is_empty() {
            raw
        } else {
            decode(raw, &codings.join(&b","[..]), max_body, &run)?
        };
        let headers = head
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        Ok(IncomingResponse {
            status: head.status.as_u16(),
            headers,
            body,
            phases: run.phases,
            cert_not_after: self.peer.cert_not_after,
            tls_version: self.peer.tls_version,
            remote_addr: self.peer.remote_addr,
        })
    }
}

/// Undoes `Content-Encoding` when every coding in it is gzip, deflate or identity; bodies in
/// other codings (br, zstd) are returned as received.
fn decode(
    raw: Bytes,
    encoding: &[u8],
    max_body: usize,
    run: &Run,
) -> Result<Bytes, TransportFailure> {
    let encoding = String::from_utf8_lossy(encoding).to_ascii_lowercase();
    let codings: Vec<&str> = encoding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "identity")
        .collect();
    if codings.is_empty()
        || !codings
            .iter()
            .all(|c| matches!(*c, "gzip" | "x-gzip" | "deflate"))
    {
        return Ok(raw);
    }
    let mut body = raw;
    // Codings are listed in the order applied, so they come off in reverse.
    for coding in codings.iter().rev() {
        let limit = max_body as u64 + 1;
        let mut out = Vec::new();
        let input: &[u8] = &body;
        let read = match *coding {
            "deflate" if !is_zlib(input) => flate2::read::DeflateDecoder::new(input)
                .take(limit)
                .read_to_end(&mut out),
            "deflate" => flate2::read::ZlibDecoder::new(input)
                .take(limit)
                .read_to_end(&mut out),
            _ => flate2::read::MultiGzDecoder::new(input)
                .take(limit)
                .read_to_end(&mut out),
        };
        if let Err(e) = read {
            let message = format!("could not decode the {coding} response body: {e}");
            return Err(run.fail(FailureKind::Protocol, message));
        }
        if out.len() > max_body {
            return Err(too_large(
                run,
                max_body,
                &format!(" once decoded ({coding})"),
            ));
        }
        body = Bytes::from(out);
    }
    Ok(body)
}

/// True when the data starts with a zlib header; some servers send raw deflate instead.
fn is_zlib(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

fn too_large(run: &Run, max_body: usize, detail: &str) -> TransportFailure {
    let message = format!(
        "response body exceeds the limit of {}{detail}",
        human_bytes(max_body)
    );
    run.fail(FailureKind::BodyTooLarge, message)
}

/// Classifies a hyper error raised while `doing` something with the response.
fn hyper_failure(run: &Run, e: &hyper::Error, doing: &str) -> TransportFailure {
    let detail = chain(e);
    if e.is_user() {
        let message = format!("could not send the request: {detail}");
        return run.fail(FailureKind::Protocol, message);
    }
    if e.is_parse() || e.is_parse_status() {
        return run.fail(
            FailureKind::Protocol,
            format!("invalid HTTP response: {detail}"),
        );
    }
    let what = match io_kind(e) {
        Some(io::ErrorKind::ConnectionReset) => "connection reset",
        Some(io::ErrorKind::ConnectionAborted) => "connection aborted",
        Some(io::ErrorKind::BrokenPipe) => "connection closed by the server",
        Some(io::ErrorKind::UnexpectedEof) => "connection closed early",
        _ if e.is_incomplete_message() => "connection closed early",
        _ => "connection error",
    };
    run.fail(FailureKind::Io, format!("{what} while {doing}: {detail}"))
}

/// The kind of the first I/O error in the source chain, if any.
fn io_kind(e: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        current = err.source();
    }
    None
}

/// A byte count in the largest binary unit that keeps it at least one: "10 MiB", "1.5 KiB".
fn human_bytes(n: usize) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    let n = n as u64;
    for (unit, size) in UNITS {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    if n == 1 {
        "1 byte".to_owned()
    } else {
        format!("{n} bytes")
    }
}

/// Instants of the first bytes moved each way through a [`Marked`] stream.
#[derive(Debug, Default)]
struct Marks {
    first_write: OnceLock<Instant>,
    first_read: OnceLock<Instant>,
}

/// A stream that notes when the first request byte went out and the first response byte came
/// in. For https it wraps the TLS stream, so only application data counts (not handshake
/// records or session tickets).
struct Marked<S> {
    inner: S,
    marks: Arc<Marks>,
}

impl<S> Marked<S> {
    fn wrote(&self, n: usize) {
        if n > 0 && self.marks.first_write.get().is_none() {
            let _ = self.marks.first_write.set(Instant::now());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Marked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && this.marks.first_read.get().is_none()
        {
            let _ = this.marks.first_read.set(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Marked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_formatted_for_humans() {
        assert_eq!(human_bytes(10 << 20), "10 MiB");
        assert_eq!(human_bytes(64 << 10), "64 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
        assert_eq!(human_bytes(1), "1 byte");
    }

    #[test]
    fn zlib_headers_are_told_from_raw_deflate() {
        assert!(is_zlib(&[0x78, 0x9c, 0]));
        assert!(is_zlib(&[0x78, 0x01]));
        assert!(!is_zlib(&[0xf3, 0x48]));
        assert!(!is_zlib(&[]));
    }
}
