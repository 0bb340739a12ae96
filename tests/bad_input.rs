//! Bad input, end to end: generated config files through `patrol validate` (the real binary)
//! must never crash it — exit 0 or 2, and every error a `file:line:col: error: message` line —
//! and the agent's API and hooks, given malformed JSON, huge bodies, wrong content types,
//! unknown fields, wrong types or random bytes, answer 4xx without running anything and carry
//! on serving.
//!
//! The parsers inside (assertions, captures, templates, the masker) have their own property
//! tests in probes/tests/proptest_parsers.rs.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Agent, Patrol, Scratch, http};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The API token the agents under test read from `PATROL_API_TOKEN`.
const TOKEN: &str = "tok-bad-input-0b7d13";

/// Cases per property: each is a process run or an HTTP exchange.
const CASES: u32 = 64;

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A small valid config exercising most keys.
const SEED: &str = r#"agent:
  listen: 127.0.0.1:9464
  location: lab
  max_concurrency: 4
vars:
  api: http://127.0.0.1:1
  password: "{{ env.PATROL_FUZZ_UNSET }}"
defaults:
  timeout: 2s
  retries: 1
  max_body: 1MiB
probes:
  - name: checkout
    tags: [smoke]
    schedule: { every: 30s }
    steps:
      - name: login
        request:
          method: POST
          url: "{{ api }}/api/auth/login"
          headers: { X-Smoke: "1" }
          json: { email: a@b.c, password: "{{ password }}" }
        capture:
          token: jsonpath "$.token"
        assert:
          - status == 200
          - jsonpath "$.token" exists
          - duration < 500ms
      - name: cart
        request:
          url: "{{ api }}/api/cart"
          headers: { Authorization: "Bearer {{ token }}" }
        assert: [ status in [200, 201], 'body contains "items"' ]
  - name: hourly
    schedule: { cron: "0 0 * * * *" }
    steps:
      - request: { url: "{{ api }}/api/health" }
"#;

/// Bytes that matter to YAML and to Patrol's own syntax.
const SIGNIFICANT: &[u8] =
    b":-[]{}\"'#&*!|>%@`,? \t\n\\$.=<0123456789abcdefghijklmnopqrstuvwxyz\xc3\xa9\xff";

/// One edit of a config text.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove `len` bytes at `at` (a fraction of the length).
    Delete { at: f64, len: usize },
    /// Insert bytes at `at`.
    Insert { at: f64, bytes: Vec<u8> },
    /// Duplicate the line at `at`.
    DuplicateLine { at: f64 },
    /// Change the indentation of the line at `at` by `by` spaces.
    Indent { at: f64, by: i8 },
    /// Replace the value after the first `: ` of the line at `at`.
    Value { at: f64, value: String },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..1.0, 1usize..12).prop_map(|(at, len)| Edit::Delete { at, len }),
        (
            0.0..1.0,
            prop::collection::vec(prop::sample::select(SIGNIFICANT), 1..6)
        )
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (0.0..1.0).prop_map(|at| Edit::DuplicateLine { at }),
        (0.0..1.0, -4i8..5).prop_map(|(at, by)| Edit::Indent { at, by }),
        (
            0.0..1.0,
            prop::sample::select(vec![
                "",
                "~",
                "[]",
                "{}",
                "-1",
                "0",
                "99999999999999999999",
                "1e400",
                "true",
                "\"{{\"",
                "\"{{ nope }}\"",
                "\"{{ env. }}\"",
                "0.0.0.0:0",
                "10 parsecs",
                "{ every: 0s }",
                "{ cron: \"* *\" }",
                "&a [*a]",
                "*undefined",
                "!!binary aGk=",
                "|\n  block",
                "\"\\u00e9\\x\"",
                "[1, [2, [3, [4]]]]",
                "status ===",
                "\"<script>\"",
            ])
            .prop_map(str::to_string)
        )
            .prop_map(|(at, value)| Edit::Value { at, value }),
    ]
}

fn index(at: f64, len: usize) -> usize {
    ((at * len as f64) as usize).min(len)
}

fn apply(text: &[u8], edit: &Edit) -> Vec<u8> {
    let mut out = text.to_vec();
    let lines =
        |t: &[u8]| -> Vec<Vec<u8>> { t.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect() };
    match edit {
        Edit::Delete { at, len } => {
            let start = index(*at, out.len());
            let end = (start + len).min(out.len());
            out.drain(start..end);
        }
        Edit::Insert { at, bytes } => {
            let at = index(*at, out.len());
            out.splice(at..at, bytes.iter().copied());
        }
        Edit::DuplicateLine { at } => {
            let mut ls = lines(&out);
            let i = index(*at, ls.len().saturating_sub(1));
            let line = ls[i].clone();
            ls.insert(i, line);
            out = ls.join(&b'\n');
        }
        Edit::Indent { at, by } => {
            let mut ls = lines(&out);
            let i = index(*at, ls.len().saturating_sub(1));
            if *by >= 0 {
                let mut line = vec![b' '; *by as usize];
                line.extend_from_slice(&ls[i]);
                ls[i] = line;
            } else {
                let strip = ls[i]
                    .iter()
                    .take((-*by) as usize)
                    .take_while(|b| **b == b' ')
                    .count();
                ls[i].drain(..strip);
            }
            out = ls.join(&b'\n');
        }
        Edit::Value { at, value } => {
            let mut ls = lines(&out);
            let i = index(*at, ls.len().saturating_sub(1));
            if let Some(colon) = ls[i].windows(2).position(|w| w == b": ") {
                ls[i].truncate(colon + 2);
                ls[i].extend_from_slice(value.as_bytes());
            }
            out = ls.join(&b'\n');
        }
    }
    out
}

/// A config made from the seed (or the example suite) with a few edits.
fn mutated_config() -> impl Strategy<Value = Vec<u8>> {
    let example = std::fs::read(common::workspace_root().join("examples/citadelbuy.yaml"))
        .expect("read examples/citadelbuy.yaml");
    (prop::bool::ANY, prop::collection::vec(edit(), 1..5)).prop_map(move |(use_example, edits)| {
        let base = if use_example {
            example.clone()
        } else {
            SEED.as_bytes().to_vec()
        };
        edits.iter().fold(base, |text, e| apply(&text, e))
    })
}

/// Config-shaped text from scratch: known and unknown keys at random depths with random values.
fn generated_config() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec![
        "agent",
        "listen",
        "probes",
        "name",
        "steps",
        "request",
        "url",
        "assert",
        "capture",
        "vars",
        "defaults",
        "timeout",
        "schedule",
        "every",
        "cron",
        "tags",
        "type",
        "browser",
        "goto",
        "click",
        "verify",
        "insecure",
        "max_body",
        "retries",
        "json",
        "form",
        "body",
        "headers",
        "query",
        "method",
        "locations",
        "tz",
        "api_token",
        "unknwon",
        "- name",
        "-",
        "? complex",
    ]);
    let value = prop_oneof![
        Just(String::new()),
        "[a-z0-9 {}.$\"'\\[\\]:,*&!|-]{0,16}",
        Just("\"{{ api }}/x\"".to_string()),
        Just("[ status == 200 ]".to_string()),
    ];
    prop::collection::vec((0usize..4, key, value), 0..24).prop_map(|lines| {
        let mut text = String::new();
        for (depth, key, value) in lines {
            text.push_str(&"  ".repeat(depth));
            text.push_str(key);
            text.push_str(": ");
            text.push_str(&value);
            text.push('\n');
        }
        text.into_bytes()
    })
}

/// Runs `patrol validate` on `path` (killed after 20 s); exit code and stderr.
fn validate(path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_patrol"))
        .args(["validate", "--config"])
        .arg(path)
        .env("NO_COLOR", "1")
        .env_remove("PATROL_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn patrol");
    // Drained while it runs: a long report must not block on a full pipe.
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for patrol") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("patrol validate hung on {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap_or_default();
    (status.code(), stderr)
}

/// The property: validate exits 0 or 2, never panics, and an exit 2 lists errors as
/// `file:line:col: error: message` with the line inside the file.
fn check_validate(
    scratch: &Scratch,
    text: &[u8],
    valid: &AtomicUsize,
) -> Result<(), TestCaseError> {
    let path = scratch.file("fuzz.yaml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text))
        .expect("write the config");
    let (code, stderr) = validate(&path);
    let shown = || {
        format!(
            "--- config\n{}\n--- stderr\n{stderr}",
            String::from_utf8_lossy(text)
        )
    };
    prop_assert!(
        matches!(code, Some(0) | Some(2)),
        "exit {code:?}\n{}",
        shown()
    );
    prop_assert!(!stderr.contains("panicked"), "{}", shown());
    if code == Some(0) {
        valid.fetch_add(1, Ordering::Relaxed);
    }
    if code == Some(2) {
        let file = path.display().to_string();
        let line_count = text.split(|b| *b == b'\n').count();
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
        prop_assert!(
            !errors.is_empty(),
            "exit 2 without an error line\n{}",
            shown()
        );
        for error in errors {
            let rest = error.strip_prefix(&format!("{file}:"));
            prop_assert!(
                rest.is_some(),
                "`{error}` does not start with the file\n{}",
                shown()
            );
            let mut parts = rest.unwrap_or_default().splitn(3, ':');
            let line = parts.next().and_then(|l| l.parse::<usize>().ok());
            let col = parts.next().and_then(|c| c.parse::<usize>().ok());
            let message = parts.next().and_then(|m| m.strip_prefix(" error: "));
            prop_assert!(
                line.is_some_and(|l| l >= 1 && l <= line_count + 1)
                    && col.is_some_and(|c| c >= 1)
                    && message.is_some_and(|m| !m.trim().is_empty()),
                "`{error}` is not file:line:col: error: message\n{}",
                shown()
            );
        }
    }
    Ok(())
}

#[test]
fn validate_survives_mutated_configs() {
    let scratch = Scratch::new();
    let valid = AtomicUsize::new(0);
    runner()
        .run(&mutated_config(), |text| {
            check_validate(&scratch, &text, &valid)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Shown with --nocapture; the others were refused with file:line:col errors.
    eprintln!("{} of {CASES} configs were valid", valid.into_inner());
}

#[test]
fn validate_survives_generated_configs() {
    let scratch = Scratch::new();
    let valid = AtomicUsize::new(0);
    runner()
        .run(&generated_config(), |text| {
            check_validate(&scratch, &text, &valid)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Shown with --nocapture; the others were refused with file:line:col errors.
    eprintln!("{} of {CASES} configs were valid", valid.into_inner());
}

#[test]
fn validate_survives_files_that_are_not_text() {
    let scratch = Scratch::new();
    for text in [
        &b""[..],
        b"\xff\xfe\x00p\x00r",
        b"probes:\n  - name: x\x00\n",
        b"\xef\xbb\xbfprobes: []\n",
        &[b'['; 10_000],
        &[b'-'; 10_000],
    ] {
        if let Err(e) = check_validate(&scratch, text, &AtomicUsize::new(0)) {
            panic!("{e}");
        }
    }
    // Deep nesting must not overflow the stack.
    let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
    if let Err(e) = check_validate(&scratch, deep.as_bytes(), &AtomicUsize::new(0)) {
        panic!("{e}");
    }
}

/// An agent with one probe of the shop, a token, and the given number of runs counted so far.
async fn agent(scratch: &Scratch, shop: &citadel_shop::Shop) -> Agent {
    let config = format!(
        "agent:\n  api_token: \"{{{{ env.PATROL_API_TOKEN }}}}\"\nvars:\n  api: {}\nprobes:\n  \
         - name: health\n    tags: [smoke]\n    steps:\n      - request: {{ url: \"{{{{ api }}}}/api/health\" }}\n",
        shop.url()
    );
    let path = scratch.write("patrol.yaml", &config);
    Patrol::agent(&path)
        .current_dir(scratch.path())
        .env("PATROL_API_TOKEN", TOKEN)
        .start()
        .await
}

/// Sum of `probe_runs_total` over every label set.
async fn runs_counted(agent: &Agent) -> f64 {
    agent
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("probe_runs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_hooks_refuse_bad_bodies_and_carry_on() {
    let shop = common::shop().await;
    let scratch = Scratch::new();
    let agent = agent(&scratch, &shop).await;
    let auth = format!("Bearer {TOKEN}");
    let json = "application/json";
    let huge = format!(r#"{{"probes":["{}"]}}"#, "x".repeat(70 * 1024));
    // (what, content type, body, expected status) for every route reading a JSON body.
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "malformed JSON",
            Some(json),
            br#"{"probes": ["health""#.to_vec(),
            400,
        ),
        (
            "a trailing comma",
            Some(json),
            br#"{"probes": ["health"],}"#.to_vec(),
            400,
        ),
        (
            "bytes that are not UTF-8",
            Some(json),
            b"{\"probes\": [\"\xff\xfe\"]}".to_vec(),
            400,
        ),
        ("an empty body", Some(json), Vec::new(), 400),
        ("a body over 64 KiB", Some(json), huge.into_bytes(), 413),
        (
            "text/plain",
            Some("text/plain"),
            br#"{"probes":["health"]}"#.to_vec(),
            415,
        ),
        (
            "form data",
            Some("application/x-www-form-urlencoded"),
            b"probes=health".to_vec(),
            415,
        ),
        (
            "no content type",
            None,
            br#"{"probes":["health"]}"#.to_vec(),
            415,
        ),
        ("a JSON string", Some(json), br#""health""#.to_vec(), 422),
        ("a JSON array", Some(json), br#"["health"]"#.to_vec(), 422),
        (
            "a deeply nested array",
            Some(json),
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            400,
        ),
    ];
    for route in [
        "/api/v1/runs",
        "/api/v1/verify",
        "/hooks/flagger",
        "/hooks/alertmanager",
    ] {
        for (what, content_type, body, expected) in &cases {
            let mut headers = vec![("authorization", auth.as_str())];
            headers.extend(content_type.map(|t| ("content-type", t)));
            let reply = http(agent.addr, "POST", route, &headers, body.clone()).await;
            let ok = if *expected == 400 || *expected == 422 {
                // serde's rejections: 400 for syntax, 422 for shape; either says what is wrong.
                matches!(reply.status, 400 | 422)
            } else {
                reply.status == *expected
            };
            assert!(
                ok,
                "POST {route} with {what}: {} (expected {expected}): {}",
                reply.status, reply.body
            );
            assert!(
                !reply.body.is_empty(),
                "POST {route} with {what}: no explanation"
            );
        }
    }
    // Unknown fields and wrong types, where Patrol owns the schema.
    for (route, body) in [
        ("/api/v1/runs", r#"{"probes":["health"],"probez":[]}"#),
        ("/api/v1/runs", r#"{"probes":"health"}"#),
        ("/api/v1/runs", r#"{"probes":[1]}"#),
        (
            "/api/v1/runs",
            r#"{"deploy":{"version":"1","colour":"blue"}}"#,
        ),
        ("/api/v1/runs", r#"{"deploy":{"at_ms":"yesterday"}}"#),
        ("/api/v1/verify", r#"{"probes":["health"],"rounds":3}"#),
        ("/api/v1/verify", r#"{"runs":-1}"#),
        ("/hooks/flagger", r#"{"namespace":"prod"}"#),
        (
            "/hooks/flagger",
            r#"{"name":"api","namespace":"prod","metadata":{"probes":1}}"#,
        ),
        ("/hooks/alertmanager", r#"{"version":"3","alerts":[]}"#),
        ("/hooks/alertmanager", r#"{"version":"4","alerts":{}}"#),
    ] {
        let reply = agent.post(route, body, Some(TOKEN)).await;
        assert!(
            (400..500).contains(&reply.status),
            "POST {route} {body}: {}: {}",
            reply.status,
            reply.body
        );
    }
    // None of it ran a probe, and the agent carries on.
    assert_eq!(runs_counted(&agent).await, 0.0);
    let health = agent.get("/healthz").await;
    health.assert_status(200);
    agent.get("/readyz").await.assert_status(200);
    let run = agent.run(r#"{"probes":["health"]}"#, Some(TOKEN)).await;
    assert_eq!(run["probes"][0]["result"], "pass", "{run:#}");
}

#[test]
fn random_bodies_to_the_run_api_never_get_a_server_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let shop = rt.block_on(common::shop());
    let scratch = Scratch::new();
    let agent = rt.block_on(agent(&scratch, &shop));
    let auth = format!("Bearer {TOKEN}");
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "\\PC{0,64}".prop_map(String::into_bytes),
        // JSON objects with random keys and values, some of them the real ones.
        prop::collection::vec(
            (
                prop::sample::select(vec!["probes", "tags", "deploy", "url", "x", ""]),
                prop::sample::select(vec![
                    "[]",
                    "[\"nope\"]",
                    "\"health\"",
                    "1",
                    "null",
                    "{}",
                    "{\"version\":1}",
                    "[[]]",
                    "true",
                ]),
            ),
            0..4,
        )
        .prop_map(|fields| {
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(",")).into_bytes()
        }),
    ];
    let served = AtomicUsize::new(0);
    runner()
        .run(&body, |body| {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            let reply = rt.block_on(http(
                agent.addr,
                "POST",
                "/api/v1/runs",
                &headers,
                body.clone(),
            ));
            prop_assert!(
                reply.status == 202 || (400..500).contains(&reply.status),
                "{} for {:?}: {}",
                reply.status,
                String::from_utf8_lossy(&body),
                reply.body
            );
            if reply.status == 202 {
                served.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let health = rt.block_on(agent.get("/healthz"));
    health.assert_status(200);
    eprintln!(
        "{} of {CASES} random bodies were valid run requests",
        served.into_inner()
    );
    drop(agent);
    drop(shop);
}
