//! Web vitals of a navigation, read in the page after it loaded: Navigation Timing for ttfb,
//! DOMContentLoaded and load (and the response status), Paint Timing for first contentful
//! paint, a buffered `PerformanceObserver` for largest contentful paint. All in seconds from
//! navigation start.

use serde_json::Value;

use crate::result::WebVitals;

/// Waits for `document.readyState === 'complete'` (the load event has finished), lets one frame
/// paint, then reports the timings. WebDriver awaits the returned promise.
pub(crate) const SCRIPT: &str = r#"
const secs = v => (typeof v === 'number' && v > 0) ? v / 1000 : null;
const loaded = new Promise(resolve => {
  if (document.readyState === 'complete') { resolve(); return; }
  addEventListener('load', () => setTimeout(resolve, 0), { once: true });
});
const painted = () => new Promise(resolve => {
  requestAnimationFrame(() => setTimeout(resolve, 0));
  setTimeout(resolve, 100);
});
const largest = () => new Promise(resolve => {
  let last = null;
  try {
    new PerformanceObserver(list => {
      const entries = list.getEntries();
      if (entries.length) last = entries[entries.length - 1];
      resolve(last);
    }).observe({ type: 'largest-contentful-paint', buffered: true });
  } catch (e) { resolve(null); }
  setTimeout(() => resolve(last), 50);
});
return loaded.then(painted).then(largest).then(lcp => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  return {
    ttfb: nav ? secs(nav.responseStart) : null,
    dom_content_loaded: nav ? secs(nav.domContentLoadedEventEnd) : null,
    load: nav ? secs(nav.loadEventEnd) : null,
    fcp: fcp ? secs(fcp.startTime) : null,
    lcp: lcp ? secs(lcp.renderTime || lcp.loadTime || lcp.startTime) : null,
    status: nav && nav.responseStatus ? nav.responseStatus : null,
  };
});
"#;

/// The vitals and the document's HTTP status from the script's answer.
pub(crate) fn parse(value: &Value) -> (WebVitals, Option<u16>) {
    let secs = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let vitals = WebVitals {
        ttfb: secs("ttfb"),
        fcp: secs("fcp"),
        lcp: secs("lcp"),
        dom_content_loaded: secs("dom_content_loaded"),
        load: secs("load"),
    };
    let status = value
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| *s > 0);
    (vitals, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds_and_status() {
        let v = serde_json::json!({"ttfb": 0.012, "fcp": 0.05, "lcp": null, "dom_content_loaded": 0.04, "load": 0.06, "status": 200});
        let (vitals, status) = parse(&v);
        assert_eq!(vitals.ttfb, Some(0.012));
        assert_eq!(vitals.lcp, None);
        assert_eq!(vitals.load, Some(0.06));
        assert_eq!(status, Some(200));
    }
}
