//! The HTTP transport against real sockets on 127.0.0.1: hand-written HTTP/1.1 servers, and
//! TLS servers with rcgen certificates.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use patrol_probes::http::transport::{
    FailureKind, IncomingResponse, Limits, OutgoingRequest, Transport, TransportFailure,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

/// A request as the test server saw it.
#[derive(Debug)]
struct SeenRequest {
    head: String,
    body: Vec<u8>,
}

impl SeenRequest {
    /// The value of a header, matched case-insensitively.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one request: the head up to the blank line, then `Content-Length` bytes of body.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> SeenRequest {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "client closed before sending a full request head");
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).expect("request head is UTF-8");
    let mut seen = SeenRequest {
        head,
        body: data[head_end..].to_vec(),
    };
    let length: usize = seen
        .header("content-length")
        .map(|v| v.parse().expect("numeric content-length"))
        .unwrap_or(0);
    while seen.body.len() < length {
        let n = stream.read(&mut chunk).await.expect("read request body");
        assert!(n > 0, "client closed before sending the whole body");
        seen.body.extend_from_slice(&chunk[..n]);
    }
    seen
}

/// Binds a listener on 127.0.0.1 with an OS-chosen port.
async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Serves one connection: reads the request, writes `response`, returns what was seen.
async fn serve_once(response: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<SeenRequest>) {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let seen = read_request(&mut stream).await;
        stream.write_all(&response).await.expect("write response");
        stream.shutdown().await.ok();
        seen
    });
    (addr, server)
}

fn response_with_body(extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn get(url: &str) -> OutgoingRequest {
    OutgoingRequest {
        method: http::Method::GET,
        url: url.parse().expect("valid URL"),
        headers: Vec::new(),
        body: Bytes::new(),
    }
}

fn limits() -> Limits {
    Limits {
        deadline: Instant::now() + Duration::from_secs(5),
        max_body_bytes: 10 << 20,
        insecure: false,
    }
}

async fn send(
    req: &OutgoingRequest,
    limits: &Limits,
) -> Result<IncomingResponse, TransportFailure> {
    Transport::new().send(req, limits).await
}

fn header_values<'a>(response: &'a IncomingResponse, name: &str) -> Vec<&'a str> {
    response
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("compress");
    encoder.finish().expect("finish gzip")
}

fn expect_failure(result: Result<IncomingResponse, TransportFailure>) -> TransportFailure {
    match result {
        Ok(response) => panic!("expected a failure, got status {}", response.status),
        Err(failure) => failure,
    }
}

#[tokio::test]
async fn get_returns_status_body_and_every_header() {
    let response = b"HTTP/1.1 200 OK\r\n\
        Content-Type: text/plain\r\n\
        Set-Cookie: a=1; Path=/\r\n\
        X-Trace: abc\r\n\
        Set-Cookie: b=2\r\n\
        Content-Length: 5\r\n\
        \r\n\
        hello"
        .to_vec();
    let (addr, server) = serve_once(response).await;
    let url = format!("http://{addr}/path/x?q=1&r=two");

    let response = send(&get(&url), &limits()).await.expect("response");
    let seen = server.await.expect("server");

    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"hello");
    assert_eq!(
        header_values(&response, "set-cookie"),
        ["a=1; Path=/", "b=2"]
    );
    assert_eq!(header_values(&response, "content-type"), ["text/plain"]);
    assert_eq!(header_values(&response, "x-trace"), ["abc"]);
    assert!(response.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(response.remote_addr, addr);
    assert_eq!(response.cert_not_after, None);
    assert_eq!(response.phases.resolve, Duration::ZERO);
    assert_eq!(response.phases.tls, Duration::ZERO);
    assert!(response.phases.connect > Duration::ZERO);

    assert!(
        seen.head.starts_with("GET /path/x?q=1&r=two HTTP/1.1\r\n"),
        "{}",
        seen.head
    );
    assert_eq!(seen.header("host"), Some(addr.to_string().as_str()));
    let user_agent = concat!("patrol/", env!("CARGO_PKG_VERSION"));
    assert_eq!(seen.header("user-agent"), Some(user_agent));
    assert_eq!(seen.header("connection"), Some("close"));
    assert_eq!(seen.header("content-length"), None);
}

#[tokio::test]
async fn post_sends_body_with_content_length_and_user_headers() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let seen = read_request(&mut stream).await;
        let echo = response_with_body("Content-Type: application/json\r\n", &seen.body);
        stream.write_all(&echo).await.expect("write");
        seen
    });
    let body = br#"{"item":"socks","qty":2}"#;
    let request = OutgoingRequest {
        method: http::Method::POST,
        url: format!("http://{addr}/cart").parse().expect("URL"),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("User-Agent".into(), "custom/1".into()),
            ("X-Repeat".into(), "1".into()),
            ("X-Repeat".into(), "2".into()),
        ],
        body: Bytes::from_static(body),
    };

    let response = send(&request, &limits()).await.expect("response");
    let seen = server.await.expect("server");

    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], body);
    assert!(seen.head.starts_with("POST /cart HTTP/1.1\r\n"));
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("user-agent"), Some("custom/1"));
    assert_eq!(seen.body, body);
    let repeats = seen
        .head
        .lines()
        .filter(|l| l.to_lowercase().starts_with("x-repeat:"))
        .count();
    assert_eq!(repeats, 2);
}

#[tokio::test]
async fn processing_covers_the_server_think_time() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_request(&mut stream).await;
        sleep(Duration::from_millis(150)).await;
        stream
            .write_all(&response_with_body("", b"ok"))
            .await
            .expect("write");
    });

    let response = send(&get(&format!("http://{addr}/slow")), &limits())
        .await
        .expect("response");

    let phases = response.phases;
    assert!(
        phases.processing >= Duration::from_millis(150),
        "{phases:?}"
    );
    // The think time lands in processing, not transfer (bounds loose: shared, noisy machines).
    assert!(phases.processing < Duration::from_secs(1), "{phases:?}");
    assert!(phases.transfer < phases.processing / 5, "{phases:?}");
}

#[tokio::test]
async fn transfer_covers_a_trickled_body() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_request(&mut stream).await;
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\na";
        stream.write_all(head).await.expect("write head");
        for byte in [b"b", b"c", b"d", b"e"] {
            sleep(Duration::from_millis(30)).await;
            stream.write_all(byte).await.expect("write body");
        }
    });

    let response = send(&get(&format!("http://{addr}/")), &limits())
        .await
        .expect("response");

    assert_eq!(&response.body[..], b"abcde");
    let phases = response.phases;
    assert!(phases.transfer >= Duration::from_millis(100), "{phases:?}");
    assert!(phases.processing < phases.transfer, "{phases:?}");
}

#[tokio::test]
async fn chunked_bodies_are_read_to_the_end() {
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        .to_vec();
    let (addr, _server) = serve_once(response).await;

    let response = send(&get(&format!("http://{addr}/")), &limits())
        .await
        .expect("response");

    assert_eq!(&response.body[..], b"hello world");
}

#[tokio::test]
async fn refused_connection_is_a_connect_failure() {
    let (listener, addr) = listen().await;
    drop(listener);

    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits()).await);

    assert_eq!(failure.kind, FailureKind::Connect);
    let expected = format!("connection refused connecting to {addr}: ");
    assert!(
        failure.message.starts_with(&expected),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn unknown_host_is_a_resolve_failure() {
    let failure = expect_failure(send(&get("http://nothing.invalid/"), &limits()).await);

    assert_eq!(failure.kind, FailureKind::Resolve);
    assert!(
        failure
            .message
            .starts_with("could not resolve nothing.invalid: "),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn unsupported_scheme_is_a_protocol_failure() {
    let failure = expect_failure(send(&get("ftp://127.0.0.1/file"), &limits()).await);

    assert_eq!(failure.kind, FailureKind::Protocol);
    assert!(
        failure.message.contains("unsupported URL scheme 'ftp'"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn garbage_response_is_a_protocol_failure() {
    let (addr, _server) = serve_once(b"SPDY/9 banana\r\n\r\n".to_vec()).await;

    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits()).await);

    assert_eq!(failure.kind, FailureKind::Protocol);
    assert!(
        failure.message.starts_with("invalid HTTP response: "),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn silent_server_times_out_in_processing() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_request(&mut stream).await;
        sleep(Duration::from_secs(10)).await;
        drop(stream);
    });
    let start = Instant::now();
    let limits = Limits {
        deadline: start + Duration::from_millis(300),
        ..limits()
    };

    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits).await);

    let took = start.elapsed();
    assert_eq!(failure.kind, FailureKind::Timeout);
    assert!(
        failure.message.starts_with("timed out after 0.3"),
        "{}",
        failure.message
    );
    assert!(
        failure
            .message
            .ends_with("waiting for the response (processing)"),
        "{}",
        failure.message
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(failure.phases.connect > Duration::ZERO);
    assert_eq!(failure.phases.processing, Duration::ZERO);
}

#[tokio::test]
async fn stalled_body_times_out_in_transfer() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_request(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            .await
            .expect("write");
        sleep(Duration::from_secs(10)).await;
    });
    let limits = Limits {
        deadline: Instant::now() + Duration::from_millis(200),
        ..limits()
    };

    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits).await);

    assert_eq!(failure.kind, FailureKind::Timeout);
    assert!(
        failure.message.ends_with("reading the body (transfer)"),
        "{}",
        failure.message
    );
    assert!(failure.phases.processing > Duration::ZERO);
}

#[tokio::test]
async fn body_over_the_cap_is_refused() {
    let big = vec![b'x'; 100 << 10];
    let limits = Limits {
        max_body_bytes: 64 << 10,
        ..limits()
    };

    // Announced by Content-Length.
    let (addr, _server) = serve_once(response_with_body("", &big)).await;
    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits).await);
    assert_eq!(failure.kind, FailureKind::BodyTooLarge);
    assert_eq!(failure.message, "response body exceeds the limit of 64 KiB");

    // Discovered while streaming a chunked body.
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in big.chunks(16 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (addr, _server) = serve_once(chunked).await;
    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits).await);
    assert_eq!(failure.kind, FailureKind::BodyTooLarge);
    assert_eq!(failure.message, "response body exceeds the limit of 64 KiB");
}

#[tokio::test]
async fn gzip_body_is_decoded() {
    let text = b"the quick brown fox jumps over the lazy dog ".repeat(50);
    let compressed = gzip(&text);
    let (addr, _server) = serve_once(response_with_body(
        "Content-Encoding: gzip\r\n",
        &compressed,
    ))
    .await;

    let response = send(&get(&format!("http://{addr}/")), &limits())
        .await
        .expect("response");

    assert_eq!(response.body, text);
    assert_eq!(header_values(&response, "content-encoding"), ["gzip"]);
}

#[tokio::test]
async fn deflate_body_is_decoded() {
    let text = b"deflated ".repeat(40);
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&text).expect("compress");
    let compressed = encoder.finish().expect("finish");
    let (addr, _server) = serve_once(response_with_body(
        "Content-Encoding: deflate\r\n",
        &compressed,
    ))
    .await;

    let response = send(&get(&format!("http://{addr}/")), &limits())
        .await
        .expect("response");

    assert_eq!(response.body, text);
}

#[tokio::test]
async fn head_response_is_not_held_to_its_announced_length() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\nContent-Encoding: gzip\r\n\r\n";
    let (addr, server) = serve_once(head.to_vec()).await;
    let request = OutgoingRequest {
        method: http::Method::HEAD,
        ..get(&format!("http://{addr}/big.iso"))
    };
    let limits = Limits {
        max_body_bytes: 64 << 10,
        ..limits()
    };

    let response = send(&request, &limits).await.expect("response");

    assert_eq!(response.status, 200);
    assert!(response.body.is_empty());
    assert!(
        server
            .await
            .expect("server")
            .head
            .starts_with("HEAD /big.iso HTTP/1.1")
    );
}

#[tokio::test]
async fn gzip_bomb_is_refused() {
    let bomb = gzip(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 64 << 10);
    let (addr, _server) = serve_once(response_with_body("Content-Encoding: gzip\r\n", &bomb)).await;
    let limits = Limits {
        max_body_bytes: 64 << 10,
        ..limits()
    };

    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits).await);

    assert_eq!(failure.kind, FailureKind::BodyTooLarge);
    assert!(
        failure
            .message
            .starts_with("response body exceeds the limit of 64 KiB"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn reset_connection_is_an_io_failure() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_request(&mut stream).await;
        let socket = socket2::SockRef::from(&stream);
        socket
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(stream); // closing with linger 0 sends RST
    });

    let failure = expect_failure(send(&get(&format!("http://{addr}/")), &limits()).await);

    assert_eq!(failure.kind, FailureKind::Io);
    assert!(
        failure
            .message
            .starts_with("connection reset while reading the response: "),
        "{}",
        failure.message
    );
}

/// A TLS server certificate made with rcgen, and the DER chain the server presents.
struct TestCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A self-signed certificate for `names`, expiring at the start of `(year, month, day)` UTC;
/// returns the expiry as unix seconds too.
fn self_signed(names: &[&str], (year, month, day): (i32, u8, u8)) -> (TestCert, i64) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let expiry = params.not_after.unix_timestamp();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    let test_cert = TestCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    };
    (test_cert, expiry)
}

/// A leaf signed by a CA that expires before the leaf does; the server sends both.
fn leaf_and_early_ca() -> (TestCert, i64) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.not_after = rcgen::date_time_ymd(2030, 1, 15);
    let ca_expiry = ca_params.not_after.unix_timestamp();
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    leaf_params.not_after = rcgen::date_time_ymd(2033, 6, 1);
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let test_cert = TestCert {
        chain: vec![leaf.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    };
    (test_cert, ca_expiry)
}

/// Serves one TLS connection with `cert`, answering any request with `body`.
async fn serve_tls_once(cert: TestCert, body: &'static [u8]) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        // A failed handshake is what some tests want; the client reports it.
        let Ok(mut tls) = acceptor.accept(stream).await else {
            return;
        };
        read_request(&mut tls).await;
        tls.write_all(&response_with_body("", body))
            .await
            .expect("write");
        tls.shutdown().await.ok();
    });
    addr
}

#[tokio::test]
async fn self_signed_certificate_fails_verification() {
    let (cert, _) = self_signed(&["127.0.0.1"], (2031, 5, 17));
    let addr = serve_tls_once(cert, b"secret").await;

    let failure = expect_failure(send(&get(&format!("https://{addr}/")), &limits()).await);

    assert_eq!(failure.kind, FailureKind::Tls);
    assert!(
        failure
            .message
            .starts_with("TLS handshake with 127.0.0.1 failed: invalid peer certificate"),
        "{}",
        failure.message
    );
    assert!(failure.phases.connect > Duration::ZERO);
    assert_eq!(failure.phases.tls, Duration::ZERO);
}

#[tokio::test]
async fn insecure_accepts_self_signed_and_records_expiry() {
    let (cert, expiry) = self_signed(&["localhost"], (2031, 5, 17));
    let addr = serve_tls_once(cert, b"over tls").await;
    let limits = Limits {
        insecure: true,
        ..limits()
    };
    let url = format!("https://localhost:{}/secure", addr.port());

    let response = send(&get(&url), &limits).await.expect("response");

    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"over tls");
    assert!(response.phases.tls > Duration::ZERO);
    assert!(response.phases.processing > Duration::ZERO);
    assert_eq!(response.cert_not_after, Some(expiry));
    assert_eq!(response.remote_addr, addr);
}

#[tokio::test]
async fn expiry_is_the_earliest_in_the_chain() {
    let (cert, ca_expiry) = leaf_and_early_ca();
    let addr = serve_tls_once(cert, b"chained").await;
    let limits = Limits {
        insecure: true,
        ..limits()
    };
    let url = format!("https://localhost:{}/", addr.port());

    let response = send(&get(&url), &limits).await.expect("response");

    assert_eq!(&response.body[..], b"chained");
    assert_eq!(response.cert_not_after, Some(ca_expiry));
}

#[tokio::test]
async fn transport_is_cheap_to_clone_and_reusable() {
    let transport = Transport::new();
    let copy = transport.clone();
    assert!(format!("{copy:?}").starts_with("Transport"));
    for _ in 0..2 {
        let (addr, _server) = serve_once(response_with_body("", b"again")).await;
        let response = copy
            .send(&get(&format!("http://{addr}/")), &limits())
            .await
            .expect("response");
        assert_eq!(&response.body[..], b"again");
    }
    // The future is Send, so callers may spawn it.
    let (addr, _server) = serve_once(response_with_body("", b"spawned")).await;
    let handle = tokio::spawn(async move {
        transport
            .send(&get(&format!("http://{addr}/")), &limits())
            .await
    });
    let response = handle.await.expect("join").expect("response");
    assert_eq!(&response.body[..], b"spawned");
}
