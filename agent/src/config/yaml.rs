//! A span-keeping walk over the YAML tree (saphyr's `MarkedYaml`): typed accessors that record a
//! diagnostic and carry on instead of stopping at the first problem.

use std::time::Duration;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::diagnostic::{Diagnostic, Severity};

/// A node of the parsed file.
pub type Node<'s> = MarkedYaml<'s>;

/// Walks one file, collecting diagnostics.
#[derive(Debug)]
pub struct Walker<'s> {
    source: std::marker::PhantomData<&'s str>,
    chars: Vec<char>,
    /// Everything found so far.
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads the first document of `source`; a YAML syntax error becomes a diagnostic.
pub fn load(source: &str) -> Result<Option<Node<'_>>, Diagnostic> {
    match MarkedYaml::load_from_str(source) {
        Ok(mut docs) => Ok(if docs.is_empty() {
            None
        } else {
            Some(docs.swap_remove(0))
        }),
        Err(e) => {
            let m = e.marker();
            Err(Diagnostic {
                severity: Severity::Error,
                line: m.line().max(1),
                col: m.col() + 1,
                width: 1,
                message: format!("invalid YAML: {}", e.info()),
                help: Some("check indentation and quoting around this point".into()),
            })
        }
    }
}

impl<'s> Walker<'s> {
    /// A walker over `source`.
    pub fn new(source: &'s str) -> Self {
        Walker {
            source: std::marker::PhantomData,
            chars: source.chars().collect(),
            diagnostics: Vec::new(),
        }
    }

    /// Records an error at a node, underlining it.
    pub fn error(&mut self, node: &Node<'_>, message: impl Into<String>, help: impl Into<String>) {
        let width = self.width(node);
        self.push(
            Severity::Error,
            node,
            0,
            width,
            message.into(),
            Some(help.into()),
        );
    }

    /// Records an error at a byte offset inside a string scalar, pointing at the exact column
    /// when the source spells the string as parsed (no escapes, one line).
    pub fn error_in(
        &mut self,
        node: &Node<'_>,
        offset: usize,
        width: usize,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push_in(Severity::Error, node, offset, width, message.into(), help);
    }

    /// Records a warning at a byte offset inside a string scalar.
    pub fn warn_in(
        &mut self,
        node: &Node<'_>,
        offset: usize,
        width: usize,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push_in(
            Severity::Warning,
            node,
            offset,
            width,
            message.into(),
            Some(help.into()),
        );
    }

    fn push_in(
        &mut self,
        severity: Severity,
        node: &Node<'_>,
        offset: usize,
        width: usize,
        message: String,
        help: Option<String>,
    ) {
        let text = self.scalar(node).unwrap_or_default();
        let raw = self.raw(node).trim_end().to_string();
        let quoted = raw.starts_with('"') || raw.starts_with('\'');
        let inner = if quoted && raw.len() >= 2 {
            raw.get(1..raw.len() - 1).unwrap_or_default()
        } else {
            raw.as_str()
        };
        let col_offset = if inner == text && !text.contains('\n') {
            let prefix = text.get(..offset.min(text.len())).unwrap_or(&text);
            usize::from(quoted) + prefix.chars().count()
        } else {
            0
        };
        self.push(severity, node, col_offset, width.max(1), message, help);
    }

    fn push(
        &mut self,
        severity: Severity,
        node: &Node<'_>,
        col_offset: usize,
        width: usize,
        message: String,
        help: Option<String>,
    ) {
        let start = node.span.start;
        self.diagnostics.push(Diagnostic {
            severity,
            line: start.line().max(1),
            col: start.col() + 1 + col_offset,
            width,
            message,
            help,
        });
    }

    /// The source text of a node (first line only for multi-line nodes).
    pub fn raw(&self, node: &Node<'_>) -> String {
        let (a, b) = (node.span.start.index(), node.span.end.index());
        if b <= a || b > self.chars.len() {
            return String::new();
        }
        self.chars[a..b]
            .iter()
            .take_while(|c| **c != '\n')
            .collect()
    }

    fn width(&self, node: &Node<'_>) -> usize {
        match node.data {
            YamlData::Mapping(_) | YamlData::Sequence(_) => 1,
            _ => self.raw(node).trim_end().chars().count().max(1),
        }
    }

    /// A scalar's text (numbers and booleans as written), or `None` for collections and null.
    pub fn scalar(&self, node: &Node<'_>) -> Option<String> {
        match &node.data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            YamlData::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_) | Scalar::Boolean(_)) => {
                let raw = self.raw(node);
                Some(raw.trim().to_string())
            }
            YamlData::Representation(s, _, _) => Some(s.to_string()),
            _ => None,
        }
    }

    /// A string value (numbers accepted as their text).
    pub fn string(&mut self, node: &Node<'_>, what: &str) -> Option<String> {
        let v = self.scalar(node);
        if v.is_none() {
            self.error(
                node,
                format!("{what} must be a string, found {}", kind(node)),
                format!("write {what} as text"),
            );
        }
        v
    }

    /// A boolean value.
    pub fn boolean(&mut self, node: &Node<'_>, what: &str) -> Option<bool> {
        match &node.data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                self.error(
                    node,
                    format!("{what} must be true or false, found {}", kind(node)),
                    "write true or false",
                );
                None
            }
        }
    }

    /// A non-negative integer.
    pub fn count(&mut self, node: &Node<'_>, what: &str) -> Option<u64> {
        match &node.data {
            YamlData::Value(Scalar::Integer(n)) if *n >= 0 => Some(*n as u64),
            _ => {
                self.error(
                    node,
                    format!("{what} must be a whole number ≥ 0, found {}", kind(node)),
                    format!("write e.g. `{what}: 2`"),
                );
                None
            }
        }
    }

    /// A humane duration (`500ms`, `10s`, `5m`).
    pub fn duration(&mut self, node: &Node<'_>, what: &str) -> Option<Duration> {
        let text = self.scalar(node);
        match text.as_deref().map(humantime::parse_duration) {
            Some(Ok(d)) if !d.is_zero() => Some(d),
            Some(Ok(_)) => {
                self.error(
                    node,
                    format!("{what} must be longer than zero"),
                    "write e.g. 10s",
                );
                None
            }
            Some(Err(e)) => {
                let t = text.unwrap_or_default();
                let help = if t.chars().all(|c| c.is_ascii_digit()) {
                    format!("add a unit: `{t}s` or `{t}ms`")
                } else {
                    "write durations like 500ms, 10s, 5m, 1h".into()
                };
                self.error(
                    node,
                    format!("invalid duration `{t}` for {what}: {e}"),
                    help,
                );
                None
            }
            None => {
                self.error(
                    node,
                    format!("{what} must be a duration, found {}", kind(node)),
                    "write durations like 500ms, 10s, 5m",
                );
                None
            }
        }
    }

    /// A list's items; records an error for anything else.
    pub fn list<'n, 'y>(&mut self, node: &'n Node<'y>, what: &str) -> Option<&'n [Node<'y>]> {
        match &node.data {
            YamlData::Sequence(items) => Some(items.as_slice()),
            _ => {
                self.error(
                    node,
                    format!("{what} must be a list, found {}", kind(node)),
                    format!("write {what} as a YAML list, one `- item` per line"),
                );
                None
            }
        }
    }

    /// A list of strings (a single string is accepted as a one-item list).
    pub fn strings(&mut self, node: &Node<'_>, what: &str) -> Vec<String> {
        if let Some(s) = self.scalar(node) {
            return vec![s];
        }
        let Some(items) = self.list(node, what) else {
            return Vec::new();
        };
        items.iter().filter_map(|i| self.string(i, what)).collect()
    }

    /// A mapping's entries as (key text, key node, value node), checking keys against `allowed`
    /// (unknown keys get a "did you mean") and that every `required` key is present.
    pub fn map<'n, 'y>(
        &mut self,
        node: &'n Node<'y>,
        what: &str,
        allowed: &[&str],
        required: &[&str],
    ) -> Option<Vec<(String, &'n Node<'y>, &'n Node<'y>)>> {
        let YamlData::Mapping(map) = &node.data else {
            self.error(
                node,
                format!(
                    "{what} must be a mapping of `key: value` lines, found {}",
                    kind(node)
                ),
                format!("see the config reference for the keys of {what}"),
            );
            return None;
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Some(key) = self.scalar(k) else {
                self.error(
                    k,
                    format!("keys of {what} must be strings"),
                    "use a plain word as the key",
                );
                continue;
            };
            if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
                let help = did_you_mean(&key, allowed.iter().copied())
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("{what} takes: {}", allowed.join(", ")));
                self.error(k, format!("unknown key `{key}` in {what}"), help);
                continue;
            }
            entries.push((key, k, v));
        }
        for req in required {
            if !entries.iter().any(|(k, _, _)| k == req) {
                self.error(
                    node,
                    format!("{what} is missing `{req}`"),
                    format!("add `{req}:` to {what}"),
                );
            }
        }
        Some(entries)
    }
}

/// The closest candidate within a small edit distance.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A short description of a node's kind, for messages.
pub fn kind(node: &Node<'_>) -> &'static str {
    match &node.data {
        YamlData::Mapping(_) => "a mapping",
        YamlData::Sequence(_) => "a list",
        YamlData::Value(Scalar::Null) => "nothing",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Tagged(..) => "a tagged value",
        YamlData::Alias(_) => "an alias",
        YamlData::BadValue => "an invalid value",
    }
}
