//! `patrol verify`: select probes, run each once (concurrently, bounded by
//! `agent.max_concurrency`), and return their results in config order.

use std::sync::Arc;

use patrol_probes::result::ProbeResult;
use patrol_probes::run::{Runtime, run_probe, unfinished};
use tokio::sync::Semaphore;

use crate::config::yaml::did_you_mean;
use crate::config::{Config, ProbeConfig};

/// Which probes to run: all when both lists are empty.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Probes carrying any of these tags.
    pub tags: Vec<String>,
    /// Probes with these names.
    pub probes: Vec<String>,
}

/// Picks the probes `selection` names; `Err` explains a name that matches nothing.
pub fn select<'c>(
    config: &'c Config,
    selection: &Selection,
) -> Result<Vec<&'c ProbeConfig>, String> {
    for name in &selection.probes {
        if !config.probes.iter().any(|p| &p.spec.name == name) {
            let hint = did_you_mean(name, config.probes.iter().map(|p| p.spec.name.as_str()))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(format!("no probe named `{name}` in the config{hint}"));
        }
    }
    let everything = selection.tags.is_empty() && selection.probes.is_empty();
    let chosen: Vec<&ProbeConfig> = config
        .probes
        .iter()
        .filter(|p| {
            everything
                || selection.probes.contains(&p.spec.name)
                || p.tags.iter().any(|t| selection.tags.contains(t))
        })
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "no probe has any of the tags {}",
            selection.tags.join(", ")
        ));
    }
    Ok(chosen)
}

/// Runs `probes` once each, at most `concurrency` at a time; results keep the given order.
pub async fn run_all(
    probes: &[&ProbeConfig],
    runtime: &Runtime,
    concurrency: usize,
) -> Vec<ProbeResult> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(probes.len());
    for probe in probes {
        let spec = Arc::clone(&probe.spec);
        let runtime = runtime.clone();
        let permits = Arc::clone(&permits);
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            run_probe(&spec, &runtime).await
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for (task, probe) in tasks.into_iter().zip(probes) {
        results.push(match task.await {
            Ok(r) => r,
            Err(e) => unfinished(
                &probe.spec,
                &format!("internal error: the probe crashed ({e})"),
            ),
        });
    }
    results
}
