//! Shared helpers for Patrol's end-to-end tests: the reference shop on `127.0.0.1:0`, configs in
//! a temp dir, the real `patrol` binary run as a child process (so the in-process shop keeps
//! serving on the test's runtime), and readers for its JSON report, JUnit XML and console text.
//!
//! Layout:
//! - running: [`shop`], [`Scratch`], [`Patrol`], [`Run`], [`verify`]
//! - the agent (`patrol run`): [`Agent`] (a guard that kills the child on drop), [`http`],
//!   [`Reply`], [`metric`], [`eventually`]
//! - reading: [`probe`], [`step`], [`names`], [`parse_junit`], [`millis`]
//! - golden files: [`normalise_console`], [`assert_golden`]
//! - fault fixtures: [`verify_config`] (any target), [`RawServer`] (a raw TCP server),
//!   [`read_request_head`], [`reset`] (close with an RST)
//! - processes: [`descendants`] (a child's whole tree, from /proc)

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use citadel_shop::Shop;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use serde_json::Value;

/// Upper bound on one `patrol` run, so a hung binary fails its test instead of hanging the suite.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The workspace root (the tests live in `<root>/tests`, the crate in `<root>/agent`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ sits inside the workspace")
        .to_path_buf()
}

/// `tests/golden/<name>`.
pub fn golden(name: &str) -> PathBuf {
    workspace_root().join("tests/golden").join(name)
}

/// A fresh reference shop on a free loopback port, serving until dropped.
pub async fn shop() -> Shop {
    let addr = "127.0.0.1:0".parse().expect("a literal socket address");
    Shop::start(addr)
        .await
        .expect("the shop binds a free loopback port")
}

/// A loopback port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}

/// A temp dir for one test's configs and reports; removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new empty directory.
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the directory (not created).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.file(name);
        std::fs::write(&path, text).expect("write into the temp dir");
        path
    }

    /// Reads a file the run wrote, failing the test when it is missing.
    pub fn read(&self, name: &str) -> String {
        let path = self.file(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("patrol should have written {}: {e}", path.display()))
    }
}

/// One finished `patrol` process.
#[derive(Debug)]
pub struct Run {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Wall time of the process.
    pub elapsed: Duration,
}

impl Run {
    /// Fails the test, showing both streams, unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "patrol exited with {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Both streams, for assertion messages.
    pub fn output(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// A `patrol` command line under construction; runs with `tokio::process` so the test's runtime
/// (and the shop on it) keeps going while the child runs.
#[derive(Debug)]
pub struct Patrol {
    command: tokio::process::Command,
}

impl Patrol {
    /// `patrol <args>` with a predictable environment: no colour, default logging.
    pub fn new<I, S>(args: I) -> Patrol
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_patrol"));
        command
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("PATROL_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Patrol { command }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Patrol
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Sets an environment variable of the child only.
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Patrol {
        self.command.env(name, value);
        self
    }

    /// Removes an environment variable from the child only.
    pub fn env_remove(mut self, name: &str) -> Patrol {
        self.command.env_remove(name);
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Patrol {
        self.command.current_dir(dir);
        self
    }

    /// Runs to completion (killing it after [`RUN_LIMIT`]).
    pub async fn run(mut self) -> Run {
        let started = Instant::now();
        let child = self.command.spawn().expect("spawn the patrol binary");
        let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("patrol did not finish within {RUN_LIMIT:?}"))
            .expect("wait for patrol");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}

/// A `patrol verify` run with its JSON report.
#[derive(Debug)]
pub struct Verified {
    /// The process.
    pub run: Run,
    /// The parsed `--report-json` file.
    pub report: Value,
    /// Where the config and reports are (kept alive for further reads).
    pub scratch: Scratch,
}

/// The config file for `probes` (a YAML list, indented as under `probes:`), with the var `api`
/// pointing at `shop`.
pub fn config_for(shop: &Shop, probes: &str) -> String {
    format!("vars:\n  api: {}\nprobes:\n{probes}", shop.url())
}

/// Writes [`config_for`]`(shop, probes)` and runs `patrol verify` on it with `extra` arguments,
/// a JSON report and a JUnit report (`report.json`, `junit.xml` in the scratch dir).
pub async fn verify(shop: &Shop, probes: &str, extra: &[&str]) -> Verified {
    let scratch = Scratch::new();
    let config = scratch.write("patrol.yaml", &config_for(shop, probes));
    let run = Patrol::new(["verify", "--config"])
        .arg_path(&config)
        .args(["--report-json", "report.json", "--junit", "junit.xml"])
        .args(extra)
        .current_dir(scratch.path())
        .run()
        .await;
    let text = scratch.read("report.json");
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the JSON report does not parse ({e}):\n{text}"));
    Verified {
        run,
        report,
        scratch,
    }
}

impl Patrol {
    /// Adds a path argument.
    pub fn arg_path(self, path: &Path) -> Patrol {
        self.args([path.as_os_str()])
    }
}

/// The probe called `name` in a JSON report.
pub fn probe<'r>(report: &'r Value, name: &str) -> &'r Value {
    report["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no probe `{name}` in the report:\n{report:#}"))
}

/// The step called `name` of a probe in a JSON report.
pub fn step<'r>(probe: &'r Value, name: &str) -> &'r Value {
    probe["steps"]
        .as_array()
        .and_then(|ss| ss.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step `{name}` in the probe:\n{probe:#}"))
}

/// The `name` of every item of a JSON array.
pub fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A duration as the reports print it (`305ms`, `1.02s`, `0.85ms`), in milliseconds.
pub fn millis(text: &str) -> f64 {
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<f64>().ok()
    } else {
        text.strip_suffix('s')
            .and_then(|s| s.parse::<f64>().ok())
            .map(|s| s * 1000.0)
    };
    parsed.unwrap_or_else(|| panic!("`{text}` is not a duration"))
}

/// One `<testsuite>` of a JUnit report.
#[derive(Debug, Default)]
pub struct Suite {
    /// `name` attribute.
    pub name: String,
    /// Every attribute, in order.
    pub attributes: Vec<(String, String)>,
    /// The `<testcase>`s.
    pub cases: Vec<Case>,
}

/// One `<testcase>` of a JUnit report.
#[derive(Debug, Default)]
pub struct Case {
    /// `name` attribute.
    pub name: String,
    /// `classname` attribute.
    pub classname: String,
    /// Child elements that say it did not pass (`failure`, `error`, `skipped`), with their
    /// `message` attribute.
    pub outcomes: Vec<(String, String)>,
}

impl Suite {
    /// An attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a JUnit report, failing the test unless it is well-formed XML rooted at
/// `<testsuites>`.
pub fn parse_junit(xml: &str) -> Vec<Suite> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut open: Vec<String> = Vec::new();
    let mut suites: Vec<Suite> = Vec::new();
    let mut root = None;
    loop {
        let event = reader
            .read_event()
            .unwrap_or_else(|e| panic!("JUnit is not well-formed XML ({e}):\n{xml}"));
        let (element, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                assert_eq!(
                    open.pop().as_deref(),
                    Some(name.as_str()),
                    "unbalanced JUnit XML"
                );
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
        root.get_or_insert_with(|| name.clone());
        let attributes = attributes(element);
        let attr = |n: &str| {
            attributes
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let parent = open.last().map(String::as_str);
        match (name.as_str(), parent) {
            ("testsuite", Some("testsuites")) => {
                suites.push(Suite {
                    name: attr("name"),
                    attributes: attributes.clone(),
                    cases: vec![],
                });
            }
            ("testcase", Some("testsuite")) => {
                let suite = suites
                    .last_mut()
                    .expect("a testcase sits inside a testsuite");
                suite.cases.push(Case {
                    name: attr("name"),
                    classname: attr("classname"),
                    outcomes: Vec::new(),
                });
            }
            ("failure" | "error" | "skipped", Some("testcase")) => {
                let case = suites
                    .last_mut()
                    .and_then(|s| s.cases.last_mut())
                    .expect("an outcome sits inside a testcase");
                case.outcomes.push((name.clone(), attr("message")));
            }
            _ => {}
        }
        if !empty {
            open.push(name);
        }
    }
    assert!(
        open.is_empty(),
        "JUnit XML ends with unclosed elements {open:?}"
    );
    assert_eq!(root.as_deref(), Some("testsuites"), "JUnit root element");
    suites
}

fn attributes(element: &BytesStart<'_>) -> Vec<(String, String)> {
    element
        .attributes()
        .map(|a| {
            let a = a.expect("well-formed attribute");
            let value = a
                .normalized_value(XmlVersion::Implicit1_0)
                .expect("attribute value unescapes");
            (
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                value.into_owned(),
            )
        })
        .collect()
}

/// Console text made comparable across runs: the shop's address becomes `<shop>`, and every
/// duration (`2.93ms`, `1.00s`) becomes `<dur>`. A duration right-aligned in a column (the
/// `{:>8}` fields after a name or status) keeps its column: its padding and number become
/// `<dur>` right-aligned in the same width. Elsewhere ("in 12ms", "actual:   305ms") the padding
/// is kept and only the number is replaced, so the layout stays exactly what patrol printed.
pub fn normalise_console(text: &str, shop: &Shop) -> String {
    /// Two spaces of separator plus an 8-wide field.
    const COLUMN: usize = 10;
    let text = text.replace(&shop.addr().to_string(), "<shop>");
    // Artifact paths carry the run's random id.
    let run_id = regex::Regex::new(r"/[0-9a-f]{32}/").expect("a valid regex");
    let text = run_id.replace_all(&text, "/<run-id>/").into_owned();
    let duration =
        regex::Regex::new(r"( +)(\d+(?:\.\d+)?(?:ms|s)|\d+m \d+s)\b").expect("a valid regex");
    duration
        .replace_all(&text, |c: &regex::Captures<'_>| {
            let (pad, number) = (&c[1], &c[2]);
            let width = pad.len() + number.len();
            if pad.len() >= 2 && width >= COLUMN {
                format!("{:>width$}", "<dur>")
            } else {
                format!("{pad}<dur>")
            }
        })
        .into_owned()
}

/// Compares `actual` with the golden file at `path`; with `PATROL_BLESS=1` rewrites the file
/// instead. The failure message shows the first differing line.
pub fn assert_golden(path: &Path, actual: &str) {
    if std::env::var_os("PATROL_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(path, actual).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run with PATROL_BLESS=1 to create it",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    panic!(
        "output differs from {} at line {}:\n  expected: {:?}\n  actual:   {:?}\n\
         --- full actual output\n{actual}\n--- (PATROL_BLESS=1 rewrites the golden file)",
        path.display(),
        first + 1,
        expected.lines().nth(first).unwrap_or("<end of file>"),
        actual.lines().nth(first).unwrap_or("<end of output>"),
    );
}

/// How long an agent may take to print its listening line.
const AGENT_START_LIMIT: Duration = Duration::from_secs(20);

/// Upper bound on one HTTP exchange with the agent.
const HTTP_LIMIT: Duration = Duration::from_secs(10);

/// A running `patrol run` child. Dropping it kills the process, so a failing test never leaves
/// an agent behind. stdout and stderr are drained in the background (a full pipe would block
/// the agent) and returned by [`Agent::wait`].
#[derive(Debug)]
pub struct Agent {
    child: tokio::process::Child,
    /// The address from the `patrol agent listening on http://ADDR` line.
    pub addr: SocketAddr,
    /// When the process was spawned.
    pub spawned: Instant,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Err only says the process is already gone.
        let _ = self.child.start_kill();
    }
}

/// Appends everything `from` yields to `into` until EOF.
fn drain(
    from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncBufReadExt as _;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = into.lock().unwrap_or_else(PoisonError::into_inner);
            text.push_str(&line);
            text.push('\n');
        }
    })
}

impl Patrol {
    /// `patrol run --config <config> --listen 127.0.0.1:0`.
    pub fn agent(config: &Path) -> Patrol {
        Patrol::new(["run", "--config"])
            .arg_path(config)
            .args(["--listen", "127.0.0.1:0"])
    }

    /// Spawns the agent and waits for its listening line; fails the test, showing its output,
    /// if it exits first.
    pub async fn start(self) -> Agent {
        match self.try_start().await {
            Ok(agent) => agent,
            Err(run) => panic!(
                "the agent exited with {:?} before listening\n{}",
                run.code,
                run.output()
            ),
        }
    }

    /// Spawns the agent and waits for its listening line; `Err` with the finished process when
    /// it exits first.
    pub async fn try_start(mut self) -> Result<Agent, Run> {
        use tokio::io::AsyncBufReadExt as _;
        let spawned = Instant::now();
        let mut child = self.command.spawn().expect("spawn the patrol binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut readers = vec![drain(
            child.stderr.take().expect("stderr is piped"),
            Arc::clone(&stderr),
        )];
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let listening = tokio::time::timeout(AGENT_START_LIMIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = stdout.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
                if let Some(addr) = line.strip_prefix("patrol agent listening on http://") {
                    return Some(addr.parse::<SocketAddr>().unwrap_or_else(|e| {
                        panic!("`{addr}` in the listening line is not an address: {e}")
                    }));
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("the agent printed no listening line in {AGENT_START_LIMIT:?}"));
        let Some(addr) = listening else {
            // stdout closed: the process is exiting.
            let status = tokio::time::timeout(RUN_LIMIT, child.wait())
                .await
                .unwrap_or_else(|_| panic!("patrol closed stdout but did not exit"))
                .expect("wait for patrol");
            for reader in readers {
                let _ = reader.await;
            }
            let take = |s: &Arc<Mutex<String>>| {
                std::mem::take(&mut *s.lock().unwrap_or_else(PoisonError::into_inner))
            };
            return Err(Run {
                code: status.code(),
                stdout: take(&stdout),
                stderr: take(&stderr),
                elapsed: spawned.elapsed(),
            });
        };
        readers.push(tokio::spawn({
            let stdout = Arc::clone(&stdout);
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut text = stdout.lock().unwrap_or_else(PoisonError::into_inner);
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        }));
        Ok(Agent {
            child,
            addr,
            spawned,
            stdout,
            stderr,
            readers,
        })
    }
}

/// One HTTP response, body as text.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, failing the test when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body (status {}) is not JSON ({e}):\n{}",
                self.status, self.body
            )
        })
    }

    /// Fails the test, showing the body, unless the status is `status`.
    pub fn assert_status(&self, status: u16) -> &Reply {
        assert_eq!(
            self.status, status,
            "unexpected status; body:\n{}",
            self.body
        );
        self
    }
}

/// One HTTP/1.1 exchange with `addr` on a fresh connection (`Connection: close`, so the answer
/// ends at EOF). A small client of its own keeps the tests free of an HTTP client dependency.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    http_within(HTTP_LIMIT, addr, method, path, headers, body).await
}

/// [`http`] for answers that take longer than [`HTTP_LIMIT`] by design.
pub async fn http_within(
    limit: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        // A `host` in `headers` replaces the default one.
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("host: {addr}\r\n"));
        }
        head.push_str(&format!(
            "connection: close\r\ncontent-length: {}\r\n",
            body.len()
        ));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: sending: {e}"));
        // The server may answer (413) and close before reading a large body; its answer is
        // still there to read.
        let _ = stream.write_all(&body).await;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after the answer (unread request body) ends it like EOF.
                Err(_) if !raw.is_empty() => break,
                Err(e) => panic!("{method} {path}: reading: {e}"),
            }
        }
        parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {path}: not an HTTP response:\n{}",
                String::from_utf8_lossy(&raw)
            )
        })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} got no answer in {limit:?}"))
}

/// Parses a whole HTTP/1.1 response: status line, headers, and a body delimited by
/// `content-length`, chunked encoding, or EOF.
fn parse_response(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let rest = &raw[end + 4..];
    let body = if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        rest.get(..length.parse::<usize>().ok()?)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Decodes a chunked body.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

impl Agent {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the agent is still running")
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        http(self.addr, "GET", path, &[], Vec::new()).await
    }

    /// `POST path` with a JSON body, and `Authorization: Bearer <token>` when given.
    pub async fn post(&self, path: &str, json: &str, token: Option<&str>) -> Reply {
        self.post_within(HTTP_LIMIT, path, json, token).await
    }

    /// [`Agent::post`] for answers that take longer than [`HTTP_LIMIT`] by design.
    pub async fn post_within(
        &self,
        limit: Duration,
        path: &str,
        json: &str,
        token: Option<&str>,
    ) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        let body = json.as_bytes().to_vec();
        http_within(limit, self.addr, "POST", path, &headers, body).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.assert_status(200).body.clone()
    }

    /// `POST /api/v1/runs` with `body`; returns the run id (the answer must be 202).
    pub async fn start_run(&self, body: &str, token: Option<&str>) -> String {
        let reply = self.post("/api/v1/runs", body, token).await;
        reply.assert_status(202);
        let json = reply.json();
        assert_eq!(json["status"], "running", "{json:#}");
        json["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run id in {json:#}"))
            .to_string()
    }

    /// Polls `GET /api/v1/runs/{id}` until its status is `done`; returns the record.
    pub async fn finished_run(&self, id: &str) -> Value {
        eventually(&format!("run {id} to finish"), RUN_LIMIT, async || {
            let run = self
                .get(&format!("/api/v1/runs/{id}"))
                .await
                .assert_status(200)
                .json();
            (run["status"] == "done").then_some(run)
        })
        .await
    }

    /// Runs the probes named in `body` (a `POST /api/v1/runs` body) and waits for the results.
    pub async fn run(&self, body: &str, token: Option<&str>) -> Value {
        let id = self.start_run(body, token).await;
        self.finished_run(&id).await
    }

    /// Sends a signal by name (`HUP`, `TERM`) with `kill`.
    pub async fn signal(&self, name: &str) {
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `limit` for the process to exit; returns its exit code and whole output.
    /// `elapsed` is measured from the spawn.
    pub async fn wait(&mut self, limit: Duration) -> Run {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the agent did not exit within {limit:?}\n--- stderr\n{}",
                    self.stderr()
                )
            })
            .expect("wait for the agent");
        let elapsed = self.spawned.elapsed();
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        let take =
            |s: &Arc<Mutex<String>>| s.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Run {
            code: status.code(),
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
            elapsed,
        }
    }
}

/// The value of the one series that is exactly `series` (metric name and labels as the
/// exposition prints them, labels in alphabetical order, `le` last) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    text.lines().find_map(|l| {
        l.strip_prefix(&prefix).map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("`{l}` has no numeric value: {e}"))
        })
    })
}

/// Polls `check` every 50 ms until it yields a value; fails the test after `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `patrol verify` on `config` (the whole file's text) with a JSON report (`report.json` in the
/// scratch dir) and `extra` arguments; for targets other than the shop (fault fixtures).
pub async fn verify_config(config: &str, extra: &[&str]) -> Verified {
    let scratch = Scratch::new();
    let path = scratch.write("patrol.yaml", config);
    let run = Patrol::new(["verify", "--config"])
        .arg_path(&path)
        .args(["--report-json", "report.json"])
        .args(extra)
        .current_dir(scratch.path())
        .run()
        .await;
    let text = std::fs::read_to_string(scratch.file("report.json")).unwrap_or_else(|e| {
        panic!(
            "patrol verify wrote no report ({e}), exit {:?}\n{}",
            run.code,
            run.output()
        )
    });
    let report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "the JSON report does not parse ({e}):\n{text}\n{}",
            run.output()
        )
    });
    Verified {
        run,
        report,
        scratch,
    }
}

/// A raw TCP server on `127.0.0.1:0` for the faults no well-behaved server commits (resets,
/// hangs, trickles, endless or lying bodies): every accepted connection is handed to the
/// handler in a task of its own. Dropping it stops the server and aborts every connection.
#[derive(Debug)]
pub struct RawServer {
    /// The bound address.
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet: aborting it aborts them.
        self.accept.abort();
    }
}

impl RawServer {
    /// Starts serving; `handler` gets each connection.
    pub async fn start<F, Fut>(handler: F) -> RawServer
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free loopback port");
        let addr = listener.local_addr().expect("bound address");
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(handler(stream));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    // Reap finished connections so the set does not grow.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        RawServer { addr, accept }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads a request's head (up to the blank line); the text read, lossily decoded.
pub async fn read_request_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Closes `stream` with a TCP RST instead of a FIN (SO_LINGER of zero, then close).
pub fn reset(stream: tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(&stream);
    socket
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER to zero");
    drop(stream);
}

/// PIDs of `pid`'s descendants with their command names.
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut parents = vec![pid];
    let mut found: Vec<(u32, String)> = Vec::new();
    while let Some(parent) = parents.pop() {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            break;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) && found.iter().all(|(p, _)| *p != child) {
                let comm = std::fs::read_to_string(format!("/proc/{child}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                found.push((child, comm));
                parents.push(child);
            }
        }
    }
    found
}
