//! The accept loop. Each connection is served by hyper's HTTP/1 server in its own task, so a
//! handler can ask, through the request's [`ConnectionControl`] extension, for its connection
//! to be aborted with a TCP RST — something a stock `axum::serve` cannot do.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower_service::Service;
use tracing::{debug, warn};

/// How long in-flight requests may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Per-connection control, inserted into every request's extensions.
#[derive(Clone, Debug, Default)]
pub struct ConnectionControl {
    reset: Arc<Notify>,
}

impl ConnectionControl {
    /// Asks the connection task to abort the connection with an RST. The request's handler
    /// future is dropped with the connection, so callers should then wait forever.
    pub fn reset(&self) {
        // notify_one keeps a permit, so the request is not lost if the task is not waiting yet.
        self.reset.notify_one();
    }
}

/// Serves connections from `listener` until `shutdown` turns true (or its sender is gone),
/// then lets in-flight requests finish for up to [`SHUTDOWN_GRACE`].
pub(crate) async fn serve(listener: TcpListener, router: Router, shutdown: watch::Receiver<bool>) {
    let mut stop = shutdown.clone();
    // Dropping the JoinSet (when this task is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "Connection accepted.");
                    connections.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
                }
                Err(error) => {
                    // Usually EMFILE; back off instead of spinning.
                    warn!(%error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!(
            remaining = connections.len(),
            "Connections outlived the shutdown grace period."
        );
        connections.abort_all();
    }
}

async fn serve_connection(stream: TcpStream, router: Router, mut shutdown: watch::Receiver<bool>) {
    // A duplicate descriptor of the same socket: SO_LINGER set through it applies to the
    // socket hyper owns, and closing both with linger 0 makes the kernel send an RST.
    let (stream, linger_handle) = match duplicate(stream) {
        Ok(pair) => pair,
        Err(error) => {
            warn!(%error, "Connection could not be prepared.");
            return;
        }
    };
    let control = ConnectionControl::default();
    let service = {
        let control = control.clone();
        service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(control.clone());
            let mut router = router.clone();
            async move { router.call(request).await }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "Connection ended with an error.");
                }
                return;
            }
            () = control.reset.notified() => {
                if let Err(error) = socket2::SockRef::from(&linger_handle).set_linger(Some(Duration::ZERO)) {
                    warn!(%error, "SO_LINGER could not be set; the close may not be a reset.");
                }
                debug!("Connection reset by an injected fault.");
                // Returning drops the hyper connection (and its socket) and then the
                // duplicate: the last close of a socket with linger 0 sends the RST.
                return;
            }
            () = stopped(&mut shutdown), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Resolves once shutdown has begun (or the shop is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, which also means stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn duplicate(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let stream = stream.into_std()?;
    let handle = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, handle))
}
