//! The server-rendered storefront the browser journeys walk: home, listing, product detail
//! (with an add-to-cart button), search, cart, login and logout, plus product images.

use std::collections::HashMap;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth;
use crate::catalog::{self, PRODUCTS};
use crate::html::{self, Visitor, escape};

/// How many products the home page features.
const FEATURED: usize = 8;

fn visitor(state: &AppState, headers: &HeaderMap) -> Visitor {
    match auth::current_user(&state.store, headers) {
        Some(user) => {
            let cart_count = state.store.cart(&user).count();
            Visitor {
                user: Some(user),
                cart_count,
            }
        }
        None => Visitor::default(),
    }
}

pub(crate) async fn home(State(state): State<AppState>, headers: HeaderMap) -> Html<String> {
    let main = format!(
        r#"<h1>CitadelBuy</h1>
<p class="tagline">Everything you need, delivered fast.</p>
<h2>Featured products</h2>
{grid}
<p><a href="/products">See all products</a></p>"#,
        grid = html::product_grid(PRODUCTS.iter().take(FEATURED)),
    );
    Html(html::page("Home", &visitor(&state, &headers), "", &main))
}

pub(crate) async fn products(State(state): State<AppState>, headers: HeaderMap) -> Html<String> {
    let main = format!(
        r#"<h1>All products</h1>
<p><span id="product-count">{count}</span> products</p>
{grid}"#,
        count = PRODUCTS.len(),
        grid = html::product_grid(PRODUCTS.iter()),
    );
    Html(html::page(
        "Products",
        &visitor(&state, &headers),
        "",
        &main,
    ))
}

const ADD_TO_CART_SCRIPT: &str = r#"<script>
(function () {
  var button = document.getElementById('add-to-cart');
  var message = document.getElementById('cart-message');
  button.addEventListener('click', function () {
    if (button.dataset.loggedIn !== 'true') {
      message.textContent = 'Please log in';
      return;
    }
    button.disabled = true;
    fetch('/api/cart/items', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ productId: button.dataset.productId, quantity: 1 })
    }).then(function (response) {
      if (response.status === 401) {
        message.textContent = 'Please log in';
        return null;
      }
      if (!response.ok) {
        throw new Error('HTTP ' + response.status);
      }
      return response.json();
    }).then(function (data) {
      if (data) {
        document.getElementById('cart-count').textContent = String(data.cart.count);
        message.textContent = 'Added to cart';
      }
    }).catch(function () {
      message.textContent = 'Could not add to cart';
    }).finally(function () {
      button.disabled = false;
    });
  });
})();
</script>"#;

pub(crate) async fn product(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let visitor = visitor(&state, &headers);
    let Some(product) = catalog::product(&id) else {
        return not_found_page(&visitor);
    };
    let main = format!(
        r#"<article class="product-detail" data-product-id="{id}">
<img src="{image}" alt="{name}" width="320" height="200">
<h1 class="product-name">{name}</h1>
<p class="product-price">{price}</p>
<p class="product-category">{category}</p>
<p class="product-description">{description}</p>
<p class="product-stock">{stock} in stock</p>
<button id="add-to-cart" class="button" type="button" data-product-id="{id}" data-logged-in="{logged_in}">Add to cart</button>
<p id="cart-message" role="status" aria-live="polite"></p>
</article>
{ADD_TO_CART_SCRIPT}"#,
        id = escape(product.id),
        image = escape(&product.image_url()),
        name = escape(product.name),
        price = catalog::format_price(product.price_cents),
        category = escape(product.category),
        description = escape(product.description),
        stock = product.stock,
        logged_in = visitor.user.is_some(),
    );
    Html(html::page(product.name, &visitor, "", &main)).into_response()
}

pub(crate) async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Html<String> {
    let query = params.get("q").map(|q| q.trim()).unwrap_or_default();
    let results = if query.is_empty() {
        Vec::new()
    } else {
        catalog::search(query)
    };
    let summary = if results.is_empty() {
        format!(
            r#"<p class="no-results">No results for &ldquo;{}&rdquo;</p>"#,
            escape(query)
        )
    } else {
        String::new()
    };
    let mut cards = String::new();
    for product in &results {
        cards.push_str(&html::product_card(product));
    }
    let main = format!(
        r#"<h1>Search results for &ldquo;{query_html}&rdquo;</h1>
<p><span id="result-count">{count}</span> results</p>
{summary}
<div class="results product-grid">
{cards}</div>"#,
        query_html = escape(query),
        count = results.len(),
    );
    let title = format!("Search: {query}");
    Html(html::page(&title, &visitor(&state, &headers), query, &main))
}

const CHECKOUT_SCRIPT: &str = r#"<script>
(function () {
  var button = document.getElementById('checkout-button');
  var message = document.getElementById('checkout-message');
  button.addEventListener('click', function () {
    var items = Array.prototype.map.call(document.querySelectorAll('.cart-item'), function (row) {
      return { productId: row.dataset.productId, quantity: Number(row.dataset.quantity) };
    });
    fetch('/api/checkout/create-session', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ items: items, test: true })
    }).then(function (response) {
      if (!response.ok) {
        throw new Error('HTTP ' + response.status);
      }
      return response.json();
    }).then(function (session) {
      message.textContent = 'Checkout session created: ' + session.sessionId;
    }).catch(function () {
      message.textContent = 'Checkout failed';
    });
  });
})();
</script>"#;

pub(crate) async fn cart(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let visitor = visitor(&state, &headers);
    let Some(user) = &visitor.user else {
        return Redirect::to("/login").into_response();
    };
    let cart = state.store.cart(user);
    let body = if cart.lines.is_empty() {
        r#"<p class="empty-cart">Your cart is empty.</p>"#.to_string()
    } else {
        let mut rows = String::new();
        for line in &cart.lines {
            rows.push_str(&format!(
                r#"<tr class="cart-item" data-product-id="{id}" data-quantity="{quantity}"><td class="cart-item-name"><a href="/products/{id}">{name}</a></td><td class="cart-item-quantity">{quantity}</td><td class="cart-item-price">{price}</td><td class="cart-item-subtotal">{subtotal}</td></tr>
"#,
                id = escape(line.product.id),
                name = escape(line.product.name),
                quantity = line.quantity,
                price = catalog::format_price(line.product.price_cents),
                subtotal = catalog::format_price(line.product.price_cents * u64::from(line.quantity)),
            ));
        }
        format!(
            r#"<table class="cart-table">
<thead><tr><th>Product</th><th>Quantity</th><th>Price</th><th>Subtotal</th></tr></thead>
<tbody>
{rows}</tbody>
</table>
<button id="checkout-button" class="button" type="button">Checkout (test mode)</button>
<p id="checkout-message" role="status" aria-live="polite"></p>
{CHECKOUT_SCRIPT}"#
        )
    };
    let main = format!(
        r#"<h1>Your cart</h1>
{body}
<p class="cart-summary">Total: <span id="cart-total">{total}</span></p>"#,
        total = catalog::format_price(cart.total_cents()),
    );
    Html(html::page("Cart", &visitor, "", &main)).into_response()
}

fn login_page(visitor: &Visitor, email: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    let main = format!(
        r#"<h1>Log in</h1>
{error}
<form id="login-form" class="stacked" method="post" action="/login">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required value="{email}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="login-button" class="button" type="submit">Log in</button>
</form>"#,
        email = escape(email),
    );
    html::page("Log in", visitor, "", &main)
}

pub(crate) async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Html<String> {
    Html(login_page(&visitor(&state, &headers), "", None))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LoginForm {
    email: String,
    password: String,
}

pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    // An unreadable form is just a failed login.
    let form = form.map(|Form(form)| form).unwrap_or_default();
    match state.store.login(form.email.trim(), &form.password) {
        Some((token, _)) => (
            [(SET_COOKIE, auth::session_cookie(&token))],
            Redirect::to("/"),
        )
            .into_response(),
        None => {
            let page = login_page(
                &visitor(&state, &headers),
                &form.email,
                Some("Invalid email or password"),
            );
            (StatusCode::UNAUTHORIZED, Html(page)).into_response()
        }
    }
}

pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = auth::cookie_token(&headers) {
        state.store.logout(token);
    }
    (
        [(SET_COOKIE, auth::expired_session_cookie())],
        Redirect::to("/"),
    )
        .into_response()
}

pub(crate) async fn product_image(Path(file): Path<String>) -> Response {
    let product = file.strip_suffix(".svg").and_then(catalog::product);
    match product {
        Some(product) => (
            [
                (CONTENT_TYPE, "image/svg+xml"),
                (CACHE_CONTROL, "public, max-age=3600"),
            ],
            html::product_svg(product),
        )
            .into_response(),
        None => crate::api::not_found(),
    }
}

fn not_found_page(visitor: &Visitor) -> Response {
    let main = r#"<h1>Page not found</h1>
<p>We could not find that page. <a href="/products">Browse all products</a>.</p>"#;
    (
        StatusCode::NOT_FOUND,
        Html(html::page("Page not found", visitor, "", main)),
    )
        .into_response()
}

/// Unknown pages (anything outside `/api` and `/admin`).
pub(crate) async fn not_found(State(state): State<AppState>, headers: HeaderMap) -> Response {
    not_found_page(&visitor(&state, &headers))
}
