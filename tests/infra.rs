//! End-to-end tests of the infrastructure probes — `tcp`, `dns`, `tls`, `redis`, `postgres` —
//! running the real `patrol verify` binary against real servers started here on loopback:
//! redis-server and a throwaway PostgreSQL cluster (initdb in a temp dir) from Debian's
//! packages, a TLS listener with certificates made by rcgen, a small DNS server, and
//! `/etc/hosts` through the system resolver. Each test checks outcomes, actual vs expected,
//! phases, the JSON and JUnit reports and that secrets never show; the last one checks config
//! errors with line:col.
//!
//! A server binary that is missing skips its test with a loud message (`.ci/run` installs them).

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Patrol, Run, Scratch, parse_junit, probe, step};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

// ---------------------------------------------------------------------------------------------
// Running patrol

/// A finished `patrol verify -v` with its reports.
struct Verified {
    run: Run,
    report: Value,
    junit: String,
    _scratch: Scratch,
}

impl Verified {
    /// Every text that leaves the process: console, JSON and JUnit.
    fn everything(&self) -> String {
        format!("{}\n{}\n{}", self.run.output(), self.report, self.junit)
    }
}

/// Runs `patrol verify -v` on `config` with `env`, writing `report.json` and `junit.xml`.
async fn verify(config: &str, env: &[(&str, &str)]) -> Verified {
    let scratch = Scratch::new();
    let path = scratch.write("patrol.yaml", config);
    let mut patrol = Patrol::new(["verify", "-v", "--config"])
        .arg_path(&path)
        .args(["--report-json", "report.json", "--junit", "junit.xml"])
        .current_dir(scratch.path());
    for (name, value) in env {
        patrol = patrol.env(name, value);
    }
    let run = patrol.run().await;
    let text = scratch.read("report.json");
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("report.json is not JSON ({e}):\n{text}\n{}", run.output()));
    let junit = scratch.read("junit.xml");
    Verified {
        run,
        report,
        junit,
        _scratch: scratch,
    }
}

fn result(v: &Value) -> &str {
    v["result"].as_str().unwrap_or("(none)")
}

fn error(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

/// The assertion `expr` of a step.
fn assertion<'v>(step: &'v Value, expr: &str) -> &'v Value {
    step["asserts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["expr"] == expr))
        .unwrap_or_else(|| panic!("no assertion `{expr}` in the step:\n{step:#}"))
}

/// Asserts the step's result, with the step in the message.
fn expect_step(report: &Value, probe_name: &str, step_name: &str, want: &str) -> Value {
    let p = probe(report, probe_name);
    let s = step(p, step_name);
    assert_eq!(result(s), want, "{probe_name}/{step_name}:\n{s:#}");
    s.clone()
}

fn phase(step: &Value, name: &str) -> f64 {
    step["phases"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no phase {name}:\n{step:#}"))
}

// ---------------------------------------------------------------------------------------------
// Servers

/// Says loudly that a test did not run, and why.
fn skip(test: &str, why: &str) {
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: {why}\n\
         !!! install it (`apt-get install -y redis-server postgresql`; .ci/run does)\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// The first of `candidates` that exists.
fn find_binary(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Waits until something accepts TCP connections on `port`.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(binary: &Path, password: Option<&str>) -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir for redis");
        let port = common::closed_port();
        let mut command = Command::new(binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = password {
            command.args(["--requirepass", p]);
        }
        let child = command.spawn().expect("start redis-server");
        let redis = Redis {
            child,
            port,
            _dir: dir,
        };
        wait_for_port(port, "redis-server");
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL cluster (initdb in a temp dir) with TLS on, a `smoke` role and a
/// `"User"` table of three rows; stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

/// The superuser's password in the throwaway cluster.
const PG_SUPERUSER_PASSWORD: &str = "patrol-super-9f2c";
/// The `smoke` role's password: it must never appear in any output.
const PG_SMOKE_PASSWORD: &str = "smoke-pw-71be04";

impl Postgres {
    fn bin_dir() -> Option<PathBuf> {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| {
                ["initdb", "pg_ctl", "psql"]
                    .iter()
                    .all(|p| bin.join(p).is_file())
            })
            .collect();
        versions.sort();
        versions.pop()
    }

    /// Runs a cluster binary, as the `postgres` user when the tests run as root.
    fn command(bin: &Path, as_postgres: bool, program: &str) -> Command {
        if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(program));
            c
        } else {
            Command::new(bin.join(program))
        }
    }

    fn run(command: &mut Command, what: &str) {
        let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(bin: PathBuf, tls: &TlsFiles) -> Postgres {
        use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
        let as_postgres = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            == 0;
        let dir = tempfile::tempdir().expect("a temp dir for the cluster");
        let owner = if as_postgres {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("run id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("the postgres user exists (the postgresql package creates it)")
            };
            Some((id("-u"), id("-g")))
        } else {
            None
        };
        let give = |path: &Path| {
            if let Some((uid, gid)) = owner {
                chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        };
        give(dir.path());
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_SUPERUSER_PASSWORD).expect("write the password file");
        give(&pwfile);
        Self::run(
            Self::command(&bin, as_postgres, "initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let crt = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&crt, &tls.server_chain_pem).expect("write server.crt");
        std::fs::write(&key, &tls.server_key_pem).expect("write server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("key permissions");
        give(&crt);
        give(&key);
        let port = common::closed_port();
        let options = format!(
            "-p {port} -k {} -h 127.0.0.1 -c ssl=on -c ssl_cert_file=server.crt \
             -c ssl_key_file=server.key -c fsync=off",
            dir.path().display()
        );
        Self::run(
            Self::command(&bin, as_postgres, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "-o", &options, "start"]),
            "pg_ctl start",
        );
        let cluster = Postgres {
            bin,
            data,
            port,
            as_postgres,
            _dir: dir,
        };
        cluster.sql(&format!(
            "CREATE ROLE smoke LOGIN PASSWORD '{PG_SMOKE_PASSWORD}';
             CREATE TABLE \"User\" (id serial PRIMARY KEY, email text NOT NULL);
             INSERT INTO \"User\" (email) VALUES
               ('a@citadelbuy.com'), ('b@citadelbuy.com'), ('c@citadelbuy.com');
             GRANT SELECT ON \"User\" TO smoke;
             GRANT CREATE ON SCHEMA public TO smoke;"
        ));
        cluster
    }

    /// Runs SQL as the superuser over the Unix socket.
    fn sql(&self, sql: &str) {
        let socket_dir = self.data.parent().expect("data sits in the temp dir");
        Self::run(
            Self::command(&self.bin, self.as_postgres, "psql")
                .arg("-h")
                .arg(socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql]),
            "psql",
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Self::command(&self.bin, self.as_postgres, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Certificates made for one test: a CA, a server chain for `localhost` and 127.0.0.1, PEM files.
struct TlsFiles {
    ca_file: PathBuf,
    server_chain_pem: String,
    server_key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    _dir: tempfile::TempDir,
}

/// A midnight-UTC date `days` from today, as rcgen wants it.
fn days_from_now(days: i64) -> (i32, u8, u8) {
    use chrono::Datelike;
    let d = chrono::Utc::now().date_naive() + chrono::Duration::days(days);
    (d.year(), d.month() as u8, d.day() as u8)
}

/// A CA (`Patrol Test CA`) and a leaf for localhost/127.0.0.1 that expires in `days` days.
fn certificates(days: i64) -> TlsFiles {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Patrol Test CA");
    ca_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Patrol");
    let (y, m, d) = days_from_now(3650);
    ca_params.not_after = rcgen::date_time_ymd(y, m, d);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shop.patrol.test");
    let (y, m, d) = days_from_now(-1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = days_from_now(days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let leaf = params.signed_by(&leaf_key, &issuer).expect("leaf cert");

    let dir = tempfile::tempdir().expect("a temp dir for certificates");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write ca.pem");
    TlsFiles {
        ca_file,
        server_chain_pem: format!("{}{}", leaf.pem(), ca_cert.pem()),
        server_key_pem: leaf_key.serialize_pem(),
        chain: vec![leaf.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        _dir: dir,
    }
}

/// A TLS listener on loopback: each connection gets a handshake and then `220 patrol ready`.
async fn tls_listener(files: &TlsFiles) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(files.chain.clone(), files.key.clone_key())
        .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"220 patrol ready\r\n").await;
                    let mut sink = [0u8; 1024];
                    while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}

/// A plain TCP listener: each connection gets `greeting` (if any), then whatever it sends is
/// answered with `reply`.
async fn tcp_listener(greeting: &'static [u8], reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(greeting).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A small authoritative DNS server for `patrol.test` on UDP and TCP (same port):
/// `shop` has A, AAAA, TXT and MX records, `www` is a CNAME to `shop`, `missing` is NXDOMAIN,
/// `broken` SERVFAIL, `slow` is never answered, and `big` answers over UDP truncated and over
/// TCP in full.
async fn dns_server() -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let addr = udp.local_addr().expect("address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().expect("address");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            if let Some(answer) = dns_answer(&buf[..n], true) {
                let _ = udp.send_to(&answer, from).await;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                if let Some(answer) = dns_answer(&query, false) {
                    let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&answer);
                    let _ = stream.write_all(&framed).await;
                }
            });
        }
    });
    addr
}

fn dns_answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let q = query.queries.first()?.clone();
    let name = q.name().to_string().to_ascii_lowercase();
    let mut answer = Message::response(query.metadata.id, OpCode::Query);
    answer.metadata.authoritative = true;
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.add_query(q.clone());
    let owner = q.name().clone();
    let record = |data: RData| Record::from_rdata(owner.clone(), 300, data);
    let shop = Name::from_str("shop.patrol.test.").ok()?;
    match (name.as_str(), q.query_type()) {
        ("shop.patrol.test.", RecordType::A) => {
            answer.add_answer(record(RData::A(A(Ipv4Addr::new(127, 0, 0, 1)))));
            answer.add_answer(record(RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))));
        }
        ("shop.patrol.test.", RecordType::AAAA) => {
            answer.add_answer(record(RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))));
        }
        ("shop.patrol.test.", RecordType::TXT) => {
            answer.add_answer(record(RData::TXT(TXT::new(vec!["v=spf1 -all".into()]))));
        }
        ("shop.patrol.test.", RecordType::MX) => {
            let mail = Name::from_str("mail.patrol.test.").ok()?;
            answer.add_answer(record(RData::MX(MX::new(10, mail))));
        }
        ("www.patrol.test.", _) => {
            answer.add_answer(record(RData::CNAME(CNAME(shop.clone()))));
            if q.query_type() == RecordType::A {
                answer.add_answer(Record::from_rdata(
                    shop,
                    300,
                    RData::A(A(Ipv4Addr::new(127, 0, 0, 1))),
                ));
            }
        }
        ("big.patrol.test.", RecordType::TXT) if udp => answer.metadata.truncation = true,
        ("big.patrol.test.", RecordType::TXT) => {
            for i in 0..3 {
                answer.add_answer(record(RData::TXT(TXT::new(vec![format!(
                    "chunk-{i}-{}",
                    "x".repeat(200)
                )]))));
            }
        }
        ("slow.patrol.test.", _) => return None,
        ("missing.patrol.test.", _) => answer.metadata.response_code = ResponseCode::NXDomain,
        ("broken.patrol.test.", _) => answer.metadata.response_code = ResponseCode::ServFail,
        _ => {}
    }
    answer.to_vec().ok()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_probes_against_real_servers() {
    let Some(binary) = find_binary(&["/usr/bin/redis-server", "/usr/local/bin/redis-server"])
    else {
        skip(
            "redis_probes_against_real_servers",
            "redis-server is not installed",
        );
        return;
    };
    const PASSWORD: &str = "r3dis-Secret-5a1";
    let open = Redis::start(&binary, None);
    let locked = Redis::start(&binary, Some(PASSWORD));
    let down = common::closed_port();
    let config = format!(
        r#"vars:
  open: "127.0.0.1:{open}"
  locked: "127.0.0.1:{locked}"
probes:
  - name: ping
    type: redis
    steps:
      - redis: {{ address: "{{{{ open }}}}" }}
        assert:
          - reply == "PONG"
          - duration > 0ms
  - name: with_password
    type: redis
    steps:
      - name: ping
        redis:
          address: "{{{{ locked }}}}"
          password: "{{{{ env.REDIS_PASSWORD }}}}"
        assert: [ reply == "PONG" ]
  - name: commands
    type: redis
    steps:
      - name: write_and_read
        redis:
          address: "{{{{ open }}}}"
          database: 2
          commands:
            - SET greeting "hello world"
            - [GET, greeting]
            - INCR visits
            - GET nothing-here
        assert:
          - replies count == 4
          - replies contains "hello world"
          - reply == null
      - name: uses_capture
        redis:
          address: "{{{{ open }}}}"
          database: 2
          commands: [ "INCRBY visits 41" ]
        assert: [ reply == 42 ]
  - name: wrong_password
    type: redis
    steps:
      - name: ping
        redis:
          address: "{{{{ locked }}}}"
          password: "{{{{ env.WRONG_PASSWORD }}}}"
  - name: no_password
    type: redis
    steps:
      - name: ping
        redis: {{ address: "{{{{ locked }}}}" }}
  - name: error_reply
    type: redis
    steps:
      - name: bad_command
        redis:
          address: "{{{{ open }}}}"
          commands: [PING, "NOSUCHCOMMAND x"]
        assert: [ replies count == 2 ]
  - name: down
    type: redis
    retries: 1
    retry_backoff: 10ms
    steps:
      - name: ping
        redis: {{ address: "127.0.0.1:{down}" }}
  - name: raw_ping
    type: tcp
    steps:
      - name: pong
        tcp:
          address: "{{{{ open }}}}"
          send: "PING\r\n"
          expect: "^\\+PONG"
"#,
        open = open.port,
        locked = locked.port,
    );
    let v = verify(
        &config,
        &[
            ("REDIS_PASSWORD", PASSWORD),
            ("WRONG_PASSWORD", "n0t-the-Password"),
        ],
    )
    .await;
    v.run.assert_code(1);
    let r = &v.report;

    let s = expect_step(r, "ping", "redis", "pass");
    assert_eq!(probe(r, "ping")["type"], "redis");
    assert_eq!(assertion(&s, "reply == \"PONG\"")["actual"], "\"PONG\"");
    assert!(phase(&s, "connect") > 0.0, "{s:#}");
    assert!(phase(&s, "processing") > 0.0, "{s:#}");
    assert_eq!(phase(&s, "tls"), 0.0);

    expect_step(r, "with_password", "ping", "pass");
    let s = expect_step(r, "commands", "write_and_read", "pass");
    assert_eq!(assertion(&s, "reply == null")["actual"], "null");
    let s = expect_step(r, "commands", "uses_capture", "pass");
    assert_eq!(assertion(&s, "reply == 42")["actual"], "42");

    let s = expect_step(r, "wrong_password", "ping", "error");
    assert!(
        error(&s).starts_with("authentication failed: WRONGPASS"),
        "{s:#}"
    );
    let s = expect_step(r, "no_password", "ping", "error");
    assert!(
        error(&s).starts_with("authentication required: NOAUTH"),
        "{s:#}"
    );
    let s = expect_step(r, "error_reply", "bad_command", "fail");
    assert!(
        error(&s).starts_with("`NOSUCHCOMMAND` answered an error: ERR unknown command"),
        "{s:#}"
    );
    assert_eq!(result(assertion(&s, "replies count == 2")), "pass");

    let p = probe(r, "down");
    assert_eq!(result(p), "error");
    assert_eq!(p["attempts"], 2, "retries apply: {p:#}");
    assert!(
        error(step(p, "ping")).starts_with(&format!(
            "connection refused connecting to 127.0.0.1:{down}"
        )),
        "{p:#}"
    );

    let s = expect_step(r, "raw_ping", "pong", "pass");
    assert_eq!(
        assertion(&s, "reply matches \"^\\\\+PONG\"")["result"],
        "pass"
    );

    // JUnit: a suite per probe, typed redis; errors and failures say why.
    let suites = parse_junit(&v.junit);
    let suite = |name: &str| {
        suites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no suite {name} in\n{}", v.junit))
    };
    assert_eq!(suite("ping").cases.len(), 1);
    assert!(suite("ping").cases[0].outcomes.is_empty());
    let wrong = &suite("wrong_password").cases[0];
    assert_eq!(wrong.outcomes[0].0, "error", "{wrong:?}");
    assert!(wrong.outcomes[0].1.contains("WRONGPASS"), "{wrong:?}");
    assert_eq!(suite("error_reply").cases[0].outcomes[0].0, "failure");

    // Neither password shows anywhere.
    let all = v.everything();
    assert!(!all.contains(PASSWORD), "the password leaked:\n{all}");
    assert!(
        !all.contains("n0t-the-Password"),
        "the password leaked:\n{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_probes_against_a_throwaway_cluster() {
    let Some(bin) = Postgres::bin_dir() else {
        skip(
            "postgres_probes_against_a_throwaway_cluster",
            "PostgreSQL's initdb and pg_ctl are not installed under /usr/lib/postgresql",
        );
        return;
    };
    let tls = certificates(90);
    let pg = Postgres::start(bin, &tls);
    let down = common::closed_port();
    let ca = tls.ca_file.display();
    let config = format!(
        r#"vars:
  db: "127.0.0.1:{port}"
# Ten SCRAM logins at once in a debug build on two cores take seconds.
defaults: {{ timeout: 30s }}
probes:
  - name: users
    type: postgres
    steps:
      - name: count
        postgres:
          dsn: "postgres://smoke@{{{{ db }}}}/postgres?sslmode=disable"
          password: "{{{{ env.PG_PASSWORD }}}}"
          query: 'SELECT COUNT(*) FROM "User"'
          statement_timeout: 2s
        capture: {{ users: value }}
        assert:
          - value >= 1
          - column "count" == 3
          - rows == 1
          - duration > 0ms
      - name: emails
        postgres:
          dsn: "host=127.0.0.1 port={port} user=smoke dbname=postgres sslmode=require"
          password: "{{{{ env.PG_PASSWORD }}}}"
          query: 'SELECT id, email, NULL AS nothing FROM "User" ORDER BY id LIMIT {{{{ users }}}}'
        assert:
          - rows == 3
          - column "email" contains "b@citadelbuy.com"
          - column "nothing" == [null, null, null]
          - tls_version == "TLS 1.3"
          - cert_expiry > 30d
  - name: verified
    type: postgres
    steps:
      - name: verify_full
        postgres:
          dsn: "postgres://smoke@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
          password: "{{{{ env.PG_PASSWORD }}}}"
        assert:
          - value == 1
          - issuer contains "Patrol Test CA"
  - name: unverifiable
    type: postgres
    steps:
      - name: unknown_ca
        postgres:
          dsn: "postgres://smoke@localhost:{port}/postgres"
          sslmode: verify-full
          password: "{{{{ env.PG_PASSWORD }}}}"
  - name: wrong_password
    type: postgres
    steps:
      - name: login
        postgres:
          dsn: "postgres://smoke@{{{{ db }}}}/postgres?sslmode=disable"
          password: "{{{{ env.WRONG_PASSWORD }}}}"
  - name: literal_password
    type: postgres
    steps:
      - name: login
        postgres:
          dsn: "postgres://smoke:{smoke}@{{{{ db }}}}/postgres?sslmode=prefer"
          query: SELECT current_user
        assert: [ value == "smoke" ]
  - name: query_error
    type: postgres
    steps:
      - name: typo
        postgres:
          dsn: "postgres://smoke@{{{{ db }}}}/postgres"
          password: "{{{{ env.PG_PASSWORD }}}}"
          query: 'SELECT COUNT(*) FROM "Usr"'
  - name: slow
    type: postgres
    steps:
      - name: sleep
        postgres:
          dsn: "postgres://smoke@{{{{ db }}}}/postgres"
          password: "{{{{ env.PG_PASSWORD }}}}"
          query: SELECT pg_sleep(5)
          statement_timeout: 500ms
  - name: read_only
    type: postgres
    steps:
      - name: create
        postgres:
          dsn: "postgres://smoke@{{{{ db }}}}/postgres"
          password: "{{{{ env.PG_PASSWORD }}}}"
          query: CREATE TABLE probe_was_here (id int)
  - name: writable
    type: postgres
    steps:
      - name: create_temp
        postgres:
          dsn: "postgres://smoke@{{{{ db }}}}/postgres"
          password: "{{{{ env.PG_PASSWORD }}}}"
          read_only: false
          query: CREATE TEMP TABLE scratch (id int); INSERT INTO scratch VALUES (1), (2); SELECT SUM(id) AS total FROM scratch
        assert: [ column "total" == 3 ]
  - name: down
    type: postgres
    steps:
      - name: login
        postgres:
          dsn: "postgres://smoke@127.0.0.1:{down}/postgres"
          password: "{{{{ env.PG_PASSWORD }}}}"
"#,
        port = pg.port,
        smoke = PG_SMOKE_PASSWORD,
    );
    let v = verify(
        &config,
        &[
            ("PG_PASSWORD", PG_SMOKE_PASSWORD),
            ("WRONG_PASSWORD", "n0t-the-pg-Password"),
        ],
    )
    .await;
    v.run.assert_code(1);
    let r = &v.report;

    let s = expect_step(r, "users", "count", "pass");
    assert_eq!(probe(r, "users")["type"], "postgres");
    assert_eq!(assertion(&s, "value >= 1")["actual"], "3");
    assert!(
        phase(&s, "connect") > 0.0 && phase(&s, "processing") > 0.0,
        "{s:#}"
    );
    assert_eq!(phase(&s, "tls"), 0.0, "sslmode=disable: {s:#}");
    let s = expect_step(r, "users", "emails", "pass");
    assert!(phase(&s, "tls") > 0.0, "sslmode=require: {s:#}");
    assert_eq!(s["tls_version"], "TLS 1.3");
    assert!(s["cert_not_after"].as_i64().is_some(), "{s:#}");

    expect_step(r, "verified", "verify_full", "pass");
    let s = expect_step(r, "unverifiable", "unknown_ca", "error");
    assert!(error(&s).contains("UnknownIssuer"), "{s:#}");

    let s = expect_step(r, "wrong_password", "login", "error");
    assert!(
        error(&s).starts_with(
            "authentication as smoke failed: FATAL 28P01: password authentication failed"
        ),
        "{s:#}"
    );
    expect_step(r, "literal_password", "login", "pass");

    let s = expect_step(r, "query_error", "typo", "fail");
    assert!(
        error(&s).starts_with("the query failed: ERROR 42P01: relation \"Usr\" does not exist"),
        "{s:#}"
    );
    let s = expect_step(r, "slow", "sleep", "timeout");
    assert!(
        error(&s).starts_with(
            "the query ran past the statement timeout of 500ms: the server cancelled it"
        ),
        "{s:#}"
    );
    // The login (SCRAM) is in the step's duration; the query alone is the processing phase.
    assert!(
        phase(&s, "processing") < 4.0,
        "the server gave up at 500ms: {s:#}"
    );
    let s = expect_step(r, "read_only", "create", "fail");
    assert!(error(&s).contains("read-only transaction"), "{s:#}");
    expect_step(r, "writable", "create_temp", "pass");
    let s = expect_step(r, "down", "login", "error");
    assert!(error(&s).starts_with("connection refused"), "{s:#}");

    let suites = parse_junit(&v.junit);
    let slow = suites
        .iter()
        .find(|s| s.name == "slow")
        .expect("slow suite");
    assert_eq!(slow.attribute("tests"), Some("1"));
    assert!(
        slow.cases[0].outcomes[0].1.contains("statement timeout"),
        "{slow:?}"
    );

    let all = v.everything();
    for secret in [PG_SMOKE_PASSWORD, "n0t-the-pg-Password"] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_probes_read_the_certificate() {
    let fresh = certificates(90);
    let expiring = certificates(10);
    let fresh_addr = tls_listener(&fresh).await;
    let expiring_addr = tls_listener(&expiring).await;
    let down = common::closed_port();
    let config = format!(
        r#"probes:
  - name: fresh
    type: tls
    steps:
      - name: handshake
        tls:
          address: "localhost:{fresh}"
          ca_file: {fresh_ca}
        assert:
          - cert_expiry > 30d
          - issuer contains "Patrol Test CA"
          - subject contains "shop.patrol.test"
          - sans contains "localhost"
          - sans contains "127.0.0.1"
          - tls_version == "TLS 1.3"
  - name: expiring
    type: tls
    steps:
      - name: handshake
        tls:
          address: "127.0.0.1:{expiring}"
          ca_file: {expiring_ca}
        assert: [ cert_expiry > 30d ]
  - name: untrusted
    type: tls
    steps:
      - name: handshake
        tls: {{ address: "localhost:{fresh}" }}
  - name: insecure
    type: tls
    insecure: true
    steps:
      - name: handshake
        tls: {{ address: "localhost:{fresh}" }}
        assert: [ cert_expiry > 30d ]
  - name: wrong_name
    type: tls
    steps:
      - name: handshake
        tls:
          address: "127.0.0.1:{fresh}"
          server_name: api.citadelbuy.com
          ca_file: {fresh_ca}
  - name: banner
    type: tcp
    steps:
      - name: smtps
        tcp:
          address: "localhost:{fresh}"
          tls: true
          ca_file: {fresh_ca}
          expect: "^220 "
        assert: [ reply contains "patrol ready" ]
  - name: down
    type: tls
    steps:
      - name: handshake
        tls: {{ address: "127.0.0.1:{down}" }}
"#,
        fresh = fresh_addr.port(),
        expiring = expiring_addr.port(),
        fresh_ca = fresh.ca_file.display(),
        expiring_ca = expiring.ca_file.display(),
    );
    let v = verify(&config, &[]).await;
    v.run.assert_code(1);
    let r = &v.report;

    let s = expect_step(r, "fresh", "handshake", "pass");
    assert_eq!(probe(r, "fresh")["type"], "tls");
    assert!(
        phase(&s, "tls") > 0.0 && phase(&s, "connect") > 0.0,
        "{s:#}"
    );
    let now = chrono::Utc::now().timestamp();
    let not_after = s["cert_not_after"].as_i64().expect("cert_not_after");
    assert!(
        (not_after - now - 90 * 86400).abs() < 2 * 86400,
        "the leaf expires in ~90 days: {s:#}"
    );

    // The runbook's "not expiring within 30 days", against a certificate that has 10 left.
    let s = expect_step(r, "expiring", "handshake", "fail");
    let a = assertion(&s, "cert_expiry > 30d");
    assert_eq!(a["expected"], "> 30d 0h");
    let actual = a["actual"].as_str().expect("an actual value");
    assert!(
        actual.starts_with("9d ") || actual.starts_with("10d "),
        "{a:#}"
    );
    assert!(
        v.run.stdout.contains("x  cert_expiry > 30d"),
        "{}",
        v.run.stdout
    );
    assert!(
        v.run.stdout.contains("expected: > 30d 0h"),
        "{}",
        v.run.stdout
    );

    let s = expect_step(r, "untrusted", "handshake", "error");
    assert!(
        error(&s).starts_with(
            "TLS handshake with localhost failed: invalid peer certificate: UnknownIssuer"
        ),
        "{s:#}"
    );
    let s = expect_step(r, "insecure", "handshake", "pass");
    assert!(s["cert_not_after"].as_i64().is_some(), "{s:#}");
    let s = expect_step(r, "wrong_name", "handshake", "error");
    assert!(
        error(&s).contains("certificate not valid for name \"api.citadelbuy.com\""),
        "{s:#}"
    );
    let s = expect_step(r, "banner", "smtps", "pass");
    assert!(phase(&s, "tls") > 0.0, "{s:#}");
    let s = expect_step(r, "down", "handshake", "error");
    assert!(error(&s).starts_with("connection refused"), "{s:#}");

    let suites = parse_junit(&v.junit);
    let expiring_suite = suites.iter().find(|s| s.name == "expiring").expect("suite");
    let (kind, message) = &expiring_suite.cases[0].outcomes[0];
    assert_eq!(kind, "failure");
    assert!(message.contains("cert_expiry > 30d"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_send_and_expect() {
    let smtp = tcp_listener(b"220 mail.patrol.test ESMTP\r\n", b"250 OK\r\n").await;
    let silent = tcp_listener(b"", b"").await;
    let down = common::closed_port();
    let config = format!(
        r#"probes:
  - name: smtp
    type: tcp
    steps:
      - name: banner
        tcp: {{ address: "127.0.0.1:{smtp}", expect: "^220 " }}
        capture: {{ greeting: regex "^220 (\\S+)" }}
      - name: helo
        tcp:
          address: "127.0.0.1:{smtp}"
          send: "HELO {{{{ greeting }}}}\r\n"
          expect: "250 OK"
        assert: [ reply contains "250" ]
      - name: connect_only
        tcp: {{ address: "localhost:{smtp}" }}
        assert: [ duration > 0ms ]
  - name: wrong_banner
    type: tcp
    steps:
      - name: banner
        tcp: {{ address: "127.0.0.1:{smtp}", send: "QUIT\r\n", expect: "^\\+PONG" }}
        timeout: 500ms
  - name: silent
    type: tcp
    steps:
      - name: banner
        tcp: {{ address: "127.0.0.1:{silent}", expect: "^220" }}
        timeout: 300ms
  - name: down
    type: tcp
    steps:
      - name: connect
        tcp: {{ address: "127.0.0.1:{down}" }}
"#,
        smtp = smtp.port(),
        silent = silent.port(),
    );
    let v = verify(&config, &[]).await;
    v.run.assert_code(1);
    let r = &v.report;

    let s = expect_step(r, "smtp", "banner", "pass");
    assert_eq!(
        assertion(&s, "reply matches \"^220 \"")["actual"],
        "\"220 mail.patrol.test ESMTP\\r\\n\""
    );
    expect_step(r, "smtp", "helo", "pass");
    let s = expect_step(r, "smtp", "connect_only", "pass");
    assert!(phase(&s, "connect") > 0.0, "{s:#}");

    // The server answered, but not what was expected: a failure with actual vs expected.
    let s = expect_step(r, "wrong_banner", "banner", "timeout");
    assert!(
        error(&s).contains("waiting for a reply matching \"^\\\\+PONG\""),
        "{s:#}"
    );
    assert!(
        error(&s).contains("received \"220 mail.patrol.test ESMTP"),
        "{s:#}"
    );
    let s = expect_step(r, "silent", "banner", "timeout");
    assert!(
        error(&s).ends_with("(processing); nothing received"),
        "{s:#}"
    );
    let s = expect_step(r, "down", "connect", "error");
    assert!(error(&s).starts_with("connection refused"), "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_expect_that_never_matches_before_close_fails_with_the_reply() {
    // A server that says something else and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.write_all(b"554 go away\r\n").await;
        }
    });
    let config = format!(
        "probes:\n  - name: smtp\n    type: tcp\n    steps:\n      - name: banner\n        tcp: {{ address: \"127.0.0.1:{}\", expect: \"^220 \" }}\n",
        addr.port()
    );
    let v = verify(&config, &[]).await;
    v.run.assert_code(1);
    let s = expect_step(&v.report, "smtp", "banner", "fail");
    let a = assertion(&s, "reply matches \"^220 \"");
    assert_eq!(a["actual"], "\"554 go away\\r\\n\"");
    assert_eq!(a["expected"], "matches \"^220 \"");
    assert_eq!(
        a["message"],
        "the server closed the connection without a matching reply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_probes_against_a_local_server_and_the_system_resolver() {
    let server = dns_server().await;
    let down = {
        // A UDP port nobody listens on: the kernel answers with "port unreachable".
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("address").port()
    };
    let hosts_has_localhost = std::fs::read_to_string("/etc/hosts").is_ok_and(|h| {
        h.lines().any(|l| {
            l.split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .skip(1)
                .any(|n| n == "localhost")
                && l.trim_start().starts_with("127.")
        })
    });
    let config = format!(
        r#"vars:
  dns: "127.0.0.1:{port}"
probes:
  - name: records
    type: dns
    steps:
      - name: a
        dns: {{ name: shop.patrol.test, server: "{{{{ dns }}}}" }}
        assert:
          - answers count == 2
          - answers contains "127.0.0.2"
          - rcode == "NOERROR"
      - name: aaaa
        dns: {{ name: shop.patrol.test, type: AAAA, server: "{{{{ dns }}}}" }}
        assert: [ 'answers == ["::1"]' ]
      - name: txt
        dns: {{ name: shop.patrol.test, type: txt, server: "{{{{ dns }}}}" }}
        assert: [ answers contains "v=spf1 -all" ]
      - name: mx
        dns: {{ name: shop.patrol.test., type: MX, server: "{{{{ dns }}}}" }}
        assert: [ 'answers == ["10 mail.patrol.test."]' ]
      - name: cname
        dns: {{ name: www.patrol.test, type: CNAME, server: "{{{{ dns }}}}", tcp: true }}
        assert: [ 'answers == ["shop.patrol.test."]' ]
      - name: defaults
        dns: {{ name: www.patrol.test, server: "{{{{ dns }}}}" }}
      - name: truncated_then_tcp
        dns: {{ name: big.patrol.test, type: TXT, server: "{{{{ dns }}}}" }}
        assert: [ answers count == 3 ]
      - name: nxdomain_expected
        dns: {{ name: missing.patrol.test, server: "{{{{ dns }}}}" }}
        assert: [ rcode == "NXDOMAIN", answers count == 0 ]
  - name: missing
    type: dns
    steps:
      - name: a
        dns: {{ name: missing.patrol.test, server: "{{{{ dns }}}}" }}
  - name: broken
    type: dns
    steps:
      - name: a
        dns: {{ name: broken.patrol.test, server: "{{{{ dns }}}}" }}
        assert: [ rcode == "NOERROR" ]
  - name: slow
    type: dns
    steps:
      - name: a
        dns: {{ name: slow.patrol.test, server: "{{{{ dns }}}}" }}
        timeout: 300ms
  - name: down
    type: dns
    steps:
      - name: a
        dns: {{ name: shop.patrol.test, server: "127.0.0.1:{down}" }}
  - name: system
    type: dns
    steps:
      - name: localhost
        dns: {{ name: localhost }}
        assert: [ answers contains "127.0.0.1" ]
"#,
        port = server.port(),
    );
    let v = verify(&config, &[]).await;
    v.run.assert_code(1);
    let r = &v.report;

    for name in [
        "a",
        "aaaa",
        "txt",
        "mx",
        "cname",
        "defaults",
        "truncated_then_tcp",
        "nxdomain_expected",
    ] {
        expect_step(r, "records", name, "pass");
    }
    assert_eq!(probe(r, "records")["type"], "dns");
    let s = step(probe(r, "records"), "a");
    assert!(
        phase(s, "resolve") > 0.0,
        "the lookup time is the resolve phase: {s:#}"
    );
    let defaults = step(probe(r, "records"), "defaults");
    assert_eq!(
        names_of(&defaults["asserts"]),
        ["rcode == \"NOERROR\"", "answers count >= 1"],
        "a dns step without assert checks that the name resolved"
    );

    // NXDOMAIN fails the default assertions, each with actual vs expected.
    let s = expect_step(r, "missing", "a", "fail");
    let a = assertion(&s, "rcode == \"NOERROR\"");
    assert_eq!(
        (a["actual"].as_str(), a["expected"].as_str()),
        (Some("\"NXDOMAIN\""), Some("== \"NOERROR\""))
    );
    assert_eq!(assertion(&s, "answers count >= 1")["actual"], "0");
    let s = expect_step(r, "broken", "a", "fail");
    assert_eq!(
        assertion(&s, "rcode == \"NOERROR\"")["actual"],
        "\"SERVFAIL\""
    );

    let s = expect_step(r, "slow", "a", "timeout");
    assert!(
        error(&s).starts_with(&format!(
            "no answer from 127.0.0.1:{} within",
            server.port()
        )),
        "{s:#}"
    );
    let s = expect_step(r, "down", "a", "error");
    assert!(
        error(&s).starts_with("connection refused asking 127.0.0.1"),
        "{s:#}"
    );

    if hosts_has_localhost {
        let s = expect_step(r, "system", "localhost", "pass");
        assert_eq!(
            assertion(&s, "answers contains \"127.0.0.1\"")["result"],
            "pass"
        );
    } else {
        skip(
            "dns via the system resolver",
            "/etc/hosts has no 127.x localhost line on this machine",
        );
    }
}

fn names_of(asserts: &Value) -> Vec<String> {
    asserts
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["expr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_config_errors_point_at_line_and_column() {
    let scratch = Scratch::new();
    let config = r#"probes:
  - name: typo_type
    type: redsi
    steps: [ { redis: { address: "x:1" } } ]
  - name: cache
    type: redis
    max_body: 1MiB
    steps:
      - request: { url: "http://x/" }
      - redis:
          address: "127.0.0.1:99999"
          commands: [ 'GET "unclosed' ]
  - name: db
    type: postgres
    steps:
      - postgres:
          dsn: "postgres://smoke@db/app?sslmode=verify-ca"
          queri: SELECT 1
        assert:
          - status == 200
  - name: banner
    type: tcp
    steps:
      - tcp: { address: "mail:25", expect: "^(220" }
  - name: names
    type: dns
    steps:
      - dns: { name: shop.patrol.test, type: AXFR }
        assert: [ rcod == "NOERROR" ]
"#;
    let path = scratch.write("infra.yaml", config);
    let run = Patrol::new(["validate", "--config"])
        .arg_path(&path)
        .run()
        .await;
    run.assert_code(2);
    let file = path.display().to_string();
    let want = [
        (3, 11, "unknown probe type `redsi`", "did you mean `redis`?"),
        (7, 5, "`max_body` applies to http probes only", "remove it"),
        (
            9,
            9,
            "unknown key `request` in a redis step",
            "`request` is for http steps",
        ),
        (9, 9, "this step has no `redis:` check", "write e.g."),
        (
            11,
            20,
            "invalid port `99999` in `127.0.0.1:99999`",
            "write host:port",
        ),
        (
            12,
            28,
            "unterminated quote in the command",
            "quote arguments",
        ),
        (
            17,
            16,
            "sslmode `verify-ca` is not supported",
            "disable, prefer, require or verify-full",
        ),
        (
            18,
            11,
            "unknown key `queri` in postgres",
            "did you mean `query`?",
        ),
        (
            20,
            13,
            "`status` does not apply to postgres steps",
            "postgres steps can use: rows, value, column",
        ),
        (24, 44, "invalid regex", "expect is a regular expression"),
        (
            28,
            46,
            "unsupported record type `AXFR`",
            "use one of A, AAAA",
        ),
        (29, 19, "unknown query `rcod`", "did you mean `rcode`?"),
    ];
    for (line, col, message, help) in want {
        let head = format!("{file}:{line}:{col}: error: {message}");
        let found = run
            .stdout
            .lines()
            .chain(run.stderr.lines())
            .position(|l| l.starts_with(&head));
        let Some(at) = found else {
            panic!("missing `{head}` in\n{}", run.output());
        };
        let rest: Vec<&str> = run
            .stdout
            .lines()
            .chain(run.stderr.lines())
            .skip(at)
            .take(5)
            .collect();
        assert!(
            rest.iter().any(|l| l.contains(help)),
            "help `{help}` missing after `{head}`:\n{}",
            rest.join("\n")
        );
    }
    let errors = run
        .stdout
        .lines()
        .chain(run.stderr.lines())
        .filter(|l| l.starts_with(&file) && l.contains(": error: "))
        .count();
    assert_eq!(errors, want.len(), "{}", run.output());
}
