//! Security end to end, the real `patrol` binary on loopback: every state-changing route refuses
//! a request without the bearer token (401) and does nothing; the status page escapes
//! everything a target supplied (a response body and an error text carrying `<script>`) and
//! validation refuses such a probe name; artifact paths cannot leave `artifacts_dir` (`..`,
//! encoded `..`, absolute paths, symlinks out); a secret echoed by the target is scrubbed from
//! the saved response body, the debug log, metrics, API and page; chromedriver listens on
//! loopback only; the control API cannot add probes or point one at another target; a
//! token-less agent refuses rebound `Host` names and POSTs from web pages; and `-v` neither
//! shows part of a secret at its 4 KiB cut nor passes a target's control characters through.
//!
//! SECURITY.md at the workspace root describes each protection; these tests prove them.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Agent, Patrol, RawServer, Scratch, http, metric, read_request_head};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// The API token the agents under test read from `PATROL_API_TOKEN`.
const TOKEN: &str = "tok-security-7c1e52a9";

/// The POST routes: each changes state or runs probes.
const POST_ROUTES: [&str; 5] = [
    "/api/v1/runs",
    "/api/v1/verify",
    "/-/reload",
    "/hooks/flagger",
    "/hooks/alertmanager",
];

/// A target that counts the connections it gets and answers each `200 {"ok":true}`.
async fn counting_target() -> (RawServer, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let server = RawServer::start(move |mut stream: TcpStream| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            read_request_head(&mut stream).await;
            let body = r#"{"ok":true}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    })
    .await;
    (server, hits)
}

/// `patrol run` on `config` (written to `patrol.yaml` in `scratch`) with `PATROL_API_TOKEN`.
async fn start_agent(scratch: &Scratch, config: &str) -> Agent {
    let path = scratch.write("patrol.yaml", config);
    Patrol::agent(&path)
        .current_dir(scratch.path())
        .env("PATROL_API_TOKEN", TOKEN)
        .start()
        .await
}

/// Every series of `name` in the exposition, for messages.
fn family(text: &str, name: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sum of every sample of `name` (all label sets).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_route_refuses_a_request_without_the_token() {
    let (target, hits) = counting_target().await;
    let scratch = Scratch::new();
    let config = format!(
        "agent:\n  api_token: \"{{{{ env.PATROL_API_TOKEN }}}}\"\n\
         probes:\n  - name: health\n    tags: [smoke]\n    steps:\n      - name: get\n        \
         request: {{ url: \"{}/\" }}\n        assert: [ status == 200 ]\n",
        target.url()
    );
    let agent = start_agent(&scratch, &config).await;
    let bodies = [
        ("/api/v1/runs", r#"{"probes":["health"]}"#.to_string()),
        ("/api/v1/verify", r#"{"probes":["health"],"runs":1}"#.to_string()),
        ("/-/reload", String::new()),
        (
            "/hooks/flagger",
            r#"{"name":"api","namespace":"prod","checksum":"c1","metadata":{"probes":"health"}}"#
                .to_string(),
        ),
        (
            "/hooks/alertmanager",
            r#"{"version":"4","alerts":[{"status":"firing","labels":{"action":"rollback","alertname":"X"},"fingerprint":"f1"}]}"#
                .to_string(),
        ),
    ];
    let refused: [(&str, Option<String>); 7] = [
        ("no Authorization", None),
        ("a wrong token", Some("Bearer wrong".into())),
        ("an empty bearer token", Some("Bearer ".into())),
        ("the token with a suffix", Some(format!("Bearer {TOKEN}x"))),
        (
            "a prefix of the token",
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        ),
        ("the token in Basic auth", Some(format!("Basic {TOKEN}"))),
        ("the token without the scheme", Some(TOKEN.to_string())),
    ];
    for (route, body) in &bodies {
        assert!(POST_ROUTES.contains(route));
        for (what, authorization) in &refused {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(authorization.as_deref().map(|a| ("authorization", a)));
            let reply = http(
                agent.addr,
                "POST",
                route,
                &headers,
                body.clone().into_bytes(),
            )
            .await;
            assert_eq!(
                reply.status, 401,
                "POST {route} with {what}: {}",
                reply.body
            );
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{route}");
            assert!(!reply.body.contains(TOKEN), "{route} echoes the token");
        }
    }
    // Other methods that could change state are refused too, never served.
    for method in ["PUT", "DELETE", "PATCH"] {
        for route in POST_ROUTES {
            let reply = http(agent.addr, method, route, &[], b"{}".to_vec()).await;
            assert!(
                matches!(reply.status, 401 | 405),
                "{method} {route} answered {}: {}",
                reply.status,
                reply.body
            );
        }
    }

    // Nothing happened: no run, no request to the target, no reload, verdict or rollback.
    let text = agent.metrics().await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the target was probed");
    assert_eq!(
        total(&text, "probe_runs_total"),
        0.0,
        "{}",
        family(&text, "probe_runs_total")
    );
    assert_eq!(
        metric(&text, r#"patrol_config_reload_total{result="success"}"#),
        Some(1.0),
        "{}",
        family(&text, "patrol_config_reload_total")
    );
    assert_eq!(total(&text, "patrol_deploy_verification_total"), 0.0);
    assert_eq!(total(&text, "patrol_rollback_actions_total"), 0.0);
    agent.get("/healthz").await.assert_status(200);

    // With the token the same request is served.
    let run = agent.run(r#"{"probes":["health"]}"#, Some(TOKEN)).await;
    assert_eq!(run["probes"][0]["result"], "pass", "{run:#}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A target whose answers carry markup: `/echo` a JSON body with a `<script>` in it, anything
/// else a redirect to a Location with a `<script>` in it.
async fn markup_target() -> RawServer {
    RawServer::start(|mut stream: TcpStream| async move {
        let head = read_request_head(&mut stream).await;
        let reply = if head.starts_with("GET /echo") {
            let body = r#"{"q":"<script>alert(1)</script>","n":"<img src=x onerror=alert(2)>"}"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 302 Found\r\nLocation: /<script>alert(3)</script>\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
                .to_string()
        };
        let _ = stream.write_all(reply.as_bytes()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_escapes_what_targets_supply() {
    let target = markup_target().await;
    let scratch = Scratch::new();
    let artifacts = scratch.file("artifacts");
    let config = format!(
        "agent:\n  artifacts_dir: {}\nvars:\n  api: {}\nprobes:\n{}",
        artifacts.display(),
        target.url(),
        r#"  - name: echo
    steps:
      - name: fetch
        request: { url: "{{ api }}/echo" }
        assert:
          - 'jsonpath "$.q" == "harmless"'
          - 'body contains "<b>bold</b>"'
  - name: redirector
    max_redirects: 1
    steps:
      - name: follow
        request: { url: "{{ api }}/start" }
"#
    );
    let agent = start_agent(&scratch, &config).await;
    let run = agent.run("{}", Some(TOKEN)).await;
    assert_eq!(common::probe(&run, "echo")["result"], "fail", "{run:#}");
    let redirector = common::probe(&run, "redirector");
    assert_eq!(redirector["result"], "error", "{run:#}");
    let error = redirector["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("<script>alert(3)</script>"), "{error}");

    let page = agent.get("/").await;
    page.assert_status(200);
    let html = &page.body;
    // The page has no scripts of its own: any `<script` or event handler would be injected.
    let lower = html.to_lowercase();
    assert!(!lower.contains("<script"), "{html}");
    assert!(!lower.contains("<img"), "{html}");
    for escaped in [
        // The target's body, as the failing assertion's actual value.
        "&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;",
        // The assertion text.
        "&lt;b&gt;bold&lt;/b&gt;",
        // The error text, from the target's Location header.
        "&lt;script&gt;alert(3)&lt;/script&gt;",
    ] {
        assert!(
            html.contains(escaped),
            "no `{escaped}` on the page:\n{html}"
        );
    }

    // The API is JSON (application/json): the values come back exactly, as JSON strings.
    let reply = agent.get("/api/v1/probes").await;
    reply.assert_status(200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        reply.headers
    );
    let status = reply.json();
    let failure = &common::probe(&status, "redirector")["last_failure"];
    assert_eq!(failure["steps"][0]["error"], error, "{failure:#}");
    let echo = &common::probe(&status, "echo")["last_failure"]["steps"][0];
    assert_eq!(
        echo["asserts"][0]["actual"], r#""<script>alert(1)</script>""#,
        "{echo:#}"
    );

    // The saved response body is served as text, never as a page.
    let saved = echo["artifacts"][0].as_str().unwrap_or_default();
    assert!(saved.ends_with("fetch-response.txt"), "{echo:#}");
    let file = agent.get(&format!("/artifacts/{saved}")).await;
    file.assert_status(200);
    assert!(
        file.body.contains("<script>alert(1)</script>"),
        "{}",
        file.body
    );
    assert_eq!(
        file.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(file.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_refuses_markup_in_a_probe_name() {
    let scratch = Scratch::new();
    let path = scratch.write(
        "patrol.yaml",
        "probes:\n  - name: \"<script>alert(1)</script>\"\n    steps:\n      - request: { url: \"http://127.0.0.1:1/\" }\n",
    );
    let run = Patrol::new(["validate", "--config"])
        .arg_path(&path)
        .run()
        .await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("patrol.yaml:2:") && run.stderr.contains("must match [a-z0-9_-]+"),
        "{}",
        run.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_paths_cannot_leave_artifacts_dir() {
    let shop = common::shop().await;
    let scratch = Scratch::new();
    let artifacts = scratch.file("artifacts");
    std::fs::create_dir_all(artifacts.join("p/run1")).expect("create the artifacts dir");
    std::fs::write(artifacts.join("p/run1/ok.txt"), "inside").expect("write an artifact");
    std::fs::write(scratch.file("outside-secret.txt"), "OUTSIDE-MARKER").expect("write");
    let link = |target: &Path, at: &Path| {
        std::os::unix::fs::symlink(target, at).expect("create a symlink");
    };
    link(scratch.path(), &artifacts.join("up"));
    link(
        &scratch.file("outside-secret.txt"),
        &artifacts.join("p/leak.txt"),
    );
    link(Path::new("/etc"), &artifacts.join("etc"));
    let config = format!(
        "agent:\n  artifacts_dir: {}\nvars:\n  api: {}\nprobes:\n  - name: health\n    steps:\n      \
         - request: {{ url: \"{{{{ api }}}}/api/health\" }}\n",
        artifacts.display(),
        shop.url()
    );
    let agent = start_agent(&scratch, &config).await;

    let inside = agent.get("/artifacts/p/run1/ok.txt").await;
    inside.assert_status(200);
    assert_eq!(inside.body, "inside");

    for path in [
        "/artifacts/../outside-secret.txt",
        "/artifacts/../../../../etc/passwd",
        "/artifacts/p/../../outside-secret.txt",
        "/artifacts/%2e%2e/outside-secret.txt",
        "/artifacts/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/artifacts/p/run1/%2E%2E/%2E%2E/%2E%2E/outside-secret.txt",
        "/artifacts/..%2foutside-secret.txt",
        "/artifacts//etc/passwd",
        "/artifacts/%2fetc%2fpasswd",
        "/artifacts/up/outside-secret.txt",
        "/artifacts/p/leak.txt",
        "/artifacts/etc/passwd",
        "/artifacts/p/run1/ok.txt%00../../outside-secret.txt",
    ] {
        let reply = agent.get(path).await;
        assert!(
            (400..500).contains(&reply.status),
            "GET {path} answered {}: {}",
            reply.status,
            reply.body
        );
        assert!(
            !reply.body.contains("OUTSIDE-MARKER") && !reply.body.contains("root:"),
            "GET {path} served a file outside artifacts_dir: {}",
            reply.body
        );
    }
    agent.get("/healthz").await.assert_status(200);
}

/// Every regular file under `dir`, recursively, with its contents.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            let text =
                String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            out.push((path.display().to_string(), text));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_secret_is_scrubbed_from_saved_bodies_logs_and_every_endpoint() {
    let secret = "sek-artifact-4e8b1f27";
    let shop = common::shop().await;
    let scratch = Scratch::new();
    let artifacts = scratch.file("artifacts");
    let config = format!(
        "agent:\n  api_token: \"{{{{ env.PATROL_API_TOKEN }}}}\"\n  artifacts_dir: {}\n\
         vars:\n  api: {}\n  key: \"{{{{ env.PATROL_TEST_SECRET }}}}\"\nprobes:\n{}",
        artifacts.display(),
        shop.url(),
        r#"  - name: leaky
    steps:
      - name: search
        request:
          url: "{{ api }}/api/search"
          query: { q: "{{ key }}" }
          headers: { X-Api-Key: "{{ key }}" }
        assert:
          - 'jsonpath "$.query" == "{{ key }}-nope"'
"#
    );
    let path = scratch.write("patrol.yaml", &config);
    let mut agent = Patrol::agent(&path)
        .current_dir(scratch.path())
        .env("PATROL_API_TOKEN", TOKEN)
        .env("PATROL_TEST_SECRET", secret)
        .env("PATROL_LOG", "debug")
        .start()
        .await;
    let run = agent.run("{}", Some(TOKEN)).await;
    let step = &run["probes"][0]["steps"][0];
    assert_eq!(step["result"], "fail", "{run:#}");
    // The target echoed the secret; the result shows it masked.
    assert_eq!(step["asserts"][0]["actual"], "\"***\"", "{step:#}");

    // The failed step's response body was saved under <probe>/<run-id>/, scrubbed.
    let saved = step["artifacts"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let run_id = run["probes"][0]["id"].as_str().unwrap_or_default();
    assert_eq!(
        saved,
        format!("leaky/{run_id}/search-response.txt"),
        "{step:#}"
    );
    let on_disk = std::fs::read_to_string(artifacts.join(&saved)).expect("the saved body");
    assert!(on_disk.contains("***"), "{on_disk}");
    let served = agent.get(&format!("/artifacts/{saved}")).await;
    served.assert_status(200);
    assert_eq!(served.body, on_disk);

    let mut shown = vec![("saved body".to_string(), on_disk)];
    for (file, text) in files_under(&artifacts) {
        shown.push((file, text));
    }
    for path in [
        "/metrics",
        "/api/v1/probes",
        "/api/v1/probes/leaky/runs",
        "/",
    ] {
        let reply = agent.get(path).await;
        reply.assert_status(200);
        shown.push((path.to_string(), reply.body.clone()));
    }
    shown.push((
        "run record".to_string(),
        agent
            .get(&format!(
                "/api/v1/runs/{}",
                run["id"].as_str().unwrap_or_default()
            ))
            .await
            .body
            .clone(),
    ));
    agent.signal("TERM").await;
    let exited = agent.wait(Duration::from_secs(10)).await;
    exited.assert_code(0);
    assert!(
        exited.stderr.contains("Probe run completed."),
        "PATROL_LOG=debug should log the run:\n{}",
        exited.stderr
    );
    shown.push(("stderr (PATROL_LOG=debug)".to_string(), exited.stderr));
    shown.push(("stdout".to_string(), exited.stdout));
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    for (what, text) in &shown {
        for value in [secret, encoded.as_str(), TOKEN] {
            assert!(
                !text.contains(value),
                "`{value}` leaked into {what}:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_saves_failed_bodies_scrubbed_of_secrets() {
    let secret = "sek-verify-artifact-93ac";
    let shop = common::shop().await;
    let scratch = Scratch::new();
    let artifacts = scratch.file("artifacts");
    let config = format!(
        "agent:\n  artifacts_dir: {}\nvars:\n  api: {}\n  key: \"{{{{ env.PATROL_TEST_SECRET }}}}\"\n\
         probes:\n  - name: leaky\n    steps:\n      - name: search\n        request:\n          \
         url: \"{{{{ api }}}}/api/search\"\n          query: {{ q: \"{{{{ key }}}}\" }}\n        \
         assert: [ 'jsonpath \"$.query\" == \"nope\"' ]\n",
        artifacts.display(),
        shop.url()
    );
    let path = scratch.write("patrol.yaml", &config);
    let run = Patrol::new(["verify", "-v", "--config"])
        .arg_path(&path)
        .args(["--report-json", "report.json", "--junit", "junit.xml"])
        .current_dir(scratch.path())
        .env("PATROL_TEST_SECRET", secret)
        .env("PATROL_LOG", "debug")
        .run()
        .await;
    run.assert_code(1);
    let saved = files_under(&artifacts);
    assert!(
        saved
            .iter()
            .any(|(f, t)| f.ends_with("search-response.txt") && t.contains("***")),
        "no scrubbed search-response.txt in {saved:?}"
    );
    let mut shown = saved;
    shown.push(("report.json".into(), scratch.read("report.json")));
    shown.push(("junit.xml".into(), scratch.read("junit.xml")));
    shown.push(("stdout".into(), run.stdout.clone()));
    shown.push(("stderr".into(), run.stderr.clone()));
    for (what, text) in &shown {
        assert!(
            !text.contains(secret),
            "the secret leaked into {what}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromedriver_listens_on_loopback_only() {
    let installed = |p: &str| Path::new(p).exists();
    if !installed("/usr/bin/chromedriver") || !installed("/usr/bin/chromium") {
        eprintln!("skipped: chromium and chromium-driver are not installed");
        return;
    }
    let shop = common::shop().await;
    let scratch = Scratch::new();
    let config = format!(
        "agent:\n  api_token: \"{{{{ env.PATROL_API_TOKEN }}}}\"\n\
         browser:\n  chromedriver: /usr/bin/chromedriver\n  chromium: /usr/bin/chromium\n\
         vars:\n  web: {}\nprobes:\n  - name: home\n    type: browser\n    timeout: 60s\n    \
         steps:\n      - goto: \"{{{{ web }}}}/\"\n",
        shop.url()
    );
    let agent = start_agent(&scratch, &config).await;
    let run = agent.run("{}", Some(TOKEN)).await;
    assert_eq!(
        run["probes"][0]["result"],
        "pass",
        "{run:#}\n{}",
        agent.stderr()
    );

    let named = common::descendants(agent.pid());
    let tree: Vec<u32> = named.iter().map(|(pid, _)| *pid).collect();
    let driver: Vec<u32> = named
        .iter()
        .filter(|(_, comm)| comm.starts_with("chromedriver"))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(driver.len(), 1, "one chromedriver expected among {tree:?}");
    let listing = std::process::Command::new("ss")
        .args(["-H", "-ltnp"])
        .output()
        .expect("run ss");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let mut ours = Vec::new();
    for line in listing.lines() {
        let pids: Vec<u32> = line
            .split("pid=")
            .skip(1)
            .filter_map(|s| s.split(',').next()?.parse().ok())
            .collect();
        if pids.iter().any(|p| tree.contains(p)) {
            let local = line
                .split_whitespace()
                .nth(3)
                .unwrap_or_default()
                .to_string();
            ours.push((local, line.to_string()));
        }
    }
    assert!(
        ours.iter()
            .any(|(_, l)| driver.iter().any(|d| l.contains(&format!("pid={d},")))),
        "chromedriver is not listening?\n{listing}"
    );
    for (local, line) in &ours {
        assert!(
            local.starts_with("127.0.0.1:") || local.starts_with("[::1]:"),
            "a browser process listens beyond loopback: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_cannot_add_probes_or_targets() {
    let shop = common::shop().await;
    let (elsewhere, hits) = counting_target().await;
    let evil = elsewhere.url();
    let scratch = Scratch::new();
    let config = format!(
        "agent:\n  api_token: \"{{{{ env.PATROL_API_TOKEN }}}}\"\nvars:\n  api: {}\nprobes:\n  \
         - name: health\n    steps:\n      - request: {{ url: \"{{{{ api }}}}/api/health\" }}\n",
        shop.url()
    );
    let agent = start_agent(&scratch, &config).await;
    // A config elsewhere that a reload must not pick up.
    scratch.write(
        "evil.yaml",
        &format!("probes:\n  - name: evil\n    steps:\n      - request: {{ url: \"{evil}/\" }}\n"),
    );
    let evil_config = scratch.file("evil.yaml").display().to_string();
    let attempts: Vec<(&str, String)> = vec![
        ("/api/v1/runs", r#"{"probes":["evil"]}"#.into()),
        ("/api/v1/runs", format!(r#"{{"url":"{evil}/"}}"#)),
        ("/api/v1/runs", format!(r#"{{"target":"{evil}/"}}"#)),
        (
            "/api/v1/runs",
            format!(r#"{{"probes":["health"],"vars":{{"api":"{evil}"}}}}"#),
        ),
        (
            "/api/v1/runs",
            format!(
                r#"{{"probes":[{{"name":"evil","steps":[{{"request":{{"url":"{evil}/"}}}}]}}]}}"#
            ),
        ),
        ("/api/v1/runs", format!(r#"{{"config":"{evil_config}"}}"#)),
        ("/api/v1/verify", r#"{"probes":["evil"]}"#.into()),
        (
            "/api/v1/verify",
            format!(r#"{{"probes":["health"],"url":"{evil}/"}}"#),
        ),
        (
            "/hooks/flagger",
            format!(
                r#"{{"name":"api","namespace":"prod","metadata":{{"probes":"evil","url":"{evil}/"}}}}"#
            ),
        ),
    ];
    for (route, body) in &attempts {
        let reply = agent.post(route, body, Some(TOKEN)).await;
        assert!(
            (400..500).contains(&reply.status),
            "POST {route} {body} answered {}: {}",
            reply.status,
            reply.body
        );
    }
    // A reload re-reads the file the agent was started with, whatever the request says.
    let reply = agent
        .post(
            "/-/reload",
            &format!(r#"{{"config":"{evil_config}"}}"#),
            Some(TOKEN),
        )
        .await;
    reply.assert_status(200);
    let status = agent.get("/api/v1/probes").await.assert_status(200).json();
    assert_eq!(common::names(&status["probes"]), ["health"]);

    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request reached the other target"
    );
    let text = agent.metrics().await;
    assert_eq!(
        total(&text, "probe_runs_total"),
        0.0,
        "{}",
        family(&text, "probe_runs_total")
    );
    assert!(!text.contains("probe=\"evil\""), "{text}");
    let record: Value = agent.run(r#"{"probes":["health"]}"#, Some(TOKEN)).await;
    assert_eq!(record["probes"][0]["result"], "pass", "{record:#}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenless_agent_refuses_rebound_names_and_posts_from_web_pages() {
    let (target, hits) = counting_target().await;
    let scratch = Scratch::new();
    let config = format!(
        "probes:\n  - name: health\n    steps:\n      - name: get\n        \
         request: {{ url: \"{}/\" }}\n        assert: [ status == 200 ]\n",
        target.url()
    );
    let path = scratch.write("patrol.yaml", &config);
    let agent = Patrol::agent(&path)
        .current_dir(scratch.path())
        .env_remove("PATROL_API_TOKEN")
        .start()
        .await;
    let port = agent.addr.port();
    let rebound = format!("evil.example:{port}");
    let body = br#"{"probes":["health"]}"#.to_vec();
    let json = ("content-type", "application/json");

    // A page that pointed its own name at 127.0.0.1 can neither read nor post.
    for route in [
        "/",
        "/api/v1/probes",
        "/api/v1/probes/health/runs",
        "/metrics",
    ] {
        let reply = http(agent.addr, "GET", route, &[("host", &rebound)], Vec::new()).await;
        assert_eq!(reply.status, 403, "GET {route}: {}", reply.body);
        assert!(reply.body.contains("DNS rebinding"), "{}", reply.body);
        assert!(
            !reply.body.contains("health"),
            "GET {route} showed the probe"
        );
    }
    let reply = http(
        agent.addr,
        "POST",
        "/api/v1/runs",
        &[("host", &rebound), json],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    // A form or fetch from another origin, even addressed to 127.0.0.1, is refused.
    for origin in ["http://evil.example", "null", "http://127.0.0.1.nip.io"] {
        let reply = http(
            agent.addr,
            "POST",
            "/api/v1/runs",
            &[("origin", origin), json],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 403, "Origin {origin}: {}", reply.body);
        assert!(reply.body.contains("api_token"), "{}", reply.body);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused request probed");
    let text = agent.metrics().await;
    assert_eq!(total(&text, "probe_runs_total"), 0.0);

    // Loopback names, loopback origins and clients that send no Origin are served.
    let local = format!("localhost:{port}");
    let reply = http(
        agent.addr,
        "GET",
        "/api/v1/probes",
        &[("host", &local)],
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let origin = format!("http://localhost:{port}");
    let reply = http(
        agent.addr,
        "POST",
        "/api/v1/runs",
        &[("origin", &origin), json],
        body.clone(),
    )
    .await;
    assert!(reply.status < 300, "{}: {}", reply.status, reply.body);
    let record = agent.run(r#"{"probes":["health"]}"#, None).await;
    assert_eq!(record["probes"][0]["result"], "pass", "{record:#}");
    common::eventually(
        "both runs to reach the target",
        Duration::from_secs(10),
        async || (hits.load(Ordering::SeqCst) == 2).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_output_masks_a_secret_at_the_cut_and_escapes_control_characters() {
    let secret = "sek-straddle-5f1d2c";
    // A terminal escape sequence (set the window title), then 4,090 bytes in all, then the
    // secret across the 4 KiB cut.
    let body = format!("\u{1b}]0;owned\u{7}{}{secret}", "x".repeat(4080));
    let target = RawServer::start(move |mut stream: TcpStream| {
        let body = body.clone();
        async move {
            read_request_head(&mut stream).await;
            let reply = format!(
                "HTTP/1.1 500 Oops\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    })
    .await;
    let scratch = Scratch::new();
    let config = format!(
        "vars:\n  key: \"{{{{ env.PATROL_TEST_SECRET }}}}\"\nprobes:\n  - name: echo\n    steps:\n      \
         - name: get\n        request:\n          url: \"{}/\"\n          headers: {{ X-Key: \"{{{{ key }}}}\" }}\n        \
         assert: [ status == 200 ]\n",
        target.url()
    );
    let path = scratch.write("patrol.yaml", &config);
    let run = Patrol::new(["verify", "-v", "--config"])
        .arg_path(&path)
        .current_dir(scratch.path())
        .env("PATROL_TEST_SECRET", secret)
        .run()
        .await;
    run.assert_code(1);
    let shown = format!("{}{}", run.stdout, run.stderr);
    assert!(
        shown.contains("xxxxxxxx***"),
        "the cut body is not shown:\n{shown}"
    );
    assert!(
        !shown.contains("sek-"),
        "part of the secret is shown:\n{shown}"
    );
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "raw control characters reach the terminal"
    );
    assert!(
        shown.contains("\\u{1b}]0;owned\\u{7}xxx"),
        "the escape sequence is not shown escaped:\n{shown}"
    );
}
