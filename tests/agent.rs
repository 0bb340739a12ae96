//! End-to-end tests of the agent, `patrol run`: the real binary as a child process (killed on
//! drop) on `127.0.0.1:0`, probing the reference shop in the test's process. Covers schedules
//! firing and on-demand probes waiting for a trigger; exact metric values after a scripted
//! sequence of pass, fail and error runs; config reload on SIGHUP and `POST /-/reload` (good and
//! refused, and the series of removed probes and renamed steps going); draining runs in flight on
//! SIGTERM within the grace period; the bearer token on POSTs, refusing a public listen address
//! without one, and bad request bodies; the status page (one section per probe, badges, failing
//! assertions, escaping); the probe status and run history JSON; and secrets staying out of every
//! endpoint and the log.

mod common;

use std::time::{Duration, Instant};

use citadel_shop::{Fault, Shop};
use common::{Agent, Patrol, Scratch, config_for, eventually, http, metric, shop};
use serde_json::{Value, json};

/// The API token the agents under test read from `PATROL_API_TOKEN`.
const TOKEN: &str = "tok-agent-e2e-51c9a0";

/// The `agent:` lines that make POSTs need [`TOKEN`].
const WITH_TOKEN: &str = "  api_token: \"{{ env.PATROL_API_TOKEN }}\"\n";

/// A config with `agent` (the lines under `agent:`, indented; empty for none), the var `api`
/// pointing at the shop, and `probes` (indented as under `probes:`).
fn config(shop: &Shop, agent: &str, probes: &str) -> String {
    let agent = if agent.is_empty() {
        String::new()
    } else {
        format!("agent:\n{agent}")
    };
    format!("{agent}{}", config_for(shop, probes))
}

/// `patrol run` on `config` (written to `patrol.yaml` in `scratch`, the working directory) with
/// `PATROL_API_TOKEN` set to [`TOKEN`].
fn agent(scratch: &Scratch, config: &str) -> Patrol {
    let path = scratch.write("patrol.yaml", config);
    Patrol::agent(&path)
        .current_dir(scratch.path())
        .env("PATROL_API_TOKEN", TOKEN)
}

/// Runs of `probe` so far: `probe_runs_total` summed over results.
fn runs_total(text: &str, probe: &str) -> f64 {
    let label = format!("probe=\"{probe}\"");
    text.lines()
        .filter(|l| l.starts_with("probe_runs_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The lines of series labelled `probe="<probe>"`.
fn series_of(text: &str, probe: &str) -> Vec<String> {
    let label = format!("probe=\"{probe}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(String::from)
        .collect()
}

/// Fails the test unless `series` has exactly `expected`, showing that metric's lines.
#[track_caller]
fn assert_metric(text: &str, series: &str, expected: f64) {
    let name = series.split('{').next().unwrap_or(series);
    let family: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
    assert_eq!(
        metric(text, series),
        Some(expected),
        "{series}; the family:\n{}",
        family.join("\n")
    );
}

/// `name` of every probe in `GET /api/v1/probes`.
async fn probe_names(agent: &Agent) -> Vec<String> {
    let status = agent.get("/api/v1/probes").await.assert_status(200).json();
    common::names(&status["probes"])
}

/// The first log line containing every one of `parts`, and its position in the log.
fn log_line<'l>(log: &'l str, parts: &[&str]) -> (usize, &'l str) {
    log.lines()
        .enumerate()
        .find(|(_, l)| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no log line with {parts:?} in:\n{log}"))
}

/// The `name=<number>` field of a log line.
fn log_field(line: &str, name: &str) -> u64 {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no numeric `{name}` in `{line}`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_probes_fire_and_on_demand_probes_wait_for_a_trigger() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = agent(
        &scratch,
        &config_for(
            &shop,
            r#"
  - name: ticking
    schedule: { every: 1s }
    steps:
      - name: health
        request: { url: "{{ api }}/api/health" }
        assert: [ status == 200 ]
  - name: on_demand
    steps:
      - name: health
        request: { url: "{{ api }}/api/health" }
        assert: [ status == 200 ]
"#,
        ),
    )
    .start()
    .await;

    let text = eventually(
        "3 scheduled runs of `ticking`",
        Duration::from_millis(4500),
        async || {
            let text = agent.metrics().await;
            (runs_total(&text, "ticking") >= 3.0).then_some(text)
        },
    )
    .await;
    // Once a second, not in bursts: at most one run per started second since the spawn.
    let ticks = runs_total(&text, "ticking");
    let most = agent.spawned.elapsed().as_secs_f64().ceil() + 1.0;
    assert!(ticks <= most, "{ticks} runs in under {most} s:\n{text}");
    assert_metric(
        &text,
        r#"probe_runs_total{location="local",probe="ticking",result="pass",type="http"}"#,
        ticks,
    );
    // Seconds went by, and the probe without a schedule never ran.
    assert_eq!(
        series_of(&text, "on_demand"),
        Vec::<String>::new(),
        "on_demand ran untriggered"
    );

    let run = agent.run(r#"{"probes":["on_demand"]}"#, None).await;
    assert_eq!(run["requested"], json!(["on_demand"]), "{run:#}");
    assert_eq!(run["probes"][0]["name"], "on_demand", "{run:#}");
    assert_eq!(run["probes"][0]["result"], "pass", "{run:#}");
    let text = agent.metrics().await;
    assert_eq!(runs_total(&text, "on_demand"), 1.0, "{text}");
    assert_metric(
        &text,
        r#"probe_runs_total{location="local",probe="on_demand",result="pass",type="http"}"#,
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_exact_values_after_a_scripted_sequence_of_results() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = agent(
        &scratch,
        &config(
            &shop,
            "  location: lab\n",
            r#"
  - name: catalog
    retries: 0
    steps:
      - name: products
        request: { url: "{{ api }}/api/products" }
        assert: [ status == 200 ]
      - name: categories
        request: { url: "{{ api }}/api/categories" }
        assert: [ status == 200 ]
"#,
        ),
    )
    .start()
    .await;

    let probe = r#"{location="lab",probe="catalog",type="http"}"#;
    let runs = |result: &str| {
        format!(
            r#"probe_runs_total{{location="lab",probe="catalog",result="{result}",type="http"}}"#
        )
    };
    let step = |name: &str, step: &str| {
        format!(r#"{name}{{location="lab",probe="catalog",step="{step}",type="http"}}"#)
    };
    let status = |step: &str| {
        format!(r#"probe_http_status_code{{location="lab",probe="catalog",step="{step}"}}"#)
    };
    let products_fault = |fault: Fault| Fault {
        route: "/api/products".to_string(),
        ..fault
    };
    let script = [
        (None, "pass"),
        (None, "pass"),
        (
            Some(products_fault(Fault {
                status: Some(500),
                ..Fault::default()
            })),
            "fail",
        ),
        (
            Some(products_fault(Fault {
                reset: true,
                ..Fault::default()
            })),
            "error",
        ),
        (None, "pass"),
    ];
    for (n, (fault, expected)) in script.into_iter().enumerate() {
        shop.faults().clear();
        if let Some(fault) = fault {
            shop.faults().set(fault);
        }
        let run = agent.run(r#"{"probes":["catalog"]}"#, None).await;
        assert_eq!(
            run["probes"][0]["result"],
            expected,
            "run {}: {run:#}",
            n + 1
        );
        let text = agent.metrics().await;
        match expected {
            "fail" => {
                assert_metric(&text, &format!("probe_success{probe}"), 0.0);
                assert_metric(&text, &format!("probe_first_attempt_success{probe}"), 0.0);
                assert_metric(&text, &status("products"), 500.0);
                assert_metric(&text, &step("probe_step_success", "products"), 0.0);
                // Skipped after the failure: not successful, and not observed.
                assert_metric(&text, &step("probe_step_success", "categories"), 0.0);
                assert_metric(
                    &text,
                    &step("probe_step_duration_seconds_count", "categories"),
                    2.0,
                );
            }
            "error" => {
                assert_metric(&text, &format!("probe_success{probe}"), 0.0);
                // No response at all.
                assert_metric(&text, &status("products"), 0.0);
                assert_metric(&text, &step("probe_step_success", "products"), 0.0);
            }
            _ => assert_metric(&text, &format!("probe_success{probe}"), 1.0),
        }
    }

    let text = agent.metrics().await;
    for (result, count) in [
        ("pass", 3.0),
        ("fail", 1.0),
        ("error", 1.0),
        ("timeout", 0.0),
    ] {
        assert_metric(&text, &runs(result), count);
    }
    assert_metric(&text, &format!("probe_success{probe}"), 1.0);
    assert_metric(&text, &format!("probe_first_attempt_success{probe}"), 1.0);
    assert_metric(
        &text,
        &format!("probe_all_duration_seconds_count{probe}"),
        5.0,
    );
    assert_metric(&text, &step("probe_step_success", "products"), 1.0);
    assert_metric(&text, &step("probe_step_success", "categories"), 1.0);
    assert_metric(&text, &status("products"), 200.0);
    assert_metric(&text, &status("categories"), 200.0);
    // products ran in all five runs (the reset one included); categories only in the passes.
    assert_metric(
        &text,
        &step("probe_step_duration_seconds_count", "products"),
        5.0,
    );
    assert_metric(
        &text,
        &step("probe_step_duration_seconds_count", "categories"),
        3.0,
    );
    assert_metric(&text, "patrol_runs_in_flight", 0.0);
    let last = metric(&text, &format!("probe_duration_seconds{probe}")).unwrap_or_default();
    assert!(last > 0.0, "probe_duration_seconds {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_config_and_refuses_a_bad_one() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let probe = |name: &str, schedule: &str| {
        format!(
            r#"
  - name: {name}
    {schedule}
    steps:
      - name: health
        request: {{ url: "{{{{ api }}}}/api/health" }}
        assert: [ status == 200 ]"#
        )
    };
    let ticking = probe("keep", "schedule: { every: 1s }");
    let v1 = config(
        &shop,
        WITH_TOKEN,
        &format!("{ticking}{}\n", probe("dropped", "tags: [old]")),
    );
    let v2 = config(
        &shop,
        WITH_TOKEN,
        &format!("{ticking}{}\n", probe("added", "tags: [new]")),
    );
    let bad = config(
        &shop,
        WITH_TOKEN,
        &format!(
            "{}{}\n",
            probe("keep", "shedule: { every: 1s }"),
            probe("added", "tags: [new]")
        ),
    );
    let mut agent = agent(&scratch, &v1).start().await;
    let run = agent.run("{}", Some(TOKEN)).await;
    assert_eq!(
        common::names(&run["probes"]),
        ["keep", "dropped"],
        "{run:#}"
    );
    let text = agent.metrics().await;
    assert!(!series_of(&text, "dropped").is_empty(), "{text}");
    // The start-up load counts as a successful one.
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="success"}"#,
        1.0,
    );
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="failure"}"#,
        0.0,
    );

    // A good config on SIGHUP: `added` appears, `dropped` and its series go.
    scratch.write("patrol.yaml", &v2);
    agent.signal("HUP").await;
    // Counting the reload is its last step.
    let text = eventually("the reload", Duration::from_secs(5), async || {
        let text = agent.metrics().await;
        (metric(&text, r#"patrol_config_reload_total{result="success"}"#) == Some(2.0))
            .then_some(text)
    })
    .await;
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="failure"}"#,
        0.0,
    );
    assert_eq!(probe_names(&agent).await, ["keep", "added"]);
    assert_eq!(
        series_of(&text, "dropped"),
        Vec::<String>::new(),
        "series of the removed probe are left"
    );
    agent
        .get("/api/v1/probes/dropped/runs")
        .await
        .assert_status(404);
    agent
        .post("/api/v1/runs", r#"{"probes":["dropped"]}"#, Some(TOKEN))
        .await
        .assert_status(404);
    let run = agent.run(r#"{"tags":["new"]}"#, Some(TOKEN)).await;
    assert_eq!(common::names(&run["probes"]), ["added"], "{run:#}");
    assert_eq!(run["probes"][0]["result"], "pass", "{run:#}");

    // A bad config on SIGHUP is refused and the old one keeps running.
    scratch.write("patrol.yaml", &bad);
    agent.signal("HUP").await;
    let text = eventually("the refused reload", Duration::from_secs(5), async || {
        let text = agent.metrics().await;
        (metric(&text, r#"patrol_config_reload_total{result="failure"}"#) == Some(1.0))
            .then_some(text)
    })
    .await;
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="success"}"#,
        2.0,
    );
    assert_eq!(probe_names(&agent).await, ["keep", "added"]);
    let before = runs_total(&text, "keep");
    eventually(
        "`keep` to go on running on its schedule",
        Duration::from_secs(3),
        async || (runs_total(&agent.metrics().await, "keep") > before).then_some(()),
    )
    .await;

    // The same through the API: 400 with every error.
    let reply = agent.post("/-/reload", "", Some(TOKEN)).await;
    reply.assert_status(400);
    let body = reply.json();
    assert_eq!(body["result"], "failure", "{body:#}");
    let errors = body["errors"].as_str().unwrap_or_default();
    assert!(errors.contains("unknown key `shedule`"), "{body:#}");
    assert!(errors.contains("did you mean `schedule`?"), "{body:#}");
    let text = agent.metrics().await;
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="failure"}"#,
        2.0,
    );
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="success"}"#,
        2.0,
    );
    assert_eq!(probe_names(&agent).await, ["keep", "added"]);

    // Fixed, the API reload succeeds.
    scratch.write("patrol.yaml", &v2);
    let reply = agent.post("/-/reload", "", Some(TOKEN)).await;
    reply.assert_status(200);
    assert_eq!(
        reply.json(),
        json!({"result": "success", "probes": 2, "restart_needed": []})
    );
    assert_metric(
        &agent.metrics().await,
        r#"patrol_config_reload_total{result="success"}"#,
        3.0,
    );
    agent.signal("TERM").await;
    agent.wait(Duration::from_secs(10)).await.assert_code(0);
}

/// A config with one on-demand probe `slow` whose only request the shop delays by `latency_ms`.
fn slow_probe(shop: &Shop, latency_ms: u64) -> String {
    shop.faults().set(Fault {
        latency_ms,
        ..Fault::new("/api/health/detailed")
    });
    config_for(
        shop,
        r#"
  - name: slow
    timeout: 10s
    steps:
      - name: detailed
        request: { url: "{{ api }}/api/health/detailed" }
        assert: [ status == 200 ]
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_drops_the_series_of_renamed_steps() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let flow = |second: &str| {
        config(
            &shop,
            WITH_TOKEN,
            &format!(
                r#"
  - name: flow
    steps:
      - name: health
        request: {{ url: "{{{{ api }}}}/api/health" }}
        assert: [ status == 200 ]
      - name: {second}
        request: {{ url: "{{{{ api }}}}/api/health" }}
        assert: [ status == 200 ]
"#
            ),
        )
    };
    let agent = agent(&scratch, &flow("products")).start().await;
    agent.run("{}", Some(TOKEN)).await;
    let step_lines = |text: &str, step: &str| {
        let label = format!("step=\"{step}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let before = agent.metrics().await;
    assert!(!step_lines(&before, "products").is_empty(), "{before}");

    // `products` becomes `catalog`: its series go at the reload, the other step's stay as they
    // were, and the new name's appear with its first run.
    scratch.write("patrol.yaml", &flow("catalog"));
    agent
        .post("/-/reload", "", Some(TOKEN))
        .await
        .assert_status(200);
    let after = agent.metrics().await;
    assert_eq!(step_lines(&after, "products"), Vec::<String>::new());
    assert_eq!(step_lines(&after, "health"), step_lines(&before, "health"));
    assert!(step_lines(&after, "catalog").is_empty(), "{after}");
    agent.run("{}", Some(TOKEN)).await;
    let text = agent.metrics().await;
    assert_metric(
        &text,
        r#"probe_step_success{location="local",probe="flow",step="catalog",type="http"}"#,
        1.0,
    );
    assert_eq!(step_lines(&text, "products"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_runs_in_flight_finish_before_exiting() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let mut agent = agent(&scratch, &slow_probe(&shop, 1500))
        .env("PATROL_LOG", "info")
        .start()
        .await;
    let triggered = Instant::now();
    agent.start_run(r#"{"probes":["slow"]}"#, None).await;
    eventually(
        "the run to be in flight",
        Duration::from_secs(2),
        async || {
            (metric(&agent.metrics().await, "patrol_runs_in_flight") == Some(1.0)).then_some(())
        },
    )
    .await;
    agent.signal("TERM").await;
    let run = agent.wait(Duration::from_secs(15)).await;
    let exited = Instant::now();
    run.assert_code(0);
    assert!(
        exited - triggered >= Duration::from_millis(1400),
        "exited {:?} after the trigger, before the 1.5 s run could finish",
        exited - triggered
    );
    // The log tells the order: shutdown began, the run then completed and passed, and only
    // then did the agent stop, with nothing cancelled.
    let log = &run.stderr;
    let (draining, _) = log_line(log, &["Shutting down"]);
    let (completed, line) = log_line(log, &["Probe run completed.", "probe=slow"]);
    assert!(line.contains("result=pass"), "{line}");
    assert!(log_field(line, "duration_ms") >= 1400, "{line}");
    let (stopped, line) = log_line(log, &["Agent stopped."]);
    assert_eq!(log_field(line, "cancelled"), 0, "{line}");
    assert!(
        draining < completed && completed < stopped,
        "expected shutdown, run completed, agent stopped in that order:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_runs_still_going_after_the_grace_period() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let mut agent = agent(&scratch, &slow_probe(&shop, 3000))
        .args(["--grace", "200ms"])
        .env("PATROL_LOG", "info")
        .start()
        .await;
    agent.start_run(r#"{"probes":["slow"]}"#, None).await;
    eventually(
        "the run to be in flight",
        Duration::from_secs(2),
        async || {
            (metric(&agent.metrics().await, "patrol_runs_in_flight") == Some(1.0)).then_some(())
        },
    )
    .await;
    let signalled = Instant::now();
    agent.signal("TERM").await;
    let run = agent.wait(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    run.assert_code(0);
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} to exit with a 200 ms grace period (the run needs 3 s)"
    );
    let log = &run.stderr;
    log_line(
        log,
        &["Runs still in flight after the grace period were cancelled."],
    );
    let (_, line) = log_line(log, &["Probe run completed.", "probe=slow"]);
    assert!(line.contains("result=error"), "{line}");
    let (_, line) = log_line(log, &["Agent stopped."]);
    assert_eq!(log_field(line, "cancelled"), 1, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_need_the_bearer_token_and_gets_do_not() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = agent(
        &scratch,
        &config(
            &shop,
            WITH_TOKEN,
            r#"
  - name: health
    steps:
      - name: health
        request: { url: "{{ api }}/api/health" }
"#,
        ),
    )
    .start()
    .await;

    let wrong_token = format!("Bearer {TOKEN}x");
    let bare_token = TOKEN.to_string();
    let refused: [(&str, Option<&str>); 4] = [
        ("no Authorization", None),
        ("a wrong token", Some("Bearer wrong-token")),
        ("the token with a suffix", Some(&wrong_token)),
        ("the token without `Bearer `", Some(&bare_token)),
    ];
    for (what, authorization) in refused {
        for path in ["/api/v1/runs", "/-/reload"] {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(authorization.map(|a| ("authorization", a)));
            let reply = http(agent.addr, "POST", path, &headers, b"{}".to_vec()).await;
            assert_eq!(reply.status, 401, "POST {path} with {what}: {}", reply.body);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{path}");
            let error = reply.json()["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(error.contains("bearer token"), "{error}");
            assert!(!reply.body.contains(TOKEN), "the token is echoed: {error}");
        }
    }
    // Nothing was run or reloaded.
    let text = agent.metrics().await;
    assert_eq!(series_of(&text, "health"), Vec::<String>::new());
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="success"}"#,
        1.0,
    );

    // GETs need no token.
    for path in [
        "/",
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/v1/probes",
        "/api/v1/probes/health/runs",
    ] {
        agent.get(path).await.assert_status(200);
    }

    // With the token.
    let run = agent.run(r#"{"probes":["health"]}"#, Some(TOKEN)).await;
    assert_eq!(run["probes"][0]["result"], "pass", "{run:#}");
    let reply = agent.post("/-/reload", "", Some(TOKEN)).await;
    reply.assert_status(200);
    assert_eq!(reply.json()["result"], "success");
    let text = agent.metrics().await;
    assert_eq!(runs_total(&text, "health"), 1.0, "{text}");
    assert_metric(
        &text,
        r#"patrol_config_reload_total{result="success"}"#,
        2.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_listen_address_without_a_token_is_refused() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let probes = r#"
  - name: health
    steps:
      - request: { url: "{{ api }}/api/health" }
"#;
    // No token at all, then a token whose variable is empty: the agent must exit before binding.
    let cases = [
        ("no api_token", "  listen: 0.0.0.0:0\n".to_string(), None),
        (
            "an empty api_token",
            format!("  listen: 0.0.0.0:0\n{WITH_TOKEN}"),
            Some(""),
        ),
    ];
    for (what, agent_section, token) in cases {
        let path = scratch.write("patrol.yaml", &config(&shop, &agent_section, probes));
        // No --listen: agent.listen is the address under test.
        let mut command = Patrol::new(["run", "--config"])
            .arg_path(&path)
            .current_dir(scratch.path())
            .env_remove("PATROL_API_TOKEN");
        if let Some(token) = token {
            command = command.env("PATROL_API_TOKEN", token);
        }
        match command.try_start().await {
            Ok(agent) => panic!("with {what}, the agent listened on {}", agent.addr),
            Err(run) => {
                run.assert_code(2);
                assert!(
                    run.stderr.contains("api_token"),
                    "with {what}, the error should name api_token:\n{}",
                    run.output()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_run_requests_are_refused_and_the_agent_carries_on() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = agent(
        &scratch,
        &config(
            &shop,
            WITH_TOKEN,
            r#"
  - name: health
    tags: [smoke]
    steps:
      - request: { url: "{{ api }}/api/health" }
"#,
        ),
    )
    .start()
    .await;
    let post = async |body: &str| agent.post("/api/v1/runs", body, Some(TOKEN)).await;

    let huge = format!(r#"{{"probes":["{}"]}}"#, "x".repeat(70 * 1024));
    post(&huge).await.assert_status(413);
    let malformed = post(r#"{"probes": ["health""#).await;
    malformed.assert_status(400);
    assert!(malformed.json()["error"].is_string(), "{}", malformed.body);
    for body in [r#"{"probes": "health"}"#, r#"{"probe": ["health"]}"#] {
        let reply = post(body).await;
        assert!(
            (400..500).contains(&reply.status),
            "{body} got {}: {}",
            reply.status,
            reply.body
        );
    }
    let unknown = post(r#"{"probes": ["health", "nope"]}"#).await;
    unknown.assert_status(404);
    assert!(unknown.body.contains("nope"), "{}", unknown.body);
    post(r#"{"tags": ["nope"]}"#).await.assert_status(404);
    // None of them ran anything.
    assert_eq!(
        series_of(&agent.metrics().await, "health"),
        Vec::<String>::new()
    );

    let health = agent.get("/healthz").await;
    health.assert_status(200);
    assert_eq!(health.body, "ok\n");
    let run = agent.run(r#"{"tags": ["smoke"]}"#, Some(TOKEN)).await;
    assert_eq!(common::names(&run["probes"]), ["health"], "{run:#}");
    assert_eq!(run["probes"][0]["result"], "pass", "{run:#}");
}

/// The `<section …>…</section>` of `probe` on the status page.
fn section<'p>(page: &'p str, probe: &str) -> &'p str {
    let id = format!("id=\"probe-{probe}\"");
    assert_eq!(page.matches(&id).count(), 1, "one `{id}` expected:\n{page}");
    let at = page.find(&id).unwrap_or_default();
    let start = page[..at]
        .rfind("<section")
        .unwrap_or_else(|| panic!("{id} is not a section"));
    let end = at
        + page[at..]
            .find("</section>")
            .unwrap_or_else(|| panic!("{id} is not closed"));
    &page[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_probe_with_escaped_failures() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = agent(
        &scratch,
        &config_for(
            &shop,
            r#"
  - name: healthy
    steps:
      - name: health
        request: { url: "{{ api }}/api/health" }
        assert: [ status == 200 ]
  - name: broken
    steps:
      - name: health
        request: { url: "{{ api }}/api/health" }
        assert:
          - status == 201
          - 'body contains "<script>alert(1)</script>"'
  - name: echo
    steps:
      - name: search
        request:
          url: "{{ api }}/api/search"
          query: { q: "<script>alert(2)</script>" }
        assert:
          - 'jsonpath "$.query" == "harmless"'
  - name: idle
    schedule: { every: 1h }
    steps:
      - request: { url: "{{ api }}/api/health" }
"#,
        ),
    )
    .start()
    .await;
    let run = agent
        .run(r#"{"probes":["healthy","broken","echo"]}"#, None)
        .await;
    let results: Vec<&Value> = run["probes"]
        .as_array()
        .map(|ps| ps.iter().map(|p| &p["result"]).collect())
        .unwrap_or_default();
    assert_eq!(results, ["pass", "fail", "fail"], "{run:#}");

    let reply = agent.get("/").await;
    reply.assert_status(200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        reply.headers
    );
    let page = &reply.body;
    // In config order.
    let order: Vec<usize> = ["healthy", "broken", "echo", "idle"]
        .iter()
        .map(|p| {
            page.find(&format!("id=\"probe-{p}\""))
                .unwrap_or(usize::MAX)
        })
        .collect();
    assert!(
        order.is_sorted() && order[3] < usize::MAX,
        "{order:?}\n{page}"
    );
    for text in [
        "<b>1 passing</b>",
        "<b>2 failing</b>",
        "<b>1 not run yet</b>",
    ] {
        assert!(page.contains(text), "no `{text}` in:\n{page}");
    }

    let healthy = section(page, "healthy");
    assert!(
        healthy.starts_with(r#"<section class="probe pass""#),
        "{healthy}"
    );
    assert!(
        healthy.contains(r#"<span class="badge pass">pass</span>"#),
        "{healthy}"
    );
    assert!(healthy.contains("on demand"), "{healthy}");
    assert!(!healthy.contains(r#"class="failure""#), "{healthy}");

    let broken = section(page, "broken");
    assert!(
        broken.contains(r#"<span class="badge fail">fail</span>"#),
        "{broken}"
    );
    assert!(
        broken.contains(
            "<code>status == 201</code> — actual <code>200</code>, expected <code>== 201</code>"
        ),
        "{broken}"
    );
    assert!(
        broken.contains(
            "<code>body contains &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;</code>"
        ),
        "{broken}"
    );

    // The actual value came from the target: escaped too.
    let echo = section(page, "echo");
    assert!(
        echo.contains(r#"<span class="badge fail">fail</span>"#),
        "{echo}"
    );
    assert!(
        echo.contains(
            "<code>jsonpath &quot;$.query&quot; == &quot;harmless&quot;</code> — actual \
             <code>&quot;&lt;script&gt;alert(2)&lt;/script&gt;&quot;</code>"
        ),
        "{echo}"
    );

    let idle = section(page, "idle");
    assert!(
        idle.contains(r#"<span class="badge none">not run</span>"#),
        "{idle}"
    );
    assert!(idle.contains("every 1h"), "{idle}");

    // The page has no scripts of its own, so any `<script` would be injected.
    assert!(!page.to_lowercase().contains("<script"), "{page}");
}

/// The shape of a JSON value: objects become their sorted keys with the shapes of their values,
/// arrays the shape of their first item, scalars their type.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_status_percentiles_failures_and_recent_runs() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let checked = r#"
  - name: checked
    tags: [smoke]
    steps:
      - name: products
        request: { url: "{{ api }}/api/products" }
        assert: [ status == 200 ]
"#;
    let probes = format!(
        r#"
  - name: hourly
    tags: [slow-lane]
    schedule: {{ every: 1h }}
    steps:
      - request: {{ url: "{{{{ api }}}}/api/health" }}
{checked}"#
    );
    let agent = agent(&scratch, &config_for(&shop, &probes)).start().await;
    let mut records = Vec::new();
    for fault in [None, None, Some(500)] {
        shop.faults().clear();
        if let Some(status) = fault {
            shop.faults().set(Fault {
                status: Some(status),
                ..Fault::new("/api/products")
            });
        }
        records.push(agent.run(r#"{"probes":["checked"]}"#, None).await);
    }
    shop.faults().clear();
    let result = |record: &Value| record["probes"][0].clone();
    let failed = result(&records[2]);
    assert_eq!(failed["result"], "fail", "{failed:#}");

    let status = agent.get("/api/v1/probes").await.assert_status(200).json();
    assert_eq!(common::names(&status["probes"]), ["hourly", "checked"]);
    let hourly = common::probe(&status, "hourly");
    assert_eq!(hourly["type"], "http");
    assert_eq!(hourly["tags"], json!(["slow-lane"]));
    assert_eq!(hourly["schedule"], "every 1h");
    let next = hourly["next_run"].as_str().unwrap_or_default();
    let next = chrono::DateTime::parse_from_rfc3339(next)
        .unwrap_or_else(|e| panic!("next_run `{next}`: {e}"));
    let now = chrono::Utc::now();
    assert!(
        next > now && next <= now + chrono::TimeDelta::hours(1),
        "next_run {next} is not within the coming hour"
    );
    assert_eq!(hourly["last_result"], Value::Null, "{hourly:#}");
    assert_eq!(hourly["last_failure"], Value::Null, "{hourly:#}");
    assert_eq!(hourly["percentiles"], json!({}), "{hourly:#}");

    let checked_status = common::probe(&status, "checked");
    assert_eq!(checked_status["schedule"], Value::Null);
    assert_eq!(checked_status["next_run"], Value::Null);
    assert_eq!(checked_status["last_result"], "fail");
    assert_eq!(checked_status["last_run_at_ms"], failed["started_at_ms"]);
    assert_eq!(checked_status["failing_since_ms"], failed["started_at_ms"]);
    let windows = |percentiles: &Value| {
        let keys: Vec<&str> = percentiles
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(keys, ["1h", "1m", "5m"], "{percentiles:#}");
        for window in ["1m", "5m", "1h"] {
            let p = &percentiles[window];
            assert_eq!(p["count"], 3, "{window}: {p}");
            let [p50, p95, p99] = ["p50", "p95", "p99"].map(|q| p[q].as_f64().unwrap_or(-1.0));
            assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{window}: {p}");
        }
    };
    windows(&checked_status["percentiles"]);
    assert_eq!(checked_status["steps"][0]["name"], "products");
    windows(&checked_status["steps"][0]["percentiles"]);
    let failure = &checked_status["last_failure"];
    assert_eq!(failure["result"], "fail", "{failure:#}");
    assert_eq!(failure["started_at_ms"], failed["started_at_ms"]);
    assert_eq!(failure["steps"][0]["name"], "products", "{failure:#}");
    assert_eq!(failure["steps"][0]["result"], "fail", "{failure:#}");
    assert_eq!(
        failure["steps"][0]["asserts"],
        json!([{"expr": "status == 200", "result": "fail", "actual": "500", "expected": "== 200"}]),
        "{failure:#}"
    );

    // Recent runs: newest first; the newest exactly as reported, the one before from its
    // compact record (history::FULL_RESULTS), without phases or passing assertions.
    let recent = agent
        .get("/api/v1/probes/checked/runs?limit=2")
        .await
        .assert_status(200)
        .json();
    assert_eq!(recent["probe"], "checked");
    assert_eq!(
        recent["runs"].as_array().map(Vec::len),
        Some(2),
        "{recent:#}"
    );
    assert_eq!(recent["runs"][0], failed, "{recent:#}");
    let (older, reported) = (&recent["runs"][1], result(&records[1]));
    for field in ["id", "name", "type", "result", "attempts", "started_at_ms"] {
        assert_eq!(older[field], reported[field], "{field}: {recent:#}");
    }
    for field in ["name", "result", "status"] {
        assert_eq!(
            older["steps"][0][field], reported["steps"][0][field],
            "step {field}: {recent:#}"
        );
    }
    let all = agent.get("/api/v1/probes/checked/runs").await.json();
    assert_eq!(all["runs"].as_array().map(Vec::len), Some(3), "{all:#}");
    agent
        .get("/api/v1/probes/nope/runs")
        .await
        .assert_status(404);

    // In the verify report's schema: a passing run has the same shape as `patrol verify`'s (as
    // `POST /api/v1/runs` reports it, in full; in the runs list only the newest is).
    let verified = common::verify(&shop, checked, &[]).await;
    verified.run.assert_code(0);
    assert_eq!(
        shape(&result(&records[1])),
        shape(common::probe(&verified.report, "checked")),
        "the API's run and the verify report differ in shape"
    );

    let health = agent.get("/healthz").await;
    health.assert_status(200);
    let ready = agent.get("/readyz").await;
    ready.assert_status(200);
    assert_eq!(ready.body, "ready\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_shown() {
    let secret = "sek-9d2f61c0a7e4b835";
    let shop = shop().await;
    let scratch = Scratch::new();
    let text = format!(
        "agent:\n{WITH_TOKEN}vars:\n  api: {}\n  token: \"{{{{ env.PATROL_TEST_SECRET }}}}\"\n{}",
        shop.url(),
        r#"probes:
  - name: leaky
    steps:
      - name: search
        request:
          url: "{{ api }}/api/search"
          query: { q: "{{ token }}" }
          headers:
            X-Api-Key: "{{ token }}"
        assert:
          - 'jsonpath "$.query" == "{{ token }}-nope"'
          - 'body contains "{{ token }}-missing"'
"#
    );
    let mut agent = agent(&scratch, &text)
        .env("PATROL_TEST_SECRET", secret)
        .env("PATROL_LOG", "info,patrol=debug,patrol_probes=debug")
        .start()
        .await;
    agent.run("{}", Some(TOKEN)).await;
    let id = agent.start_run("{}", Some(TOKEN)).await;
    let record = agent.finished_run(&id).await;
    // The secret was sent and echoed back, and masked on the way out.
    let asserts = &record["probes"][0]["steps"][0]["asserts"];
    assert_eq!(asserts[0]["actual"], "\"***\"", "{asserts:#}");
    assert_eq!(asserts[0]["expected"], "== \"***-nope\"", "{asserts:#}");

    let mut shown = Vec::new();
    for path in [
        "/metrics".to_string(),
        "/api/v1/probes".to_string(),
        "/api/v1/probes/leaky/runs".to_string(),
        format!("/api/v1/runs/{id}"),
        "/".to_string(),
    ] {
        let reply = agent.get(&path).await;
        reply.assert_status(200);
        shown.push((path, reply.body));
    }
    agent.signal("TERM").await;
    let run = agent.wait(Duration::from_secs(10)).await;
    run.assert_code(0);
    shown.push(("stderr".to_string(), run.stderr));
    shown.push(("stdout".to_string(), run.stdout));
    for (what, text) in &shown {
        for value in [secret, TOKEN] {
            assert!(
                !text.contains(value),
                "`{value}` leaked into {what}:\n{text}"
            );
        }
    }
    for what in ["/api/v1/probes", "/api/v1/probes/leaky/runs", "/"] {
        let text = shown
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, t)| t.as_str())
            .unwrap_or_default();
        assert!(text.contains("***"), "{what} should show the mask:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_endpoint_keeps_100_runs_in_the_report_schema_and_old_failures_keep_their_asserts()
{
    let shop = shop().await;
    let scratch = Scratch::new();
    let checked = r#"
  - name: checked
    steps:
      - name: products
        request: { url: "{{ api }}/api/products" }
        assert: [ status < 600, status == 200 ]
"#;
    let agent = agent(&scratch, &config_for(&shop, checked)).start().await;
    // Every run's result as reported when it finished, by id.
    let mut reported = std::collections::HashMap::new();
    let mut batch = async |n: usize| {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(agent.start_run(r#"{"probes":["checked"]}"#, None).await);
        }
        for id in ids {
            let record = agent.finished_run(&id).await;
            let result = record["probes"][0].clone();
            reported.insert(
                result["id"].as_str().unwrap_or_default().to_string(),
                result,
            );
        }
    };
    // 10 passes, a failure, 94 passes: the history keeps the newest 100, so the failure is the
    // 95th newest, long out of the result kept in full.
    batch(10).await;
    shop.faults().set(Fault {
        status: Some(500),
        ..Fault::new("/api/products")
    });
    batch(1).await;
    shop.faults().clear();
    batch(94).await;
    assert_eq!(reported.len(), 105);

    let runs = agent
        .get("/api/v1/probes/checked/runs?limit=1000")
        .await
        .assert_status(200)
        .json()["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(runs.len(), 100);
    // Newest first by when they finished: runs that overlapped may finish out of start order.
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    for (i, run) in runs.iter().enumerate() {
        let id = run["id"].as_str().unwrap_or_default();
        let full = reported
            .get(id)
            .unwrap_or_else(|| panic!("run {i} has an id no run reported: {run:#}"));
        // Identity, outcome and timings are the reported ones (durations to the microsecond).
        for field in [
            "name",
            "type",
            "result",
            "attempts",
            "first_attempt",
            "started_at_ms",
        ] {
            assert_eq!(run[field], full[field], "run {i}, {field}");
        }
        let seconds = |v: &Value| v["duration_seconds"].as_f64().unwrap_or(-1.0);
        assert!(
            (seconds(run) - seconds(full)).abs() < 1e-6,
            "run {i}: {run} vs {full}"
        );
        let (step, full_step) = (&run["steps"][0], &full["steps"][0]);
        for field in ["name", "result", "status"] {
            assert_eq!(step[field], full_step[field], "run {i}, step {field}");
        }
        // The same schema: no field a full result lacks.
        let all = keys(full);
        assert!(
            keys(run).iter().all(|k| all.contains(k)),
            "run {i}: {run:#}"
        );
        let all = keys(full_step);
        assert!(
            keys(step).iter().all(|k| all.contains(k)),
            "run {i}: {step:#}"
        );
        if i < 1 {
            // The newest run (history::FULL_RESULTS) is kept in full.
            assert_eq!(run, full, "run {i}");
        } else if run["result"] == "pass" {
            assert_eq!(step["asserts"], json!([]), "run {i}");
            assert!(step.get("phases").is_none(), "run {i}: {step:#}");
        }
    }
    // The failure, 95th newest, keeps its failing assertion (the passing one is omitted).
    let failures: Vec<&Value> = runs.iter().filter(|r| r["result"] != "pass").collect();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    let failure = failures[0];
    assert_eq!(runs.iter().position(|r| r == failure), Some(94));
    assert_eq!(
        failure["steps"][0]["asserts"],
        json!([{"expr": "status == 200", "result": "fail", "actual": "500", "expected": "== 200"}]),
        "{failure:#}"
    );
    // The probe's last failure is still the whole result.
    let status = agent.get("/api/v1/probes").await.assert_status(200).json();
    let last_failure = &common::probe(&status, "checked")["last_failure"];
    assert_eq!(last_failure["started_at_ms"], failure["started_at_ms"]);
    assert_eq!(
        last_failure["steps"][0]["asserts"],
        json!([{"expr": "status == 200", "result": "fail", "actual": "500", "expected": "== 200"}]),
        "{last_failure:#}"
    );
    // The status page's strip shows up to 40 of them.
    let page = agent.get("/").await.assert_status(200).body.clone();
    assert_eq!(page.matches(r#"<i class="pass""#).count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_history_sets_the_runs_kept_per_probe() {
    let shop = shop().await;
    let scratch = Scratch::new();
    let probes = r#"
  - name: kept
    steps:
      - request: { url: "{{ api }}/api/products" }
"#;
    let config = config(&shop, "  history: 3\n", probes);
    let agent = agent(&scratch, &config).start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = agent.start_run(r#"{"probes":["kept"]}"#, None).await;
        let record = agent.finished_run(&id).await;
        ids.push(
            record["probes"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let runs = agent
        .get("/api/v1/probes/kept/runs?limit=100")
        .await
        .assert_status(200)
        .json()["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let kept: Vec<&str> = runs.iter().filter_map(|r| r["id"].as_str()).collect();
    let newest: Vec<&str> = ids.iter().rev().take(3).map(String::as_str).collect();
    assert_eq!(kept, newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_waiting_for_a_slot_show_in_the_queue_wait_histogram() {
    let shop = shop().await;
    shop.faults().set(Fault {
        latency_ms: 600,
        ..Fault::new("/api/health/detailed")
    });
    let scratch = Scratch::new();
    let probe = |name: &str| {
        format!(
            r#"
  - name: {name}
    timeout: 10s
    steps:
      - request: {{ url: "{{{{ api }}}}/api/health/detailed" }}
"#
        )
    };
    let probes = format!("{}{}", probe("first"), probe("second"));
    let config = config(&shop, "  max_concurrency: 1\n", &probes);
    let agent = agent(&scratch, &config).start().await;
    let text = agent.metrics().await;
    assert_metric(&text, "patrol_run_queue_wait_seconds_count", 0.0);
    // One slot, two runs of 600 ms asked for at once: one starts at once, the other waits for it.
    let record = agent.run(r#"{"probes":["first","second"]}"#, None).await;
    assert_eq!(common::names(&record["probes"]).len(), 2, "{record:#}");
    let text = agent.metrics().await;
    assert_metric(&text, "patrol_run_queue_wait_seconds_count", 2.0);
    assert_metric(
        &text,
        r#"patrol_run_queue_wait_seconds_bucket{le="0.25"}"#,
        1.0,
    );
    assert_metric(
        &text,
        r#"patrol_run_queue_wait_seconds_bucket{le="+Inf"}"#,
        2.0,
    );
    let waited = metric(&text, "patrol_run_queue_wait_seconds_sum").unwrap_or_default();
    assert!((0.55..5.0).contains(&waited), "waited {waited} s in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scraper_that_stops_reading_holds_up_no_run() {
    let shop = shop().await;
    let scratch = Scratch::new();
    // Enough series that /metrics (~25 KB per two-step probe) outgrows the socket buffers.
    let probes: String = (0..300)
        .map(|i| {
            format!(
                "  - name: p{i:03}\n    steps:\n      - request: {{ url: \"{{{{ api }}}}/api/health\" }}\n      \
                 - request: {{ url: \"{{{{ api }}}}/api/categories\" }}\n"
            )
        })
        .collect();
    let agent = agent(&scratch, &config(&shop, "", &probes)).start().await;
    let first = agent.run("{}", Some(TOKEN)).await;
    assert_eq!(common::names(&first["probes"]).len(), 300);
    // A scraper with a tiny receive window that asks for /metrics and never reads it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = socket.connect(agent.addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stalled,
        b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
    )
    .await
    .expect("send");
    // Let the render fill every buffer and block on the scraper.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every probe records its next result meanwhile, and other scrapes are served.
    let again = tokio::time::timeout(Duration::from_secs(30), agent.run("{}", Some(TOKEN)))
        .await
        .expect("runs finished while a scraper stalled /metrics");
    assert_eq!(common::names(&again["probes"]).len(), 300);
    let text = agent.metrics().await;
    assert_eq!(
        runs_total(&text, "p299"),
        2.0,
        "{}",
        series_of(&text, "p299").join("\n")
    );
    drop(stalled);
}
