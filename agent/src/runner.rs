//! The runner: turns run requests into results under the agent's limits — a global concurrency
//! semaphore, the probe's own timeout plus an outer bound that aborts a hung engine, and a task
//! per run so a panic becomes an `error` result instead of taking the agent down. Every result is
//! recorded in the metrics and the history.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use patrol_probes::result::{Outcome, ProbeResult};
use patrol_probes::run::{Runtime, run_probe, unfinished as stopped};
use patrol_probes::spec::ProbeSpec;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::history::History;
use crate::metrics::Metrics;
use crate::scheduler::InFlight;

/// Why a run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Its schedule fired; the scheduler marked it in flight.
    Schedule,
    /// `POST /api/v1/runs` or a deploy hook.
    Api,
}

/// One run to carry out.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// What to run.
    pub probe: Arc<ProbeSpec>,
    /// Why.
    pub trigger: Trigger,
    /// The `track` label (stable, canary, baseline), when the run belongs to one.
    pub track: Option<String>,
}

/// Runs probes for the agent; cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    history: Arc<History>,
    in_flight: InFlight,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Probes in the config in force: results of probes a reload removed, or with steps it
    /// renamed or removed, are not recorded, so their series stay gone.
    current: Arc<RwLock<HashMap<String, Arc<ProbeSpec>>>>,
}

impl Runner {
    /// A runner allowing `max_concurrency` runs at once.
    pub fn new(
        max_concurrency: usize,
        metrics: Arc<Metrics>,
        history: Arc<History>,
        in_flight: InFlight,
    ) -> Runner {
        Runner {
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
            metrics,
            history,
            in_flight,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            current: Arc::default(),
        }
    }

    /// Sets the probes of the config in force.
    pub fn set_current<'a>(&self, probes: impl IntoIterator<Item = &'a Arc<ProbeSpec>>) {
        let probes = probes
            .into_iter()
            .map(|p| (p.name.clone(), Arc::clone(p)))
            .collect();
        match self.current.write() {
            Ok(mut g) => *g = probes,
            Err(poisoned) => *poisoned.into_inner() = probes,
        }
    }

    /// Records `result` in metrics and history while its probe, and each of its steps, is in
    /// the config in force. The check and the record happen under one read lock, and a reload
    /// swaps the probe list ([`Runner::set_current`]) before it drops the series of removed
    /// probes and steps: a run of the old config finishing during a reload cannot bring them
    /// back.
    fn record_if_current(&self, result: &Arc<ProbeResult>, track: Option<&str>) {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .get(&result.name)
            .is_some_and(|spec| has_steps_of(spec, result))
        {
            self.metrics.record_run(result, track);
            self.history.record(Arc::clone(result));
        }
    }

    /// Starts a run; the handle yields its (recorded) result.
    pub fn spawn(&self, request: RunRequest, runtime: Runtime) -> JoinHandle<Arc<ProbeResult>> {
        let this = self.clone();
        let queued = Instant::now();
        self.tracker
            .spawn(async move { this.run(request, runtime, queued).await })
    }

    /// Runs once a run slot is free; `queued` is when the run was asked for.
    async fn run(self, request: RunRequest, runtime: Runtime, queued: Instant) -> Arc<ProbeResult> {
        let spec = Arc::clone(&request.probe);
        let permit = tokio::select! {
            p = Arc::clone(&self.permits).acquire_owned() => p.ok(),
            () = self.cancel.cancelled() => None,
        };
        let result = match permit {
            None => stopped(&spec, "the agent shut down before the run started"),
            Some(_permit) => {
                // Scheduler lag is measured when a run is fired; this is the rest of its delay.
                self.metrics.record_queue_wait(queued.elapsed());
                self.metrics.run_started();
                let result = self.run_isolated(&spec, runtime).await;
                self.metrics.run_finished();
                result
            }
        };
        if request.trigger == Trigger::Schedule {
            self.in_flight.finish(&spec.name);
        }
        let result = Arc::new(result);
        if !self.cancel.is_cancelled() {
            self.record_if_current(&result, request.track.as_deref());
        }
        tracing::info!(
            probe = %result.name,
            result = %result.result,
            duration_ms = result.duration.as_millis() as u64,
            attempts = result.attempts,
            "Probe run completed."
        );
        result
    }

    /// Runs the probe in its own task: a panic or a hang past every deadline becomes a result.
    async fn run_isolated(&self, spec: &Arc<ProbeSpec>, runtime: Runtime) -> ProbeResult {
        let task_spec = Arc::clone(spec);
        // Boxed: the engine's future is ~12.5 KiB, and a task's own allocation is aligned to 128
        // bytes. glibc serves an aligned request from a chunk larger than asked for, so a freed
        // task never fits the next one: with the future inline every run left a 12.8 KiB hole,
        // 2.4 MiB of them with 500 probes (BENCHMARKS.md §4). A box is a plain allocation.
        let mut task = tokio::spawn(Box::pin(
            async move { run_probe(&task_spec, &runtime).await },
        ));
        let limit = outer_limit(spec);
        tokio::select! {
            joined = tokio::time::timeout(limit, &mut task) => match joined {
                Ok(Ok(result)) => result,
                Ok(Err(e)) if e.is_panic() => {
                    tracing::error!(probe = %spec.name, "Probe engine panicked.");
                    stopped(spec, "internal error: the probe engine panicked (the agent carries on)")
                }
                Ok(Err(_)) => stopped(spec, "the run was cancelled"),
                Err(_) => {
                    task.abort();
                    tracing::error!(probe = %spec.name, limit_ms = limit.as_millis() as u64, "Probe run hung past its deadline and was aborted.");
                    let mut r = stopped(spec, &format!("the run did not finish within {} and was aborted", humantime::format_duration(limit)));
                    r.result = Outcome::Timeout;
                    r.first_attempt = Outcome::Timeout;
                    r
                }
            },
            () = self.cancel.cancelled() => {
                task.abort();
                stopped(spec, "the agent shut down before the run finished")
            }
        }
    }

    /// Stops starting new work and waits up to `grace` for runs in flight; the rest are
    /// cancelled. Returns how many were cancelled.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let stragglers = self.tracker.len();
        tracing::warn!(
            runs = stragglers,
            grace_ms = grace.as_millis() as u64,
            "Runs still in flight after the grace period were cancelled."
        );
        self.cancel.cancel();
        self.tracker.wait().await;
        stragglers
    }
}

/// Whether every step of `result` is a step of `spec`.
fn has_steps_of(spec: &ProbeSpec, result: &ProbeResult) -> bool {
    let names = spec.step_names();
    result
        .steps
        .iter()
        .all(|s| names.contains(&s.name.as_str()))
}

/// The longest a run may take: every attempt's timeout, every backoff, and a second of slack.
fn outer_limit(spec: &ProbeSpec) -> Duration {
    let attempts = spec.retries + 1;
    let backoffs: Duration = (0..spec.retries)
        .map(|i| spec.retry_backoff.saturating_mul(1 << i.min(6)))
        .sum();
    spec.timeout.saturating_mul(attempts) + backoffs + Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_probes::result::StepResult;

    #[test]
    fn only_results_with_steps_the_probe_has_are_of_the_config_in_force() {
        let yaml = r#"
probes:
  - name: flow
    steps:
      - name: health
        request: { url: "http://127.0.0.1:9/health" }
      - name: cart
        request: { url: "http://127.0.0.1:9/cart" }
"#;
        let (config, _) =
            crate::config::load_str("patrol.yaml", yaml).unwrap_or_else(|r| panic!("{r}"));
        let spec = &config.probes[0].spec;
        let result = |names: &[&str]| ProbeResult {
            steps: names.iter().copied().map(StepResult::skipped).collect(),
            ..stopped(spec, "a test")
        };
        assert!(has_steps_of(spec, &stopped(spec, "a test")));
        assert!(has_steps_of(spec, &result(&["health", "cart"])));
        // A run of the config before a reload that renamed `cart`.
        assert!(!has_steps_of(spec, &result(&["health", "basket"])));
    }
}
