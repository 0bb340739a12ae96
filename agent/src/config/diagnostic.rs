//! Config diagnostics: `file:line:col: error: what is wrong`, the offending line with a caret,
//! and how to fix it. Every problem in a file is collected and reported at once.

use std::fmt;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The config cannot be used.
    Error,
    /// The config works, but probably not as meant (e.g. an unset environment variable).
    Warning,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Width of the caret underline, in characters (at least 1).
    pub width: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

/// Every diagnostic of one file, with the source for rendering snippets.
#[derive(Debug, Clone)]
pub struct Report {
    /// The file as named on the command line.
    pub file: String,
    /// The file's text.
    pub source: String,
    /// Problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Number of errors (not warnings).
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    /// Renders one diagnostic with its source line.
    pub fn render(&self, d: &Diagnostic) -> String {
        let mut out = String::new();
        let label = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "{}:{}:{}: {label}: {}\n",
            self.file, d.line, d.col, d.message
        ));
        if let Some(text) = self.source.lines().nth(d.line.saturating_sub(1)) {
            let gutter = d.line.to_string().len();
            let shown = text.replace('\t', " ");
            out.push_str(&format!("{:>gutter$} | {shown}\n", d.line));
            let pad = d.col.saturating_sub(1);
            out.push_str(&format!(
                "{:>gutter$} | {}{}\n",
                "",
                " ".repeat(pad),
                "^".repeat(d.width.max(1))
            ));
        }
        if let Some(help) = &d.help {
            out.push_str(&format!("  = help: {help}\n"));
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{}", self.render(d))?;
        }
        let errors = self.error_count();
        let warnings = self.diagnostics.len() - errors;
        match (errors, warnings) {
            (0, 0) => Ok(()),
            (0, w) => write!(f, "{}: {w} warning{}", self.file, plural(w)),
            (e, 0) => write!(f, "{}: {e} error{}", self.file, plural(e)),
            (e, w) => write!(
                f,
                "{}: {e} error{}, {w} warning{}",
                self.file,
                plural(e),
                plural(w)
            ),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
