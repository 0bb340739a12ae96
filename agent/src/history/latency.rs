//! One probe's latency windows: the durations of its runs and of each of its steps over the last
//! minute, five minutes and hour, with p50/p95/p99 on demand, in bounded memory.
//!
//! A run is one row of `u16`s: when it started (in seconds) and the duration of the run and of
//! every step, each on a log scale (values 0.02% apart, 1 µs to 71 min). That is 8 bytes for a
//! two-step run, where one sample per window per series used to cost 4 bytes plus a slot each.
//! The three windows read the same rows: a run counts in a window when it started less than the
//! window's length ago, so each window is exactly its length, not a whole number of slots.
//!
//! Rows are kept for an hour, at most [`ROWS`] of them. The runs of a busier probe (more than
//! 1,024 in an hour: every 3.5 s or more often) leave the rows oldest first into HDR histograms,
//! one per 10-minute slot and column. A slot counts in a window as a whole while any of it is in
//! the window. So memory stays bounded at any schedule: rows ≤ 1,024 × (2 + steps) × 2 bytes,
//! plus ≤ 7 slots × (1 + steps) histograms of 0.5–3.3 KiB each.

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use patrol_probes::result::{Outcome, ProbeResult};
use serde::Serialize;

/// A sliding window for latency percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The last minute.
    OneMinute,
    /// The last five minutes.
    FiveMinutes,
    /// The last hour.
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

    fn seconds(self) -> i64 {
        match self {
            Window::OneMinute => 60,
            Window::FiveMinutes => 300,
            Window::OneHour => HOUR_S,
        }
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

/// The longest window, which decides how long a row is kept.
const HOUR_S: i64 = 3_600;
/// Rows a probe keeps before its oldest go into the overflow histograms.
pub(super) const ROWS: usize = 1_024;
/// Length of an overflow slot.
const SLOT_S: i64 = 600;
/// A step that did not run.
const NONE: u16 = u16::MAX;
/// Codes per natural-log unit: `ln(u32::MAX) × SCALE` = 64,324 stays below [`NONE`].
const SCALE: f64 = 2_900.0;
/// HDR precision: values are kept to within 1%.
const SIGNIFICANT_DIGITS: u8 = 2;
/// Histogram unit: 100 µs, so the counts array stays short (it grows with the largest value).
const UNIT_MICROS: u32 = 100;
const UNIT_SECONDS: f64 = UNIT_MICROS as f64 / 1_000_000.0;

/// The latency rows of one probe. Column 0 is the run, column `i + 1` the step `steps[i]`.
pub(super) struct ProbeLatency {
    /// Step names, in first-seen order.
    steps: Vec<Box<str>>,
    /// Rows in the order recorded, each `[start, run, step…]`: 2 + `steps.len()` codes. The
    /// start is the run's start in seconds, modulo 2¹⁶, relative to `newest_s`.
    rows: VecDeque<u16>,
    /// Per column: the rows with a value plus the overflow slots with a histogram. A step column
    /// at 0 is dropped (a step renamed, or skipped for an hour).
    in_use: Vec<u32>,
    /// Start, in seconds, of the newest run in the rows.
    newest_s: i64,
    /// Older runs of a busy probe, oldest slot first.
    overflow: VecDeque<OverflowSlot>,
}

/// The runs of one 10-minute slot that no longer fit in the rows.
struct OverflowSlot {
    start_s: i64,
    /// Per column, as in [`ProbeLatency::in_use`].
    columns: Vec<Option<Box<Histogram<u16>>>>,
}

impl ProbeLatency {
    /// Adds a finished run, counted at the second it started. Steps that were skipped have no
    /// duration. A run that started an hour or more before `now_ms` counts in no window.
    pub(super) fn record(&mut self, run: &ProbeResult, now_ms: i64) {
        let now_s = now_ms.div_euclid(1000);
        let start_s = run.started_at_ms.div_euclid(1000);
        self.expire(now_s);
        if start_s <= now_s - HOUR_S {
            return;
        }
        let ran = || run.steps.iter().filter(|s| s.result != Outcome::Skipped);
        for step in ran() {
            if self.column(&step.name).is_none() {
                self.add_step(&step.name);
            }
        }
        if self.row_count() >= ROWS {
            self.overflow_oldest();
        }
        if self.rows.is_empty() {
            self.newest_s = start_s;
        }
        self.newest_s = self.newest_s.max(start_s);
        let width = self.width();
        if self.rows.len() + width > self.rows.capacity() {
            let more = self.rows_per_hour().saturating_sub(self.row_count()).max(8);
            self.rows.reserve_exact(more * width);
        }
        let at = self.rows.len();
        self.rows.push_back(wrap(start_s));
        self.rows.push_back(code(run.duration));
        self.rows
            .extend(std::iter::repeat_n(NONE, self.steps.len()));
        self.in_use[0] += 1;
        for step in ran() {
            if let Some(column) = self.column(&step.name)
                && self.rows[at + 1 + column] == NONE
            {
                self.rows[at + 1 + column] = code(step.duration);
                self.in_use[column] += 1;
            }
        }
    }

    /// Percentiles of the run's durations (`step` `None`) or of one step's, over the runs that
    /// started within `window` before `now_ms`; `None` when there were none.
    pub(super) fn percentiles(
        &self,
        step: Option<&str>,
        window: Window,
        now_ms: i64,
    ) -> Option<Percentiles> {
        let column = match step {
            None => 0,
            Some(name) => self.column(name)?,
        };
        let after_s = now_ms.div_euclid(1000) - window.seconds();
        let mut merged =
            Histogram::<u64>::new(SIGNIFICANT_DIGITS).expect("2 significant digits are valid");
        for slot in &self.overflow {
            if slot.start_s + SLOT_S > after_s + 1
                && let Some(hist) = &slot.columns[column]
            {
                for bucket in hist.iter_recorded() {
                    let count = u64::from(bucket.count_at_value());
                    record_n(&mut merged, bucket.value_iterated_to(), count);
                }
            }
        }
        for row in 0..self.row_count() {
            let value = self.rows[row * self.width() + 1 + column];
            if value != NONE && self.start_of(row) > after_s {
                record_n(&mut merged, units(decode(value)), 1);
            }
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

    /// Step names with samples, in first-seen order.
    #[cfg(test)]
    pub(super) fn step_names(&self) -> Vec<&str> {
        self.steps.iter().map(|s| &**s).collect()
    }

    /// How many rows an hour of this probe's runs takes, from the pace of the rows so far, plus
    /// an eighth: the rows grow to that in one step rather than doubling (each step leaves the
    /// old buffer behind as a hole in the heap, which a larger buffer cannot reuse).
    fn rows_per_hour(&self) -> usize {
        let rows = self.row_count();
        if rows < 4 {
            return 8;
        }
        let span_s = self.newest_s - self.start_of(0).min(self.newest_s);
        if span_s <= 0 {
            return 8;
        }
        // rows - 1 intervals in span_s seconds.
        let per_hour = (rows as i64 - 1) * HOUR_S / span_s;
        let per_hour = usize::try_from(per_hour).unwrap_or(ROWS);
        (per_hour + per_hour / 8 + 4).min(ROWS)
    }

    /// Codes per row.
    fn width(&self) -> usize {
        2 + self.steps.len()
    }

    fn row_count(&self) -> usize {
        self.rows.len() / self.width()
    }

    /// Index of a step's column among the values (0 is the run).
    fn column(&self, step: &str) -> Option<usize> {
        self.steps.iter().position(|s| **s == *step).map(|i| i + 1)
    }

    /// When row `row` started, in seconds. Rows span well under 2¹⁶ s (an hour, plus the
    /// duration of a run recorded late), so the offset from the newest start is exact.
    fn start_of(&self, row: usize) -> i64 {
        let back = wrap(self.newest_s).wrapping_sub(self.rows[row * self.width()]);
        self.newest_s - i64::from(back)
    }

    /// Drops the rows and slots that started an hour or more before `now_s`, oldest first, and
    /// then the step columns no longer in use.
    fn expire(&mut self, now_s: i64) {
        while self.row_count() > 0 && self.start_of(0) <= now_s - HOUR_S {
            self.pop_row();
        }
        while let Some(slot) = self
            .overflow
            .pop_front_if(|s| s.start_s + SLOT_S <= now_s - HOUR_S)
        {
            for (column, hist) in slot.columns.iter().enumerate() {
                if hist.is_some() {
                    self.in_use[column] -= 1;
                }
            }
        }
        if self.in_use.iter().skip(1).any(|&n| n == 0) {
            self.drop_unused_steps();
        }
    }

    /// Removes the oldest row.
    fn pop_row(&mut self) {
        for (column, value) in self.rows.drain(..self.width()).skip(1).enumerate() {
            if value != NONE {
                self.in_use[column] -= 1;
            }
        }
    }

    /// Moves the oldest row into the histograms of its 10-minute slot.
    fn overflow_oldest(&mut self) {
        let start = self.start_of(0);
        let width = self.width();
        let slot_start = start.div_euclid(SLOT_S) * SLOT_S;
        let position = self.overflow.iter().rposition(|s| s.start_s <= slot_start);
        let at = match position {
            Some(i) if self.overflow[i].start_s == slot_start => i,
            _ => {
                let at = position.map_or(0, |i| i + 1);
                let columns = (1..width).map(|_| None).collect();
                self.overflow.insert(
                    at,
                    OverflowSlot {
                        start_s: slot_start,
                        columns,
                    },
                );
                at
            }
        };
        // Read in place: a busy probe overflows a row at every run.
        for (column, &value) in self.rows.range(1..width).enumerate() {
            if value == NONE {
                continue;
            }
            let hist = self.overflow[at].columns[column].get_or_insert_with(|| {
                self.in_use[column] += 1;
                Box::new(
                    Histogram::new(SIGNIFICANT_DIGITS).expect("2 significant digits are valid"),
                )
            });
            record_n(hist, units(decode(value)), 1);
        }
        self.pop_row();
    }

    fn add_step(&mut self, name: &str) {
        let old_width = self.width();
        let from: Vec<Option<usize>> = (0..old_width).map(Some).chain([None]).collect();
        self.relayout(old_width, &from);
        self.steps.push(name.into());
        self.in_use.push(0);
        for slot in &mut self.overflow {
            slot.columns.push(None);
        }
    }

    fn drop_unused_steps(&mut self) {
        let old_width = self.width();
        // Position 0 of a row is the start, position `p` the column `p - 1`.
        let from: Vec<Option<usize>> = (0..old_width)
            .filter(|&p| p < 2 || self.in_use[p - 1] > 0)
            .map(Some)
            .collect();
        self.relayout(old_width, &from);
        let used: Vec<bool> = self
            .in_use
            .iter()
            .enumerate()
            .map(|(c, &n)| c == 0 || n > 0)
            .collect();
        retain_by(&mut self.steps, &used[1..]);
        retain_by(&mut self.in_use, &used);
        for slot in &mut self.overflow {
            retain_by(&mut slot.columns, &used);
        }
    }

    /// Rewrites every row: position `i` of a new row copies position `from[i]` of the old one,
    /// or is empty where that is `None`.
    fn relayout(&mut self, old_width: usize, from: &[Option<usize>]) {
        let rows = self.rows.len() / old_width;
        let mut relaid = VecDeque::with_capacity(rows * from.len());
        for row in 0..rows {
            let old = row * old_width;
            relaid.extend(from.iter().map(|f| f.map_or(NONE, |p| self.rows[old + p])));
        }
        self.rows = relaid;
    }
}

impl Default for ProbeLatency {
    fn default() -> ProbeLatency {
        ProbeLatency {
            steps: Vec::new(),
            rows: VecDeque::new(),
            in_use: vec![0],
            newest_s: 0,
            overflow: VecDeque::new(),
        }
    }
}

/// Keeps the items whose flag in `keep` (by position) is set.
fn retain_by<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    items.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// The duration as a log-scale code: `ln(µs) × SCALE`, 0 for anything under 1 µs.
fn code(duration: std::time::Duration) -> u16 {
    let micros = u32::try_from(duration.as_micros())
        .unwrap_or(u32::MAX)
        .max(1);
    // At most ln(u32::MAX) × SCALE = 64,324: the cast cannot truncate.
    (f64::from(micros).ln() * SCALE).round() as u16
}

/// Microseconds of a code, to within 0.02%.
fn decode(code: u16) -> u32 {
    // At most e^(64,324 / SCALE) ≈ u32::MAX; a float cast saturates.
    (f64::from(code) / SCALE).exp().round() as u32
}

fn wrap(seconds: i64) -> u16 {
    seconds.rem_euclid(1 << 16) as u16
}

fn units(micros: u32) -> u64 {
    u64::from(micros.saturating_add(UNIT_MICROS / 2) / UNIT_MICROS)
}

/// Records into an auto-resizing histogram, which only refuses values near `u64::MAX`; such a
/// value (impossible here: durations are `u32` microseconds) is clamped rather than lost.
fn record_n<T: hdrhistogram::Counter>(hist: &mut Histogram<T>, value: u64, count: T) {
    if hist.record_n(value, count).is_err() {
        hist.saturating_record_n(value, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_probes::result::StepResult;
    use std::time::Duration;

    /// At the start of a 10-minute slot.
    const T0: i64 = 1_699_999_800_000;

    /// A run started at `started_ms` that took `ms`, with the given steps, each half of it.
    fn run(started_ms: i64, ms: u64, steps: &[&str]) -> ProbeResult {
        ProbeResult {
            id: String::new(),
            name: "p".to_string(),
            kind: "http".to_string(),
            result: Outcome::Pass,
            duration: Duration::from_millis(ms),
            attempts: 1,
            first_attempt: Outcome::Pass,
            started_at_ms: started_ms,
            steps: steps
                .iter()
                .map(|name| StepResult {
                    result: Outcome::Pass,
                    duration: Duration::from_millis(ms / 2),
                    ..StepResult::skipped(*name)
                })
                .collect(),
            retried: Vec::new(),
            error: None,
        }
    }

    /// Records the runs `i` of `runs`, each started at `T0 + i × every_ms`, taking `ms`, and
    /// recorded as it starts.
    fn record_every(
        l: &mut ProbeLatency,
        every_ms: i64,
        runs: std::ops::Range<i64>,
        ms: u64,
        steps: &[&str],
    ) {
        for i in runs {
            let started = T0 + i * every_ms;
            l.record(&run(started, ms, steps), started);
        }
    }

    fn count(l: &ProbeLatency, step: Option<&str>, window: Window, now_ms: i64) -> Option<u64> {
        l.percentiles(step, window, now_ms).map(|p| p.count)
    }

    /// Within the histograms' 1%.
    fn close(actual: &[f64], expected: &[f64]) -> bool {
        actual.len() == expected.len()
            && actual
                .iter()
                .zip(expected)
                .all(|(a, e)| (a - e).abs() <= e * 0.01)
    }

    #[test]
    fn codes_keep_durations_to_a_fiftieth_of_a_percent() {
        for micros in [
            1u64,
            2,
            7,
            99,
            100,
            1_234,
            25_600,
            999_999,
            29_000_000,
            4_000_000_000,
        ] {
            let back = f64::from(decode(code(Duration::from_micros(micros))));
            let error = (back - micros as f64).abs() / micros as f64;
            assert!(error <= 0.0002, "{micros} µs came back as {back}");
        }
        assert_eq!(decode(code(Duration::ZERO)), 1);
        assert!(code(Duration::from_secs(100_000)) < NONE);
    }

    #[test]
    fn a_busy_probe_stays_bounded_and_keeps_its_hour() {
        let mut l = ProbeLatency::default();
        // A run every second for 50 minutes: 3,000 runs, 20, 40, 60 and 80 ms in turn.
        let runs = 3_000;
        for i in 0..runs {
            let started = T0 + i * 1_000;
            l.record(
                &run(started, 20 + 20 * (i as u64 % 4), &["a", "b"]),
                started + 50,
            );
        }
        assert_eq!(l.row_count(), ROWS);
        assert!(l.overflow.len() <= 6, "{} slots", l.overflow.len());
        let now = T0 + runs * 1_000;
        assert_eq!(count(&l, None, Window::OneHour, now), Some(runs as u64));
        assert_eq!(
            count(&l, Some("b"), Window::OneHour, now),
            Some(runs as u64)
        );
        // The short windows are still exact rows: the runs that started less than 60 s ago.
        assert_eq!(count(&l, None, Window::OneMinute, now), Some(59));
        assert_eq!(count(&l, Some("a"), Window::FiveMinutes, now), Some(299));
        let p = l.percentiles(None, Window::OneHour, now);
        let p = p.map(|p| [p.p50, p.p95, p.p99]).unwrap_or_default();
        assert!(close(&p, &[0.04, 0.08, 0.08]), "{p:?}");
        let a = l
            .percentiles(Some("a"), Window::OneHour, now)
            .map_or(0.0, |p| p.p50);
        assert!(close(&[a], &[0.02]), "{a}");
        // Ten minutes on, the runs of the oldest slot have left the hour, and only they.
        let later = T0 + 3_600_000 + 600_000;
        let left = count(&l, None, Window::OneHour, later);
        assert_eq!(left, Some((runs - 600) as u64));
    }

    #[test]
    fn a_step_renamed_keeps_both_names_for_an_hour() {
        let mut l = ProbeLatency::default();
        record_every(&mut l, 1_000, 0..1_500, 10, &["login", "cart"]);
        // The next version renames `cart`.
        record_every(&mut l, 1_000, 1_500..1_600, 30, &["login", "basket"]);
        let now = T0 + 1_600_000;
        assert_eq!(l.step_names(), ["login", "cart", "basket"]);
        assert_eq!(count(&l, Some("login"), Window::OneHour, now), Some(1_600));
        assert_eq!(count(&l, Some("cart"), Window::OneHour, now), Some(1_500));
        assert_eq!(count(&l, Some("cart"), Window::OneMinute, now), None);
        assert_eq!(count(&l, Some("basket"), Window::OneHour, now), Some(100));
        let basket = l.percentiles(Some("basket"), Window::FiveMinutes, now);
        assert!(
            basket.is_some_and(|p| close(&[p.p99], &[0.015])),
            "{basket:?}"
        );
        // An hour after its last run, `cart` is gone, rows, histograms and all.
        let later = T0 + 1_500_000 + 3_600_000;
        l.record(&run(later, 30, &["login", "basket"]), later);
        assert_eq!(l.step_names(), ["login", "basket"]);
        assert_eq!(count(&l, Some("cart"), Window::OneHour, later), None);
        assert_eq!(count(&l, Some("basket"), Window::OneHour, later), Some(100));
        assert!(l.overflow.iter().all(|s| s.columns.len() == 3));
        assert_eq!(l.in_use.len(), 3);
    }

    #[test]
    fn rows_cost_two_bytes_a_value() {
        let mut l = ProbeLatency::default();
        record_every(&mut l, 10_000, 0..360, 10, &["a", "b"]);
        // A two-step probe every 10 s: an hour is 360 rows of 4 codes.
        assert_eq!(l.rows.len(), 360 * 4);
        // The buffer grew to an hour's worth and an eighth from the pace of its first rows, and
        // no further.
        let rows = l.rows.capacity() / 4;
        assert!((360..=360 * 9 / 8 + 8).contains(&rows), "{rows}");
        assert!(l.overflow.is_empty());
    }
}
