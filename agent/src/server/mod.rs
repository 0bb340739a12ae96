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
    // for 500 two-step probes), which the allocator would keep afterwards.
    let metrics = Arc::clone(&state.metrics);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let rendering = tokio::task::spawn_blocking(move || {
        metrics.render_chunks(RENDER_CHUNK_BYTES, &mut |chunk| {
            // Err: the scraper hung up; the rest goes nowhere.
            let _ = tx.blocking_send(Bytes::copy_from_slice(chunk.as_bytes()));
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
async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method();
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return next.run(request).await;
    }
    let loaded = state.loaded();
    let Some(expected) = loaded.api_token.as_deref() else {
        return next.run(request).await;
    };
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
