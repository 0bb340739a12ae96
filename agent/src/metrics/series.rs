//! The `probe_*` series, kept compactly and written straight to the text exposition format.
//!
//! A prometheus `MetricVec` child costs ~0.8 KiB (its own `Desc`, label pairs, two shards of
//! bucket counters), and `Registry::gather` copies every one before encoding. With hundreds of
//! probes and ~250 samples each that was most of the agent's memory. Here each probe is one
//! [`ProbeSeries`]: plain numbers behind a per-probe lock, bucket counts in one boxed slice per
//! histogram, the probe name held once as the map key and each step name once. Families are
//! encoded on demand, probe by probe, into chunks the caller streams out.
//!
//! The output is what the prometheus crate's `TextEncoder` wrote for the same series: families
//! with `# HELP` and `# TYPE` lines, label pairs sorted by name, `le` last, values with Rust's
//! `f64` formatting, families without samples left out.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use patrol_probes::result::{Outcome, Phases, ProbeResult};

use super::{LATENCY_BUCKETS, PHASE_BUCKETS, RUN_RESULTS};

/// Every probe's series, by probe name (sorted, as the exposition lists them).
#[derive(Debug, Default)]
pub(super) struct ProbeSeriesStore {
    probes: RwLock<BTreeMap<Box<str>, Arc<Mutex<ProbeSeries>>>>,
}

/// One probe's series. `None` and absent entries are series that do not exist (yet).
#[derive(Debug, Default)]
struct ProbeSeries {
    /// The `type` label.
    kind: Box<str>,
    /// Created by the probe's first recorded run.
    run: Option<RunSeries>,
    steps: Vec<StepSeries>,
    cert_expiry: Option<f64>,
    tls_version: Option<Box<str>>,
    dns_lookup: Option<f64>,
    vitals: Vec<(Box<str>, Buckets)>,
}

/// Whole-run series.
#[derive(Debug)]
struct RunSeries {
    success: f64,
    duration: f64,
    first_attempt_success: f64,
    all_duration: Buckets,
    /// `probe_runs_total` by [`RUN_RESULTS`] position.
    runs: [u64; RUN_RESULTS.len()],
}

/// One step's series.
#[derive(Debug)]
struct StepSeries {
    name: Box<str>,
    success: f64,
    /// Created when the step first runs (skipped steps are not observed).
    duration: Option<Buckets>,
    status: Option<f64>,
    /// Last run's phases, in [`Phases::NAMES`] order; gone when the last run made no exchange.
    phases: Option<[f64; 5]>,
    /// Every run's phases, in [`Phases::NAMES`] order.
    all_phases: Option<Box<[Buckets; 5]>>,
}

/// A histogram's counts: per bucket (not cumulative), plus sum and count.
///
/// Only buckets that have counts are stored: a probe's latencies fall into a few of the 13–21
/// buckets (an HTTP step's resolve, connect and tls phases nearly always into the first), and a
/// dense array of every bucket was most of the store — 0.7 KiB per HTTP step, against ~0.2 KiB
/// now. The output is the same either way: empty buckets print the running total.
#[derive(Debug, Default)]
struct Buckets {
    /// The buckets with counts, by ascending bucket index, each packed as
    /// `index << COUNT_BITS | count`. Grows by one entry when a bucket is first hit.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

/// Low bits of a [`Buckets`] entry that hold its count: 2^56 observations are 2 billion years
/// of one a second. The high 8 bits hold the bucket index (histograms have fewer than 256).
const COUNT_BITS: u32 = 56;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl Buckets {
    /// Counts `v` in the first bucket whose upper bound is at least `v`, as prometheus does
    /// (values above every bound, and NaN, only count in `+Inf`, sum and count).
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if let Some(i) = bounds.iter().position(|b| v <= *b)
            && let Ok(index) = u64::try_from(i)
        {
            self.count_in(index);
        }
        self.sum += v;
        self.count += 1;
    }

    fn count_in(&mut self, index: u64) {
        match self
            .counts
            .binary_search_by_key(&index, |e| e >> COUNT_BITS)
        {
            Ok(at) => {
                let entry = &mut self.counts[at];
                // Saturates rather than spill into the index bits (see COUNT_BITS).
                if *entry & COUNT_MASK < COUNT_MASK {
                    *entry += 1;
                }
            }
            Err(at) => {
                // At most once per bucket over the histogram's life: an exact-size slice.
                let mut counts = Vec::with_capacity(self.counts.len() + 1);
                counts.extend_from_slice(&self.counts[..at]);
                counts.push(index << COUNT_BITS | 1);
                counts.extend_from_slice(&self.counts[at..]);
                self.counts = counts.into_boxed_slice();
            }
        }
    }

    /// The cumulative count at each of `bounds`' buckets, in order.
    fn cumulative<'a>(&'a self, bounds: &'a [f64]) -> impl Iterator<Item = (f64, u64)> + 'a {
        let mut entries = self.counts.iter().peekable();
        let mut total = 0;
        bounds.iter().enumerate().map(move |(i, bound)| {
            if let Some(entry) = entries.next_if(|e| *e >> COUNT_BITS == i as u64) {
                total += entry & COUNT_MASK;
            }
            (*bound, total)
        })
    }
}

impl ProbeSeriesStore {
    /// Records one finished run (see `Metrics::record_run`).
    pub(super) fn record_run(&self, result: &ProbeResult) {
        self.with_probe(&result.name, |p| p.record_run(result));
    }

    /// Records one browser timing.
    #[cfg(test)]
    pub(super) fn record_web_vital(&self, probe: &str, vital: &str, seconds: f64) {
        self.with_probe(probe, |p| p.record_web_vital(vital, seconds));
    }

    /// Drops every series of `probe`.
    pub(super) fn forget(&self, probe: &str) {
        self.probes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(probe);
    }

    /// Drops the series of `probe`'s steps that are not in `steps`.
    pub(super) fn keep_steps(&self, probe: &str, steps: &[&str]) {
        let probes = self.probes.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = probes.get(probe) {
            let mut series = series.lock().unwrap_or_else(PoisonError::into_inner);
            series.steps.retain(|s| steps.contains(&&*s.name));
        }
    }

    fn with_probe(&self, probe: &str, f: impl FnOnce(&mut ProbeSeries)) {
        {
            let probes = self.probes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = probes.get(probe) {
                f(&mut series.lock().unwrap_or_else(PoisonError::into_inner));
                return;
            }
        }
        let mut probes = self.probes.write().unwrap_or_else(PoisonError::into_inner);
        let series = probes.entry(probe.into()).or_default();
        f(&mut series.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Writes every family into `out`, calling `flush` whenever `out` holds `chunk` bytes or
    /// more after a probe's lines (and not at the end: the caller takes what is left).
    ///
    /// `flush` may block (it hands the text to a scraper that reads at its own pace), so no
    /// lock is held while it runs: the probe list is copied first, and each probe's lock is
    /// held only while its lines of one family are written. Runs recording meanwhile wait for
    /// one probe's lines at most, never for the scraper.
    pub(super) fn encode(
        &self,
        location: &str,
        out: &mut String,
        chunk: usize,
        flush: &mut dyn FnMut(&mut String),
    ) {
        let probes: Vec<(Box<str>, Arc<Mutex<ProbeSeries>>)> = self
            .probes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, series)| (name.clone(), Arc::clone(series)))
            .collect();
        let mut w = Writer {
            out,
            chunk,
            flush,
            name: "",
            flushed: false,
        };
        let location = escape(location);
        for family in FAMILIES {
            w.family(family, &location, &probes);
        }
    }
}

impl ProbeSeries {
    fn record_run(&mut self, result: &ProbeResult) {
        if *self.kind != *result.kind {
            // A reload gave the name to a probe of another type: its series start afresh.
            *self = ProbeSeries {
                kind: result.kind.as_str().into(),
                ..ProbeSeries::default()
            };
        }
        let seconds = result.duration.as_secs_f64();
        let run = self.run.get_or_insert_with(|| RunSeries {
            success: 0.0,
            duration: 0.0,
            first_attempt_success: 0.0,
            all_duration: Buckets::default(),
            runs: [0; RUN_RESULTS.len()],
        });
        run.success = bool_value(result.result.is_pass());
        run.duration = seconds;
        run.first_attempt_success = bool_value(result.first_attempt.is_pass());
        run.all_duration.observe(LATENCY_BUCKETS, seconds);
        if let Some(i) = RUN_RESULTS.iter().position(|o| *o == result.result) {
            run.runs[i] += 1;
        }

        let http = result.kind == "http";
        for step in &result.steps {
            let series = match self.steps.iter().position(|s| *s.name == *step.name) {
                Some(i) => &mut self.steps[i],
                None => {
                    // One at a time: a probe has a handful of steps, and a Vec left to itself
                    // would make room for 4 on its first push.
                    self.steps.reserve_exact(1);
                    self.steps.push(StepSeries {
                        name: step.name.as_str().into(),
                        success: 0.0,
                        duration: None,
                        status: None,
                        phases: None,
                        all_phases: None,
                    });
                    let last = self.steps.len() - 1;
                    &mut self.steps[last]
                }
            };
            series.success = bool_value(step.result.is_pass());
            if step.result != Outcome::Skipped {
                series
                    .duration
                    .get_or_insert_default()
                    .observe(LATENCY_BUCKETS, step.duration.as_secs_f64());
            }
            match &step.phases {
                Some(phases) => {
                    let seconds = phases.iter().map(|(_, d)| d.as_secs_f64());
                    let all = series.all_phases.get_or_insert_with(|| {
                        Box::new(std::array::from_fn(|_| Buckets::default()))
                    });
                    let mut last = [0.0; 5];
                    for ((slot, buckets), v) in last.iter_mut().zip(all.iter_mut()).zip(seconds) {
                        *slot = v;
                        buckets.observe(PHASE_BUCKETS, v);
                    }
                    series.phases = Some(last);
                }
                // "Last run" gauges of a step that made no exchange this run would be stale.
                None => series.phases = None,
            }
            // Like blackbox_exporter, 0 says "no response" for HTTP steps that got none.
            match step.status {
                Some(code) => series.status = Some(f64::from(code)),
                None if http => series.status = Some(0.0),
                None => {}
            }
            for (vital, seconds) in step.vitals.iter().flat_map(|v| v.iter()) {
                self.record_web_vital(vital, seconds);
            }
        }

        // A failed run keeps the last known expiry: an outage must not hide a certificate alert.
        if let Some(expiry) = result.earliest_cert_expiry() {
            self.cert_expiry = Some(expiry as f64);
        }
        // Likewise the last version seen stays; one series per probe at a time.
        if let Some(version) = result.tls_version() {
            self.tls_version = Some(version.into());
        }
        if result.kind == "dns"
            && let Some(lookup) = result.lookup_time()
        {
            self.dns_lookup = Some(lookup.as_secs_f64());
        }
    }

    fn record_web_vital(&mut self, vital: &str, seconds: f64) {
        let buckets = match self.vitals.iter().position(|(v, _)| **v == *vital) {
            Some(i) => &mut self.vitals[i].1,
            None => {
                self.vitals.push((vital.into(), Buckets::default()));
                let last = self.vitals.len() - 1;
                &mut self.vitals[last].1
            }
        };
        buckets.observe(LATENCY_BUCKETS, seconds);
    }
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// A metric family of probe series: its name, help, type, and the samples of one probe.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: FamilyKind,
    /// Writes the samples of one probe: (writer, location, probe, series), label values escaped.
    samples: fn(&mut Writer<'_>, &str, &str, &ProbeSeries),
}

#[derive(Clone, Copy)]
enum FamilyKind {
    Counter,
    Gauge,
    Histogram,
}

impl FamilyKind {
    fn as_str(self) -> &'static str {
        match self {
            FamilyKind::Counter => "counter",
            FamilyKind::Gauge => "gauge",
            FamilyKind::Histogram => "histogram",
        }
    }
}

/// Every probe family, in the exposition's order (by name, as `Registry::gather` sorted them).
/// Label pairs are written sorted by name.
const FAMILIES: &[Family] = &[
    Family {
        name: "probe_all_duration_seconds",
        help: "Duration of every run, retries included.",
        kind: FamilyKind::Histogram,
        samples: |w, loc, probe, s| {
            if let Some(run) = &s.run {
                let labels = [("location", loc), ("probe", probe), ("type", &*s.kind)];
                w.histogram(&labels, LATENCY_BUCKETS, &run.all_duration);
            }
        },
    },
    Family {
        name: "probe_browser_web_vital_seconds",
        help: "Browser timings: ttfb, fcp, lcp, dom_content_loaded, load.",
        kind: FamilyKind::Histogram,
        samples: |w, loc, probe, s| {
            for (vital, buckets) in &s.vitals {
                let vital = escape(vital);
                let labels = [("location", loc), ("probe", probe), ("vital", &*vital)];
                w.histogram(&labels, LATENCY_BUCKETS, buckets);
            }
        },
    },
    Family {
        name: "probe_dns_lookup_time_seconds",
        help: "Time the last run of a dns probe spent on its queries.",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            if let Some(v) = s.dns_lookup {
                let labels = [("location", loc), ("probe", probe)];
                w.sample("", &labels, None, v);
            }
        },
    },
    Family {
        name: "probe_duration_seconds",
        help: "Duration of the last run, retries included.",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            if let Some(run) = &s.run {
                let labels = [("location", loc), ("probe", probe), ("type", &*s.kind)];
                w.sample("", &labels, None, run.duration);
            }
        },
    },
    Family {
        name: "probe_first_attempt_success",
        help: "Whether the last run passed without a retry (1) or not (0).",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            if let Some(run) = &s.run {
                let labels = [("location", loc), ("probe", probe), ("type", &*s.kind)];
                w.sample("", &labels, None, run.first_attempt_success);
            }
        },
    },
    Family {
        name: "probe_http_all_duration_seconds",
        help: "Network phase durations of the step over every run.",
        kind: FamilyKind::Histogram,
        samples: |w, loc, probe, s| {
            for step in &s.steps {
                let Some(all) = &step.all_phases else {
                    continue;
                };
                let name = escape(&step.name);
                for (phase, buckets) in Phases::NAMES.iter().zip(all.iter()) {
                    let labels = [
                        ("location", loc),
                        ("phase", *phase),
                        ("probe", probe),
                        ("step", &*name),
                    ];
                    w.histogram(&labels, PHASE_BUCKETS, buckets);
                }
            }
        },
    },
    Family {
        name: "probe_http_duration_seconds",
        help: "Network phase durations of the step in the last run: resolve, connect, tls, \
               processing, transfer.",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            for step in &s.steps {
                let Some(last) = &step.phases else { continue };
                let name = escape(&step.name);
                for (phase, v) in Phases::NAMES.iter().zip(last) {
                    let labels = [
                        ("location", loc),
                        ("phase", *phase),
                        ("probe", probe),
                        ("step", &*name),
                    ];
                    w.sample("", &labels, None, *v);
                }
            }
        },
    },
    Family {
        name: "probe_http_status_code",
        help: "HTTP status of the step in the last run (0 when no response).",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            for step in &s.steps {
                let Some(status) = step.status else { continue };
                let name = escape(&step.name);
                let labels = [("location", loc), ("probe", probe), ("step", &*name)];
                w.sample("", &labels, None, status);
            }
        },
    },
    Family {
        name: "probe_runs_total",
        help: "Runs by result: pass, fail, error, timeout.",
        kind: FamilyKind::Counter,
        samples: |w, loc, probe, s| {
            // Every result exists at zero from the first run, so increase() sees the first
            // failure.
            if let Some(run) = &s.run {
                for (outcome, n) in RUN_RESULTS.iter().zip(run.runs) {
                    let labels = [
                        ("location", loc),
                        ("probe", probe),
                        ("result", outcome.as_str()),
                        ("type", &*s.kind),
                    ];
                    w.sample("", &labels, None, n as f64);
                }
            }
        },
    },
    Family {
        name: "probe_ssl_earliest_cert_expiry",
        help: "Unix seconds at which the earliest certificate seen by the probe expires.",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            if let Some(v) = s.cert_expiry {
                let labels = [("location", loc), ("probe", probe)];
                w.sample("", &labels, None, v);
            }
        },
    },
    Family {
        name: "probe_step_duration_seconds",
        help: "Duration of every step that ran (skipped steps are not observed).",
        kind: FamilyKind::Histogram,
        samples: |w, loc, probe, s| {
            for step in &s.steps {
                let Some(buckets) = &step.duration else {
                    continue;
                };
                let name = escape(&step.name);
                let labels = [
                    ("location", loc),
                    ("probe", probe),
                    ("step", &*name),
                    ("type", &*s.kind),
                ];
                w.histogram(&labels, LATENCY_BUCKETS, buckets);
            }
        },
    },
    Family {
        name: "probe_step_success",
        help: "Whether the step passed in the last run (1) or not (0, also when skipped).",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            for step in &s.steps {
                let name = escape(&step.name);
                let labels = [
                    ("location", loc),
                    ("probe", probe),
                    ("step", &*name),
                    ("type", &*s.kind),
                ];
                w.sample("", &labels, None, step.success);
            }
        },
    },
    Family {
        name: "probe_success",
        help: "Whether the last run passed (1) or not (0).",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            if let Some(run) = &s.run {
                let labels = [("location", loc), ("probe", probe), ("type", &*s.kind)];
                w.sample("", &labels, None, run.success);
            }
        },
    },
    Family {
        name: "probe_tls_version_info",
        help: "1, labelled with the TLS version the probe last negotiated.",
        kind: FamilyKind::Gauge,
        samples: |w, loc, probe, s| {
            if let Some(version) = &s.tls_version {
                let version = escape(version);
                let labels = [("location", loc), ("probe", probe), ("version", &*version)];
                w.sample("", &labels, None, 1.0);
            }
        },
    },
];

/// Writes families into a buffer handed out in chunks.
struct Writer<'a> {
    out: &'a mut String,
    chunk: usize,
    flush: &'a mut dyn FnMut(&mut String),
    /// The family being written.
    name: &'static str,
    /// Whether part of the family being written has been handed out.
    flushed: bool,
}

impl Writer<'_> {
    fn family(
        &mut self,
        family: &Family,
        location: &str,
        probes: &[(Box<str>, Arc<Mutex<ProbeSeries>>)],
    ) {
        // The header goes out only with the family's first sample.
        let header_at = self.out.len();
        let _ = writeln!(self.out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(self.out, "# TYPE {} {}", family.name, family.kind.as_str());
        let header_end = self.out.len();
        self.flushed = false;
        for (probe, series) in probes {
            {
                let series = series.lock().unwrap_or_else(PoisonError::into_inner);
                self.name = family.name;
                (family.samples)(self, location, &escape(probe), &series);
            }
            // The probe's lock is released: handing the text out may block.
            if self.out.len() >= self.chunk {
                (self.flush)(self.out);
                self.flushed = true;
            }
        }
        if !self.flushed && self.out.len() == header_end {
            self.out.truncate(header_at);
        }
    }

    /// One sample line: name, suffix, labels (sorted by name), an extra label last, value.
    fn sample(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        value: f64,
    ) {
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        let mut separator = '{';
        for (label, text) in labels.iter().chain(extra.as_ref()) {
            out.push(separator);
            out.push_str(label);
            out.push_str("=\"");
            out.push_str(text);
            out.push('"');
            separator = ',';
        }
        if separator == ',' {
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }

    /// A histogram's `_bucket` (cumulative, `+Inf` last), `_sum` and `_count` lines.
    fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], buckets: &Buckets) {
        let mut le = String::new();
        for (bound, cumulative) in buckets.cumulative(bounds) {
            le.clear();
            let _ = write!(le, "{bound}");
            self.sample("_bucket", labels, Some(("le", &le)), cumulative as f64);
        }
        self.sample(
            "_bucket",
            labels,
            Some(("le", "+Inf")),
            buckets.count as f64,
        );
        self.sample("_sum", labels, None, buckets.sum);
        self.sample("_count", labels, None, buckets.count as f64);
    }
}

/// A label value escaped for the text format: backslash, newline and double quote.
fn escape(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '\n', '"']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cumulative counts of a dense array of every bucket, as the store kept them before.
    fn dense_cumulative(bounds: &[f64], values: &[f64]) -> Vec<(f64, u64)> {
        let mut counts = vec![0u64; bounds.len()];
        for v in values {
            if let Some(i) = bounds.iter().position(|b| v <= b) {
                counts[i] += 1;
            }
        }
        let mut total = 0;
        bounds
            .iter()
            .zip(counts)
            .map(|(b, c)| {
                total += c;
                (*b, total)
            })
            .collect()
    }

    #[test]
    fn sparse_buckets_count_like_a_dense_array() {
        // Buckets hit out of order, repeatedly, on bounds, between them, above the last bound
        // (only +Inf, sum and count) and NaN.
        let values = [
            0.3,
            0.0001,
            7.5,
            0.3,
            0.011,
            31.0,
            0.005,
            0.0049,
            29.9,
            0.3,
            1.0,
            0.2,
            0.0,
            f64::NAN,
            30.0,
            0.011,
        ];
        for bounds in [LATENCY_BUCKETS, PHASE_BUCKETS] {
            let mut buckets = Buckets::default();
            for (n, v) in values.iter().enumerate() {
                buckets.observe(bounds, *v);
                let cumulative: Vec<_> = buckets.cumulative(bounds).collect();
                assert_eq!(
                    cumulative,
                    dense_cumulative(bounds, &values[..=n]),
                    "after {n}"
                );
            }
            assert_eq!(buckets.count, values.len() as u64);
            // Entries stay sorted by bucket, one per bucket hit.
            let indices: Vec<u64> = buckets.counts.iter().map(|e| e >> COUNT_BITS).collect();
            assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
        }
    }

    #[test]
    fn an_empty_histogram_allocates_nothing_and_counts_zero() {
        let buckets = Buckets::default();
        assert!(buckets.counts.is_empty());
        assert!(buckets.cumulative(LATENCY_BUCKETS).all(|(_, c)| c == 0));
    }
}
