//! Builds a [`Config`] from the YAML tree, checking every key, value, template, assertion,
//! schedule and cross-reference, and recording each problem instead of stopping at the first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use patrol_probes::assert::Assertion;
use patrol_probes::capture::Capture;
use patrol_probes::spec::{
    BodySpec, BrowserProbe, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_REDIRECTS, HttpProbe, HttpStep,
    InfraProbe, JsonTemplate, ProbeKind, ProbeSpec, Protocol, RequestSpec,
};
use patrol_probes::template::{Placeholder, Template};
use saphyr::{Scalar, YamlData};

use super::diagnostic::Diagnostic;
use super::schedule::{Schedule, parse_cron};
use super::yaml::{Node, Walker, did_you_mean, kind, load};
use super::{AgentConfig, BrowserConfig, Config, ProbeConfig, VerifyConfig};

const TOP_KEYS: [&str; 6] = ["agent", "browser", "vars", "defaults", "probes", "verify"];
const AGENT_KEYS: [&str; 7] = [
    "keep_artifacts",
    "history",
    "listen",
    "location",
    "api_token",
    "max_concurrency",
    "artifacts_dir",
];
/// The most runs per probe `agent.history` keeps: a probe's ring is reserved whole at its first
/// run, ~50 bytes a run.
const MAX_HISTORY: usize = 10_000;
const BROWSER_KEYS: [&str; 3] = ["chromedriver", "chromium", "max_sessions"];
const DEFAULT_KEYS: [&str; 7] = [
    "timeout",
    "retries",
    "retry_backoff",
    "insecure",
    "follow_redirects",
    "max_redirects",
    "max_body",
];
const PROBE_KEYS: [&str; 15] = [
    "viewport",
    "name",
    "type",
    "tags",
    "locations",
    "schedule",
    "timeout",
    "retries",
    "retry_backoff",
    "insecure",
    "follow_redirects",
    "max_redirects",
    "max_body",
    "steps",
    "description",
];
const STEP_KEYS: [&str; 5] = ["name", "request", "capture", "assert", "timeout"];
const REQUEST_KEYS: [&str; 7] = ["method", "url", "headers", "query", "json", "body", "form"];
const SCHEDULE_KEYS: [&str; 3] = ["cron", "every", "tz"];
const VERIFY_KEYS: [&str; 8] = [
    "rollback_when",
    "thresholds",
    "baseline",
    "action",
    "min_samples",
    "runs",
    "max_runs",
    "canary",
];
/// Every `type:` a probe can have.
const PROBE_TYPES: [&str; 7] = ["http", "browser", "tcp", "dns", "tls", "redis", "postgres"];
/// Probe settings that only HTTP probes read.
const HTTP_ONLY_SETTINGS: [&str; 3] = ["follow_redirects", "max_redirects", "max_body"];
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Probe-wide settings that `defaults:` can set.
#[derive(Debug, Clone)]
struct Defaults {
    timeout: Duration,
    retries: u32,
    retry_backoff: Duration,
    insecure: bool,
    follow_redirects: bool,
    max_redirects: u32,
    max_body: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            timeout: Duration::from_secs(10),
            retries: 0,
            retry_backoff: Duration::from_secs(1),
            insecure: false,
            follow_redirects: true,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            max_body: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Builds the config from source text; the config is `None` only when the file is not YAML.
pub fn build(source: &str) -> (Option<Config>, Vec<Diagnostic>) {
    let root = match load(source) {
        Ok(Some(root)) => root,
        Ok(None) => return (None, vec![empty_file()]),
        Err(d) => return (None, vec![d]),
    };
    let mut w = Walker::new(source);
    let config = build_root(&mut w, &root);
    (Some(config), w.diagnostics)
}

fn empty_file() -> Diagnostic {
    Diagnostic {
        severity: super::Severity::Error,
        line: 1,
        col: 1,
        width: 1,
        message: "the config file is empty".into(),
        help: Some("start with a `probes:` list; see examples/citadelbuy.yaml".into()),
    }
}

fn build_root(w: &mut Walker<'_>, root: &Node<'_>) -> Config {
    let mut config = Config {
        agent: AgentConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            location: "local".into(),
            api_token: None,
            max_concurrency: 32,
            artifacts_dir: PathBuf::from("./artifacts"),
            keep_artifacts: 20,
            history: 100,
        },
        browser: BrowserConfig {
            chromedriver: PathBuf::from("/usr/bin/chromedriver"),
            chromium: PathBuf::from("/usr/bin/chromium"),
            max_sessions: 2,
        },
        vars: Vec::new(),
        probes: Vec::new(),
        verify: VerifyConfig::default(),
    };
    let Some(entries) = w.map(root, "the config file", &TOP_KEYS, &["probes"]) else {
        return config;
    };
    let find = |key: &str| {
        entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| *v)
    };
    if let Some(node) = find("agent") {
        agent(w, node, &mut config.agent);
    }
    if let Some(node) = find("browser") {
        browser(w, node, &mut config.browser);
    }
    if let Some(node) = find("vars") {
        config.vars = vars(w, node);
    }
    let mut defaults = Defaults::default();
    if let Some(node) = find("defaults") {
        probe_settings(w, node, "defaults", &DEFAULT_KEYS, &mut defaults);
    }
    if let Some(node) = find("verify") {
        verify(w, node, &mut config.verify);
    }
    if let Some(node) = find("probes") {
        let var_names: Vec<String> = config.vars.iter().map(|(n, _)| n.clone()).collect();
        config.probes = probes(w, node, &defaults, &var_names);
    }
    if let (Some(node), Some(token)) = (find("agent"), &config.agent.api_token) {
        // The token is read from the environment or a file; vars are for probes.
        if token
            .placeholders()
            .any(|(p, _)| matches!(p, Placeholder::Name(_)))
        {
            let at = find_scalar(w, node, token.source()).unwrap_or(node);
            w.error(
                at,
                "agent.api_token can only use `env.` or `file.`",
                "write `api_token: \"{{ env.PATROL_API_TOKEN }}\"`",
            );
        }
    }
    config
}

fn agent(w: &mut Walker<'_>, node: &Node<'_>, agent: &mut AgentConfig) {
    let Some(entries) = w.map(node, "agent", &AGENT_KEYS, &[]) else {
        return;
    };
    for (key, _, v) in entries {
        match key.as_str() {
            "listen" => {
                if let Some(s) = w.string(v, "agent.listen") {
                    match s.parse::<SocketAddr>() {
                        Ok(a) => agent.listen = a,
                        Err(_) => w.error(
                            v,
                            format!("`{s}` is not an address with a port"),
                            "write e.g. 127.0.0.1:9464 or 0.0.0.0:9464",
                        ),
                    }
                }
            }
            "location" => {
                if let Some(s) = w.string(v, "agent.location") {
                    if label_safe(&s) {
                        agent.location = s;
                    } else {
                        w.error(
                            v,
                            format!("location `{s}` must be letters, digits, `-` and `_`"),
                            "write e.g. eu-west",
                        );
                    }
                }
            }
            "api_token" => agent.api_token = template_at(w, v, "agent.api_token"),
            "max_concurrency" => {
                if let Some(n) = w.count(v, "max_concurrency") {
                    if n == 0 {
                        w.error(
                            v,
                            "max_concurrency must be at least 1",
                            "write e.g. `max_concurrency: 32`",
                        );
                    } else {
                        agent.max_concurrency = n as usize;
                    }
                }
            }
            "history" => {
                if let Some(n) = w.count(v, "history") {
                    if n == 0 || n > MAX_HISTORY as u64 {
                        w.error(
                            v,
                            format!("history must be 1 to {MAX_HISTORY} runs per probe"),
                            "write e.g. `history: 100` (the default)",
                        );
                    } else {
                        agent.history = n as usize;
                    }
                }
            }
            "keep_artifacts" => {
                if let Some(n) = w.count(v, "keep_artifacts") {
                    agent.keep_artifacts = (n as usize).max(1);
                }
            }
            _ => {
                if let Some(s) = w.string(v, "agent.artifacts_dir") {
                    agent.artifacts_dir = PathBuf::from(s);
                }
            }
        }
    }
}

fn browser(w: &mut Walker<'_>, node: &Node<'_>, browser: &mut BrowserConfig) {
    let Some(entries) = w.map(node, "browser", &BROWSER_KEYS, &[]) else {
        return;
    };
    for (key, _, v) in entries {
        match key.as_str() {
            "chromedriver" => {
                browser.chromedriver = w
                    .string(v, "browser.chromedriver")
                    .map(PathBuf::from)
                    .unwrap_or_default()
            }
            "chromium" => {
                browser.chromium = w
                    .string(v, "browser.chromium")
                    .map(PathBuf::from)
                    .unwrap_or_default()
            }
            _ => {
                if let Some(n) = w.count(v, "max_sessions") {
                    browser.max_sessions = (n as usize).max(1);
                }
            }
        }
    }
}

fn vars(w: &mut Walker<'_>, node: &Node<'_>) -> Vec<(String, Template)> {
    let Some(entries) = w.map(node, "vars", &[], &[]) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Template)> = Vec::new();
    for (name, key_node, v) in entries {
        if !name_safe(&name) {
            w.error(
                key_node,
                format!("var name `{name}` must be letters, digits, `_` and `-`"),
                "rename it, e.g. `api_url`",
            );
            continue;
        }
        if matches!(
            name.as_str(),
            "random" | "uuid" | "timestamp" | "env" | "file"
        ) {
            w.error(
                key_node,
                format!("`{name}` is a built-in and cannot be a var name"),
                "choose another name",
            );
            continue;
        }
        let Some(t) = template_at(w, v, &format!("var `{name}`")) else {
            continue;
        };
        let known: Vec<String> = out.iter().map(|(n, _)| n.clone()).collect();
        check_templates(w, v, [&t], &known, &[]);
        out.push((name, t));
    }
    out
}

fn probe_settings(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    what: &str,
    keys: &[&str],
    d: &mut Defaults,
) {
    let Some(entries) = w.map(node, what, keys, &[]) else {
        return;
    };
    for (key, _, v) in entries {
        apply_setting(w, &key, v, d);
    }
}

/// Applies one probe-wide setting; returns false when `key` is not one.
fn apply_setting(w: &mut Walker<'_>, key: &str, v: &Node<'_>, d: &mut Defaults) -> bool {
    match key {
        "timeout" => d.timeout = w.duration(v, "timeout").unwrap_or(d.timeout),
        "retry_backoff" => {
            d.retry_backoff = w.duration(v, "retry_backoff").unwrap_or(d.retry_backoff)
        }
        "retries" => {
            if let Some(n) = w.count(v, "retries") {
                if n > 10 {
                    w.error(
                        v,
                        format!("retries: {n} is too many"),
                        "use at most 10; retries hide flakiness",
                    );
                } else {
                    d.retries = n as u32;
                }
            }
        }
        "max_redirects" => {
            d.max_redirects = w
                .count(v, "max_redirects")
                .map_or(d.max_redirects, |n| n as u32)
        }
        "insecure" => d.insecure = w.boolean(v, "insecure").unwrap_or(d.insecure),
        "follow_redirects" => {
            d.follow_redirects = w
                .boolean(v, "follow_redirects")
                .unwrap_or(d.follow_redirects)
        }
        "max_body" => {
            if let Some(s) = w.scalar(v) {
                match parse_size(&s) {
                    Some(n) if n > 0 => d.max_body = n,
                    _ => w.error(
                        v,
                        format!("invalid size `{s}` for max_body"),
                        "write e.g. 10MiB, 512KiB or a number of bytes",
                    ),
                }
            } else {
                w.error(v, "max_body must be a size", "write e.g. 10MiB");
            }
        }
        _ => return false,
    }
    true
}

fn verify(w: &mut Walker<'_>, node: &Node<'_>, verify: &mut VerifyConfig) {
    let Some(entries) = w.map(node, "verify", &VERIFY_KEYS, &[]) else {
        return;
    };
    let mut max_runs = None;
    for (key, _, v) in entries {
        match key.as_str() {
            "rollback_when" => {
                let Some(rules) = w.map(
                    v,
                    "verify.rollback_when",
                    &[
                        "error_rate_increase",
                        "latency_increase",
                        "min_latency_increase",
                    ],
                    &[],
                ) else {
                    continue;
                };
                for (k, _, n) in rules {
                    if k == "min_latency_increase" {
                        verify.min_latency_increase = w
                            .duration(n, "min_latency_increase")
                            .unwrap_or(verify.min_latency_increase);
                        continue;
                    }
                    let Some(p) = percent(w, n, &k) else { continue };
                    if k == "error_rate_increase" {
                        verify.error_rate_increase = p;
                    } else {
                        verify.latency_increase = p / 100.0;
                    }
                }
            }
            "thresholds" => {
                let Some(limits) =
                    w.map(v, "verify.thresholds", &["p95", "p99", "error_rate"], &[])
                else {
                    continue;
                };
                for (k, _, n) in limits {
                    match k.as_str() {
                        "p95" => verify.p95 = w.duration(n, "p95"),
                        "p99" => verify.p99 = w.duration(n, "p99"),
                        _ => verify.error_rate = percent(w, n, "error_rate"),
                    }
                }
            }
            "baseline" => {
                verify.baseline = w.duration(v, "verify.baseline").unwrap_or(verify.baseline)
            }
            "min_samples" => verify.min_samples = w.count(v, "min_samples").unwrap_or(5).max(1),
            "runs" => {
                verify.runs = w
                    .count(v, "runs")
                    .map_or(verify.runs, |n| n.clamp(1, 1000) as u32)
            }
            "max_runs" => max_runs = Some(v),
            "canary" => {
                let Some(tracks) = w.map(
                    v,
                    "verify.canary",
                    &["stable", "canary"],
                    &["stable", "canary"],
                ) else {
                    continue;
                };
                for (track, _, n) in tracks {
                    let Some(vars) = w.map(n, "a canary track", &[], &[]) else {
                        continue;
                    };
                    let pairs = vars
                        .into_iter()
                        .filter_map(|(name, _, val)| w.string(val, &name).map(|t| (name, t)))
                        .collect();
                    verify.canary.push((track, pairs));
                }
            }
            _ => {
                let Some(action) =
                    w.map(v, "verify.action", &["command", "webhook", "dry_run"], &[])
                else {
                    continue;
                };
                for (k, _, n) in action {
                    match k.as_str() {
                        "command" => verify.action_command = w.strings(n, "verify.action.command"),
                        "webhook" => verify.action_webhook = w.string(n, "verify.action.webhook"),
                        _ => verify.action_dry_run = w.boolean(n, "dry_run").unwrap_or(true),
                    }
                }
            }
        }
    }
    // After `runs`, wherever it is written: the cap cannot be below the minimum.
    if let Some(v) = max_runs
        && let Some(n) = w.count(v, "max_runs")
    {
        if n < u64::from(verify.runs) {
            w.error(
                v,
                format!(
                    "verify.max_runs ({n}) is below verify.runs ({})",
                    verify.runs
                ),
                format!(
                    "runs is the minimum and max_runs the cap: write `max_runs: {}` or more \
                     (equal to runs for a fixed number of runs)",
                    verify.runs
                ),
            );
        } else {
            verify.max_runs = n.min(1000) as u32;
        }
    }
    verify.max_runs = verify.max_runs.max(verify.runs);
}

fn percent(w: &mut Walker<'_>, node: &Node<'_>, what: &str) -> Option<f64> {
    let text = w.scalar(node)?;
    let parsed = text
        .trim()
        .strip_suffix('%')
        .unwrap_or(text.trim())
        .trim()
        .parse::<f64>();
    match parsed {
        Ok(p) if p >= 0.0 => Some(p),
        _ => {
            w.error(
                node,
                format!("invalid percentage `{text}` for {what}"),
                "write e.g. 10% or 0.1%",
            );
            None
        }
    }
}

fn probes(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    defaults: &Defaults,
    vars: &[String],
) -> Vec<ProbeConfig> {
    let Some(items) = w.list(node, "probes") else {
        return Vec::new();
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for item in items {
        let Some(probe) = probe(w, item, defaults, vars) else {
            continue;
        };
        if let Some(first_line) = seen.get(&probe.spec.name) {
            let name_node = field(item, "name").unwrap_or(item);
            w.error(
                name_node,
                format!("duplicate probe name `{}`", probe.spec.name),
                format!(
                    "probe names must be unique; the first `{}` is on line {first_line}",
                    probe.spec.name
                ),
            );
            continue;
        }
        seen.insert(probe.spec.name.clone(), item.span.start.line());
        out.push(probe);
    }
    out
}

pub(super) fn field<'n, 's>(node: &'n Node<'s>, key: &str) -> Option<&'n Node<'s>> {
    let YamlData::Mapping(map) = &node.data else {
        return None;
    };
    map.iter()
        .find(|(k, _)| matches!(&k.data, YamlData::Value(Scalar::String(s)) if s == key))
        .map(|(_, v)| v)
}

fn probe(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    defaults: &Defaults,
    vars: &[String],
) -> Option<ProbeConfig> {
    let entries = w.map(node, "a probe", &PROBE_KEYS, &["name", "steps"])?;
    let mut settings = defaults.clone();
    let mut name = None;
    let mut tags = Vec::new();
    let mut locations = Vec::new();
    let mut schedule = None;
    let mut tz = None;
    let mut steps_node = None;
    let mut viewport_node = None;
    let mut browser_type = false;
    let mut infra_type = None;
    let mut http_only: Vec<(&str, &Node<'_>)> = Vec::new();
    let mut type_known = true;
    let mut ok = true;
    for (key, key_node, v) in &entries {
        match key.as_str() {
            "name" => {
                if let Some(n) = w.string(v, "probe name") {
                    if n.is_empty()
                        || !n.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                        })
                    {
                        let fixed: String = n
                            .to_ascii_lowercase()
                            .chars()
                            .map(|c| {
                                if c.is_ascii_alphanumeric() || c == '-' {
                                    c
                                } else {
                                    '_'
                                }
                            })
                            .collect();
                        w.error(
                            v,
                            format!("probe name `{n}` must match [a-z0-9_-]+"),
                            format!("rename it, e.g. `{fixed}`"),
                        );
                        ok = false;
                    }
                    name = Some(n);
                }
            }
            "type" => {
                if let Some(t) = w.string(v, "probe type") {
                    match t.as_str() {
                        "http" => {}
                        "browser" => browser_type = true,
                        other => match Protocol::from_name(other) {
                            Some(p) => infra_type = Some(p),
                            None => {
                                let help = did_you_mean(other, PROBE_TYPES).map_or_else(
                                    || format!("probe types are: {}", PROBE_TYPES.join(", ")),
                                    |s| format!("did you mean `{s}`?"),
                                );
                                w.error(v, format!("unknown probe type `{other}`"), help);
                                ok = false;
                                type_known = false;
                            }
                        },
                    }
                }
            }
            "tags" => tags = w.strings(v, "tags"),
            "locations" => locations = w.strings(v, "locations"),
            "schedule" => (schedule, tz) = parse_schedule(w, v),
            "steps" => steps_node = Some(*v),
            "viewport" => viewport_node = Some(*v),
            "description" => {
                w.string(v, "description");
            }
            other => {
                if HTTP_ONLY_SETTINGS.contains(&other) {
                    http_only.push((other, *key_node));
                }
                apply_setting(w, other, v, &mut settings);
            }
        }
    }
    if !type_known {
        // Steps of an unknown type cannot be checked; the type error says what to fix.
        return None;
    }
    if let Some(protocol) = infra_type {
        for (key, node) in &http_only {
            w.error(
                node,
                format!("`{key}` applies to http probes only"),
                format!("remove it from this {} probe", protocol.name()),
            );
        }
        if let Some(v) = viewport_node {
            w.error(
                v,
                "`viewport` applies to browser probes only",
                "add `type: browser`, or remove `viewport`",
            );
        }
    }
    let kind = if let Some(protocol) = infra_type {
        ProbeKind::Infra(InfraProbe {
            protocol,
            steps: super::infra::steps(w, steps_node?, protocol, vars),
            insecure: settings.insecure,
        })
    } else if browser_type {
        let viewport = viewport_node.and_then(|v| super::browser::viewport(w, v));
        let steps = super::browser::steps(w, steps_node?, vars);
        ProbeKind::Browser(BrowserProbe {
            steps,
            viewport,
            insecure: settings.insecure,
        })
    } else {
        if let Some(v) = viewport_node {
            w.error(
                v,
                "`viewport` applies to browser probes only",
                "add `type: browser`, or remove `viewport`",
            );
        }
        ProbeKind::Http(HttpProbe {
            steps: steps(w, steps_node?, vars),
            insecure: settings.insecure,
            follow_redirects: settings.follow_redirects,
            max_redirects: settings.max_redirects,
            max_body_bytes: settings.max_body,
        })
    };
    let name = name?;
    if !ok {
        return None;
    }
    let spec = ProbeSpec {
        name,
        timeout: settings.timeout,
        retries: settings.retries,
        retry_backoff: settings.retry_backoff,
        kind,
    };
    Some(ProbeConfig {
        spec: Arc::new(spec),
        tags,
        locations,
        schedule,
        tz,
    })
}

fn parse_schedule(
    w: &mut Walker<'_>,
    node: &Node<'_>,
) -> (Option<Schedule>, Option<chrono_tz::Tz>) {
    let Some(entries) = w.map(node, "schedule", &SCHEDULE_KEYS, &[]) else {
        return (None, None);
    };
    let cron = entries.iter().find(|(k, _, _)| k == "cron");
    let every = entries.iter().find(|(k, _, _)| k == "every");
    let tz = entries
        .iter()
        .find(|(k, _, _)| k == "tz")
        .and_then(|(_, _, v)| {
            let name = w.string(v, "tz")?;
            match name.parse::<chrono_tz::Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    w.error(
                        v,
                        format!("unknown time zone `{name}`"),
                        "use an IANA name like UTC, Europe/Berlin or America/New_York",
                    );
                    None
                }
            }
        });
    if tz.is_some() && every.is_some() {
        let (_, k, _) = entries
            .iter()
            .find(|(k, _, _)| k == "tz")
            .expect("tz was found above");
        w.error(
            k,
            "`tz` only applies to cron schedules",
            "remove `tz`, or use `cron:`",
        );
    }
    let schedule = match (cron, every) {
        (Some(_), Some(_)) | (None, None) => {
            w.error(
                node,
                "a schedule needs exactly one of `cron` or `every`",
                "write `{ every: 30s }` or `{ cron: \"0 */5 * * * *\" }`",
            );
            None
        }
        (Some((_, _, v)), None) => w
            .string(v, "cron")
            .and_then(|expr| match parse_cron(&expr) {
                Ok(s) => Some(Schedule::Cron {
                    expr,
                    schedule: Box::new(s),
                }),
                Err(e) => {
                    w.error_in(v, e.offset, e.width, e.message, Some(e.help));
                    None
                }
            }),
        (None, Some((_, _, v))) => w.duration(v, "every").map(Schedule::Every),
    };
    (schedule, tz)
}

/// Capture names per step (with the capturing step's name), gathered before the steps are
/// built so a use before the capturing step can be named.
pub(super) fn captured_names(w: &Walker<'_>, items: &[Node<'_>]) -> Vec<Vec<(String, String)>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let step_name = field(item, "name")
                .and_then(|n| w.scalar(n))
                .unwrap_or_else(|| format!("step {}", i + 1));
            field(item, "capture")
                .and_then(|c| match &c.data {
                    YamlData::Mapping(m) => Some(
                        m.keys()
                            .filter_map(|k| w.scalar(k))
                            .map(|k| (k, step_name.clone()))
                            .collect(),
                    ),
                    _ => None,
                })
                .unwrap_or_default()
        })
        .collect()
}

/// The steps of an HTTP probe.
fn steps(w: &mut Walker<'_>, node: &Node<'_>, vars: &[String]) -> Vec<HttpStep> {
    let Some(items) = w.list(node, "steps") else {
        return Vec::new();
    };
    if items.is_empty() {
        w.error(
            node,
            "a probe needs at least one step",
            "add a step with a `request:`",
        );
    }
    let captured = captured_names(w, items);
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let visible: Vec<String> = vars
            .iter()
            .cloned()
            .chain(captured[..i].iter().flatten().map(|(n, _)| n.clone()))
            .collect();
        let later: Vec<(String, String)> = captured[i..].iter().flatten().cloned().collect();
        if let Some(step) = step(w, item, i, &visible, &later) {
            if let Some(first) = names.insert(step.name.clone(), i) {
                let n = field(item, "name").unwrap_or(item);
                w.error(
                    n,
                    format!("duplicate step name `{}`", step.name),
                    format!(
                        "step names must be unique within a probe (step {} has it too)",
                        first + 1
                    ),
                );
            }
            out.push(step);
        }
    }
    // Specs live as long as the config: no spare capacity (a Vec grows to 4 on its first
    // push; BENCHMARKS.md §4).
    out.shrink_to_fit();
    out
}

fn step(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    index: usize,
    visible: &[String],
    later: &[(String, String)],
) -> Option<HttpStep> {
    let entries = w.map(node, "a step", &STEP_KEYS, &["request"])?;
    let mut name = None;
    let mut request = None;
    let mut captures = Vec::new();
    let mut asserts = Vec::new();
    let mut timeout = None;
    let mut request_node = None;
    let mut assert_nodes = Vec::new();
    for (key, _, v) in &entries {
        match key.as_str() {
            "name" => {
                if let Some(n) = w.string(v, "step name") {
                    if !name_safe(&n) {
                        w.error(
                            v,
                            format!("step name `{n}` must be letters, digits, `_` and `-`"),
                            "it becomes the `step` metric label; write e.g. add_to_cart",
                        );
                    }
                    name = Some(n);
                }
            }
            "request" => {
                request_node = Some(*v);
                request = parse_request(w, v);
            }
            "capture" => captures = parse_captures(w, v, "http", &HTTP_QUERIES),
            "assert" => {
                for (item, a) in parse_asserts(w, v, "http", &HTTP_QUERIES) {
                    assert_nodes.push((item, a.clone()));
                    asserts.push(a);
                }
            }
            _ => timeout = w.duration(v, "step timeout"),
        }
    }
    let request = request?;
    if let Some(rn) = request_node {
        let templates = request_templates(&request);
        check_templates(w, rn, templates, visible, later);
    }
    for (node, a) in &assert_nodes {
        for (t, offset) in a.templates() {
            check_template_at(w, node, t, offset, visible, later);
        }
    }
    let name = name.unwrap_or_else(|| derive_step_name(&request, index));
    captures.shrink_to_fit();
    asserts.shrink_to_fit();
    Some(HttpStep {
        name,
        request,
        captures,
        asserts,
        timeout,
    })
}

/// Queries an HTTP step's assertions and captures can use.
const HTTP_QUERIES: [&str; 8] = [
    "status",
    "header",
    "jsonpath",
    "body",
    "duration",
    "cert_expiry",
    "regex",
    "cookie",
];

/// Parses `capture: { name: query }`, checking names and that `kind` steps offer each query.
pub(super) fn parse_captures(
    w: &mut Walker<'_>,
    v: &Node<'_>,
    kind: &str,
    queries: &[&str],
) -> Vec<Capture> {
    let Some(pairs) = w.map(v, "capture", &[], &[]) else {
        return Vec::new();
    };
    let mut captures = Vec::new();
    for (cname, knode, qnode) in pairs {
        if !name_safe(&cname) {
            w.error(
                knode,
                format!("capture name `{cname}` must be letters, digits, `_` and `-`"),
                "rename it, e.g. `token`",
            );
            continue;
        }
        let Some(src) = w.string(qnode, "capture query") else {
            continue;
        };
        match Capture::parse(&cname, &src) {
            Ok(c) => {
                if offers_query(w, qnode, c.query.keyword(), kind, queries) {
                    captures.push(c);
                }
            }
            Err(e) => w.error_in(qnode, e.offset, 1, e.message, e.help),
        }
    }
    captures
}

/// Parses `assert:` (one assertion or a list), each with its node, checking that `kind` steps
/// offer each assertion's query.
pub(super) fn parse_asserts<'n, 's>(
    w: &mut Walker<'_>,
    v: &'n Node<'s>,
    kind: &str,
    queries: &[&str],
) -> Vec<(&'n Node<'s>, Assertion)> {
    let items: Vec<&Node<'_>> = match &v.data {
        YamlData::Sequence(items) => items.iter().collect(),
        _ => vec![v],
    };
    let mut out = Vec::new();
    for item in items {
        let Some(src) = w.string(item, "an assertion") else {
            continue;
        };
        match Assertion::parse(&src) {
            Ok(a) => {
                if offers_query(w, item, a.query().keyword(), kind, queries) {
                    out.push((item, a));
                }
            }
            Err(e) => w.error_in(item, e.offset, 1, e.message, e.help),
        }
    }
    out
}

/// Records an error when `kind` steps have nothing for `query` to read.
fn offers_query(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    query: &str,
    kind: &str,
    queries: &[&str],
) -> bool {
    if queries.contains(&query) {
        return true;
    }
    let help = match did_you_mean(query, queries.iter().copied()) {
        Some(s) => format!(
            "did you mean `{s}`? {kind} steps can use: {}",
            queries.join(", ")
        ),
        None => format!("{kind} steps can use: {}", queries.join(", ")),
    };
    w.error_in(
        node,
        0,
        query.len(),
        format!("`{query}` does not apply to {kind} steps"),
        Some(help),
    );
    false
}

fn derive_step_name(request: &RequestSpec, index: usize) -> String {
    // The path after the scheme and host, or after a leading `{{ base }}` template.
    let source = request.url.source();
    let path = match source.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => source
            .strip_prefix("{{")
            .and_then(|r| r.split_once("}}"))
            .map_or(source, |(_, p)| p),
    };
    let slug: String = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut slug = slug.trim_matches('_').to_string();
    while slug.contains("__") {
        slug = slug.replace("__", "_");
    }
    if slug.is_empty() || path.contains("{{") {
        format!("step_{}", index + 1)
    } else {
        format!("{}_{slug}", request.method.to_ascii_lowercase())
    }
}

fn parse_request(w: &mut Walker<'_>, node: &Node<'_>) -> Option<RequestSpec> {
    let entries = w.map(node, "request", &REQUEST_KEYS, &["url"])?;
    let mut method = "GET".to_string();
    let mut url = None;
    let mut headers = Vec::new();
    let mut query = Vec::new();
    let mut bodies: Vec<(&Node<'_>, BodySpec)> = Vec::new();
    for (key, _, v) in &entries {
        match key.as_str() {
            "method" => {
                if let Some(m) = w.string(v, "method") {
                    let upper = m.to_ascii_uppercase();
                    if METHODS.contains(&upper.as_str()) {
                        method = upper;
                    } else {
                        w.error(
                            v,
                            format!("unknown HTTP method `{m}`"),
                            format!("use one of {}", METHODS.join(", ")),
                        );
                    }
                }
            }
            "url" => {
                if let Some(t) = template_at(w, v, "url") {
                    if t.is_literal() {
                        match url::Url::parse(t.source()) {
                            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                            Ok(u) => w.error(v, format!("unsupported URL scheme `{}`", u.scheme()), "use an http:// or https:// URL"),
                            Err(e) => w.error(v, format!("invalid URL `{}`: {e}", t.source()), "write a full URL like https://api.example.com/health, or \"{{ api }}/health\""),
                        }
                    }
                    url = Some(t);
                }
            }
            "headers" => headers = pairs(w, v, "headers", true),
            "query" => query = pairs(w, v, "query", false),
            "form" => bodies.push((v, BodySpec::Form(pairs(w, v, "form", false)))),
            "body" => {
                if let Some(t) = template_at(w, v, "body") {
                    bodies.push((v, BodySpec::Text(t)));
                }
            }
            _ => {
                if let Some(doc) = json_template(w, v) {
                    bodies.push((v, BodySpec::Json(doc)));
                }
            }
        }
    }
    if bodies.len() > 1 {
        w.error(
            bodies[1].0,
            "a request has one body: choose one of json, body or form",
            "remove all but one of them",
        );
    }
    Some(RequestSpec {
        method,
        url: url?,
        headers,
        query,
        body: bodies.into_iter().next().map(|(_, b)| b),
    })
}

fn pairs(w: &mut Walker<'_>, node: &Node<'_>, what: &str, header: bool) -> Vec<(String, Template)> {
    let Some(entries) = w.map(node, what, &[], &[]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, knode, v) in entries {
        if header
            && (k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
        {
            w.error(
                knode,
                format!("`{k}` is not a valid header name"),
                "header names are letters, digits and `-`, e.g. X-Request-Id",
            );
            continue;
        }
        if let Some(t) = template_at(w, v, what) {
            out.push((k, t));
        }
    }
    out.shrink_to_fit();
    out
}

fn json_template(w: &mut Walker<'_>, node: &Node<'_>) -> Option<JsonTemplate> {
    Some(match &node.data {
        YamlData::Value(Scalar::Null) => JsonTemplate::Null,
        YamlData::Value(Scalar::Boolean(b)) => JsonTemplate::Bool(*b),
        YamlData::Value(Scalar::Integer(n)) => JsonTemplate::Number((*n).into()),
        YamlData::Value(Scalar::FloatingPoint(f)) => JsonTemplate::Number(
            serde_json::Number::from_f64(f.into_inner()).unwrap_or_else(|| 0.into()),
        ),
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => {
            JsonTemplate::String(template_at(w, node, "a JSON string")?)
        }
        YamlData::Sequence(items) => {
            JsonTemplate::Array(items.iter().filter_map(|i| json_template(w, i)).collect())
        }
        YamlData::Mapping(map) => {
            let mut fields = Vec::new();
            for (k, v) in map {
                let Some(key) = w.scalar(k) else {
                    w.error(
                        k,
                        "JSON keys must be strings",
                        "use a plain word as the key",
                    );
                    continue;
                };
                if let Some(value) = json_template(w, v) {
                    fields.push((key, value));
                }
            }
            JsonTemplate::Object(fields)
        }
        _ => {
            w.error(
                node,
                format!("{} cannot be sent as JSON", kind(node)),
                "use plain YAML values",
            );
            return None;
        }
    })
}

/// Parses a string node as a template, reporting syntax errors at their column.
pub(super) fn template_at(w: &mut Walker<'_>, node: &Node<'_>, what: &str) -> Option<Template> {
    let text = w.string(node, what)?;
    match Template::parse(&text) {
        Ok(t) => Some(t),
        Err(e) => {
            w.error_in(node, e.offset, 2, e.message, e.help);
            None
        }
    }
}

/// Checks that every name used by `templates` (all found under `node`) is a var or an earlier
/// capture, pointing at the placeholder when it can.
pub(super) fn check_templates<'t>(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    templates: impl IntoIterator<Item = &'t Template>,
    visible: &[String],
    later: &[(String, String)],
) {
    for t in templates {
        let at = find_scalar(w, node, t.source()).unwrap_or(node);
        check_template_at(w, at, t, 0, visible, later);
    }
}

pub(super) fn check_template_at(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    t: &Template,
    base: usize,
    visible: &[String],
    later: &[(String, String)],
) {
    for (p, offset) in t.placeholders() {
        match p {
            Placeholder::Name(name) if !visible.iter().any(|v| v == name) => {
                let (message, help) = if let Some((_, step)) = later.iter().find(|(n, _)| n == name)
                {
                    (
                        format!("`{name}` is used before the step that captures it"),
                        format!(
                            "`{name}` is captured by step `{step}`, which runs at or after this point; move the capture earlier"
                        ),
                    )
                } else {
                    let help = did_you_mean(name, visible.iter().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            format!(
                                "define `{name}` under `vars:` or capture it in an earlier step"
                            )
                        });
                    (format!("undefined variable `{name}`"), help)
                };
                w.error_in(
                    node,
                    base + offset,
                    name.chars().count(),
                    message,
                    Some(help),
                );
            }
            Placeholder::Env(name) if std::env::var_os(name).is_none() => {
                w.warn_in(
                    node,
                    base + offset,
                    name.len() + 4,
                    format!("environment variable {name} is not set here"),
                    format!("probes using it will error until {name} is set"),
                );
            }
            _ => {}
        }
    }
}

/// The first scalar under `node` whose text is `text`.
pub(super) fn find_scalar<'n, 's>(
    w: &Walker<'_>,
    node: &'n Node<'s>,
    text: &str,
) -> Option<&'n Node<'s>> {
    match &node.data {
        YamlData::Mapping(map) => map.values().find_map(|v| find_scalar(w, v, text)),
        YamlData::Sequence(items) => items.iter().find_map(|v| find_scalar(w, v, text)),
        _ => (w.scalar(node).as_deref() == Some(text)).then_some(node),
    }
}

fn request_templates(r: &RequestSpec) -> Vec<&Template> {
    let mut out = vec![&r.url];
    out.extend(r.headers.iter().map(|(_, t)| t));
    out.extend(r.query.iter().map(|(_, t)| t));
    match &r.body {
        Some(BodySpec::Text(t)) => out.push(t),
        Some(BodySpec::Form(f)) => out.extend(f.iter().map(|(_, t)| t)),
        Some(BodySpec::Json(doc)) => out.extend(doc.templates()),
        None => {}
    }
    out
}

/// Every template of a probe (requests and assertion values), for secret discovery.
pub fn probe_templates(spec: &ProbeSpec) -> Vec<&Template> {
    match &spec.kind {
        ProbeKind::Http(http) => http
            .steps
            .iter()
            .flat_map(|s| {
                let mut ts = request_templates(&s.request);
                ts.extend(
                    s.asserts
                        .iter()
                        .flat_map(|a| a.templates().into_iter().map(|(t, _)| t)),
                );
                ts
            })
            .collect(),
        ProbeKind::Browser(b) => b.steps.iter().flat_map(|s| s.action.templates()).collect(),
        ProbeKind::Infra(i) => i
            .steps
            .iter()
            .flat_map(|s| {
                let mut ts = s.check.templates();
                ts.extend(
                    s.asserts
                        .iter()
                        .flat_map(|a| a.templates().into_iter().map(|(t, _)| t)),
                );
                ts
            })
            .collect(),
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" | "k" => 1024.0,
        "mb" => 1e6,
        "mib" | "m" => 1024.0 * 1024.0,
        "gb" => 1e9,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as usize)
}

pub(super) fn name_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn label_safe(s: &str) -> bool {
    name_safe(s)
}
