//! Captures: `name: query` pairs that take a value from a step's response (`jsonpath "$.token"`,
//! `header "Location"`, `regex "id=(\d+)"`, `cookie "session"`) into the scope of later steps.

use crate::query::{Observation, Query};
use crate::syntax::{SyntaxError, tokenize};

/// A parsed capture.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The variable it sets.
    pub name: String,
    /// Where the value comes from.
    pub query: Query,
}

impl Capture {
    /// Parses the query half of `name: query`.
    pub fn parse(name: &str, source: &str) -> Result<Capture, SyntaxError> {
        let tokens = tokenize(source)?;
        let mut pos = 0;
        let query = Query::parse(&tokens, &mut pos, source.len())?;
        if let Some((_, at)) = tokens.get(pos) {
            return Err(SyntaxError::new(
                *at,
                "unexpected text after the capture query",
                "a capture is only a query, e.g. `jsonpath \"$.token\"`; put conditions in assert",
            ));
        }
        Ok(Capture {
            name: name.to_string(),
            query,
        })
    }

    /// The captured text, or why nothing could be captured.
    pub fn extract(&self, obs: &Observation<'_>) -> Result<String, String> {
        match self.query.evaluate(obs)? {
            Some(v) => Ok(v.to_plain_text()),
            None => Err(format!(
                "capture `{}`: {} found nothing",
                self.name,
                self.query.describe()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn captures_from_json_headers_regex_and_cookies() {
        let headers = vec![
            ("set-cookie".to_string(), "theme=dark; Path=/".to_string()),
            (
                "set-cookie".to_string(),
                "session=s-123; HttpOnly".to_string(),
            ),
            ("location".to_string(), "/orders/42".to_string()),
        ];
        let body = br#"{"token":"t-1","n":5,"user":{"id":"u1"}}"#;
        let obs = Observation::new(Some(200), &headers, body, Duration::ZERO, None);
        let get = |q: &str| Capture::parse("x", q).expect("parses").extract(&obs);
        assert_eq!(get("jsonpath \"$.token\""), Ok("t-1".into()));
        assert_eq!(get("jsonpath \"$.n\""), Ok("5".into()));
        assert_eq!(get("jsonpath \"$.user\""), Ok(r#"{"id":"u1"}"#.into()));
        assert_eq!(get("header \"Location\""), Ok("/orders/42".into()));
        assert_eq!(get("cookie \"session\""), Ok("s-123".into()));
        assert_eq!(
            get("regex \"orders/(\\d+)\""),
            Err("capture `x`: regex \"orders/(\\d+)\" found nothing".into())
        );
        assert_eq!(get("regex \"\\\"n\\\":(\\d+)\""), Ok("5".into()));
        assert!(
            get("jsonpath \"$.nope\"")
                .expect_err("nothing")
                .contains("found nothing")
        );
    }

    #[test]
    fn trailing_text_is_an_error() {
        let e = Capture::parse("t", "jsonpath \"$.t\" exists").expect_err("trailing");
        assert_eq!(e.offset, 15);
    }
}
