//! The fault matrix: every way a target can break, each proved end to end with the real
//! `patrol verify --report-json` against the reference shop's fault switches or a small fixture
//! in this file — a raw TCP server that resets, hangs, trickles, lies about or never ends its
//! body, bombs with gzip, speaks invalid UTF-8 or redirects to itself, and a rustls server with
//! expired, self-signed and wrong-host certificates made here with rcgen. Each fault must give
//! the right result kind (fail, error, timeout) and a message that says what broke, within the
//! probe's timeout. The last test runs a set of them through the agent (`patrol run`, `POST
//! /api/v1/runs`) and checks it still serves /metrics and /healthz afterwards.
//!
//! FAULTS.md at the workspace root lists the matrix with the test that proves each row.

mod common;

use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use citadel_shop::Fault;
use common::{Patrol, RawServer, Scratch, Verified, read_request_head, verify_config};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// What a fault may cost beyond the probe's own timeout: process start and report writing.
const SLACK: Duration = Duration::from_secs(5);

/// A config of one probe `name` with one step `get` requesting `url`; `settings` are extra
/// probe keys (indented as under the probe), `asserts` the step's assertion list.
fn one_probe(name: &str, url: &str, settings: &str, asserts: &str) -> String {
    format!(
        "probes:\n  - name: {name}\n{settings}    steps:\n      - name: get\n        \
         request: {{ url: \"{url}\" }}\n        assert: {asserts}\n"
    )
}

/// The step result `get` of probe `name`, after checking the probe's and the step's result are
/// `kind`, the step's error (or the probe's, for timeouts) names every one of `says`, and the
/// probe finished within `timeout` (plus slack).
#[track_caller]
fn assert_fault<'r>(
    verified: &'r Verified,
    name: &str,
    kind: &str,
    says: &[&str],
    timeout: Duration,
) -> &'r Value {
    let probe = common::probe(&verified.report, name);
    let step = common::step(probe, "get");
    let shown = || format!("{probe:#}\n{}", verified.run.output());
    assert_eq!(probe["result"], kind, "{}", shown());
    assert_eq!(step["result"], kind, "{}", shown());
    let error = step["error"].as_str().unwrap_or_default();
    // Shown with --nocapture: the messages FAULTS.md quotes.
    eprintln!("{name}: {kind}: {error}");
    for part in says {
        assert!(
            error.contains(part),
            "the error should say `{part}`: `{error}`\n{}",
            shown()
        );
    }
    let took = probe["duration_seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(
        took < (timeout + Duration::from_secs(1)).as_secs_f64(),
        "{name} took {took}s with a timeout of {timeout:?}"
    );
    assert!(
        verified.run.elapsed < timeout + SLACK,
        "patrol verify took {:?}",
        verified.run.elapsed
    );
    // Any non-pass result makes `verify` exit 1, never 2 (its own error) or a crash.
    verified.run.assert_code(1);
    step
}

/// A response head with the given extra header lines.
fn head(status: &str, headers: &[&str]) -> String {
    let mut text = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text
}

/// Answers every request with `bytes`, then closes.
async fn answer(bytes: Vec<u8>) -> RawServer {
    let bytes = Arc::new(bytes);
    RawServer::start(move |mut stream: TcpStream| {
        let bytes = Arc::clone(&bytes);
        async move {
            read_request_head(&mut stream).await;
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_an_error() {
    let port = common::closed_port();
    let url = format!("http://127.0.0.1:{port}/");
    let v = verify_config(&one_probe("refused", &url, "", "[ status == 200 ]"), &[]).await;
    let step = assert_fault(
        &v,
        "refused",
        "error",
        &["connection refused", &format!("127.0.0.1:{port}")],
        Duration::from_secs(10),
    );
    assert!(step.get("status").is_none(), "{step:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_the_middle_of_the_body_is_an_error() {
    let server = RawServer::start(|mut stream: TcpStream| async move {
        read_request_head(&mut stream).await;
        let head = head("200 OK", &["Content-Length: 1000"]);
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&[b'x'; 100]).await;
        let _ = stream.flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        common::reset(stream);
    })
    .await;
    let config = one_probe("reset", &server.url(), "", "[ status == 200 ]");
    let v = verify_config(&config, &[]).await;
    assert_fault(
        &v,
        "reset",
        "error",
        &["connection reset", "reading the body"],
        Duration::from_secs(10),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_before_the_headers_times_out_in_processing() {
    let server = RawServer::start(|mut stream: TcpStream| async move {
        read_request_head(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    })
    .await;
    let config = one_probe(
        "hang",
        &server.url(),
        "    timeout: 2s\n",
        "[ status == 200 ]",
    );
    let v = verify_config(&config, &[]).await;
    assert_fault(
        &v,
        "hang",
        "timeout",
        &["timed out after 2", "waiting for the response (processing)"],
        Duration::from_secs(2),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_in_the_middle_of_the_body_times_out_in_transfer() {
    let server = RawServer::start(|mut stream: TcpStream| async move {
        read_request_head(&mut stream).await;
        let head = head("200 OK", &["Content-Length: 1000"]);
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&[b'x'; 100]).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let config = one_probe(
        "stalled",
        &server.url(),
        "    timeout: 2s\n",
        "[ status == 200 ]",
    );
    let v = verify_config(&config, &[]).await;
    let step = assert_fault(
        &v,
        "stalled",
        "timeout",
        &["timed out after 2", "reading the body (transfer)"],
        Duration::from_secs(2),
    );
    // The head had arrived: the phases before the transfer are measured.
    assert!(step["phases"]["connect"].as_f64().is_some(), "{step:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_one_byte_a_second_times_out_in_transfer() {
    let server = RawServer::start(|mut stream: TcpStream| async move {
        read_request_head(&mut stream).await;
        let head = head("200 OK", &["Content-Length: 100"]);
        let _ = stream.write_all(head.as_bytes()).await;
        for _ in 0..100 {
            if stream.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let config = one_probe(
        "trickle",
        &server.url(),
        "    timeout: 3s\n",
        "[ status == 200 ]",
    );
    let v = verify_config(&config, &[]).await;
    assert_fault(
        &v,
        "trickle",
        "timeout",
        &["timed out after 3", "(transfer)"],
        Duration::from_secs(3),
    );
    let probe = common::probe(&v.report, "trickle");
    assert!(
        probe["error"]
            .as_str()
            .is_some_and(|e| e.contains("step `get` timed out")),
        "{probe:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_capped() {
    let server = RawServer::start(|mut stream: TcpStream| async move {
        read_request_head(&mut stream).await;
        let head = head("200 OK", &["Transfer-Encoding: chunked"]);
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "x".repeat(16 * 1024));
        // Endless, until the client hangs up.
        while stream.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;
    let config = one_probe(
        "endless",
        &server.url(),
        "    timeout: 10s\n    max_body: 1MiB\n",
        "[ status == 200 ]",
    );
    let v = verify_config(&config, &[]).await;
    assert_fault(
        &v,
        "endless",
        "error",
        &["response body exceeds the limit of 1 MiB"],
        Duration::from_secs(10),
    );
}

/// A gzip stream that inflates to 1 GiB of zeros from about 1 MiB: 64 members of 16 MiB each.
fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..16 {
            member.write_all(&zeros).expect("compress into memory");
        }
        let member = member.finish().expect("finish the gzip member");
        member.repeat(64)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_capped_once_decoded() {
    let bomb = gzip_bomb();
    assert!(bomb.len() < 2 << 20, "the bomb is {} bytes", bomb.len());
    let mut response = head(
        "200 OK",
        &[
            "Content-Type: application/json",
            "Content-Encoding: gzip",
            &format!("Content-Length: {}", bomb.len()),
        ],
    )
    .into_bytes();
    response.extend_from_slice(bomb);
    let server = answer(response).await;
    // The default max_body (10 MiB) lets the ~1 MiB on the wire through; decoding stops at it.
    let config = one_probe(
        "bomb",
        &server.url(),
        "    timeout: 10s\n",
        "[ status == 200 ]",
    );
    let v = verify_config(&config, &[]).await;
    assert_fault(
        &v,
        "bomb",
        "error",
        &["exceeds the limit of 10 MiB once decoded (gzip)"],
        Duration::from_secs(10),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_utf8_body_fails_its_assertions_with_a_clear_message() {
    let body: &[u8] = b"\xff\xfe ok \xc3\x28 <\x80>";
    let mut response = head(
        "200 OK",
        &[
            "Content-Type: application/json",
            &format!("Content-Length: {}", body.len()),
        ],
    )
    .into_bytes();
    response.extend_from_slice(body);
    let server = answer(response).await;
    let config = one_probe(
        "garbled",
        &server.url(),
        "",
        r#"
          - status == 200
          - 'body contains "ok"'
          - 'body == "ok"'
          - 'jsonpath "$.a" exists'"#,
    );
    let v = verify_config(&config, &[]).await;
    let probe = common::probe(&v.report, "garbled");
    assert_eq!(probe["result"], "fail", "{probe:#}\n{}", v.run.output());
    v.run.assert_code(1);
    let asserts = &common::step(probe, "get")["asserts"];
    let results: Vec<&str> = asserts
        .as_array()
        .map(|a| a.iter().filter_map(|a| a["result"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(results, ["pass", "pass", "fail", "fail"], "{asserts:#}");
    // Undecodable bytes are shown as U+FFFD, never dropped silently or crashing the report.
    let actual = asserts[2]["actual"].as_str().unwrap_or_default();
    assert!(
        actual.contains('\u{fffd}') && actual.contains("ok"),
        "{actual}"
    );
    // The JSONPath failure says the body is not JSON.
    eprintln!("garbled: fail: {}", asserts[3]);
    let jsonpath = asserts[3].to_string().to_lowercase();
    assert!(jsonpath.contains("json"), "{jsonpath}");
    assert!(
        asserts[3]["message"]
            .as_str()
            .or(asserts[3]["actual"].as_str())
            .is_some_and(|m| !m.is_empty()),
        "the failing jsonpath assertion should say why: {:#}",
        asserts[3]
    );
    assert!(!v.run.stderr.contains("panicked"), "{}", v.run.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_from_the_shop_fails_the_jsonpath_assertion() {
    let shop = common::shop().await;
    shop.faults().set(Fault {
        malformed_json: true,
        ..Fault::new("/api/products")
    });
    let config = one_probe(
        "catalog",
        &format!("{}/api/products", shop.url()),
        "",
        r#"[ status == 200, 'jsonpath "$.products" count >= 1' ]"#,
    );
    let v = verify_config(&config, &[]).await;
    let probe = common::probe(&v.report, "catalog");
    assert_eq!(probe["result"], "fail", "{probe:#}");
    let asserts = &common::step(probe, "get")["asserts"];
    assert_eq!(asserts[0]["result"], "pass", "{asserts:#}");
    assert_eq!(asserts[1]["result"], "fail", "{asserts:#}");
    eprintln!("catalog: fail: {}", asserts[1]);
    let said = asserts[1].to_string().to_lowercase();
    assert!(said.contains("json"), "{said}");
    v.run.assert_code(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_loop_is_an_error() {
    let response = head("302 Found", &["Location: /loop", "Content-Length: 0"]);
    let server = answer(response.into_bytes()).await;
    let config = one_probe(
        "loop",
        &format!("{}/loop", server.url()),
        "",
        "[ status == 200 ]",
    );
    let v = verify_config(&config, &[]).await;
    assert_fault(
        &v,
        "loop",
        "error",
        &["too many redirects", "stopped after 10", "/loop"],
        Duration::from_secs(10),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_name_is_an_error() {
    let config = one_probe(
        "nowhere",
        "http://patrol-fault-matrix.invalid/",
        "",
        "[ status == 200 ]",
    );
    let v = verify_config(&config, &[]).await;
    assert_fault(
        &v,
        "nowhere",
        "error",
        &["could not resolve patrol-fault-matrix.invalid"],
        Duration::from_secs(10),
    );
}

/// A TLS server with a certificate made here; answers every request `200 ok`.
struct TlsTarget {
    server: RawServer,
    /// The certificate's notAfter, unix seconds.
    not_after: i64,
}

impl TlsTarget {
    /// Self-signed for `names`, valid until `not_after` (year, month, day).
    async fn start(names: &[&str], not_after: (i32, u8, u8)) -> TlsTarget {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let cert = params.self_signed(&key).expect("a self-signed certificate");
        let chain = vec![cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let server = RawServer::start(move |stream: TcpStream| {
            let acceptor = acceptor.clone();
            async move {
                // A client that rejects the certificate ends the handshake: nothing to serve.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                read_request_head(&mut tls).await;
                let reply = format!("{}ok", head("200 OK", &["Content-Length: 2"]));
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        })
        .await;
        let not_after = chrono::NaiveDate::from_ymd_opt(
            not_after.0,
            u32::from(not_after.1),
            u32::from(not_after.2),
        )
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc()
        .timestamp();
        TlsTarget { server, not_after }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.server.addr.port())
    }
}

/// Runs `target` twice, verified (must error naming `problem`) and `insecure: true` (must
/// pass, with the certificate's expiry recorded); returns the insecure step.
async fn tls_fault(target: &TlsTarget, name: &str, problem: &[&str], asserts: &str) -> Value {
    let mut config = one_probe(name, &target.url(), "", "[ status == 200 ]");
    config.push_str(&format!(
        "  - name: {name}-insecure\n    insecure: true\n    steps:\n      - name: get\n        \
         request: {{ url: \"{}\" }}\n        assert: {asserts}\n",
        target.url()
    ));
    let v = verify_config(&config, &[]).await;
    let mut says = vec!["TLS handshake with 127.0.0.1 failed", "certificate"];
    says.extend_from_slice(problem);
    assert_fault(&v, name, "error", &says, Duration::from_secs(10));
    let insecure = common::probe(&v.report, &format!("{name}-insecure"));
    assert_eq!(
        insecure["result"],
        "pass",
        "{insecure:#}\n{}",
        v.run.output()
    );
    let step = common::step(insecure, "get").clone();
    assert_eq!(step["cert_not_after"], target.not_after, "{step:#}");
    step
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_an_error_and_insecure_reports_its_expiry() {
    let target = TlsTarget::start(&["127.0.0.1", "localhost"], (2021, 1, 1)).await;
    let step = tls_fault(
        &target,
        "expired",
        &["expired", &target.not_after.to_string()],
        "[ status == 200, cert_expiry < 0s, cert_expiry <= 0d ]",
    )
    .await;
    let asserts = &step["asserts"];
    assert_eq!(asserts[1]["result"], "pass", "{asserts:#}");
    assert_eq!(asserts[2]["result"], "pass", "{asserts:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_an_error_unless_insecure() {
    let target = TlsTarget::start(&["127.0.0.1", "localhost"], (2099, 1, 1)).await;
    tls_fault(
        &target,
        "selfsigned",
        &["UnknownIssuer"],
        "[ status == 200, cert_expiry > 30d ]",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_an_error_unless_insecure() {
    // Issued for another name than the 127.0.0.1 the probe dials. The webpki roots cannot be
    // made to trust a test CA, so verification stops at the unknown issuer before it reaches
    // the name check; either way the handshake is refused and the message names the
    // certificate.
    let target = TlsTarget::start(&["wrong.example"], (2099, 1, 1)).await;
    tls_fault(
        &target,
        "wronghost",
        &["UnknownIssuer"],
        "[ status == 200, cert_expiry > 30d ]",
    )
    .await;
}

/// `patrol run` with a set of the faults above, run on demand through the API: each result is
/// recorded with the right kind, and the agent keeps serving /metrics and /healthz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_faults_and_keeps_serving() {
    let reset = RawServer::start(|mut stream: TcpStream| async move {
        read_request_head(&mut stream).await;
        let _ = stream
            .write_all(head("200 OK", &["Content-Length: 1000"]).as_bytes())
            .await;
        let _ = stream.write_all(&[b'x'; 10]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        common::reset(stream);
    })
    .await;
    let stall = RawServer::start(|mut stream: TcpStream| async move {
        read_request_head(&mut stream).await;
        let _ = stream
            .write_all(head("200 OK", &["Content-Length: 1000"]).as_bytes())
            .await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let mut bomb = head(
        "200 OK",
        &[
            "Content-Encoding: gzip",
            &format!("Content-Length: {}", gzip_bomb().len()),
        ],
    )
    .into_bytes();
    bomb.extend_from_slice(gzip_bomb());
    let bomb = answer(bomb).await;
    let redirect =
        answer(head("302 Found", &["Location: /", "Content-Length: 0"]).into_bytes()).await;
    let tls = TlsTarget::start(&["127.0.0.1"], (2021, 1, 1)).await;
    let refused = common::closed_port();
    let shop = common::shop().await;
    shop.faults().set(Fault {
        malformed_json: true,
        ..Fault::new("/api/products")
    });

    let probe = |name: &str, url: &str, asserts: &str| {
        format!(
            "  - name: {name}\n    timeout: 2s\n    steps:\n      - name: get\n        \
             request: {{ url: \"{url}\" }}\n        assert: {asserts}\n"
        )
    };
    let mut config = String::from("probes:\n");
    let faults = [
        ("refused", format!("http://127.0.0.1:{refused}/"), "error"),
        ("reset", reset.url(), "error"),
        ("stall", stall.url(), "timeout"),
        ("bomb", bomb.url(), "error"),
        ("redirect", redirect.url(), "error"),
        ("expired", tls.url(), "error"),
        (
            "nowhere",
            "http://patrol-agent-fault.invalid/".to_string(),
            "error",
        ),
        ("garbage", format!("{}/api/products", shop.url()), "fail"),
    ];
    for (name, url, _) in &faults {
        config.push_str(&probe(
            name,
            url,
            r#"[ status == 200, 'jsonpath "$.products" exists' ]"#,
        ));
    }
    let scratch = Scratch::new();
    let path = scratch.write("patrol.yaml", &config);
    let agent = Patrol::agent(&path)
        .current_dir(scratch.path())
        .start()
        .await;
    let run = agent.run("{}", None).await;
    for (name, _, kind) in &faults {
        let result = common::probe(&run, name);
        assert_eq!(result["result"], *kind, "{result:#}");
        let took = result["duration_seconds"].as_f64().unwrap_or(f64::MAX);
        assert!(took < 3.0, "{name} took {took}s with a 2s timeout");
    }

    let metrics = agent.metrics().await;
    for (name, _, kind) in &faults {
        let series = format!(
            "probe_runs_total{{location=\"local\",probe=\"{name}\",result=\"{kind}\",type=\"http\"}}"
        );
        assert_eq!(
            common::metric(&metrics, &series),
            Some(1.0),
            "{series} in:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("probe_runs_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let success = format!("probe_success{{location=\"local\",probe=\"{name}\",type=\"http\"}}");
        assert_eq!(common::metric(&metrics, &success), Some(0.0), "{success}");
    }
    let health = agent.get("/healthz").await;
    health.assert_status(200);
    agent.get("/readyz").await.assert_status(200);
    // And it still runs probes: the same faults again, the same answers.
    let again = agent.run(r#"{"probes":["refused","garbage"]}"#, None).await;
    assert_eq!(common::probe(&again, "refused")["result"], "error");
    assert_eq!(common::probe(&again, "garbage")["result"], "fail");
}

/// Whether Debian's chromium and chromium-driver are installed (browser faults need them).
fn browser_installed() -> bool {
    ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| std::path::Path::new(p).exists())
}

/// `kill -SIGNAL pids`.
fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    // A process may exit between the listing and the signal: that is not an error here.
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill");
}

/// A site for browser faults: `/` a small page, `/slow` the same page 3 s after the request
/// (counted, so a test knows the browser is waiting on it), `/spin` a page whose script never
/// yields, anything else 404.
async fn browser_site() -> (RawServer, Arc<std::sync::atomic::AtomicUsize>) {
    let slow_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&slow_hits);
    let server = RawServer::start(move |mut stream: TcpStream| {
        let counter = Arc::clone(&counter);
        async move {
            let head = read_request_head(&mut stream).await;
            let page = |body: &str| {
                format!(
                    "{}{body}",
                    head_of("200 OK", "text/html; charset=utf-8", body.len())
                )
            };
            let ok = "<!doctype html><title>ok</title><p id=ok>ok</p>";
            let reply = if head.starts_with("GET /slow") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
                page(ok)
            } else if head.starts_with("GET /spin") {
                page("<!doctype html><title>spin</title><script>for(;;){}</script>")
            } else if head.starts_with("GET / ") {
                page(ok)
            } else {
                head_of("404 Not Found", "text/plain", 0)
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    })
    .await;
    (server, slow_hits)
}

fn head_of(status: &str, content_type: &str, length: usize) -> String {
    head(
        status,
        &[
            &format!("Content-Type: {content_type}"),
            &format!("Content-Length: {length}"),
        ],
    )
}

/// The browser section and two probes of `site`: `quick` loads `/`, `slow` loads `/slow`
/// within `timeout`, `spin` loads `/spin`.
fn browser_config(site: &RawServer, timeout: &str) -> String {
    format!(
        "browser:\n  chromedriver: /usr/bin/chromedriver\n  chromium: /usr/bin/chromium\n\
         vars:\n  web: {}\nprobes:\n\
         \x20 - name: quick\n    type: browser\n    timeout: 30s\n    steps:\n      \
         - goto: \"{{{{ web }}}}/\"\n      - assert_title: ok\n\
         \x20 - name: slow\n    type: browser\n    timeout: {timeout}\n    steps:\n      \
         - goto: \"{{{{ web }}}}/slow\"\n\
         \x20 - name: spin\n    type: browser\n    timeout: {timeout}\n    steps:\n      \
         - goto: \"{{{{ web }}}}/spin\"\n      - assert_title: spin\n",
        site.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_hangs_chromium_times_out() {
    if !browser_installed() {
        eprintln!("skipped: chromium and chromium-driver are not installed");
        return;
    }
    let (site, _) = browser_site().await;
    let v = verify_config(&browser_config(&site, "5s"), &["--probe", "spin"]).await;
    let probe = common::probe(&v.report, "spin");
    let shown = || format!("{probe:#}\n{}", v.run.output());
    assert_eq!(probe["result"], "timeout", "{}", shown());
    let took = probe["duration_seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(took < 6.0, "the hung page took {took}s with a 5s timeout");
    let said = probe.to_string();
    eprintln!("spin: timeout: {}", probe["error"]);
    assert!(
        said.contains("timed out") || said.contains("did not answer"),
        "{}",
        shown()
    );
    assert!(v.run.elapsed < Duration::from_secs(5) + SLACK + Duration::from_secs(10));
    v.run.assert_code(1);
}

/// Waits until `hits` is past `before` (the browser is waiting for `/slow`); fails the test,
/// showing the run, if run `id` finishes first.
async fn browser_waiting(
    agent: &common::Agent,
    id: &str,
    hits: &std::sync::atomic::AtomicUsize,
    before: usize,
) {
    common::eventually(
        "the browser to request /slow",
        Duration::from_secs(30),
        async || {
            if hits.load(std::sync::atomic::Ordering::SeqCst) > before {
                return Some(());
            }
            let run = agent.get(&format!("/api/v1/runs/{id}")).await.json();
            assert_ne!(
                run["status"],
                "done",
                "the run ended first: {run:#}\n{}",
                agent.stderr()
            );
            None
        },
    )
    .await;
}

/// Every process as `(pid, state, command line)`, the state letter from `/proc/PID/stat` and
/// the command line's arguments joined by spaces.
fn processes() -> impl Iterator<Item = (u32, char, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((
                pid,
                state,
                String::from_utf8_lossy(&cmdline).replace('\0', " "),
            ))
        })
}

/// Chromium processes of `agent` still stopped (state `T`), with their command lines — also
/// those re-parented to init once chromedriver is gone: they name the agent's work directory.
fn stopped_browsers(agent: &common::Agent) -> Vec<(u32, String)> {
    let marker = format!("patrol-browser-{}", agent.pid());
    processes()
        .filter(|(_, state, cmdline)| *state == 'T' && cmdline.contains(&marker))
        .map(|(pid, _, cmdline)| (pid, cmdline))
        .collect()
}

/// Starts a run of `slow`, and once the browser waits for the page stops (SIGSTOP) every
/// Chromium process of the agent: Chromium hangs. Returns the run's result.
async fn hang_chromium_mid_load(
    agent: &common::Agent,
    hits: &std::sync::atomic::AtomicUsize,
) -> Value {
    // The run takes the spare session the browser keeps ready, so when it waits for the page
    // this run's Chromium is the only one.
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let id = agent.start_run(r#"{"probes":["slow"]}"#, None).await;
    browser_waiting(agent, &id, hits, before).await;
    let browsers: Vec<u32> = common::descendants(agent.pid())
        .into_iter()
        .filter(|(_, comm)| comm.starts_with("chrom") && !comm.starts_with("chromedriver"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!browsers.is_empty(), "no Chromium process found");
    signal("STOP", &browsers);
    let run = agent.finished_run(&id).await;
    let hung = common::probe(&run, "slow").clone();
    eprintln!(
        "chromium stopped: {}: {} / {}",
        hung["result"], hung["error"], hung["steps"][0]["error"]
    );
    hung
}

/// Starts a run of `slow`, and once the browser waits for the page kills chromedriver
/// (SIGKILL). Returns the run's result.
async fn kill_chromedriver_mid_load(
    agent: &common::Agent,
    hits: &std::sync::atomic::AtomicUsize,
) -> Value {
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let id = agent.start_run(r#"{"probes":["slow"]}"#, None).await;
    browser_waiting(agent, &id, hits, before).await;
    let driver: Vec<u32> = common::descendants(agent.pid())
        .into_iter()
        .filter(|(_, comm)| comm.starts_with("chromedriver"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(driver.len(), 1, "one chromedriver expected");
    signal("KILL", &driver);
    let run = agent.finished_run(&id).await;
    let killed = common::probe(&run, "slow").clone();
    eprintln!(
        "chromedriver killed: {}: {}",
        killed["result"], killed["steps"][0]["error"]
    );
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_survives_a_killed_chromedriver_and_a_hung_chromium() {
    if !browser_installed() {
        eprintln!("skipped: chromium and chromium-driver are not installed");
        return;
    }
    let (site, hits) = browser_site().await;
    let scratch = Scratch::new();
    // Generous timeouts: Chromium's start counts against them, and takes seconds on a busy
    // machine.
    let path = scratch.write("patrol.yaml", &browser_config(&site, "30s"));
    let agent = Patrol::agent(&path)
        .current_dir(scratch.path())
        .start()
        .await;
    let quick = async || {
        let run = agent.run(r#"{"probes":["quick"]}"#, None).await;
        let result = common::probe(&run, "quick").clone();
        assert_eq!(result["result"], "pass", "{result:#}\n{}", agent.stderr());
    };
    quick().await;

    // chromedriver killed while a page is loading: that run errors, the next one passes.
    let killed = kill_chromedriver_mid_load(&agent, &hits).await;
    assert_eq!(killed["result"], "error", "{killed:#}");
    let error = killed["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("chromedriver"), "{error}");
    assert!(
        killed["duration_seconds"].as_f64().unwrap_or(f64::MAX) < 31.0,
        "{killed:#}"
    );
    quick().await;

    // Chromium hung (stopped) while a page is loading: that run times out within its timeout,
    // and the agent keeps serving. (That the stopped browser is then killed and the next run
    // passes is the ignored test below: a known bug.)
    let hung = hang_chromium_mid_load(&agent, &hits).await;
    assert_eq!(hung["result"], "timeout", "{hung:#}");
    assert!(
        hung["duration_seconds"].as_f64().unwrap_or(f64::MAX) < 31.0,
        "{hung:#}"
    );

    let metrics = agent.metrics().await;
    let runs = |probe: &str, result: &str| {
        common::metric(
            &metrics,
            &format!(
                "probe_runs_total{{location=\"local\",probe=\"{probe}\",result=\"{result}\",type=\"browser\"}}"
            ),
        )
    };
    assert_eq!(runs("quick", "pass"), Some(2.0), "{metrics}");
    assert_eq!(runs("slow", "error"), Some(1.0), "{metrics}");
    assert_eq!(runs("slow", "timeout"), Some(1.0), "{metrics}");
    agent.get("/healthz").await.assert_status(200);
    // Don't leave what this test stopped behind (see the ignored test below).
    let left: Vec<u32> = stopped_browsers(&agent)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    signal("KILL", &left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_chromium_is_killed_and_the_next_run_passes() {
    if !browser_installed() {
        return;
    }
    let (site, hits) = browser_site().await;
    let scratch = Scratch::new();
    let path = scratch.write("patrol.yaml", &browser_config(&site, "30s"));
    let agent = Patrol::agent(&path)
        .current_dir(scratch.path())
        .start()
        .await;
    // As in the test above: a pass, chromedriver killed mid-load and restarted, a pass — then
    // the hang. (A hang without the restart before it is cleaned up, and the next run passes.)
    let first = agent.run(r#"{"probes":["quick"]}"#, None).await;
    assert_eq!(
        common::probe(&first, "quick")["result"],
        "pass",
        "{first:#}"
    );
    kill_chromedriver_mid_load(&agent, &hits).await;
    let again = agent.run(r#"{"probes":["quick"]}"#, None).await;
    assert_eq!(
        common::probe(&again, "quick")["result"],
        "pass",
        "{again:#}"
    );
    let hung = hang_chromium_mid_load(&agent, &hits).await;
    assert_eq!(hung["result"], "timeout", "{hung:#}");
    // The stop can also catch the spare session being started for the next run: the next run
    // must find out that the spare no longer answers rather than wait on it.
    let next = agent.run(r#"{"probes":["quick"]}"#, None).await;
    assert_eq!(
        common::probe(&next, "quick")["result"],
        "pass",
        "the run after the hang: {next:#}\n{}",
        agent.stderr()
    );
    // The hung run's guard closes its session (3 s) and then kills what names its profile; a
    // hung spare is killed the same way once a run has turned it down.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !stopped_browsers(&agent).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = stopped_browsers(&agent);
    signal("KILL", &left.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    assert!(
        left.is_empty(),
        "stopped Chromium processes left 20 s after the next run:\n{}\n--- agent log\n{}",
        left.iter()
            .map(|(p, c)| format!("{p}: {c}"))
            .collect::<Vec<_>>()
            .join("\n"),
        agent.stderr()
    );
}

/// Live processes whose command line or environment names `needle`.
fn naming(needle: &str) -> Vec<(u32, String)> {
    processes()
        .filter(|(pid, state, cmdline)| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            *state != 'Z'
                && (cmdline.contains(needle) || String::from_utf8_lossy(&environ).contains(needle))
        })
        .map(|(pid, _, cmdline)| (pid, cmdline))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_no_chromium_behind() {
    if !browser_installed() {
        return;
    }
    let (site, _hits) = browser_site().await;
    let scratch = Scratch::new();
    let path = scratch.write("patrol.yaml", &browser_config(&site, "30s"));
    let agent = Patrol::agent(&path)
        .current_dir(scratch.path())
        .start()
        .await;
    let run = agent.run(r#"{"probes":["quick"]}"#, None).await;
    assert_eq!(common::probe(&run, "quick")["result"], "pass", "{run:#}");
    let marker = format!("patrol-browser-{}-", agent.pid());
    // chromedriver, the spare session's Chromium: all name the agent's browser work directory.
    common::eventually("the spare session", Duration::from_secs(20), async || {
        (naming(&marker).len() > 2).then_some(())
    })
    .await;
    // SIGKILL: the agent cannot clean anything up itself.
    signal("KILL", &[agent.pid()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let work_dirs = || -> Vec<String> {
        std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&marker))
            .collect()
    };
    while (!naming(&marker).is_empty() || !work_dirs().is_empty())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = naming(&marker);
    signal("KILL", &left.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    assert!(
        left.is_empty(),
        "processes of the killed agent's browser still alive after 10 s:\n{}",
        left.iter()
            .map(|(p, c)| format!("{p}: {c}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        work_dirs().is_empty(),
        "work directory left: {:?}",
        work_dirs()
    );
}
