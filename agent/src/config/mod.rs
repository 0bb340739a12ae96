//! The config file: types, loading and validation. Every problem in the file is reported at once
//! as `file:line:col` with a fix (see [`diagnostic`]); a config that loads is ready to run.
//!
//! - [`yaml`]: the span-keeping YAML walker
//! - [`build`]: turns the YAML tree into [`Config`], checking everything on the way
//! - [`browser`]: browser probe steps
//! - [`infra`]: tcp, dns, tls, redis and postgres probe steps
//! - [`schedule`]: cron and interval schedules
//! - [`diagnostic`]: error reports with line, column and help

pub mod browser;
pub mod build;
pub mod diagnostic;
pub mod infra;
pub mod schedule;
pub mod yaml;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use patrol_probes::spec::ProbeSpec;
use patrol_probes::template::{Masker, Template};

pub use diagnostic::{Diagnostic, Report, Severity};
pub use schedule::Schedule;

/// A loaded, valid config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Agent settings.
    pub agent: AgentConfig,
    /// Browser settings.
    pub browser: BrowserConfig,
    /// Vars in file order; each may use built-ins and earlier vars.
    pub vars: Vec<(String, Template)>,
    /// Probes in file order.
    pub probes: Vec<ProbeConfig>,
    /// Post-deploy verification settings.
    pub verify: VerifyConfig,
}

/// The `agent:` section.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Address of /metrics, the API and the status page.
    pub listen: SocketAddr,
    /// The `location` label of every probe metric.
    pub location: String,
    /// Bearer token required on POST endpoints.
    pub api_token: Option<Template>,
    /// Runs in flight at once.
    pub max_concurrency: usize,
    /// Where screenshots, page HTML and failed response bodies go.
    pub artifacts_dir: PathBuf,
    /// Failed runs whose artifacts are kept per probe; older ones are deleted.
    pub keep_artifacts: usize,
    /// Runs kept per probe in memory: `GET /api/v1/probes/{name}/runs`, the status page's strip
    /// and the agent's pre-deploy baselines read them.
    pub history: usize,
}

/// The `browser:` section.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// chromedriver binary.
    pub chromedriver: PathBuf,
    /// Chromium binary.
    pub chromium: PathBuf,
    /// Browser sessions at once.
    pub max_sessions: usize,
}

/// One probe with what the agent needs beyond its spec.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// What to run.
    pub spec: Arc<ProbeSpec>,
    /// Tags for selection (`--tag`, API, hooks).
    pub tags: Vec<String>,
    /// Locations that run it; empty = every agent.
    pub locations: Vec<String>,
    /// When it runs on its own; `None` = on demand only.
    pub schedule: Option<Schedule>,
    /// Time zone of a cron schedule; UTC when `None`.
    pub tz: Option<chrono_tz::Tz>,
}

/// The `verify:` section (rollback criteria, thresholds, baseline, action).
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Fail when the error rate rose by more than this many percentage points.
    pub error_rate_increase: f64,
    /// Fail when p95 latency rose by more than this fraction (0.5 = 50%).
    pub latency_increase: f64,
    /// Absolute p95 limit.
    pub p95: Option<Duration>,
    /// Absolute p99 limit.
    pub p99: Option<Duration>,
    /// Absolute error-rate limit, in percent.
    pub error_rate: Option<f64>,
    /// Window of scheduled runs before a deploy used as the baseline.
    pub baseline: Duration,
    /// Command run on a fail verdict (argv, no shell).
    pub action_command: Vec<String>,
    /// Webhook POSTed on a fail verdict (JSON with the verdict).
    pub action_webhook: Option<String>,
    /// Log the action instead of running it.
    pub action_dry_run: bool,
    /// A p95 rise smaller than this is noise, whatever the ratio.
    pub min_latency_increase: Duration,
    /// Runs per probe needed in the baseline (and per side in a canary) for a verdict.
    pub min_samples: u64,
    /// Post-deploy runs per probe before the first look at a verdict.
    pub runs: u32,
    /// Post-deploy runs per probe at most, while a rule is within its margin of error.
    pub max_runs: u32,
    /// Var overrides per canary track: `stable` and `canary`.
    pub canary: Vec<(String, Vec<(String, String)>)>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            error_rate_increase: 10.0,
            latency_increase: 0.5,
            p95: None,
            p99: None,
            error_rate: None,
            baseline: Duration::from_secs(30 * 60),
            action_command: Vec::new(),
            action_webhook: None,
            action_dry_run: true,
            min_latency_increase: Duration::from_millis(10),
            min_samples: 5,
            runs: 5,
            max_runs: 100,
            canary: Vec::new(),
        }
    }
}

impl Config {
    /// True when any probe drives a browser.
    pub fn has_browser_probes(&self) -> bool {
        self.probes
            .iter()
            .any(|p| matches!(p.spec.kind, patrol_probes::spec::ProbeKind::Browser(_)))
    }

    /// What every run of this config shares: transport, vars, secrets, the artifact store and,
    /// when a probe needs one, the supervised browser.
    pub fn runtime(&self, masker: Masker) -> patrol_probes::run::Runtime {
        let store = patrol_probes::artifacts::ArtifactStore {
            root: self.agent.artifacts_dir.clone(),
            keep: self.agent.keep_artifacts,
        };
        let runtime =
            patrol_probes::run::Runtime::new(self.vars.clone(), masker).with_artifacts(store);
        if self.has_browser_probes() {
            runtime.with_browser(Arc::new(patrol_probes::browser::Browser::new(
                self.browser_settings(),
            )))
        } else {
            runtime
        }
    }

    /// True when the browser sections of two configs differ.
    pub fn browser_settings_differ(&self, other: &Config) -> bool {
        let (a, b) = (&self.browser, &other.browser);
        a.chromedriver != b.chromedriver
            || a.chromium != b.chromium
            || a.max_sessions != b.max_sessions
    }

    /// The browser section as the engine wants it.
    pub fn browser_settings(&self) -> patrol_probes::browser::BrowserSettings {
        patrol_probes::browser::BrowserSettings {
            chromedriver: self.browser.chromedriver.clone(),
            chromium: self.browser.chromium.clone(),
            max_sessions: self.browser.max_sessions,
        }
    }

    /// Sets a var to a literal value (from `--var`), replacing one of the same name in place.
    pub fn set_var(&mut self, name: &str, value: &str) {
        let t = Template::literal(value);
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = t,
            None => self.vars.push((name.to_string(), t)),
        }
    }

    /// Every secret the config refers to (`env.`/`file.` values that are set), for masking.
    pub fn masker(&self) -> Masker {
        let mut values = Vec::new();
        let mut templates: Vec<&Template> = self.vars.iter().map(|(_, t)| t).collect();
        templates.extend(self.agent.api_token.iter());
        for probe in &self.probes {
            templates.extend(build::probe_templates(&probe.spec));
        }
        for t in templates {
            for (p, _) in t.placeholders() {
                match p {
                    patrol_probes::template::Placeholder::Env(name) => {
                        values.extend(std::env::var(name).ok());
                    }
                    patrol_probes::template::Placeholder::File(path) => {
                        if let Ok(text) = std::fs::read_to_string(path) {
                            values.push(text.trim_end_matches(['\n', '\r']).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Masker::new(values)
    }
}

/// Reads and validates a config file. `Err` carries every problem found; `Ok` carries the
/// config and any warnings.
pub fn load(path: &Path) -> Result<(Config, Report), Report> {
    let file = path.display().to_string();
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            return Err(Report {
                file: file.clone(),
                source: String::new(),
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    line: 1,
                    col: 1,
                    width: 1,
                    message: format!("cannot read the config file: {e}"),
                    help: Some("check the path given to --config".into()),
                }],
            });
        }
    };
    load_str(&file, &source)
}

/// Validates config text; `file` names it in diagnostics.
pub fn load_str(file: &str, source: &str) -> Result<(Config, Report), Report> {
    let (config, mut diagnostics) = build::build(source);
    diagnostics.sort_by_key(|d| (d.line, d.col));
    let report = Report {
        file: file.to_string(),
        source: source.to_string(),
        diagnostics,
    };
    match config {
        Some(c) if report.error_count() == 0 => Ok((c, report)),
        _ => Err(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_probes::spec::{BodySpec, ProbeKind};

    fn errors(src: &str) -> Vec<(usize, usize, String, String)> {
        let report = load_str("t.yaml", src).expect_err("config has errors");
        report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| {
                (
                    d.line,
                    d.col,
                    d.message.clone(),
                    d.help.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    const ONE_PROBE: &str =
        "probes:\n  - name: a\n    steps:\n      - request: { url: \"http://127.0.0.1:1\" }\n";

    #[test]
    fn max_runs_is_the_cap_of_sequential_runs_and_never_below_runs() {
        let load = |verify: &str| {
            let src = format!("{ONE_PROBE}verify:\n{verify}");
            load_str("t.yaml", &src).unwrap_or_else(|r| panic!("{r}")).0
        };
        let defaults = load("  baseline: 10m\n");
        assert_eq!((defaults.verify.runs, defaults.verify.max_runs), (5, 100));
        let fixed = load("  runs: 20\n  max_runs: 20\n");
        assert_eq!((fixed.verify.runs, fixed.verify.max_runs), (20, 20));
        // A minimum above the default cap raises the cap with it.
        let many = load("  runs: 150\n");
        assert_eq!((many.verify.runs, many.verify.max_runs), (150, 150));
        // Wherever max_runs is written, it is checked against runs.
        let src = format!("{ONE_PROBE}verify:\n  max_runs: 10\n  runs: 20\n");
        assert_eq!(
            errors(&src),
            vec![(
                6,
                13,
                "verify.max_runs (10) is below verify.runs (20)".to_string(),
                "runs is the minimum and max_runs the cap: write `max_runs: 20` or more (equal \
                 to runs for a fixed number of runs)"
                    .to_string()
            )]
        );
    }

    #[test]
    fn history_is_bounded_runs_per_probe() {
        let load = |agent: &str| {
            let src = format!("agent:\n{agent}{ONE_PROBE}");
            load_str("t.yaml", &src).unwrap_or_else(|r| panic!("{r}")).0
        };
        assert_eq!(load("  location: x\n").agent.history, 100);
        assert_eq!(load("  history: 50\n").agent.history, 50);
        for bad in ["0", "10001"] {
            let src = format!("agent:\n  history: {bad}\n{ONE_PROBE}");
            assert_eq!(
                errors(&src),
                vec![(
                    2,
                    12,
                    "history must be 1 to 10000 runs per probe".to_string(),
                    "write e.g. `history: 100` (the default)".to_string()
                )]
            );
        }
    }

    #[test]
    fn a_valid_config_builds_specs_with_defaults_and_overrides() {
        let src = r#"
vars:
  api: http://127.0.0.1:1
defaults: { timeout: 3s, retries: 1 }
probes:
  - name: login
    tags: [smoke]
    schedule: { every: 30s }
    retries: 2
    steps:
      - request:
          method: post
          url: "{{ api }}/api/auth/login"
          json: { email: a@b.c, n: 1, ok: true }
        capture: { token: jsonpath "$.token" }
        assert: [ status == 200 ]
      - name: cart
        request:
          url: "{{ api }}/api/cart"
          headers: { Authorization: "Bearer {{ token }}" }
"#;
        let (config, report) = load_str("t.yaml", src).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(report.diagnostics.len(), 0);
        let probe = &config.probes[0];
        assert_eq!(probe.tags, vec!["smoke"]);
        assert!(matches!(probe.schedule, Some(Schedule::Every(d)) if d == Duration::from_secs(30)));
        assert_eq!(probe.spec.timeout, Duration::from_secs(3));
        assert_eq!(probe.spec.retries, 2);
        let ProbeKind::Http(http) = &probe.spec.kind else {
            panic!("an http probe")
        };
        assert_eq!(http.steps[0].name, "post_api_auth_login");
        assert_eq!(http.steps[0].request.method, "POST");
        assert!(matches!(
            http.steps[0].request.body,
            Some(BodySpec::Json(_))
        ));
        assert_eq!(http.steps[1].name, "cart");
        assert_eq!(http.max_body_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn every_problem_is_reported_in_one_pass() {
        let src = r#"probes:
  - name: a
    schedule: { cron: "0 */5 25 * * *" }
    timeout: 10
    steps:
      - request: { url: "http://x/{{ tokn }}" }
        asert: [ status == 200 ]
      - request: { url: "http://x/" }
        assert:
          - status === 200
  - name: a
    steps:
      - request: { url: "http://x/{{ later }}" }
      - request: { url: "http://x/" }
        capture: { later: header "X" }
"#;
        let errs = errors(src);
        let want = [
            (3, 30, "invalid hours field `25` in cron expression"),
            (4, 14, "invalid duration `10` for timeout"),
            (6, 38, "undefined variable `tokn`"),
            (7, 9, "unknown key `asert` in a step"),
            (10, 20, "unknown operator `===`"),
            (11, 11, "duplicate probe name `a`"),
            (13, 38, "`later` is used before the step that captures it"),
        ];
        for (line, col, msg) in want {
            assert!(
                errs.iter()
                    .any(|(l, c, m, _)| *l == line && *c == col && m.starts_with(msg)),
                "missing {line}:{col} {msg} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        let help = |m: &str| {
            errs.iter()
                .find(|e| e.2.starts_with(m))
                .map(|e| e.3.clone())
                .unwrap_or_default()
        };
        assert_eq!(help("unknown key `asert`"), "did you mean `assert`?");
        assert_eq!(help("invalid duration `10`"), "add a unit: `10s` or `10ms`");
        assert!(help("duplicate probe name").contains("line 2"));
    }

    #[test]
    fn yaml_syntax_errors_have_a_position() {
        let errs = errors("probes:\n  - name: a\n   steps: [\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].2.starts_with("invalid YAML"), "{errs:?}");
        assert!(errs[0].0 >= 2);
    }

    #[test]
    fn templates_in_assertions_and_vars_are_checked() {
        let src = r#"vars:
  a: "{{ b }}"
  b: x
probes:
  - name: p
    steps:
      - request: { url: "http://x/" }
        assert: [ 'body contains "{{ nope }}"' ]
"#;
        let errs = errors(src);
        assert!(
            errs.iter()
                .any(|e| e.0 == 2 && e.1 == 10 && e.2 == "undefined variable `b`"),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.0 == 8 && e.1 == 38 && e.2 == "undefined variable `nope`"),
            "{errs:#?}"
        );
    }
}
