//! Browser probes in real headless Chromium over WebDriver (fantoccini + a supervised
//! chromedriver).
//!
//! A [`Browser`] is shared by every browser run: it starts chromedriver on a free loopback port
//! when the first run needs it, checks it before each run and restarts it when it died. Each run
//! waits for one of `max_sessions` slots, gets a fresh session with its own profile directory,
//! runs its steps, and hands the session to a guard that closes it, kills whatever Chromium left
//! behind and removes the profile. Everything lives under one work directory per `Browser`, so
//! [`Browser::shutdown`] (and, as a last resort, `Drop`) can find and kill every process it ever
//! started by that path.
//!
//! Layout:
//! - [`driver`]: the chromedriver process: start, health check, stop
//! - [`session`]: one run's session, its launch options and the guard that releases it
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
mod vitals;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::driver::Driver;
use self::session::{LaunchOptions, Session};
use self::steps::Broke;
use crate::artifacts::RunArtifacts;
use crate::result::StepResult;
use crate::spec::BrowserProbe;
use crate::template::{Masker, Scope};

/// How to install what is missing (Debian and Ubuntu package names).
const INSTALL_HINT: &str = "install it with `apt-get install chromium chromium-driver`";
/// Debian's `/usr/bin/chromium` is a shell wrapper around this binary.
const DEBIAN_WRAPPER: &str = "/usr/bin/chromium";
const DEBIAN_BINARY: &str = "/usr/lib/chromium/chromium";
/// How long shutdown waits for sessions that are still closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    /// Profiles and chromedriver's config home; every process started names it.
    work_dir: PathBuf,
    driver: tokio::sync::Mutex<Option<Driver>>,
    /// One permit per live session; a permit frees once its Chromium is gone.
    slots: Arc<Semaphore>,
    /// Whether anything was ever started (so `Drop` has something to clean).
    started: AtomicBool,
}

impl Browser {
    /// A browser that starts chromedriver when first needed.
    pub fn new(settings: BrowserSettings) -> Browser {
        let work_dir = std::env::temp_dir().join(format!(
            "{}{}-{}",
            driver::WORK_DIR_PREFIX,
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let slots = Arc::new(Semaphore::new(settings.max_sessions.max(1)));
        Browser {
            settings,
            work_dir,
            driver: tokio::sync::Mutex::new(None),
            slots,
            started: AtomicBool::new(false),
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

    /// Stops chromedriver and every Chromium it started.
    pub async fn shutdown(&self) {
        // Sessions closing in the background hold their slots until Chromium is gone.
        let all = u32::try_from(self.settings.max_sessions.max(1)).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, self.slots.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!("Browser sessions still open at shutdown; killing them.");
        }
        if let Some(driver) = self.driver.lock().await.take() {
            driver.stop().await;
            tracing::info!("Chromedriver stopped.");
        }
        if self.started.load(Ordering::SeqCst) {
            let killed = procs::kill_matching(&self.work_dir, Duration::from_secs(2)).await;
            if killed > 0 {
                tracing::warn!(killed, "Stray Chromium processes killed at shutdown.");
            }
            procs::remove_dir(&self.work_dir).await;
        }
    }

    /// The directory holding every session's profile (removed by [`Browser::shutdown`]).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The running chromedriver's process id (for tests that kill it).
    #[doc(hidden)]
    pub async fn driver_pid(&self) -> Option<u32> {
        self.driver.lock().await.as_ref().and_then(Driver::pid)
    }

    /// The Chromium binary to launch: Debian's wrapper script is skipped for the real binary.
    fn chromium_binary(&self) -> PathBuf {
        let configured = &self.settings.chromium;
        if configured == Path::new(DEBIAN_WRAPPER) && Path::new(DEBIAN_BINARY).exists() {
            return PathBuf::from(DEBIAN_BINARY);
        }
        driver::locate_binary(configured).unwrap_or_else(|| configured.clone())
    }

    /// A healthy chromedriver's URL, (re)starting it if needed.
    async fn driver_url(&self, until: Instant) -> Result<String, Broke> {
        let mut driver = tokio::time::timeout_at(until, self.driver.lock())
            .await
            .map_err(|_| {
                Broke::timeout("chromedriver was still starting at the probe's deadline".into())
            })?;
        if let Some(running) = driver.as_mut() {
            if running.is_healthy(until).await {
                return Ok(running.url());
            }
            tracing::warn!("Chromedriver is not answering; restarting it.");
            if let Some(dead) = driver.take() {
                dead.stop().await;
            }
        }
        if !self.started.swap(true, Ordering::SeqCst) {
            // Leftovers of an agent that was killed before it could shut its browser down.
            tokio::spawn(async { driver::sweep_abandoned(&std::env::temp_dir()).await });
        }
        let binary = driver::locate_binary(&self.settings.chromedriver)
            .unwrap_or_else(|| self.settings.chromedriver.clone());
        let started = Driver::start(&binary, &self.work_dir, until)
            .await
            .map_err(|e| {
                if Instant::now() >= until {
                    Broke::timeout(e)
                } else {
                    Broke::error(e)
                }
            })?;
        let url = started.url();
        *driver = Some(started);
        Ok(url)
    }

    /// A fresh session for `probe`, once a slot is free, within `until`.
    async fn open_session(&self, probe: &BrowserProbe, until: Instant) -> Result<Session, Broke> {
        Browser::check_installed(&self.settings).map_err(Broke::error)?;
        let permit = tokio::time::timeout_at(until, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                Broke::timeout(format!(
                    "no browser session became free before the probe's deadline (max_sessions = {})",
                    self.settings.max_sessions
                ))
            })?
            .map_err(|_| Broke::error("the browser is shutting down".into()))?;
        let url = self.driver_url(until).await?;
        let launch = LaunchOptions {
            chromium: self.chromium_binary(),
            profile: session::new_profile_dir(&self.work_dir),
        };
        Session::open(&url, launch, probe, permit, until).await
    }
}

impl Drop for Browser {
    /// Last resort when [`Browser::shutdown`] was not awaited: kill chromedriver and anything
    /// started under the work directory, synchronously.
    fn drop(&mut self) {
        if let Ok(mut driver) = self.driver.try_lock()
            && let Some(driver) = driver.take()
        {
            driver.stop_blocking();
        }
        if self.started.load(Ordering::SeqCst) {
            procs::kill_matching_blocking(&self.work_dir, Duration::from_secs(1));
            procs::remove_dir_blocking(&self.work_dir);
        }
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
    match browser.open_session(probe, deadline).await {
        Ok(session) => {
            let results = steps::run(probe, &session, scope, masker, deadline, artifacts).await;
            // Closing takes a few hundred milliseconds that are not the site's: it finishes in
            // the background, holding the slot until Chromium is gone.
            session.close_in_background();
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
    } else if ms % 1000 == 0 {
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
