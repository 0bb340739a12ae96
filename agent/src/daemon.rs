//! `patrol run`: the long-running agent. Loads the config, starts the scheduler, runner and HTTP
//! server, reloads on SIGHUP or `POST /-/reload` (an invalid config is refused and the old one
//! keeps running), and on SIGTERM/SIGINT stops scheduling, drains runs in flight for a grace
//! period, cancels the rest and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use patrol_probes::run::Runtime;
use patrol_probes::template::Scope;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ProbeConfig};
use crate::history::History;
use crate::metrics::Metrics;
use crate::runner::{RunRequest, Runner, Trigger};
use crate::scheduler::{InFlight, NextRuns, ScheduledProbe, Scheduler, SchedulerEvent};
use crate::server::runs::RunStore;

/// A loaded config with what running it needs.
#[derive(Debug)]
pub struct Loaded {
    /// The config as loaded.
    pub config: Config,
    /// The probes this agent's location runs, in config order.
    pub probes: Vec<ProbeConfig>,
    /// Shared by every run: transport, vars, known secrets.
    pub runtime: Runtime,
    /// The API bearer token, rendered; `None` when the config sets none.
    pub api_token: Option<String>,
}

impl Loaded {
    fn new(
        mut config: Config,
        options: &RunOptions,
        browser: &SharedBrowser,
    ) -> anyhow::Result<Loaded> {
        for (name, value) in &options.vars {
            config.set_var(name, value);
        }
        if options.without_browser_probes {
            config
                .probes
                .retain(|p| !matches!(p.spec.kind, patrol_probes::spec::ProbeKind::Browser(_)));
        }
        let masker = config.masker().with(options.secrets.iter().cloned());
        let api_token = match &config.agent.api_token {
            _ if options.api_token.is_some() => options.api_token.clone(),
            None => None,
            Some(t) => {
                let token = t
                    .render(&mut Scope::new())
                    .map_err(|e| anyhow::anyhow!("agent.api_token: {e}"))?;
                (!token.is_empty()).then_some(token)
            }
        };
        let masker = match &api_token {
            Some(t) => masker.with([t.clone()]),
            None => masker,
        };
        let location = config.agent.location.clone();
        let probes = config
            .probes
            .iter()
            .filter(|p| p.locations.is_empty() || p.locations.contains(&location))
            .cloned()
            .collect();
        let mut runtime = config.runtime(masker);
        // One browser for the agent's life: a reload keeps the running chromedriver.
        if let Some(fresh) = runtime.browser.take() {
            let mut slot = browser
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            runtime.browser = Some(Arc::clone(slot.get_or_insert(fresh)));
        }
        Ok(Loaded {
            config,
            probes,
            runtime,
            api_token,
        })
    }

    /// A probe this agent runs, by name.
    pub fn probe(&self, name: &str) -> Option<&ProbeConfig> {
        self.probes.iter().find(|p| p.spec.name == name)
    }
}

/// State shared by the scheduler loop, the runner and the HTTP server.
#[derive(Debug)]
pub struct AgentState {
    loaded: RwLock<Arc<Loaded>>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Recent results and latency windows.
    pub history: Arc<History>,
    /// Runs probes.
    pub runner: Runner,
    /// API-triggered runs.
    pub runs: RunStore,
    /// Next fire time per scheduled probe.
    pub next_runs: NextRuns,
    /// True once the config is loaded and the scheduler runs.
    pub ready: AtomicBool,
    /// Deploys the rollback action already ran for.
    pub acted: crate::deploy::action::ActedDeploys,
    /// Flagger checksums being verified, so one is never verified twice at once.
    pub flagger: crate::server::hooks::InProgress,
    /// Alertmanager fingerprints already acted on.
    pub alerts: crate::deploy::action::ActedDeploys,
    options: RunOptions,
    browser: SharedBrowser,
    in_flight: InFlight,
    scheduler: tokio::sync::Mutex<SchedulerSlot>,
    events: mpsc::Sender<SchedulerEvent>,
}

#[derive(Debug)]
struct SchedulerSlot {
    cancel: CancellationToken,
}

impl AgentState {
    /// The config in force.
    pub fn loaded(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn swap(&self, next: Arc<Loaded>) {
        match self.loaded.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// Re-reads the config file. An invalid file is refused, its errors returned and logged, and
    /// the running config stays in force.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let mut slot = self.scheduler.lock().await;
        let previous = self.loaded();
        let mut restart_needed = Vec::new();
        let outcome = match config::load(&self.options.config) {
            Err(report) => Err(report.to_string()),
            Ok((mut config, _)) => {
                restart_needed = keep_startup_settings(&mut config, &previous.config);
                Loaded::new(config, &self.options, &self.browser).map_err(|e| format!("{e:#}"))
            }
        };
        let next = match outcome {
            Ok(next) => Arc::new(next),
            Err(errors) => {
                self.metrics.record_reload(false);
                tracing::error!(config = %self.options.config.display(), errors = %errors, "Config reload refused; the previous config keeps running.");
                return Err(errors);
            }
        };
        // The runner stops recording removed probes first, so a run finishing meanwhile cannot
        // bring back what is dropped next.
        self.runner.set_current(next.probes.iter().map(|p| &p.spec));
        for gone in previous
            .probes
            .iter()
            .filter(|p| next.probe(&p.spec.name).is_none())
        {
            self.metrics.forget_probe(&gone.spec.name);
        }
        for kept in &next.probes {
            self.metrics
                .keep_steps(&kept.spec.name, &kept.spec.step_names());
        }
        let names: Vec<&str> = next.probes.iter().map(|p| p.spec.name.as_str()).collect();
        self.history.retain_probes(&names);
        let count = next.probes.len();
        self.swap(Arc::clone(&next));
        slot.cancel.cancel();
        slot.cancel = start_scheduler(
            &next,
            self.in_flight.clone(),
            self.next_runs.clone(),
            self.events.clone(),
        );
        self.metrics.record_reload(true);
        tracing::info!(config = %self.options.config.display(), probes = count, "Config reloaded.");
        for setting in &restart_needed {
            tracing::warn!(setting = %setting, "Config reload kept the running value of a setting that needs a restart.");
        }
        Ok(Reloaded {
            probes: count,
            restart_needed,
        })
    }

    /// Starts a run of `probe` now (API or hook).
    pub fn run_now(
        &self,
        probe: &ProbeConfig,
        track: Option<String>,
    ) -> tokio::task::JoinHandle<Arc<patrol_probes::result::ProbeResult>> {
        let request = RunRequest {
            probe: Arc::clone(&probe.spec),
            trigger: Trigger::Api,
            track,
        };
        self.runner.spawn(request, self.loaded().runtime.clone())
    }
}

/// What a reload applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// Probes now running on this agent.
    pub probes: usize,
    /// Changed settings that only take effect after a restart (their running values stay).
    pub restart_needed: Vec<String>,
}

/// Settings bound at start-up (the listening socket, the metrics' location label, the
/// concurrency limit, the browser) keep their running values on reload; returns the ones the new
/// file changed, so the reload can say a restart is needed.
fn keep_startup_settings(next: &mut Config, running: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if next.agent.listen != running.agent.listen {
        changed.push(format!(
            "agent.listen ({} → {})",
            running.agent.listen, next.agent.listen
        ));
        next.agent.listen = running.agent.listen;
    }
    if next.agent.location != running.agent.location {
        changed.push(format!(
            "agent.location ({} → {})",
            running.agent.location, next.agent.location
        ));
        next.agent.location.clone_from(&running.agent.location);
    }
    if next.agent.max_concurrency != running.agent.max_concurrency {
        changed.push(format!(
            "agent.max_concurrency ({} → {})",
            running.agent.max_concurrency, next.agent.max_concurrency
        ));
        next.agent.max_concurrency = running.agent.max_concurrency;
    }
    if next.agent.history != running.agent.history {
        changed.push(format!(
            "agent.history ({} → {})",
            running.agent.history, next.agent.history
        ));
        next.agent.history = running.agent.history;
    }
    if next.browser_settings_differ(running) {
        changed.push("browser (chromedriver, chromium, max_sessions)".into());
        next.browser = running.browser.clone();
    }
    changed
}

fn start_scheduler(
    loaded: &Loaded,
    in_flight: InFlight,
    next_runs: NextRuns,
    events: mpsc::Sender<SchedulerEvent>,
) -> CancellationToken {
    let scheduled: Vec<ScheduledProbe> = loaded
        .probes
        .iter()
        .filter_map(|p| {
            p.schedule.clone().map(|schedule| ScheduledProbe {
                name: p.spec.name.clone(),
                schedule,
                tz: p.tz,
            })
        })
        .collect();
    let cancel = CancellationToken::new();
    let scheduler = Scheduler::new(scheduled, in_flight, next_runs);
    tokio::spawn(scheduler.run(events, cancel.clone()));
    cancel
}

/// Options of `patrol run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The config file.
    pub config: PathBuf,
    /// Overrides `agent.listen`.
    pub listen: Option<SocketAddr>,
    /// How long in-flight runs may finish after SIGTERM.
    pub grace: Duration,
    /// Vars set from the command line (`--var`), applied on every (re)load.
    pub vars: Vec<(String, String)>,
    /// Extra values to mask (the demo's test password).
    pub secrets: Vec<String>,
    /// Replaces `agent.api_token` (the demo makes one up).
    pub api_token: Option<String>,
    /// Print config warnings at start-up.
    pub show_warnings: bool,
    /// Run every probe once at start-up, before its first scheduled time (the demo).
    pub run_at_start: bool,
    /// Leave browser probes out (the demo on a machine without Chromium).
    pub without_browser_probes: bool,
}

/// The browser shared across reloads, made when the first config needs one.
type SharedBrowser = std::sync::Mutex<Option<Arc<patrol_probes::browser::Browser>>>;

/// Refuses configs that would expose the control API: a non-loopback listen needs a token.
fn check_exposure(loaded: &Loaded, listen: SocketAddr) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() && loaded.api_token.is_none() {
        anyhow::bail!(
            "refusing to listen on {listen} without agent.api_token: anyone who can reach it could trigger runs and reloads; \
             set `api_token: \"{{{{ env.PATROL_API_TOKEN }}}}\"` or listen on 127.0.0.1"
        );
    }
    Ok(())
}

/// Runs the agent until `shutdown` resolves (SIGTERM/SIGINT in `main`, a signal in tests).
/// `on_listening` receives the bound address (useful with port 0).
pub async fn run(
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let config = match config::load(&options.config) {
        Ok((config, warnings)) => {
            if options.show_warnings && warnings.warnings().next().is_some() {
                eprintln!("{warnings}");
            }
            config
        }
        Err(report) => anyhow::bail!("{report}"),
    };
    let browser = SharedBrowser::default();
    let loaded = Arc::new(Loaded::new(config, &options, &browser)?);
    let listen = options.listen.unwrap_or(loaded.config.agent.listen);
    check_exposure(&loaded, listen)?;
    let metrics = Arc::new(Metrics::new(&loaded.config.agent.location));
    let history = Arc::new(History::new(loaded.config.agent.history));
    let in_flight = InFlight::default();
    let runner = Runner::new(
        loaded.config.agent.max_concurrency,
        Arc::clone(&metrics),
        Arc::clone(&history),
        in_flight.clone(),
    );
    runner.set_current(loaded.probes.iter().map(|p| &p.spec));
    let (events_tx, mut events_rx) = mpsc::channel::<SchedulerEvent>(1024);
    let next_runs = NextRuns::default();
    let cancel = start_scheduler(
        &loaded,
        in_flight.clone(),
        next_runs.clone(),
        events_tx.clone(),
    );
    metrics.record_reload(true);
    let state = Arc::new(AgentState {
        loaded: RwLock::new(Arc::clone(&loaded)),
        metrics: Arc::clone(&metrics),
        history,
        runner: runner.clone(),
        runs: RunStore::default(),
        next_runs,
        ready: AtomicBool::new(false),
        acted: Default::default(),
        flagger: Default::default(),
        alerts: Default::default(),
        options: options.clone(),
        browser,
        in_flight: in_flight.clone(),
        scheduler: tokio::sync::Mutex::new(SchedulerSlot { cancel }),
        events: events_tx,
    });

    // Scheduler events become runs.
    let dispatcher = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                match event {
                    SchedulerEvent::Fire { probe, lag, .. } => {
                        state.metrics.record_scheduler_lag(lag);
                        let loaded = state.loaded();
                        match loaded.probe(&probe) {
                            Some(p) => {
                                let request = RunRequest {
                                    probe: Arc::clone(&p.spec),
                                    trigger: Trigger::Schedule,
                                    track: None,
                                };
                                drop(state.runner.spawn(request, loaded.runtime.clone()));
                            }
                            None => state.in_flight.finish(&probe),
                        }
                    }
                    SchedulerEvent::Skipped { probe, reason, .. } => {
                        tracing::warn!(probe = %probe, reason, "Scheduled run skipped.");
                        state.metrics.record_skip(&probe, reason);
                    }
                }
            }
        })
    };

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let server_stop = CancellationToken::new();
    let server = {
        let app = crate::server::router(Arc::clone(&state));
        let stop = server_stop.clone();
        tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server failed.");
            }
        })
    };
    if options.run_at_start {
        for probe in &loaded.probes {
            drop(state.run_now(probe, None));
        }
    }
    state.ready.store(true, Ordering::SeqCst);
    tracing::info!(listen = %bound, probes = loaded.probes.len(), location = %loaded.config.agent.location, "Agent started.");
    on_listening(bound);

    let hangups = hangup_reloads(Arc::clone(&state));
    shutdown.await;
    hangups.abort();
    tracing::info!(
        grace_ms = options.grace.as_millis() as u64,
        "Shutting down: scheduling stopped, draining runs in flight."
    );
    state.ready.store(false, Ordering::SeqCst);
    state.scheduler.lock().await.cancel.cancel();
    let cancelled = runner.shutdown(options.grace).await;
    let browser = state
        .browser
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(browser) = browser {
        browser.shutdown().await;
    }
    server_stop.cancel();
    dispatcher.abort();
    let _ = server.await;
    tracing::info!(cancelled, "Agent stopped.");
    Ok(())
}

/// Reloads the config on every SIGHUP.
fn hangup_reloads(state: Arc<AgentState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("Cannot listen for SIGHUP; reload with POST /-/reload.");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = state.reload().await;
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
