//! The admin API: switch faults at runtime and reset the shop to its seed. Never faulted.
//!
//! - `GET /admin/faults` → `{"faults":[...]}`
//! - `PUT /admin/faults` with a [`Fault`] → `{"faults":[...]}` (replaces that route's fault)
//! - `DELETE /admin/faults[?route=/x]` → `{"faults":[...]}` (404 if `route` had no fault)
//! - `POST /admin/reset` → `{"status":"reset"}` (faults cleared, users and carts re-seeded)

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::api::{ApiError, parse_json};
use crate::app::AppState;
use crate::faults::Fault;

fn fault_list(state: &AppState) -> Json<Value> {
    Json(json!({ "faults": state.faults.list() }))
}

pub(crate) async fn list_faults(State(state): State<AppState>) -> Json<Value> {
    fault_list(&state)
}

pub(crate) async fn set_fault(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let fault: Fault = parse_json(&body)?;
    fault.validate().map_err(ApiError::bad_request)?;
    tracing::info!(route = %fault.route, "Fault set.");
    state.faults.set(fault);
    Ok(fault_list(&state))
}

pub(crate) async fn clear_faults(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    match params.get("route") {
        Some(route) => {
            if !state.faults.remove(route) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no fault on route {route}"),
                ));
            }
            tracing::info!(%route, "Fault cleared.");
        }
        None => {
            state.faults.clear();
            tracing::info!("All faults cleared.");
        }
    }
    Ok(fault_list(&state))
}

pub(crate) async fn reset(State(state): State<AppState>) -> Json<Value> {
    state.faults.clear();
    state.store.reset();
    tracing::info!("Shop reset to its seed.");
    Json(json!({ "status": "reset" }))
}
