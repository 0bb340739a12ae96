//! The JSON API from the CitadelBuy runbook's smoke tests: health, auth, catalog, cart,
//! checkout, plus `/slow` for timing benchmarks. Every answer, errors included, is JSON.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth;
use crate::catalog::{self, CATEGORIES, PRODUCTS};
use crate::store::{Cart, RegisterRefusal, User};

/// Default and maximum page sizes for `/api/products`.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// Largest quantity one request may add.
const MAX_QUANTITY: u64 = 100;
/// Longest sleep `/slow` agrees to.
const MAX_SLOW_MS: u64 = 60_000;

/// An API error: a status and a `{"error": message}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication required")
    }

    fn product_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "product not found")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// Parses a JSON request body, whatever its content type, into a 400 on failure.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub(crate) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(crate) async fn ready() -> Json<Value> {
    Json(json!({ "status": "ready" }))
}

pub(crate) async fn health_detailed(State(state): State<AppState>) -> Json<Value> {
    let started = Instant::now();
    state.store.ping();
    let database_ms = started.elapsed().as_millis() as u64;
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "checks": {
            "database": { "status": "up", "latency_ms": database_ms },
            // There is no Redis; the check mirrors the real API's shape.
            "redis": { "status": "up", "latency_ms": 0 },
        },
    }))
}

#[derive(Debug, Deserialize)]
struct RegisterRequest {
    email: Option<String>,
    password: Option<String>,
    name: Option<String>,
}

pub(crate) async fn register(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: RegisterRequest = parse_json(&body)?;
    let email = request.email.as_deref().map(str::trim).unwrap_or_default();
    let name = request.name.as_deref().map(str::trim).unwrap_or_default();
    let password = request.password.unwrap_or_default();
    if !valid_email(email) {
        return Err(ApiError::bad_request("email must be a valid address"));
    }
    if password.chars().count() < 8 {
        return Err(ApiError::bad_request(
            "password must be at least 8 characters",
        ));
    }
    if name.is_empty() {
        return Err(ApiError::bad_request("name is required"));
    }
    match state.store.register(email, name, &password) {
        Ok(user) => Ok((StatusCode::CREATED, Json(user.to_json())).into_response()),
        Err(RegisterRefusal::EmailTaken) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "email already registered",
        )),
    }
}

fn valid_email(email: &str) -> bool {
    email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !email.contains(' ')
    })
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    email: Option<String>,
    password: Option<String>,
}

pub(crate) async fn login(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: LoginRequest = parse_json(&body)?;
    let (Some(email), Some(password)) = (request.email, request.password) else {
        return Err(ApiError::bad_request("email and password are required"));
    };
    let Some((token, user)) = state.store.login(email.trim(), &password) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid credentials",
        ));
    };
    let body = json!({ "token": token, "user": user.to_json() });
    Ok(([(SET_COOKIE, auth::session_cookie(&token))], Json(body)).into_response())
}

pub(crate) async fn products(
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("limit must be a non-negative integer"))?
            .min(MAX_LIMIT),
    };
    let products: Vec<Value> = PRODUCTS
        .iter()
        .take(limit)
        .map(catalog::Product::to_json)
        .collect();
    Ok(Json(
        json!({ "products": products, "total": PRODUCTS.len(), "limit": limit }),
    ))
}

pub(crate) async fn product(Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    catalog::product(&id)
        .map(|p| Json(p.to_json()))
        .ok_or_else(ApiError::product_not_found)
}

pub(crate) async fn search(
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let query = params.get("q").map(|q| q.trim()).unwrap_or_default();
    if query.is_empty() {
        return Err(ApiError::bad_request("query parameter q is required"));
    }
    let results: Vec<Value> = catalog::search(query)
        .into_iter()
        .map(|p| p.to_json())
        .collect();
    Ok(Json(
        json!({ "query": query, "total": results.len(), "results": results }),
    ))
}

pub(crate) async fn categories() -> Json<Value> {
    let categories: Vec<Value> = CATEGORIES.iter().map(catalog::Category::to_json).collect();
    Json(json!({ "categories": categories }))
}

/// A cart or checkout line as clients send it; `productId` may be a string or a number.
#[derive(Debug, Deserialize)]
struct LineRequest {
    #[serde(rename = "productId")]
    product_id: Option<Value>,
    quantity: Option<Value>,
}

impl LineRequest {
    fn product(&self) -> Result<&'static catalog::Product, ApiError> {
        let id = match &self.product_id {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => return Err(ApiError::bad_request("productId is required")),
        };
        catalog::product(&id).ok_or_else(ApiError::product_not_found)
    }

    /// The quantity, 1 when absent.
    fn quantity(&self) -> Result<u32, ApiError> {
        match &self.quantity {
            None => Ok(1),
            Some(value) => value
                .as_u64()
                .filter(|q| (1..=MAX_QUANTITY).contains(q))
                .and_then(|q| u32::try_from(q).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "quantity must be an integer between 1 and {MAX_QUANTITY}"
                    ))
                }),
        }
    }
}

fn authenticated(state: &AppState, headers: &HeaderMap) -> Result<User, ApiError> {
    auth::current_user(&state.store, headers).ok_or_else(ApiError::unauthorized)
}

fn cart_json(cart: &Cart) -> Value {
    json!({
        "items": cart.items_json(),
        "total": catalog::dollars(cart.total_cents()),
        "count": cart.count(),
    })
}

pub(crate) async fn add_to_cart(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticated(&state, &headers)?;
    let line: LineRequest = parse_json(&body)?;
    let quantity = line.quantity()?;
    let product = line.product()?;
    let cart = state.store.add_to_cart(&user, product, quantity);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "cart": cart_json(&cart) })),
    )
        .into_response())
}

pub(crate) async fn cart(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = authenticated(&state, &headers)?;
    Ok(Json(cart_json(&state.store.cart(&user))))
}

#[derive(Debug, Deserialize)]
struct CheckoutRequest {
    #[serde(default)]
    items: Vec<LineRequest>,
}

pub(crate) async fn create_checkout_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authenticated(&state, &headers)?;
    let request: CheckoutRequest = parse_json(&body)?;
    if request.items.is_empty() {
        return Err(ApiError::bad_request("items must not be empty"));
    }
    let mut amount_cents = 0;
    for line in &request.items {
        let quantity = line.quantity()?;
        amount_cents += line.product()?.price_cents * u64::from(quantity);
    }
    let session_id = crate::store::new_checkout_id();
    Ok(Json(json!({
        "sessionId": session_id,
        "url": format!("/checkout/{session_id}"),
        "amount": catalog::dollars(amount_cents),
        "currency": "usd",
    })))
}

pub(crate) async fn slow(
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let ms = match params.get("ms") {
        None => 0,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= MAX_SLOW_MS)
            .ok_or_else(|| {
                ApiError::bad_request(format!("ms must be an integer up to {MAX_SLOW_MS}"))
            })?,
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Json(json!({ "slept_ms": ms })))
}

/// Unknown `/api/...` and `/admin/...` paths.
pub(crate) fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not found").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_need_both_sides_of_the_at() {
        assert!(valid_email("a@b.c"));
        assert!(!valid_email("ab.c"));
        assert!(!valid_email("@b.c"));
        assert!(!valid_email("a@"));
        assert!(!valid_email("a b@c.d"));
    }
}
