//! The config file: types, loading and validation. Every problem in the file is reported at once
//! as `file:line:col` with a fix (see [`diagnostic`]); a config that loads is ready to run.
//!
//! - [`yaml`]: the span-keeping YAML walker
//! - [`build`]: turns the YAML tree into [`Config`], checking everything on the way
//! - [`schedule`]: cron and interval schedules
//! - [`diagnostic`]: error reports with line, column and help

pub mod build;
pub mod diagnostic;
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
    /// Log the action instead of running it.
    pub action_dry_run: bool,
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
            action_dry_run: true,
        }
    }
}

impl Config {
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
    let report = Report { file: file.to_string(), source: source.to_string(), diagnostics };
    match config {
        Some(c) if report.error_count() == 0 => Ok((c, report)),
        _ => Err(report),
    }
}
