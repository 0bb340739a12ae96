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

/// The same, from Prometheus: run and failure counts from `probe_runs_total`, p95 and p99 from
/// the `probe_all_duration_seconds` histogram, over `window` ending now.
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
        let sel = format!("probe=\"{probe}\"");
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
        let quantile = |q: f64| {
            format!(
                "histogram_quantile({q}, sum by (le) (increase(probe_all_duration_seconds_bucket{{{sel}}}[{range}])))"
            )
        };
        let p95 = scalar(&client, base_url, &quantile(0.95)).await?;
        let p99 = scalar(&client, base_url, &quantile(0.99)).await?;
        let runs = runs.unwrap_or(0.0).round() as u64;
        let failures = failures.unwrap_or(0.0).round() as u64;
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
                p95: p95.filter(|v| v.is_finite()),
                p99: p99.filter(|v| v.is_finite()),
                samples: Vec::new(),
            },
        );
    }
    Ok(out)
}

/// One instant query's single value, `None` when the result is empty.
async fn scalar(
    client: &reqwest::Client,
    base_url: &str,
    query: &str,
) -> anyhow::Result<Option<f64>> {
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
    let value = body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok());
    Ok(value)
}
