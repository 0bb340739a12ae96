//! Result history: each probe's recent runs, its failure streak, and latency percentiles over
//! sliding windows (1m, 5m, 1h), in bounded memory.
//!
//! Per probe, [`History`] keeps the last `capacity` runs (the newest [`FULL_RESULTS`] as full
//! results, older ones as compact records), the newest failure in full (even once it has left
//! the recent list), and the latency of the last hour's runs and steps ([`latency`]).
//!
//! Memory: a full result costs about 1.2–2 KiB (a passing 2–3-step HTTP result, more with
//! assertion text), which is why only the newest is kept: a compact record is 24 bytes plus 8
//! per step, plus the failure text of runs that did not pass. The latency windows cost 4 bytes
//! per run plus 2 per step, for the last hour's runs (at most 1,024 of them; a busier
//! probe's older runs go into 10-minute histograms).

mod latency;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use latency::ProbeLatency;
use patrol_probes::result::{AssertResult, Attempt, Outcome, ProbeResult, StepResult};
use patrol_probes::run::{run_id, run_id_fraction};

pub use latency::{Percentiles, Window};

/// How many of a probe's newest results are kept in full: only the newest. Older runs in the
/// ring keep only a compact record (see [`History::recent`]). A full two-step HTTP result is
/// ~1.7 KiB, so with 500 probes each one kept per probe costs ~0.8 MiB of the agent's 20 MB
/// budget (BENCHMARKS.md §4); the newest failure is kept in full besides (the same result, not a
/// copy, while it is also the newest).
pub const FULL_RESULTS: usize = 1;

/// What every kept run still says once only its compact record is left: enough for the status
/// strip, failure counts and latency baselines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSummary {
    /// Unix milliseconds when the run started.
    pub started_at_ms: i64,
    /// Wall time of the run, all attempts included (to the microsecond).
    pub duration: Duration,
    /// How the run ended.
    pub result: Outcome,
}

/// Recent results and latency windows of every probe; shared as `Arc<History>`.
pub struct History {
    capacity: usize,
    probes: RwLock<HashMap<String, ProbeHistory>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let probes = self
            .probes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("History")
            .field("capacity", &self.capacity)
            .field("probes", &probes)
            .finish()
    }
}

impl History {
    /// Keeps up to `capacity_per_probe` recent runs per probe (at least 1), the newest
    /// [`FULL_RESULTS`] of them in full.
    pub fn new(capacity_per_probe: usize) -> History {
        History {
            capacity: capacity_per_probe.max(1),
            probes: RwLock::new(HashMap::new()),
        }
    }

    /// Records a finished run: appends it (evicting the oldest beyond capacity), updates the
    /// failure streak and feeds the latency windows.
    ///
    /// Stored results drop their `exchange` (request/response detail for verbose output),
    /// except the one kept as [`History::last_failure`].
    pub fn record(&self, result: Arc<ProbeResult>) {
        self.record_at(result, now_ms());
    }

    /// [`History::record`] with the clock given: `now_ms` decides which slots have expired.
    pub(crate) fn record_at(&self, result: Arc<ProbeResult>, now_ms: i64) {
        let mut probes = self.write();
        let history = match probes.get_mut(&result.name) {
            Some(h) => h,
            None => probes.entry(result.name.clone()).or_default(),
        };
        history.record(result, self.capacity, now_ms);
    }

    /// Up to `limit` most recently recorded results, newest first, in the verify report's
    /// schema.
    ///
    /// The newest [`FULL_RESULTS`] are the results as recorded (without `exchange`). Older ones
    /// are rebuilt from compact records and carry less: id, type, outcome, attempts, start,
    /// duration (to the microsecond) and each step's name, outcome, status and duration; for
    /// runs that did not pass also the error texts, the failing assertions and the saved
    /// artifacts. Phases, TLS details, web vitals and passing assertions are omitted, and so are
    /// earlier attempts (`retried`), except for a run that passed on a retry: it keeps its first
    /// attempt's outcome, duration and failing steps, so a retry never hides why it was needed.
    pub fn recent(&self, probe: &str, limit: usize) -> Vec<Arc<ProbeResult>> {
        self.read()
            .get(probe)
            .map(|h| h.recent(probe, limit))
            .unwrap_or_default()
    }

    /// Up to `limit` most recently recorded runs in brief, newest first.
    pub fn summaries(&self, probe: &str, limit: usize) -> Vec<RunSummary> {
        self.read()
            .get(probe)
            .map(|h| {
                h.runs
                    .iter()
                    .rev()
                    .take(limit)
                    .map(RunRecord::summary)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The kept runs that started at or after `since_ms`, in brief, newest first.
    pub fn summaries_since(&self, probe: &str, since_ms: i64) -> Vec<RunSummary> {
        self.read()
            .get(probe)
            .map(|h| {
                h.runs
                    .iter()
                    .rev()
                    .filter(|r| r.started_at_ms >= since_ms)
                    .map(RunRecord::summary)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The most recently recorded result, in full.
    pub fn last(&self, probe: &str) -> Option<Arc<ProbeResult>> {
        self.read().get(probe).and_then(|h| h.full.back().cloned())
    }

    /// The most recently recorded result that did not pass, kept in full even after it has
    /// left [`History::recent`], with its `exchange` detail.
    pub fn last_failure(&self, probe: &str) -> Option<Arc<ProbeResult>> {
        self.read().get(probe).and_then(|h| h.last_failure.clone())
    }

    /// `started_at_ms` of the first run of the current streak of runs that did not pass;
    /// `None` when the last run passed (or none was recorded).
    pub fn failing_since(&self, probe: &str) -> Option<i64> {
        self.read().get(probe).and_then(|h| h.failing_since)
    }

    /// Percentiles of the probe's run durations (retries included) over runs that started
    /// within `window`; `None` when there were none.
    pub fn percentiles(&self, probe: &str, window: Window) -> Option<Percentiles> {
        self.percentiles_at(probe, window, now_ms())
    }

    /// [`History::percentiles`] at a given time.
    pub(crate) fn percentiles_at(
        &self,
        probe: &str,
        window: Window,
        now_ms: i64,
    ) -> Option<Percentiles> {
        self.read()
            .get(probe)
            .and_then(|h| h.latency.percentiles(None, window, now_ms))
    }

    /// Percentiles of one step's durations (the last attempt's; skipped steps excluded) over
    /// runs that started within `window`.
    pub fn step_percentiles(&self, probe: &str, step: &str, window: Window) -> Option<Percentiles> {
        self.step_percentiles_at(probe, step, window, now_ms())
    }

    /// [`History::step_percentiles`] at a given time.
    pub(crate) fn step_percentiles_at(
        &self,
        probe: &str,
        step: &str,
        window: Window,
        now_ms: i64,
    ) -> Option<Percentiles> {
        self.read()
            .get(probe)
            .and_then(|h| h.latency.percentiles(Some(step), window, now_ms))
    }

    /// Forgets every probe not in `names` (probes removed by a config reload).
    pub fn retain_probes(&self, names: &[&str]) {
        self.write()
            .retain(|name, _| names.contains(&name.as_str()));
    }

    // A panic while holding the lock cannot leave a ProbeHistory half-updated in a way that
    // matters more than losing history, so poisoning is ignored.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ProbeHistory>> {
        self.probes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ProbeHistory>> {
        self.probes.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One probe's history.
#[derive(Default)]
struct ProbeHistory {
    /// The newest results in full, oldest first: at most [`FULL_RESULTS`], and always the
    /// newest entries of `runs` as well.
    full: VecDeque<Arc<ProbeResult>>,
    /// Every kept run in compact form, oldest first; at most the history's capacity.
    runs: VecDeque<RunRecord>,
    /// The steps of `runs`, flattened in the same order (`RunRecord::steps` each).
    steps: VecDeque<StepRecord>,
    /// What some runs keep beyond their record ([`RunRecord::detailed`]), oldest first, each
    /// with the run's sequence number.
    details: VecDeque<(u64, Box<RunDetail>)>,
    /// Runs recorded so far: the newest of `runs` has sequence number `recorded - 1`.
    recorded: u64,
    /// Step names and probe types, which records refer to by index.
    words: Words,
    last_failure: Option<Arc<ProbeResult>>,
    failing_since: Option<i64>,
    latency: ProbeLatency,
}

impl ProbeHistory {
    fn record(&mut self, result: Arc<ProbeResult>, capacity: usize, now_ms: i64) {
        self.latency.record(&result, now_ms);
        let started = result.started_at_ms;
        if result.result.is_pass() {
            self.failing_since = None;
        } else {
            self.failing_since.get_or_insert(started);
            self.last_failure = Some(Arc::clone(&result));
        }

        if self.runs.len() >= capacity
            && let Some(oldest) = self.runs.pop_front()
        {
            self.steps.drain(..usize::from(oldest.steps));
            if oldest.detailed {
                self.details.pop_front();
            }
        }
        self.words.make_room(&mut self.runs, &mut self.steps);
        let (record, detail) = RunRecord::new(&result, &mut self.words, &mut self.steps);
        if let Some(detail) = detail {
            push_frugal(&mut self.details, (self.recorded, detail));
        }
        self.recorded += 1;
        push_bounded(&mut self.runs, record, capacity);
        if self.full.len() >= FULL_RESULTS.min(capacity) {
            self.full.pop_front();
        }
        self.full.push_back(without_exchanges(result));
    }

    /// See [`History::recent`].
    fn recent(&self, probe: &str, limit: usize) -> Vec<Arc<ProbeResult>> {
        let mut out = Vec::with_capacity(limit.min(self.runs.len()));
        out.extend(self.full.iter().rev().take(limit).cloned());
        // The steps of runs older than the full ones end where the full ones' steps begin.
        let full_steps: usize = self
            .runs
            .iter()
            .rev()
            .take(self.full.len())
            .map(|r| usize::from(r.steps))
            .sum();
        let mut end = self.steps.len() - full_steps;
        let newest = self.recorded.saturating_sub(1);
        for (age, run) in self.runs.iter().rev().enumerate().skip(self.full.len()) {
            if out.len() >= limit {
                break;
            }
            let start = end - usize::from(run.steps);
            let steps = self.steps.range(start..end);
            let detail = self.detail(run, newest - age as u64);
            out.push(Arc::new(run.expand(probe, steps, detail, &self.words)));
            end = start;
        }
        out
    }

    /// The detail of the run with sequence number `sequence`, if it has one.
    fn detail(&self, run: &RunRecord, sequence: u64) -> Option<&RunDetail> {
        if !run.detailed {
            return None;
        }
        let at = self.details.binary_search_by_key(&sequence, |(s, _)| *s);
        at.ok().map(|i| &*self.details[i].1)
    }
}

/// The result without its request/response detail (`StepResult::exchange`, verbose output
/// only and never serialized), which can be several KiB per step: the newest results of every
/// probe are kept, so they must stay small. Copies the result only when it is shared.
fn without_exchanges(mut result: Arc<ProbeResult>) -> Arc<ProbeResult> {
    let has_exchange = |steps: &[StepResult]| steps.iter().any(|s| s.exchange.is_some());
    if !has_exchange(&result.steps) && !result.retried.iter().any(|a| has_exchange(&a.steps)) {
        return result;
    }
    let r = Arc::make_mut(&mut result);
    let retried = r.retried.iter_mut().flat_map(|a| a.steps.iter_mut());
    for step in r.steps.iter_mut().chain(retried) {
        step.exchange = None;
    }
    result
}

/// Appends to a ring that never holds more than `capacity`, without growing its buffer past
/// `capacity` (a `VecDeque` left to itself would double to the next power of two).
fn push_bounded<T>(ring: &mut VecDeque<T>, value: T, capacity: usize) {
    if ring.len() == ring.capacity() {
        let want = (ring.len() * 2).max(4).min(capacity.max(ring.len() + 1));
        ring.reserve_exact(want - ring.len());
    }
    ring.push_back(value);
}

/// Appends to a ring whose length hovers around a steady size, growing its buffer by an eighth
/// rather than doubling it.
fn push_frugal<T>(ring: &mut VecDeque<T>, value: T) {
    if ring.len() == ring.capacity() {
        ring.reserve_exact((ring.len() / 8).max(4));
    }
    ring.push_back(value);
}

/// A run as kept once it is no longer among the [`FULL_RESULTS`] newest: 24 bytes, plus 8 per
/// step, plus a [`RunDetail`] for runs that did not pass at once.
struct RunRecord {
    started_at_ms: i64,
    /// The engine's ids follow from the run's start and 12 more bits of clock
    /// ([`patrol_probes::run::run_id`]), which are kept here. Any other id is kept as text in the
    /// run's detail.
    id_fraction: u16,
    duration_us: u32,
    attempts: u16,
    /// Index of the probe type in [`Words`].
    kind: u16,
    /// Number of this run's entries in `ProbeHistory::steps`.
    steps: u16,
    result: Outcome,
    first_attempt: Outcome,
    /// Whether `ProbeHistory::details` holds a [`RunDetail`] for this run.
    detailed: bool,
}

/// One step of a [`RunRecord`].
struct StepRecord {
    duration_us: u32,
    /// Index of the step name in [`Words`].
    name: u16,
    /// The HTTP status (0: none; above 8,191 kept as 8,191) and the outcome, as
    /// `status << 3 | outcome`.
    status_and_result: u16,
}

impl StepRecord {
    fn new(step: &StepResult, name: u16) -> StepRecord {
        let status = step.status.unwrap_or(0).min(MAX_STATUS);
        // Exhaustive, so a new outcome cannot be stored as another; the index into OUTCOMES.
        let result = match step.result {
            Outcome::Pass => 0,
            Outcome::Fail => 1,
            Outcome::Error => 2,
            Outcome::Timeout => 3,
            Outcome::Skipped => 4,
        };
        StepRecord {
            duration_us: micros(step.duration),
            name,
            status_and_result: status << 3 | result,
        }
    }

    fn status(&self) -> Option<u16> {
        Some(self.status_and_result >> 3).filter(|&s| s != 0)
    }

    fn result(&self) -> Outcome {
        OUTCOMES[usize::from(self.status_and_result & 7) % OUTCOMES.len()]
    }
}

/// The largest status a [`StepRecord`] holds: 13 bits.
const MAX_STATUS: u16 = (1 << 13) - 1;
/// Outcomes by their 3-bit code in a [`StepRecord`] (see [`StepRecord::new`]).
const OUTCOMES: [Outcome; 5] = [
    Outcome::Pass,
    Outcome::Fail,
    Outcome::Error,
    Outcome::Timeout,
    Outcome::Skipped,
];

/// What a run that did not pass at once (or whose id is not the engine's) keeps beyond its
/// record.
struct RunDetail {
    /// The run's id, when it is not a UUIDv7 of the run's start in 32 hex digits.
    id: Option<Box<str>>,
    error: Option<Box<str>>,
    /// Only the steps with something to say.
    steps: Vec<StepFailure>,
    /// For a run that passed on a retry: why its first attempt did not.
    first_attempt: Option<Box<AttemptFailure>>,
}

/// The first attempt of a run that passed on a retry.
struct AttemptFailure {
    result: Outcome,
    duration_us: u32,
    /// Only the steps with something to say, with their names and outcomes.
    steps: Vec<(Box<str>, Outcome, StepFailure)>,
}

/// A step's error, failing assertions and artifacts.
struct StepFailure {
    /// Position of the step in the run.
    step: u16,
    error: Option<Box<str>>,
    asserts: Vec<AssertResult>,
    artifacts: Vec<String>,
}

impl RunRecord {
    /// The record of `result`, its steps appended to `steps`, and its detail if it needs one.
    fn new(
        result: &ProbeResult,
        words: &mut Words,
        steps: &mut VecDeque<StepRecord>,
    ) -> (RunRecord, Option<Box<RunDetail>>) {
        // A record counts its steps in a u16; a (hypothetical) longer probe keeps the first ones.
        for step in result.steps.iter().take(usize::from(u16::MAX)) {
            push_frugal(steps, StepRecord::new(step, words.index(&step.name)));
        }
        let id_fraction = run_id_fraction(&result.id, result.started_at_ms);
        let mut detail = RunDetail {
            id: id_fraction.is_none().then(|| result.id.as_str().into()),
            error: None,
            steps: Vec::new(),
            first_attempt: None,
        };
        if !result.result.is_pass() {
            detail.error = result.error.as_deref().map(Box::from);
            detail.steps = step_failures(&result.steps)
                .map(|(_, failure)| failure)
                .collect();
        } else if !result.first_attempt.is_pass() {
            detail.first_attempt = result.retried.first().map(|attempt| {
                Box::new(AttemptFailure {
                    result: attempt.result,
                    duration_us: micros(attempt.duration),
                    steps: step_failures(&attempt.steps)
                        .map(|(s, failure)| (s.name.as_str().into(), s.result, failure))
                        .collect(),
                })
            });
        }
        let detailed = detail.id.is_some()
            || detail.error.is_some()
            || !detail.steps.is_empty()
            || detail.first_attempt.is_some();
        let record = RunRecord {
            started_at_ms: result.started_at_ms,
            id_fraction: id_fraction.unwrap_or_default(),
            duration_us: micros(result.duration),
            attempts: u16::try_from(result.attempts).unwrap_or(u16::MAX),
            kind: words.index(&result.kind),
            steps: u16::try_from(result.steps.len()).unwrap_or(u16::MAX),
            result: result.result,
            first_attempt: result.first_attempt,
            detailed,
        };
        (record, detailed.then(|| Box::new(detail)))
    }

    fn summary(&self) -> RunSummary {
        RunSummary {
            started_at_ms: self.started_at_ms,
            duration: Duration::from_micros(u64::from(self.duration_us)),
            result: self.result,
        }
    }

    /// The record as a result in the verify report's schema, with what it kept.
    fn expand<'a>(
        &self,
        probe: &str,
        steps: impl Iterator<Item = &'a StepRecord>,
        detail: Option<&RunDetail>,
        words: &Words,
    ) -> ProbeResult {
        let mut steps: Vec<StepResult> = steps
            .map(|s| StepResult {
                result: s.result(),
                duration: Duration::from_micros(u64::from(s.duration_us)),
                status: s.status(),
                ..StepResult::skipped(words.get(s.name))
            })
            .collect();
        if let Some(failure) = detail {
            for f in &failure.steps {
                if let Some(step) = steps.get_mut(usize::from(f.step)) {
                    step.error = f.error.as_deref().map(String::from);
                    step.asserts = f.asserts.clone();
                    step.artifacts = f.artifacts.clone();
                }
            }
        }
        ProbeResult {
            id: match detail.and_then(|d| d.id.as_deref()) {
                Some(text) => text.to_string(),
                None => run_id(self.started_at_ms, self.id_fraction),
            },
            name: probe.to_string(),
            kind: words.get(self.kind).to_string(),
            result: self.result,
            duration: Duration::from_micros(u64::from(self.duration_us)),
            attempts: u32::from(self.attempts),
            first_attempt: self.first_attempt,
            started_at_ms: self.started_at_ms,
            steps,
            retried: detail
                .and_then(|f| f.first_attempt.as_ref())
                .map(|a| {
                    vec![Attempt {
                        result: a.result,
                        duration: Duration::from_micros(u64::from(a.duration_us)),
                        steps: a
                            .steps
                            .iter()
                            .map(|(name, result, f)| StepResult {
                                result: *result,
                                error: f.error.as_deref().map(String::from),
                                asserts: f.asserts.clone(),
                                artifacts: f.artifacts.clone(),
                                ..StepResult::skipped(&**name)
                            })
                            .collect(),
                    }]
                })
                .unwrap_or_default(),
            error: detail.and_then(|f| f.error.as_deref().map(String::from)),
        }
    }
}

/// The steps of a run or attempt with something to say (an error, a failing assertion, an
/// artifact), each as it will be kept.
fn step_failures(steps: &[StepResult]) -> impl Iterator<Item = (&StepResult, StepFailure)> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.error.is_some() || !s.artifacts.is_empty() || s.failed_asserts().count() > 0
        })
        .map(|(i, s)| {
            let failure = StepFailure {
                step: u16::try_from(i).unwrap_or(u16::MAX),
                error: s.error.as_deref().map(Box::from),
                asserts: s.failed_asserts().cloned().collect(),
                artifacts: s.artifacts.clone(),
            };
            (s, failure)
        })
}

/// Step names and probe types of one probe's records, each stored once and referred to by
/// index. Words no record uses any more (steps renamed by a reload) are dropped when the
/// table doubles.
#[derive(Default)]
struct Words {
    words: Vec<Box<str>>,
    /// Size after the last clean-up; the next one happens at twice this.
    kept: usize,
}

/// Words a table may hold before it is cleaned up for the first time.
const WORDS_BEFORE_CLEANUP: usize = 64;

impl Words {
    fn index(&mut self, word: &str) -> u16 {
        let at = match self.words.iter().position(|w| **w == *word) {
            Some(i) => i,
            None => {
                self.words.push(word.into());
                self.words.len() - 1
            }
        };
        // More than 65,535 distinct names between clean-ups cannot be told apart; they share
        // the last index rather than fail the run.
        u16::try_from(at).unwrap_or(u16::MAX)
    }

    fn get(&self, index: u16) -> &str {
        self.words.get(usize::from(index)).map_or("", |w| w)
    }

    /// Drops words no kept record refers to, once the table has doubled since the last time,
    /// and renumbers the records.
    fn make_room(&mut self, runs: &mut VecDeque<RunRecord>, steps: &mut VecDeque<StepRecord>) {
        if self.words.len() < (2 * self.kept).max(WORDS_BEFORE_CLEANUP) {
            return;
        }
        let mut used = vec![false; self.words.len()];
        let indices = runs
            .iter()
            .map(|r| r.kind)
            .chain(steps.iter().map(|s| s.name));
        for i in indices {
            if let Some(u) = used.get_mut(usize::from(i)) {
                *u = true;
            }
        }
        let mut renumbered = vec![0u16; self.words.len()];
        let mut next = 0u16;
        for (i, u) in used.iter().enumerate() {
            if *u {
                renumbered[i] = next;
                next = next.saturating_add(1);
            }
        }
        let mut i = 0;
        self.words.retain(|_| {
            i += 1;
            used[i - 1]
        });
        self.kept = self.words.len();
        // Every index in use was marked above, so it maps to its word's new position.
        let renumber = |i: &mut u16| *i = renumbered.get(usize::from(*i)).copied().unwrap_or(0);
        runs.iter_mut().for_each(|r| renumber(&mut r.kind));
        steps.iter_mut().for_each(|s| renumber(&mut s.name));
    }
}
fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_probes::result::Exchange;
    use std::time::Duration;

    const T0: i64 = 1_700_000_000_000;

    fn result(name: &str, outcome: Outcome, started_at_ms: i64, millis: u64) -> Arc<ProbeResult> {
        Arc::new(ProbeResult {
            id: String::new(),
            name: name.to_string(),
            kind: "http".to_string(),
            result: outcome,
            duration: Duration::from_millis(millis),
            attempts: 1,
            first_attempt: outcome,
            started_at_ms,
            steps: vec![
                StepResult {
                    result: Outcome::Pass,
                    duration: Duration::from_millis(millis / 2),
                    ..StepResult::skipped("login")
                },
                StepResult::skipped("cart"),
            ],
            retried: Vec::new(),
            error: None,
        })
    }

    fn starts(results: &[Arc<ProbeResult>]) -> Vec<i64> {
        results.iter().map(|r| r.started_at_ms).collect()
    }

    #[test]
    fn keeps_capacity_newest_first() {
        let h = History::new(3);
        for i in 0..5 {
            h.record_at(result("p", Outcome::Pass, T0 + i, 10), T0 + i);
        }
        assert_eq!(starts(&h.recent("p", 10)), [T0 + 4, T0 + 3, T0 + 2]);
        assert_eq!(starts(&h.recent("p", 2)), [T0 + 4, T0 + 3]);
        assert_eq!(h.last("p").map(|r| r.started_at_ms), Some(T0 + 4));
        let since: Vec<i64> = h
            .summaries_since("p", T0 + 3)
            .iter()
            .map(|r| r.started_at_ms)
            .collect();
        assert_eq!(since, [T0 + 4, T0 + 3]);
        assert!(h.recent("unknown", 10).is_empty());
        assert!(h.last("unknown").is_none());
    }

    #[test]
    fn last_failure_survives_eviction() {
        let h = History::new(2);
        h.record_at(result("p", Outcome::Fail, T0, 10), T0);
        for i in 1..=3 {
            h.record_at(result("p", Outcome::Pass, T0 + i, 10), T0 + i);
        }
        assert!(h.recent("p", 10).iter().all(|r| r.result.is_pass()));
        let failure = h.last_failure("p").map(|r| (r.started_at_ms, r.result));
        assert_eq!(failure, Some((T0, Outcome::Fail)));
    }

    #[test]
    fn exchanges_are_kept_only_for_the_last_failure() {
        let h = History::new(10);
        let with_exchange = |outcome| {
            let mut r = (*result("p", outcome, T0, 10)).clone();
            r.steps[0].exchange = Some(Exchange {
                response_body: Some("x".repeat(4096)),
                ..Exchange::default()
            });
            Arc::new(r)
        };
        h.record_at(with_exchange(Outcome::Fail), T0);
        h.record_at(with_exchange(Outcome::Pass), T0);
        assert!(
            h.recent("p", 10)
                .iter()
                .all(|r| r.steps.iter().all(|s| s.exchange.is_none()))
        );
        let failure = h.last_failure("p");
        assert!(failure.is_some_and(|r| r.steps[0].exchange.is_some()));
        // Everything else is kept as recorded.
        let last = h.last("p").map(|r| (*r).clone());
        let mut expected = (*with_exchange(Outcome::Pass)).clone();
        expected.steps[0].exchange = None;
        assert_eq!(last, Some(expected));
    }

    #[test]
    fn failing_since_follows_the_streak() {
        let h = History::new(10);
        let record = |i: i64, outcome| h.record_at(result("p", outcome, T0 + i, 10), T0 + i);
        record(0, Outcome::Pass);
        record(1, Outcome::Fail);
        record(2, Outcome::Timeout);
        record(3, Outcome::Error);
        assert_eq!(h.failing_since("p"), Some(T0 + 1));
        assert_eq!(h.last_failure("p").map(|r| r.result), Some(Outcome::Error));
        h.record_at(result("p", Outcome::Pass, T0 + 4, 10), T0 + 4);
        assert_eq!(h.failing_since("p"), None);
        h.record_at(result("p", Outcome::Fail, T0 + 5, 10), T0 + 5);
        assert_eq!(h.failing_since("p"), Some(T0 + 5));
        assert_eq!(h.failing_since("unknown"), None);
    }

    fn assert_close(actual: f64, expected: f64) {
        // 2 significant digits: within 1%.
        assert!(
            (actual - expected).abs() <= expected * 0.01,
            "{actual} is not within 1% of {expected}"
        );
    }

    #[test]
    fn percentiles_of_known_samples() {
        let h = History::new(10);
        let now = T0 + 5_000;
        let check = |count: u64| {
            for window in Window::all() {
                let p = h.percentiles_at("p", window, now);
                let p = p.unwrap_or_else(|| panic!("no percentiles for {}", window.as_str()));
                assert_eq!(p.count, count);
                assert_close(p.p50, 0.050);
                assert_close(p.p95, 0.095);
                assert_close(p.p99, 0.099);
            }
        };
        // All in one slot of every window, so slot boundaries are not in play.
        for ms in 1..=100u64 {
            h.record_at(result("p", Outcome::Pass, T0 - 1_000, ms), now);
        }
        check(100);
        // Steps: half the probe's duration.
        let login = h.step_percentiles_at("p", "login", Window::OneMinute, now);
        let login = login.unwrap_or_else(|| panic!("no login percentiles"));
        assert_eq!(login.count, 100);
        assert_close(login.p50, 0.025);
        assert_close(login.p99, 0.049);
        // Skipped steps have no samples.
        assert_eq!(
            h.step_percentiles_at("p", "cart", Window::OneHour, now),
            None
        );
        assert_eq!(h.percentiles_at("unknown", Window::OneHour, now), None);

        // Past latency::ROWS runs, the oldest go into histograms: the same distribution, the
        // same answers.
        let rounds = latency::ROWS / 100 + 2;
        for _ in 1..rounds {
            for ms in 1..=100u64 {
                h.record_at(result("p", Outcome::Pass, T0 - 1_000, ms), now);
            }
        }
        check(100 * rounds as u64);
    }

    #[test]
    fn sub_millisecond_and_slow_runs_keep_their_precision() {
        let h = History::new(10);
        for _ in 0..10 {
            h.record_at(result("fast", Outcome::Pass, T0, 0), T0);
            h.record_at(
                Arc::new(ProbeResult {
                    duration: Duration::from_micros(1_300),
                    ..(*result("fast", Outcome::Pass, T0, 0)).clone()
                }),
                T0,
            );
            h.record_at(result("slow", Outcome::Pass, T0, 29_000), T0);
        }
        let fast = h.percentiles_at("fast", Window::OneMinute, T0);
        assert_eq!(fast.map(|p| (p.count, p.p50)), Some((20, 0.0)));
        assert_close(fast.map_or(0.0, |p| p.p99), 0.0013);
        let slow = h.percentiles_at("slow", Window::OneHour, T0);
        assert_close(slow.map_or(0.0, |p| p.p99), 29.0);
    }

    #[test]
    fn windows_expire() {
        let h = History::new(10);
        // Two minutes ago: 500 ms; now: 100 ms.
        h.record_at(result("p", Outcome::Pass, T0 - 120_000, 500), T0 - 119_500);
        h.record_at(result("p", Outcome::Pass, T0, 100), T0 + 100);
        let now = T0 + 100;
        let count = |w| h.percentiles_at("p", w, now).map(|p| p.count);
        assert_eq!(count(Window::OneMinute), Some(1));
        assert_eq!(count(Window::FiveMinutes), Some(2));
        assert_eq!(count(Window::OneHour), Some(2));
        let one_minute = h.percentiles_at("p", Window::OneMinute, now);
        assert_close(one_minute.map_or(0.0, |p| p.p99), 0.1);

        // A window is exactly its length: a run leaves it the second it is that old.
        assert_eq!(
            h.percentiles_at("p", Window::OneMinute, T0 + 59_999)
                .map(|p| p.count),
            Some(1)
        );
        assert_eq!(h.percentiles_at("p", Window::OneMinute, T0 + 60_000), None);
        assert_eq!(
            h.percentiles_at("p", Window::FiveMinutes, T0 + 181_000)
                .map(|p| p.count),
            Some(1)
        );
        assert_eq!(
            h.percentiles_at("p", Window::FiveMinutes, T0 + 301_000),
            None
        );
        // The hour ends for each run on its own.
        assert_eq!(
            h.percentiles_at("p", Window::OneHour, T0 + 3_479_000)
                .map(|p| p.count),
            Some(2)
        );
        assert_eq!(
            h.percentiles_at("p", Window::OneHour, T0 + 3_480_000)
                .map(|p| p.count),
            Some(1)
        );
        assert_eq!(h.percentiles_at("p", Window::OneHour, T0 + 3_600_000), None);

        // A run that started before the window but finished inside it counts only in longer
        // windows.
        let h = History::new(10);
        h.record_at(result("p", Outcome::Pass, T0 - 70_000, 65_000), T0);
        assert_eq!(h.percentiles_at("p", Window::OneMinute, T0), None);
        assert_eq!(
            h.percentiles_at("p", Window::FiveMinutes, T0)
                .map(|p| p.count),
            Some(1)
        );
    }

    #[test]
    fn late_results_land_in_their_slot() {
        let h = History::new(10);
        h.record_at(result("p", Outcome::Pass, T0 + 20_000, 10), T0 + 20_010);
        // Started earlier, finished later.
        h.record_at(result("p", Outcome::Pass, T0, 30_000), T0 + 30_000);
        h.record_at(result("p", Outcome::Pass, T0 + 25_000, 20), T0 + 30_001);
        let p = h.percentiles_at("p", Window::OneMinute, T0 + 30_001);
        assert_eq!(p.map(|p| p.count), Some(3));
        // Only the run of T0 has left the minute a minute later.
        let p = h.percentiles_at("p", Window::OneMinute, T0 + 60_000);
        assert_eq!(p.map(|p| p.count), Some(2));
    }

    #[test]
    fn idle_step_windows_are_dropped() {
        let h = History::new(10);
        h.record_at(result("p", Outcome::Pass, T0, 10), T0);
        let mut renamed = (*result("p", Outcome::Pass, T0, 10)).clone();
        renamed.steps[0].name = "sign_in".to_string();
        let later = T0 + 2 * 3_600_000;
        renamed.started_at_ms = later;
        h.record_at(Arc::new(renamed), later);
        let probes = h.read();
        assert_eq!(probes["p"].latency.step_names(), ["sign_in"]);
    }

    #[test]
    fn retain_probes_drops_the_others() {
        let h = History::new(10);
        for name in ["a", "b", "c"] {
            h.record_at(result(name, Outcome::Fail, T0, 10), T0);
        }
        h.retain_probes(&["a", "c"]);
        assert!(h.last("a").is_some());
        assert!(h.last("b").is_none());
        assert!(h.last_failure("b").is_none());
        assert_eq!(h.percentiles_at("b", Window::OneHour, T0), None);
        assert!(h.last("c").is_some());
    }

    /// A two-step result as the engine makes it: a uuid id, phases, one passing and (unless the
    /// run passed) one failing assertion on the second step.
    fn detailed(i: i64, outcome: Outcome) -> Arc<ProbeResult> {
        let assertion = |result: Outcome, expr: &str| AssertResult {
            expr: expr.to_string(),
            result,
            actual: Some(format!("{i}")),
            expected: "200".to_string(),
            message: None,
        };
        let mut second = StepResult {
            result: outcome,
            duration: Duration::from_micros(2_500 + i as u64),
            status: Some(if outcome.is_pass() { 200 } else { 503 }),
            phases: Some(patrol_probes::result::Phases::default()),
            asserts: vec![assertion(Outcome::Pass, "status < 600")],
            artifacts: if outcome.is_pass() {
                Vec::new()
            } else {
                vec![format!("p/{i}/body.txt")]
            },
            ..StepResult::skipped("cart")
        };
        if !outcome.is_pass() {
            second
                .asserts
                .push(assertion(Outcome::Fail, "status == 200"));
            second.error = Some("status was 503".to_string());
        }
        Arc::new(ProbeResult {
            id: run_id(T0 + i, (i % 4096) as u16),
            name: "p".to_string(),
            kind: "http".to_string(),
            result: outcome,
            duration: Duration::from_micros(5_000 + i as u64),
            attempts: 1,
            first_attempt: outcome,
            started_at_ms: T0 + i,
            steps: vec![
                StepResult {
                    result: Outcome::Pass,
                    duration: Duration::from_micros(2_000),
                    status: Some(200),
                    phases: Some(patrol_probes::result::Phases::default()),
                    asserts: vec![assertion(Outcome::Pass, "status == 200")],
                    ..StepResult::skipped("login")
                },
                second,
            ],
            retried: Vec::new(),
            error: None,
        })
    }

    #[test]
    fn a_run_that_passed_on_a_retry_keeps_why_its_first_attempt_failed() {
        let h = History::new(100);
        let failed = detailed(0, Outcome::Fail);
        let mut retried = (*detailed(0, Outcome::Pass)).clone();
        retried.first_attempt = Outcome::Fail;
        retried.attempts = 2;
        retried.retried = vec![Attempt {
            result: Outcome::Fail,
            duration: Duration::from_millis(7),
            steps: failed.steps.clone(),
        }];
        h.record_at(Arc::new(retried), T0);
        for i in 1..=FULL_RESULTS as i64 + 2 {
            let r = detailed(i, Outcome::Pass);
            h.record_at(Arc::clone(&r), r.started_at_ms);
        }
        let runs = h.recent("p", 100);
        let old = runs.iter().find(|r| r.started_at_ms == T0).expect("kept");
        assert_eq!(
            (old.result, old.first_attempt),
            (Outcome::Pass, Outcome::Fail)
        );
        assert_eq!(old.retried.len(), 1, "{old:#?}");
        let first = &old.retried[0];
        assert_eq!(
            (first.result, first.duration),
            (Outcome::Fail, Duration::from_millis(7))
        );
        // The failing step, with its error and failing assertion; the final steps carry none.
        assert_eq!(first.steps.len(), 1, "{first:#?}");
        assert_eq!(first.steps[0].name, failed.steps[1].name);
        assert_eq!(first.steps[0].error.as_deref(), Some("status was 503"));
        assert_eq!(first.steps[0].asserts.len(), 1);
        assert!(
            old.steps
                .iter()
                .all(|s| s.error.is_none() && s.asserts.is_empty())
        );
        assert!(old.error.is_none());
    }

    #[test]
    fn older_runs_are_compact_but_keep_the_schema_and_their_failures() {
        let h = History::new(100);
        let recorded: Vec<Arc<ProbeResult>> = (0..150)
            .map(|i| {
                detailed(
                    i,
                    if i % 10 == 3 {
                        Outcome::Fail
                    } else {
                        Outcome::Pass
                    },
                )
            })
            .collect();
        for r in &recorded {
            h.record_at(Arc::clone(r), r.started_at_ms);
        }
        let runs = h.recent("p", 1000);
        assert_eq!(runs.len(), 100);
        assert_eq!(
            starts(&h.recent("p", 7)),
            (143..150).rev().map(|i| T0 + i).collect::<Vec<_>>()
        );
        for (kept, original) in runs.iter().zip(recorded.iter().rev()) {
            let age = T0 + 149 - original.started_at_ms;
            if age < FULL_RESULTS as i64 {
                // The newest in full.
                assert!(Arc::ptr_eq(kept, original));
                continue;
            }
            // What a compact record keeps, exactly.
            let mut expected = (**original).clone();
            for step in &mut expected.steps {
                step.phases = None;
                if expected.result.is_pass() {
                    step.asserts.clear();
                } else {
                    step.asserts.retain(|a| !a.result.is_pass());
                }
            }
            assert_eq!(**kept, expected);
        }
        // The verify report's schema: the same keys as a full result, minus what is omitted.
        let json = serde_json::to_value(&*runs[99]).unwrap_or_default();
        let keys: Vec<&str> = json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "attempts",
                "duration_seconds",
                "first_attempt",
                "id",
                "name",
                "result",
                "started_at_ms",
                "steps",
                "type"
            ]
        );
        // The last failure, long out of the full results, keeps its failing assertion in the
        // list, and in full (passing assertions included) as the last failure.
        let failure = runs
            .iter()
            .find(|r| !r.result.is_pass())
            .map(|r| r.steps[1].clone());
        assert_eq!(failure.as_ref().map(|s| s.asserts.len()), Some(1));
        assert_eq!(
            failure.as_ref().and_then(|s| s.error.clone()).as_deref(),
            Some("status was 503")
        );
        assert_eq!(
            failure.map(|s| s.artifacts),
            Some(vec!["p/143/body.txt".to_string()])
        );
        let last_failure = h.last_failure("p");
        assert_eq!(last_failure.map(|r| r.steps[1].asserts.len()), Some(2));
        // Summaries cover every kept run.
        let summaries = h.summaries("p", 1000);
        assert_eq!(summaries.len(), 100);
        assert_eq!(summaries.iter().filter(|r| !r.result.is_pass()).count(), 10);
        assert_eq!(summaries[0].duration, Duration::from_micros(5_149));
        // Only the runs that failed needed a detail: the engine's ids fit the record.
        assert_eq!(h.read()["p"].details.len(), 10);
    }

    #[test]
    fn renamed_steps_keep_their_names_through_word_cleanups() {
        let h = History::new(10);
        for i in 0..300 {
            let mut r = (*result("p", Outcome::Pass, T0 + i, 10)).clone();
            r.steps[1].name = format!("step-{i}");
            h.record_at(Arc::new(r), T0 + i);
        }
        let names: Vec<String> = h
            .recent("p", 10)
            .iter()
            .map(|r| r.steps[1].name.clone())
            .collect();
        let expected: Vec<String> = (290..300).rev().map(|i| format!("step-{i}")).collect();
        assert_eq!(names, expected);
        assert!(h.read()["p"].words.words.len() < 2 * WORDS_BEFORE_CLEANUP);
    }

    #[test]
    fn a_small_ring_keeps_its_full_results_within_it() {
        let h = History::new(2);
        for i in 0..4 {
            h.record_at(result("p", Outcome::Pass, T0 + i, 10), T0 + i);
        }
        assert_eq!(starts(&h.recent("p", 10)), [T0 + 3, T0 + 2]);
        let probes = h.read();
        assert_eq!(
            (probes["p"].full.len(), probes["p"].steps.len()),
            (FULL_RESULTS.min(2), 4)
        );
    }

    #[test]
    fn ids_that_are_not_uuids_and_rare_statuses_survive_compaction() {
        let h = History::new(5);
        for i in 0..20 {
            let mut r = (*result("p", Outcome::Pass, T0 + i, 10)).clone();
            r.id = format!("run-{i}");
            r.steps[0].status = Some(if i % 2 == 0 { 299 } else { 40_000 });
            r.steps[1].result = Outcome::Timeout;
            h.record_at(Arc::new(r), T0 + i);
        }
        let runs = h.recent("p", 10);
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["run-19", "run-18", "run-17", "run-16", "run-15"]);
        let statuses: Vec<Option<u16>> = runs.iter().map(|r| r.steps[0].status).collect();
        // The newest is kept in full; in a compact record, a status beyond 13 bits is kept as
        // the largest that fits.
        let expected = [40_000, 299, MAX_STATUS, 299, MAX_STATUS].map(Some);
        assert_eq!(statuses, expected);
        assert!(runs.iter().all(|r| r.steps[1].result == Outcome::Timeout));
        // Details leave with their runs.
        assert_eq!(h.read()["p"].details.len(), 5);
    }

    #[test]
    fn step_records_keep_every_outcome_and_status() {
        for outcome in OUTCOMES {
            for status in [None, Some(200), Some(599), Some(MAX_STATUS)] {
                let step = StepResult {
                    result: outcome,
                    status,
                    ..StepResult::skipped("s")
                };
                let record = StepRecord::new(&step, 7);
                assert_eq!((record.result(), record.status()), (outcome, status));
            }
        }
    }

    #[test]
    fn compact_records_stay_compact() {
        // The sizes the module docs and BENCHMARKS.md §4 count on.
        assert!(std::mem::size_of::<RunRecord>() <= 24);
        assert!(std::mem::size_of::<StepRecord>() <= 8);
    }

    #[test]
    fn window_names() {
        let names: Vec<&str> = Window::all().iter().map(|w| w.as_str()).collect();
        assert_eq!(names, ["1m", "5m", "1h"]);
    }
}
