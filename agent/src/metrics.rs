//! Prometheus metrics: every series Patrol exports is defined here, once.
//!
//! [`Metrics`] is created at start-up and shared as `Arc<Metrics>`; callers record intent
//! (`record_run(&result)`, `record_skip`, `record_reload`) instead of touching the registry.
//! Probe series keep the blackbox_exporter / Grafana Synthetic Monitoring names (`probe_*`);
//! the agent's own series are `patrol_*`. Labels are bounded: probe, step, phase, location,
//! type, result and a few fixed vocabularies; never a URL, error text or user data.
//!
//! The `probe_*` series live in a compact store of their own (`series`), written straight to
//! text; the agent's few `patrol_*` series use the prometheus crate's registry.
//!
//! Every metric has a fixed label set. `track` (stable/canary/baseline) is not a label yet:
//! runs recorded with a track share the untracked series.

mod series;

use std::collections::HashMap;
use std::time::Duration;

use patrol_probes::result::{Outcome, ProbeResult};
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use series::ProbeSeriesStore;

/// Buckets for whole-probe, step and web-vital latencies: synthetic checks take 5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
    10.0, 15.0, 20.0, 30.0,
];

/// Buckets for network phases: coarser than [`LATENCY_BUCKETS`] because there are five phase
/// histograms per step (the largest family by far), and starting lower because resolve and
/// connect are often under 5 ms.
const PHASE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for scheduler lag: normally sub-millisecond, seconds when the agent is overloaded.
const LAG_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The outcomes a run is counted under in `probe_runs_total`; each is created at zero on a
/// probe's first run so `increase()` sees the first failure.
const RUN_RESULTS: [Outcome; 4] = [
    Outcome::Pass,
    Outcome::Fail,
    Outcome::Error,
    Outcome::Timeout,
];

/// Buckets for the wait for a run slot: none at all unless `max_concurrency` runs are already
/// going, then up to a run's length.
const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bytes of exposition text handed out at a time by [`Metrics::render_chunks`]: small enough
/// that a scrape of thousands of probes never holds the whole text, large enough to be cheap
/// (~1,600 pieces for 500 two-step probes).
///
/// The pieces live in the heap while they wait for the scraper: the renderer's buffer, one in
/// the channel, and up to 16 queued in hyper's write buffer. glibc keeps whatever heap that
/// took, so it is resident after the scrape. With 64 KiB pieces each scrape left ~0.4 MiB
/// more; with 8 KiB it leaves ~10 KiB (`bench/rss_500.sh`, BENCHMARKS.md §4).
pub const RENDER_CHUNK_BYTES: usize = 8 * 1024;

/// Every metric Patrol exports: the `probe_*` series in a compact store of their own, the
/// agent's `patrol_*` series in a prometheus registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The `location` label value of every probe series.
    location: String,
    /// Every `probe_*` series (labels probe and location, plus step, phase, type, result,
    /// vital or version where they apply).
    probes: ProbeSeriesStore,

    // patrol_*
    runs_skipped: IntCounterVec,
    scheduler_lag: Histogram,
    run_queue_wait: Histogram,
    runs_in_flight: IntGauge,
    build_info: IntGaugeVec,
    config_reloads: IntCounterVec,
    config_last_reload_success: Gauge,
    deploy_verifications: IntCounterVec,
    rollback_actions: IntCounterVec,
    deploy_info: IntGaugeVec,
    deploy_timestamp: Gauge,
}

impl Metrics {
    /// Creates and registers every metric; `location` labels all probe series.
    pub fn new(location: &str) -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Metrics {
            location: location.to_string(),
            probes: ProbeSeriesStore::default(),
            runs_skipped: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "patrol_runs_skipped_total",
                        "Scheduled runs not started, by reason.",
                    ),
                    &["probe", "reason"],
                ),
            ),
            scheduler_lag: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "patrol_scheduler_lag_seconds",
                        "How late runs are fired compared to their schedule (before any wait \
                         for a run slot: see patrol_run_queue_wait_seconds).",
                    )
                    .buckets(LAG_BUCKETS.to_vec()),
                ),
            ),
            run_queue_wait: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "patrol_run_queue_wait_seconds",
                        "How long runs waited for a slot (agent.max_concurrency) between being \
                         fired and starting.",
                    )
                    .buckets(QUEUE_WAIT_BUCKETS.to_vec()),
                ),
            ),
            runs_in_flight: register(
                r,
                IntGauge::new("patrol_runs_in_flight", "Probe runs in progress."),
            ),
            build_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new("patrol_build_info", "Always 1; labelled with the build."),
                    &["version"],
                ),
            ),
            config_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "patrol_config_reload_total",
                        "Config reloads by result: success, failure.",
                    ),
                    &["result"],
                ),
            ),
            config_last_reload_success: register(
                r,
                Gauge::new(
                    "patrol_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config load.",
                ),
            ),
            deploy_verifications: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "patrol_deploy_verification_total",
                        "Deploy verifications by verdict: pass, fail, inconclusive.",
                    ),
                    &["verdict"],
                ),
            ),
            rollback_actions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "patrol_rollback_actions_total",
                        "Rollback actions by result.",
                    ),
                    &["result"],
                ),
            ),
            deploy_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "patrol_deploy_info",
                        "Always 1; labelled with the last deploy seen.",
                    ),
                    &["version", "environment"],
                ),
            ),
            deploy_timestamp: register(
                r,
                Gauge::new(
                    "patrol_deploy_timestamp_seconds",
                    "Unix time at which the last deploy was seen.",
                ),
            ),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Zero-valued series exist from the start so rate() and increase() see the first event.
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        for verdict in ["pass", "fail", "inconclusive"] {
            metrics.deploy_verifications.with_label_values(&[verdict]);
        }
        metrics
    }

    /// Records one finished run: every `probe_*` series of the probe and its steps.
    ///
    /// `_track` (stable/canary/baseline) is accepted for the callers' sake but not a label yet.
    pub fn record_run(&self, result: &ProbeResult, _track: Option<&str>) {
        self.probes.record_run(result);
    }

    /// Records one browser timing (`ttfb`, `fcp`, `lcp`, `dom_content_loaded`, `load`); runs
    /// record theirs through [`Metrics::record_run`].
    #[cfg(test)]
    pub fn record_web_vital(&self, probe: &str, vital: &str, seconds: f64) {
        self.probes.record_web_vital(probe, vital, seconds);
    }

    /// Counts a scheduled run that was not started; `reason` is a fixed word such as
    /// `overlap` or `shutdown`, never error text.
    pub fn record_skip(&self, probe: &str, reason: &str) {
        self.runs_skipped.with_label_values(&[probe, reason]).inc();
    }

    /// Records how late a run was fired compared to its schedule.
    pub fn record_scheduler_lag(&self, lag: Duration) {
        self.scheduler_lag.observe(lag.as_secs_f64());
    }

    /// Records how long a fired run waited for a run slot before it started.
    pub fn record_queue_wait(&self, wait: Duration) {
        self.run_queue_wait.observe(wait.as_secs_f64());
    }

    /// A run started: `patrol_runs_in_flight` goes up.
    pub fn run_started(&self) {
        self.runs_in_flight.inc();
    }

    /// A run finished: `patrol_runs_in_flight` goes down.
    pub fn run_finished(&self) {
        self.runs_in_flight.dec();
    }

    /// Counts a config reload; a successful one also sets the last-success timestamp to now.
    pub fn record_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        if success {
            self.config_last_reload_success.set(unix_now_seconds());
        }
    }

    /// Counts a deploy verification by verdict (`pass`, `fail`, `inconclusive`).
    pub fn record_verdict(&self, verdict: &str) {
        self.deploy_verifications
            .with_label_values(&[verdict])
            .inc();
    }

    /// Counts a rollback action by result (e.g. `success`, `failure`, `dry_run`).
    pub fn record_rollback_action(&self, result: &str) {
        self.rollback_actions.with_label_values(&[result]).inc();
    }

    /// Records the deploy now being verified: `patrol_deploy_info` holds only this one, and
    /// `patrol_deploy_timestamp_seconds` is set to now.
    pub fn record_deploy(&self, version: &str, environment: &str) {
        // One series at a time: versions are unbounded over the agent's life.
        self.deploy_info.reset();
        self.deploy_info
            .with_label_values(&[version, environment])
            .set(1);
        self.deploy_timestamp.set(unix_now_seconds());
    }

    /// Removes every series labelled `probe=<probe>` (all steps, phases, results, vitals and
    /// skip reasons), for probes a config reload removed.
    ///
    /// A run of that probe still in flight would create its series again when recorded; the
    /// runner should not record runs of probes it no longer has.
    pub fn forget_probe(&self, probe: &str) {
        self.probes.forget(probe);
        forget_in(&self.runs_skipped, probe);
    }

    /// Removes the step series (`step=<name>`) of `probe` whose step is not among `steps`, for
    /// steps a config reload renamed or removed; the probe's other series stay.
    pub fn keep_steps(&self, probe: &str, steps: &[&str]) {
        self.probes.keep_steps(probe, steps);
    }

    /// Every metric in the Prometheus text exposition format (`text/plain; version=0.0.4`), as
    /// one string, for tests; the server streams [`Metrics::render_chunks`].
    #[cfg(test)]
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_chunks(usize::MAX, &mut |chunk| out.push_str(chunk));
        out
    }

    /// The exposition in pieces of about `chunk` bytes, each passed to `emit`: the agent's own
    /// series first, then the probe families. Only one piece is held at a time.
    pub fn render_chunks(&self, chunk: usize, emit: &mut dyn FnMut(&str)) {
        let mut out = String::with_capacity(chunk.min(RENDER_CHUNK_BYTES) + 4096);
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "Metrics encoding failed.");
        }
        let mut flush = |buf: &mut String| {
            emit(buf);
            buf.clear();
        };
        self.probes
            .encode(&self.location, &mut out, chunk, &mut flush);
        if !out.is_empty() {
            emit(&out);
        }
    }
}

/// Registers a metric that was just built from static, valid definitions.
fn register<C>(registry: &Registry, metric: prometheus::Result<C>) -> C
where
    C: Collector + Clone + 'static,
{
    let metric = metric.expect("metric definitions are static and valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once, in Metrics::new");
    metric
}

/// Removes from `vec` every child whose `probe` label is `probe`, whatever its other labels.
fn forget_in<T: MetricVecBuilder>(vec: &MetricVec<T>, probe: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels = metric.get_label();
            if labels
                .iter()
                .any(|l| l.name() == "probe" && l.value() == probe)
            {
                let labels: HashMap<&str, &str> =
                    labels.iter().map(|l| (l.name(), l.value())).collect();
                // Err only says the series is already gone (a concurrent forget).
                let _ = vec.remove(&labels);
            }
        }
    }
}

fn unix_now_seconds() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_probes::result::{Phases, StepResult};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn phases() -> Phases {
        Phases {
            resolve: ms(1),
            connect: ms(2),
            tls: ms(4),
            processing: ms(125),
            transfer: ms(8),
        }
    }

    fn step(name: &str, result: Outcome, millis: u64, status: Option<u16>) -> StepResult {
        StepResult {
            result,
            duration: ms(millis),
            status,
            phases: status.map(|_| phases()),
            ..StepResult::skipped(name)
        }
    }

    fn run(result: Outcome, first: Outcome, millis: u64, steps: Vec<StepResult>) -> ProbeResult {
        ProbeResult {
            id: String::new(),
            name: "p".to_string(),
            kind: "http".to_string(),
            result,
            duration: ms(millis),
            attempts: if first == result { 1 } else { 2 },
            first_attempt: first,
            started_at_ms: 1_700_000_000_000,
            steps,
            retried: Vec::new(),
            error: None,
        }
    }

    fn all_pass() -> Vec<StepResult> {
        vec![
            step("login", Outcome::Pass, 250, Some(200)),
            step("cart", Outcome::Pass, 125, Some(201)),
            step("checkout", Outcome::Pass, 500, Some(200)),
        ]
    }

    /// The value of the one line starting with `series ` (name and labels, exactly).
    fn value(text: &str, series: &str) -> Option<String> {
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
    }

    fn assert_value(text: &str, series: &str, expected: &str) {
        assert_eq!(
            value(text, series).as_deref(),
            Some(expected),
            "{series} in:\n{text}"
        );
    }

    #[test]
    fn scripted_runs_give_exact_values() {
        let m = Metrics::new("eu");

        // 1: pass, with a certificate on two steps.
        let mut first = run(Outcome::Pass, Outcome::Pass, 500, all_pass());
        first.steps[0].cert_not_after = Some(1_900_000_000);
        first.steps[1].cert_not_after = Some(1_800_000_000);
        m.record_run(&first, None);
        let text = m.render();
        assert_value(
            &text,
            r#"probe_ssl_earliest_cert_expiry{location="eu",probe="p"}"#,
            "1800000000",
        );
        // Every result series exists at zero from the first run.
        assert_value(
            &text,
            r#"probe_runs_total{location="eu",probe="p",result="fail",type="http"}"#,
            "0",
        );

        // 2: fail at cart, checkout skipped.
        let fail = run(
            Outcome::Fail,
            Outcome::Fail,
            1000,
            vec![
                step("login", Outcome::Pass, 250, Some(200)),
                step("cart", Outcome::Fail, 500, Some(500)),
                StepResult::skipped("checkout"),
            ],
        );
        m.record_run(&fail, None);
        let text = m.render();
        assert_value(
            &text,
            r#"probe_success{location="eu",probe="p",type="http"}"#,
            "0",
        );
        assert_value(
            &text,
            r#"probe_step_success{location="eu",probe="p",step="checkout",type="http"}"#,
            "0",
        );
        assert_value(
            &text,
            r#"probe_step_success{location="eu",probe="p",step="login",type="http"}"#,
            "1",
        );
        assert_value(
            &text,
            r#"probe_http_status_code{location="eu",probe="p",step="cart"}"#,
            "500",
        );
        // The skipped step was not observed: still only run 1's sample.
        assert_value(
            &text,
            r#"probe_step_duration_seconds_count{location="eu",probe="p",step="checkout",type="http"}"#,
            "1",
        );
        // No certificate this run: the last known expiry stays.
        assert_value(
            &text,
            r#"probe_ssl_earliest_cert_expiry{location="eu",probe="p"}"#,
            "1800000000",
        );

        // 3: timeout in login, no response, the rest skipped.
        let mut timeout = run(
            Outcome::Timeout,
            Outcome::Timeout,
            2000,
            vec![
                step("login", Outcome::Timeout, 2000, None),
                StepResult::skipped("cart"),
                StepResult::skipped("checkout"),
            ],
        );
        timeout.error = Some("probe timed out after 2s".to_string());
        m.record_run(&timeout, None);
        let text = m.render();
        assert_value(
            &text,
            r#"probe_http_status_code{location="eu",probe="p",step="login"}"#,
            "0",
        );
        assert_value(
            &text,
            r#"probe_http_status_code{location="eu",probe="p",step="cart"}"#,
            "0",
        );
        // Last-run phase gauges of a step without an exchange are gone, not stale.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("probe_http_duration_seconds{")
                    && l.contains(r#"step="login""#)),
            "{text}"
        );
        assert!(!text.contains("timed out"), "error text leaked: {text}");

        // 4: pass after a retry.
        m.record_run(&run(Outcome::Pass, Outcome::Fail, 1500, all_pass()), None);
        let text = m.render();

        let probe = r#"{location="eu",probe="p",type="http"}"#;
        for (result, count) in [
            ("pass", "2"),
            ("fail", "1"),
            ("error", "0"),
            ("timeout", "1"),
        ] {
            assert_value(
                &text,
                &format!(
                    r#"probe_runs_total{{location="eu",probe="p",result="{result}",type="http"}}"#
                ),
                count,
            );
        }
        assert_value(&text, &format!("probe_success{probe}"), "1");
        assert_value(&text, &format!("probe_first_attempt_success{probe}"), "0");
        assert_value(&text, &format!("probe_duration_seconds{probe}"), "1.5");
        assert_value(
            &text,
            &format!("probe_all_duration_seconds_count{probe}"),
            "4",
        );
        assert_value(
            &text,
            &format!("probe_all_duration_seconds_sum{probe}"),
            "5",
        );
        for (le, count) in [
            ("0.3", "0"),
            ("0.5", "1"),
            ("1", "2"),
            ("1.5", "3"),
            ("2", "4"),
        ] {
            assert_value(
                &text,
                &format!(
                    r#"probe_all_duration_seconds_bucket{{location="eu",probe="p",type="http",le="{le}"}}"#
                ),
                count,
            );
        }

        let checkout = r#"{location="eu",probe="p",step="checkout",type="http"}"#;
        assert_value(&text, &format!("probe_step_success{checkout}"), "1");
        assert_value(
            &text,
            &format!("probe_step_duration_seconds_count{checkout}"),
            "2",
        );
        assert_value(
            &text,
            &format!("probe_step_duration_seconds_sum{checkout}"),
            "1",
        );
        let login = r#"{location="eu",probe="p",step="login",type="http"}"#;
        assert_value(
            &text,
            &format!("probe_step_duration_seconds_count{login}"),
            "4",
        );
        assert_value(
            &text,
            &format!("probe_step_duration_seconds_sum{login}"),
            "2.75",
        );

        // Phases: back for login, observed in the three runs that had an exchange.
        let processing = r#"{location="eu",phase="processing",probe="p",step="login"}"#;
        assert_value(
            &text,
            &format!("probe_http_duration_seconds{processing}"),
            "0.125",
        );
        assert_value(
            &text,
            &format!("probe_http_all_duration_seconds_count{processing}"),
            "3",
        );
        assert_value(
            &text,
            &format!("probe_http_all_duration_seconds_sum{processing}"),
            "0.375",
        );
        for phase in Phases::NAMES {
            assert!(
                value(
                    &text,
                    &format!(
                        r#"probe_http_duration_seconds{{location="eu",phase="{phase}",probe="p",step="cart"}}"#
                    )
                )
                .is_some(),
                "{phase} missing in:\n{text}"
            );
        }
        assert_value(
            &text,
            r#"probe_http_status_code{location="eu",probe="p",step="cart"}"#,
            "201",
        );
        assert_value(
            &text,
            &format!(
                r#"patrol_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            "1",
        );
    }

    #[test]
    fn browser_steps_without_status_get_no_status_series() {
        let m = Metrics::new("eu");
        let mut result = run(
            Outcome::Pass,
            Outcome::Pass,
            800,
            vec![step("goto", Outcome::Pass, 800, None)],
        );
        result.kind = "browser".to_string();
        m.record_run(&result, Some("canary"));
        m.record_web_vital("p", "lcp", 0.75);
        let text = m.render();
        assert!(!text.contains("probe_http_status_code{"), "{text}");
        assert_value(
            &text,
            r#"probe_browser_web_vital_seconds_count{location="eu",probe="p",vital="lcp"}"#,
            "1",
        );
        assert_value(
            &text,
            r#"probe_browser_web_vital_seconds_bucket{location="eu",probe="p",vital="lcp",le="0.75"}"#,
            "1",
        );
        // No track label yet.
        assert!(!text.contains("track="), "{text}");
    }

    #[test]
    fn forget_probe_removes_every_series_of_that_probe_only() {
        let m = Metrics::new("eu");
        let mut p = run(Outcome::Pass, Outcome::Pass, 500, all_pass());
        p.steps[0].cert_not_after = Some(1_900_000_000);
        m.record_run(&p, None);
        let mut q = p.clone();
        q.name = "q".to_string();
        m.record_run(&q, None);
        m.record_skip("p", "overlap");
        m.record_skip("q", "overlap");
        m.record_web_vital("p", "ttfb", 0.1);

        let before = m.render();
        assert!(before.contains(r#"probe="p""#));
        m.forget_probe("p");
        let after = m.render();
        assert!(
            !after.contains(r#"probe="p""#),
            "left behind:\n{}",
            after
                .lines()
                .filter(|l| l.contains(r#"probe="p""#))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // q is untouched, line for line.
        let q_lines = |text: &str| {
            text.lines()
                .filter(|l| l.contains(r#"probe="q""#))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(q_lines(&before), q_lines(&after));
        assert!(!q_lines(&after).is_empty());
        assert_value(
            &after,
            r#"patrol_runs_skipped_total{probe="q",reason="overlap"}"#,
            "1",
        );
        // Forgetting an unknown probe is harmless.
        m.forget_probe("nope");
    }

    #[test]
    fn keep_steps_removes_the_series_of_other_steps_only() {
        let m = Metrics::new("eu");
        m.record_run(&run(Outcome::Pass, Outcome::Pass, 500, all_pass()), None);
        let before = m.render();
        let lines_with = |text: &str, label: &str| {
            text.lines()
                .filter(|l| l.contains(label))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert!(!lines_with(&before, r#"step="cart""#).is_empty());
        // A reload renamed `cart` to `basket` and kept the rest.
        m.keep_steps("p", &["login", "basket", "checkout"]);
        let after = m.render();
        assert_eq!(lines_with(&after, r#"step="cart""#), Vec::<String>::new());
        for kept in [r#"step="login""#, r#"step="checkout""#, "probe_runs_total"] {
            assert_eq!(
                lines_with(&before, kept),
                lines_with(&after, kept),
                "{kept}"
            );
            assert!(!lines_with(&after, kept).is_empty(), "{kept}");
        }
        // Unknown probes are harmless.
        m.keep_steps("nope", &[]);
    }

    #[test]
    fn tls_version_and_dns_lookup_time_follow_the_last_run() {
        let m = Metrics::new("eu");
        let tls_step = |version: Option<&str>| StepResult {
            result: Outcome::Pass,
            duration: ms(20),
            phases: Some(phases()),
            tls_version: version.map(str::to_string),
            ..StepResult::skipped("handshake")
        };
        let mut tls = run(
            Outcome::Pass,
            Outcome::Pass,
            20,
            vec![tls_step(Some("TLS 1.2"))],
        );
        tls.kind = "tls".to_string();
        m.record_run(&tls, None);
        tls.steps = vec![tls_step(Some("TLS 1.3"))];
        m.record_run(&tls, None);
        // A run without a handshake (the server was down) keeps the last version.
        tls.steps = vec![tls_step(None)];
        m.record_run(&tls, None);
        let text = m.render();
        assert_value(
            &text,
            r#"probe_tls_version_info{location="eu",probe="p",version="TLS 1.3"}"#,
            "1",
        );
        assert!(!text.contains(r#"version="TLS 1.2""#), "{text}");
        // Only dns probes export a lookup time: for http it is the resolve phase.
        assert!(!text.contains("probe_dns_lookup_time_seconds{"), "{text}");

        let mut dns = run(Outcome::Pass, Outcome::Pass, 4, vec![tls_step(None)]);
        dns.name = "d".to_string();
        dns.kind = "dns".to_string();
        m.record_run(&dns, None);
        dns.steps[0].phases = Some(Phases {
            resolve: ms(3),
            ..Phases::default()
        });
        m.record_run(&dns, None);
        let text = m.render();
        assert_value(
            &text,
            r#"probe_dns_lookup_time_seconds{location="eu",probe="d"}"#,
            "0.003",
        );
        m.forget_probe("p");
        m.forget_probe("d");
        let text = m.render();
        assert!(!text.contains("probe_tls_version_info{"), "{text}");
        assert!(!text.contains("probe_dns_lookup_time_seconds{"), "{text}");
    }

    #[test]
    fn chunks_add_up_to_the_whole_and_families_stay_together() {
        let m = Metrics::new("eu");
        for i in 0..50 {
            let mut r = run(Outcome::Pass, Outcome::Pass, 500, all_pass());
            r.name = format!("p{i:02}");
            m.record_run(&r, None);
        }
        let whole = m.render();
        let mut chunks = Vec::new();
        m.render_chunks(4096, &mut |c| chunks.push(c.to_string()));
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        // A piece ends after the probe whose lines reached the size (no lock is held while a
        // piece is handed out): at most the size plus one probe's lines of one family, here
        // 3 steps × 5 phase histograms of 16 lines.
        assert!(
            chunks.iter().all(|c| c.len() < 4096 + 32 * 1024),
            "{:?}",
            chunks.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(chunks.concat(), whole);
        // Each family's header once, before its samples, and every sample after its header.
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in whole.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap_or_default().to_string();
                assert!(seen.insert(current.clone()), "{current} twice");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside {current}");
            }
        }
        // Families without samples are left out, header and all.
        assert!(!whole.contains("probe_tls_version_info"), "{whole}");
        // 50 probes of 3 steps. Per probe: 3 gauges, a 21-bucket histogram (24 lines), 4 run
        // counters, a certificate-free run; per step: success, status, a 21-bucket histogram,
        // 5 phase gauges and 5 13-bucket phase histograms (16 lines each).
        let samples = whole.lines().filter(|l| l.starts_with("probe_")).count();
        assert_eq!(samples, 50 * (3 + 24 + 4 + 3 * (1 + 1 + 24 + 5 + 5 * 16)));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new("eu \"west\"");
        let mut r = run(
            Outcome::Pass,
            Outcome::Pass,
            500,
            vec![step("a\\b\nc", Outcome::Pass, 5, Some(200))],
        );
        r.name = "q\"x".to_string();
        m.record_run(&r, None);
        assert_value(
            &m.render(),
            r#"probe_http_status_code{location="eu \"west\"",probe="q\"x",step="a\\b\nc"}"#,
            "200",
        );
    }

    #[test]
    fn agent_counters() {
        let m = Metrics::new("eu");
        let text = m.render();
        assert_value(
            &text,
            r#"patrol_config_reload_total{result="success"}"#,
            "0",
        );
        assert_value(
            &text,
            r#"patrol_config_reload_total{result="failure"}"#,
            "0",
        );
        assert_value(
            &text,
            "patrol_config_last_reload_success_timestamp_seconds",
            "0",
        );
        assert_value(
            &text,
            r#"patrol_deploy_verification_total{verdict="fail"}"#,
            "0",
        );

        let before = unix_now_seconds();
        m.record_reload(true);
        m.record_reload(false);
        m.record_reload(true);
        m.record_skip("p", "overlap");
        m.record_skip("p", "overlap");
        m.record_skip("p", "shutdown");
        m.run_started();
        m.run_started();
        m.run_finished();
        m.record_scheduler_lag(Duration::from_millis(3));
        m.record_scheduler_lag(Duration::from_millis(250));
        m.record_queue_wait(Duration::ZERO);
        m.record_queue_wait(Duration::from_millis(40));
        m.record_queue_wait(Duration::from_secs(3));
        m.record_verdict("fail");
        m.record_rollback_action("dry_run");
        m.record_deploy("1.2.3", "prod");
        m.record_deploy("1.2.4", "prod");
        let after = unix_now_seconds();
        let text = m.render();

        assert_value(
            &text,
            r#"patrol_config_reload_total{result="success"}"#,
            "2",
        );
        assert_value(
            &text,
            r#"patrol_config_reload_total{result="failure"}"#,
            "1",
        );
        let stamp: f64 = value(&text, "patrol_config_last_reload_success_timestamp_seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!((before..=after).contains(&stamp), "{stamp}");
        assert_value(
            &text,
            r#"patrol_runs_skipped_total{probe="p",reason="overlap"}"#,
            "2",
        );
        assert_value(
            &text,
            r#"patrol_runs_skipped_total{probe="p",reason="shutdown"}"#,
            "1",
        );
        assert_value(&text, "patrol_runs_in_flight", "1");
        m.run_finished();
        assert_value(&m.render(), "patrol_runs_in_flight", "0");
        assert_value(&text, "patrol_scheduler_lag_seconds_count", "2");
        assert_value(&text, "patrol_scheduler_lag_seconds_sum", "0.253");
        assert_value(
            &text,
            r#"patrol_scheduler_lag_seconds_bucket{le="0.005"}"#,
            "1",
        );
        assert_value(
            &text,
            r#"patrol_scheduler_lag_seconds_bucket{le="0.25"}"#,
            "2",
        );
        assert_value(&text, "patrol_run_queue_wait_seconds_count", "3");
        assert_value(&text, "patrol_run_queue_wait_seconds_sum", "3.04");
        assert_value(
            &text,
            r#"patrol_run_queue_wait_seconds_bucket{le="0.0005"}"#,
            "1",
        );
        assert_value(
            &text,
            r#"patrol_run_queue_wait_seconds_bucket{le="0.05"}"#,
            "2",
        );
        assert_value(
            &text,
            r#"patrol_run_queue_wait_seconds_bucket{le="5"}"#,
            "3",
        );
        assert_value(
            &text,
            r#"patrol_deploy_verification_total{verdict="fail"}"#,
            "1",
        );
        assert_value(
            &text,
            r#"patrol_deploy_verification_total{verdict="pass"}"#,
            "0",
        );
        assert_value(
            &text,
            r#"patrol_rollback_actions_total{result="dry_run"}"#,
            "1",
        );
        assert_value(
            &text,
            r#"patrol_deploy_info{environment="prod",version="1.2.4"}"#,
            "1",
        );
        assert!(!text.contains(r#"version="1.2.3""#), "{text}");
        let deployed: f64 = value(&text, "patrol_deploy_timestamp_seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!((before..=after).contains(&deployed), "{deployed}");
    }
}
