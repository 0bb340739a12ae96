//! End-to-end tests of `patrol verify` and `patrol demo --once`: the real binary against the
//! reference shop on 127.0.0.1:0. Covers the example suite passing (exit code, JSON and JUnit
//! reports), every shop fault kind mapped to the right step result (fail, timeout, error) with
//! later steps skipped, retries, evaluation of every assertion, captures across steps, probe
//! selection with `--tag`/`--probe`, redirects and the cookie jar, and the response body cap.

mod common;

use citadel_shop::Fault;
use common::{Patrol, config_for, millis, names, parse_junit, probe, shop, step, verify};
use serde_json::Value;

/// The example suite's test account password, as the runbook has it.
const SMOKE_PASSWORD: &str = "Test1234!";

fn result(v: &Value) -> &str {
    v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no result in {v:#}"))
}

fn assert_skipped(probe: &Value, step_name: &str) {
    let s = step(probe, step_name);
    assert_eq!(result(s), "skipped", "{s:#}");
    assert!(
        s.get("status").is_none(),
        "a skipped step sends nothing: {s:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_suite_passes_against_the_shop() {
    let shop = shop().await;
    let scratch = common::Scratch::new();
    let example = common::workspace_root().join("examples/citadelbuy.yaml");
    let run = Patrol::new(["verify", "--config"])
        .arg_path(&example)
        .args(["--var", &format!("api={}", shop.url())])
        // The runbook's API suite; the browser and infra probes have tests of their own.
        .args(["--probe", "health", "--probe", "auth", "--probe", "catalog"])
        .args(["--probe", "search", "--probe", "checkout"])
        .args(["--report-json", "report.json", "--junit", "junit.xml"])
        .env("SMOKE_PASSWORD", SMOKE_PASSWORD)
        .current_dir(scratch.path())
        .run()
        .await;
    run.assert_code(0);

    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    let probes = report["probes"].as_array().expect("probes list");
    assert_eq!(
        names(&report["probes"]),
        ["health", "auth", "catalog", "search", "checkout"]
    );
    for p in probes {
        assert_eq!(result(p), "pass", "{p:#}");
        assert_eq!(p["attempts"], 1);
        for s in p["steps"].as_array().expect("steps") {
            assert_eq!(result(s), "pass", "{s:#}");
            assert!(
                s["status"]
                    .as_u64()
                    .is_some_and(|c| (200..300).contains(&c)),
                "{s:#}"
            );
            for phase in ["resolve", "connect", "tls", "processing", "transfer"] {
                assert!(
                    s["phases"][phase].as_f64().is_some(),
                    "phase {phase} missing: {s:#}"
                );
            }
        }
    }
    let summary = &report["summary"];
    assert_eq!(
        (summary["total"].as_u64(), summary["pass"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(summary["fail"], 0);
    assert_eq!(summary["error"], 0);
    assert_eq!(summary["timeout"], 0);

    // JUnit: one testsuite per probe, one testcase per step, nothing failed or skipped.
    let suites = parse_junit(&scratch.read("junit.xml"));
    assert_eq!(
        suites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        names(&report["probes"])
    );
    for (suite, p) in suites.iter().zip(probes) {
        let cases: Vec<&str> = suite.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cases, names(&p["steps"]), "testcases of {}", suite.name);
        for case in &suite.cases {
            assert_eq!(case.classname, suite.name);
            assert!(
                case.outcomes.is_empty(),
                "{}/{}: {:?}",
                suite.name,
                case.name,
                case.outcomes
            );
        }
        assert_eq!(suite.attribute("failures"), Some("0"), "{suite:?}");
        assert_eq!(suite.attribute("errors"), Some("0"), "{suite:?}");
    }

    assert!(
        run.stdout.contains("PASS  5 probes: 5 passed"),
        "{}",
        run.output()
    );
    assert!(
        !run.stdout.contains(SMOKE_PASSWORD),
        "the password leaked: {}",
        run.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_starts_its_own_shop_and_passes() {
    // Plain `patrol demo` keeps an agent running; `--once` verifies the example suite and exits.
    let run = Patrol::new(["demo", "--once"]).run().await;
    run.assert_code(0);
    let pass_lines = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("PASS "))
        .count();
    assert!(
        pass_lines >= 5,
        "one PASS line per probe expected:\n{}",
        run.output()
    );
    for name in ["health", "auth", "catalog", "search", "checkout"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("PASS") && l.split_whitespace().nth(1) == Some(name)),
            "no PASS line for {name}:\n{}",
            run.output()
        );
    }
    // The API probes, plus the browser probes where Chromium is installed (CI installs it).
    let browser = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new("/usr/bin/chromedriver").exists();
    let expected = if browser {
        "PASS  8 probes: 8 passed"
    } else {
        "PASS  5 probes: 5 passed"
    };
    assert!(run.stdout.contains(expected), "{}", run.output());
    assert!(!run.stdout.contains("FAIL"), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_fails_the_step_and_skips_the_rest() {
    let shop = shop().await;
    shop.faults().set(Fault {
        status: Some(500),
        ..Fault::new("/api/products")
    });
    let v = verify(
        &shop,
        r#"
  - name: catalog
    steps:
      - name: list_products
        request: { url: "{{ api }}/api/products" }
        assert:
          - status == 200
      - name: categories
        request: { url: "{{ api }}/api/categories" }
        assert:
          - status == 200
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let p = probe(&v.report, "catalog");
    assert_eq!(result(p), "fail");
    let s = step(p, "list_products");
    assert_eq!(result(s), "fail");
    assert_eq!(s["status"], 500);
    assert_eq!(s["asserts"][0]["expr"], "status == 200");
    assert_eq!(s["asserts"][0]["result"], "fail");
    assert_eq!(s["asserts"][0]["actual"], "500");
    assert_eq!(s["asserts"][0]["expected"], "== 200");
    assert_skipped(p, "categories");
    assert_eq!(v.report["summary"]["fail"], 1);

    let suites = parse_junit(&v.scratch.read("junit.xml"));
    let outcomes: Vec<_> = suites[0].cases.iter().map(|c| c.outcomes.clone()).collect();
    assert_eq!(
        outcomes,
        [
            vec![(
                "failure".to_string(),
                "status == 200: actual 500, expected == 200".to_string()
            )],
            vec![(
                "skipped".to_string(),
                "skipped: an earlier step did not pass".to_string()
            )],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_fails_a_duration_assertion() {
    let shop = shop().await;
    shop.faults().set(Fault {
        latency_ms: 300,
        ..Fault::new("/api/categories")
    });
    let v = verify(
        &shop,
        r#"
  - name: categories
    steps:
      - name: categories
        request: { url: "{{ api }}/api/categories" }
        assert:
          - status == 200
          - duration < 200ms
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let s = step(probe(&v.report, "categories"), "categories");
    assert_eq!(result(s), "fail", "{s:#}");
    assert_eq!(s["asserts"][0]["result"], "pass");
    let latency = &s["asserts"][1];
    assert_eq!(latency["result"], "fail");
    assert_eq!(latency["expected"], "< 200ms");
    let actual = latency["actual"].as_str().expect("the measured duration");
    assert!(
        millis(actual) >= 300.0,
        "actual {actual} should include the 300ms fault"
    );
    assert!(
        s["duration_seconds"].as_f64().is_some_and(|d| d >= 0.3),
        "{s:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_fails_a_jsonpath_assertion() {
    let shop = shop().await;
    shop.faults().set(Fault {
        malformed_json: true,
        ..Fault::new("/api/search")
    });
    let v = verify(
        &shop,
        r#"
  - name: search
    steps:
      - name: search_laptop
        request:
          url: "{{ api }}/api/search"
          query: { q: laptop }
        assert:
          - status == 200
          - jsonpath "$.total" >= 1
      - name: health
        request: { url: "{{ api }}/api/health" }
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let p = probe(&v.report, "search");
    let s = step(p, "search_laptop");
    assert_eq!(result(s), "fail", "{s:#}");
    assert_eq!(s["status"], 200);
    let jp = &s["asserts"][1];
    assert_eq!(jp["result"], "fail", "{jp:#}");
    assert!(
        jp["actual"].is_null(),
        "nothing can be found in a broken body: {jp:#}"
    );
    let message = jp["message"].as_str().unwrap_or_default();
    assert!(message.contains("not valid JSON"), "{jp:#}");
    assert_skipped(p, "health");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_times_out_at_the_step_or_probe_timeout() {
    let shop = shop().await;
    shop.faults().set(Fault {
        hang: true,
        ..Fault::new("/api/health/ready")
    });
    let v = verify(
        &shop,
        r#"
  - name: step_timeout
    timeout: 30s
    steps:
      - name: ready
        timeout: 1s
        request: { url: "{{ api }}/api/health/ready" }
      - name: health
        request: { url: "{{ api }}/api/health" }
  - name: probe_timeout
    timeout: 1s
    steps:
      - name: ready
        request: { url: "{{ api }}/api/health/ready" }
      - name: health
        request: { url: "{{ api }}/api/health" }
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    for name in ["step_timeout", "probe_timeout"] {
        let p = probe(&v.report, name);
        assert_eq!(result(p), "timeout", "{p:#}");
        let s = step(p, "ready");
        assert_eq!(result(s), "timeout", "{s:#}");
        let waited = s["duration_seconds"].as_f64().expect("step duration");
        assert!(
            (0.9..5.0).contains(&waited),
            "{name}: the 1s timeout took {waited}s"
        );
        assert!(
            s["error"].as_str().is_some_and(|e| e.contains("timed out")),
            "{s:#}"
        );
        assert_skipped(p, "health");
    }
    assert_eq!(v.report["summary"]["timeout"], 2);
    // Both probes run at once and give up after 1s; the shop never answers.
    assert!(
        v.run.elapsed.as_secs_f64() < 5.0,
        "the run took {:?}",
        v.run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_is_an_error_naming_the_reset() {
    let shop = shop().await;
    shop.faults().set(Fault {
        reset: true,
        ..Fault::new("/api/health/detailed")
    });
    let v = verify(
        &shop,
        r#"
  - name: health
    steps:
      - name: detailed
        request: { url: "{{ api }}/api/health/detailed" }
        assert:
          - status == 200
      - name: ready
        request: { url: "{{ api }}/api/health/ready" }
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let p = probe(&v.report, "health");
    assert_eq!(result(p), "error");
    let s = step(p, "detailed");
    assert_eq!(result(s), "error", "{s:#}");
    assert!(s.get("status").is_none(), "no response arrived: {s:#}");
    let error = s["error"].as_str().expect("an error message");
    assert!(error.to_lowercase().contains("reset"), "{error}");
    assert_skipped(p, "ready");
    assert_eq!(v.report["summary"]["error"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_and_unresolvable_hosts_are_errors() {
    let shop = shop().await;
    let port = common::closed_port();
    let v = verify(
        &shop,
        &format!(
            r#"
  - name: refused
    steps:
      - name: nobody_listens
        request: {{ url: "http://127.0.0.1:{port}/api/health" }}
  - name: unresolvable
    steps:
      - name: no_such_host
        request: {{ url: "http://patrol-e2e.invalid/api/health" }}
  - name: reachable
    steps:
      - name: health
        request: {{ url: "{{{{ api }}}}/api/health" }}
"#
        ),
        &[],
    )
    .await;
    v.run.assert_code(1);
    let cases = [
        ("refused", "nobody_listens", "refused"),
        ("unresolvable", "no_such_host", "resolve"),
    ];
    for (probe_name, step_name, word) in cases {
        let p = probe(&v.report, probe_name);
        assert_eq!(result(p), "error", "{p:#}");
        let s = step(p, step_name);
        assert_eq!(result(s), "error", "{s:#}");
        let error = s["error"].as_str().expect("an error message");
        assert!(
            error.contains(word),
            "{probe_name}: `{error}` should mention `{word}`"
        );
    }
    assert_eq!(result(probe(&v.report, "reachable")), "pass");
    let summary = &v.report["summary"];
    assert_eq!(
        (summary["error"].as_u64(), summary["pass"].as_u64()),
        (Some(2), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_recorded_with_the_first_attempt() {
    let shop = shop().await;
    shop.faults().set(Fault {
        status: Some(500),
        error_rate: 1.0,
        ..Fault::new("/api/products")
    });
    let v = verify(
        &shop,
        r#"
  - name: catalog
    retries: 2
    retry_backoff: 10ms
    steps:
      - name: list_products
        request: { url: "{{ api }}/api/products" }
        assert:
          - status == 200
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let p = probe(&v.report, "catalog");
    assert_eq!(result(p), "fail");
    assert_eq!(p["attempts"], 3);
    assert_eq!(p["first_attempt"], "fail");
    let retried = p["retried"].as_array().expect("the earlier attempts");
    assert_eq!(retried.len(), 2, "{p:#}");
    for attempt in retried {
        assert_eq!(result(attempt), "fail");
        assert_eq!(attempt["steps"][0]["status"], 500);
    }
    assert_eq!(v.report["summary"]["flaky"], 0);
    assert!(
        v.run.stdout.contains("(3 attempts, first fail)"),
        "{}",
        v.run.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_assertion_of_a_step_is_evaluated_and_reported() {
    let shop = shop().await;
    let v = verify(
        &shop,
        r#"
  - name: health
    steps:
      - name: health
        request: { url: "{{ api }}/api/health" }
        assert:
          - status == 201
          - jsonpath "$.status" == "down"
          - duration < 900ms
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let s = step(probe(&v.report, "health"), "health");
    assert_eq!(result(s), "fail");
    let asserts: Vec<(&str, &str, &str, &str)> = s["asserts"]
        .as_array()
        .expect("asserts")
        .iter()
        .map(|a| {
            let field = |k: &str| a[k].as_str().unwrap_or("<missing>");
            (
                field("expr"),
                field("result"),
                field("actual"),
                field("expected"),
            )
        })
        .map(|(e, r, a, x)| (e, r, if r == "pass" { "" } else { a }, x))
        .collect();
    assert_eq!(
        asserts,
        [
            ("status == 201", "fail", "200", "== 201"),
            (
                "jsonpath \"$.status\" == \"down\"",
                "fail",
                "\"ok\"",
                "== \"down\""
            ),
            ("duration < 900ms", "pass", "", "< 900ms"),
        ]
    );
    // Both failures show on the console, with actual and expected.
    for line in [
        "x  status == 201",
        "actual:   200",
        "x  jsonpath \"$.status\" == \"down\"",
        "actual:   \"ok\"",
    ] {
        assert!(
            v.run.stdout.contains(line),
            "missing `{line}`:\n{}",
            v.run.output()
        );
    }
    let suites = parse_junit(&v.scratch.read("junit.xml"));
    assert_eq!(
        suites[0].cases[0].outcomes,
        [(
            "failure".to_string(),
            "status == 201: actual 200, expected == 201 (and 1 more)".to_string()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_flow_into_later_urls_and_headers() {
    let shop = shop().await;
    let v = verify(
        &shop,
        r#"
  - name: checkout
    steps:
      - name: pick_product
        request: { url: "{{ api }}/api/products" }
        capture:
          product: jsonpath "$.products[2].id"
      - name: product_detail
        request: { url: "{{ api }}/api/products/{{ product }}" }
        assert:
          - status == 200
          - jsonpath "$.id" == "3"
      - name: login
        request:
          method: POST
          url: "{{ api }}/api/auth/login"
          json: { email: test@citadelbuy.com, password: "Test1234!" }
        capture:
          token: jsonpath "$.token"
      - name: add_to_cart
        request:
          method: POST
          url: "{{ api }}/api/cart/items"
          headers: { Authorization: "Bearer {{ token }}" }
          json: { productId: "{{ product }}", quantity: 2 }
        assert:
          - status in [200, 201]
      - name: view_cart
        request:
          url: "{{ api }}/api/cart"
          headers: { Authorization: "Bearer {{ token }}" }
        assert:
          - status == 200
          - jsonpath "$.items[*].productId" contains "3"
  - name: no_token
    steps:
      - name: view_cart
        request: { url: "{{ api }}/api/cart" }
        assert:
          - status == 200
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let p = probe(&v.report, "checkout");
    assert_eq!(result(p), "pass", "{p:#}");
    assert_eq!(step(p, "view_cart")["status"], 200);
    // The same cart request without the captured token is refused, so the pass above is the
    // capture's doing.
    let control = step(probe(&v.report, "no_token"), "view_cart");
    assert_eq!(
        (result(control), control["status"].as_u64()),
        ("fail", Some(401))
    );
}

/// Three probes with overlapping tags, for the selection tests.
const TAGGED: &str = r#"
  - name: health
    tags: [smoke, health]
    steps:
      - request: { url: "{{ api }}/api/health" }
  - name: catalog
    tags: [smoke, catalog]
    steps:
      - request: { url: "{{ api }}/api/products" }
  - name: search
    tags: [catalog]
    steps:
      - request: { url: "{{ api }}/api/search?q=laptop" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_probe_names_select_probes() {
    let shop = shop().await;
    let cases: [(&[&str], &[&str]); 5] = [
        (&[], &["health", "catalog", "search"]),
        (&["--tag", "health"], &["health"]),
        (&["--tag", "catalog"], &["catalog", "search"]),
        (&["--probe", "search"], &["search"]),
        (
            &["--tag", "health", "--probe", "search"],
            &["health", "search"],
        ),
    ];
    for (args, expected) in cases {
        let v = verify(&shop, TAGGED, args).await;
        v.run.assert_code(0);
        assert_eq!(
            names(&v.report["probes"]),
            expected,
            "patrol verify {args:?}"
        );
        assert_eq!(v.report["summary"]["total"], expected.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_probe_or_tag_is_a_usage_error() {
    let shop = shop().await;
    let scratch = common::Scratch::new();
    let config = scratch.write("patrol.yaml", &config_for(&shop, TAGGED));
    let run = Patrol::new(["verify", "--config"])
        .arg_path(&config)
        .args(["--probe", "serach"])
        .run()
        .await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("no probe named `serach`")
            && run.stderr.contains("did you mean `search`?"),
        "{}",
        run.output()
    );
    assert!(run.stdout.is_empty(), "nothing may run: {}", run.output());

    let run = Patrol::new(["verify", "--config"])
        .arg_path(&config)
        .args(["--tag", "nightly"])
        .run()
        .await;
    run.assert_code(2);
    assert!(run.stderr.contains("nightly"), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_unless_disabled_and_cookies_carry_over() {
    let shop = shop().await;
    let v = verify(
        &shop,
        r#"
  - name: no_follow
    follow_redirects: false
    steps:
      - name: logout
        request: { url: "{{ api }}/logout" }
        assert:
          - status == 303
          - header "Location" == "/"
  - name: follow
    steps:
      - name: cart_needs_login
        request: { url: "{{ api }}/cart" }
        assert:
          - status == 200
          - body contains "id=\"login-form\""
  - name: limit
    max_redirects: 0
    steps:
      - name: logout
        request: { url: "{{ api }}/logout" }
  - name: session
    steps:
      - name: login
        request:
          method: POST
          url: "{{ api }}/login"
          form: { email: test@citadelbuy.com, password: "Test1234!" }
        assert:
          - status == 200
      - name: cart
        request: { url: "{{ api }}/cart" }
        assert:
          - status == 200
          - body contains "Your cart"
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let s = step(probe(&v.report, "no_follow"), "logout");
    assert_eq!(
        (result(s), s["status"].as_u64()),
        ("pass", Some(303)),
        "{s:#}"
    );
    // /cart without a session answers 303 to /login; the step ends on the login page.
    let s = step(probe(&v.report, "follow"), "cart_needs_login");
    assert_eq!(
        (result(s), s["status"].as_u64()),
        ("pass", Some(200)),
        "{s:#}"
    );
    let s = step(probe(&v.report, "limit"), "logout");
    assert_eq!(result(s), "error", "{s:#}");
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many redirects")),
        "{s:#}"
    );
    // The form login's 303 sets the session cookie; the jar sends it on the next step.
    let p = probe(&v.report, "session");
    assert_eq!(result(p), "pass", "{p:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_is_an_error() {
    let shop = shop().await;
    let v = verify(
        &shop,
        r#"
  - name: capped
    max_body: 100
    steps:
      - name: list_products
        request: { url: "{{ api }}/api/products" }
  - name: uncapped
    steps:
      - name: list_products
        request: { url: "{{ api }}/api/products" }
"#,
        &[],
    )
    .await;
    v.run.assert_code(1);
    let s = step(probe(&v.report, "capped"), "list_products");
    assert_eq!(result(s), "error", "{s:#}");
    let error = s["error"].as_str().expect("an error message");
    assert!(error.contains("exceeds the limit of 100 bytes"), "{error}");
    assert_eq!(result(probe(&v.report, "uncapped")), "pass");
}
