//! Result history: each probe's recent runs, its failure streak, and latency percentiles over
//! sliding windows (1m, 5m, 1h), in bounded memory.
//!
//! Per probe, [`History`] keeps the last `capacity` results, the newest failure (even once it
//! has left the recent list), and one set of latency windows for the whole probe plus one per
//! step. A window is a ring of time slots (1m = 6 × 10 s, 5m = 5 × 1 min, 1h = 6 × 10 min): it
//! covers the current, partial slot and the ones before it, so between 5/6 (4/5) of its length
//! and all of it, never more. Runs count in the slot in which they *started*.
//!
//! Memory: slots exist only while they hold samples. A slot keeps raw samples (4 bytes each)
//! until it holds [`DENSE_AT`] of them, then turns into an HDR histogram (2 significant digits,
//! 100 µs units, `u16` counts: 0.5 KiB for values under 25 ms, 2 KiB up to 1 s, 3.3 KiB up to
//! 30 s). Measured per series (the probe, or one step): about 1.6 KiB for a probe run every
//! 30 s, 4 KiB every 5 s, 17 KiB every second. Stored results are the larger cost: about
//! 1.2 KiB for a passing 3-step HTTP result, more with assertion text.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};

use hdrhistogram::Histogram;
use patrol_probes::result::{Outcome, ProbeResult, StepResult};
use serde::Serialize;

/// A sliding window for latency percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The last minute (6 slots of 10 s).
    OneMinute,
    /// The last five minutes (5 slots of 1 min).
    FiveMinutes,
    /// The last hour (6 slots of 10 min).
    OneHour,
}

impl Window {
    /// Every window, shortest first.
    pub fn all() -> [Window; 3] {
        [Window::OneMinute, Window::FiveMinutes, Window::OneHour]
    }

    /// The window's name in the API and on the status page: `1m`, `5m`, `1h`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::OneMinute => "1m",
            Window::FiveMinutes => "5m",
            Window::OneHour => "1h",
        }
    }

    fn index(self) -> usize {
        match self {
            Window::OneMinute => 0,
            Window::FiveMinutes => 1,
            Window::OneHour => 2,
        }
    }

    /// Slot length in milliseconds and number of slots.
    fn slots(self) -> (i64, i64) {
        match self {
            Window::OneMinute => (10_000, 6),
            Window::FiveMinutes => (60_000, 5),
            Window::OneHour => (600_000, 6),
        }
    }

    /// Start of the oldest slot that still counts at `now_ms`.
    fn oldest_slot_start(self, now_ms: i64) -> i64 {
        let (slot_ms, slots) = self.slots();
        slot_start(now_ms, slot_ms) - (slots - 1) * slot_ms
    }
}

/// Latency percentiles over a window, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples in the window.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
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
    /// Keeps up to `capacity_per_probe` recent results per probe (at least 1).
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
            None => probes
                .entry(result.name.clone())
                .or_insert_with(|| ProbeHistory::new(self.capacity)),
        };
        history.record(result, self.capacity, now_ms);
    }

    /// Up to `limit` most recently recorded results, newest first.
    pub fn recent(&self, probe: &str, limit: usize) -> Vec<Arc<ProbeResult>> {
        self.read()
            .get(probe)
            .map(|h| h.recent.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// The most recently recorded result.
    pub fn last(&self, probe: &str) -> Option<Arc<ProbeResult>> {
        self.read()
            .get(probe)
            .and_then(|h| h.recent.back().cloned())
    }

    /// The most recently recorded result that did not pass, kept even after it has left
    /// [`History::recent`], with its `exchange` detail.
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
            .and_then(|h| h.latency.percentiles(window, now_ms))
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
        self.read().get(probe).and_then(|h| {
            h.steps
                .iter()
                .find(|(name, _)| **name == *step)
                .and_then(|(_, windows)| windows.percentiles(window, now_ms))
        })
    }

    /// The recent results (see [`History::recent`]) that started at or after `since_ms`,
    /// newest first.
    pub fn results_since(&self, probe: &str, since_ms: i64) -> Vec<Arc<ProbeResult>> {
        self.read()
            .get(probe)
            .map(|h| {
                h.recent
                    .iter()
                    .rev()
                    .filter(|r| r.started_at_ms >= since_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
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
struct ProbeHistory {
    /// Oldest first.
    recent: VecDeque<Arc<ProbeResult>>,
    last_failure: Option<Arc<ProbeResult>>,
    failing_since: Option<i64>,
    latency: LatencyWindows,
    /// Per step, in first-seen order; a handful per probe, so a Vec beats a map.
    steps: Vec<(Box<str>, LatencyWindows)>,
}

impl ProbeHistory {
    fn new(capacity: usize) -> ProbeHistory {
        ProbeHistory {
            recent: VecDeque::with_capacity(capacity),
            last_failure: None,
            failing_since: None,
            latency: LatencyWindows::default(),
            steps: Vec::new(),
        }
    }

    fn record(&mut self, result: Arc<ProbeResult>, capacity: usize, now_ms: i64) {
        let started = result.started_at_ms;
        self.latency
            .record(started, micros(result.duration), now_ms);
        for step in &result.steps {
            if step.result == Outcome::Skipped {
                continue;
            }
            let duration = micros(step.duration);
            match self.steps.iter_mut().find(|(name, _)| **name == *step.name) {
                Some((_, windows)) => windows.record(started, duration, now_ms),
                None => {
                    let mut windows = LatencyWindows::default();
                    windows.record(started, duration, now_ms);
                    self.steps.push((step.name.as_str().into(), windows));
                }
            }
        }
        // Steps no longer run (renamed, or always skipped lately) go once their windows empty.
        for (_, windows) in &mut self.steps {
            windows.expire(now_ms);
        }
        self.steps.retain(|(_, windows)| !windows.is_empty());

        if result.result.is_pass() {
            self.failing_since = None;
        } else {
            self.failing_since.get_or_insert(started);
            self.last_failure = Some(Arc::clone(&result));
        }
        if self.recent.len() >= capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(without_exchanges(result));
    }
}

/// The result without its request/response detail (`StepResult::exchange`, verbose output
/// only and never serialized), which can be several KiB per step: `capacity` results of every
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

/// One series' rings, indexed by [`Window::index`].
#[derive(Default)]
struct LatencyWindows {
    rings: [Ring; 3],
}

impl LatencyWindows {
    fn record(&mut self, started_ms: i64, micros: u32, now_ms: i64) {
        for window in Window::all() {
            self.rings[window.index()].record(window, started_ms, micros, now_ms);
        }
    }

    fn expire(&mut self, now_ms: i64) {
        for window in Window::all() {
            self.rings[window.index()].expire(window.oldest_slot_start(now_ms));
        }
    }

    fn is_empty(&self) -> bool {
        self.rings.iter().all(|r| r.slots.is_empty())
    }

    fn percentiles(&self, window: Window, now_ms: i64) -> Option<Percentiles> {
        let oldest = window.oldest_slot_start(now_ms);
        let mut merged =
            Histogram::<u64>::new(SIGNIFICANT_DIGITS).expect("2 significant digits are valid");
        for slot in self.rings[window.index()]
            .slots
            .iter()
            .filter(|s| s.start_ms >= oldest)
        {
            slot.samples.add_to(&mut merged);
        }
        if merged.is_empty() {
            return None;
        }
        let seconds = |q: f64| merged.value_at_quantile(q) as f64 * UNIT_SECONDS;
        Some(Percentiles {
            count: merged.len(),
            p50: seconds(0.50),
            p95: seconds(0.95),
            p99: seconds(0.99),
        })
    }
}

/// The slots of one window that hold samples, oldest first.
#[derive(Default)]
struct Ring {
    slots: VecDeque<Slot>,
}

impl Ring {
    fn record(&mut self, window: Window, started_ms: i64, micros: u32, now_ms: i64) {
        let oldest = window.oldest_slot_start(now_ms);
        self.expire(oldest);
        let start_ms = slot_start(started_ms, window.slots().0);
        if start_ms < oldest {
            // The run started before this window: it counts only in longer ones.
            return;
        }
        // Runs usually finish in start order, so the slot is nearly always the last one.
        let position = self.slots.iter().rposition(|s| s.start_ms <= start_ms);
        match position {
            Some(i) if self.slots[i].start_ms == start_ms => self.slots[i].samples.record(micros),
            _ => {
                let at = position.map_or(0, |i| i + 1);
                self.slots.insert(
                    at,
                    Slot {
                        start_ms,
                        samples: Samples::Sparse(vec![micros]),
                    },
                );
            }
        }
    }

    fn expire(&mut self, oldest_start_ms: i64) {
        while self
            .slots
            .front()
            .is_some_and(|s| s.start_ms < oldest_start_ms)
        {
            self.slots.pop_front();
        }
    }
}

/// One time slot of a ring.
struct Slot {
    start_ms: i64,
    samples: Samples,
}

/// Latency samples of one slot.
enum Samples {
    /// Raw durations in microseconds, while there are fewer than [`DENSE_AT`].
    Sparse(Vec<u32>),
    /// Durations in [`UNIT_SECONDS`] units once the slot is busy.
    Dense(Box<Histogram<u16>>),
}

/// Samples per slot at which raw samples turn into a histogram: 256 × 4 bytes is about the size
/// of a histogram of 25 ms–1 s values (0.5 KiB below 25 ms, 3.3 KiB up to 30 s).
const DENSE_AT: usize = 256;
/// HDR precision: values are kept to within 1%.
const SIGNIFICANT_DIGITS: u8 = 2;
/// Histogram unit: 100 µs, so values below 25.6 ms are exact to the unit and the counts array
/// stays short (it grows with the largest value seen).
const UNIT_MICROS: u32 = 100;
const UNIT_SECONDS: f64 = UNIT_MICROS as f64 / 1_000_000.0;

impl Samples {
    fn record(&mut self, micros: u32) {
        match self {
            Samples::Sparse(values) if values.len() + 1 < DENSE_AT => values.push(micros),
            Samples::Sparse(values) => {
                let mut hist = Histogram::<u16>::new(SIGNIFICANT_DIGITS)
                    .expect("2 significant digits are valid");
                for &v in values.iter().chain(std::iter::once(&micros)) {
                    record_n(&mut hist, units(v), 1);
                }
                *self = Samples::Dense(Box::new(hist));
            }
            Samples::Dense(hist) => record_n(hist, units(micros), 1),
        }
    }

    fn add_to(&self, merged: &mut Histogram<u64>) {
        match self {
            Samples::Sparse(values) => {
                for &v in values {
                    record_n(merged, units(v), 1);
                }
            }
            Samples::Dense(hist) => {
                for bucket in hist.iter_recorded() {
                    record_n(
                        merged,
                        bucket.value_iterated_to(),
                        u64::from(bucket.count_at_value()),
                    );
                }
            }
        }
    }
}

/// Records into an auto-resizing histogram, which only refuses values near `u64::MAX`; such a
/// value (impossible here: durations are `u32` microseconds) is clamped rather than lost.
fn record_n<T: hdrhistogram::Counter>(hist: &mut Histogram<T>, value: u64, count: T) {
    if hist.record_n(value, count).is_err() {
        hist.saturating_record_n(value, count);
    }
}

fn units(micros: u32) -> u64 {
    u64::from(micros.saturating_add(UNIT_MICROS / 2) / UNIT_MICROS)
}

fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn slot_start(ms: i64, slot_ms: i64) -> i64 {
    ms.div_euclid(slot_ms) * slot_ms
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
        assert_eq!(starts(&h.results_since("p", T0 + 3)), [T0 + 4, T0 + 3]);
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

        // Past DENSE_AT samples, slots are histograms: the same distribution, same answers.
        for _ in 0..2 {
            for ms in 1..=100u64 {
                h.record_at(result("p", Outcome::Pass, T0 - 1_000, ms), now);
            }
        }
        check(300);
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

        // Nothing is older than its window, at any slot alignment.
        let later = T0 + 61_000;
        assert_eq!(h.percentiles_at("p", Window::OneMinute, later), None);
        assert_eq!(
            h.percentiles_at("p", Window::FiveMinutes, T0 + 181_000)
                .map(|p| p.count),
            Some(1)
        );
        assert_eq!(
            h.percentiles_at("p", Window::FiveMinutes, T0 + 301_000),
            None
        );
        // Both runs share a 10-minute slot, which leaves the hour as one.
        assert_eq!(
            h.percentiles_at("p", Window::OneHour, T0 + 3_000_000)
                .map(|p| p.count),
            Some(2)
        );
        assert_eq!(h.percentiles_at("p", Window::OneHour, T0 + 3_601_000), None);

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
        // Only the slot of T0 has expired a minute later.
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
        let steps: Vec<&str> = probes["p"].steps.iter().map(|(n, _)| &**n).collect();
        assert_eq!(steps, ["sign_in"]);
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

    #[test]
    fn window_names() {
        let names: Vec<&str> = Window::all().iter().map(|w| w.as_str()).collect();
        assert_eq!(names, ["1m", "5m", "1h"]);
    }
}
