//! Browser probes in real headless Chromium over WebDriver (fantoccini + a supervised
//! chromedriver).
//!
//! A [`Browser`] is shared by every browser run: it starts chromedriver on a free loopback port
//! when the first run needs it, checks it before each run and restarts it when it died. Each run
//! gets a fresh session with its own profile directory — waiting for one of `max_sessions` slots,
//! or taking the spare session started ahead of it — runs its steps, and hands the session to a
//! guard that closes it, kills whatever Chromium left behind and removes the profile. Everything
//! lives under one work directory per `Browser`, so [`Browser::shutdown`] (and, as a last
//! resort, `Drop`) can find and kill every process it ever started by that path.
//!
//! Layout:
//! - [`supervisor`]: chromedriver, the `max_sessions` slots and a spare session started ahead
//! - [`driver`]: the chromedriver process: start, health check, stop; a dead agent's leftovers
//! - [`session`]: one session, its launch options and the guard that releases it
//! - [`steps`]: runs the steps and builds their results, failure artifacts included
//! - [`console`]: the browser console log, read through chromedriver
//! - [`vitals`]: web vitals of a navigation
//! - [`emulation`]: window size and mobile emulation
//! - [`procs`]: finding and killing stray Chromium processes

mod console;
mod driver;
mod emulation;
mod procs;
mod session;
mod steps;
mod supervisor;
mod vitals;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::session::Shape;
use self::supervisor::Supervisor;
use crate::artifacts::RunArtifacts;
use crate::result::StepResult;
use crate::spec::BrowserProbe;
use crate::template::{Masker, Scope};

/// How to install what is missing (Debian and Ubuntu package names).
const INSTALL_HINT: &str = "install it with `apt-get install chromium chromium-driver`";
/// Debian's `/usr/bin/chromium` is a shell wrapper around this binary.
const DEBIAN_WRAPPER: &str = "/usr/bin/chromium";
const DEBIAN_BINARY: &str = "/usr/lib/chromium/chromium";

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
    supervisor: Arc<Supervisor>,
}

impl Browser {
    /// A browser that starts chromedriver when first needed.
    pub fn new(settings: BrowserSettings) -> Browser {
        Browser {
            supervisor: Arc::new(Supervisor::new(settings)),
        }
    }

    /// Why browser probes cannot run here, when Chromium or chromedriver is missing.
    pub fn check_installed(settings: &BrowserSettings) -> Result<(), String> {
        let mut missing = Vec::new();
        for (what, path) in [
            ("chromium", &settings.chromium),
            ("chromedriver", &settings.chromedriver),
        ] {
            if driver::locate_binary(path).is_none() {
                let problem = if path.exists() {
                    "is not an executable file"
                } else {
                    "not found"
                };
                missing.push(format!("{what} {problem} at {}", path.display()));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            let hint = if missing.len() > 1 {
                INSTALL_HINT.replace("install it", "install them")
            } else {
                INSTALL_HINT.to_string()
            };
            Err(format!("{}: {hint}", missing.join(" and ")))
        }
    }

    /// Stops chromedriver and every Chromium it started; later runs are errors.
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }

    /// The directory holding every session's profile (removed by [`Browser::shutdown`]).
    pub fn work_dir(&self) -> &Path {
        self.supervisor.work_dir()
    }

    /// The running chromedriver's process id (for tests that kill it).
    #[doc(hidden)]
    pub async fn driver_pid(&self) -> Option<u32> {
        self.supervisor.driver_pid().await
    }
}

impl Drop for Browser {
    /// Last resort when [`Browser::shutdown`] was not awaited: kill chromedriver and anything
    /// started under the work directory, synchronously.
    fn drop(&mut self) {
        self.supervisor.kill_blocking();
    }
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
    let started = std::time::Instant::now();
    let shape = Shape::of(probe);
    let supervisor = &browser.supervisor;
    let session = match Browser::check_installed(supervisor.settings()) {
        Ok(()) => supervisor.checkout(shape, deadline).await,
        Err(missing) => Err(steps::Broke::error(missing)),
    };
    match session {
        Ok(session) => {
            let results = steps::run(probe, &session, scope, masker, deadline, artifacts).await;
            // Closing takes a few hundred milliseconds that are not the site's: it finishes in
            // the background, holding the slot until Chromium is gone. The next run's session
            // starts meanwhile.
            session.close_in_background();
            supervisor.refill(shape);
            results
        }
        Err(broke) => {
            let mut results: Vec<StepResult> = probe
                .steps
                .iter()
                .map(|s| StepResult::skipped(&s.name))
                .collect();
            if let Some(first) = results.first_mut() {
                first.result = broke.outcome;
                first.error = Some(masker.mask(&broke.message));
                first.duration = started.elapsed();
            }
            results
        }
    }
}

/// A duration as people write it: `2s`, `1.5s`, `250ms`.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{:.1}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches(".0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_config() {
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn missing_binaries_are_named_with_the_install_hint() {
        let settings = BrowserSettings {
            chromedriver: PathBuf::from("/nonexistent/chromedriver"),
            chromium: PathBuf::from("/nonexistent/chromium"),
            max_sessions: 1,
        };
        let e = Browser::check_installed(&settings).expect_err("missing");
        assert_eq!(
            e,
            "chromium not found at /nonexistent/chromium and chromedriver not found at /nonexistent/chromedriver: install them with `apt-get install chromium chromium-driver`"
        );
    }
}
