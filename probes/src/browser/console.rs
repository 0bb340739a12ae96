//! The browser console as chromedriver records it (`goog:loggingPrefs.browser`), read with the
//! legacy `POST /session/{id}/se/log {"type":"browser"}` command.
//!
//! Reading drains chromedriver's buffer, so a session keeps every entry it has read: the
//! console assertion judges everything logged since the session began, not since the last read.

use fantoccini::Client;
use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use regex::Regex;
use serde::Deserialize;

/// The log level chromedriver gives `console.error`, uncaught exceptions and failed loads.
const SEVERE: &str = "SEVERE";

/// `POST /session/{id}/se/log` for the browser log.
#[derive(Debug)]
struct ReadBrowserLog;

impl WebDriverCompatibleCommand for ReadBrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_string()),
        )
    }
}

/// One console entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// The text, prefixed by chromedriver with the source URL and line:column.
    pub message: String,
}

/// Every console entry read during one session.
#[derive(Debug, Default)]
pub(crate) struct Console {
    entries: Vec<LogEntry>,
}

impl Console {
    /// Reads (and so drains) what chromedriver buffered since the last read.
    pub(crate) async fn drain(&mut self, client: &Client) -> Result<(), CmdError> {
        let value = client.issue_cmd(ReadBrowserLog).await?;
        let entries: Vec<LogEntry> = serde_json::from_value(value)?;
        self.entries.extend(entries);
        Ok(())
    }

    /// SEVERE messages so far that match none of `ignore`.
    pub(crate) fn errors<'a>(&'a self, ignore: &'a [Regex]) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(|e| e.level == SEVERE)
            .map(|e| e.message.as_str())
            .filter(move |m| !ignore.iter().any(|re| re.is_match(m)))
    }
}
