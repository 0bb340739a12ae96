//! Window size and mobile emulation: at session start through chromedriver's
//! `mobileEmulation` capability, mid-session through the DevTools `Emulation` domain
//! (chromedriver's `goog/cdp/execute`), since WebDriver itself can only resize the window.

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

/// The user agent of an emulated phone: Chrome on Android, the engine actually running.
pub(crate) const MOBILE_USER_AGENT: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36";

/// `goog:chromeOptions.mobileEmulation` for a phone of this size.
pub(crate) fn mobile_emulation(viewport: Viewport) -> Value {
    json!({
        "deviceMetrics": {
            "width": viewport.width,
            "height": viewport.height,
            "pixelRatio": MOBILE_PIXEL_RATIO,
            "touch": true,
        },
        "userAgent": MOBILE_USER_AGENT,
    })
}

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

/// Switches the current tab to `viewport`: a resized window, and device metrics, touch and user
/// agent on or off. `desktop_user_agent` is what a desktop session reports without emulation.
pub(crate) async fn apply(
    client: &Client,
    viewport: Viewport,
    desktop_user_agent: &str,
) -> Result<(), CmdError> {
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
            json!({ "userAgent": MOBILE_USER_AGENT }),
        )
        .await?;
    } else {
        // Metrics follow the window again; a session started mobile keeps no desktop metrics
        // of its own, so set them explicitly to the window size at ratio 1.
        cdp(
            client,
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": viewport.width,
                "height": viewport.height,
                "deviceScaleFactor": 1,
                "mobile": false,
            }),
        )
        .await?;
        cdp(
            client,
            "Emulation.setTouchEmulationEnabled",
            json!({ "enabled": false }),
        )
        .await?;
        cdp(
            client,
            "Emulation.setUserAgentOverride",
            json!({ "userAgent": desktop_user_agent }),
        )
        .await?;
    }
    Ok(())
}

/// A desktop user agent for the running browser version (`browserVersion` of the session).
pub(crate) fn desktop_user_agent(browser_version: Option<&str>) -> String {
    let major = browser_version
        .and_then(|v| v.split('.').next())
        .unwrap_or("156");
    format!(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/{major}.0.0.0 Safari/537.36"
    )
}
