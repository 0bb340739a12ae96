//! The JSON API, endpoint by endpoint: happy paths and the main errors, and the runbook's
//! login → cart → checkout flow with a bearer token.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{get, get_with, login, post_json, request, shop};
use serde_json::json;

#[tokio::test]
async fn health_endpoints_answer() {
    let shop = shop().await;
    let addr = shop.addr();
    assert_eq!(shop.url(), format!("http://{addr}"));

    let health = get(addr, "/api/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    assert_eq!(health.json(), json!({ "status": "ok" }));
    assert_eq!(
        get(addr, "/api/health/ready").await.json(),
        json!({ "status": "ready" })
    );

    let detailed = get(addr, "/api/health/detailed").await.json();
    assert_eq!(detailed["status"], "ok");
    assert!(detailed["version"].is_string());
    assert!(detailed["uptime_seconds"].is_u64());
    for check in ["database", "redis"] {
        assert_eq!(detailed["checks"][check]["status"], "up");
        assert!(detailed["checks"][check]["latency_ms"].is_u64());
    }
    shop.shutdown().await;
}

#[tokio::test]
async fn register_creates_users_and_rejects_bad_or_duplicate_ones() {
    let shop = shop().await;
    let addr = shop.addr();
    let new_user = json!({ "email": "smoketest+1@citadelbuy.com", "password": "Test1234!", "name": "Smoke Test User" });

    let created = post_json(addr, "/api/auth/register", None, &new_user).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let user = created.json();
    assert_eq!(user["email"], "smoketest+1@citadelbuy.com");
    assert_eq!(user["name"], "Smoke Test User");
    assert!(user["id"].is_string());
    assert!(user.get("password").is_none());

    assert_eq!(
        post_json(addr, "/api/auth/register", None, &new_user)
            .await
            .status,
        409
    );
    let seeded = json!({ "email": "test@citadelbuy.com", "password": "Test1234!", "name": "X" });
    assert_eq!(
        post_json(addr, "/api/auth/register", None, &seeded)
            .await
            .status,
        409
    );

    for bad in [
        json!({ "email": "no-at-sign", "password": "Test1234!", "name": "A" }),
        json!({ "email": "a@b.c", "password": "short", "name": "A" }),
        json!({ "email": "a@b.c", "password": "Test1234!" }),
        json!({ "password": "Test1234!", "name": "A" }),
    ] {
        let reply = post_json(addr, "/api/auth/register", None, &bad).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert!(reply.json()["error"].is_string());
    }
    let garbage = request(addr, "POST", "/api/auth/register", &[], b"{not json")
        .await
        .unwrap();
    assert_eq!(garbage.status, 400);
    assert!(garbage.json()["error"].is_string());

    // The new account can log in.
    let login = json!({ "email": "smoketest+1@citadelbuy.com", "password": "Test1234!" });
    assert_eq!(
        post_json(addr, "/api/auth/login", None, &login)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn login_returns_a_token_and_a_session_cookie() {
    let shop = shop().await;
    let addr = shop.addr();
    let body = json!({ "email": "test@citadelbuy.com", "password": "Test1234!" });
    let reply = post_json(addr, "/api/auth/login", None, &body).await;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    let token = json["token"].as_str().unwrap();
    assert!(token.len() >= 16);
    assert_eq!(json["user"]["email"], "test@citadelbuy.com");
    assert_eq!(json["user"]["name"], "Smoke Test User");
    assert_eq!(
        reply.header("set-cookie"),
        Some(format!("session={token}; Path=/; HttpOnly").as_str())
    );

    // A second login opens a different session.
    assert_ne!(login(addr).await, token);

    let wrong = json!({ "email": "test@citadelbuy.com", "password": "wrong-password" });
    let reply = post_json(addr, "/api/auth/login", None, &wrong).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json(), json!({ "error": "invalid credentials" }));
    let unknown = json!({ "email": "nobody@citadelbuy.com", "password": "Test1234!" });
    assert_eq!(
        post_json(addr, "/api/auth/login", None, &unknown)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn products_list_detail_search_and_categories() {
    let shop = shop().await;
    let addr = shop.addr();

    let page = get(addr, "/api/products?limit=10").await.json();
    assert_eq!(page["products"].as_array().unwrap().len(), 10);
    assert_eq!(page["total"], 12);
    assert_eq!(page["limit"], 10);
    let all = get(addr, "/api/products").await.json();
    assert_eq!(all["limit"], 20);
    assert_eq!(all["products"].as_array().unwrap().len(), 12);
    assert_eq!(get(addr, "/api/products?limit=abc").await.status, 400);

    let laptop = get(addr, "/api/products/1").await;
    assert_eq!(laptop.status, 200);
    let laptop = laptop.json();
    assert_eq!(laptop["id"], "1");
    assert_eq!(laptop["price"], 999.0);
    for field in ["name", "category", "description", "image"] {
        assert!(laptop[field].is_string(), "{field}");
    }
    assert!(laptop["image"].as_str().unwrap().starts_with('/'));
    assert!(laptop["stock"].is_u64());
    let missing = get(addr, "/api/products/999").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({ "error": "product not found" }));

    let search = get(addr, "/api/search?q=laptop").await.json();
    assert_eq!(search["query"], "laptop");
    let results = search["results"].as_array().unwrap();
    assert!(results.len() >= 3);
    assert_eq!(search["total"], results.len());
    let laptops_by_name = results
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("laptop")
        })
        .count();
    assert!(laptops_by_name >= 3);
    assert_eq!(get(addr, "/api/search?q=BOOKS").await.json()["total"], 2);
    assert_eq!(get(addr, "/api/search?q=zzzz").await.json()["total"], 0);
    assert_eq!(get(addr, "/api/search").await.status, 400);
    assert_eq!(get(addr, "/api/search?q=").await.status, 400);

    let categories = get(addr, "/api/categories").await.json();
    let categories = categories["categories"].as_array().unwrap();
    assert!(categories.len() >= 4);
    let counted: u64 = categories
        .iter()
        .map(|c| c["productCount"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 12);
    assert!(
        categories
            .iter()
            .all(|c| c["id"].is_string() && c["slug"].is_string())
    );

    let unknown = get(addr, "/api/nothing-here").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"].is_string());
}

#[tokio::test]
async fn login_cart_checkout_flow_with_a_bearer_token() {
    let shop = shop().await;
    let addr = shop.addr();
    let bearer = login(addr).await;
    let token = Some(bearer.as_str());

    let added = post_json(
        addr,
        "/api/cart/items",
        token,
        &json!({ "productId": "1", "quantity": 1 }),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.text());
    let cart = added.json()["cart"].clone();
    assert_eq!(
        cart["items"][0],
        json!({ "productId": "1", "name": "Citadel Laptop Pro 15", "quantity": 1, "price": 999.0 })
    );
    assert_eq!(cart["total"], 999.0);

    let added = post_json(
        addr,
        "/api/cart/items",
        token,
        &json!({ "productId": "7", "quantity": 2 }),
    )
    .await;
    assert_eq!(added.status, 201);
    let auth = format!("Bearer {bearer}");
    let cart = get_with(addr, "/api/cart", &[("Authorization", &auth)]).await;
    assert_eq!(cart.status, 200);
    let cart = cart.json();
    assert_eq!(cart["items"].as_array().unwrap().len(), 2);
    assert_eq!(cart["count"], 3);
    assert_eq!(cart["total"], 999.0 + 2.0 * 39.95);

    let session = post_json(
        addr,
        "/api/checkout/create-session",
        token,
        &json!({ "items": [{ "productId": "1", "quantity": 1 }], "test": true }),
    )
    .await;
    assert_eq!(session.status, 200, "{}", session.text());
    let session = session.json();
    let id = session["sessionId"].as_str().unwrap();
    assert!(id.starts_with("cs_test_") && id.len() > "cs_test_".len());
    assert_eq!(session["url"], format!("/checkout/{id}"));
    assert_eq!(session["amount"], 999.0);
    assert_eq!(session["currency"], "usd");

    let empty = post_json(
        addr,
        "/api/checkout/create-session",
        token,
        &json!({ "items": [], "test": true }),
    )
    .await;
    assert_eq!(empty.status, 400);
    let unknown = json!({ "items": [{ "productId": "404", "quantity": 1 }] });
    assert_eq!(
        post_json(addr, "/api/checkout/create-session", token, &unknown)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn cart_refuses_anonymous_unknown_products_and_bad_quantities() {
    let shop = shop().await;
    let addr = shop.addr();
    let line = json!({ "productId": "1", "quantity": 1 });
    assert_eq!(
        post_json(addr, "/api/cart/items", None, &line).await.status,
        401
    );
    assert_eq!(
        post_json(addr, "/api/cart/items", Some("not-a-token"), &line)
            .await
            .status,
        401
    );
    assert_eq!(get(addr, "/api/cart").await.status, 401);
    let checkout = json!({ "items": [{ "productId": "1", "quantity": 1 }], "test": true });
    assert_eq!(
        post_json(addr, "/api/checkout/create-session", None, &checkout)
            .await
            .status,
        401
    );

    let token = login(addr).await;
    let token = Some(token.as_str());
    let unknown = post_json(
        addr,
        "/api/cart/items",
        token,
        &json!({ "productId": "999", "quantity": 1 }),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json(), json!({ "error": "product not found" }));
    for quantity in [json!(0), json!(-1), json!(1.5), json!("two"), json!(1000)] {
        let bad = post_json(
            addr,
            "/api/cart/items",
            token,
            &json!({ "productId": "1", "quantity": quantity }),
        )
        .await;
        assert_eq!(bad.status, 400, "quantity {quantity}");
    }
}

#[tokio::test]
async fn cart_accepts_the_session_cookie() {
    let shop = shop().await;
    let addr = shop.addr();
    let token = login(addr).await;
    let cookie = format!("session={token}");
    let headers = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = json!({ "productId": 2, "quantity": 1 }).to_string();
    let added = request(addr, "POST", "/api/cart/items", &headers, body.as_bytes())
        .await
        .unwrap();
    assert_eq!(added.status, 201, "{}", added.text());
    let cart = get_with(addr, "/api/cart", &[("Cookie", &cookie)])
        .await
        .json();
    assert_eq!(cart["items"][0]["productId"], "2");
    assert_eq!(cart["count"], 1);
}

#[tokio::test]
async fn slow_sleeps_for_the_requested_time() {
    let shop = shop().await;
    let started = Instant::now();
    let reply = get(shop.addr(), "/slow?ms=120").await;
    assert!(started.elapsed() >= Duration::from_millis(120));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({ "slept_ms": 120 }));
    assert_eq!(get(shop.addr(), "/slow?ms=soon").await.status, 400);
}
