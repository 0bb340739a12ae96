//! The agent's HTTP server (axum) on `agent.listen`: metrics, health, the control API, artifacts
//! and the status page. Every POST needs the bearer token; bodies are size-limited.
//!
//! - [`api`]: `/api/v1/probes`, `/api/v1/probes/{name}/runs`, `/api/v1/runs`, `/-/reload`
//! - [`runs`]: API-triggered runs and their results
//! - [`hooks`]: `/api/v1/verify` (Argo Rollouts), `/hooks/flagger`, `/hooks/alertmanager`
//! - [`status_page`]: the HTML page at `/`
//! - [`artifacts`]: files under `agent.artifacts_dir`

pub mod api;
pub mod artifacts;
pub mod hooks;
pub mod runs;
pub mod status_page;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::daemon::AgentState;
use crate::metrics::RENDER_CHUNK_BYTES;

/// How long `/metrics` waits for a scraper that stopped reading before it gives up on it.
const SCRAPE_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The shared state handlers see.
pub type Shared = Arc<AgentState>;

/// Builds the router.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(status_page::page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/probes", get(api::probes))
        .route("/api/v1/probes/{name}/runs", get(api::probe_runs))
        .route("/api/v1/runs", post(api::start_run))
        .route("/api/v1/runs/{id}", get(api::get_run))
        .route("/-/reload", post(api::reload))
        .route("/api/v1/verify", post(hooks::verify))
        .route("/hooks/flagger", post(hooks::flagger))
        .route("/hooks/alertmanager", post(hooks::alertmanager))
        .route("/artifacts/{*path}", get(artifacts::serve))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn metrics(State(state): State<Shared>) -> Response {
    // With thousands of probes the exposition takes tenths of a second to render: on an async
    // worker that would hold up the scheduler's fires, so it runs on the blocking pool. It is
    // streamed in pieces of RENDER_CHUNK_BYTES, so the agent never holds the whole text (12 MiB
    // for 500 two-step probes), which the allocator would keep afterwards. One piece waits in
    // the channel at most: every piece alive at once (here, in the channel, in hyper's write
    // queue) is heap the allocator keeps once the scrape is over (BENCHMARKS.md §4).
    // No lock is held while a piece waits for the scraper (see `ProbeSeriesStore::encode`); a
    // scraper that stops reading for SCRAPE_STALL is dropped, and the rest goes nowhere.
    let metrics = Arc::clone(&state.metrics);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let runtime = tokio::runtime::Handle::current();
    let rendering = tokio::task::spawn_blocking(move || {
        let mut gone = false;
        metrics.render_chunks(RENDER_CHUNK_BYTES, &mut |chunk| {
            if gone {
                return;
            }
            let piece = Bytes::copy_from_slice(chunk.as_bytes());
            let sent = runtime.block_on(tokio::time::timeout(SCRAPE_STALL, tx.send(piece)));
            gone = !matches!(sent, Ok(Ok(())));
        });
    });
    drop(rendering);
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        Body::from_stream(chunks),
    )
        .into_response()
}

async fn readyz(State(state): State<Shared>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Every method but GET and HEAD needs `Authorization: Bearer <agent.api_token>` when a token is
/// set (the agent refuses to listen beyond loopback without one). Compared in constant time.
///
/// Without a token, the agent answers only requests addressed to a loopback name, and refuses
/// POSTs a web page sent: otherwise a page open in a browser on the same machine could point a
/// name it controls at 127.0.0.1 (DNS rebinding) and read the API or trigger runs, or post a
/// form to the agent.
async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let loaded = state.loaded();
    let safe_method = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let Some(expected) = loaded.api_token.as_deref() else {
        if let Some(refusal) = refuse_foreign_origin(&request, safe_method) {
            return refusal;
        }
        return next.run(request).await;
    };
    if safe_method {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        next.run(request).await
    } else {
        let body = serde_json::json!({"error": "missing or wrong bearer token: send `Authorization: Bearer <agent.api_token>`"});
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(body),
        )
            .into_response()
    }
}

/// 403 for a request to a token-less agent that is addressed to a name other than a loopback
/// one (`Host`), or a POST a web page sent (`Origin` other than a loopback one).
fn refuse_foreign_origin(request: &Request, safe_method: bool) -> Option<Response> {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host.filter(|h| !is_loopback_authority(h)) {
        return Some(error(
            StatusCode::FORBIDDEN,
            format!(
                "this agent has no agent.api_token, so it only answers requests addressed to \
                 localhost or a loopback address, not to `{}` (a guard against DNS rebinding); \
                 set `api_token` to serve other names",
                host.escape_debug()
            ),
        ));
    }
    if safe_method {
        return None;
    }
    let origin = request.headers().get(header::ORIGIN)?;
    let loopback = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, authority)| is_loopback_authority(authority));
    (!loopback).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "this agent has no agent.api_token, so it refuses POSTs sent by web pages from \
             other origins; set `api_token` and send `Authorization: Bearer <token>`",
        )
    })
}

/// `localhost`, `*.localhost`, `127.0.0.1`, `[::1]` and the like, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        None => authority.split_once(':').map_or(authority, |(h, _)| h),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A JSON error response.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": message.into()})),
    )
        .into_response()
}

/// 503 once the agent is shutting down (or not yet ready): no new runs are accepted then.
pub fn refuse_when_stopping(state: &Shared) -> Option<Response> {
    (!state.ready.load(Ordering::SeqCst)).then(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down (or starting): no new runs are accepted",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::is_loopback_authority;

    #[test]
    fn loopback_authorities() {
        for yes in [
            "localhost",
            "localhost:9464",
            "LOCALHOST.",
            "app.localhost:80",
            "127.0.0.1",
            "127.1.2.3:9464",
            "[::1]:9464",
            "[::1]",
        ] {
            assert!(is_loopback_authority(yes), "{yes}");
        }
        for no in [
            "evil.example:9464",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:9464",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_authority(no), "{no}");
        }
    }
}
