//! `tcp` checks: connect (and optionally TLS), send `send`, then read until the reply matches
//! `expect` — an SMTP banner, a Redis `+PONG`. Without `send` or `expect` the check is the
//! connection itself. Phases: resolve, connect, tls; processing until the first reply byte,
//! transfer until reading stopped.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use super::{Ctx, Failed, Observed, excerpt, render};
use crate::net::dial::io_error;
use crate::net::{Dial, Endpoint, FailureKind};
use crate::query::named;
use crate::result::{AssertResult, Outcome};
use crate::spec::TcpCheck;
use crate::template::Scope;
use crate::value::Value;

/// Reading stops here even if `expect` never matched.
const MAX_REPLY_BYTES: usize = 64 * 1024;

pub(crate) async fn run(
    check: &TcpCheck,
    ctx: &Ctx<'_>,
    scope: &mut Scope,
) -> Result<Observed, Failed> {
    let address = render(&check.address, scope, "address")?;
    let endpoint = Endpoint::parse(&address, None).map_err(Failed::error)?;
    let send = match &check.send {
        Some(t) => Some(render(t, scope, "send")?),
        None => None,
    };
    let expect = match &check.expect {
        Some(t) => {
            let source = render(t, scope, "expect")?;
            Some(regex::Regex::new(&source).map_err(|e| {
                Failed::error(format!("invalid `expect` regex after rendering: {e}"))
            })?)
        }
        None => None,
    };
    let request_line = match &send {
        Some(s) => format!("tcp {endpoint} send {s:?}"),
        None => format!("tcp {endpoint}"),
    };
    let mut dial = Dial::new(ctx.deadline);
    let (tcp, _) = dial
        .open(&endpoint.host, endpoint.port)
        .await
        .map_err(|f| Failed::from(f).with(&dial, None, &request_line))?;
    let mut observed = Observed {
        request_line: request_line.clone(),
        ..Observed::default()
    };
    let talk = Talk {
        send: send.as_deref(),
        expect: expect.as_ref(),
    };
    let reply = if check.use_tls {
        let (tls, handshake) = ctx
            .handshake(&mut dial, &check.tls, &endpoint, scope, tcp)
            .await
            .map_err(|f| f.with(&dial, None, &request_line))?;
        observed.handshake = Some(handshake);
        talk.run(tls, &mut dial).await
    } else {
        talk.run(tcp, &mut dial).await
    };
    let reply = reply.map_err(|f| f.with(&dial, observed.handshake.as_ref(), &request_line))?;
    observed.phases = dial.phases;
    if let Some(bytes) = reply {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(re) = &expect {
            let matched = re.is_match(&text);
            observed.asserts.push(AssertResult {
                expr: format!("reply matches {:?}", re.as_str()),
                result: if matched {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                },
                actual: Some(Value::Text(text.clone()).to_string()),
                expected: format!("matches {:?}", re.as_str()),
                message: (!matched).then(|| {
                    if bytes.len() >= MAX_REPLY_BYTES {
                        "stopped reading after 64 KiB without a match".to_string()
                    } else {
                        "the server closed the connection without a matching reply".to_string()
                    }
                }),
            });
        }
        observed
            .values
            .push((named::REPLY.to_string(), Value::Text(text.clone())));
        observed.shown_reply = text;
        observed.body = bytes;
    }
    Ok(observed)
}

/// What to say and what to wait for once connected.
struct Talk<'a> {
    send: Option<&'a str>,
    expect: Option<&'a regex::Regex>,
}

impl Talk<'_> {
    /// Sends, reads the reply (when there is something to wait for) and closes politely.
    async fn run<S>(&self, mut stream: S, dial: &mut Dial) -> Result<Option<Vec<u8>>, Failed>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let asked = Instant::now();
        if let Some(send) = self.send {
            match timeout_at(dial.deadline, stream.write_all(send.as_bytes())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let message = format!("{} while sending: {e}", io_error(&e));
                    return Err(dial.fail(FailureKind::Io, message).into());
                }
                Err(_) => return Err(dial.timeout("sending (processing)").into()),
            }
            let _ = timeout_at(dial.deadline, stream.flush()).await;
        }
        if self.send.is_none() && self.expect.is_none() {
            close(&mut stream, dial.deadline).await;
            return Ok(None);
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut first_byte = None;
        loop {
            let done = match self.expect {
                Some(re) => re.is_match(&String::from_utf8_lossy(&buf)),
                None => !buf.is_empty(),
            };
            if done || buf.len() >= MAX_REPLY_BYTES {
                break;
            }
            match timeout_at(dial.deadline, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    first_byte.get_or_insert_with(Instant::now);
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok(Err(e)) => {
                    let message = format!("{} while reading the reply: {e}", io_error(&e));
                    return Err(dial.fail(FailureKind::Io, message).into());
                }
                Err(_) => {
                    let waiting = match self.expect {
                        Some(re) => format!("waiting for a reply matching {:?}", re.as_str()),
                        None => "waiting for a reply".to_string(),
                    };
                    let phase = if first_byte.is_some() {
                        "transfer"
                    } else {
                        "processing"
                    };
                    let received = if buf.is_empty() {
                        "nothing received".to_string()
                    } else {
                        format!("received {}", excerpt(&buf))
                    };
                    let message = format!("{waiting} ({phase}); {received}");
                    return Err(dial.timeout(&message).into());
                }
            }
        }
        let first = first_byte.unwrap_or_else(Instant::now);
        dial.phases.processing = first.saturating_duration_since(asked);
        dial.phases.transfer = first.elapsed();
        close(&mut stream, dial.deadline).await;
        Ok(Some(buf))
    }
}

/// Shuts the connection down (TLS: close_notify), not waiting past the deadline.
async fn close<S: AsyncWrite + Unpin>(stream: &mut S, deadline: tokio::time::Instant) {
    let _ = timeout_at(deadline, stream.shutdown()).await;
}
