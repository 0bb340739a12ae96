//! Window size and mobile emulation through the DevTools `Emulation` domain (chromedriver's
//! `goog/cdp/execute`): WebDriver itself can only resize the window.
//!
//! Emulation is applied this way at session start too, not through chromedriver's
//! `mobileEmulation` capability: chromedriver re-applies that capability's metrics and user agent
//! on every navigation, so a `viewport` step switching a phone session to desktop would silently
//! revert at the next `goto` (measured with chromedriver 156). DevTools overrides stay until
//! changed, across navigations, in both directions.

use fantoccini::Client;
use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use serde_json::{Value, json};

use crate::spec::Viewport;

/// The window of a session without a viewport.
pub(crate) const DEFAULT_VIEWPORT: Viewport = Viewport {
    width: 1280,
    height: 800,
    mobile: false,
};

/// Device pixel ratio of an emulated phone.
const MOBILE_PIXEL_RATIO: u32 = 3;

/// The Chrome major version the phone claims to run.
const MOBILE_MAJOR_VERSION: &str = "156";

/// The user agent of an emulated phone: Chrome on Android, the engine actually running.
pub(crate) const MOBILE_USER_AGENT: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36";

/// A DevTools command sent through chromedriver.
#[derive(Debug)]
struct Cdp {
    body: String,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.clone()))
    }
}

async fn cdp(client: &Client, cmd: &str, params: Value) -> Result<Value, CmdError> {
    let body = json!({ "cmd": cmd, "params": params }).to_string();
    client.issue_cmd(Cdp { body }).await
}

/// Switches the current tab to `viewport`: a resized window, and phone metrics (device pixel
/// ratio 3), touch and a mobile user agent (with matching client hints) on or off.
pub(crate) async fn apply(client: &Client, viewport: Viewport) -> Result<(), CmdError> {
    client
        .set_window_size(viewport.width, viewport.height)
        .await?;
    if viewport.mobile {
        cdp(
            client,
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": viewport.width,
                "height": viewport.height,
                "deviceScaleFactor": MOBILE_PIXEL_RATIO,
                "mobile": true,
            }),
        )
        .await?;
        cdp(
            client,
            "Emulation.setTouchEmulationEnabled",
            json!({ "enabled": true, "maxTouchPoints": 5 }),
        )
        .await?;
        cdp(
            client,
            "Emulation.setUserAgentOverride",
            json!({
                "userAgent": MOBILE_USER_AGENT,
                "platform": "Linux armv8l",
                "userAgentMetadata": {
                    "brands": [
                        { "brand": "Chromium", "version": MOBILE_MAJOR_VERSION },
                        { "brand": "Not.A/Brand", "version": "99" },
                    ],
                    "platform": "Android",
                    "platformVersion": "14",
                    "architecture": "",
                    "model": "Pixel 8",
                    "mobile": true,
                },
            }),
        )
        .await?;
    } else {
        cdp(client, "Emulation.clearDeviceMetricsOverride", json!({})).await?;
        cdp(
            client,
            "Emulation.setTouchEmulationEnabled",
            json!({ "enabled": false }),
        )
        .await?;
        // An empty override restores the browser's own user agent.
        cdp(
            client,
            "Emulation.setUserAgentOverride",
            json!({ "userAgent": "" }),
        )
        .await?;
    }
    Ok(())
}
