//! End-to-end tests of deploy verification: the real `patrol` binary (agent and CLI) against the
//! reference shop in the test's process, with faults switched at a known "deploy" moment.
//!
//! Loopback answers in a few milliseconds, so relative latency rules are tested on a route that
//! already has a base latency fault ([`BASE_MS`], 200 ms; some tests 100 ms): the baseline has
//! real latency, and the "deploy" changes it. Each deploy carries `at_ms`, the moment just before
//! the change, so the agent's baseline is its history up to that moment. Tests that judge
//! latencies run one at a time (see [`TIMING`]).
//!
//! Covers, inside the agent (`POST /api/v1/verify`, Argo Rollouts' `web` provider): a healthy
//! deploy passes; +80% latency fails with the latency reason naming both p95s; an error fault
//! fails with the error-rate reason; +10% latency passes; a 3-run baseline is inconclusive; a
//! failing `health` probe fails; the Argo contract field by field (200 + JSON on pass and fail,
//! 401 without the token). The Flagger hook (payload fields, probe selection by
//! `metadata.tags`/`metadata.probes`, 200/500 with a text body, one verification per checksum at
//! a time). The Alertmanager hook (202 at once, the action once per fingerprint, nothing for
//! resolved or unlabelled alerts). The rollback command: once per deploy, never in dry-run (the
//! default). The CLI: `patrol verify --baseline-from` (console, JSON and JUnit verdicts, exit
//! codes), `--watch` (thresholds, stopping early), `--canary` (two shops), and `--prometheus`
//! (a real Prometheus scraping the agent; skipped loudly when `prometheus` is not on PATH).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citadel_shop::{Fault, Shop};
use common::{Agent, Patrol, Run, Scratch, config_for, eventually, http, metric, shop};
use serde_json::{Value, json};

/// The API token of the agents under test, read from `PATROL_API_TOKEN`.
const TOKEN: &str = "tok-deploy-e2e-3c8d14";

/// How long a test waits for an agent's scheduled baseline to build up.
const BASELINE_LIMIT: Duration = Duration::from_secs(30);

/// The base latency of the route the deploy scenarios change, in milliseconds. The noise of a
/// busy machine is additive: the longer the route takes, the less it moves a p95 ratio.
const BASE_MS: u64 = 200;

/// Tests whose verdicts compare latencies run alone (`TIMING.write()`); the others may run side
/// by side (`TIMING.read()`). On two shared cores, concurrent tests' agents, CLIs and shops add
/// tens of milliseconds to each other's runs at random moments: a baseline p95 of 165 ms for a
/// route that takes 100 ms was seen, which hides a +80% regression.
static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Unix milliseconds now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// One probe: a GET of `path` on the shop asserting a 200. `every` is its schedule (on demand
/// when empty); `tags` the inside of its tag list.
fn probe(name: &str, tags: &str, path: &str, every: &str) -> String {
    let schedule = if every.is_empty() {
        String::new()
    } else {
        format!("    schedule: {{ every: {every} }}\n")
    };
    format!(
        "  - name: {name}\n    tags: [{tags}]\n{schedule}    steps:\n      - name: get\n        \
         request: {{ url: \"{{{{ api }}}}{path}\" }}\n        assert: [ status == 200 ]\n"
    )
}

/// A config: the agent's token from `PATROL_API_TOKEN`, the var `api` pointing at `shop`,
/// `probes`, and `verify` (lines indented as under `verify:`).
fn config(shop: &Shop, probes: &str, verify: &str) -> String {
    format!(
        "agent:\n  api_token: \"{{{{ env.PATROL_API_TOKEN }}}}\"\n{}verify:\n{verify}",
        config_for(shop, probes)
    )
}

/// `patrol run` on `text` (written to `patrol.yaml` in `scratch`, its working directory).
async fn start_agent(scratch: &Scratch, text: &str) -> Agent {
    let path = scratch.write("patrol.yaml", text);
    Patrol::agent(&path)
        .current_dir(scratch.path())
        .env("PATROL_API_TOKEN", TOKEN)
        .start()
        .await
}

/// `patrol verify --config <scratch>/patrol.yaml <args>` in `scratch`.
async fn cli(scratch: &Scratch, args: &[&str]) -> Run {
    Patrol::new(["verify", "--config"])
        .arg_path(&scratch.file("patrol.yaml"))
        .args(args)
        .env("PATROL_API_TOKEN", TOKEN)
        .current_dir(scratch.path())
        .run()
        .await
}

/// Asserts the error-rate reason of a probe that failed every post-deploy run against a clean
/// baseline: the rise, its 95% interval (whose low end depends on the run counts, but is far
/// past the limit) and the limit.
fn assert_every_run_failed_message(message: &str) {
    let low: f64 = message
        .strip_prefix("error rate rose from 0.0% to 100.0% (+100.0 points, 95% CI +")
        .and_then(|rest| rest.strip_suffix(" to +100.0; more than the 10.0 allowed)"))
        .and_then(|low| low.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(low > 10.0 && low < 100.0, "{message}");
}

/// The agent's recorded runs of `probe`, newest first (`GET /api/v1/probes/{probe}/runs`).
async fn runs_of(agent: &Agent, probe: &str) -> Vec<Value> {
    let reply = agent
        .get(&format!("/api/v1/probes/{probe}/runs?limit=1000"))
        .await;
    reply.assert_status(200);
    reply.json()["runs"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no runs list for {probe}: {}", reply.body))
}

/// Waits until the agent has recorded at least `n` runs of `probe`. Polls gently (twice a
/// second, asking for `n` runs only): serialising a hundred results every 50 ms in a debug build
/// slows down the very runs that make the baseline.
async fn wait_for_runs(agent: &Agent, probe: &str, n: usize) {
    let deadline = Instant::now() + BASELINE_LIMIT;
    loop {
        let reply = agent
            .get(&format!("/api/v1/probes/{probe}/runs?limit={n}"))
            .await;
        reply.assert_status(200);
        let have = reply.json()["runs"].as_array().map_or(0, Vec::len);
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} runs of `{probe}` after {BASELINE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The deploy moment: unix ms now. The caller changes the shop after this returns, 60 ms
/// later, so a run that started before the deploy reached the shop before the change.
async fn deploy_moment() -> i64 {
    let at = now_ms();
    tokio::time::sleep(Duration::from_millis(60)).await;
    at
}

/// `POST /api/v1/verify` with `body`; fails the test unless the answer is 200 with JSON.
async fn verify(agent: &Agent, body: &Value) -> Value {
    let reply = agent
        .post("/api/v1/verify", &body.to_string(), Some(TOKEN))
        .await;
    reply.assert_status(200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "Argo needs a JSON body: {}",
        reply.body
    );
    reply.json()
}

/// The reasons of a verdict (the `details.reasons` of `/api/v1/verify`, or a report's
/// `verdict.reasons`) with `rule` and `decision`.
fn reasons<'v>(verdict: &'v Value, rule: &str, decision: &str) -> Vec<&'v Value> {
    verdict["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("no reasons in {verdict:#}"))
        .iter()
        .filter(|r| r["rule"] == rule && r["decision"] == decision)
        .collect()
}

/// The one reason of `verdict` with `rule` and `decision` about `probe`.
fn reason<'v>(verdict: &'v Value, probe: &str, rule: &str, decision: &str) -> &'v Value {
    let found: Vec<&Value> = reasons(verdict, rule, decision)
        .into_iter()
        .filter(|r| r["probe"] == probe)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {decision} `{rule}` reason about {probe}:\n{verdict:#}"
    );
    found[0]
}

/// Seconds as the reasons print them: whole milliseconds.
fn ms(seconds: &Value) -> u64 {
    (seconds
        .as_f64()
        .unwrap_or_else(|| panic!("`{seconds}` is not a number of seconds"))
        * 1000.0)
        .round() as u64
}

/// `catalog`, scheduled every 250 ms, GETs `/api/products`: the agent of the deploy scenarios.
fn catalog_config(shop: &Shop, verify: &str) -> String {
    config(
        shop,
        &probe("catalog", "api", "/api/products", "250ms"),
        verify,
    )
}

/// A base latency of `ms` milliseconds on `/api/products`, plus `fault`'s other effects.
fn products(ms: u64, fault: Fault) -> Fault {
    Fault {
        latency_ms: ms,
        ..Fault {
            route: "/api/products".into(),
            ..fault
        }
    }
}

/// A deploy scenario: the shop's `/api/products` takes [`BASE_MS`]; the agent runs `catalog`
/// every 250 ms until it has 40 runs (so that p95, the 38th of 40, is not a few slow outliers); at
/// the deploy moment the route's fault becomes `after`; then `POST /api/v1/verify` judges 6
/// post-deploy runs. Returns the answer, the deploy moment and what must stay alive. `alone`:
/// whether the verdict depends on latencies (see [`TIMING`]).
async fn deploy_scenario(after: Fault, alone: bool) -> (Value, i64, Agent, Shop, Scratch) {
    let (_alone, _shared) = if alone {
        (Some(TIMING.write().await), None)
    } else {
        (None, Some(TIMING.read().await))
    };
    let shop = shop().await;
    shop.faults().set(products(BASE_MS, Fault::default()));
    let scratch = Scratch::new();
    let agent = start_agent(
        &scratch,
        &catalog_config(&shop, "  baseline: 1m\n  runs: 6\n  max_runs: 6\n"),
    )
    .await;
    wait_for_runs(&agent, "catalog", 40).await;
    let at = deploy_moment().await;
    shop.faults().set(after);
    let answer = verify(
        &agent,
        &json!({"probes": ["catalog"], "deploy": {"version": "v2", "environment": "production", "at_ms": at}}),
    )
    .await;
    (answer, at, agent, shop, scratch)
}

/// The baseline the agent judged against is its runs in the minute before `at`: all of them,
/// except one that was still in flight when the verification read the history (a run is
/// recorded when it ends), and none from after the deploy.
async fn assert_baseline_ends_at_the_deploy(agent: &Agent, answer: &Value, at: i64) {
    let before = runs_of(agent, "catalog")
        .await
        .iter()
        .filter(|r| {
            let started = r["started_at_ms"].as_i64().expect("started_at_ms");
            started < at && started >= at - 60_000
        })
        .count() as u64;
    assert!(before >= 40, "{before} runs before the deploy");
    let judged = answer["details"]["probes"]["catalog"]["baseline"]["runs"]
        .as_u64()
        .expect("baseline runs");
    assert!(
        judged == before || judged + 1 == before,
        "the baseline should be the {before} runs that started in verify.baseline before \
         deploy.at_ms, it has {judged}:\n{answer:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_deploy_passes() {
    let (answer, at, agent, _shop, _scratch) =
        deploy_scenario(products(BASE_MS, Fault::default()), true).await;
    assert_eq!(answer["verdict"], "pass", "{answer:#}");
    assert_eq!(answer["details"]["verdict"], "pass");
    assert_baseline_ends_at_the_deploy(&agent, &answer, at).await;
    assert_eq!(answer["details"]["probes"]["catalog"]["current"]["runs"], 6);
    assert_eq!(answer["error_rates"]["catalog"], 0.0);
    let p95 = ms(&answer["p95s"]["catalog"]);
    assert!(p95 >= BASE_MS, "p95 {p95}ms:\n{answer:#}");
    reason(&answer["details"], "catalog", "error_rate", "pass");
    reason(&answer["details"], "catalog", "latency", "pass");
    assert!(
        answer.get("action").is_none(),
        "no action on a pass:\n{answer:#}"
    );
    let text = agent.metrics().await;
    assert_eq!(
        metric(&text, r#"patrol_deploy_verification_total{verdict="pass"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"patrol_deploy_info{environment="production",version="v2"}"#
        ),
        Some(1.0)
    );
    let stamp = metric(&text, "patrol_deploy_timestamp_seconds").expect("deploy timestamp");
    assert!(
        (stamp * 1000.0 - at as f64).abs() < 30_000.0,
        "timestamp {stamp}"
    );
}

/// Sequential verification: `runs` is the minimum and `max_runs` the cap. A clean deploy runs
/// until its lack of failures rules out the 10 points allowed — 0 of 34 still leaves 10.1
/// possible, 0 of 35 at most 9.9 — and a broken one stops at the minimum, failing beyond doubt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_deploy_runs_until_no_failure_rules_out_the_limit_and_a_broken_one_stops_early() {
    let _alone = TIMING.write().await;
    let shop = shop().await;
    shop.faults().set(products(BASE_MS, Fault::default()));
    let scratch = Scratch::new();
    let agent = start_agent(
        &scratch,
        &catalog_config(&shop, "  baseline: 1m\n  runs: 5\n"),
    )
    .await;
    wait_for_runs(&agent, "catalog", 40).await;
    let at = deploy_moment().await;
    let body =
        json!({"probes": ["catalog"], "max_runs": 60, "deploy": {"version": "v2", "at_ms": at}});
    // 35 rounds, 500 ms apart.
    let reply = agent
        .post_within(
            Duration::from_secs(60),
            "/api/v1/verify",
            &body.to_string(),
            Some(TOKEN),
        )
        .await;
    reply.assert_status(200);
    let answer = reply.json();
    assert_eq!(answer["verdict"], "pass", "{answer:#}");
    let runs = answer["details"]["probes"]["catalog"]["current"]["runs"]
        .as_u64()
        .expect("runs");
    // Latency may ask for a few more runs on a busy machine, never fewer.
    assert!((35..=45).contains(&runs), "{runs} runs:\n{answer:#}");
    assert_eq!(
        answer["runs"].as_array().map(Vec::len),
        Some(runs as usize),
        "{answer:#}"
    );
    let errors = reason(&answer["details"], "catalog", "error_rate", "pass");
    let message = errors["message"].as_str().expect("message");
    assert!(
        message.starts_with("error rate 0.0% vs 0.0% before (+0.0 points, 95% CI ")
            && message.ends_with(" to +9.9)"),
        "{message}"
    );

    // Every run fails: the first look, after the 5 runs of the minimum, fails it.
    let at = deploy_moment().await;
    shop.faults().set(products(
        BASE_MS,
        Fault {
            status: Some(500),
            error_rate: 1.0,
            ..Fault::default()
        },
    ));
    let answer = verify(
        &agent,
        &json!({"probes": ["catalog"], "deploy": {"version": "v3", "at_ms": at}}),
    )
    .await;
    assert_eq!(answer["verdict"], "fail", "{answer:#}");
    assert_eq!(answer["details"]["probes"]["catalog"]["current"]["runs"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighty_percent_slower_fails_with_the_latency_reason_naming_both_p95s() {
    let (answer, at, agent, _shop, _scratch) =
        deploy_scenario(products(BASE_MS * 18 / 10, Fault::default()), true).await;
    assert_eq!(answer["verdict"], "fail", "{answer:#}");
    assert_baseline_ends_at_the_deploy(&agent, &answer, at).await;
    let numbers = &answer["details"]["probes"]["catalog"];
    let (before, after) = (
        ms(&numbers["baseline"]["p95"]),
        ms(&numbers["current"]["p95"]),
    );
    assert!(before >= BASE_MS, "baseline p95 {before}ms:\n{answer:#}");
    assert!(
        after >= BASE_MS * 18 / 10,
        "post-deploy p95 {after}ms:\n{answer:#}"
    );
    let latency = reason(&answer["details"], "catalog", "latency", "fail");
    let rise = ((after as f64 - before as f64) / before as f64 * 100.0).round();
    // Rounding of the percentage may differ by one from the rounded milliseconds.
    let message = latency["message"].as_str().expect("message");
    let expected_start = format!("p95 latency rose from {before}ms to {after}ms (+");
    assert!(
        message.starts_with(&expected_start) && message.ends_with("; more than the 50% allowed)"),
        "{message}"
    );
    let percent: f64 = message[expected_start.len()..]
        .split('%')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no percentage in {message}"));
    assert!((percent - rise).abs() <= 1.0, "{message} vs +{rise}%");
    // The first reason is a failing one; errors did not change.
    assert_eq!(answer["details"]["reasons"][0]["decision"], "fail");
    reason(&answer["details"], "catalog", "error_rate", "pass");
    assert_eq!(answer["p95s"]["catalog"], numbers["current"]["p95"]);
    assert_eq!(answer["action"]["result"], "not_configured", "{answer:#}");
    let text = agent.metrics().await;
    assert_eq!(
        metric(&text, r#"patrol_deploy_verification_total{verdict="fail"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"patrol_rollback_actions_total{result="not_configured"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_fault_fails_with_the_error_rate_reason() {
    let (answer, _at, _agent, _shop, _scratch) = deploy_scenario(
        products(
            BASE_MS,
            Fault {
                status: Some(500),
                error_rate: 1.0,
                ..Fault::default()
            },
        ),
        false,
    )
    .await;
    assert_eq!(answer["verdict"], "fail", "{answer:#}");
    assert_eq!(answer["error_rates"]["catalog"], 100.0);
    let errors = reason(&answer["details"], "catalog", "error_rate", "fail");
    assert_every_run_failed_message(errors["message"].as_str().expect("message"));
    assert_eq!(
        answer["details"]["probes"]["catalog"]["current"]["failures"],
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_slower_passes() {
    let (answer, _at, _agent, _shop, _scratch) =
        deploy_scenario(products(BASE_MS * 11 / 10, Fault::default()), true).await;
    assert_eq!(answer["verdict"], "pass", "{answer:#}");
    let numbers = &answer["details"]["probes"]["catalog"];
    assert!(
        ms(&numbers["current"]["p95"]) >= BASE_MS * 11 / 10,
        "the slowdown happened:\n{answer:#}"
    );
    let latency = reason(&answer["details"], "catalog", "latency", "pass");
    assert!(
        latency["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("p95 ")),
        "{latency}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_of_three_runs_is_inconclusive_never_pass() {
    let _turn = TIMING.read().await;
    let shop = shop().await;
    let scratch = Scratch::new();
    // On demand: the only runs before the deploy are the three triggered here.
    let agent = start_agent(
        &scratch,
        &config(
            &shop,
            &probe("catalog", "api", "/api/products", ""),
            "  runs: 5\n  max_runs: 5\n",
        ),
    )
    .await;
    for _ in 0..3 {
        let run = agent.run(r#"{"probes": ["catalog"]}"#, Some(TOKEN)).await;
        assert_eq!(run["probes"][0]["result"], "pass", "{run:#}");
    }
    let answer = verify(&agent, &json!({"probes": ["catalog"]})).await;
    assert_eq!(answer["verdict"], "inconclusive", "{answer:#}");
    let samples = reason(&answer["details"], "catalog", "samples", "inconclusive");
    assert_eq!(
        samples["message"],
        "baseline has 3 runs before the deploy, 5 needed for a verdict"
    );
    assert_eq!(answer["details"]["probes"]["catalog"]["current"]["runs"], 5);
    assert!(answer.get("action").is_none(), "{answer:#}");
    assert_eq!(
        metric(
            &agent.metrics().await,
            r#"patrol_deploy_verification_total{verdict="inconclusive"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_probe_failing_after_the_deploy_fails_it() {
    let _turn = TIMING.read().await;
    let shop = shop().await;
    shop.faults().set(products(100, Fault::default()));
    let scratch = Scratch::new();
    let probes = format!(
        "{}{}",
        probe("health", "health", "/api/health", "200ms"),
        probe("catalog", "api", "/api/products", "200ms")
    );
    let agent = start_agent(
        &scratch,
        &config(&shop, &probes, "  baseline: 1m\n  runs: 5\n  max_runs: 5\n"),
    )
    .await;
    wait_for_runs(&agent, "health", 6).await;
    wait_for_runs(&agent, "catalog", 6).await;
    let at = deploy_moment().await;
    shop.faults().set(Fault {
        status: Some(503),
        ..Fault::new("/api/health")
    });
    let answer = verify(&agent, &json!({"deploy": {"version": "v3", "at_ms": at}})).await;
    assert_eq!(answer["verdict"], "fail", "{answer:#}");
    let health = reason(&answer["details"], "health", "health", "fail");
    assert_eq!(
        health["message"],
        "health probe failed 5 of 5 runs after the deploy"
    );
    // The untagged probe is judged by the rules alone and passes; only `health` has the rule.
    assert!(
        reasons(&answer["details"], "health", "fail")
            .iter()
            .all(|r| r["probe"] == "health")
    );
    reason(&answer["details"], "catalog", "error_rate", "pass");
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// The shape Argo's AnalysisTemplate reads, checked field by field.
async fn assert_argo_shape(agent: &Agent, answer: &Value, verdict: &str, runs: usize) {
    let mut top = vec![
        "deploy",
        "details",
        "error_rates",
        "p95s",
        "runs",
        "verdict",
    ];
    if verdict == "fail" {
        top.push("action");
        top.sort();
    }
    assert_eq!(keys(answer), top, "{answer:#}");
    assert_eq!(answer["verdict"], verdict);
    let details = &answer["details"];
    assert_eq!(keys(details), ["check", "probes", "reasons", "verdict"]);
    assert_eq!(details["verdict"], verdict);
    assert_eq!(details["check"], "rules");
    for name in ["catalog", "search"] {
        let rate = answer["error_rates"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("no error rate for {name}:\n{answer:#}"));
        assert!((0.0..=100.0).contains(&rate));
        let p95 = answer["p95s"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("no p95 for {name}:\n{answer:#}"));
        assert!(p95 > 0.0 && p95 < 5.0, "p95 in seconds: {p95}");
        let numbers = &details["probes"][name];
        assert_eq!(keys(numbers), ["baseline", "current"]);
        for side in ["baseline", "current"] {
            assert_eq!(
                keys(&numbers[side]),
                ["error_rate", "failures", "p95", "p99", "runs"],
                "{numbers:#}"
            );
        }
        assert_eq!(numbers["current"]["runs"], runs as u64);
        assert_eq!(
            numbers["current"]["error_rate"],
            answer["error_rates"][name]
        );
    }
    assert_eq!(keys(&answer["error_rates"]), ["catalog", "search"]);
    assert_eq!(keys(&answer["p95s"]), ["catalog", "search"]);
    for r in details["reasons"].as_array().expect("reasons") {
        assert_eq!(keys(r), ["decision", "message", "probe", "rule"], "{r}");
        assert!(["pass", "fail", "inconclusive"].contains(&r["decision"].as_str().unwrap_or("")));
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Failing reasons come first.
    let decisions: Vec<&str> = details["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|r| r["decision"].as_str())
        .collect();
    let first_pass = decisions.iter().position(|d| *d == "pass");
    assert!(
        first_pass.is_none_or(|i| decisions[i..].iter().all(|d| *d == "pass")),
        "{decisions:?}"
    );
    // Every post-deploy run is in the agent's history under its id.
    let ids: Vec<&str> = answer["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ids.len(), 2 * runs, "{answer:#}");
    let mut recorded = Vec::new();
    for name in ["catalog", "search"] {
        recorded.extend(
            runs_of(agent, name)
                .await
                .iter()
                .filter_map(|r| r["id"].as_str().map(String::from)),
        );
    }
    for id in ids {
        assert!(
            recorded.iter().any(|r| r == id),
            "run {id} is not in the history"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_gets_200_and_json_on_pass_and_on_fail_and_401_without_the_token() {
    let _turn = TIMING.write().await;
    let shop = shop().await;
    shop.faults().set(Fault {
        latency_ms: 100,
        ..Fault::new("/api/*")
    });
    let scratch = Scratch::new();
    let probes = format!(
        "{}{}",
        probe("catalog", "api", "/api/products", "200ms"),
        probe("search", "api", "/api/search?q=laptop", "200ms")
    );
    let agent = start_agent(
        &scratch,
        &config(&shop, &probes, "  baseline: 1m\n  runs: 3\n  max_runs: 3\n"),
    )
    .await;
    wait_for_runs(&agent, "catalog", 10).await;
    wait_for_runs(&agent, "search", 10).await;

    // Exactly what an AnalysisTemplate's jsonBody sends: tags and a deploy; runs override.
    let pass = verify(
        &agent,
        &json!({"tags": ["api"], "runs": 5, "deploy": {"version": "rev-1", "environment": "staging"}}),
    )
    .await;
    assert_argo_shape(&agent, &pass, "pass", 5).await;
    assert_eq!(
        pass["deploy"],
        json!({"version": "rev-1", "environment": "staging", "track": null, "at_ms": null})
    );

    let at = deploy_moment().await;
    shop.faults().set(Fault {
        latency_ms: 100,
        status: Some(500),
        ..Fault::new("/api/search")
    });
    let fail = verify(
        &agent,
        &json!({"tags": ["api"], "deploy": {"version": "rev-2", "at_ms": at}}),
    )
    .await;
    assert_argo_shape(&agent, &fail, "fail", 3).await;
    assert_eq!(fail["error_rates"]["search"], 100.0);
    assert_eq!(fail["error_rates"]["catalog"], 0.0);
    let first = &fail["details"]["reasons"][0];
    assert_eq!(
        (
            first["probe"].as_str(),
            first["rule"].as_str(),
            first["decision"].as_str()
        ),
        (Some("search"), Some("error_rate"), Some("fail")),
        "{fail:#}"
    );
    assert_eq!(keys(&fail["action"]), ["detail", "result"]);
    assert_eq!(fail["action"]["result"], "not_configured");

    // The bearer token: none, or a wrong one, is a 401 with JSON and no verification.
    for token in [None, Some("not-the-token")] {
        let reply = agent.post("/api/v1/verify", "{}", token).await;
        reply.assert_status(401);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(
            reply.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("bearer token"))
        );
    }
    // Wrong bodies are refused with a JSON error, not verified.
    let reply = agent
        .post("/api/v1/verify", r#"{"probes": ["nope"]}"#, Some(TOKEN))
        .await;
    reply.assert_status(404);
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope"))
    );
    let reply = agent
        .post("/api/v1/verify", r#"{"probe": "catalog"}"#, Some(TOKEN))
        .await;
    reply.assert_status(422);
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field `probe`")),
        "{}",
        reply.body
    );
    let reply = agent
        .post("/api/v1/verify", r#"{"probes": "#, Some(TOKEN))
        .await;
    reply.assert_status(400);
    assert!(reply.json()["error"].is_string());
    // None of these was a verification.
    let text = agent.metrics().await;
    for verdict in ["pass", "fail"] {
        assert_eq!(
            metric(
                &text,
                &format!("patrol_deploy_verification_total{{verdict=\"{verdict}\"}}")
            ),
            Some(1.0)
        );
    }
}

/// A Flagger webhook payload as Flagger sends it.
fn flagger_payload(checksum: &str, metadata: Value) -> String {
    json!({
        "name": "podinfo",
        "namespace": "shop-prod",
        "phase": "Progressing",
        "checksum": checksum,
        "metadata": metadata,
    })
    .to_string()
}

/// Number of recorded runs of each probe.
async fn run_counts(agent: &Agent, probes: &[&str]) -> Vec<usize> {
    let mut counts = Vec::new();
    for p in probes {
        counts.push(runs_of(agent, p).await.len());
    }
    counts
}

/// Three on-demand probes (`catalog` and `search` tagged `api`, `health` tagged `health`) of
/// routes that take 100 ms, with a baseline of five runs each, triggered through the API;
/// verifications run 5 rounds.
async fn flagger_agent(shop: &Shop, scratch: &Scratch) -> Agent {
    shop.faults().set(Fault {
        latency_ms: 100,
        ..Fault::new("/api/*")
    });
    let probes = format!(
        "{}{}{}",
        probe("catalog", "api, catalog", "/api/products", ""),
        probe("search", "api", "/api/search?q=laptop", ""),
        probe("health", "health", "/api/health", "")
    );
    let agent = start_agent(
        scratch,
        &config(shop, &probes, "  baseline: 1m\n  runs: 5\n  max_runs: 5\n"),
    )
    .await;
    for _ in 0..5 {
        let run = agent.run("{}", Some(TOKEN)).await;
        assert_eq!(run["summary"]["pass"], 3, "{run:#}");
    }
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_hook_selects_probes_by_metadata_and_answers_200_or_500_with_text() {
    let _turn = TIMING.read().await;
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = flagger_agent(&shop, &scratch).await;
    let all = ["catalog", "search", "health"];

    // (metadata, runs added per probe): tags, probes (comma-separated, spaces allowed), both
    // (the union), and none (every probe).
    let cases = [
        (json!({"tags": "catalog"}), [5, 0, 0]),
        (json!({"probes": "search, health"}), [0, 5, 5]),
        (json!({"tags": "health", "probes": "catalog"}), [5, 0, 5]),
        (json!({"tags": "api,health"}), [5, 5, 5]),
        (json!({}), [5, 5, 5]),
    ];
    for (i, (metadata, added)) in cases.iter().enumerate() {
        let before = run_counts(&agent, &all).await;
        let reply = agent
            .post(
                "/hooks/flagger",
                &flagger_payload(&format!("sum-{i}"), metadata.clone()),
                Some(TOKEN),
            )
            .await;
        reply.assert_status(200);
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "{:?}",
            reply.headers
        );
        assert_eq!(
            reply.body,
            "pass shop-prod/podinfo (Progressing): verdict: pass (rules); - every probe within its limits\n",
            "metadata {metadata}"
        );
        let after = run_counts(&agent, &all).await;
        let delta: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(delta, added, "runs added by metadata {metadata}");
    }
    // The checksum is the deploy's version, the namespace its environment.
    assert_eq!(
        metric(
            &agent.metrics().await,
            r#"patrol_deploy_info{environment="shop-prod",version="sum-4"}"#
        ),
        Some(1.0)
    );

    // A failing deploy: 500 with a one-line summary naming the probe and the numbers.
    shop.faults().set(Fault {
        status: Some(502),
        ..Fault::new("/api/products")
    });
    let reply = agent
        .post(
            "/hooks/flagger",
            &flagger_payload("sum-bad", json!({"tags": "catalog"})),
            Some(TOKEN),
        )
        .await;
    reply.assert_status(500);
    let summary = reply
        .body
        .strip_prefix("fail shop-prod/podinfo (Progressing): verdict: fail (rules); - catalog: ")
        .unwrap_or_else(|| panic!("{}", reply.body));
    assert_every_run_failed_message(summary.strip_suffix('\n').expect("one line"));

    // Without a phase, Flagger's payload still works; unknown probes are a 400, not a verdict.
    let reply = agent
        .post(
            "/hooks/flagger",
            r#"{"name":"podinfo","namespace":"shop-prod","metadata":{"probes":"nope"}}"#,
            Some(TOKEN),
        )
        .await;
    reply.assert_status(400);
    assert!(reply.body.contains("nope"), "{}", reply.body);
    let reply = agent
        .post("/hooks/flagger", &flagger_payload("x", json!({})), None)
        .await;
    reply.assert_status(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_verifies_one_checksum_once_at_a_time_and_both_callers_get_the_answer() {
    let _turn = TIMING.read().await;
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = flagger_agent(&shop, &scratch).await;
    let body = flagger_payload("abc123", json!({"tags": "catalog"}));
    let before = runs_of(&agent, "catalog").await.len();
    let started = Instant::now();
    let (a, b) = tokio::join!(
        agent.post("/hooks/flagger", &body, Some(TOKEN)),
        agent.post("/hooks/flagger", &body, Some(TOKEN)),
    );
    let elapsed = started.elapsed();
    let after = runs_of(&agent, "catalog").await.len();
    assert_eq!(
        after - before,
        5,
        "two concurrent requests for one checksum ran {} runs, not one verification's 5 \
         (took {elapsed:?})",
        after - before
    );
    a.assert_status(200);
    b.assert_status(200);
    assert_eq!(a.body, b.body);
    assert!(a.body.starts_with("pass shop-prod/podinfo"), "{}", a.body);

    // A different checksum at the same time is its own verification.
    let other = flagger_payload("def456", json!({"tags": "catalog"}));
    let before = runs_of(&agent, "catalog").await.len();
    let (a, b) = tokio::join!(
        agent.post("/hooks/flagger", &body, Some(TOKEN)),
        agent.post("/hooks/flagger", &other, Some(TOKEN)),
    );
    a.assert_status(200);
    b.assert_status(200);
    let after = runs_of(&agent, "catalog").await.len();
    // Once the first verification of a checksum has answered, a retry verifies afresh.
    assert_eq!(
        after - before,
        10,
        "a finished checksum verifies again; another checksum too"
    );
}

/// An Alertmanager webhook (version 4) with `alerts`.
fn alertmanager_payload(alerts: Value) -> String {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"PatrolDeployRegression\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "patrol-rollback",
        "groupLabels": {"alertname": "PatrolDeployRegression"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
    .to_string()
}

/// One alert.
fn alert(status: &str, fingerprint: &str, labels: Value) -> Value {
    json!({
        "status": status,
        "labels": labels,
        "annotations": {"summary": "checkout is failing"},
        "startsAt": "2025-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    })
}

/// `verify.action` running `sh -c` that appends `$PATROL_VERSION|$PATROL_PROBES|$PATROL_REASON`
/// to `rollback.marker` in the agent's directory after `delay`; `dry_run` as given (absent
/// when `None`).
fn marker_action(delay: &str, dry_run: Option<bool>) -> String {
    let dry = dry_run.map_or(String::new(), |d| format!("    dry_run: {d}\n"));
    format!(
        "  action:\n    command:\n      - sh\n      - -c\n      - sleep {delay}; echo \"$PATROL_VERSION|$PATROL_PROBES|$PATROL_REASON\" >> rollback.marker\n{dry}"
    )
}

/// The marker's lines (none when the file does not exist).
fn marker_lines(scratch: &Scratch) -> Vec<String> {
    std::fs::read_to_string(scratch.file("rollback.marker"))
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_rollback_alerts_act_once_per_fingerprint_and_nothing_else_does() {
    let _turn = TIMING.read().await;
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = start_agent(
        &scratch,
        &config(
            &shop,
            &probe("catalog", "api", "/api/products", ""),
            &marker_action("1", Some(false)),
        ),
    )
    .await;
    let firing = alertmanager_payload(json!([alert(
        "firing",
        "fp-1",
        json!({"alertname": "PatrolDeployRegression", "action": "rollback", "version": "v7", "probe": "catalog"})
    )]));
    let started = Instant::now();
    let reply = agent
        .post("/hooks/alertmanager", &firing, Some(TOKEN))
        .await;
    let answered = started.elapsed();
    reply.assert_status(202);
    assert_eq!(
        reply.json(),
        json!({"accepted": true, "triggered": ["fp-1"]})
    );
    // Answered at once: the command sleeps a second before writing.
    assert!(
        answered < Duration::from_millis(900),
        "answered after {answered:?}"
    );
    assert!(
        marker_lines(&scratch).is_empty(),
        "the action ran synchronously"
    );
    let lines = eventually(
        "the rollback command",
        Duration::from_secs(15),
        async || {
            let lines = marker_lines(&scratch);
            (!lines.is_empty()).then_some(lines)
        },
    )
    .await;
    assert_eq!(
        lines,
        [
            "v7|catalog|verdict: fail (alert); - catalog: Alertmanager alert PatrolDeployRegression is firing"
        ]
    );

    // The same fingerprint again (Alertmanager repeats notifications): nothing more.
    let reply = agent
        .post("/hooks/alertmanager", &firing, Some(TOKEN))
        .await;
    reply.assert_status(202);
    assert_eq!(reply.json()["triggered"], json!([]));
    // Resolved, unlabelled, or labelled otherwise: nothing either.
    let others = alertmanager_payload(json!([
        alert(
            "resolved",
            "fp-2",
            json!({"alertname": "A", "action": "rollback", "version": "v8"})
        ),
        alert("firing", "fp-3", json!({"alertname": "B", "version": "v8"})),
        alert(
            "firing",
            "fp-4",
            json!({"alertname": "C", "action": "page", "version": "v8"})
        ),
    ]));
    let reply = agent
        .post("/hooks/alertmanager", &others, Some(TOKEN))
        .await;
    reply.assert_status(202);
    assert_eq!(reply.json()["triggered"], json!([]));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        marker_lines(&scratch).len(),
        1,
        "{:?}",
        marker_lines(&scratch)
    );
    let text = agent.metrics().await;
    assert_eq!(
        metric(&text, r#"patrol_rollback_actions_total{result="executed"}"#),
        Some(1.0)
    );

    // A version-less alert's deploy is its fingerprint; bad payloads are refused.
    let reply = agent
        .post(
            "/hooks/alertmanager",
            &alertmanager_payload(json!([alert(
                "firing",
                "fp-5",
                json!({"action": "rollback"})
            )])),
            Some(TOKEN),
        )
        .await;
    reply.assert_status(202);
    let lines = eventually("the second rollback", Duration::from_secs(15), async || {
        let lines = marker_lines(&scratch);
        (lines.len() == 2).then_some(lines)
    })
    .await;
    assert!(
        lines[1].starts_with("fp-5||verdict: fail (alert)"),
        "{lines:?}"
    );
    let reply = agent
        .post(
            "/hooks/alertmanager",
            r#"{"version": "3", "alerts": []}"#,
            Some(TOKEN),
        )
        .await;
    reply.assert_status(400);
    let reply = agent.post("/hooks/alertmanager", &firing, None).await;
    reply.assert_status(401);
}

/// An agent whose `catalog` (every 200 ms) has a baseline; `action` are the `verify.action`
/// lines. Breaks `/api/products` at the deploy moment and returns it.
async fn broken_deploy(shop: &Shop, scratch: &Scratch, action: &str) -> (Agent, i64) {
    let agent = start_agent(
        scratch,
        &catalog_config(
            shop,
            &format!("  baseline: 1m\n  runs: 3\n  max_runs: 3\n{action}"),
        ),
    )
    .await;
    wait_for_runs(&agent, "catalog", 6).await;
    let at = deploy_moment().await;
    shop.faults().set(Fault {
        status: Some(500),
        ..Fault::new("/api/products")
    });
    (agent, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_command_runs_once_per_deploy_and_never_in_dry_run() {
    let _turn = TIMING.read().await;
    let (shop_live, shop_dry, shop_default) = (shop().await, shop().await, shop().await);
    let (live, dry, default) = (Scratch::new(), Scratch::new(), Scratch::new());
    let actions = [
        marker_action("0", Some(false)),
        marker_action("0", Some(true)),
        marker_action("0", None),
    ];
    let ((agent, at), (dry_agent, dry_at), (default_agent, default_at)) = tokio::join!(
        broken_deploy(&shop_live, &live, &actions[0]),
        broken_deploy(&shop_dry, &dry, &actions[1]),
        broken_deploy(&shop_default, &default, &actions[2]),
    );

    let body = |at: i64| json!({"probes": ["catalog"], "deploy": {"version": "v2", "at_ms": at}});
    let first = verify(&agent, &body(at)).await;
    assert_eq!(first["verdict"], "fail", "{first:#}");
    assert_eq!(first["action"]["result"], "executed", "{first:#}");
    assert_eq!(
        first["action"]["detail"],
        "`sh -c sleep 0; echo \"$PATROL_VERSION|$PATROL_PROBES|$PATROL_REASON\" >> rollback.marker` exited 0"
    );
    // Argo retries a measurement; Flagger calls every interval: the same deploy, no new action.
    let second = verify(&agent, &body(at)).await;
    assert_eq!(second["verdict"], "fail");
    assert_eq!(
        second["action"]["result"], "skipped_duplicate",
        "{second:#}"
    );
    assert_eq!(
        second["action"]["detail"],
        "the rollback action already ran for deploy `v2`"
    );
    let lines = marker_lines(&live);
    assert_eq!(lines.len(), 1, "exactly one run: {lines:?}");
    let reason = lines[0]
        .strip_prefix("v2|catalog|verdict: fail (rules); - catalog: ")
        .unwrap_or_else(|| panic!("PATROL_VERSION, PATROL_PROBES and PATROL_REASON: {lines:?}"));
    assert_every_run_failed_message(reason);
    let text = agent.metrics().await;
    assert_eq!(
        metric(&text, r#"patrol_rollback_actions_total{result="executed"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"patrol_rollback_actions_total{result="skipped_duplicate"}"#
        ),
        Some(1.0)
    );
    assert!(
        agent.stderr().contains("Rollback action executed."),
        "{}",
        agent.stderr()
    );

    for (agent, at, scratch, what) in [
        (&dry_agent, dry_at, &dry, "dry_run: true"),
        (
            &default_agent,
            default_at,
            &default,
            "no dry_run (default true)",
        ),
    ] {
        let answer = verify(agent, &body(at)).await;
        assert_eq!(answer["verdict"], "fail", "{what}: {answer:#}");
        assert_eq!(answer["action"]["result"], "dry_run", "{what}: {answer:#}");
        assert!(
            answer["action"]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("would run: sh -c sleep 0;")),
            "{what}: {answer:#}"
        );
        assert_eq!(
            metric(
                &agent.metrics().await,
                r#"patrol_rollback_actions_total{result="dry_run"}"#
            ),
            Some(1.0)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !scratch.file("rollback.marker").exists(),
            "{what}: the command ran"
        );
    }
}

/// The text of a JUnit report's `<property name="verdict" value="...">`.
fn junit_verdict(xml: &str) -> Option<String> {
    let start = xml.find(r#"<property name="verdict" value=""#)?
        + r#"<property name="verdict" value=""#.len();
    Some(xml[start..].split('"').next()?.to_string())
}

/// An agent probing `catalog` on demand, with a baseline of twenty runs against `/api/products`
/// at [`BASE_MS`], triggered through the API (no scheduled runs after the deploy to muddy it).
async fn agent_with_baseline(shop: &Shop, scratch: &Scratch) -> Agent {
    shop.faults().set(products(BASE_MS, Fault::default()));
    let agent = start_agent(
        scratch,
        &config(
            shop,
            &probe("catalog", "api", "/api/products", ""),
            "  baseline: 1m\n",
        ),
    )
    .await;
    for _ in 0..20 {
        agent.run(r#"{"probes": ["catalog"]}"#, Some(TOKEN)).await;
    }
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_baseline_from_an_agent_passes_a_healthy_deploy_and_fails_a_slow_one() {
    let _turn = TIMING.write().await;
    let shop = shop().await;
    let scratch = Scratch::new();
    let agent = agent_with_baseline(&shop, &scratch).await;
    let url = format!("http://{}", agent.addr);
    let args = [
        "--baseline-from",
        &url,
        "--runs",
        "5",
        "--max-runs",
        "5",
        "--interval",
        "200ms",
        "--report-json",
        "report.json",
        "--junit",
        "junit.xml",
    ];

    let run = cli(&scratch, &args).await;
    run.assert_code(0);
    assert!(
        run.stdout.contains("PASS  rules verdict after"),
        "{}",
        run.output()
    );
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    assert_eq!(report["verdict"]["verdict"], "pass", "{report:#}");
    assert_eq!(report["verdict"]["check"], "rules");
    assert_eq!(
        report["verdict"]["probes"]["catalog"]["baseline"]["runs"],
        20
    );
    assert_eq!(report["verdict"]["probes"]["catalog"]["current"]["runs"], 5);
    assert_eq!(report["probes"].as_array().map(Vec::len), Some(5));
    let xml = scratch.read("junit.xml");
    let suites = common::parse_junit(&xml);
    let verdict = suites
        .iter()
        .find(|s| s.name.starts_with("verdict"))
        .unwrap_or_else(|| panic!("no verdict testsuite:\n{xml}"));
    assert_eq!(verdict.name, "verdict (rules)");
    assert_eq!(junit_verdict(&xml).as_deref(), Some("pass"), "{xml}");
    assert!(verdict.cases.iter().all(|c| c.outcomes.is_empty()), "{xml}");

    // The deploy: 80% slower.
    shop.faults()
        .set(products(BASE_MS * 18 / 10, Fault::default()));
    let run = cli(&scratch, &args).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("FAIL  rules verdict after"),
        "{}",
        run.output()
    );
    assert!(
        run.stdout
            .contains("  - catalog [latency]: p95 latency rose from "),
        "{}",
        run.output()
    );
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    assert_eq!(report["verdict"]["verdict"], "fail");
    reason(&report["verdict"], "catalog", "latency", "fail");
    let xml = scratch.read("junit.xml");
    assert_eq!(junit_verdict(&xml).as_deref(), Some("fail"), "{xml}");
    let suites = common::parse_junit(&xml);
    let case = suites
        .iter()
        .flat_map(|s| &s.cases)
        .find(|c| c.name == "catalog latency")
        .unwrap_or_else(|| panic!("no `catalog latency` testcase:\n{xml}"));
    assert_eq!(case.outcomes.len(), 1, "{xml}");
    assert_eq!(case.outcomes[0].0, "failure");
    assert!(
        case.outcomes[0].1.starts_with("p95 latency rose from"),
        "{xml}"
    );

    // Without an agent to ask, a usage error (2), not a verdict.
    let run = cli(
        &scratch,
        &[
            "--baseline-from",
            &format!("http://127.0.0.1:{}", common::closed_port()),
        ],
    )
    .await;
    run.assert_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_passes_within_thresholds_and_stops_early_once_they_cannot_be_met() {
    let _turn = TIMING.write().await;
    let shop = shop().await;
    let scratch = Scratch::new();
    scratch.write(
        "patrol.yaml",
        &config(
            &shop,
            &probe("catalog", "api", "/api/products", ""),
            "  thresholds: { p95: 500ms, p99: 1s, error_rate: 1% }\n",
        ),
    );
    let args = [
        "--watch",
        "3s",
        "--interval",
        "300ms",
        "--report-json",
        "report.json",
    ];

    let run = cli(&scratch, &args).await;
    run.assert_code(0);
    assert!(
        run.elapsed >= Duration::from_millis(2600),
        "{:?}",
        run.elapsed
    );
    assert!(
        run.stdout.contains("PASS  thresholds verdict"),
        "{}",
        run.output()
    );
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    assert_eq!(report["verdict"]["check"], "thresholds");
    assert_eq!(
        report["verdict"]["probes"]["catalog"]["current"]["runs"],
        10
    );
    for rule in ["error_rate", "p95", "p99"] {
        reason(&report["verdict"], "catalog", rule, "pass");
    }

    // One error in ten planned runs is 10%: the 1% limit is out of reach after the first.
    shop.faults().set(Fault {
        status: Some(500),
        ..Fault::new("/api/products")
    });
    let run = cli(&scratch, &args).await;
    run.assert_code(1);
    assert!(
        run.elapsed < Duration::from_millis(1500),
        "a watch of 3s should stop at the first error, took {:?}",
        run.elapsed
    );
    assert!(
        run.stderr.contains("Stopping early after 1 of 10 rounds"),
        "{}",
        run.output()
    );
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    assert_eq!(report["verdict"]["verdict"], "fail");
    let errors = reason(&report["verdict"], "catalog", "error_rate", "fail");
    assert_eq!(
        errors["message"],
        "error rate 100.00% (1 of 1 runs) exceeds the 1% limit"
    );

    // Slow: one run over 500 ms is more than 5% of ten, so the p95 is lost too.
    shop.faults().set(Fault {
        latency_ms: 600,
        ..Fault::new("/api/products")
    });
    let run = cli(&scratch, &args).await;
    run.assert_code(1);
    assert!(
        run.elapsed < Duration::from_millis(2000),
        "took {:?}",
        run.elapsed
    );
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    let p95 = reason(&report["verdict"], "catalog", "p95", "fail");
    assert!(
        p95["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("exceeds the 500ms limit (1 of 1 runs over it)")),
        "{p95}"
    );

    // Without thresholds, --watch is a usage error.
    scratch.write(
        "patrol.yaml",
        &config(
            &shop,
            &probe("catalog", "api", "/api/products", ""),
            "  runs: 5\n  max_runs: 5\n",
        ),
    );
    let run = cli(&scratch, &["--watch", "1s"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("verify.thresholds"), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_canary_fails_a_slower_canary_and_passes_equal_tracks() {
    let _turn = TIMING.write().await;
    let (stable, canary) = (shop().await, shop().await);
    for shop in [&stable, &canary] {
        shop.faults().set(products(50, Fault::default()));
    }
    let scratch = Scratch::new();
    scratch.write(
        "patrol.yaml",
        &config(
            &stable,
            &probe("catalog", "api", "/api/products", ""),
            &format!(
                "  canary:\n    stable: {{ api: \"{}\" }}\n    canary: {{ api: \"{}\" }}\n",
                stable.url(),
                canary.url()
            ),
        ),
    );
    let args = [
        "--canary",
        "--runs",
        "12",
        "--max-runs",
        "12",
        "--interval",
        "100ms",
        "--report-json",
        "report.json",
    ];

    let run = cli(&scratch, &args).await;
    run.assert_code(0);
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    assert_eq!(report["verdict"]["verdict"], "pass", "{report:#}");
    assert_eq!(report["verdict"]["check"], "canary");
    let numbers = &report["verdict"]["probes"]["catalog"];
    assert_eq!(numbers["baseline"]["runs"], 12, "stable runs");
    assert_eq!(numbers["current"]["runs"], 12, "canary runs");
    let pass = reason(&report["verdict"], "catalog", "canary", "pass");
    assert!(
        pass["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("pass: latency shift")),
        "{pass}"
    );

    // The canary is 100 ms slower.
    canary.faults().set(products(150, Fault::default()));
    let run = cli(&scratch, &args).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("FAIL  canary verdict after"),
        "{}",
        run.output()
    );
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    let high = reason(&report["verdict"], "catalog", "canary", "fail");
    let message = high["message"].as_str().expect("message");
    let shift: f64 = message
        .strip_prefix("high: canary slower: latency shift ")
        .and_then(|m| m.split("ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!((70.0..200.0).contains(&shift), "{message}");

    // Too few samples on each side is inconclusive: exit 1, or 0 with --allow-inconclusive.
    let few = [
        "--canary",
        "--runs",
        "4",
        "--max-runs",
        "4",
        "--interval",
        "50ms",
        "--report-json",
        "report.json",
    ];
    canary.faults().set(products(50, Fault::default()));
    let run = cli(&scratch, &few).await;
    run.assert_code(1);
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    assert_eq!(report["verdict"]["verdict"], "inconclusive", "{report:#}");
    let samples = reason(&report["verdict"], "catalog", "samples", "inconclusive");
    assert_eq!(
        samples["message"],
        "4 stable and 4 canary samples, 10 needed on each side"
    );
    let mut allowed = few.to_vec();
    allowed.push("--allow-inconclusive");
    cli(&scratch, &allowed).await.assert_code(0);

    // Without a cap (verify.max_runs, 100), runs go on until no failure on either side rules out
    // the 10 points allowed: 0 of 35 (the interval of the rise reaches 9.9).
    let sequential = [
        "--canary",
        "--runs",
        "12",
        "--interval",
        "50ms",
        "--report-json",
        "report.json",
    ];
    cli(&scratch, &sequential).await.assert_code(0);
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    assert_eq!(report["verdict"]["verdict"], "pass", "{report:#}");
    let numbers = &report["verdict"]["probes"]["catalog"];
    let runs = numbers["current"]["runs"].as_u64().expect("runs");
    assert!((35..=45).contains(&runs), "{runs} runs: {report:#}");
    assert_eq!(
        numbers["baseline"]["runs"], runs,
        "stable and canary run alike"
    );
}

/// `name` on PATH, or `None` after saying loudly on stderr why the calling test checks nothing.
fn tool(name: &str, test: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: `{name}` is not on PATH (Debian package `prometheus`, which .ci/run \
             installs); the --prometheus baseline is NOT tested"
        );
    }
    found
}

/// A running Prometheus scraping one target every second; killed on drop.
struct Prometheus {
    addr: SocketAddr,
    _child: tokio::process::Child,
    _scratch: Scratch,
}

impl Prometheus {
    /// Prometheus scraping `target` every `interval` (e.g. `1s`).
    async fn start(binary: &Path, target: SocketAddr, interval: &str) -> Prometheus {
        let scratch = Scratch::new();
        let config = scratch.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n\
                 scrape_configs:\n  - job_name: patrol\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        );
        let port = common::closed_port();
        let log = std::fs::File::create(scratch.file("prometheus.log")).expect("create the log");
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.file("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn prometheus");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
        let prometheus = Prometheus {
            addr,
            _child: child,
            _scratch: scratch,
        };
        eventually(
            "Prometheus to be ready",
            Duration::from_secs(60),
            async || {
                let up = tokio::net::TcpStream::connect(addr).await.is_ok()
                    && http(addr, "GET", "/-/ready", &[], Vec::new()).await.status == 200;
                up.then_some(())
            },
        )
        .await;
        prometheus
    }

    /// The value of an instant query's first sample.
    async fn scalar(&self, promql: &str) -> Option<f64> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let reply = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?{query}"),
            &[],
            Vec::new(),
        )
        .await;
        reply.json()["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prometheus_baseline_passes_a_healthy_deploy_and_fails_errors_and_slowness() {
    let Some(binary) = tool("prometheus", "the --prometheus baseline test") else {
        return;
    };
    let _turn = TIMING.write().await;
    let shop = shop().await;
    shop.faults().set(products(BASE_MS, Fault::default()));
    let scratch = Scratch::new();
    // On demand, so that no run after the "deploy" reaches Prometheus' baseline window.
    let agent = start_agent(
        &scratch,
        &config(
            &shop,
            &probe("catalog", "api", "/api/products", ""),
            "  baseline: 1m\n",
        ),
    )
    .await;
    let prometheus = Prometheus::start(&binary, agent.addr, "1s").await;
    // Prometheus' increase() counts from the first scrape of a series: make it exist first.
    agent.run(r#"{"probes": ["catalog"]}"#, Some(TOKEN)).await;
    eventually(
        "Prometheus to scrape catalog",
        Duration::from_secs(30),
        async || {
            prometheus
                .scalar(r#"sum(probe_runs_total{probe="catalog"})"#)
                .await
                .map(|_| ())
        },
    )
    .await;
    for _ in 0..15 {
        agent.run(r#"{"probes": ["catalog"]}"#, Some(TOKEN)).await;
    }
    eventually(
        "Prometheus to see 15 more runs of catalog",
        Duration::from_secs(30),
        async || {
            let runs = prometheus
                .scalar(r#"sum(probe_runs_total{probe="catalog"})"#)
                .await?;
            (runs >= 16.0).then_some(())
        },
    )
    .await;
    let url = format!("http://{}", prometheus.addr);
    let args = |runs: &'static str| {
        [
            "--prometheus".to_string(),
            url.clone(),
            "--baseline-window".into(),
            "1m".into(),
            "--runs".into(),
            runs.into(),
            "--interval".into(),
            "50ms".into(),
            "--report-json".into(),
            "report.json".into(),
        ]
    };
    let cli = async |args: [String; 10]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&scratch, &args).await
    };

    // 20 post-deploy runs, so that their p95 is not the one slowest run.
    let run = cli(args("20")).await;
    run.assert_code(0);
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    let baseline = &report["verdict"]["probes"]["catalog"]["baseline"];
    assert!(
        baseline["runs"]
            .as_u64()
            .is_some_and(|r| (13..=20).contains(&r)),
        "{report:#}"
    );
    assert_eq!(baseline["failures"], 0);
    // From the runs Prometheus scraped (one a second; the runs take ~200 ms each, so only 3-5
    // of these 16 are seen), or from the histogram when fewer than 5: either way said.
    let p95 = ms(&baseline["p95"]);
    assert!(p95 >= BASE_MS, "{report:#}");
    assert!(
        baseline["p95_source"].as_str().is_some_and(|s| {
            s.ends_with("scraped runs in Prometheus")
                || s == "Prometheus histogram buckets, interpolated"
        }),
        "{report:#}"
    );

    // Errors: every post-deploy run fails.
    shop.faults().set(products(
        BASE_MS,
        Fault {
            status: Some(500),
            ..Fault::default()
        },
    ));
    let run = cli(args("5")).await;
    run.assert_code(1);
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    let errors = reason(&report["verdict"], "catalog", "error_rate", "fail");
    assert_every_run_failed_message(errors["message"].as_str().expect("message"));

    // Four times slower.
    shop.faults().set(products(BASE_MS * 4, Fault::default()));
    let run = cli(args("5")).await;
    run.assert_code(1);
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    reason(&report["verdict"], "catalog", "latency", "fail");
}

// Once product bugs, reproduced and fixed: each asserts the behaviour the issue asks for.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_does_not_pass_an_inconclusive_verdict() {
    let _turn = TIMING.read().await;
    let shop = shop().await;
    let scratch = Scratch::new();
    // A fresh agent: no baseline at all.
    let agent = start_agent(
        &scratch,
        &config(
            &shop,
            &probe("catalog", "api", "/api/products", ""),
            "  runs: 5\n  max_runs: 5\n",
        ),
    )
    .await;
    let reply = agent
        .post(
            "/hooks/flagger",
            &flagger_payload("fresh", json!({})),
            Some(TOKEN),
        )
        .await;
    assert!(
        reply.body.contains("verdict: inconclusive"),
        "{}",
        reply.body
    );
    assert_ne!(
        reply.status, 200,
        "too few samples must never pass: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_keeps_failing_a_regressed_canary_on_every_rollout_call() {
    let _turn = TIMING.write().await;
    let shop = shop().await;
    shop.faults().set(products(BASE_MS, Fault::default()));
    let scratch = Scratch::new();
    let agent = start_agent(
        &scratch,
        &catalog_config(&shop, "  baseline: 1m\n  runs: 5\n  max_runs: 5\n"),
    )
    .await;
    wait_for_runs(&agent, "catalog", 40).await;
    shop.faults()
        .set(products(BASE_MS * 18 / 10, Fault::default()));
    // Flagger calls the rollout hook at every analysis interval with the same checksum.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let reply = agent
            .post(
                "/hooks/flagger",
                &flagger_payload("regressed", json!({})),
                Some(TOKEN),
            )
            .await;
        answers.push(format!("{} {}", reply.status, reply.body.trim()));
    }
    assert!(
        answers.iter().all(|a| a.starts_with("500 fail")),
        "every call should fail the +80% canary:\n{}",
        answers.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prometheus_baseline_catches_eighty_percent_slower() {
    let Some(binary) = tool("prometheus", "the --prometheus +80% test") else {
        return;
    };
    let _turn = TIMING.write().await;
    let shop = shop().await;
    shop.faults().set(products(BASE_MS, Fault::default()));
    let scratch = Scratch::new();
    let agent = start_agent(
        &scratch,
        &config(
            &shop,
            &probe("catalog", "api", "/api/products", ""),
            "  baseline: 1m\n",
        ),
    )
    .await;
    // Scraped about as often as the runs come (as with a probe every 30 s and a 15 s scrape),
    // so that the baseline p95 is that of ~30 runs, not the slowest of the few a 1 s scrape
    // would see of these back-to-back runs.
    let prometheus = Prometheus::start(&binary, agent.addr, "200ms").await;
    agent.run(r#"{"probes": ["catalog"]}"#, Some(TOKEN)).await;
    eventually(
        "Prometheus to scrape catalog",
        Duration::from_secs(30),
        async || {
            prometheus
                .scalar(r#"sum(probe_runs_total{probe="catalog"})"#)
                .await
                .map(|_| ())
        },
    )
    .await;
    for _ in 0..60 {
        agent.run(r#"{"probes": ["catalog"]}"#, Some(TOKEN)).await;
    }
    eventually(
        "Prometheus to see 60 more runs",
        Duration::from_secs(30),
        async || {
            let runs = prometheus
                .scalar(r#"sum(probe_runs_total{probe="catalog"})"#)
                .await?;
            (runs >= 61.0).then_some(())
        },
    )
    .await;
    shop.faults()
        .set(products(BASE_MS * 18 / 10, Fault::default()));
    let url = format!("http://{}", prometheus.addr);
    let run = cli(
        &scratch,
        &[
            "--prometheus",
            &url,
            "--baseline-window",
            "1m",
            "--runs",
            "20",
            "--interval",
            "50ms",
            "--report-json",
            "report.json",
        ],
    )
    .await;
    // Runs of 201-210 ms all fall in the (0.2, 0.3] bucket; histogram_quantile puts the p95 at
    // 295 ms, and 362 ms is only +23% of that. The scraped runs' p95 is ~210 ms.
    run.assert_code(1);
    let report: Value = serde_json::from_str(&scratch.read("report.json")).expect("JSON report");
    let latency = reason(&report["verdict"], "catalog", "latency", "fail");
    assert!(
        latency["message"]
            .as_str()
            .is_some_and(|m| m.contains("scraped runs in Prometheus")),
        "{report:#}"
    );
}
