//! One run's WebDriver session: a fresh Chromium with its own `--user-data-dir`, owned by a
//! guard that closes the session, kills whatever Chromium left running and removes the profile
//! directory — explicitly ([`Session::close`]) or, when a run is dropped half-way, from `Drop`.
//!
//! The guard also holds the run's `max_sessions` slot, so a slot frees only once its Chromium
//! is gone and the concurrency bound is a bound on live browsers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::emulation::{self, DEFAULT_VIEWPORT};
use super::procs;
use super::steps::Broke;
use crate::spec::BrowserProbe;

/// How long `DELETE /session` may take before Chromium is killed instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session creation abandoned at the deadline may still finish, to be closed.
const ABANDONED_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long killed processes get to disappear.
const KILL_PATIENCE: Duration = Duration::from_secs(2);

/// What Chromium is started with.
#[derive(Debug, Clone)]
pub(crate) struct LaunchOptions {
    /// The Chromium binary itself (not a wrapper script).
    pub chromium: PathBuf,
    /// The profile directory, under the browser's work directory.
    pub profile: PathBuf,
}

/// A live session; closing or dropping it releases Chromium, the profile and the slot.
#[derive(Debug)]
pub(crate) struct Session {
    client: Option<Client>,
    profile: PathBuf,
    permit: Option<OwnedSemaphorePermit>,
}

impl Session {
    /// Starts Chromium through chromedriver at `driver_url`, within `until`.
    pub(crate) async fn open(
        driver_url: &str,
        launch: LaunchOptions,
        probe: &BrowserProbe,
        permit: OwnedSemaphorePermit,
        until: Instant,
    ) -> Result<Session, Broke> {
        let caps = capabilities(&launch, probe);
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let url = driver_url.to_string();
        // On its own task, so a creation abandoned at the deadline still completes and its
        // browser can be closed rather than leaked.
        let mut creating = tokio::spawn(async move { builder.connect(&url).await });
        let profile = launch.profile.clone();
        match tokio::time::timeout_at(until, &mut creating).await {
            Ok(Ok(Ok(client))) => {
                let session = Session {
                    client: Some(client),
                    profile,
                    permit: Some(permit),
                };
                if let Some(viewport) = probe.viewport.filter(|v| v.mobile) {
                    let emulated = emulation::apply(session.client(), viewport);
                    match tokio::time::timeout_at(until, emulated).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            return Err(Broke::error(format!(
                                "could not emulate a {}x{} phone: {}",
                                viewport.width,
                                viewport.height,
                                first_line(&e.to_string())
                            )));
                        }
                        Err(_) => {
                            return Err(Broke::timeout(
                                "Chromium did not set up phone emulation before the probe's deadline"
                                    .to_string(),
                            ));
                        }
                    }
                }
                Ok(session)
            }
            Ok(Ok(Err(e))) => {
                release(None, profile, Some(permit)).await;
                Err(Broke::error(format!(
                    "could not start Chromium: {}",
                    first_line(&e.to_string())
                )))
            }
            Ok(Err(join)) => {
                release(None, profile, Some(permit)).await;
                Err(Broke::error(format!(
                    "could not start Chromium: the session task failed: {join}"
                )))
            }
            Err(_) => {
                tokio::spawn(async move {
                    let client =
                        match tokio::time::timeout(ABANDONED_CREATE_TIMEOUT, creating).await {
                            Ok(Ok(Ok(client))) => Some(client),
                            _ => None,
                        };
                    release(client, profile, Some(permit)).await;
                });
                Err(Broke::timeout(
                    "Chromium did not start before the probe's deadline".to_string(),
                ))
            }
        }
    }

    /// The WebDriver client.
    pub(crate) fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the client is only taken by close or drop")
    }

    /// Closes the session and waits until Chromium and its profile are gone.
    #[allow(dead_code)]
    pub(crate) async fn close(mut self) {
        release(
            self.client.take(),
            std::mem::take(&mut self.profile),
            self.permit.take(),
        )
        .await;
    }

    /// Closes the session on a background task; the slot frees when it is done.
    pub(crate) fn close_in_background(self) {
        drop(self);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.profile.as_os_str().is_empty() {
            return;
        }
        let (client, profile, permit) = (
            self.client.take(),
            std::mem::take(&mut self.profile),
            self.permit.take(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(release(client, profile, permit));
            }
            Err(_) => {
                // No runtime: the client cannot talk any more; kill what the profile names.
                drop(client);
                procs::kill_matching_blocking(&profile, KILL_PATIENCE);
                if let Some(singleton) = singleton_dir(&profile) {
                    procs::remove_dir_blocking(&singleton);
                }
                procs::remove_dir_blocking(&profile);
                drop(permit);
            }
        }
    }
}

/// Ends a session: `DELETE /session` (chromedriver quits Chromium), then SIGKILL for anything
/// still naming the profile (chromedriver dead or Chromium hung), then the profile directory.
async fn release(client: Option<Client>, profile: PathBuf, permit: Option<OwnedSemaphorePermit>) {
    if let Some(client) = client {
        match tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Browser session close failed; killing Chromium.")
            }
            Err(_) => tracing::warn!("Browser session close timed out; killing Chromium."),
        }
    }
    let killed = procs::kill_matching(&profile, KILL_PATIENCE).await;
    if killed > 0 {
        tracing::info!(killed, profile = %profile.display(), "Stray Chromium processes killed.");
    }
    if let Some(singleton) = singleton_dir(&profile) {
        procs::remove_dir(&singleton).await;
    }
    procs::remove_dir(&profile).await;
    drop(permit);
}

/// The session's capabilities: Chromium binary and flags, window or phone, logging.
fn capabilities(launch: &LaunchOptions, probe: &BrowserProbe) -> fantoccini::wd::Capabilities {
    let viewport = probe.viewport.unwrap_or(DEFAULT_VIEWPORT);
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--mute-audio",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", launch.profile.display()));
    args.push(format!(
        "--window-size={},{}",
        viewport.width, viewport.height
    ));
    let chrome = json!({
        "binary": launch.chromium.display().to_string(),
        "args": args,
    });
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": probe.insecure,
        "pageLoadStrategy": "normal",
        "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 30_000 },
        "goog:loggingPrefs": { "browser": "ALL" },
        "goog:chromeOptions": chrome,
    });
    caps.as_object().cloned().unwrap_or_default()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim()
}

/// The temp directory holding the profile's singleton socket, which a killed Chromium leaves
/// behind (the profile links to it).
fn singleton_dir(profile: &Path) -> Option<PathBuf> {
    let socket = std::fs::read_link(profile.join("SingletonSocket")).ok()?;
    let dir = socket.parent()?;
    let name = dir.file_name()?.to_str()?;
    name.starts_with("org.chromium.Chromium.")
        .then(|| dir.to_path_buf())
}

/// The directory a new session's profile lives in.
pub(crate) fn new_profile_dir(work_dir: &Path) -> PathBuf {
    work_dir.join(format!("profile-{}", uuid::Uuid::new_v4().simple()))
}
