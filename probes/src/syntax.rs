//! The small lexer shared by assertions and captures: words, quoted strings, numbers, durations,
//! operators and lists, each with its byte offset so config errors can point at a column.

/// One token of an assertion or capture expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// A bare word: `status`, `jsonpath`, `exists`, `true`, ...
    Word(String),
    /// A quoted string, escapes resolved.
    Str(String),
    /// A number without a unit.
    Number(f64),
    /// A number with a unit, e.g. `500ms`, `30d` (the source text).
    Duration(String),
    /// `==`, `!=`, `<`, `<=`, `>`, `>=`.
    Op(String),
    /// `[`
    Open,
    /// `]`
    Close,
    /// `,`
    Comma,
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset in the expression.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl SyntaxError {
    /// An error with a hint.
    pub fn new(offset: usize, message: impl Into<String>, help: impl Into<String>) -> Self {
        SyntaxError {
            offset,
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

/// Splits `src` into tokens with their byte offsets.
pub fn tokenize(src: &str) -> Result<Vec<(Token, usize)>, SyntaxError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'[' => {
                out.push((Token::Open, start));
                i += 1;
            }
            b']' => {
                out.push((Token::Close, start));
                i += 1;
            }
            b',' => {
                out.push((Token::Comma, start));
                i += 1;
            }
            b'"' | b'\'' => {
                let (text, end) = quoted(src, start)?;
                out.push((Token::Str(text), start));
                i = end;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = src.get(i..i + 2).unwrap_or("");
                let op = match two {
                    "==" | "!=" | "<=" | ">=" => two,
                    _ if c == b'<' => "<",
                    _ if c == b'>' => ">",
                    _ => {
                        return Err(SyntaxError::new(
                            start,
                            format!("unknown operator `{}`", operator_run(src, start)),
                            "use one of == != < <= > >= in contains matches exists, not exists",
                        ));
                    }
                };
                // `===` or `=>` and friends: report the whole run of operator characters.
                let run = operator_run(src, start);
                if run.len() > op.len() {
                    return Err(SyntaxError::new(
                        start,
                        format!("unknown operator `{run}`"),
                        "use one of == != < <= > >= in contains matches exists, not exists",
                    ));
                }
                out.push((Token::Op(op.to_string()), start));
                i += op.len();
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                let end = src[i..]
                    .find(|ch: char| ch.is_whitespace() || matches!(ch, ',' | ']' | '['))
                    .map_or(src.len(), |n| i + n);
                let text = &src[i..end];
                if let Ok(n) = text.parse::<f64>() {
                    out.push((Token::Number(n), start));
                } else if text
                    .chars()
                    .last()
                    .is_some_and(|ch| ch.is_ascii_alphabetic())
                {
                    out.push((Token::Duration(text.to_string()), start));
                } else {
                    return Err(SyntaxError::new(
                        start,
                        format!("`{text}` is not a number"),
                        "write a number like 200 or 0.5, or a duration like 500ms",
                    ));
                }
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = src[i..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .map_or(src.len(), |n| i + n);
                out.push((Token::Word(src[i..end].to_string()), start));
                i = end;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(SyntaxError::new(
                    start,
                    format!("unexpected character `{ch}`"),
                    "quote text values with double quotes, e.g. body contains \"ok\"",
                ));
            }
        }
    }
    Ok(out)
}

fn operator_run(src: &str, start: usize) -> &str {
    let end = src[start..]
        .find(|ch: char| !matches!(ch, '=' | '!' | '<' | '>'))
        .map_or(src.len(), |n| start + n);
    &src[start..end]
}

/// Reads a quoted string starting at `start` (the quote); returns the text and the end offset.
fn quoted(src: &str, start: usize) -> Result<(String, usize), SyntaxError> {
    let quote = src.as_bytes()[start] as char;
    let mut text = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((n, ch)) = chars.next() {
        if ch == quote {
            return Ok((text, start + 1 + n + 1));
        }
        if ch == '\\' && quote == '"' {
            match chars.next() {
                Some((_, '"')) => text.push('"'),
                Some((_, '\\')) => text.push('\\'),
                Some((_, 'n')) => text.push('\n'),
                Some((_, 't')) => text.push('\t'),
                // Keep other escapes as written: regexes like "\d+" stay intact.
                Some((_, other)) => {
                    text.push('\\');
                    text.push(other);
                }
                None => break,
            }
        } else {
            text.push(ch);
        }
    }
    Err(SyntaxError::new(
        start,
        "unterminated string",
        format!("close the string with {quote}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_an_assertion() {
        let toks = tokenize(r#"jsonpath "$.a[0]" count >= 2"#).expect("lexes");
        assert_eq!(
            toks,
            vec![
                (Token::Word("jsonpath".into()), 0),
                (Token::Str("$.a[0]".into()), 9),
                (Token::Word("count".into()), 18),
                (Token::Op(">=".into()), 24),
                (Token::Number(2.0), 27),
            ]
        );
    }

    #[test]
    fn lists_durations_and_escapes() {
        let toks = tokenize(r#"in [200, 201] 500ms "a\"b\d""#).expect("lexes");
        assert_eq!(toks[1].0, Token::Open);
        assert_eq!(toks[2].0, Token::Number(200.0));
        assert_eq!(toks[6].0, Token::Duration("500ms".into()));
        assert_eq!(toks[7].0, Token::Str("a\"b\\d".into()));
    }

    #[test]
    fn bad_operators_point_at_their_column() {
        let e = tokenize("status === 200").expect_err("bad op");
        assert_eq!(e.offset, 7);
        assert_eq!(e.message, "unknown operator `===`");
        let e = tokenize("body contains \"x").expect_err("unterminated");
        assert_eq!(e.offset, 14);
    }
}
