//! Where a pre-deploy baseline comes from: the agent's own history (inside the agent), a running
//! agent's API (`patrol verify --baseline-from URL`), or Prometheus (`--prometheus URL`) querying
//! the probe_* series over the baseline window.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::history::History;
use crate::verdict::Aggregate;

/// Runs of each probe that started in `[since_ms, until_ms)`, from the agent's history.
pub fn from_history(
    history: &History,
    probes: &[String],
    since_ms: i64,
    until_ms: i64,
) -> BTreeMap<String, Aggregate> {
    probes
        .iter()
        .map(|p| {
            let runs = history.summaries_since(p, since_ms);
            let kept: Vec<_> = runs.iter().filter(|r| r.started_at_ms < until_ms).collect();
            let failures = kept.iter().filter(|r| !r.result.is_pass()).count() as u64;
            let samples = kept.iter().map(|r| r.duration.as_secs_f64()).collect();
            (p.clone(), Aggregate::from_samples(samples, failures))
        })
        .collect()
}

/// The same, from a running agent's `GET /api/v1/probes/{name}/runs`.
pub async fn from_agent(
    base_url: &str,
    probes: &[String],
    window: Duration,
) -> anyhow::Result<BTreeMap<String, Aggregate>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let since = chrono::Utc::now().timestamp_millis() - window.as_millis() as i64;
    let mut out = BTreeMap::new();
    for probe in probes {
        let url = format!(
            "{}/api/v1/probes/{probe}/runs?limit=1000",
            base_url.trim_end_matches('/')
        );
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("asking {url} for the baseline"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            out.insert(probe.clone(), Aggregate::default());
            continue;
        }
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        #[derive(serde::Deserialize)]
        struct Runs {
            runs: Vec<RunLite>,
        }
        #[derive(serde::Deserialize)]
        struct RunLite {
            result: String,
            duration_seconds: f64,
            started_at_ms: i64,
        }
        let runs: Runs = response
            .json()
            .await
            .with_context(|| format!("reading {url}"))?;
        let kept: Vec<&RunLite> = runs
            .runs
            .iter()
            .filter(|r| r.started_at_ms >= since)
            .collect();
        let failures = kept.iter().filter(|r| r.result != "pass").count() as u64;
        out.insert(
            probe.clone(),
            Aggregate::from_samples(kept.iter().map(|r| r.duration_seconds).collect(), failures),
        );
    }
    Ok(out)
}

/// Fewer runs than this seen in Prometheus' raw samples and the p95 comes from the histogram.
const MIN_SCRAPED_RUNS: usize = 5;

/// How much further back than the window the run counters are read: one scrape interval, at
/// most Prometheus' default lookback.
const COUNTER_LOOKBACK: Duration = Duration::from_secs(300);

/// The same, from Prometheus, over `window` ending now: run and failure counts from
/// `probe_runs_total`; p95 and p99 from the durations of the runs Prometheus scraped (the raw
/// samples of the `probe_duration_seconds` last-run gauge, one per scrape in which
/// `probe_runs_total` grew: per-run resolution, a subsample when runs are faster than scrapes).
/// With fewer than five such runs, the `probe_all_duration_seconds` histogram's
/// `histogram_quantile` is the fallback: it interpolates inside a bucket, so runs of 201-210 ms
/// all read as a p95 near the bucket's top (295 ms), which hides a +50% regression. Each
/// aggregate's `p95_source` says which was used.
pub async fn from_prometheus(
    base_url: &str,
    probes: &[String],
    window: Duration,
) -> anyhow::Result<BTreeMap<String, Aggregate>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let range = format!("{}s", window.as_secs().max(60));
    let mut out = BTreeMap::new();
    for probe in probes {
        let sel = format!(
            "probe=\"{}\"",
            probe.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let runs = scalar(
            &client,
            base_url,
            &format!("sum(increase(probe_runs_total{{{sel}}}[{range}]))"),
        )
        .await?;
        let failures = scalar(
            &client,
            base_url,
            &format!("sum(increase(probe_runs_total{{{sel},result!=\"pass\"}}[{range}]))"),
        )
        .await?;
        let runs = runs.unwrap_or(0.0).round() as u64;
        let failures = failures.unwrap_or(0.0).round() as u64;
        let durations = matrix(
            &client,
            base_url,
            &format!("probe_duration_seconds{{{sel}}}[{range}]"),
        )
        .await?;
        let counters = matrix(
            &client,
            base_url,
            &format!(
                "probe_runs_total{{{sel}}}[{}s]",
                (window + COUNTER_LOOKBACK).as_secs().max(60)
            ),
        )
        .await?;
        let mut samples = scraped_runs(&durations, &counters);
        samples.sort_by(f64::total_cmp);
        let (p95, p99, source) = if samples.len() >= MIN_SCRAPED_RUNS {
            let source = format!(
                "{} scraped run{} in Prometheus",
                samples.len(),
                if samples.len() == 1 { "" } else { "s" }
            );
            (
                crate::verdict::quantile(&samples, 0.95),
                crate::verdict::quantile(&samples, 0.99),
                source,
            )
        } else {
            samples.clear();
            let quantile = |q: f64| {
                format!(
                    "histogram_quantile({q}, sum by (le) (increase(probe_all_duration_seconds_bucket{{{sel}}}[{range}])))"
                )
            };
            let p95 = scalar(&client, base_url, &quantile(0.95)).await?;
            let p99 = scalar(&client, base_url, &quantile(0.99)).await?;
            (
                p95.filter(|v| v.is_finite()),
                p99.filter(|v| v.is_finite()),
                "Prometheus histogram buckets, interpolated".to_string(),
            )
        };
        out.insert(
            probe.clone(),
            Aggregate {
                runs,
                failures,
                error_rate: if runs == 0 {
                    0.0
                } else {
                    failures as f64 * 100.0 / runs as f64
                },
                p95,
                p99,
                samples,
                p95_source: Some(source),
            },
        );
    }
    Ok(out)
}

/// One series of a range query: its labels without `__name__`, and its samples (unix ms, value).
type Series = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// The durations of the runs behind `durations` (raw samples of the last-run gauge): a sample
/// counts when the series' `probe_runs_total` (summed over `result`, same labels otherwise) grew
/// since the scrape before, so a gauge scraped ten times between two runs counts once. The
/// counters reach further back than the gauge (see [`COUNTER_LOOKBACK`]) so that the window's
/// first scrape has one before it; a scrape with none is left out.
fn scraped_runs(durations: &[Series], counters: &[Series]) -> Vec<f64> {
    let mut totals: BTreeMap<BTreeMap<String, String>, BTreeMap<i64, f64>> = BTreeMap::new();
    for (labels, samples) in counters {
        let mut key = labels.clone();
        key.remove("result");
        let series = totals.entry(key).or_default();
        for (at, value) in samples {
            *series.entry(*at).or_default() += value;
        }
    }
    let mut out = Vec::new();
    for (labels, samples) in durations {
        let Some(total) = totals.get(labels) else {
            continue;
        };
        for (at, duration) in samples {
            let Some(&now) = total.get(at) else {
                continue;
            };
            let Some((_, &before)) = total.range(..*at).next_back() else {
                continue;
            };
            // A smaller total is a restarted agent that has run since.
            if now > before || (now < before && now > 0.0) {
                out.push(*duration);
            }
        }
    }
    out
}

/// A range selector's raw samples, per series.
async fn matrix(
    client: &reqwest::Client,
    base_url: &str,
    query: &str,
) -> anyhow::Result<Vec<Series>> {
    let body = query_prometheus(client, base_url, query).await?;
    let mut out = Vec::new();
    for series in body["data"]["result"].as_array().into_iter().flatten() {
        let labels: BTreeMap<String, String> = series["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let samples = series["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| {
                let at = pair[0].as_f64()?;
                let value = pair[1].as_str()?.parse::<f64>().ok()?;
                Some(((at * 1000.0).round() as i64, value))
            })
            .collect();
        out.push((labels, samples));
    }
    Ok(out)
}

/// One instant query's answer, checked for success.
async fn query_prometheus(
    client: &reqwest::Client,
    base_url: &str,
    query: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/api/v1/query", base_url.trim_end_matches('/'));
    let body: serde_json::Value = client
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
        .with_context(|| format!("querying Prometheus at {url}"))?
        .json()
        .await
        .with_context(|| format!("reading Prometheus' answer to {query}"))?;
    if body["status"] != "success" {
        bail!("Prometheus refused {query}: {}", body["error"]);
    }
    Ok(body)
}

/// One instant query's single value, `None` when the result is empty.
async fn scalar(
    client: &reqwest::Client,
    base_url: &str,
    query: &str,
) -> anyhow::Result<Option<f64>> {
    let body = query_prometheus(client, base_url, query).await?;
    let value = body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok());
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
        (
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            samples.to_vec(),
        )
    }

    #[test]
    fn a_gauge_scraped_many_times_between_runs_counts_once_per_run() {
        let probe = [("probe", "catalog"), ("location", "eu")];
        // Scrapes at 1s..6s; runs land before the scrapes at 2s, 3s and 5s.
        let durations = [series(
            &probe,
            &[
                (1000, 0.201),
                (2000, 0.205),
                (3000, 0.209),
                (4000, 0.209),
                (5000, 0.203),
                (6000, 0.203),
            ],
        )];
        let counters = [
            series(
                &[("probe", "catalog"), ("location", "eu"), ("result", "pass")],
                &[
                    (1000, 4.0),
                    (2000, 5.0),
                    (3000, 5.0),
                    (4000, 5.0),
                    (5000, 6.0),
                    (6000, 6.0),
                ],
            ),
            series(
                &[("probe", "catalog"), ("location", "eu"), ("result", "fail")],
                &[
                    (1000, 1.0),
                    (2000, 1.0),
                    (3000, 2.0),
                    (4000, 2.0),
                    (5000, 2.0),
                    (6000, 2.0),
                ],
            ),
        ];
        assert_eq!(
            scraped_runs(&durations, &counters),
            vec![0.205, 0.209, 0.203]
        );
        // With the scrape before the window's first (the counters reach further back), the
        // first scrape counts too when a run came between them.
        let mut earlier = counters.clone();
        earlier[0].1.insert(0, (0, 3.0));
        earlier[1].1.insert(0, (0, 1.0));
        assert_eq!(
            scraped_runs(&durations, &earlier),
            vec![0.201, 0.205, 0.209, 0.203]
        );
        // A series without its counter (another location) contributes nothing.
        let other = [series(
            &[("probe", "catalog"), ("location", "us")],
            &[(2000, 9.0)],
        )];
        assert!(scraped_runs(&other, &counters).is_empty());
    }
}
