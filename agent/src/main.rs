//! `patrol`: a smoke and synthetic monitoring agent and deploy gate.
//!
//! Layout:
//! - [`config`]: the YAML config, validated with file:line:col diagnostics
//! - [`verify`]: probe selection and one-shot runs for `patrol verify`
//! - [`report`]: console, JSON and JUnit reports
//! - [`daemon`]: `patrol run`, the agent's lifecycle (load, reload, drain)
//! - [`scheduler`]: cron and interval schedules into run events, without drift
//! - [`runner`]: runs under the concurrency limit, timeouts and panic isolation
//! - [`metrics`]: every Prometheus metric
//! - [`history`]: recent results and latency percentiles
//! - [`server`]: /metrics, health, the control API and the status page
//! - [`demo`]: `patrol demo`, the bundled shop probed by the example suite
//!
//! Exit codes: 0 every probe passed, 1 a probe failed, errored or timed out, 2 a config, usage or
//! internal error.

mod config;
mod daemon;
mod demo;
mod history;
mod metrics;
mod report;
mod runner;
mod scheduler;
mod server;
mod verdict;
mod verify;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::report::{RunReport, Summary, console};
use crate::verify::Selection;

/// Smoke and synthetic monitoring: did this deploy break production?
#[derive(Debug, Parser)]
#[command(name = "patrol", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file and report every problem; sends nothing.
    Validate {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the selected probes once as a deploy gate: exit 0 when all pass, 1 when any fails.
    Verify(VerifyArgs),
    /// Run the agent: scheduled probes, Prometheus metrics, the control API and status page.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Listen here instead of agent.listen.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// How long runs in flight may finish after SIGTERM/SIGINT.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Set or override a var (repeatable), kept across reloads.
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Start the bundled reference shop and an agent probing it with examples/citadelbuy.yaml.
    Demo {
        /// Address for the shop.
        #[arg(long, default_value = "127.0.0.1:0")]
        shop_listen: std::net::SocketAddr,
        /// Address for the agent (status page, /metrics, API).
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
        /// Run the suite once, print the report and exit (as `patrol verify`) instead.
        #[arg(long)]
        once: bool,
        /// With --once: show request and response detail for every step.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Run only probes with this tag (repeatable).
    #[arg(long = "tag", short = 't')]
    tags: Vec<String>,
    /// Run only the probe with this name (repeatable).
    #[arg(long = "probe", short = 'p')]
    probes: Vec<String>,
    /// Write the JSON report here.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Show request and response detail and phase timings for every step.
    #[arg(long, short)]
    verbose: bool,
    /// Probes run at once (default: agent.max_concurrency from the config).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Set or override a var, e.g. `--var api=https://staging.example.com` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PATROL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Verify(args) => with_runtime(verify_command(args)),
        Command::Run {
            config,
            listen,
            grace,
            vars,
        } => with_runtime(async move {
            let options = daemon::RunOptions {
                config,
                listen,
                grace,
                vars,
                secrets: Vec::new(),
                api_token: None,
                show_warnings: true,
                run_at_start: false,
                without_browser_probes: false,
            };
            let on_listening = |addr| println!("patrol agent listening on http://{addr}");
            match daemon::run(options, daemon::termination(), on_listening).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }),
        Command::Demo {
            shop_listen,
            listen,
            once,
            verbose,
        } => with_runtime(demo::run(demo::DemoOptions {
            shop_listen,
            listen,
            once,
            verbose,
        })),
    }
}

fn with_runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(work),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

/// Loads a config, printing its diagnostics; `None` when it has errors.
fn load_config(path: &Path) -> Option<config::Config> {
    match config::load(path) {
        Ok((config, report)) => {
            if report.warnings().next().is_some() {
                eprintln!("{report}");
            }
            Some(config)
        }
        Err(report) => {
            eprintln!("{report}");
            None
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    match load_config(path) {
        Some(config) => {
            if config.has_browser_probes()
                && let Err(missing) =
                    patrol_probes::browser::Browser::check_installed(&config.browser_settings())
            {
                eprintln!(
                    "{}: warning: browser probes will error here: {missing}",
                    path.display()
                );
            }
            let scheduled = config
                .probes
                .iter()
                .filter(|p| p.schedule.is_some())
                .count();
            println!(
                "{}: ok — {} probe{} ({scheduled} scheduled), {} var{}",
                path.display(),
                config.probes.len(),
                if config.probes.len() == 1 { "" } else { "s" },
                config.vars.len(),
                if config.vars.len() == 1 { "" } else { "s" },
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::from(2),
    }
}

async fn verify_command(args: VerifyArgs) -> ExitCode {
    let Some(mut config) = load_config(&args.config) else {
        return ExitCode::from(2);
    };
    for (name, value) in &args.vars {
        config.set_var(name, value);
    }
    let outputs = Outputs {
        config_name: args.config.display().to_string(),
        report_json: args.report_json,
        junit: args.junit,
        verbose: args.verbose,
        concurrency: args.concurrency,
    };
    run_and_report(
        &config,
        &Selection {
            tags: args.tags,
            probes: args.probes,
        },
        config.masker(),
        &outputs,
    )
    .await
}

/// Where and how `verify` reports.
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

/// Runs the selected probes once, prints and writes the reports, and returns the exit code.
pub async fn run_and_report(
    config: &config::Config,
    selection: &Selection,
    masker: patrol_probes::template::Masker,
    out: &Outputs,
) -> ExitCode {
    let args = out;
    let chosen = match verify::select(config, selection) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = config.runtime(masker);
    let started = Instant::now();
    let concurrency = args.concurrency.unwrap_or(config.agent.max_concurrency);
    let results = verify::run_all(&chosen, &runtime, concurrency).await;
    if let Some(browser) = &runtime.browser {
        browser.shutdown().await;
    }
    let report = RunReport {
        config: args.config_name.clone(),
        results,
        duration: started.elapsed(),
    };
    let style = console::Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        verbose: args.verbose,
    };
    print!("{}", console::render(&report, style));
    let mut write_failed = false;
    if let Some(path) = &args.report_json {
        write_failed |= !write_file(path, &report::json::render(&report));
    }
    if let Some(path) = &args.junit {
        write_failed |= !write_file(path, &report::junit::render(&report));
    }
    if write_failed {
        return ExitCode::from(2);
    }
    if Summary::of(&report.results).all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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
