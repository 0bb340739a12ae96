//! Dashboards, alert rules and Kubernetes manifests, tested against what the agent really exports.
//!
//! - rules: `promtool check rules` and `promtool test rules` on every file in dashboards/alerts,
//!   and every alert has a test case that fires it and one that does not
//! - live: a real Prometheus (the binary on PATH) scrapes a real `patrol run` probing the
//!   in-process shop: passing, failing (with skipped steps), timing-out and overlapping probes, an
//!   HTTPS target, a browser probe (where Chromium is installed), a deploy posted to the API and
//!   a failing deploy verification with its (dry-run) rollback action. Every PromQL expression of
//!   every dashboard panel, variable and annotation and of every rule is evaluated through
//!   Prometheus' HTTP API: each must parse, every panel and variable query must return data
//!   (the web vitals panels only where Chromium is installed: [`BROWSER_PANELS`]), and every
//!   rule loaded into Prometheus must evaluate without error
//! - names: every metric name used in dashboards/ and deploy/ is in the agent's /metrics
//! - Grafana: dashboard JSON and provisioning YAML are well-formed and use the datasource variable
//! - Kubernetes: every manifest parses with the expected kind, the Deployment is hardened and
//!   probed, the PrometheusRule and the per-location ConfigMaps are what the generator scripts
//!   build (so they never drift), each location's config passes `patrol validate`, and
//!   `kubectl kustomize` (when kubectl is on PATH) builds one agent per location
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, which .ci/run installs;
//! where they are missing the tests that need them say so and pass.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use regex::Regex;
use saphyr::{LoadableYamlNode, Scalar, Yaml};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use common::{Scratch, closed_port, workspace_root};

// ------------------------------------------------------------------------------------------------
// Known gaps, each with its reason. Keep these lists short and explained.

/// Dashboard panels that need a browser probe: they must have data where Chromium and
/// chromedriver are installed (the live agent then runs a browser probe), and may have none
/// where they are not. Their queries must parse everywhere.
const BROWSER_PANELS: &[&str] = &["Browser web vitals p75", "Web vitals p75"];

/// Metric families only browser probes produce: exported only where Chromium is installed.
/// Each must still be defined in agent/src/metrics.rs or agent/src/metrics/series.rs.
const BROWSER_METRICS: &[&str] = &["probe_browser_web_vital_seconds"];

/// Series every Prometheus has, which dashboards and rules may use besides the agent's.
const PROMETHEUS_SERIES: &[&str] = &["up", "ALERTS"];

// ------------------------------------------------------------------------------------------------
// Paths, YAML, tools

fn dashboards_dir() -> PathBuf {
    workspace_root().join("dashboards")
}

fn alerts_dir() -> PathBuf {
    dashboards_dir().join("alerts")
}

fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// Files in `dir` whose names end with `suffix`, sorted.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    files.sort();
    files
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A path relative to the workspace root, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every document of a YAML file, as JSON values (mapping keys become strings).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    let docs = Yaml::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", rel(path)));
    docs.iter().map(yaml_to_json).collect()
}

/// The single document of a YAML file.
fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{} should hold one YAML document", rel(path));
    docs.remove(0)
}

fn yaml_to_json(y: &Yaml<'_>) -> Value {
    match y {
        Yaml::Value(s) => scalar_to_json(s),
        Yaml::Representation(text, _, _) => Value::String(text.to_string()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match yaml_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(_, inner) => yaml_to_json(inner),
        Yaml::Alias(_) | Yaml::BadValue => Value::Null,
    }
}

fn scalar_to_json(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => json!(i),
        Scalar::FloatingPoint(f) => json!(f.into_inner()),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `name` on PATH, or `None` after saying on stderr why the calling test checks nothing.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = on_path(name);
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: `{name}` is not on PATH (Debian package `prometheus`, which .ci/run \
             installs)"
        );
    }
    found
}

/// Runs a command to completion, failing the test with its output unless it succeeds.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

// ------------------------------------------------------------------------------------------------
// Rules

/// Every rules file.
fn rules_files() -> Vec<PathBuf> {
    let files = files_ending(&alerts_dir(), ".rules.yml");
    assert!(!files.is_empty(), "no dashboards/alerts/*.rules.yml");
    files
}

/// Every rule of a `groups:` document, with its file and group.
fn rules_of(doc: &Value, origin: &str) -> Vec<(String, Value)> {
    let groups = doc["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("{origin}: no `groups` list"));
    let mut out = Vec::new();
    for group in groups {
        let name = group["name"].as_str().unwrap_or("?");
        for rule in group["rules"]
            .as_array()
            .unwrap_or_else(|| panic!("{origin}: group {name} has no `rules` list"))
        {
            out.push((format!("{origin} group {name}"), rule.clone()));
        }
    }
    out
}

/// Every rule of every rules file.
fn all_rules() -> Vec<(String, Value)> {
    rules_files()
        .iter()
        .flat_map(|f| rules_of(&yaml_doc(f), &rel(f)))
        .collect()
}

fn rule_name(rule: &Value) -> String {
    rule["alert"]
        .as_str()
        .or_else(|| rule["record"].as_str())
        .unwrap_or("?")
        .to_string()
}

fn rule_by_alert(name: &str) -> Value {
    all_rules()
        .into_iter()
        .map(|(_, r)| r)
        .find(|r| r["alert"] == name)
        .unwrap_or_else(|| panic!("no alert rule named {name}"))
}

#[test]
fn promtool_check_rules_accepts_every_rules_file() {
    let Some(promtool) = tool("promtool", "promtool check rules") else {
        return;
    };
    for file in rules_files() {
        let out = run_ok(Command::new(&promtool).arg("check").arg("rules").arg(&file));
        assert!(out.contains("SUCCESS"), "{}: {out}", rel(&file));
    }
}

#[test]
fn promtool_test_rules_passes_every_test_file() {
    let Some(promtool) = tool("promtool", "promtool test rules") else {
        return;
    };
    let tests = files_ending(&alerts_dir(), ".test.yml");
    assert!(!tests.is_empty(), "no dashboards/alerts/*.test.yml");
    let out = run_ok(
        Command::new(&promtool)
            .current_dir(alerts_dir())
            .args(["test", "rules"])
            .args(tests.iter().map(|t| t.file_name().expect("a file name"))),
    );
    assert!(!out.contains("FAILED"), "{out}");
}

/// Every alert has a promtool case where it fires and one where it does not; every recording
/// rule's value is checked by a `promql_expr_test`; every rules file is tested.
#[test]
fn every_rule_has_a_firing_and_a_silent_test_case() {
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    let mut exprs: Vec<String> = Vec::new();
    let mut tested_files: BTreeSet<String> = BTreeSet::new();
    for file in files_ending(&alerts_dir(), ".test.yml") {
        let doc = yaml_doc(&file);
        for f in doc["rule_files"].as_array().into_iter().flatten() {
            tested_files.insert(f.as_str().unwrap_or_default().to_string());
        }
        for group in doc["tests"].as_array().into_iter().flatten() {
            for case in group["alert_rule_test"].as_array().into_iter().flatten() {
                let name = case["alertname"].as_str().unwrap_or_default().to_string();
                let firing = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
                if firing {
                    fires.insert(name);
                } else {
                    silent.insert(name);
                }
            }
            for case in group["promql_expr_test"].as_array().into_iter().flatten() {
                exprs.push(case["expr"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    let mut problems = Vec::new();
    for file in rules_files() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !tested_files.contains(&name) {
            problems.push(format!("{name} is not in any test file's rule_files"));
        }
    }
    for (origin, rule) in all_rules() {
        let name = rule_name(&rule);
        if rule.get("alert").is_some() {
            if !fires.contains(&name) {
                problems.push(format!("{origin}: no test case fires {name}"));
            }
            if !silent.contains(&name) {
                problems.push(format!("{origin}: no test case expects {name} not to fire"));
            }
        } else if !exprs.iter().any(|e| e.contains(&name)) {
            problems.push(format!(
                "{origin}: no promql_expr_test checks the recording rule {name}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The alerts the issue asks for exist, with the shape it asks for.
#[test]
fn the_required_alerts_exist() {
    let failing = rule_by_alert("PatrolProbeFailing");
    assert!(failing["for"].is_string(), "probe failing needs `for`");
    assert!(
        rule_by_alert("PatrolProbeStepFailing")["expr"]
            .as_str()
            .is_some_and(|e| e.contains("probe_step_success"))
    );
    assert!(
        rule_by_alert("PatrolProbeLatencyRegression")["expr"]
            .as_str()
            .is_some_and(|e| e.contains(" offset "))
    );
    let tls = rule_by_alert("PatrolTLSCertificateExpiringSoon");
    assert!(
        tls["expr"].as_str().is_some_and(
            |e| e.contains("probe_ssl_earliest_cert_expiry") && e.contains("30 * 86400")
        ),
        "{tls}"
    );
    assert!(
        rule_by_alert("PatrolAgentAbsent")["expr"]
            .as_str()
            .is_some_and(|e| e.contains(r#"absent(up{job="patrol"}"#))
    );
    assert!(
        rule_by_alert("PatrolSchedulerLag")["expr"]
            .as_str()
            .is_some_and(|e| e.contains("patrol_scheduler_lag_seconds_bucket"))
    );
    assert!(
        rule_by_alert("PatrolConfigReloadFailed")["expr"]
            .as_str()
            .is_some_and(|e| e.contains("patrol_config_reload_total"))
    );

    // Multi-window, multi-burn-rate: the SRE workbook's window pairs and factors.
    let fast = rule_by_alert("PatrolProbeErrorBudgetBurn")["expr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for needle in ["rate1h", "rate5m", "rate6h", "rate30m", "14.4", "6 * 0.001"] {
        assert!(fast.contains(needle), "fast burn lacks {needle}: {fast}");
    }
    let slow = rule_by_alert("PatrolProbeErrorBudgetBurnSlow")["expr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for needle in ["rate1d", "rate2h", "rate3d", "rate6h", "3 * 0.001"] {
        assert!(slow.contains(needle), "slow burn lacks {needle}: {slow}");
    }

    // The runbook's three rollback conditions, and only they, carry action="rollback".
    let rollback: BTreeSet<String> = all_rules()
        .into_iter()
        .filter(|(_, r)| r["labels"]["action"] == "rollback")
        .map(|(_, r)| rule_name(&r))
        .collect();
    let expected: BTreeSet<String> = [
        "PatrolRollbackErrorRateIncrease",
        "PatrolRollbackLatencyIncrease",
        "PatrolRollbackHealthChecksFailing",
    ]
    .map(String::from)
    .into();
    assert_eq!(rollback, expected);
    let error_rate = rule_by_alert("PatrolRollbackErrorRateIncrease")["expr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error_rate.contains("> 0.10"), "{error_rate}");
    let latency = rule_by_alert("PatrolRollbackLatencyIncrease")["expr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(latency.contains("1.5 *"), "{latency}");
    let health = rule_by_alert("PatrolRollbackHealthChecksFailing")["expr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(health.contains("> 0.20"), "{health}");

    // Every alert says what it is about.
    for (origin, rule) in all_rules() {
        if rule.get("alert").is_some() {
            let name = rule_name(&rule);
            assert!(
                rule["labels"]["severity"].is_string(),
                "{origin}: {name} has no severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string()
                    && rule["annotations"]["description"].is_string(),
                "{origin}: {name} needs a summary and a description"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Queries of dashboards and rules

/// What a query belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A panel target: must return data.
    Panel,
    /// A template variable (`label_values(expr, label)`): must return series with the label.
    Variable,
    /// An annotation: must evaluate.
    Annotation,
    /// An alerting or recording rule: must evaluate.
    Rule,
}

/// One PromQL expression as written in a dashboard or rules file.
#[derive(Debug, Clone)]
struct Query {
    kind: Kind,
    /// File, dashboard and panel, for messages.
    origin: String,
    /// The panel title (panels only).
    panel: String,
    /// The expression with Grafana variables (dashboards) as written.
    expr: String,
    /// For variables: the label whose values are listed.
    label: Option<String>,
}

fn dashboard_files() -> Vec<PathBuf> {
    let files = files_ending(&dashboards_dir().join("grafana"), ".json");
    assert!(
        files.len() >= 2,
        "expected the overview and drill-down dashboards"
    );
    files
}

fn dashboard(path: &Path) -> Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", rel(path)))
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dash: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        for nested in p["panels"].as_array().into_iter().flatten() {
            out.push(nested.clone());
        }
    }
    out
}

/// `label_values(expr, label)` → (`expr`, `label`).
fn label_values(query: &str) -> (String, String) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query `{query}` is not label_values(expr, label)"));
    let (expr, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("variable query `{query}` names no label"));
    (expr.trim().to_string(), label.trim().to_string())
}

fn dashboard_queries() -> Vec<Query> {
    let mut out = Vec::new();
    for file in dashboard_files() {
        let dash = dashboard(&file);
        let title = dash["title"].as_str().unwrap_or("?");
        for p in panels(&dash) {
            let panel = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{title} / {panel}: a target without `expr`"));
                out.push(Query {
                    kind: Kind::Panel,
                    origin: format!("{} / {title} / panel {panel:?}", rel(&file)),
                    panel: panel.clone(),
                    expr: expr.to_string(),
                    label: None,
                });
            }
        }
        for v in dash["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] != "query" {
                continue;
            }
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_else(|| panic!("{title}: variable {} has no query", v["name"]));
            let (expr, label) = label_values(q);
            out.push(Query {
                kind: Kind::Variable,
                origin: format!("{} / {title} / variable ${}", rel(&file), v["name"]),
                panel: String::new(),
                expr,
                label: Some(label),
            });
        }
        for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
            if let Some(expr) = a["expr"].as_str() {
                out.push(Query {
                    kind: Kind::Annotation,
                    origin: format!("{} / {title} / annotation {}", rel(&file), a["name"]),
                    panel: String::new(),
                    expr: expr.to_string(),
                    label: None,
                });
            }
        }
    }
    out
}

fn rule_queries() -> Vec<Query> {
    all_rules()
        .into_iter()
        .map(|(origin, rule)| Query {
            kind: Kind::Rule,
            origin: format!("{origin} / {}", rule_name(&rule)),
            panel: String::new(),
            expr: rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{origin}: a rule without expr"))
                .to_string(),
            label: None,
        })
        .collect()
}

/// The Grafana variables every dashboard may use: built-ins with the values a 5-minute range at
/// a 1-minute interval would give them, and the dashboard variables, as "everything".
fn grafana_to_promql(expr: &str, variables: &BTreeSet<String>) -> String {
    let builtins: BTreeMap<&str, &str> = [
        ("__rate_interval", "1m"),
        ("__interval", "1m"),
        ("__interval_ms", "60000"),
        ("__range", "5m"),
        ("__range_s", "300"),
        ("__range_ms", "300000"),
    ]
    .into();
    let var = Regex::new(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)").expect("a valid regex");
    var.replace_all(expr, |c: &regex::Captures<'_>| {
        let name = c
            .get(1)
            .or_else(|| c.get(2))
            .map(|m| m.as_str())
            .unwrap_or_default();
        if let Some(value) = builtins.get(name) {
            (*value).to_string()
        } else if variables.contains(name) {
            ".*".to_string()
        } else {
            panic!("`{expr}` uses ${name}, which is neither a Grafana built-in nor a variable of the dashboard")
        }
    })
    .into_owned()
}

/// The names of every dashboard's template variables.
fn dashboard_variables() -> BTreeSet<String> {
    dashboard_files()
        .iter()
        .flat_map(|f| {
            dashboard(f)["templating"]["list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect()
}

/// The metric names a PromQL expression selects (functions, keywords, label names, strings,
/// durations and numbers removed).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "atan2",
    ];
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"#).expect("regex");
    let braces = Regex::new(r"\{[^}]*\}").expect("regex");
    let brackets = Regex::new(r"\[[^\]]*\]").expect("regex");
    let grouping = Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
        .expect("regex");
    let token = Regex::new(r"[0-9][0-9A-Za-z_.]*|[A-Za-z_:][A-Za-z0-9_:]*").expect("regex");

    let text = strings.replace_all(expr, "\"\"");
    let text = braces.replace_all(&text, "{}");
    let text = brackets.replace_all(&text, "[]");
    let text = grouping.replace_all(&text, "$1 ()");
    let mut names = BTreeSet::new();
    for m in token.find_iter(&text) {
        let word = m.as_str();
        if word.starts_with(|c: char| c.is_ascii_digit()) || KEYWORDS.contains(&word) {
            continue;
        }
        let next = text[m.end()..].trim_start().chars().next();
        if next == Some('(') {
            continue; // a function
        }
        names.insert(word.to_string());
    }
    names
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (probe, le) (rate(probe_all_duration_seconds_bucket{location=~"$location", step!="x"}[5m] offset 1d)))
           > 1.5 * max without (le) (a:b:c) and on () (time() - max(patrol_deploy_timestamp_seconds) < 30 * 86400)
           or label_replace(up, "x", "$1", "instance", "(.*)")"#,
    );
    let expected: BTreeSet<String> = [
        "probe_all_duration_seconds_bucket",
        "a:b:c",
        "patrol_deploy_timestamp_seconds",
        "up",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
    assert_eq!(
        grafana_to_promql(
            r#"rate(x{probe=~"$probe", l=~"${location:regex}"}[$__rate_interval]) / $__range_s"#,
            &["probe".to_string(), "location".to_string()].into()
        ),
        r#"rate(x{probe=~".*", l=~".*"}[1m]) / 300"#
    );
}

// ------------------------------------------------------------------------------------------------
// Grafana: static checks

#[test]
fn dashboards_are_well_formed_and_use_the_datasource_variable() {
    let mut uids = BTreeSet::new();
    for file in dashboard_files() {
        let text = read(&file);
        let name = rel(&file);
        assert!(
            !text.contains("DS_PROMETHEUS") && !text.contains("__inputs"),
            "{name}: use the `datasource` variable, not an import-time input"
        );
        let dash = dashboard(&file);
        let uid = dash["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty(), "{name}: no uid");
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");
        assert!(dash["title"].is_string(), "{name}: no title");

        let vars = dash["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no templating.list"));
        let var = |n: &str| {
            vars.iter()
                .find(|v| v["name"] == n)
                .unwrap_or_else(|| panic!("{name}: no `{n}` variable"))
        };
        let ds = var("datasource");
        assert_eq!(ds["type"], "datasource", "{name}");
        assert_eq!(ds["query"], "prometheus", "{name}");
        for n in ["location", "probe"] {
            let v = var(n);
            assert_eq!(v["type"], "query", "{name}: ${n}");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}: ${n}");
        }

        let mut ids = BTreeSet::new();
        let all = panels(&dash);
        assert!(all.len() > 5, "{name}: too few panels");
        for p in &all {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{name}: a panel without a title");
            let id = p["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: {title} has no id"));
            assert!(ids.insert(id), "{name}: panel id {id} used twice");
            for key in ["x", "y", "w", "h"] {
                assert!(
                    p["gridPos"][key].is_i64(),
                    "{name}: {title} has no gridPos.{key}"
                );
            }
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {title} must use the datasource variable"
            );
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{name}: panel {title} has no query");
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{name}: a query of {title} must use the datasource variable"
                );
            }
        }
        for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
            if a.get("expr").is_some() {
                assert_eq!(a["datasource"]["uid"], "${datasource}", "{name}: {a}");
            }
        }
    }

    // What the overview must show.
    let overview = dashboard(&dashboards_dir().join("grafana/patrol-overview.json"));
    let exprs: Vec<String> = panels(&overview)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    let uses = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    for needle in [
        "probe_success",
        "histogram_quantile(0.5, sum by (probe, le) (rate(probe_all_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (probe, le) (rate(probe_all_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (probe, le) (rate(probe_all_duration_seconds_bucket",
        "probe_step_duration_seconds_bucket",
        "probe_http_all_duration_seconds",
        "probe_ssl_earliest_cert_expiry",
        "probe_browser_web_vital_seconds_bucket",
        "patrol_deploy_info",
        "patrol_deploy_timestamp_seconds",
        "patrol_deploy_verification_total",
        "patrol_scheduler_lag_seconds_bucket",
        "patrol_run_queue_wait_seconds_bucket",
        "patrol_runs_in_flight",
        "patrol_config_reload_total",
    ] {
        assert!(uses(needle), "the overview never uses {needle}");
    }
    assert!(
        panels(&overview).iter().any(|p| p["type"] == "heatmap"),
        "the overview has no latency heatmap"
    );
    let annotations = overview["annotations"]["list"].to_string();
    assert!(
        annotations.contains("patrol_deploy_info"),
        "no deploy annotations"
    );
}

#[test]
fn grafana_provisioning_parses() {
    let dir = dashboards_dir().join("grafana/provisioning");
    let ds = yaml_doc(&dir.join("datasources/patrol.yaml"));
    assert_eq!(ds["apiVersion"], 1);
    let source = &ds["datasources"][0];
    assert_eq!(source["type"], "prometheus", "{ds}");
    assert!(source["url"].is_string(), "{ds}");

    let dashboards = yaml_doc(&dir.join("dashboards/patrol.yaml"));
    assert_eq!(dashboards["apiVersion"], 1);
    let provider = &dashboards["providers"][0];
    assert_eq!(provider["type"], "file", "{dashboards}");
    assert!(provider["options"]["path"].is_string(), "{dashboards}");
}

// ------------------------------------------------------------------------------------------------
// The live setup: shop, HTTPS target, agent, Prometheus

/// A minimal HTTP/1.1 client for loopback: (status, body).
async fn http(method: &str, url: &str, content_type: &str, body: String) -> (u16, String) {
    let uri: hyper::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    let authority = uri.authority().expect("an absolute URL").to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .unwrap_or_else(|e| panic!("connect to {authority}: {e}"));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("HTTP handshake with {authority}: {e}"));
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, &authority)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"))
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn get(url: &str) -> (u16, String) {
    http("GET", url, "text/plain", String::new()).await
}

/// A TLS server on loopback answering every request with 200 "ok", with a self-signed
/// certificate that expires in 2031 (for probe_ssl_earliest_cert_expiry).
async fn tls_server() -> SocketAddr {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("certificate params");
    params.not_after = rcgen::date_time_ymd(2031, 5, 17);
    let key = rcgen::KeyPair::generate().expect("a key pair");
    let cert = params.self_signed(&key).expect("a self-signed certificate");
    let chain = vec![cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Chromium and chromedriver where the agent's config looks for them by default, when both are
/// there (CI installs them: .ci/run).
fn chromium() -> bool {
    Path::new("/usr/bin/chromium").is_file() && Path::new("/usr/bin/chromedriver").is_file()
}

/// A browser probe of the shop's home page, for web vitals.
const BROWSER_PROBE: &str = r#"  # A real headless Chromium: web vitals.
  - name: storefront
    type: browser
    schedule: { every: 2s }
    timeout: 20s
    steps:
      - name: home
        goto: "{{ api }}/"
"#;

/// The config of the live agent: every kind of result the dashboards show (web vitals only
/// with `browser`).
fn live_config(shop: &str, secure: SocketAddr, browser: bool) -> String {
    let browser_probe = if browser { BROWSER_PROBE } else { "" };
    format!(
        r#"agent:
  location: lab
  max_concurrency: 8
vars:
  api: {shop}
  secure: https://{secure}
defaults:
  timeout: 5s
verify:
  action: {{ command: ["true"], dry_run: true }}
probes:
  # Passes.
  - name: health
    type: http
    schedule: {{ every: 1s }}
    steps:
      - name: health
        request: {{ url: "{{{{ api }}}}/api/health" }}
        assert: [ status == 200 ]
      - name: ready
        request: {{ url: "{{{{ api }}}}/api/health/ready" }}
        assert: [ status == 200 ]
  # Fails at its second step; the third is skipped.
  - name: checkout
    type: http
    schedule: {{ every: 1s }}
    steps:
      - name: products
        request: {{ url: "{{{{ api }}}}/api/products" }}
        assert: [ status == 200 ]
      - name: missing
        request: {{ url: "{{{{ api }}}}/api/no-such-thing" }}
        assert: [ status == 200 ]
      - name: after
        request: {{ url: "{{{{ api }}}}/api/health" }}
        assert: [ status == 200 ]
  # Times out after 1.5s, longer than its interval: runs overlap and are skipped.
  - name: slow
    type: http
    schedule: {{ every: 1s }}
    timeout: 1500ms
    steps:
      - name: sleep
        request: {{ url: "{{{{ api }}}}/slow?ms=3000" }}
        assert: [ status == 200 ]
  # HTTPS with a self-signed certificate: TLS phase and certificate expiry.
  - name: secure
    type: http
    insecure: true
    schedule: {{ every: 1s }}
    steps:
      - name: home
        request: {{ url: "{{{{ secure }}}}/" }}
        assert: [ status == 200 ]
  # On demand only, tagged health, and failing: a deploy verification of it fails, and the
  # rollback action (a dry run) is recorded.
  - name: gate
    type: http
    tags: [health]
    steps:
      - name: health
        request: {{ url: "{{{{ api }}}}/api/health" }}
        assert: [ status == 503 ]
  # Another location's probe: this agent must not run it.
  - name: elsewhere
    type: http
    locations: [far-away]
    schedule: {{ every: 1s }}
    steps:
      - name: health
        request: {{ url: "{{{{ api }}}}/api/health" }}
{browser_probe}"#
    )
}

/// A running `patrol run` with everything it probes.
#[derive(Debug)]
struct LiveAgent {
    /// The agent's address.
    addr: SocketAddr,
    /// Whether it runs a browser probe.
    browser: bool,
    _shop: citadel_shop::Shop,
    _child: tokio::process::Child,
    scratch: Scratch,
}

impl LiveAgent {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn metrics(&self) -> String {
        let (status, body) = get(&self.url("/metrics")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The agent's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.file("agent.log")).unwrap_or_default()
    }
}

/// Starts the shop, the HTTPS target and `patrol run` on a free loopback port, posts a deploy,
/// and waits until /metrics has every metric family the live tests need.
async fn live_agent() -> LiveAgent {
    let shop = common::shop().await;
    let secure = tls_server().await;
    let scratch = Scratch::new();
    let browser = chromium();
    if !browser {
        eprintln!(
            "note: no /usr/bin/chromium and /usr/bin/chromedriver: no browser probe, so the web \
             vitals panels are allowed to have no data"
        );
    }
    let config = scratch.write("patrol.yaml", &live_config(&shop.url(), secure, browser));
    let log = std::fs::File::create(scratch.file("agent.log")).expect("create the agent log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_patrol"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env("PATROL_LOG", "info")
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn patrol run");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.split("http://").nth(1) {
                return addr.trim().parse::<SocketAddr>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    // Keep reading stdout so the agent never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let agent = LiveAgent {
        addr: addr.unwrap_or_else(|| {
            panic!(
                "patrol run did not say where it listens; its log:\n{}",
                std::fs::read_to_string(scratch.file("agent.log")).unwrap_or_default()
            )
        }),
        browser,
        _shop: shop,
        _child: child,
        scratch,
    };

    // A deploy reported with an on-demand run: patrol_deploy_info and its timestamp.
    let (status, body) = http(
        "POST",
        &agent.url("/api/v1/runs"),
        "application/json",
        json!({"probes": ["health"], "deploy": {"version": "1.2.3", "environment": "test"}})
            .to_string(),
    )
    .await;
    assert_eq!(status, 202, "POST /api/v1/runs: {body}");

    // A deploy verification that fails (its health probe fails): a verdict and a rollback action.
    let (status, body) = http(
        "POST",
        &agent.url("/api/v1/verify"),
        "application/json",
        json!({"probes": ["gate"], "runs": 1, "deploy": {"version": "1.2.3", "environment": "test"}})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "POST /api/v1/verify: {body}");
    let verdict: Value = serde_json::from_str(&body).expect("JSON from /api/v1/verify");
    assert_eq!(verdict["verdict"], "fail", "{verdict:#}");

    let mut needed = vec![
        r#"probe_success{location="lab",probe="health",type="http"} 1"#,
        r#"probe_success{location="lab",probe="checkout",type="http"} 0"#,
        r#"probe_step_success{location="lab",probe="checkout",step="after",type="http"} 0"#,
        r#"probe_ssl_earliest_cert_expiry{location="lab",probe="secure"}"#,
        r#"probe_http_duration_seconds{location="lab",phase="tls",probe="secure",step="home"}"#,
        r#"probe_runs_total{location="lab",probe="slow",result="timeout",type="http"}"#,
        r#"patrol_runs_skipped_total{probe="slow",reason="overlap"}"#,
        r#"patrol_deploy_info{environment="test",version="1.2.3"} 1"#,
        r#"patrol_deploy_verification_total{verdict="fail"} 1"#,
        r#"patrol_rollback_actions_total{result="dry_run"} 1"#,
    ];
    if agent.browser {
        needed.push(r#"probe_browser_web_vital_seconds_count{location="lab",probe="storefront","#);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = agent.metrics().await;
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|n| !text.contains(n))
            .collect();
        if missing.is_empty() {
            assert!(
                !text.contains(r#"probe="elsewhere""#),
                "the agent in `lab` ran a probe for `far-away`"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's /metrics still lacks {missing:?} after 60s:\n{text}\n--- agent log\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    agent
}

/// A running Prometheus, killed on drop.
#[derive(Debug)]
struct Prometheus {
    url: String,
    _child: tokio::process::Child,
    scratch: Scratch,
}

impl Prometheus {
    /// Starts `binary` scraping `target` every second as job "patrol", with every rules file.
    async fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let scratch = Scratch::new();
        let rule_files: Vec<String> = rules_files()
            .iter()
            .map(|f| format!("  - {}", f.display()))
            .collect();
        let config = scratch.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n{}\n\
                 scrape_configs:\n  - job_name: patrol\n    static_configs:\n      - targets: ['{target}']\n",
                rule_files.join("\n")
            ),
        );
        let port = closed_port();
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
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            _child: child,
            scratch,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Ok(stream)) = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            {
                drop(stream);
                if get(&format!("{}/-/ready", prometheus.url)).await.0 == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not become ready in 60s; its log:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.file("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `data` of a success, or the error text.
    async fn query(&self, promql: &str) -> Result<Value, String> {
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let (status, body) = http(
            "POST",
            &format!("{}/api/v1/query", self.url),
            "application/x-www-form-urlencoded",
            form,
        )
        .await;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if answer["status"] == "success" {
            Ok(answer["data"].clone())
        } else {
            Err(format!(
                "HTTP {status}: {} {}",
                answer["errorType"], answer["error"]
            ))
        }
    }
}

/// Whether a query's `data` holds anything: a non-empty vector or matrix, or a scalar.
fn has_data(data: &Value) -> bool {
    match data["resultType"].as_str() {
        Some("scalar" | "string") => true,
        _ => data["result"].as_array().is_some_and(|r| !r.is_empty()),
    }
}

/// Every panel and variable query returns data from a real Prometheus scraping a real agent;
/// every annotation and rule expression evaluates; every rule loads and evaluates cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_query_works_against_prometheus_scraping_the_agent() {
    let Some(binary) = tool("prometheus", "the live Prometheus test") else {
        return;
    };
    let agent = live_agent().await;
    let prometheus = Prometheus::start(&binary, agent.addr).await;
    let variables = dashboard_variables();
    let queries: Vec<Query> = dashboard_queries()
        .into_iter()
        .chain(rule_queries())
        .collect();
    for panel in BROWSER_PANELS {
        assert!(
            queries.iter().any(|q| q.panel == *panel),
            "BROWSER_PANELS names {panel:?}, which no dashboard has"
        );
    }
    let exempt: BTreeSet<&str> = if agent.browser {
        BTreeSet::new()
    } else {
        BROWSER_PANELS.iter().copied().collect()
    };

    // Parse errors do not go away: report them at once. Missing data may be data not scraped
    // yet: retry until every panel has some, or the deadline.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    loop {
        round += 1;
        let mut errors = Vec::new();
        let mut empty = Vec::new();
        for q in &queries {
            let promql = grafana_to_promql(&q.expr, &variables);
            match prometheus.query(&promql).await {
                Err(e) => errors.push(format!("{}\n    {promql}\n    {e}", q.origin)),
                Ok(data) => {
                    let wanted = match q.kind {
                        Kind::Panel => !exempt.contains(q.panel.as_str()),
                        Kind::Variable => true,
                        Kind::Annotation | Kind::Rule => false,
                    };
                    if !has_data(&data) {
                        if wanted {
                            empty.push(format!("{}\n    {promql}", q.origin));
                        }
                        continue;
                    }
                    if let Some(label) = &q.label {
                        let series = data["result"].as_array().cloned().unwrap_or_default();
                        if !series.iter().all(|s| s["metric"][label].is_string()) {
                            errors.push(format!(
                                "{}: some series of `{promql}` lack the label `{label}`",
                                q.origin
                            ));
                        }
                    }
                }
            }
        }
        assert!(
            errors.is_empty(),
            "queries Prometheus rejects:\n{}\n--- Prometheus log\n{}",
            errors.join("\n"),
            prometheus.log()
        );
        if empty.is_empty() {
            let count = |k: Kind| queries.iter().filter(|q| q.kind == k).count();
            eprintln!(
                "evaluated {} panel, {} variable, {} annotation and {} rule queries in {round} \
                 round(s); allowed no data: {:?}",
                count(Kind::Panel),
                count(Kind::Variable),
                count(Kind::Annotation),
                count(Kind::Rule),
                exempt
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {round} rounds, these panel and variable queries still return no data:\n{}\n\
             --- agent /metrics\n{}\n--- agent log\n{}",
            empty.join("\n"),
            agent.metrics().await,
            agent.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Prometheus loaded every rule and evaluates each without error (a many-to-many match, say,
    // only shows at evaluation).
    let expected: BTreeSet<String> = all_rules().iter().map(|(_, r)| rule_name(r)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&format!("{}/api/v1/rules", prometheus.url)).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON from /api/v1/rules");
        let mut loaded = BTreeSet::new();
        let mut unevaluated = Vec::new();
        for group in answer["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let name = rule["name"].as_str().unwrap_or_default().to_string();
                assert_ne!(
                    rule["health"], "err",
                    "rule {name} fails to evaluate: {}",
                    rule["lastError"]
                );
                if rule["health"] != "ok" {
                    unevaluated.push(name.clone());
                }
                loaded.insert(name);
            }
        }
        assert_eq!(loaded, expected, "the rules Prometheus loaded");
        if unevaluated.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not evaluated after 30s: {unevaluated:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every metric name in dashboards/ and deploy/ is exported by the agent (or is a recording
/// rule defined next to it, or a series Prometheus itself has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_used_exists_in_the_agents_metrics() {
    let agent = live_agent().await;
    let text = agent.metrics().await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(String::from))
        .collect();

    // Every PromQL expression in dashboards/ and deploy/.
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut note = |name: String, origin: &str| {
        used.entry(name).or_default().insert(origin.to_string());
    };
    for q in dashboard_queries().into_iter().chain(rule_queries()) {
        for name in metric_names(&q.expr) {
            note(name, &q.origin);
        }
    }
    let prometheus_rule = kubernetes_dir().join("prometheusrule.yaml");
    let spec = yaml_doc(&prometheus_rule)["spec"].clone();
    for (origin, rule) in rules_of(&spec, &rel(&prometheus_rule)) {
        for name in metric_names(rule["expr"].as_str().unwrap_or_default()) {
            note(name, &origin);
        }
    }
    assert!(used.len() > 15, "too few metric names found: {used:?}");

    let recorded: BTreeSet<String> = all_rules()
        .iter()
        .filter_map(|(_, r)| r["record"].as_str().map(String::from))
        .collect();
    // The agent's own series are defined in metrics.rs, the probe series in metrics/series.rs.
    let metrics_rs = ["agent/src/metrics.rs", "agent/src/metrics/series.rs"]
        .map(|f| read(&workspace_root().join(f)))
        .concat();
    for family in BROWSER_METRICS {
        assert!(
            metrics_rs.contains(&format!("\"{family}\"")),
            "BROWSER_METRICS names {family}, which agent/src/metrics.rs and metrics/series.rs do \
             not define"
        );
    }
    let not_exported: &[&str] = if agent.browser { &[] } else { BROWSER_METRICS };
    let family_of = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
            .to_string()
    };
    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| {
            !exported.contains(*name)
                && !recorded.contains(*name)
                && !PROMETHEUS_SERIES.contains(&name.as_str())
                && !not_exported.contains(&family_of(name).as_str())
        })
        .map(|(name, origins)| {
            format!(
                "{name} (in {})",
                origins.iter().cloned().collect::<Vec<_>>().join("; ")
            )
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names the agent does not export:\n{}\n--- /metrics\n{text}",
        unknown.join("\n")
    );
}

// ------------------------------------------------------------------------------------------------
// Kubernetes

/// Every manifest under deploy/kubernetes with the kinds it must hold (the base config is a
/// Patrol config, not a manifest).
#[test]
fn kubernetes_manifests_parse_with_the_expected_kinds() {
    let dir = kubernetes_dir();
    let locations = locations();
    let mut expected: BTreeMap<String, Vec<&str>> = [
        ("kustomization.yaml", vec!["Kustomization"]),
        ("namespace.yaml", vec!["Namespace"]),
        ("servicemonitor.yaml", vec!["ServiceMonitor"]),
        ("prometheusrule.yaml", vec!["PrometheusRule"]),
        ("secret.example.yaml", vec!["Secret"]),
        ("base/kustomization.yaml", vec!["Kustomization"]),
        ("base/deployment.yaml", vec!["Deployment"]),
        ("base/service.yaml", vec!["Service"]),
    ]
    .into_iter()
    .map(|(f, k)| (f.to_string(), k))
    .collect();
    for location in &locations {
        expected.insert(
            format!("locations/{location}/kustomization.yaml"),
            vec!["Kustomization"],
        );
        expected.insert(
            format!("locations/{location}/configmap.yaml"),
            vec!["ConfigMap"],
        );
    }
    let mut found: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files_under(&dir) {
        let name = file
            .strip_prefix(&dir)
            .expect("under the dir")
            .display()
            .to_string();
        if !name.ends_with(".yaml") && !name.ends_with(".yml") || name == "base/patrol.yaml" {
            continue;
        }
        let docs = yaml_docs(&file);
        assert!(!docs.is_empty(), "{name} is empty");
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_else(|| {
                // kustomization.yaml may leave `kind` out; it must then say what it is.
                assert!(
                    name.ends_with("kustomization.yaml"),
                    "{name}: a document without `kind`"
                );
                "Kustomization"
            });
            assert!(
                doc["apiVersion"].is_string(),
                "{name}: a {kind} without apiVersion"
            );
            if kind != "Kustomization" {
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "{name}: a {kind} without metadata.name"
                );
            }
            kinds
                .entry(name.clone())
                .or_default()
                .push(kind.to_string());
        }
    }
    for (name, k) in &kinds {
        found.insert(name.clone(), k.iter().map(String::as_str).collect());
    }
    assert_eq!(found, expected, "manifests and their kinds");

    // Every resource a kustomization names exists.
    for file in files_under(&dir)
        .into_iter()
        .filter(|f| f.ends_with("kustomization.yaml"))
    {
        let doc = yaml_doc(&file);
        let here = file.parent().expect("a parent dir");
        for resource in doc["resources"].as_array().into_iter().flatten() {
            let resource = resource.as_str().expect("a resource path");
            assert!(
                here.join(resource).exists(),
                "{}: resource {resource} does not exist",
                rel(&file)
            );
        }
    }
}

/// The location directories.
fn locations() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(kubernetes_dir().join("locations"))
        .expect("deploy/kubernetes/locations")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
        .collect();
    out.sort();
    assert!(
        out.len() >= 2,
        "expected at least two locations, found {out:?}"
    );
    out
}

#[test]
fn deployment_is_hardened_probed_and_wired_to_its_config_and_secrets() {
    let dir = kubernetes_dir();
    let deployment = yaml_doc(&dir.join("base/deployment.yaml"));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
    assert!(
        pod["securityContext"]["runAsUser"]
            .as_i64()
            .is_some_and(|u| u > 0),
        "{pod}"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource} missing: {}",
                c["resources"]
            );
        }
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["ports"][0]["name"], "metrics");
    let port = c["ports"][0]["containerPort"].as_i64().expect("a port");

    let env = c["env"].as_array().expect("env");
    let secret_env = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
            .map(String::from)
    };
    assert_eq!(
        secret_env("PATROL_API_TOKEN").as_deref(),
        Some("patrol-secrets")
    );
    assert_eq!(
        secret_env("SMOKE_PASSWORD").as_deref(),
        Some("patrol-secrets")
    );
    let secret = yaml_doc(&dir.join("secret.example.yaml"));
    for e in env
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"].is_object())
    {
        let key = &e["valueFrom"]["secretKeyRef"]["key"];
        assert!(
            secret["stringData"][key.as_str().unwrap_or_default()].is_string(),
            "secret.example.yaml lacks the key {key}"
        );
    }

    // The config comes from the ConfigMap, at the path the args name.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args.first(), Some(&"run"), "{args:?}");
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config PATH");
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == "patrol-config")
        .expect("a volume from the patrol-config ConfigMap");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the config volume is mounted");
    let mount_path = mount["mountPath"].as_str().expect("a mount path");
    assert_eq!(
        Path::new(config_path).parent(),
        Some(Path::new(mount_path)),
        "--config {config_path} is not in the ConfigMap mount {mount_path}"
    );
    let base = read(&dir.join("base/patrol.yaml"));
    assert!(
        base.contains(&format!("listen: 0.0.0.0:{port}")),
        "base/patrol.yaml must listen on the container port {port}"
    );
    assert!(base.contains("{{ env.PATROL_API_TOKEN }}"), "no api_token");

    // Service, ServiceMonitor and rules agree on the port name and the job.
    let service = yaml_doc(&dir.join("base/service.yaml"));
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics", "{service}");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let monitor = yaml_doc(&dir.join("servicemonitor.yaml"));
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(&service["metadata"]["labels"][k], v, "selector {k}");
    }
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        service["metadata"]["labels"][job_label], "patrol",
        "the rules expect job=\"patrol\""
    );
}

#[test]
fn prometheusrule_is_what_the_script_builds_from_the_rules_files() {
    let dir = kubernetes_dir();
    let scratch = Scratch::new();
    let out = scratch.file("prometheusrule.yaml");
    run_ok(
        Command::new("bash")
            .arg(dir.join("gen-prometheusrule.sh"))
            .arg(&out),
    );
    assert_eq!(
        read(&out),
        read(&dir.join("prometheusrule.yaml")),
        "deploy/kubernetes/prometheusrule.yaml is stale: run deploy/kubernetes/gen-prometheusrule.sh"
    );
    // And it means the same: the rules files' groups, in file order.
    let rule = yaml_doc(&dir.join("prometheusrule.yaml"));
    assert_eq!(rule["kind"], "PrometheusRule");
    let groups: Vec<Value> = rules_files()
        .iter()
        .flat_map(|f| {
            yaml_doc(f)["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(rule["spec"]["groups"], Value::Array(groups));
}

#[test]
fn location_configmaps_are_the_base_config_with_their_location_and_valid() {
    let dir = kubernetes_dir();
    let scratch = Scratch::new();
    run_ok(
        Command::new("bash")
            .arg(dir.join("gen-locations.sh"))
            .arg(scratch.path()),
    );
    for location in locations() {
        let committed = dir.join(format!("locations/{location}/configmap.yaml"));
        assert_eq!(
            read(&scratch.file(&format!("{location}/configmap.yaml"))),
            read(&committed),
            "{} is stale: run deploy/kubernetes/gen-locations.sh",
            rel(&committed)
        );
        let configmap = yaml_doc(&committed);
        let config = configmap["data"]["patrol.yaml"]
            .as_str()
            .expect("data.patrol.yaml");
        let parsed = yaml_to_json(&Yaml::load_from_str(config).expect("the config is YAML")[0]);
        assert_eq!(parsed["agent"]["location"], location.as_str());
        let file = scratch.write(&format!("{location}.yaml"), config);
        let out = run_ok(
            Command::new(env!("CARGO_BIN_EXE_patrol"))
                .args(["validate", "--config"])
                .arg(&file)
                .env("PATROL_API_TOKEN", "test-token")
                .env("SMOKE_PASSWORD", "test-password"),
        );
        assert!(out.contains("ok"), "{location}: {out}");
    }
}

/// `kubectl kustomize` builds one agent per location, each with its own config.
#[test]
fn kustomize_builds_one_agent_per_location() {
    let Some(kubectl) = on_path("kubectl") else {
        eprintln!(
            "SKIPPED kustomize build: `kubectl` is not on PATH (the static checks above still ran)"
        );
        return;
    };
    let out = run_ok(Command::new(kubectl).arg("kustomize").arg(kubernetes_dir()));
    let docs: Vec<Value> = Yaml::load_from_str(&out)
        .expect("kustomize output is YAML")
        .iter()
        .map(yaml_to_json)
        .collect();
    let of_kind =
        |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    assert_eq!(of_kind("PrometheusRule").len(), 1);
    assert_eq!(of_kind("ServiceMonitor").len(), 1);
    let locations = locations();
    let deployments = of_kind("Deployment");
    assert_eq!(deployments.len(), locations.len());
    for location in &locations {
        let name = format!("patrol-{location}");
        let d = deployments
            .iter()
            .find(|d| d["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no Deployment {name}"));
        assert_eq!(d["metadata"]["namespace"], "patrol");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"]["patrol.dev/location"],
            location.as_str()
        );
        let volumes = d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        let configmap = volumes
            .iter()
            .find_map(|v| v["configMap"]["name"].as_str())
            .expect("a ConfigMap volume");
        let cm = of_kind("ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == configmap)
            .unwrap_or_else(|| panic!("{name} mounts {configmap}, which the build lacks"));
        let config = cm["data"]["patrol.yaml"].as_str().expect("a config");
        assert!(
            config.contains(&format!("\n  location: {location}\n")),
            "{name}'s config is not for {location}"
        );
        let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .expect("an image");
        assert!(image.contains("patrol"), "{image}");
        let service = of_kind("Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no Service {name}"));
        assert_eq!(
            service["spec"]["selector"]["patrol.dev/location"],
            location.as_str()
        );
    }
}

#[test]
fn dockerfile_builds_patrol_and_carries_chromium() {
    let text = read(&workspace_root().join("deploy/Dockerfile"));
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    assert!(
        froms.last().is_some_and(|f| f.contains("debian")),
        "a Debian runtime image: {froms:?}"
    );
    for needle in [
        "cargo build --profile dist --locked -p patrol",
        "chromium",
        "chromium-driver",
        "USER 65532",
        "EXPOSE 9464",
        "ENTRYPOINT [\"/usr/local/bin/patrol\"]",
    ] {
        assert!(text.contains(needle), "deploy/Dockerfile lacks {needle}");
    }
}
