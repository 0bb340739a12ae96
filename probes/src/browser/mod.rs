//! Browser probes in real headless Chromium over WebDriver (being written).

use std::path::PathBuf;

use crate::artifacts::RunArtifacts;
use crate::result::{Outcome, StepResult};
use crate::spec::BrowserProbe;
use crate::template::{Masker, Scope};

/// Where chromedriver and Chromium are and how many sessions may run at once.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// chromedriver binary.
    pub chromedriver: PathBuf,
    /// Chromium binary.
    pub chromium: PathBuf,
    /// Sessions at once; further runs wait for a slot.
    pub max_sessions: usize,
}

/// A supervised chromedriver shared by every browser run.
#[derive(Debug)]
pub struct Browser {
    settings: BrowserSettings,
}

impl Browser {
    /// A browser that starts chromedriver when first needed.
    pub fn new(settings: BrowserSettings) -> Browser {
        Browser { settings }
    }

    /// Why browser probes cannot run here, when Chromium or chromedriver is missing.
    pub fn check_installed(settings: &BrowserSettings) -> Result<(), String> {
        let _ = settings;
        Ok(())
    }

    /// Stops chromedriver and every Chromium it started.
    pub async fn shutdown(&self) {}
}

/// Runs one attempt of a browser probe.
pub async fn run_steps(
    probe: &BrowserProbe,
    browser: &Browser,
    scope: &mut Scope,
    masker: &Masker,
    deadline: tokio::time::Instant,
    artifacts: Option<&RunArtifacts>,
) -> Vec<StepResult> {
    let _ = (browser, scope, masker, deadline, artifacts);
    probe
        .steps
        .iter()
        .map(|s| {
            let mut r = StepResult::skipped(&s.name);
            r.result = Outcome::Error;
            r.error = Some("browser probes are not built yet".into());
            r
        })
        .collect()
}
