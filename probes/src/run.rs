//! Running a probe: a fresh scope per attempt, the probe's timeout enforced by cancellation,
//! retries with backoff, the first attempt kept so a flaky pass stays visible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    let RunStart { id, started_at_ms } = RunStart::now();
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

/// When a run started, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStart {
    /// The run's id: see [`run_id`].
    pub id: String,
    /// The start, unix milliseconds by the system clock.
    pub started_at_ms: i64,
}

impl RunStart {
    /// A run starting now, with an id no other run of this process has.
    pub fn now() -> RunStart {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX) & MS_MASK;
        let fraction = u64::from(now.subsec_nanos() % 1_000_000) * FRACTIONS_PER_MS / 1_000_000;
        // Later than every stamp taken before, so two runs never share one, even when they start
        // within 1/4096 ms of each other or the clock steps back.
        let clock = ms << FRACTION_BITS | fraction;
        static LAST: AtomicU64 = AtomicU64::new(0);
        let last = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(clock.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        let stamp = clock.max(last + 1);
        RunStart {
            // `stamp >> FRACTION_BITS` < 2^48 and the fraction < 2^12: both fit.
            id: run_id(
                (stamp >> FRACTION_BITS) as i64,
                (stamp & FRACTION_MASK) as u16,
            ),
            started_at_ms: ms as i64,
        }
    }
}

/// A run's id: a UUIDv7 (RFC 9562) in 32 hex digits. Its 60-bit timestamp is the run's start in
/// 1/4096 ms (the RFC's method 3: the 12 bits after the milliseconds are a finer clock) and its
/// last 62 bits are a random number drawn once per process. A process never gives two runs the
/// same timestamp ([`RunStart::now`]), so its ids are unique; they sort by start, as do the
/// artifact folders named after them; and a history that knows a run's start keeps its id in 12
/// bits ([`run_id_fraction`]).
pub fn run_id(started_at_ms: i64, fraction: u16) -> String {
    format!("{:032x}", run_id_bits(started_at_ms, fraction))
}

/// [`run_id`] as a number.
fn run_id_bits(started_at_ms: i64, fraction: u16) -> u128 {
    let ms = u64::try_from(started_at_ms).unwrap_or(0) & MS_MASK;
    u128::from(ms) << 80
        | 0x7 << 76
        | u128::from(u64::from(fraction) & FRACTION_MASK) << 64
        | 0b10 << 62
        | u128::from(process_tail())
}

/// The finer clock of `id` when it is the id [`run_id`] gives a run of this process started at
/// `started_at_ms`; `None` for any other id (another process's, or a run whose stamp was moved
/// past its clock reading).
pub fn run_id_fraction(id: &str, started_at_ms: i64) -> Option<u16> {
    let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if id.len() != 32 || !id.bytes().all(lower_hex) {
        return None;
    }
    let bits = u128::from_str_radix(id, 16).ok()?;
    // Masked to 12 bits: fits a u16.
    let fraction = ((bits >> 64) as u64 & FRACTION_MASK) as u16;
    (run_id_bits(started_at_ms, fraction) == bits).then_some(fraction)
}

/// The last 62 bits of every run id of this process.
fn process_tail() -> u64 {
    static TAIL: OnceLock<u64> = OnceLock::new();
    *TAIL.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().1 & ((1 << 62) - 1))
}

/// Bits of a run id's timestamp below the milliseconds.
const FRACTION_BITS: u32 = 12;
const FRACTIONS_PER_MS: u64 = 1 << FRACTION_BITS;
const FRACTION_MASK: u64 = FRACTIONS_PER_MS - 1;
/// A UUIDv7's milliseconds: 48 bits.
const MS_MASK: u64 = (1 << 48) - 1;

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
    let RunStart { id, started_at_ms } = RunStart::now();
    ProbeResult {
        id,
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
    fn run_ids_are_uuidv7s_of_their_start_that_sort_by_it() {
        let starts: Vec<RunStart> = (0..2000).map(|_| RunStart::now()).collect();
        for start in &starts {
            let id = &start.id;
            assert_eq!(id.len(), 32, "{id}");
            let uuid = uuid::Uuid::try_parse(id).unwrap_or_default();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = uuid.get_timestamp().map_or((0, 0), |t| t.to_unix());
            let id_ms = (secs * 1000 + u64::from(nanos) / 1_000_000) as i64;
            // Runs started faster than the finer clock ticks are moved later, never earlier.
            assert!(id_ms >= start.started_at_ms, "{id} {}", start.started_at_ms);
            // An id of this process: its 12 bits of finer clock say all of it.
            assert!(run_id_fraction(id, id_ms).is_some(), "{id}");
        }
        let ids: Vec<&str> = starts.iter().map(|s| s.id.as_str()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids sort by start");
    }

    #[test]
    fn a_process_never_gives_two_runs_one_id() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..20_000).map(|_| RunStart::now().id).collect()))
            .collect();
        let mut ids = std::collections::HashSet::new();
        for thread in threads {
            let batch: Vec<String> = thread.join().unwrap_or_default();
            assert_eq!(batch.len(), 20_000);
            for id in batch {
                assert!(ids.insert(id.clone()), "{id} given twice");
            }
        }
    }

    #[test]
    fn only_this_process_ids_of_the_start_give_their_fraction() {
        let ms = 1_700_000_000_123;
        for fraction in [0, 1, 2048, 4095] {
            let id = run_id(ms, fraction);
            assert_eq!(run_id_fraction(&id, ms), Some(fraction), "{id}");
            assert_eq!(run_id_fraction(&id, ms + 1), None, "another start");
            // Another process: the same start and fraction, another tail.
            let last = id.as_bytes()[31];
            let other = format!("{}{}", &id[..31], if last == b'0' { '1' } else { '0' });
            assert_eq!(run_id_fraction(&other, ms), None, "{other}");
            assert_eq!(run_id_fraction(&id.to_uppercase(), ms), None);
        }
        let v4 = uuid::Uuid::new_v4().simple().to_string();
        for id in [
            v4.as_str(),
            "",
            "run-1",
            &"f".repeat(32),
            &format!("+{}", &v4[1..]),
        ] {
            assert_eq!(run_id_fraction(id, ms), None, "{id}");
        }
    }
}
