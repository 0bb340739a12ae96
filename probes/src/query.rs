//! Queries: what an assertion or capture looks at in a step's response — `status`,
//! `header "Name"`, `jsonpath "$.x"`, `body`, `duration`, `cert_expiry`, `regex "re"`,
//! `cookie "name"` for HTTP; `reply`, `replies`, `rcode`, `answers`, `rows`, `value`,
//! `column "name"`, `issuer`, `subject`, `sans`, `tls_version` for the infrastructure probes,
//! which put what they observed into the [`Observation`] as named values.

use std::cell::OnceCell;
use std::time::Duration;

use serde_json_path::JsonPath;

use crate::syntax::{SyntaxError, Token};
use crate::value::Value;

/// What a query reads.
#[derive(Debug, Clone)]
pub enum Query {
    /// The HTTP status code.
    Status,
    /// A response header's first value (case-insensitive name).
    Header(String),
    /// RFC 9535 JSONPath over the JSON body.
    JsonPath {
        /// The path as written.
        source: String,
        /// The parsed path.
        path: JsonPath,
    },
    /// The body as text.
    Body,
    /// The step's duration.
    Duration,
    /// Time left until the earliest peer certificate expires.
    CertExpiry,
    /// The first capture group (or the whole match) of a regex over the body.
    Regex(regex::Regex),
    /// A cookie set by the response.
    Cookie(String),
    /// What the server answered: a TCP reply as text, the last Redis reply.
    Reply,
    /// Every Redis reply, in command order.
    Replies,
    /// The DNS response code: `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...
    Rcode,
    /// The DNS answers of the asked type, as text (`192.0.2.1`, `10 mx.example.com.`).
    Answers,
    /// The number of rows a SQL query returned.
    Rows,
    /// The first column of the first row a SQL query returned.
    FirstValue,
    /// A column of a SQL result: its value for one row, a list for several.
    Column(String),
    /// The leaf certificate's issuer (`CN=…, O=…`).
    Issuer,
    /// The leaf certificate's subject.
    Subject,
    /// The leaf certificate's subject alternative names.
    Sans,
    /// The negotiated TLS version: `TLS 1.2`, `TLS 1.3`.
    TlsVersion,
}

/// Names under which engines put values into an [`Observation`] for the queries above.
pub mod named {
    /// [`super::Query::Reply`]
    pub const REPLY: &str = "reply";
    /// [`super::Query::Replies`]
    pub const REPLIES: &str = "replies";
    /// [`super::Query::Rcode`]
    pub const RCODE: &str = "rcode";
    /// [`super::Query::Answers`]
    pub const ANSWERS: &str = "answers";
    /// [`super::Query::Rows`]
    pub const ROWS: &str = "rows";
    /// [`super::Query::FirstValue`]
    pub const VALUE: &str = "value";
    /// [`super::Query::Column`]: an object of column name to value (one row) or list (several).
    pub const COLUMNS: &str = "columns";
    /// [`super::Query::Issuer`]
    pub const ISSUER: &str = "issuer";
    /// [`super::Query::Subject`]
    pub const SUBJECT: &str = "subject";
    /// [`super::Query::Sans`]
    pub const SANS: &str = "sans";
    /// [`super::Query::TlsVersion`]
    pub const TLS_VERSION: &str = "tls_version";
}

/// What a step observed, for queries to look at.
#[derive(Debug)]
pub struct Observation<'a> {
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// Response headers, lowercase names.
    pub headers: &'a [(String, String)],
    /// Response body.
    pub body: &'a [u8],
    /// Step duration.
    pub duration: Duration,
    /// Earliest certificate expiry, unix seconds.
    pub cert_not_after: Option<i64>,
    /// Values an engine observed under [`named`] names (replies, answers, rows, certificate
    /// fields); empty for HTTP.
    pub values: &'a [(String, Value)],
    json: OnceCell<Result<serde_json::Value, String>>,
}

impl<'a> Observation<'a> {
    /// A view of one response.
    pub fn new(
        status: Option<u16>,
        headers: &'a [(String, String)],
        body: &'a [u8],
        duration: Duration,
        cert_not_after: Option<i64>,
    ) -> Self {
        Observation {
            status,
            headers,
            body,
            duration,
            cert_not_after,
            values: &[],
            json: OnceCell::new(),
        }
    }

    /// This observation with named values for the infrastructure queries.
    pub fn with_values(mut self, values: &'a [(String, Value)]) -> Self {
        self.values = values;
        self
    }

    fn value(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn json(&self) -> Result<&serde_json::Value, String> {
        self.json
            .get_or_init(|| {
                serde_json::from_slice(self.body)
                    .map_err(|e| format!("body is not valid JSON: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Query {
    /// Parses a query from `tokens[*pos..]`, advancing `pos`. `end` is the expression's length,
    /// for errors at the end of input.
    pub fn parse(
        tokens: &[(Token, usize)],
        pos: &mut usize,
        end: usize,
    ) -> Result<Query, SyntaxError> {
        let Some((Token::Word(word), at)) = tokens.get(*pos) else {
            let offset = tokens.get(*pos).map_or(end, |t| t.1);
            return Err(SyntaxError::new(
                offset,
                "expected a query",
                "start with one of: status, header \"Name\", jsonpath \"$.path\", body, duration, cert_expiry, regex \"re\", cookie \"name\", reply, replies, rcode, answers, rows, value, column \"name\", issuer, subject, sans, tls_version",
            ));
        };
        let at = *at;
        *pos += 1;
        let mut argument = |what: &str, example: &str| -> Result<(String, usize), SyntaxError> {
            match tokens.get(*pos) {
                Some((Token::Str(s), o)) => {
                    *pos += 1;
                    Ok((s.clone(), *o))
                }
                other => Err(SyntaxError::new(
                    other.map_or(end, |t| t.1),
                    format!("`{word}` needs a quoted {what}"),
                    format!("write it like {example}"),
                )),
            }
        };
        Ok(match word.as_str() {
            "status" => Query::Status,
            "body" => Query::Body,
            "duration" => Query::Duration,
            "cert_expiry" => Query::CertExpiry,
            "reply" => Query::Reply,
            "replies" => Query::Replies,
            "rcode" => Query::Rcode,
            "answers" => Query::Answers,
            "rows" => Query::Rows,
            "value" => Query::FirstValue,
            "issuer" => Query::Issuer,
            "subject" => Query::Subject,
            "sans" => Query::Sans,
            "tls_version" => Query::TlsVersion,
            "column" => Query::Column(argument("column name", "column \"count\"")?.0),
            "header" => Query::Header(argument("header name", "header \"Content-Type\"")?.0),
            "cookie" => Query::Cookie(argument("cookie name", "cookie \"session\"")?.0),
            "jsonpath" => {
                let (source, offset) = argument("JSONPath", "jsonpath \"$.token\"")?;
                let path = JsonPath::parse(&source).map_err(|e| {
                    SyntaxError::new(
                        offset + 1 + e.position(),
                        format!("invalid JSONPath `{source}`: {}", e.message()),
                        "JSONPath follows RFC 9535, e.g. \"$.products[0].id\"",
                    )
                })?;
                Query::JsonPath { source, path }
            }
            "regex" => {
                let (source, offset) = argument("regular expression", "regex \"id=(\\d+)\"")?;
                let re = regex::Regex::new(&source).map_err(|e| {
                    SyntaxError::new(
                        offset + 1,
                        format!("invalid regex `{source}`: {}", first_line(&e.to_string())),
                        "see https://docs.rs/regex for the syntax",
                    )
                })?;
                Query::Regex(re)
            }
            other => {
                return Err(SyntaxError::new(
                    at,
                    format!("unknown query `{other}`"),
                    suggest_query(other),
                ));
            }
        })
    }

    /// Evaluates the query: `Ok(None)` when it found nothing, `Err` when it cannot be evaluated
    /// (a body that is not JSON).
    pub fn evaluate(&self, obs: &Observation<'_>) -> Result<Option<Value>, String> {
        Ok(match self {
            Query::Status => obs.status.map(|s| Value::Number(f64::from(s))),
            Query::Header(name) => obs.header(name).map(|v| Value::Text(v.to_string())),
            Query::Body => Some(Value::Text(String::from_utf8_lossy(obs.body).into_owned())),
            Query::Duration => Some(Value::duration(obs.duration)),
            Query::CertExpiry => obs.cert_not_after.map(|not_after| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                Value::Duration(not_after as f64 - now)
            }),
            Query::JsonPath { path, .. } => {
                let json = obs.json()?;
                let nodes = path.query(json).all();
                match nodes.as_slice() {
                    [] => None,
                    [one] => Some(Value::from_json(one)),
                    many => Some(Value::List(
                        many.iter().map(|v| Value::from_json(v)).collect(),
                    )),
                }
            }
            Query::Regex(re) => {
                let text = String::from_utf8_lossy(obs.body);
                re.captures(&text).map(|caps| {
                    let m = caps.get(1).or_else(|| caps.get(0));
                    Value::Text(m.map_or(String::new(), |m| m.as_str().to_string()))
                })
            }
            Query::Cookie(name) => obs
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
                .find_map(|(_, v)| {
                    let pair = v.split(';').next()?;
                    let (n, val) = pair.split_once('=')?;
                    (n.trim() == name).then(|| Value::Text(val.trim().to_string()))
                }),
            Query::Column(name) => match obs.value(named::COLUMNS) {
                Some(Value::Object(columns)) => columns.get(name).map(Value::from_json),
                _ => None,
            },
            other => obs.value(other.value_name().unwrap_or_default()).cloned(),
        })
    }

    /// The name of the [`Observation`] value this query reads, for the infrastructure queries.
    fn value_name(&self) -> Option<&'static str> {
        Some(match self {
            Query::Reply => named::REPLY,
            Query::Replies => named::REPLIES,
            Query::Rcode => named::RCODE,
            Query::Answers => named::ANSWERS,
            Query::Rows => named::ROWS,
            Query::FirstValue => named::VALUE,
            Query::Column(_) => named::COLUMNS,
            Query::Issuer => named::ISSUER,
            Query::Subject => named::SUBJECT,
            Query::Sans => named::SANS,
            Query::TlsVersion => named::TLS_VERSION,
            _ => return None,
        })
    }

    /// The query's keyword as written (`status`, `jsonpath`, `column`, ...), for checking that
    /// a probe type offers it.
    pub fn keyword(&self) -> &'static str {
        match self {
            Query::Status => "status",
            Query::Header(_) => "header",
            Query::JsonPath { .. } => "jsonpath",
            Query::Body => "body",
            Query::Duration => "duration",
            Query::CertExpiry => "cert_expiry",
            Query::Regex(_) => "regex",
            Query::Cookie(_) => "cookie",
            Query::Reply => "reply",
            Query::Replies => "replies",
            Query::Rcode => "rcode",
            Query::Answers => "answers",
            Query::Rows => "rows",
            Query::FirstValue => "value",
            Query::Column(_) => "column",
            Query::Issuer => "issuer",
            Query::Subject => "subject",
            Query::Sans => "sans",
            Query::TlsVersion => "tls_version",
        }
    }

    /// The query as written, for messages.
    pub fn describe(&self) -> String {
        match self {
            Query::Status => "status".into(),
            Query::Header(n) => format!("header \"{n}\""),
            Query::JsonPath { source, .. } => format!("jsonpath \"{source}\""),
            Query::Body => "body".into(),
            Query::Duration => "duration".into(),
            Query::CertExpiry => "cert_expiry".into(),
            Query::Regex(re) => format!("regex \"{}\"", re.as_str()),
            Query::Cookie(n) => format!("cookie \"{n}\""),
            Query::Column(n) => format!("column \"{n}\""),
            other => other.keyword().to_string(),
        }
    }
}

const QUERIES: [&str; 19] = [
    "status",
    "header",
    "jsonpath",
    "body",
    "duration",
    "cert_expiry",
    "regex",
    "cookie",
    "reply",
    "replies",
    "rcode",
    "answers",
    "rows",
    "value",
    "column",
    "issuer",
    "subject",
    "sans",
    "tls_version",
];

fn suggest_query(word: &str) -> String {
    let best = QUERIES
        .iter()
        .map(|q| (strsim::levenshtein(word, q), *q))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, q)) => format!("did you mean `{q}`?"),
        None => format!("queries are: {}", QUERIES.join(", ")),
    }
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::tokenize;

    fn query(src: &str) -> Query {
        let tokens = tokenize(src).expect("lexes");
        Query::parse(&tokens, &mut 0, src.len()).expect("parses")
    }

    #[test]
    fn infrastructure_queries_read_the_named_values() {
        let columns = serde_json::json!({ "count": 3, "email": ["a@b.c", null] });
        let serde_json::Value::Object(columns) = columns else {
            panic!("an object")
        };
        let values = vec![
            (named::REPLY.to_string(), Value::Text("PONG".into())),
            (named::RCODE.to_string(), Value::Text("NOERROR".into())),
            (named::ROWS.to_string(), Value::Number(2.0)),
            (named::VALUE.to_string(), Value::Number(3.0)),
            (named::COLUMNS.to_string(), Value::Object(columns)),
            (
                named::TLS_VERSION.to_string(),
                Value::Text("TLS 1.3".into()),
            ),
        ];
        let obs = Observation::new(None, &[], b"PONG", Duration::from_millis(2), None)
            .with_values(&values);
        let eval = |src: &str| query(src).evaluate(&obs).expect("evaluates");
        assert_eq!(eval("reply"), Some(Value::Text("PONG".into())));
        assert_eq!(eval("rcode"), Some(Value::Text("NOERROR".into())));
        assert_eq!(eval("rows"), Some(Value::Number(2.0)));
        assert_eq!(eval("value"), Some(Value::Number(3.0)));
        assert_eq!(eval("column \"count\""), Some(Value::Number(3.0)));
        assert_eq!(
            eval("column \"email\"").map(|v| v.to_string()),
            Some("[\"a@b.c\", null]".to_string())
        );
        assert_eq!(eval("column \"nope\""), None);
        assert_eq!(eval("tls_version"), Some(Value::Text("TLS 1.3".into())));
        // Nothing observed is nothing found, never an error.
        assert_eq!(eval("answers"), None);
        assert_eq!(eval("issuer"), None);
        assert_eq!(eval("status"), None);
        assert_eq!(query("column \"count\"").describe(), "column \"count\"");
        assert_eq!(query("tls_version").keyword(), "tls_version");
    }

    #[test]
    fn column_needs_a_quoted_name_and_typos_get_suggestions() {
        let src = "column count";
        let tokens = tokenize(src).expect("lexes");
        let e = Query::parse(&tokens, &mut 0, src.len()).expect_err("unquoted");
        assert_eq!(e.offset, 7);
        assert!(e.message.contains("needs a quoted column name"), "{e:?}");
        let src = "rcod == 1";
        let tokens = tokenize(src).expect("lexes");
        let e = Query::parse(&tokens, &mut 0, src.len()).expect_err("typo");
        assert_eq!(e.help.as_deref(), Some("did you mean `rcode`?"));
    }
}
