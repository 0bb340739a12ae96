//! `postgres` checks: connect with a DSN (the password from a secret), log in, run one query
//! and read its rows as text. tokio-postgres speaks the protocol over a socket this module
//! opens itself (`connect_raw`), so resolve, connect and tls are timed like every other probe
//! and TLS uses the shared rustls configs.
//!
//! The session starts with `default_transaction_read_only = on` (unless `read_only: false`) and
//! a `statement_timeout` (by default the step's remaining time, so the server gives up when the
//! probe does), both as startup options: they hold for this session only, never for a pooled
//! server connection someone else gets next. Results come back through the simple protocol, so
//! every type reads as psql prints it; numbers are numbers, NULL is null.
//!
//! Outcomes: connection, TLS and login problems are errors; a query the server rejects fails
//! the step with the server's message; a query cancelled by the statement timeout is a timeout.
//! Phases: resolve, connect, tls; processing is the query (login time is in the step only).

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::config::Host as PgHost;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{ChannelBinding, TlsConnect};
use tokio_rustls::TlsConnector;

use super::{Ctx, Failed, Observed, render};
use crate::net::dial::chain;
use crate::net::tls::{Handshake, server_name};
use crate::net::{Dial, Endpoint};
use crate::query::named;
use crate::result::Outcome;
use crate::spec::{PostgresCheck, SslMode};
use crate::template::Scope;
use crate::value::Value;

/// Rows kept for assertions and `-v` output; the row count is still exact.
const MAX_ROWS: usize = 1000;

/// A DSN taken apart: what tokio-postgres parses, plus the TLS settings it does not know.
#[derive(Debug)]
pub struct Dsn {
    /// Everything but `sslmode` and `sslrootcert`.
    pub config: tokio_postgres::Config,
    /// `sslmode` as written in the DSN.
    pub sslmode: Option<SslMode>,
    /// `sslrootcert` as written in the DSN.
    pub root_cert: Option<String>,
}

/// Parses a DSN (`postgres://user@host:5432/db?sslmode=require` or `host=… dbname=…`),
/// checking what a probe needs: exactly one TCP host.
pub fn parse_dsn(dsn: &str) -> Result<Dsn, String> {
    let (rest, params) = take_tls_params(dsn);
    let mut sslmode = None;
    let mut root_cert = None;
    for (key, value) in params {
        if key == "sslmode" {
            sslmode = Some(SslMode::parse(&value)?);
        } else {
            root_cert = Some(value);
        }
    }
    let config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("invalid DSN: {}", chain(&e)))?;
    match config.get_hosts() {
        [] => {
            return Err(
                "the DSN names no host; add one, e.g. postgres://user@db.internal:5432/app".into(),
            );
        }
        [PgHost::Tcp(_)] => {}
        [_] => {
            return Err(
                "Unix-socket hosts are not supported; give a TCP host, e.g. host=127.0.0.1".into(),
            );
        }
        _ => {
            return Err(
                "the DSN names several hosts; a probe checks one, so give one host per step".into(),
            );
        }
    }
    if config.get_ports().len() > 1 {
        return Err("the DSN names several ports; give one".into());
    }
    Ok(Dsn {
        config,
        sslmode,
        root_cert,
    })
}

/// Removes `sslmode` and `sslrootcert` from a DSN in either form, returning them: libpq's
/// modes include `verify-full`, which tokio-postgres does not parse, and certificates are this
/// crate's business.
fn take_tls_params(dsn: &str) -> (String, Vec<(String, String)>) {
    let is_tls_key = |k: &str| matches!(k, "sslmode" | "sslrootcert");
    let mut found = Vec::new();
    let trimmed = dsn.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return (trimmed.to_string(), found);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if is_tls_key(k) {
                let v = url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map_or_else(|| v.to_string(), |(_, v)| v.into_owned());
                found.push((k.to_string(), v));
            } else if !pair.is_empty() {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, found);
    }
    // key=value form: spaces around `=` allowed, values may be 'single quoted' with \' escapes.
    let mut kept: Vec<String> = Vec::new();
    let mut chars = trimmed.chars().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    loop {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        skip_spaces(&mut chars);
        if chars.peek() != Some(&'=') {
            // Not key=value: left for tokio-postgres to reject.
            kept.push(key);
            continue;
        }
        chars.next();
        skip_spaces(&mut chars);
        let (mut raw, mut value) = (String::new(), String::new());
        if chars.peek() == Some(&'\'') {
            raw.push('\'');
            chars.next();
            while let Some(c) = chars.next() {
                raw.push(c);
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            raw.push(n);
                            value.push(n);
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                raw.push(c);
                value.push(c);
                chars.next();
            }
        }
        if is_tls_key(&key) {
            found.push((key, value));
        } else {
            kept.push(format!("{key}={raw}"));
        }
    }
    (kept.join(" "), found)
}

pub(crate) async fn run(
    check: &PostgresCheck,
    ctx: &Ctx<'_>,
    scope: &mut Scope,
) -> Result<Observed, Failed> {
    let dsn_text = render(&check.dsn, scope, "dsn")?;
    let Dsn {
        mut config,
        sslmode,
        root_cert,
    } = parse_dsn(&dsn_text).map_err(Failed::error)?;
    if let Some(p) = config.get_password() {
        // A password written into the DSN is as secret as one from the environment.
        scope.add_secret(String::from_utf8_lossy(p).into_owned());
    }
    if let Some(t) = &check.password {
        let password = render(t, scope, "password")?;
        scope.add_secret(password.clone());
        config.password(password);
    }
    let sql = render(&check.query, scope, "query")?;
    let mode = check.sslmode.or(sslmode).unwrap_or(SslMode::Prefer);
    let host = match config.get_hosts() {
        [PgHost::Tcp(h)] => h.clone(),
        _ => return Err(Failed::error("the DSN names no TCP host")),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let endpoint =
        Endpoint::parse(&format!("{}:{port}", bracket(&host)), None).map_err(Failed::error)?;
    let user = config.get_user().unwrap_or("(current user)").to_string();
    let db = config.get_dbname().unwrap_or(&user).to_string();
    let request_line = format!(
        "postgres {user}@{endpoint}/{db} sslmode={}: {sql}",
        mode.as_str()
    );

    // Session settings travel as startup options: this session only, nothing left behind.
    let statement_timeout = check
        .statement_timeout
        .unwrap_or_else(|| ctx.deadline.saturating_duration_since(Instant::now()))
        .max(Duration::from_millis(1));
    let mut options: Vec<String> = config
        .get_options()
        .map(str::to_string)
        .into_iter()
        .collect();
    options.push(format!(
        "-c statement_timeout={}",
        statement_timeout.as_millis()
    ));
    if check.read_only {
        options.push("-c default_transaction_read_only=on".into());
    }
    config.options(options.join(" "));
    if config.get_application_name().is_none() {
        config.application_name("patrol");
    }
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    let tls = if mode == SslMode::Disable {
        None
    } else {
        let name = match &check.tls.server_name {
            Some(t) => render(t, scope, "server_name")?,
            None => endpoint.host_text(),
        };
        let ca_file = check.tls.ca_file.clone().or(root_cert.map(Into::into));
        // prefer and require encrypt without checking who is at the other end, as libpq does.
        let insecure = ctx.insecure || mode != SslMode::VerifyFull;
        let config = ctx
            .tls
            .for_probe(insecure, ca_file.as_deref())
            .map_err(Failed::error)?;
        let server = server_name(&name).map_err(Failed::error)?;
        Some((config, server))
    };

    let mut dial = Dial::new(ctx.deadline);
    let (tcp, _) = dial
        .open(&endpoint.host, endpoint.port)
        .await
        .map_err(|f| Failed::from(f).with(&dial, None, &request_line))?;
    let seen = Arc::new(Mutex::new(None));
    let connector = PgTls {
        tls,
        seen: Arc::clone(&seen),
    };
    let login = timeout_at(dial.deadline, config.connect_raw(tcp, connector)).await;
    let handshake = seen_handshake(&seen, &mut dial);
    let fail = |dial: &Dial, outcome: Outcome, message: String| Failed {
        outcome,
        message,
        ..Failed::error("").with(dial, handshake.as_ref(), &request_line)
    };
    let (client, connection) = match login {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            return Err(fail(&dial, Outcome::Error, login_error(&e, &user, &db)));
        }
        Err(_) => {
            let elapsed = dial.started.elapsed().as_secs_f64();
            let message = format!("timed out after {elapsed:.3}s logging in as {user}");
            return Err(fail(&dial, Outcome::Timeout, message));
        }
    };

    // The connection is driven here, next to the query it serves.
    let started = Instant::now();
    let mut connection = pin!(connection);
    let answer = {
        let query = client.simple_query(&sql);
        let mut query = pin!(query);
        tokio::select! {
            biased;
            answer = timeout_at(dial.deadline, &mut query) => answer,
            ended = &mut connection => {
                let why = match ended {
                    Ok(()) => "the server closed the connection".to_string(),
                    Err(e) => chain(&e),
                };
                return Err(fail(&dial, Outcome::Error, format!("connection lost during the query: {why}")));
            }
        }
    };
    dial.phases.processing = started.elapsed();
    // Dropping the client sends Terminate; let the connection say goodbye before the deadline.
    drop(client);
    let _ = timeout_at(dial.deadline, &mut connection).await;
    let messages = match answer {
        Ok(Ok(messages)) => messages,
        Ok(Err(e)) => {
            let (outcome, message) = query_error(&e, statement_timeout);
            return Err(fail(&dial, outcome, message));
        }
        Err(_) => {
            let elapsed = dial.started.elapsed().as_secs_f64();
            let message =
                format!("timed out after {elapsed:.3}s waiting for the query (processing)");
            return Err(fail(&dial, Outcome::Timeout, message));
        }
    };
    let table = Table::from_messages(&messages);
    let mut observed = Observed {
        phases: dial.phases,
        handshake,
        request_line,
        shown_reply: table.shown(),
        ..Observed::default()
    };
    observed.values = table.values();
    Ok(observed)
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Takes what the TLS handshake recorded (if one happened) into the dial's phases.
fn seen_handshake(
    seen: &Mutex<Option<(Handshake, Duration)>>,
    dial: &mut Dial,
) -> Option<Handshake> {
    let (handshake, took) = seen.lock().ok()?.take()?;
    dial.phases.tls = took;
    Some(handshake)
}

/// A login failure in one line: authentication, a missing database, TLS, the connection.
fn login_error(e: &tokio_postgres::Error, user: &str, db: &str) -> String {
    if let Some(db_error) = e.as_db_error() {
        let code = db_error.code();
        let what = if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            format!("authentication as {user} failed")
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            format!("database {db} is not there")
        } else {
            "login failed".to_string()
        };
        return format!(
            "{what}: {} {}: {}",
            db_error.severity(),
            code.code(),
            db_error.message()
        );
    }
    format!("could not log in: {}", chain(e))
}

/// A failed query: cancelled by the statement timeout, or refused with the server's message.
fn query_error(e: &tokio_postgres::Error, statement_timeout: Duration) -> (Outcome, String) {
    let Some(db_error) = e.as_db_error() else {
        return (
            Outcome::Error,
            format!("the query could not be run: {}", chain(e)),
        );
    };
    if *db_error.code() == SqlState::QUERY_CANCELED {
        return (
            Outcome::Timeout,
            format!(
                "the query ran past the statement timeout of {}: the server cancelled it ({})",
                humantime::format_duration(statement_timeout),
                db_error.message()
            ),
        );
    }
    let mut message = format!(
        "the query failed: {} {}: {}",
        db_error.severity(),
        db_error.code().code(),
        db_error.message()
    );
    if let Some(detail) = db_error.detail() {
        message.push_str(&format!(" ({detail})"));
    }
    if let Some(hint) = db_error.hint() {
        message.push_str(&format!("; hint: {hint}"));
    }
    (Outcome::Fail, message)
}

/// The rows of a query, as text.
#[derive(Debug, Default)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    count: usize,
}

impl Table {
    fn from_messages(messages: &[SimpleQueryMessage]) -> Table {
        let mut table = Table::default();
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) if table.columns.is_empty() => {
                    table.columns = cols.iter().map(|c| c.name().to_string()).collect();
                }
                SimpleQueryMessage::Row(row) => {
                    table.count += 1;
                    if table.columns.is_empty() {
                        table.columns =
                            row.columns().iter().map(|c| c.name().to_string()).collect();
                    }
                    if table.rows.len() < MAX_ROWS {
                        let values = (0..row.len())
                            .map(|i| row.try_get(i).ok().flatten().map(str::to_string))
                            .collect();
                        table.rows.push(values);
                    }
                }
                _ => {}
            }
        }
        table
    }

    /// `rows`, `value` and `columns` for the queries.
    fn values(&self) -> Vec<(String, Value)> {
        let mut out = vec![(named::ROWS.to_string(), Value::Number(self.count as f64))];
        if let Some(first) = self.rows.first().and_then(|r| r.first()) {
            out.push((named::VALUE.to_string(), cell_value(first.as_deref())));
        }
        if !self.rows.is_empty() {
            let mut columns = serde_json::Map::new();
            for (i, name) in self.columns.iter().enumerate() {
                let cells: Vec<serde_json::Value> = self
                    .rows
                    .iter()
                    .map(|r| cell_json(r.get(i).cloned().flatten().as_deref()))
                    .collect();
                let value = match <[serde_json::Value; 1]>::try_from(cells) {
                    Ok([one]) => one,
                    Err(many) => serde_json::Value::Array(many),
                };
                // A repeated column name keeps its first column, as `row["name"]` would.
                columns.entry(name.clone()).or_insert(value);
            }
            out.push((named::COLUMNS.to_string(), Value::Object(columns)));
        }
        out
    }

    /// psql-like text for `-v` output.
    fn shown(&self) -> String {
        let mut out = self.columns.join(" | ");
        for row in self.rows.iter().take(20) {
            out.push('\n');
            let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
            out.push_str(&cells.join(" | "));
        }
        out.push_str(&format!(
            "\n({} row{})",
            self.count,
            if self.count == 1 { "" } else { "s" }
        ));
        out
    }
}

/// A cell as a value: numbers as numbers (not `007`), NULL as null, the rest as text.
fn cell_value(cell: Option<&str>) -> Value {
    Value::from_json(&cell_json(cell))
}

fn cell_json(cell: Option<&str>) -> serde_json::Value {
    let Some(text) = cell else {
        return serde_json::Value::Null;
    };
    let numeric = {
        let digits = text.strip_prefix('-').unwrap_or(text);
        let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
        !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && (int == "0" || !int.starts_with('0'))
            && !frac.is_empty()
            && frac.bytes().all(|b| b.is_ascii_digit())
    };
    if numeric
        && let Ok(n) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(n)
    {
        return if let Ok(i) = text.parse::<i64>() {
            serde_json::Value::Number(i.into())
        } else {
            serde_json::Value::Number(n)
        };
    }
    serde_json::Value::String(text.to_string())
}

/// TLS for tokio-postgres with the shared rustls configs; records the handshake and its time.
struct PgTls {
    /// `None` for `sslmode=disable` (tokio-postgres then never asks for a handshake).
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    seen: Arc<Mutex<Option<(Handshake, Duration)>>>,
}

type Handshaking = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

impl TlsConnect<TcpStream> for PgTls {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Handshaking;

    fn connect(self, stream: TcpStream) -> Self::Future {
        Box::pin(async move {
            let Some((config, name)) = self.tls else {
                return Err(io::Error::other("TLS is disabled (sslmode=disable)"));
            };
            let started = Instant::now();
            let tls = TlsConnector::from(config).connect(name, stream).await?;
            if let Ok(mut seen) = self.seen.lock() {
                *seen = Some((Handshake::of(tls.get_ref().1), started.elapsed()));
            }
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS connection to the server.
struct PgTlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding: servers accept it unless the client insists.
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_come_out_of_both_dsn_forms() {
        let (rest, found) = take_tls_params(
            "postgres://smoke@db:5432/app?sslmode=verify-full&connect_timeout=5&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://smoke@db:5432/app?connect_timeout=5");
        assert_eq!(
            found,
            vec![
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".to_string(), "/ca.pem".to_string())
            ]
        );
        let (rest, found) =
            take_tls_params("host=db  sslmode = require user=smoke password='a b\\'c' dbname=app");
        assert_eq!(rest, "host=db user=smoke password='a b\\'c' dbname=app");
        assert_eq!(found, vec![("sslmode".to_string(), "require".to_string())]);
    }

    #[test]
    fn dsns_are_checked() {
        let dsn = parse_dsn("postgres://smoke:pw@127.0.0.1:5433/app?sslmode=verify-full")
            .expect("parses");
        assert_eq!(dsn.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(dsn.config.get_ports(), &[5433]);
        assert_eq!(dsn.config.get_password(), Some(&b"pw"[..]));
        let e = parse_dsn("postgres://a@h1,h2/db").expect_err("two hosts");
        assert!(e.contains("several hosts"), "{e}");
        let e = parse_dsn("host=/var/run/postgresql dbname=app").expect_err("socket");
        assert!(e.starts_with("Unix-socket hosts"), "{e}");
        let e = parse_dsn("postgres://a@h/db?sslmode=verify-ca").expect_err("verify-ca");
        assert!(e.contains("not supported"), "{e}");
        let e = parse_dsn("dbname=app").expect_err("no host");
        assert!(e.contains("no host"), "{e}");
        assert!(parse_dsn("postgres://a@h/db?bogus=1").is_err());
    }

    #[test]
    fn cells_read_as_numbers_text_and_null() {
        assert_eq!(cell_value(Some("42")), Value::Number(42.0));
        assert_eq!(cell_value(Some("-1.5")), Value::Number(-1.5));
        assert_eq!(cell_value(Some("007")), Value::Text("007".into()));
        assert_eq!(cell_value(Some("1e5")), Value::Text("1e5".into()));
        assert_eq!(
            cell_value(Some("2026-01-01")),
            Value::Text("2026-01-01".into())
        );
        assert_eq!(cell_value(None), Value::Null);
    }
}
