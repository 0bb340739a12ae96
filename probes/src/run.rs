//! Running a probe: a fresh scope per attempt, the probe's timeout enforced by cancellation,
//! retries with backoff, the first attempt kept so a flaky pass stays visible.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::artifacts::{ArtifactStore, RunArtifacts};
use crate::browser::{self, Browser};
use crate::http::engine::{mask_step, run_steps};
use crate::http::transport::Transport;
use crate::infra;
use crate::net::tls::TlsConfigs;
use crate::result::{Attempt, Outcome, ProbeResult, StepResult};
use crate::spec::{ProbeKind, ProbeSpec};
use crate::template::{Masker, Scope, Template};

/// What every run shares: the transport, the config's vars and the secrets known up front.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The HTTP transport (TLS configs built once).
    pub transport: Transport,
    /// TLS configs without ALPN for the infrastructure probes (built once).
    pub tls: TlsConfigs,
    /// Config vars in order, rendered into each attempt's scope.
    pub vars: Arc<Vec<(String, Template)>>,
    /// Secrets known before the run (every `env.`/`file.` value the config refers to).
    pub masker: Masker,
    /// The supervised browser, when the config has browser probes.
    pub browser: Option<Arc<Browser>>,
    /// Where failed runs save screenshots, page HTML and response bodies.
    pub artifacts: Option<ArtifactStore>,
}

impl Runtime {
    /// A runtime for these vars and secrets.
    pub fn new(vars: Vec<(String, Template)>, masker: Masker) -> Runtime {
        Runtime {
            transport: Transport::new(),
            tls: TlsConfigs::new(&[]),
            vars: Arc::new(vars),
            masker,
            browser: None,
            artifacts: None,
        }
    }

    /// This runtime with a browser for browser probes.
    pub fn with_browser(mut self, browser: Arc<Browser>) -> Runtime {
        self.browser = Some(browser);
        self
    }

    /// This runtime saving artifacts of failed runs.
    pub fn with_artifacts(mut self, store: ArtifactStore) -> Runtime {
        self.artifacts = Some(store);
        self
    }
}

/// Runs `spec` with its retries; never panics or returns early on a target's fault.
pub async fn run_probe(spec: &ProbeSpec, runtime: &Runtime) -> ProbeResult {
    let started = Instant::now();
    let started_at_ms = unix_ms();
    let id = run_id(started_at_ms);
    let mut retried = Vec::new();
    let mut attempt_no = 0;
    loop {
        attempt_no += 1;
        let artifacts_id = if attempt_no == 1 {
            id.clone()
        } else {
            format!("{id}.{attempt_no}")
        };
        let artifacts = runtime
            .artifacts
            .as_ref()
            .map(|a| a.for_run(&spec.name, &artifacts_id));
        let attempt = run_attempt(spec, runtime, artifacts.as_ref()).await;
        let last = attempt_no > spec.retries || attempt.result.is_pass();
        if last {
            let first_attempt = retried
                .first()
                .map_or(attempt.result, |a: &Attempt| a.result);
            return ProbeResult {
                id,
                name: spec.name.clone(),
                kind: spec.type_name().to_string(),
                result: attempt.result,
                duration: started.elapsed(),
                attempts: attempt_no,
                first_attempt,
                started_at_ms,
                error: attempt.error,
                steps: attempt.steps,
                retried,
            };
        }
        retried.push(Attempt {
            result: attempt.result,
            duration: attempt.duration,
            steps: attempt.steps,
        });
        let backoff = spec
            .retry_backoff
            .saturating_mul(1 << (attempt_no - 1).min(6));
        tokio::time::sleep(backoff).await;
    }
}

struct AttemptResult {
    result: Outcome,
    duration: Duration,
    steps: Vec<StepResult>,
    error: Option<String>,
}

async fn run_attempt(
    spec: &ProbeSpec,
    runtime: &Runtime,
    artifacts: Option<&RunArtifacts>,
) -> AttemptResult {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut scope = match Scope::with_vars(runtime.vars.iter().map(|(n, t)| (n, t))) {
        Ok(s) => s,
        Err(e) => {
            return AttemptResult {
                result: Outcome::Error,
                duration: started.elapsed(),
                steps: spec
                    .step_names()
                    .into_iter()
                    .map(StepResult::skipped)
                    .collect(),
                error: Some(runtime.masker.mask(&e.0)),
            };
        }
    };
    let masker = runtime.masker.with(scope.secret_values());
    // The engines honour the deadline themselves; this outer bound only catches an engine bug,
    // so a probe can never hang its caller.
    let grace = Duration::from_millis(250);
    let work = async {
        match &spec.kind {
            ProbeKind::Http(http) => {
                run_steps(
                    http,
                    &runtime.transport,
                    &mut scope,
                    &masker,
                    deadline,
                    artifacts,
                )
                .await
            }
            ProbeKind::Browser(probe) => match &runtime.browser {
                Some(browser) => {
                    browser::run_steps(probe, browser, &mut scope, &masker, deadline, artifacts)
                        .await
                }
                None => browser_unavailable(spec),
            },
            ProbeKind::Infra(probe) => {
                infra::run_steps(probe, &runtime.tls, &mut scope, &masker, deadline).await
            }
        }
    };
    let (mut steps, error) = match tokio::time::timeout_at(deadline + grace, work).await {
        Ok(steps) => (steps, None),
        Err(_) => (
            spec.step_names()
                .into_iter()
                .map(StepResult::skipped)
                .collect(),
            Some(format!(
                "probe timed out after {}",
                humantime::format_duration(spec.timeout)
            )),
        ),
    };
    let masker = masker.with(scope.secret_values());
    steps.iter_mut().for_each(|s| mask_step(s, &masker));
    let result = if error.is_some() {
        Outcome::Timeout
    } else {
        steps
            .iter()
            .map(|s| s.result)
            .find(|r| !matches!(r, Outcome::Pass | Outcome::Skipped))
            .unwrap_or(Outcome::Pass)
    };
    let error = error.or_else(|| {
        steps
            .iter()
            .find(|s| s.result == Outcome::Timeout)
            .map(|s| format!("step `{}` timed out", s.name))
    });
    AttemptResult {
        result,
        duration: started.elapsed(),
        steps,
        error,
    }
}

/// A run's id: a UUIDv7 (32 hex digits) whose timestamp is the run's start, so ids (and the
/// artifact folders named after them) sort by start time, and a history can keep the 10 bytes
/// the start does not already say.
pub fn run_id(started_at_ms: i64) -> String {
    let ms = u64::try_from(started_at_ms).unwrap_or(0);
    // `ms % 1000` < 1000: the nanoseconds fit a u32.
    let nanos = (ms % 1000) as u32 * 1_000_000;
    let timestamp = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, nanos);
    uuid::Uuid::new_v7(timestamp).simple().to_string()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Steps of a browser probe run without a browser configured: an error, never a pass.
fn browser_unavailable(spec: &ProbeSpec) -> Vec<StepResult> {
    let mut steps: Vec<StepResult> = spec
        .step_names()
        .into_iter()
        .map(StepResult::skipped)
        .collect();
    if let Some(first) = steps.first_mut() {
        first.result = Outcome::Error;
        first.error = Some("no browser is configured for this runtime".into());
    }
    steps
}

/// The result of a run that never produced one of its own (cancelled, crashed, aborted): an
/// error, never a pass, with every step skipped.
pub fn unfinished(spec: &ProbeSpec, why: &str) -> ProbeResult {
    let started_at_ms = unix_ms();
    ProbeResult {
        id: run_id(started_at_ms),
        name: spec.name.clone(),
        kind: spec.type_name().to_string(),
        result: Outcome::Error,
        duration: Duration::ZERO,
        attempts: 1,
        first_attempt: Outcome::Error,
        started_at_ms,
        steps: spec
            .step_names()
            .into_iter()
            .map(StepResult::skipped)
            .collect(),
        retried: Vec::new(),
        error: Some(why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_carry_their_start_and_sort_by_it() {
        let starts = [1_700_000_000_000i64, 1_700_000_000_001, 1_700_000_060_000];
        let ids: Vec<String> = starts.iter().map(|&ms| run_id(ms)).collect();
        for (id, &ms) in ids.iter().zip(&starts) {
            assert_eq!(id.len(), 32, "{id}");
            let uuid = uuid::Uuid::try_parse(id).unwrap_or_default();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            let (secs, nanos) = uuid.get_timestamp().map_or((0, 0), |t| t.to_unix());
            assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, ms as u64);
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        assert_ne!(run_id(starts[0]), run_id(starts[0]));
    }
}
