//! `{{ … }}` templates: parsed once at config load, rendered per run against a [`Scope`].
//!
//! A template refers to vars and earlier captures by name, or to the built-ins `env.NAME`,
//! `file.PATH`, `random`, `uuid` and `timestamp`. Values read from `env.` and `file.` are secrets:
//! the scope remembers them so its [`Masker`] can scrub them from everything that leaves a run.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A parse error inside a template string; `offset` is a byte offset into the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// Byte offset of the problem in the template source.
    pub offset: usize,
    /// What is wrong, as one sentence.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

/// A rendering failure: a missing environment variable, an unreadable file, a capture that never
/// got a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// What a `{{ … }}` placeholder refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// A var or a capture, by name.
    Name(String),
    /// `env.NAME`: an environment variable (secret).
    Env(String),
    /// `file.PATH`: a file's contents, trailing newline trimmed (secret).
    File(String),
    /// `random`: a random 32-bit unsigned number.
    Random,
    /// `uuid`: a random v4 UUID.
    Uuid,
    /// `timestamp`: unix seconds.
    Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder { value: Placeholder, offset: usize },
}

/// A parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `source`, reporting the first malformed placeholder with its byte offset.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut base = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after_open = &rest[open + 2..];
            let Some(close) = after_open.find("}}") else {
                return Err(TemplateError {
                    offset: base + open,
                    message: "unclosed `{{` in template".into(),
                    help: Some("close the placeholder with `}}`, e.g. `{{ api }}`".into()),
                });
            };
            let inner = &after_open[..close];
            let lead = inner.len() - inner.trim_start().len();
            let offset = base + open + 2 + lead;
            let value = parse_placeholder(inner.trim(), offset)?;
            parts.push(Part::Placeholder { value, offset });
            let consumed = open + 2 + close + 2;
            base += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        // Templates live as long as the config: no spare capacity.
        parts.shrink_to_fit();
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// A template with no placeholders.
    pub fn literal(text: impl Into<String>) -> Template {
        let text = text.into();
        let parts = if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::Literal(text.clone())]
        };
        Template {
            source: text,
            parts,
        }
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when rendering always gives the source unchanged.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Every placeholder with its byte offset in the source, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = (&Placeholder, usize)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder { value, offset } => Some((value, *offset)),
            Part::Literal(_) => None,
        })
    }

    /// Renders against `scope`; secrets read on the way are added to the scope's masker.
    pub fn render(&self, scope: &mut Scope) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder { value, .. } => out.push_str(&scope.resolve(value)?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_placeholder(inner: &str, offset: usize) -> Result<Placeholder, TemplateError> {
    let err = |message: String, help: &str| TemplateError {
        offset,
        message,
        help: Some(help.to_string()),
    };
    if inner.is_empty() {
        return Err(err(
            "empty placeholder `{{ }}`".into(),
            "put a var, capture or built-in between the braces, e.g. `{{ uuid }}`",
        ));
    }
    if let Some(name) = inner.strip_prefix("env.") {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(err(
                format!("`{inner}` is not a valid environment variable reference"),
                "write `{{ env.NAME }}` with NAME made of letters, digits and `_`",
            ));
        }
        return Ok(Placeholder::Env(name.to_string()));
    }
    if let Some(path) = inner.strip_prefix("file.") {
        if path.trim().is_empty() {
            return Err(err(
                "`file.` needs a path".into(),
                "write `{{ file./run/secrets/password }}`",
            ));
        }
        return Ok(Placeholder::File(path.trim().to_string()));
    }
    match inner {
        "random" => return Ok(Placeholder::Random),
        "uuid" => return Ok(Placeholder::Uuid),
        "timestamp" => return Ok(Placeholder::Timestamp),
        _ => {}
    }
    if let Some((namespace, _)) = inner.split_once('.') {
        return Err(err(
            format!("unknown namespace `{namespace}.` in `{{{{ {inner} }}}}`"),
            "only `env.NAME` and `file.PATH` have a namespace; vars and captures are plain names",
        ));
    }
    let valid = inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !inner.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(err(
            format!("`{inner}` is not a valid name"),
            "names are letters, digits, `_` and `-`, e.g. `{{ api_url }}`",
        ));
    }
    Ok(Placeholder::Name(inner.to_string()))
}

/// Replaces every known secret value with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Arc<Vec<String>>,
}

impl Masker {
    /// The text that replaces a secret.
    pub const MASK: &'static str = "***";

    /// A masker for these secret values (empty strings are ignored).
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        // A secret can leave the process escaped: percent-encoded in a URL or form, escaped
        // inside a JSON string. Each of those spellings is masked too.
        let mut secrets: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .flat_map(|v| {
                let form: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
                let percent = form.replace('+', "%20");
                let json = serde_json::Value::String(v.clone()).to_string();
                let json = json[1..json.len() - 1].to_string();
                [v, form, percent, json]
            })
            .collect();
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Masker {
            secrets: Arc::new(secrets),
        }
    }

    /// This masker plus more secret values.
    pub fn with(&self, values: impl IntoIterator<Item = String>) -> Masker {
        Masker::new(self.secrets.iter().cloned().chain(values))
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), Self::MASK);
            }
        }
        out
    }

    /// Masks a string in place.
    pub fn mask_in_place(&self, text: &mut String) {
        if self.secrets.iter().any(|s| text.contains(s.as_str())) {
            *text = self.mask(text);
        }
    }

    /// The longest spelling of a secret, in bytes: how far past a cut a secret that starts
    /// before it can reach.
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, String::len)
    }

    /// At most the first `max_bytes` of `text` (cut at a character boundary), masked: a secret
    /// that starts before the cut is replaced whole, so no part of it is ever shown, even when
    /// it straddles the cut. `text` must reach [`Masker::longest`] bytes past the cut for
    /// that (or be whole).
    pub fn mask_prefix(&self, text: &str, max_bytes: usize) -> String {
        if text.len() <= max_bytes {
            return self.mask(text);
        }
        let mut out = String::with_capacity(max_bytes + Self::MASK.len());
        let mut at = 0;
        while at < max_bytes {
            let rest = &text[at..];
            // Longest first, as in `mask`.
            if let Some(secret) = self.secrets.iter().find(|s| rest.starts_with(s.as_str())) {
                out.push_str(Self::MASK);
                at += secret.len();
                continue;
            }
            let Some(c) = rest.chars().next() else { break };
            if at + c.len_utf8() > max_bytes {
                break;
            }
            out.push(c);
            at += c.len_utf8();
        }
        out
    }
}

/// A value visible to templates, remembering whether it is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeValue {
    /// The rendered text.
    pub text: String,
    /// True when it came (even partly) from `env.` or `file.`.
    pub secret: bool,
}

/// The names a run's templates can see: vars, then captures, plus the built-ins.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    values: HashMap<String, ScopeValue>,
    secrets: Vec<String>,
}

impl Scope {
    /// An empty scope (built-ins only).
    pub fn new() -> Scope {
        Scope::default()
    }

    /// Renders `vars` in order (each may use built-ins and earlier vars) into a new scope.
    pub fn with_vars<'a>(
        vars: impl IntoIterator<Item = (&'a String, &'a Template)>,
    ) -> Result<Scope, RenderError> {
        let mut scope = Scope::new();
        for (name, template) in vars {
            let before = scope.secrets.len();
            let text = template
                .render(&mut scope)
                .map_err(|e| RenderError(format!("var `{name}`: {e}")))?;
            let secret = scope.secrets.len() > before
                || template
                    .placeholders()
                    .any(|(p, _)| scope.is_secret_placeholder(p));
            if secret {
                scope.secrets.push(text.clone());
            }
            scope
                .values
                .insert(name.clone(), ScopeValue { text, secret });
        }
        Ok(scope)
    }

    fn is_secret_placeholder(&self, p: &Placeholder) -> bool {
        match p {
            Placeholder::Env(_) | Placeholder::File(_) => true,
            Placeholder::Name(n) => self.values.get(n).is_some_and(|v| v.secret),
            _ => false,
        }
    }

    /// Sets a capture (or var) value.
    pub fn set(&mut self, name: impl Into<String>, text: impl Into<String>) {
        self.values.insert(
            name.into(),
            ScopeValue {
                text: text.into(),
                secret: false,
            },
        );
    }

    /// The value of a name, if set.
    pub fn get(&self, name: &str) -> Option<&ScopeValue> {
        self.values.get(name)
    }

    /// Remembers `value` as a secret (a password written in the config itself, say), so it is
    /// masked like the values read from `env.` and `file.`.
    pub fn add_secret(&mut self, value: impl Into<String>) {
        let value = value.into();
        if !value.is_empty() && !self.secrets.contains(&value) {
            self.secrets.push(value);
        }
    }

    /// Every secret value this scope has read so far.
    pub fn secret_values(&self) -> impl Iterator<Item = String> + '_ {
        self.secrets.iter().cloned()
    }

    /// A masker for every secret this scope has read so far.
    pub fn masker(&self) -> Masker {
        Masker::new(self.secrets.iter().cloned())
    }

    fn resolve(&mut self, placeholder: &Placeholder) -> Result<String, RenderError> {
        match placeholder {
            Placeholder::Name(name) => match self.values.get(name) {
                Some(v) => Ok(v.text.clone()),
                None => Err(RenderError(format!(
                    "`{name}` has no value: no var of that name, and no earlier step captured it"
                ))),
            },
            Placeholder::Env(name) => {
                let value = std::env::var(name)
                    .map_err(|_| RenderError(format!("environment variable {name} is not set")))?;
                self.secrets.push(value.clone());
                Ok(value)
            }
            Placeholder::File(path) => {
                let raw = std::fs::read_to_string(path)
                    .map_err(|e| RenderError(format!("cannot read file {path}: {e}")))?;
                let value = raw.trim_end_matches(['\n', '\r']).to_string();
                self.secrets.push(value.clone());
                Ok(value)
            }
            Placeholder::Random => Ok(rand::random::<u32>().to_string()),
            Placeholder::Uuid => Ok(uuid::Uuid::new_v4().to_string()),
            Placeholder::Timestamp => Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, scope: &mut Scope) -> String {
        Template::parse(src)
            .expect("parses")
            .render(scope)
            .expect("renders")
    }

    #[test]
    fn literal_text_is_kept() {
        let t = Template::parse("plain text").expect("parses");
        assert!(t.is_literal());
        assert_eq!(t.render(&mut Scope::new()).expect("renders"), "plain text");
    }

    #[test]
    fn names_and_builtins_render() {
        let mut scope = Scope::new();
        scope.set("api", "http://127.0.0.1:1");
        assert_eq!(
            render("{{api}}/x/{{ api }}", &mut scope),
            "http://127.0.0.1:1/x/http://127.0.0.1:1"
        );
        let id = render("{{ uuid }}", &mut scope);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert!(render("{{ random }}", &mut scope).parse::<u32>().is_ok());
        let ts: u64 = render("{{timestamp}}", &mut scope).parse().expect("number");
        assert!(ts > 1_700_000_000);
    }

    #[test]
    fn placeholders_report_offsets() {
        let t = Template::parse("a {{ x }} b {{env.HOME}}").expect("parses");
        let found: Vec<_> = t.placeholders().map(|(p, o)| (p.clone(), o)).collect();
        assert_eq!(
            found,
            vec![
                (Placeholder::Name("x".into()), 5),
                (Placeholder::Env("HOME".into()), 14)
            ]
        );
    }

    #[test]
    fn malformed_placeholders_are_errors_with_offsets() {
        let e = Template::parse("ab {{ x ").expect_err("unclosed");
        assert_eq!(e.offset, 3);
        assert!(e.message.contains("unclosed"));
        let e = Template::parse("{{  }}").expect_err("empty");
        assert!(e.message.contains("empty"));
        let e = Template::parse("x{{ vault.key }}").expect_err("namespace");
        assert_eq!(e.offset, 4);
        assert!(
            e.message.contains("unknown namespace `vault.`"),
            "{}",
            e.message
        );
        let e = Template::parse("{{ env.1X }}").expect_err("bad env");
        assert!(e.message.contains("environment variable"));
    }

    #[test]
    fn env_and_file_values_are_secret_and_masked() {
        let dir = std::env::temp_dir().join(format!("patrol-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("pw");
        std::fs::write(&file, "s3cr3t-file\n").expect("write");
        // HOME is set for every test process; its value stands in for a secret.
        let var = "HOME";
        let home = std::env::var(var).expect("HOME is set");
        let vars = [
            (
                "pw".to_string(),
                Template::parse(&format!("{{{{ file.{} }}}}", file.display())).expect("p"),
            ),
            (
                "token".to_string(),
                Template::parse(&format!("Bearer {{{{ env.{var} }}}}")).expect("p"),
            ),
            (
                "derived".to_string(),
                Template::parse("x-{{ pw }}").expect("p"),
            ),
            ("plain".to_string(), Template::parse("visible").expect("p")),
        ];
        let scope = Scope::with_vars(vars.iter().map(|(n, t)| (n, t))).expect("renders");
        assert_eq!(
            scope.get("pw").map(|v| v.text.as_str()),
            Some("s3cr3t-file")
        );
        assert!(scope.get("token").is_some_and(|v| v.secret));
        assert!(scope.get("derived").is_some_and(|v| v.secret));
        assert!(scope.get("plain").is_some_and(|v| !v.secret));
        let masker = scope.masker();
        assert_eq!(
            masker.mask(&format!("pw=s3cr3t-file auth=Bearer {home} visible")),
            "pw=*** auth=*** visible"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_env_and_names_fail_to_render() {
        let t = Template::parse("{{ env.PATROL_TEST_SURELY_UNSET_VAR }}").expect("parses");
        let e = t.render(&mut Scope::new()).expect_err("unset");
        assert_eq!(
            e.0,
            "environment variable PATROL_TEST_SURELY_UNSET_VAR is not set"
        );
        let t = Template::parse("{{ token }}").expect("parses");
        assert!(
            t.render(&mut Scope::new())
                .expect_err("missing")
                .0
                .contains("`token` has no value")
        );
    }

    #[test]
    fn escaped_spellings_of_a_secret_are_masked() {
        let m = Masker::new(["a b&\"c".to_string()]);
        assert_eq!(
            m.mask("q=a+b%26%22c p=a%20b%26%22c j={\"k\":\"a b&\\\"c\"}"),
            "q=*** p=*** j={\"k\":\"***\"}"
        );
    }

    #[test]
    fn a_prefix_never_shows_part_of_a_secret_that_straddles_the_cut() {
        let m = Masker::new(["s3cr3t-value".to_string()]);
        let text = format!("{}s3cr3t-value and more", "x".repeat(10));
        for cut in 0..text.len() + 2 {
            let shown = m.mask_prefix(&text, cut);
            assert!(!shown.contains("s3c"), "cut {cut}: {shown}");
            assert!(
                shown.len() <= cut.max(10 + Masker::MASK.len()),
                "cut {cut}: {shown}"
            );
        }
        assert_eq!(m.mask_prefix(&text, 12), "xxxxxxxxxx***");
        assert_eq!(m.mask_prefix(&text, 10), "xxxxxxxxxx");
        assert_eq!(m.mask_prefix(&text, 100), "xxxxxxxxxx*** and more");
        // A cut inside a multi-byte character keeps the text valid.
        assert_eq!(Masker::default().mask_prefix("aé", 2), "a");
        assert_eq!(m.longest(), "s3cr3t-value".len());
    }

    #[test]
    fn masker_masks_longest_first() {
        let m = Masker::new(["abc".to_string(), "abcdef".to_string(), String::new()]);
        assert_eq!(m.mask("xabcdefx abc"), "x***x ***");
    }
}
