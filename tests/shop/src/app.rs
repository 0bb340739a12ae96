//! Request-wide state and the route table: JSON API, admin API and pages, all behind the
//! fault-injecting middleware.

use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::watch;

use crate::faults::Faults;
use crate::store::Store;
use crate::{admin, api, inject, pages};

/// What every handler can reach. Clones share the same store and fault table.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub store: Store,
    pub faults: Faults,
    pub started: Instant,
    /// Turns true when the shop begins shutting down; hung requests wait on it.
    pub shutdown: watch::Receiver<bool>,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/health", get(api::health))
        .route("/api/health/ready", get(api::ready))
        .route("/api/health/detailed", get(api::health_detailed))
        .route("/api/auth/register", post(api::register))
        .route("/api/auth/login", post(api::login))
        .route("/api/products", get(api::products))
        .route("/api/products/{id}", get(api::product))
        .route("/api/search", get(api::search))
        .route("/api/categories", get(api::categories))
        .route("/api/cart", get(api::cart))
        .route("/api/cart/items", post(api::add_to_cart))
        .route(
            "/api/checkout/create-session",
            post(api::create_checkout_session),
        )
        .route("/slow", get(api::slow))
        .route(
            "/admin/faults",
            get(admin::list_faults)
                .put(admin::set_fault)
                .delete(admin::clear_faults),
        )
        .route("/admin/reset", post(admin::reset))
        .route("/", get(pages::home))
        .route("/products", get(pages::products))
        .route("/products/{id}", get(pages::product))
        .route("/search", get(pages::search))
        .route("/cart", get(pages::cart))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", get(pages::logout).post(pages::logout))
        .route("/images/products/{file}", get(pages::product_image))
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), inject::inject))
        .with_state(state)
}

/// JSON 404 under `/api` and `/admin`, the HTML 404 page elsewhere.
async fn not_found(state: State<AppState>, headers: HeaderMap, request: Request) -> Response {
    let path = request.uri().path();
    let json = ["/api", "/admin"]
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")));
    if json {
        api::not_found()
    } else {
        pages::not_found(state, headers).await
    }
}
