//! `tls` checks: a full TLS handshake with the address, nothing sent. What the handshake tells
//! (expiry, issuer, subject, SANs, protocol version) is what the step's assertions read.
//! Verification is on unless the probe is `insecure`; a certificate that fails it is an error
//! that says why (expired, unknown issuer, wrong name).

use tokio::io::AsyncWriteExt;
use tokio::time::timeout_at;

use super::{Ctx, Failed, Observed, render};
use crate::net::{Dial, Endpoint};
use crate::spec::TlsCheck;
use crate::template::Scope;

pub(crate) async fn run(
    check: &TlsCheck,
    ctx: &Ctx<'_>,
    scope: &mut Scope,
) -> Result<Observed, Failed> {
    let address = render(&check.address, scope, "address")?;
    let endpoint = Endpoint::parse(&address, Some(443)).map_err(Failed::error)?;
    let request_line = format!("tls {endpoint}");
    let mut dial = Dial::new(ctx.deadline);
    let (tcp, _) = dial
        .open(&endpoint.host, endpoint.port)
        .await
        .map_err(|f| Failed::from(f).with(&dial, None, &request_line))?;
    let (mut tls, handshake) = ctx
        .handshake(&mut dial, &check.tls, &endpoint, scope, tcp)
        .await
        .map_err(|f| f.with(&dial, None, &request_line))?;
    // close_notify, so the server logs a clean close rather than a reset.
    let _ = timeout_at(dial.deadline, tls.shutdown()).await;
    let shown_reply = [
        handshake.version.clone().map(|v| format!("version: {v}")),
        handshake.subject.clone().map(|s| format!("subject: {s}")),
        handshake.issuer.clone().map(|i| format!("issuer:  {i}")),
        (!handshake.sans.is_empty()).then(|| format!("sans:    {}", handshake.sans.join(", "))),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("\n");
    Ok(Observed {
        phases: dial.phases,
        handshake: Some(handshake),
        request_line,
        shown_reply,
        ..Observed::default()
    })
}
