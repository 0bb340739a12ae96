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
    let config = one_probe("hang", &server.url(), "    timeout: 2s\n", "[ status == 200 ]");
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
    let config = one_probe("stalled", &server.url(), "    timeout: 2s\n", "[ status == 200 ]");
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
    let config = one_probe("trickle", &server.url(), "    timeout: 3s\n", "[ status == 200 ]");
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
    let config = one_probe("bomb", &server.url(), "    timeout: 10s\n", "[ status == 200 ]");
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
    assert!(actual.contains('\u{fffd}') && actual.contains("ok"), "{actual}");
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
    assert_eq!(insecure["result"], "pass", "{insecure:#}\n{}", v.run.output());
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
    let redirect = answer(head("302 Found", &["Location: /", "Content-Length: 0"]).into_bytes()).await;
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
        ("nowhere", "http://patrol-agent-fault.invalid/".to_string(), "error"),
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
