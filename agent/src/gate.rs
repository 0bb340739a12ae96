//! `patrol verify`, the deploy gate. Plain: every selected probe once. With a verdict mode it
//! answers "should this deploy be rolled back?":
//! - `--baseline-from URL` / `--prometheus URL`: post-deploy runs against the pre-deploy
//!   baseline of a running agent or of Prometheus (the runbook's rules);
//! - `--watch 15m`: keep running for the window against absolute thresholds, failing early;
//! - `--canary`: the same probes against the `stable` and `canary` tracks, compared
//!   statistically.
//!
//! Exit codes: 0 pass, 1 a probe failed or the verdict is fail (or inconclusive, unless
//! `--allow-inconclusive`), 2 config or usage error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use patrol_probes::result::ProbeResult;
use patrol_probes::template::Masker;

use crate::config::{self, Config, ProbeConfig};
use crate::deploy::{self, baseline};
use crate::report::{self, RunReport, Summary, console};
use crate::verdict::thresholds::Thresholds;
use crate::verdict::{Decision, Verdict, canary, rules, thresholds};
use crate::verify::{self, Selection};

/// Arguments of `patrol verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Run only probes with this tag (repeatable).
    #[arg(long = "tag", short = 't')]
    pub tags: Vec<String>,
    /// Run only the probe with this name (repeatable).
    #[arg(long = "probe", short = 'p')]
    pub probes: Vec<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Show request and response detail and phase timings for every step.
    #[arg(long, short)]
    pub verbose: bool,
    /// Probes run at once (default: agent.max_concurrency from the config).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Set or override a var, e.g. `--var api=https://staging.example.com` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = crate::parse_var)]
    pub vars: Vec<(String, String)>,
    /// Judge against the pre-deploy baseline kept by a running agent (its base URL).
    #[arg(long, value_name = "URL", conflicts_with = "prometheus")]
    pub baseline_from: Option<String>,
    /// Judge against the pre-deploy baseline in Prometheus (its base URL).
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Baseline window before now (default: verify.baseline).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub baseline_window: Option<Duration>,
    /// Post-deploy runs per probe before the first look at the verdict (default: verify.runs;
    /// 20 per track with --canary).
    #[arg(long)]
    pub runs: Option<u32>,
    /// Runs per probe at most while a rule is within its margin of error (default:
    /// verify.max_runs; --runs for a fixed number).
    #[arg(long)]
    pub max_runs: Option<u32>,
    /// Pause between rounds of runs (default 1s; 10s with --watch).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Keep running for this window and judge against verify.thresholds, failing early.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["baseline_from", "prometheus", "canary"])]
    pub watch: Option<Duration>,
    /// Compare the `stable` and `canary` tracks of verify.canary.
    #[arg(long, conflicts_with_all = ["baseline_from", "prometheus"])]
    pub canary: bool,
    /// Exit 0 on an inconclusive verdict (too little data) instead of 1.
    #[arg(long)]
    pub allow_inconclusive: bool,
}

/// Where and how results are reported.
#[derive(Debug, Default)]
pub struct Outputs {
    /// The config's name in reports.
    pub config_name: String,
    /// JSON report path.
    pub report_json: Option<PathBuf>,
    /// JUnit report path.
    pub junit: Option<PathBuf>,
    /// Verbose console output.
    pub verbose: bool,
    /// Override of agent.max_concurrency.
    pub concurrency: Option<usize>,
}

/// Runs `patrol verify`.
pub async fn run(args: VerifyArgs) -> ExitCode {
    let Some(mut config) = crate::load_config(&args.config) else {
        return ExitCode::from(2);
    };
    for (name, value) in &args.vars {
        config.set_var(name, value);
    }
    let outputs = Outputs {
        config_name: args.config.display().to_string(),
        report_json: args.report_json.clone(),
        junit: args.junit.clone(),
        verbose: args.verbose,
        concurrency: args.concurrency,
    };
    let selection = Selection {
        tags: args.tags.clone(),
        probes: args.probes.clone(),
    };
    let verdict_mode = args.baseline_from.is_some()
        || args.prometheus.is_some()
        || args.watch.is_some()
        || args.canary;
    if !verdict_mode {
        return run_and_report(&config, &selection, config.masker(), &outputs).await;
    }
    let chosen = match verify::select(&config, &selection) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let outcome = judge(&args, &config, &chosen, &outputs).await;
    let (results, verdict) = match outcome {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = RunReport {
        config: outputs.config_name.clone(),
        results,
        duration: started.elapsed(),
        verdict: Some(verdict),
    };
    let written = print_and_write(&report, &outputs, true);
    if !written {
        return ExitCode::from(2);
    }
    match report.verdict.as_ref().map(|v| v.verdict) {
        Some(Decision::Pass) => ExitCode::SUCCESS,
        Some(Decision::Inconclusive) if args.allow_inconclusive => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

async fn judge(
    args: &VerifyArgs,
    config: &Config,
    chosen: &[&ProbeConfig],
    out: &Outputs,
) -> anyhow::Result<(Vec<ProbeResult>, Verdict)> {
    let concurrency = out.concurrency.unwrap_or(config.agent.max_concurrency);
    let names: Vec<String> = chosen.iter().map(|p| p.spec.name.clone()).collect();
    if args.canary {
        return canary_mode(args, config, chosen, concurrency).await;
    }
    if let Some(window) = args.watch {
        return watch_mode(args, config, chosen, concurrency, window).await;
    }
    let window = args.baseline_window.unwrap_or(config.verify.baseline);
    // The baseline is read before any post-deploy run, so those runs cannot leak into it.
    let base = match (&args.baseline_from, &args.prometheus) {
        (Some(url), _) => baseline::from_agent(url, &names, window).await?,
        (_, Some(url)) => baseline::from_prometheus(url, &names, window).await?,
        _ => unreachable!("verdict mode without a baseline source"),
    };
    let rounds = deploy::Rounds::asked(&config.verify, args.runs, args.max_runs);
    let runtime = config.runtime(config.masker());
    let health = deploy::health_probes(chosen);
    let limits = deploy::rules(config);
    let (results, verdict, _) = deploy::run_until_settled(
        rounds,
        args.interval.unwrap_or(Duration::from_secs(1)),
        |names| {
            let (runtime, probes) = (&runtime, deploy::only(chosen, names.as_ref()));
            async move { verify::run_all(&probes, runtime, concurrency).await }
        },
        |results, look| rules::judge(&base, &deploy::aggregates(results), &health, &limits, look),
    )
    .await;
    shutdown(&runtime).await;
    Ok((results, verdict))
}

async fn watch_mode(
    args: &VerifyArgs,
    config: &Config,
    chosen: &[&ProbeConfig],
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<(Vec<ProbeResult>, Verdict)> {
    let limits = Thresholds {
        p95: config.verify.p95.map(|d| d.as_secs_f64()),
        p99: config.verify.p99.map(|d| d.as_secs_f64()),
        error_rate: config.verify.error_rate,
    };
    if limits.p95.is_none() && limits.p99.is_none() && limits.error_rate.is_none() {
        anyhow::bail!("--watch needs verify.thresholds (p95, p99 or error_rate) in the config");
    }
    let interval = args
        .interval
        .unwrap_or(Duration::from_secs(10))
        .max(Duration::from_millis(100));
    let planned = (window.as_secs_f64() / interval.as_secs_f64())
        .floor()
        .max(1.0) as u64;
    let runtime = config.runtime(config.masker());
    let deadline = tokio::time::Instant::now() + window;
    let mut results = Vec::new();
    let mut verdict;
    let mut round = 0;
    loop {
        let started = tokio::time::Instant::now();
        results.extend(verify::run_all(chosen, &runtime, concurrency).await);
        round += 1;
        let finished = round >= planned || tokio::time::Instant::now() + interval > deadline;
        verdict = thresholds::judge(&deploy::aggregates(&results), &limits, planned, finished);
        if verdict.verdict == Decision::Fail {
            eprintln!(
                "Stopping early after {round} of {planned} rounds: a threshold can no longer be met."
            );
            break;
        }
        if finished {
            break;
        }
        tokio::time::sleep_until(started + interval).await;
    }
    shutdown(&runtime).await;
    Ok((results, verdict))
}

async fn canary_mode(
    args: &VerifyArgs,
    config: &Config,
    chosen: &[&ProbeConfig],
    concurrency: usize,
) -> anyhow::Result<(Vec<ProbeResult>, Verdict)> {
    let track = |name: &str| {
        config
            .verify
            .canary
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, vars)| vars.clone())
    };
    let (Some(stable_vars), Some(canary_vars)) = (track("stable"), track("canary")) else {
        anyhow::bail!(
            "--canary needs verify.canary with `stable` and `canary` var overrides in the config"
        );
    };
    let runtime_for = |vars: &[(String, String)], name: &str| {
        let mut c = config.clone();
        c.set_var("track", name);
        for (k, v) in vars {
            c.set_var(k, v);
        }
        c.runtime(c.masker())
    };
    let stable_rt = runtime_for(&stable_vars, "stable");
    let canary_rt = runtime_for(&canary_vars, "canary");
    // 20 runs a side at least by default: Mann-Whitney and Fisher need them.
    let runs = args.runs.unwrap_or(config.verify.runs.max(20));
    let rounds = deploy::Rounds::asked(&config.verify, Some(runs), args.max_runs);
    let interval = args.interval.unwrap_or(Duration::from_millis(200));
    let limits = deploy::canary_rules(config);
    let (results, verdict, _) = deploy::run_until_settled(
        rounds,
        interval,
        // Interleaved, so both tracks see the same moment's conditions.
        |names| {
            let probes = deploy::only(chosen, names.as_ref());
            let (stable_rt, canary_rt) = (&stable_rt, &canary_rt);
            async move {
                let stable = verify::run_all(&probes, stable_rt, concurrency).await;
                let canary = verify::run_all(&probes, canary_rt, concurrency).await;
                let tracks = [(Track::Stable, stable), (Track::Canary, canary)];
                tracks
                    .into_iter()
                    .flat_map(|(track, runs)| runs.into_iter().map(move |r| (track, r)))
                    .collect()
            }
        },
        |results: &[(Track, ProbeResult)], look| {
            let of =
                |track| deploy::aggregates(results.iter().filter(|r| r.0 == track).map(|r| &r.1));
            canary::judge(&of(Track::Stable), &of(Track::Canary), &limits, look)
        },
    )
    .await;
    shutdown(&stable_rt).await;
    shutdown(&canary_rt).await;
    Ok((results.into_iter().map(|(_, r)| r).collect(), verdict))
}

/// Which side of a canary comparison a run was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Stable,
    Canary,
}

async fn shutdown(runtime: &patrol_probes::run::Runtime) {
    if let Some(browser) = &runtime.browser {
        browser.shutdown().await;
    }
}

/// Runs the selected probes once, prints and writes the reports, and returns the exit code.
pub async fn run_and_report(
    config: &config::Config,
    selection: &Selection,
    masker: Masker,
    out: &Outputs,
) -> ExitCode {
    let chosen = match verify::select(config, selection) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = config.runtime(masker);
    let started = Instant::now();
    let concurrency = out.concurrency.unwrap_or(config.agent.max_concurrency);
    let results = verify::run_all(&chosen, &runtime, concurrency).await;
    shutdown(&runtime).await;
    let report = RunReport {
        config: out.config_name.clone(),
        results,
        duration: started.elapsed(),
        verdict: None,
    };
    if !print_and_write(&report, out, false) {
        return ExitCode::from(2);
    }
    if Summary::of(&report.results).all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints the console report and writes the JSON and JUnit files; false when a write failed.
fn print_and_write(report: &RunReport, out: &Outputs, summary_only: bool) -> bool {
    let style = console::Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        verbose: out.verbose,
    };
    if summary_only {
        print!("{}", console::render_rounds(report, style));
    } else {
        print!("{}", console::render(report, style));
    }
    let mut ok = true;
    if let Some(path) = &out.report_json {
        ok &= write_file(path, &report::json::render(report));
    }
    if let Some(path) = &out.junit {
        ok &= write_file(path, &report::junit::render(report));
    }
    ok
}

fn write_file(path: &Path, content: &str) -> bool {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(path, content) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            false
        }
    }
}
