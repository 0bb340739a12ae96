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
//! - [`gate`]: `patrol verify`, the deploy gate: runs, verdicts, reports, exit codes
//! - [`verdict`]: rule, threshold and canary verdicts
//! - [`deploy`]: baselines and the rollback action
//! - [`demo`]: `patrol demo`, the bundled shop probed by the example suite
//!
//! Exit codes: 0 every probe passed, 1 a probe failed, errored or timed out, 2 a config, usage or
//! internal error.

mod config;
mod daemon;
mod demo;
mod deploy;
mod gate;
mod history;
mod metrics;
mod report;
mod runner;
mod scheduler;
mod server;
mod verdict;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Verify(gate::VerifyArgs),
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

/// Parses `NAME=VALUE` for `--var`.
pub fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Patrol's own HTTPS calls (baselines, webhooks) use ring, like the probe transport.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PATROL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Verify(args) => with_runtime(gate::run(args)),
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
pub fn load_config(path: &Path) -> Option<config::Config> {
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
