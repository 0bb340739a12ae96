//! The fault-injecting middleware: looks up the request path in the fault table and applies
//! the fault around the real handler. `/admin/...` is never faulted.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::json;

use crate::app::AppState;
use crate::faults::Fault;
use crate::serve::ConnectionControl;

/// Largest response body the middleware will buffer to rewrite.
const MAX_REWRITE_BYTES: usize = 16 * 1024 * 1024;
/// What a malformed body becomes when truncating the real one would not break it.
const MALFORMED_FALLBACK: &str = r#"{"products": ["#;
const CONSOLE_ERROR_SCRIPT: &str = r#"<script>console.error("injected console error")</script>"#;

pub(crate) async fn inject(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/admin" || path.starts_with("/admin/") {
        return next.run(request).await;
    }
    let Some(fault) = state.faults.for_path(path) else {
        return next.run(request).await;
    };

    let delay = added_latency(&fault);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if fault.hang {
        // Hang until the shop shuts down, so a graceful shutdown is not held up by it.
        crate::serve::stopped(&mut state.shutdown.clone()).await;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "shop shutting down" })),
        )
            .into_response();
    }
    if fault.reset {
        if let Some(control) = request.extensions().get::<ConnectionControl>() {
            control.reset();
            // The connection task drops this future along with the connection.
            return std::future::pending().await;
        }
        // Only reachable when the router is served by something other than `serve`.
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": "reset unsupported" })),
        )
            .into_response();
    }
    if let Some(status) = fault.status
        && rand::rng().random::<f64>() < fault.error_rate
    {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, Json(json!({ "error": "injected fault" }))).into_response();
    }

    let response = next.run(request).await;
    if fault.malformed_json {
        malformed(response).await
    } else if fault.console_error && is_html(&response) {
        with_console_error(response).await
    } else {
        response
    }
}

fn added_latency(fault: &Fault) -> Duration {
    let jitter = match fault.latency_jitter_ms {
        0 => 0,
        max => rand::rng().random_range(0..=max),
    };
    Duration::from_millis(fault.latency_ms.saturating_add(jitter))
}

fn is_html(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"))
}

/// Buffers a response body; a body that cannot be read counts as empty.
async fn into_parts(response: Response) -> (axum::http::response::Parts, Bytes) {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    let bytes = axum::body::to_bytes(body, MAX_REWRITE_BYTES)
        .await
        .unwrap_or_default();
    (parts, bytes)
}

/// Keeps the first half of the body (cut on a character boundary), which no longer parses;
/// answers 200 with `application/json`.
async fn malformed(response: Response) -> Response {
    let (mut parts, bytes) = into_parts(response).await;
    let text = String::from_utf8_lossy(&bytes);
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let truncated = &text[..cut];
    let body =
        if truncated.is_empty() || serde_json::from_str::<serde_json::Value>(truncated).is_ok() {
            MALFORMED_FALLBACK.to_string()
        } else {
            truncated.to_string()
        };
    parts.status = StatusCode::OK;
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}

/// Inserts the console-error script at the end of `<head>` (or at the start of the page).
async fn with_console_error(response: Response) -> Response {
    let (parts, bytes) = into_parts(response).await;
    let mut page = String::from_utf8_lossy(&bytes).into_owned();
    let at = page.find("</head>").unwrap_or(0);
    page.insert_str(at, CONSOLE_ERROR_SCRIPT);
    Response::from_parts(parts, Body::from(page))
}
