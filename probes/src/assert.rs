//! Assertions: one predicate per line — a query, an optional `count`, an operator and an expected
//! value (`status in [200, 201]`, `jsonpath "$.token" exists`, `duration < 500ms`). Parsed at
//! config load; evaluation always yields an [`AssertResult`] with actual and expected.

use std::cmp::Ordering;

use crate::query::{Observation, Query};
use crate::result::{AssertResult, Outcome};
use crate::syntax::{SyntaxError, Token, tokenize};
use crate::template::{Masker, Scope, Template};
use crate::value::Value;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `in [a, b]`
    In,
    /// `contains`
    Contains,
    /// `matches "regex"`
    Matches,
}

impl Operator {
    fn symbol(self) -> &'static str {
        match self {
            Operator::Eq => "==",
            Operator::Ne => "!=",
            Operator::Lt => "<",
            Operator::Le => "<=",
            Operator::Gt => ">",
            Operator::Ge => ">=",
            Operator::In => "in",
            Operator::Contains => "contains",
            Operator::Matches => "matches",
        }
    }
}

/// The expected side of an assertion, rendered at run time.
#[derive(Debug, Clone)]
pub enum Expected {
    /// A literal number, duration, boolean or null.
    Value(Value),
    /// A quoted string, which may hold templates.
    Text(Template),
    /// `[a, b, ...]`
    List(Vec<Expected>),
}

impl Expected {
    fn render(&self, scope: &mut Scope) -> Result<Value, String> {
        Ok(match self {
            Expected::Value(v) => v.clone(),
            Expected::Text(t) => Value::Text(t.render(scope).map_err(|e| e.0)?),
            Expected::List(items) => Value::List(
                items
                    .iter()
                    .map(|i| i.render(scope))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Every template in the expected value, with its byte offset in the assertion.
    fn templates<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            Expected::Text(t) => out.push(t),
            Expected::List(items) => items.iter().for_each(|i| i.templates(out)),
            Expected::Value(_) => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Predicate {
    Exists,
    NotExists,
    Compare {
        op: Operator,
        expected: Expected,
        regex: Option<regex::Regex>,
    },
}

/// A parsed assertion.
#[derive(Debug, Clone)]
pub struct Assertion {
    source: String,
    query: Query,
    count: bool,
    predicate: Predicate,
    /// Templates in the expected value with their byte offsets in `source`.
    template_offsets: Vec<usize>,
}

const OPERATORS: &str = "== != < <= > >= in contains matches exists, not exists";

impl Assertion {
    /// Parses one assertion line.
    pub fn parse(source: &str) -> Result<Assertion, SyntaxError> {
        let tokens = tokenize(source)?;
        let end = source.len();
        let mut pos = 0;
        let query = Query::parse(&tokens, &mut pos, end)?;
        let mut count = false;
        if let Some((Token::Word(w), _)) = tokens.get(pos)
            && w == "count"
        {
            count = true;
            pos += 1;
        }
        let predicate = match tokens.get(pos) {
            None => {
                return Err(SyntaxError::new(
                    end,
                    format!("`{}` needs an operator and a value", query.describe()),
                    format!("add one of {OPERATORS}, e.g. `status == 200`"),
                ));
            }
            Some((Token::Word(w), _)) if w == "exists" => {
                pos += 1;
                Predicate::Exists
            }
            Some((Token::Word(w), at)) if w == "not" => match tokens.get(pos + 1) {
                Some((Token::Word(e), _)) if e == "exists" => {
                    pos += 2;
                    Predicate::NotExists
                }
                _ => {
                    return Err(SyntaxError::new(
                        *at,
                        "`not` must be followed by `exists`",
                        "write `not exists`, or use `!=` to compare",
                    ));
                }
            },
            Some((token, at)) => {
                let op = match token {
                    Token::Op(o) => match o.as_str() {
                        "==" => Operator::Eq,
                        "!=" => Operator::Ne,
                        "<" => Operator::Lt,
                        "<=" => Operator::Le,
                        ">" => Operator::Gt,
                        _ => Operator::Ge,
                    },
                    Token::Word(w) if w == "in" => Operator::In,
                    Token::Word(w) if w == "contains" => Operator::Contains,
                    Token::Word(w) if w == "matches" => Operator::Matches,
                    other => {
                        return Err(SyntaxError::new(
                            *at,
                            format!("expected an operator, found {}", describe_token(other)),
                            format!("use one of {OPERATORS}"),
                        ));
                    }
                };
                pos += 1;
                let expected = parse_expected(&tokens, &mut pos, end, source)?;
                if op == Operator::In && !matches!(expected, Expected::List(_)) {
                    return Err(SyntaxError::new(
                        tokens[pos - 1].1,
                        "`in` needs a list",
                        "write it like `status in [200, 201]`",
                    ));
                }
                let regex = match (&op, &expected) {
                    (Operator::Matches, Expected::Text(t)) if t.is_literal() => {
                        let offset = tokens[pos - 1].1;
                        Some(regex::Regex::new(t.source()).map_err(|e| {
                            SyntaxError::new(
                                offset + 1,
                                format!(
                                    "invalid regex: {}",
                                    e.to_string().lines().last().unwrap_or("").trim()
                                ),
                                "see https://docs.rs/regex for the syntax",
                            )
                        })?)
                    }
                    (Operator::Matches, Expected::Text(_)) => None,
                    (Operator::Matches, _) => {
                        return Err(SyntaxError::new(
                            tokens[pos - 1].1,
                            "`matches` needs a quoted regular expression",
                            "write it like `body matches \"order-[0-9]+\"`",
                        ));
                    }
                    _ => None,
                };
                Predicate::Compare {
                    op,
                    expected,
                    regex,
                }
            }
        };
        if let Some((token, at)) = tokens.get(pos) {
            return Err(SyntaxError::new(
                *at,
                format!("unexpected {} after the assertion", describe_token(token)),
                "write one assertion per line",
            ));
        }
        let template_offsets = string_offsets(&tokens);
        Ok(Assertion {
            source: source.to_string(),
            query,
            count,
            predicate,
            template_offsets,
        })
    }

    /// The assertion as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The query this assertion reads.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Templates of the expected value, each with the byte offset of its string in the source.
    pub fn templates(&self) -> Vec<(&Template, usize)> {
        let mut found = Vec::new();
        if let Predicate::Compare { expected, .. } = &self.predicate {
            expected.templates(&mut found);
        }
        found
            .into_iter()
            .zip(self.template_offsets.iter().copied())
            .collect()
    }

    /// Evaluates against what a step observed. Secrets are masked in actual and expected.
    pub fn evaluate(
        &self,
        obs: &Observation<'_>,
        scope: &mut Scope,
        masker: &Masker,
    ) -> AssertResult {
        let mut result = AssertResult {
            expr: self.source.clone(),
            result: Outcome::Fail,
            actual: None,
            expected: String::new(),
            message: None,
        };
        let found = match self.query.evaluate(obs) {
            Ok(v) => v,
            Err(message) => {
                result.expected = self.expected_text(scope, masker);
                result.message = Some(masker.mask(&message));
                return result;
            }
        };
        let found = if self.count {
            found.map(|v| match v {
                Value::List(items) => Value::Number(items.len() as f64),
                Value::Object(map) => Value::Number(map.len() as f64),
                Value::Text(s) => Value::Number(s.chars().count() as f64),
                _ => Value::Number(1.0),
            })
        } else {
            found
        };
        result.actual = found.as_ref().map(|v| masker.mask(&v.to_string()));
        let verdict = match &self.predicate {
            Predicate::Exists => {
                result.expected = "exists".into();
                Ok(found.is_some())
            }
            Predicate::NotExists => {
                result.expected = "not exists".into();
                Ok(found.is_none())
            }
            Predicate::Compare {
                op,
                expected,
                regex,
            } => match expected.render(scope) {
                Err(e) => Err(e),
                Ok(want) => {
                    result.expected = masker.mask(&format!("{} {want}", op.symbol()));
                    match &found {
                        None => Ok(*op == Operator::Ne),
                        Some(actual) => compare(*op, actual, &want, regex.as_ref()),
                    }
                }
            },
        };
        match verdict {
            Ok(true) => result.result = Outcome::Pass,
            Ok(false) => result.result = Outcome::Fail,
            Err(message) => {
                result.result = Outcome::Error;
                result.message = Some(masker.mask(&message));
            }
        }
        result
    }

    fn expected_text(&self, scope: &mut Scope, masker: &Masker) -> String {
        match &self.predicate {
            Predicate::Exists => "exists".into(),
            Predicate::NotExists => "not exists".into(),
            Predicate::Compare { op, expected, .. } => match expected.render(scope) {
                Ok(v) => masker.mask(&format!("{} {v}", op.symbol())),
                Err(_) => op.symbol().into(),
            },
        }
    }
}

fn compare(
    op: Operator,
    actual: &Value,
    want: &Value,
    regex: Option<&regex::Regex>,
) -> Result<bool, String> {
    Ok(match op {
        Operator::Eq => actual.loosely_equals(want),
        Operator::Ne => !actual.loosely_equals(want),
        Operator::Lt => actual.compare(want)? == Ordering::Less,
        Operator::Le => actual.compare(want)? != Ordering::Greater,
        Operator::Gt => actual.compare(want)? == Ordering::Greater,
        Operator::Ge => actual.compare(want)? != Ordering::Less,
        Operator::In => match want {
            Value::List(items) => items.iter().any(|i| actual.loosely_equals(i)),
            other => return Err(format!("`in` needs a list, got {}", other.kind())),
        },
        Operator::Contains => match (actual, want) {
            (Value::Text(a), Value::Text(w)) => a.contains(w.as_str()),
            (Value::List(items), w) => items.iter().any(|i| i.loosely_equals(w)),
            (Value::Object(map), Value::Text(key)) => map.contains_key(key),
            (a, w) => {
                return Err(format!(
                    "cannot check whether {} contains {}",
                    a.kind(),
                    w.kind()
                ));
            }
        },
        Operator::Matches => {
            let Value::Text(text) = actual else {
                return Err(format!("`matches` needs text, got {}", actual.kind()));
            };
            match (regex, want) {
                (Some(re), _) => re.is_match(text),
                (None, Value::Text(pattern)) => regex::Regex::new(pattern)
                    .map_err(|e| format!("invalid regex after rendering: {e}"))?
                    .is_match(text),
                (None, other) => {
                    return Err(format!("`matches` needs a pattern, got {}", other.kind()));
                }
            }
        }
    })
}

fn parse_expected(
    tokens: &[(Token, usize)],
    pos: &mut usize,
    end: usize,
    source: &str,
) -> Result<Expected, SyntaxError> {
    let Some((token, at)) = tokens.get(*pos) else {
        return Err(SyntaxError::new(
            end,
            "missing the expected value",
            "add a value, e.g. `== 200`, `< 500ms`, `contains \"ok\"`",
        ));
    };
    *pos += 1;
    Ok(match token {
        Token::Number(n) => Expected::Value(Value::Number(*n)),
        Token::Duration(text) => Expected::Value(Value::duration(
            humantime::parse_duration(text).map_err(|e| {
                SyntaxError::new(
                    *at,
                    format!("invalid duration `{text}`: {e}"),
                    "write durations like 500ms, 2s, 30d",
                )
            })?,
        )),
        Token::Str(s) => {
            let template = Template::parse(s).map_err(|e| {
                // The string starts one byte after its opening quote; escapes before the
                // placeholder would shift this, which is rare enough to accept.
                let offset = (*at + 1 + e.offset).min(source.len());
                SyntaxError {
                    offset,
                    message: e.message,
                    help: e.help,
                }
            })?;
            Expected::Text(template)
        }
        Token::Word(w) if w == "true" => Expected::Value(Value::Bool(true)),
        Token::Word(w) if w == "false" => Expected::Value(Value::Bool(false)),
        Token::Word(w) if w == "null" => Expected::Value(Value::Null),
        Token::Open => {
            let mut items = Vec::new();
            loop {
                if let Some((Token::Close, _)) = tokens.get(*pos) {
                    *pos += 1;
                    break;
                }
                items.push(parse_expected(tokens, pos, end, source)?);
                match tokens.get(*pos) {
                    Some((Token::Comma, _)) => *pos += 1,
                    Some((Token::Close, _)) => {
                        *pos += 1;
                        break;
                    }
                    other => {
                        return Err(SyntaxError::new(
                            other.map_or(end, |t| t.1),
                            "expected `,` or `]` in the list",
                            "write lists like [200, 201]",
                        ));
                    }
                }
            }
            Expected::List(items)
        }
        Token::Word(w) => {
            return Err(SyntaxError::new(
                *at,
                format!("`{w}` is not a value"),
                format!("quote text: \"{w}\"; templates go inside quotes too: \"{{{{ {w} }}}}\""),
            ));
        }
        other => {
            return Err(SyntaxError::new(
                *at,
                format!("expected a value, found {}", describe_token(other)),
                "write a number, a duration, a quoted string or a list",
            ));
        }
    })
}

fn string_offsets(tokens: &[(Token, usize)]) -> Vec<usize> {
    // Strings after the operator, in order: the query's own argument is not a template.
    let op_index = tokens.iter().position(|(t, _)| {
        matches!(t, Token::Op(_))
            || matches!(t, Token::Word(w) if w == "in" || w == "contains" || w == "matches")
    });
    match op_index {
        Some(i) => tokens[i..]
            .iter()
            .filter(|(t, _)| matches!(t, Token::Str(_)))
            .map(|(_, o)| o + 1)
            .collect(),
        None => Vec::new(),
    }
}

fn describe_token(token: &Token) -> String {
    match token {
        Token::Word(w) => format!("`{w}`"),
        Token::Str(s) => format!("\"{s}\""),
        Token::Number(n) => format!("`{n}`"),
        Token::Duration(d) => format!("`{d}`"),
        Token::Op(o) => format!("`{o}`"),
        Token::Open => "`[`".into(),
        Token::Close => "`]`".into(),
        Token::Comma => "`,`".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(expr: &str, obs: &Observation<'_>) -> AssertResult {
        let a = Assertion::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
        a.evaluate(obs, &mut Scope::new(), &Masker::default())
    }

    fn response<'a>(headers: &'a [(String, String)], body: &'a str) -> Observation<'a> {
        Observation::new(
            Some(201),
            headers,
            body.as_bytes(),
            Duration::from_millis(120),
            None,
        )
    }

    #[test]
    fn every_operator_reports_actual_and_expected() {
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        let body = r#"{"token":"abc","items":[1,2,3],"name":"Laptop Pro","price":999.5}"#;
        let obs = response(&headers, body);
        let cases = [
            ("status == 201", Outcome::Pass, Some("201"), "== 201"),
            ("status != 201", Outcome::Fail, Some("201"), "!= 201"),
            (
                "status in [200, 201]",
                Outcome::Pass,
                Some("201"),
                "in [200, 201]",
            ),
            ("status < 300", Outcome::Pass, Some("201"), "< 300"),
            ("status >= 400", Outcome::Fail, Some("201"), ">= 400"),
            (
                "header \"Content-Type\" contains \"json\"",
                Outcome::Pass,
                Some("\"application/json\""),
                "contains \"json\"",
            ),
            (
                "jsonpath \"$.token\" exists",
                Outcome::Pass,
                Some("\"abc\""),
                "exists",
            ),
            (
                "jsonpath \"$.missing\" not exists",
                Outcome::Pass,
                None,
                "not exists",
            ),
            (
                "jsonpath \"$.missing\" exists",
                Outcome::Fail,
                None,
                "exists",
            ),
            (
                "jsonpath \"$.items\" count == 3",
                Outcome::Pass,
                Some("3"),
                "== 3",
            ),
            (
                "jsonpath \"$.items\" contains 2",
                Outcome::Pass,
                Some("[1, 2, 3]"),
                "contains 2",
            ),
            (
                "jsonpath \"$.price\" > 999",
                Outcome::Pass,
                Some("999.5"),
                "> 999",
            ),
            (
                "jsonpath \"$.name\" matches \"^Laptop\"",
                Outcome::Pass,
                Some("\"Laptop Pro\""),
                "matches \"^Laptop\"",
            ),
            (
                "body contains \"Laptop\"",
                Outcome::Pass,
                Some(body),
                "contains \"Laptop\"",
            ),
            ("duration < 500ms", Outcome::Pass, Some("120ms"), "< 500ms"),
            ("duration < 100", Outcome::Fail, Some("120ms"), "< 100"),
            (
                "regex \"\\\"token\\\":\\\"(\\w+)\\\"\" == \"abc\"",
                Outcome::Pass,
                Some("\"abc\""),
                "== \"abc\"",
            ),
        ];
        for (expr, outcome, actual, expected) in cases {
            let r = check(expr, &obs);
            assert_eq!(r.result, outcome, "{expr}: {r:?}");
            if expr.starts_with("body") {
                assert_eq!(
                    r.actual.as_deref(),
                    Some(format!("{:?}", body).as_str()),
                    "{expr}"
                );
            } else {
                assert_eq!(r.actual.as_deref(), actual, "{expr}");
            }
            assert_eq!(r.expected, expected, "{expr}");
        }
    }

    #[test]
    fn jsonpath_on_a_non_json_body_fails_with_a_message() {
        let obs = response(&[], "{\"products\": [");
        let r = check("jsonpath \"$.products\" exists", &obs);
        assert_eq!(r.result, Outcome::Fail);
        assert!(
            r.message
                .as_deref()
                .is_some_and(|m| m.starts_with("body is not valid JSON")),
            "{r:?}"
        );
    }

    #[test]
    fn templates_in_expected_values_render_and_mask() {
        let obs = response(&[], r#"{"email":"a@b.c"}"#);
        let a = Assertion::parse("jsonpath \"$.email\" == \"{{ who }}\"").expect("parses");
        let mut scope = Scope::new();
        scope.set("who", "a@b.c");
        let masker = Masker::new(["a@b.c".to_string()]);
        let r = a.evaluate(&obs, &mut scope, &masker);
        assert_eq!(r.result, Outcome::Pass);
        assert_eq!(r.expected, "== \"***\"");
        assert_eq!(r.actual.as_deref(), Some("\"***\""));
        assert_eq!(a.templates()[0].1, 23);
    }

    #[test]
    fn comparing_incomparable_values_is_an_error_not_a_pass() {
        let obs = response(&[], r#"{"ok":true}"#);
        let r = check("jsonpath \"$.ok\" > 3", &obs);
        assert_eq!(r.result, Outcome::Error);
        assert!(r.message.is_some());
    }

    #[test]
    fn syntax_errors_point_at_the_column() {
        let cases = [
            ("status === 200", 7, "unknown operator `===`"),
            ("staus == 200", 0, "unknown query `staus`"),
            ("status", 6, "`status` needs an operator and a value"),
            ("status ==", 9, "missing the expected value"),
            ("status in 200", 10, "`in` needs a list"),
            (
                "jsonpath token exists",
                9,
                "`jsonpath` needs a quoted JSONPath",
            ),
            ("body matches \"(\"", 14, "invalid regex"),
            (
                "status == 200 201",
                14,
                "unexpected `201` after the assertion",
            ),
            ("duration < 5zz", 11, "invalid duration `5zz`"),
            ("body contains \"{{ x \"", 15, "unclosed `{{`"),
            ("status == ok", 10, "`ok` is not a value"),
        ];
        for (expr, offset, message) in cases {
            let e = Assertion::parse(expr).expect_err(expr);
            assert_eq!(e.offset, offset, "{expr}: {e:?}");
            assert!(e.message.starts_with(message), "{expr}: {}", e.message);
            assert!(e.help.is_some());
        }
        let e = Assertion::parse("staus == 200").expect_err("typo");
        assert_eq!(e.help.as_deref(), Some("did you mean `status`?"));
    }
}
