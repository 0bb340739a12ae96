//! `redis` checks over a small RESP2 client of our own: a probe needs one connection, `AUTH`,
//! `SELECT` and a few commands, and owning the socket is what lets the step time connect and
//! tls like every other probe and speak TLS with the shared rustls configs.
//!
//! A wrong password or a missing one is an error (the check could not be carried out); an error
//! reply to one of the commands fails the step, stops the remaining commands and is still
//! there for the assertions to read. Phases: resolve, connect, tls; processing spans the
//! commands (after `AUTH` and `SELECT`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use super::{Ctx, Failed, Observed, render};
use crate::net::dial::io_error;
use crate::net::{Dial, Endpoint, FailureKind};
use crate::query::named;
use crate::spec::RedisCheck;
use crate::template::Scope;
use crate::value::Value;

/// The default port.
const PORT: u16 = 6379;
/// A reply larger than this is refused: a probe has no use for it.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Arrays nested deeper than this are refused.
const MAX_DEPTH: usize = 32;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello`; `None` is the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*2…`; `None` is the nil array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as a value for assertions: nil is null, errors are their text.
    pub fn to_value(&self) -> Value {
        match self {
            Reply::Simple(s) | Reply::Error(s) => Value::Text(s.clone()),
            Reply::Integer(n) => Value::Number(*n as f64),
            Reply::Bulk(Some(b)) => Value::Text(String::from_utf8_lossy(b).into_owned()),
            Reply::Bulk(None) | Reply::Array(None) => Value::Null,
            Reply::Array(Some(items)) => Value::List(items.iter().map(Reply::to_value).collect()),
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("reply nested too deeply".into());
    }
    let Some(end) = find_crlf(buf, at) else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[at + 1..end]).into_owned();
    let next = end + 2;
    let number = |line: &str| -> Result<i64, String> {
        line.parse::<i64>()
            .map_err(|_| format!("invalid length or integer `{line}` in a reply"))
    };
    Ok(Some(match kind {
        b'+' => (Reply::Simple(line), next),
        b'-' => (Reply::Error(line), next),
        b':' => (Reply::Integer(number(&line)?), next),
        b'$' => {
            let len = number(&line)?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next - at)));
            }
            let len = usize::try_from(len).map_err(|_| "invalid bulk length".to_string())?;
            if len > MAX_REPLY_BYTES {
                return Err(format!("reply larger than {} KiB", MAX_REPLY_BYTES / 1024));
            }
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            (
                Reply::Bulk(Some(buf[next..next + len].to_vec())),
                next + len + 2,
            )
        }
        b'*' => {
            let count = number(&line)?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), next - at)));
            }
            let mut items = Vec::new();
            let mut pos = next;
            for _ in 0..count {
                match parse_at(buf, pos, depth + 1)? {
                    Some((item, used)) => {
                        items.push(item);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(Some(items)), pos)
        }
        other => {
            return Err(format!(
                "unexpected reply type byte {:?} (is this a Redis server speaking RESP2?)",
                char::from(other)
            ));
        }
    })
    .map(|(reply, end)| (reply, end - at)))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

pub(crate) async fn run(
    check: &RedisCheck,
    ctx: &Ctx<'_>,
    scope: &mut Scope,
) -> Result<Observed, Failed> {
    let address = render(&check.address, scope, "address")?;
    let endpoint = Endpoint::parse(&address, Some(PORT)).map_err(Failed::error)?;
    let username = match &check.username {
        Some(t) => Some(render(t, scope, "username")?),
        None => None,
    };
    let password = match &check.password {
        Some(t) => {
            let p = render(t, scope, "password")?;
            scope.add_secret(p.clone());
            Some(p)
        }
        None => None,
    };
    let mut commands = Vec::with_capacity(check.commands.len());
    for command in &check.commands {
        let mut args = Vec::with_capacity(command.len());
        for arg in command {
            args.push(render(arg, scope, "commands")?);
        }
        commands.push(args);
    }
    let request_line = format!(
        "redis {endpoint}: {}",
        commands
            .iter()
            .map(|c| c.iter().map(|a| shown_arg(a)).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let session = Session {
        username,
        password,
        database: check.database,
        commands,
    };
    let mut dial = Dial::new(ctx.deadline);
    let (tcp, _) = dial
        .open(&endpoint.host, endpoint.port)
        .await
        .map_err(|f| Failed::from(f).with(&dial, None, &request_line))?;
    let mut handshake = None;
    let replies = if check.use_tls {
        let (tls, h) = ctx
            .handshake(&mut dial, &check.tls, &endpoint, scope, tcp)
            .await
            .map_err(|f| f.with(&dial, None, &request_line))?;
        handshake = Some(h);
        session.run(tls, &mut dial).await
    } else {
        session.run(tcp, &mut dial).await
    };
    let replies = replies.map_err(|f| f.with(&dial, handshake.as_ref(), &request_line))?;
    let mut observed = Observed {
        phases: dial.phases,
        handshake,
        request_line,
        ..Observed::default()
    };
    if let Some((Reply::Error(e), i)) = replies.last().map(|r| (r, replies.len() - 1)) {
        let name = session.commands[i].first().cloned().unwrap_or_default();
        observed.problem = Some(format!("`{name}` answered an error: {e}"));
    }
    let values: Vec<Value> = replies.iter().map(Reply::to_value).collect();
    if let Some(last) = values.last() {
        observed.body = last.to_plain_text().into_bytes();
        observed
            .values
            .push((named::REPLY.to_string(), last.clone()));
    }
    observed.shown_reply = values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    observed
        .values
        .push((named::REPLIES.to_string(), Value::List(values)));
    Ok(observed)
}

/// An argument as redis-cli would need it typed: quoted when it has spaces or quotes.
fn shown_arg(arg: &str) -> String {
    if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        format!("{arg:?}")
    } else {
        arg.to_string()
    }
}

/// What to do once connected.
struct Session {
    username: Option<String>,
    password: Option<String>,
    database: Option<u32>,
    commands: Vec<Vec<String>>,
}

impl Session {
    /// Authenticates, selects the database and runs the commands until one answers an error.
    async fn run<S>(&self, stream: S, dial: &mut Dial) -> Result<Vec<Reply>, Failed>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        if let Some(password) = &self.password {
            let mut auth = vec!["AUTH".to_string()];
            auth.extend(self.username.clone());
            auth.push(password.clone());
            if let Reply::Error(e) = conn.call(&auth, dial).await? {
                return Err(Failed::error(format!("authentication failed: {e}")));
            }
        }
        if let Some(db) = self.database {
            let select = vec!["SELECT".to_string(), db.to_string()];
            if let Reply::Error(e) = conn.call(&select, dial).await? {
                let message = match auth_problem(&e) {
                    Some(m) => m,
                    None => format!("SELECT {db} failed: {e}"),
                };
                return Err(Failed::error(message));
            }
        }
        let started = Instant::now();
        let mut replies = Vec::with_capacity(self.commands.len());
        for command in &self.commands {
            let reply = conn.call(command, dial).await?;
            if let Reply::Error(e) = &reply {
                if let Some(message) = auth_problem(e) {
                    return Err(Failed::error(message));
                }
                replies.push(reply);
                break;
            }
            replies.push(reply);
        }
        dial.phases.processing = started.elapsed();
        // QUIT is polite but not worth waiting for: the server closes either way.
        let _ = timeout_at(dial.deadline, conn.stream.shutdown()).await;
        Ok(replies)
    }
}

/// The error replies that mean the check could not log in at all.
fn auth_problem(error: &str) -> Option<String> {
    if error.starts_with("NOAUTH") {
        return Some(format!(
            "authentication required: {error}; set `password` (from a secret)"
        ));
    }
    if error.starts_with("WRONGPASS") {
        return Some(format!("authentication failed: {error}"));
    }
    None
}

/// A connection and the bytes read but not yet parsed.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Sends one command and reads its reply.
    async fn call(&mut self, args: &[String], dial: &Dial) -> Result<Reply, Failed> {
        let name = args.first().map(String::as_str).unwrap_or("");
        match timeout_at(dial.deadline, self.stream.write_all(&encode(args))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let message = format!("{} while sending `{name}`: {e}", io_error(&e));
                return Err(dial.fail(FailureKind::Io, message).into());
            }
            Err(_) => {
                return Err(dial
                    .timeout(&format!("sending `{name}` (processing)"))
                    .into());
            }
        }
        let mut chunk = [0u8; 8192];
        loop {
            match parse(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) if self.buf.len() > MAX_REPLY_BYTES => {
                    let message = format!("the reply to `{name}` is larger than 1 MiB");
                    return Err(dial.fail(FailureKind::Protocol, message).into());
                }
                Ok(None) => {}
                Err(e) => {
                    let message = format!("invalid reply to `{name}`: {e}");
                    return Err(dial.fail(FailureKind::Protocol, message).into());
                }
            }
            match timeout_at(dial.deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    let message =
                        format!("the server closed the connection before answering `{name}`");
                    return Err(dial.fail(FailureKind::Io, message).into());
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    let message =
                        format!("{} while reading the reply to `{name}`: {e}", io_error(&e));
                    return Err(dial.fail(FailureKind::Io, message).into());
                }
                Err(_) => {
                    let message = format!("waiting for the reply to `{name}` (processing)");
                    return Err(dial.timeout(&message).into());
                }
            }
        }
    }
}

/// Splits a command written as one string into arguments: whitespace separates them, double
/// or single quotes group them (`SET greeting "hello world"`), backslash escapes inside double
/// quotes. Errors name the column of the problem.
pub fn split_command(text: &str) -> Result<Vec<(String, usize)>, (usize, String)> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut arg = String::new();
        let mut quote = None;
        let mut quote_at = start;
        while let Some(&(i, c)) = chars.peek() {
            match (quote, c) {
                (None, c) if c.is_whitespace() => break,
                (None, '"' | '\'') => {
                    quote = Some(c);
                    quote_at = i;
                }
                (Some(q), c) if c == q => quote = None,
                (Some('"'), '\\') => {
                    chars.next();
                    match chars.peek() {
                        Some(&(_, 'n')) => arg.push('\n'),
                        Some(&(_, 'r')) => arg.push('\r'),
                        Some(&(_, 't')) => arg.push('\t'),
                        Some(&(_, other)) => arg.push(other),
                        None => break,
                    }
                }
                (_, c) => arg.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return Err((quote_at, "unterminated quote in the command".into()));
        }
        out.push((arg, start));
    }
    if out.is_empty() {
        return Err((0, "empty command".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_bulk_string_arrays() {
        let args = vec![
            "SET".to_string(),
            "k".to_string(),
            "hello world".to_string(),
        ];
        assert_eq!(
            encode(&args),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$11\r\nhello world\r\n".to_vec()
        );
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        assert_eq!(
            parse(b"+PONG\r\n"),
            Ok(Some((Reply::Simple("PONG".into()), 7)))
        );
        assert_eq!(
            parse(b"-ERR unknown command\r\n"),
            Ok(Some((Reply::Error("ERR unknown command".into()), 22)))
        );
        assert_eq!(parse(b":42\r\n"), Ok(Some((Reply::Integer(42), 5))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Bulk(None), 5))));
        assert_eq!(
            parse(b"$5\r\nhello\r\n+OK\r\n"),
            Ok(Some((Reply::Bulk(Some(b"hello".to_vec())), 11)))
        );
        assert_eq!(parse(b"$5\r\nhel"), Ok(None));
        assert_eq!(parse(b"+PON"), Ok(None));
        let array = b"*3\r\n:1\r\n$1\r\na\r\n*-1\r\n";
        assert_eq!(
            parse(array),
            Ok(Some((
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Bulk(Some(b"a".to_vec())),
                    Reply::Array(None)
                ])),
                array.len()
            )))
        );
        assert_eq!(parse(b"*2\r\n:1\r\n"), Ok(None));
        assert!(parse(b"HTTP/1.1 400\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
    }

    #[test]
    fn replies_become_values() {
        let r = Reply::Array(Some(vec![
            Reply::Integer(2),
            Reply::Bulk(None),
            Reply::Simple("OK".into()),
        ]));
        assert_eq!(r.to_value().to_string(), "[2, null, \"OK\"]");
    }

    #[test]
    fn command_strings_split_like_redis_cli() {
        let args = |s: &str| -> Vec<String> {
            split_command(s)
                .expect("splits")
                .into_iter()
                .map(|(a, _)| a)
                .collect()
        };
        assert_eq!(args("PING"), vec!["PING"]);
        assert_eq!(
            args(r#"SET  greeting "hello \"world\"" 'a b'"#),
            vec!["SET", "greeting", "hello \"world\"", "a b"]
        );
        assert_eq!(split_command("GET \"k").expect_err("open quote").0, 4);
        assert!(split_command("   ").is_err());
        assert_eq!(split_command("GET k").expect("splits")[1].1, 4);
    }

    #[test]
    fn login_errors_are_told_from_other_error_replies() {
        assert_eq!(
            auth_problem("WRONGPASS invalid username-password pair").as_deref(),
            Some("authentication failed: WRONGPASS invalid username-password pair")
        );
        assert!(
            auth_problem("NOAUTH Authentication required.")
                .is_some_and(|m| m.starts_with("authentication required: NOAUTH"))
        );
        assert_eq!(auth_problem("ERR unknown command 'NOPE'"), None);
    }
}
