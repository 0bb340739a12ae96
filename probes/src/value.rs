//! Values that queries find and assertions expect, with the comparisons between them.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

/// A value found by a query or written in an assertion.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// JSON null.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// Text.
    Text(String),
    /// A list (JSON array, several JSONPath nodes, a list literal).
    List(Vec<Value>),
    /// A JSON object, kept as JSON.
    Object(serde_json::Map<String, serde_json::Value>),
    /// A signed span of time in seconds (negative for an expired certificate).
    Duration(f64),
}

impl Value {
    /// Converts a JSON value.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Value::Text(s.clone()),
            serde_json::Value::Array(items) => {
                Value::List(items.iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(map) => Value::Object(map.clone()),
        }
    }

    /// A duration value.
    pub fn duration(d: Duration) -> Value {
        Value::Duration(d.as_secs_f64())
    }

    /// The value as plain text, for captures: strings unquoted, everything else as JSON.
    pub fn to_plain_text(&self) -> String {
        match self {
            Value::Text(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Text(s) => s.trim().parse().ok(),
            Value::Duration(secs) => Some(secs * 1000.0),
            _ => None,
        }
    }

    fn as_seconds(&self) -> Option<f64> {
        match self {
            Value::Duration(s) => Some(*s),
            // A bare number next to a duration means milliseconds, as in `duration < 500`.
            Value::Number(n) => Some(n / 1000.0),
            _ => None,
        }
    }

    /// Loose equality: numbers compare numerically even when one side is numeric text.
    pub fn loosely_equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Duration(_), _) | (_, Value::Duration(_)) => {
                matches!((self.as_seconds(), other.as_seconds()), (Some(a), Some(b)) if (a - b).abs() < 1e-9)
            }
            (Value::Number(a), Value::Number(b)) => a == b,
            (Value::Number(_), Value::Text(_)) | (Value::Text(_), Value::Number(_)) => {
                matches!((self.as_number(), other.as_number()), (Some(a), Some(b)) if a == b)
            }
            (Value::List(a), Value::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.loosely_equals(y))
            }
            _ => self == other,
        }
    }

    /// Ordering for `<`, `<=`, `>`, `>=`; an error message when the two cannot be ordered.
    pub fn compare(&self, other: &Value) -> Result<Ordering, String> {
        let pair = match (self, other) {
            (Value::Duration(_), _) | (_, Value::Duration(_)) => {
                (self.as_seconds(), other.as_seconds())
            }
            (Value::Text(a), Value::Text(b)) => {
                match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
                    (Ok(x), Ok(y)) => (Some(x), Some(y)),
                    _ => return Ok(a.cmp(b)),
                }
            }
            _ => (self.as_number(), other.as_number()),
        };
        match pair {
            (Some(a), Some(b)) => a
                .partial_cmp(&b)
                .ok_or_else(|| format!("cannot order {self} and {other}")),
            _ => Err(format!("cannot order {} and {}", self.kind(), other.kind())),
        }
    }

    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Text(_) => "text",
            Value::List(_) => "a list",
            Value::Object(_) => "an object",
            Value::Duration(_) => "a duration",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => {
                if n.fract() == 0.0 && n.abs() < 1e15 {
                    write!(f, "{}", *n as i64)
                } else {
                    write!(f, "{n}")
                }
            }
            Value::Text(s) => write!(f, "{}", serde_json::Value::String(s.clone())),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Object(map) => write!(f, "{}", serde_json::Value::Object(map.clone())),
            Value::Duration(secs) => f.write_str(&format_seconds(*secs)),
        }
    }
}

/// Formats a signed number of seconds the way people read durations: `523ms`, `1.20s`, `29d 4h`.
pub fn format_seconds(secs: f64) -> String {
    let sign = if secs < 0.0 { "-" } else { "" };
    let s = secs.abs();
    let body = if s < 1.0 {
        let ms = s * 1000.0;
        if ms < 10.0 && ms.fract() != 0.0 {
            format!("{ms:.2}ms")
        } else {
            format!("{}ms", ms.round())
        }
    } else if s < 60.0 {
        format!("{s:.2}s")
    } else if s < 3600.0 {
        format!("{}m {}s", (s / 60.0).floor(), (s % 60.0).floor())
    } else if s < 86400.0 {
        format!(
            "{}h {}m",
            (s / 3600.0).floor(),
            ((s % 3600.0) / 60.0).floor()
        )
    } else {
        format!(
            "{}d {}h",
            (s / 86400.0).floor(),
            ((s % 86400.0) / 3600.0).floor()
        )
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_numeric_text_compare() {
        assert!(Value::Text("12".into()).loosely_equals(&Value::Number(12.0)));
        assert!(!Value::Text("12a".into()).loosely_equals(&Value::Number(12.0)));
        assert_eq!(
            Value::Number(3.0).compare(&Value::Text("10".into())),
            Ok(Ordering::Less)
        );
        assert!(Value::Bool(true).compare(&Value::Number(1.0)).is_err());
    }

    #[test]
    fn durations_compare_with_durations_and_milliseconds() {
        let d = Value::duration(Duration::from_millis(250));
        assert_eq!(d.compare(&Value::Duration(0.5)), Ok(Ordering::Less));
        assert_eq!(d.compare(&Value::Number(200.0)), Ok(Ordering::Greater));
        assert!(d.loosely_equals(&Value::Number(250.0)));
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(Value::Number(200.0).to_string(), "200");
        assert_eq!(Value::Text("a\"b".into()).to_string(), "\"a\\\"b\"");
        assert_eq!(Value::Duration(0.5234).to_string(), "523ms");
        assert_eq!(
            Value::Duration(30.0 * 86400.0 + 7200.0).to_string(),
            "30d 2h"
        );
        assert_eq!(Value::Duration(-90.0).to_string(), "-1m 30s");
    }
}
