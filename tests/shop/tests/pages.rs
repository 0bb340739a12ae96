//! The server-rendered pages: the elements browser journeys select on, the login/logout
//! cookie flow, the cart redirect and 404s.

#![allow(clippy::unwrap_used)]

mod common;

use common::{get, get_with, login, post_json, request, shop};
use serde_json::json;

/// Checks the parts every page shares.
fn assert_page_shell(html: &str, title: &str) {
    assert!(
        html.contains(&format!("<title>{title} | CitadelBuy</title>")),
        "title {title}"
    );
    assert!(
        html.contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#)
    );
    assert!(html.contains(r#"<link rel="icon" href="data:,">"#));
    for fragment in [
        r#"<form id="search-form" action="/search" method="get""#,
        r#"<input id="search" name="q""#,
        r#"<button id="search-button""#,
        r#"class="mobile-menu-button""#,
        r#"class="desktop-nav""#,
        r#"id="cart-count""#,
        "@media (max-width:768px)",
    ] {
        assert!(html.contains(fragment), "missing {fragment}");
    }
}

#[tokio::test]
async fn home_and_listing_show_product_cards() {
    let shop = shop().await;
    let addr = shop.addr();
    let home = get(addr, "/").await;
    assert_eq!(home.status, 200);
    assert!(
        home.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = home.text();
    assert_page_shell(&html, "Home");
    assert!(html.contains("<h1>CitadelBuy</h1>"));
    assert!(html.contains(r#"class="product-card""#));
    assert!(html.contains(r#"class="product-name""#) && html.contains(r#"class="product-price""#));
    assert!(html.contains(r#"href="/products/1""#));
    assert!(html.contains(r#"id="login-link""#));

    let listing = get(addr, "/products").await.text();
    assert_page_shell(&listing, "Products");
    assert!(listing.contains(r#"<span id="product-count">12</span>"#));
    assert_eq!(listing.matches(r#"class="product-card""#).count(), 12);

    let image = get(addr, "/images/products/1.svg").await;
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), Some("image/svg+xml"));
    assert_eq!(get(addr, "/images/products/99.svg").await.status, 404);
}

#[tokio::test]
async fn product_page_shows_details_and_unknown_ids_are_404() {
    let shop = shop().await;
    let addr = shop.addr();
    let page = get(addr, "/products/1").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert_page_shell(&html, "Citadel Laptop Pro 15");
    assert!(html.contains(r#"<h1 class="product-name">Citadel Laptop Pro 15</h1>"#));
    assert!(html.contains(r#"<p class="product-price">$999.00</p>"#));
    assert!(html.contains(r#"class="product-description""#));
    assert!(html.contains(r#"<button id="add-to-cart""#));
    assert!(html.contains(r#"data-logged-in="false""#));
    assert!(html.contains(r#"id="cart-message""#));
    assert!(html.contains("fetch('/api/cart/items'"));
    assert!(html.contains("Please log in") && html.contains("Added to cart"));

    let missing = get(addr, "/products/999").await;
    assert_eq!(missing.status, 404);
    assert_page_shell(&missing.text(), "Page not found");
    assert_eq!(get(addr, "/no/such/page").await.status, 404);
}

#[tokio::test]
async fn search_page_lists_results_or_says_no_results() {
    let shop = shop().await;
    let addr = shop.addr();
    let html = get(addr, "/search?q=laptop").await.text();
    assert!(html.contains(r#"class="results"#));
    let count = html.matches(r#"class="product-card""#).count();
    assert!(count >= 3);
    assert!(html.contains(&format!(r#"<span id="result-count">{count}</span>"#)));
    assert!(
        html.contains(r#"value="laptop""#),
        "the search box keeps the query"
    );
    assert!(!html.contains("No results"));

    let none = get(addr, "/search?q=unobtainium").await.text();
    assert!(none.contains("No results"));
    assert!(none.contains(r#"<span id="result-count">0</span>"#));
    assert!(!none.contains(r#"class="product-card""#));

    let escaped = get(addr, "/search?q=%3Cscript%3E").await.text();
    assert!(escaped.contains("&lt;script&gt;") && !escaped.contains("<script>alert"));
}

#[tokio::test]
async fn cart_page_redirects_anonymous_visitors_to_login() {
    let shop = shop().await;
    let reply = get(shop.addr(), "/cart").await;
    assert_eq!(reply.status, 303);
    assert_eq!(reply.header("location"), Some("/login"));
}

#[tokio::test]
async fn login_form_sets_the_cookie_and_the_header_shows_the_user() {
    let shop = shop().await;
    let addr = shop.addr();
    let form = get(addr, "/login").await.text();
    assert_page_shell(&form, "Log in");
    for fragment in [
        r#"<form id="login-form""#,
        r#"id="email""#,
        r#"id="password""#,
        r#"id="login-button""#,
    ] {
        assert!(form.contains(fragment), "missing {fragment}");
    }

    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let body = b"email=test%40citadelbuy.com&password=Test1234%21";
    let reply = request(addr, "POST", "/login", &form_type, body)
        .await
        .unwrap();
    assert_eq!(reply.status, 303);
    assert_eq!(reply.header("location"), Some("/"));
    let set_cookie = reply.header("set-cookie").unwrap();
    assert!(set_cookie.starts_with("session=") && set_cookie.contains("HttpOnly"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let token = cookie.trim_start_matches("session=").to_string();

    let home = get_with(addr, "/", &[("Cookie", &cookie)]).await.text();
    assert!(home.contains(r#"<span id="user-name">Smoke Test User</span>"#));
    assert!(home.contains(r#"id="logout-link""#));
    assert!(!home.contains(r#"id="login-link""#));
    let product = get_with(addr, "/products/1", &[("Cookie", &cookie)])
        .await
        .text();
    assert!(product.contains(r#"data-logged-in="true""#));

    // The cart page lists what the API added, with the total.
    let empty = get_with(addr, "/cart", &[("Cookie", &cookie)]).await;
    assert_eq!(empty.status, 200);
    assert!(
        empty
            .text()
            .contains(r#"<span id="cart-total">$0.00</span>"#)
    );
    let line = json!({ "productId": "1", "quantity": 2 });
    assert_eq!(
        post_json(addr, "/api/cart/items", Some(&token), &line)
            .await
            .status,
        201
    );
    let cart = get_with(addr, "/cart", &[("Cookie", &cookie)]).await.text();
    assert_page_shell(&cart, "Cart");
    assert_eq!(cart.matches(r#"class="cart-item""#).count(), 1);
    assert!(cart.contains(r#"<span id="cart-total">$1998.00</span>"#));
    assert!(cart.contains(r#"<span id="cart-count">2</span>"#));

    let logout = get_with(addr, "/logout", &[("Cookie", &cookie)]).await;
    assert_eq!(logout.status, 303);
    assert_eq!(logout.header("location"), Some("/"));
    assert!(logout.header("set-cookie").unwrap().contains("Max-Age=0"));
    // The session is closed server-side too.
    assert_eq!(
        get_with(addr, "/cart", &[("Cookie", &cookie)]).await.status,
        303
    );
    assert_eq!(login(addr).await.len(), token.len());
}

#[tokio::test]
async fn failed_login_rerenders_the_form_with_an_error() {
    let shop = shop().await;
    let addr = shop.addr();
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let reply = request(
        addr,
        "POST",
        "/login",
        &form_type,
        b"email=test%40citadelbuy.com&password=nope",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401);
    assert!(reply.header("set-cookie").is_none());
    let html = reply.text();
    assert!(html.contains(r#"class="error""#) && html.contains("Invalid email or password"));
    assert!(html.contains(r#"value="test@citadelbuy.com""#));
}
