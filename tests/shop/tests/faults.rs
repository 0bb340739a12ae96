//! Each fault kind, switched on through the admin API or programmatically, as a client sees
//! it: added latency, injected statuses, malformed JSON, hangs, TCP resets, console errors.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use citadel_shop::Fault;
use common::{get, post_json, request, send_json, shop};
use serde_json::{Value, json};

async fn put_fault(addr: std::net::SocketAddr, fault: Value) -> common::Reply {
    send_json(addr, "PUT", "/admin/faults", None, &fault).await
}

#[tokio::test]
async fn latency_delays_the_answer_by_at_least_the_set_time() {
    let shop = shop().await;
    let addr = shop.addr();
    let reply = put_fault(addr, json!({ "route": "/api/products", "latency_ms": 150 })).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let started = Instant::now();
    let reply = get(addr, "/api/products").await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["total"], 12);

    // Jitter only adds.
    put_fault(
        addr,
        json!({ "route": "/api/products", "latency_ms": 50, "latency_jitter_ms": 20 }),
    )
    .await;
    let started = Instant::now();
    get(addr, "/api/products").await;
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn status_replaces_the_handler_only_at_the_error_rate() {
    let shop = shop().await;
    let addr = shop.addr();
    put_fault(addr, json!({ "route": "/api/products", "status": 500 })).await;
    let reply = get(addr, "/api/products").await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json(), json!({ "error": "injected fault" }));
    // Other routes are untouched.
    assert_eq!(get(addr, "/api/categories").await.status, 200);

    put_fault(
        addr,
        json!({ "route": "/api/products", "status": 503, "error_rate": 0.0 }),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(get(addr, "/api/products").await.status, 200);
    }
}

#[tokio::test]
async fn malformed_json_keeps_status_and_content_type_but_does_not_parse() {
    let shop = shop().await;
    let addr = shop.addr();
    put_fault(
        addr,
        json!({ "route": "/api/products", "malformed_json": true }),
    )
    .await;
    let reply = get(addr, "/api/products").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(!reply.body.is_empty());
    assert!(
        serde_json::from_slice::<Value>(&reply.body).is_err(),
        "{}",
        reply.text()
    );
    assert!(reply.text().starts_with('{'));

    // Also for a tiny body.
    put_fault(
        addr,
        json!({ "route": "/api/health", "malformed_json": true }),
    )
    .await;
    let reply = get(addr, "/api/health").await;
    assert!(
        serde_json::from_slice::<Value>(&reply.body).is_err(),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn hang_never_answers_and_does_not_block_shutdown() {
    let shop = shop().await;
    let addr = shop.addr();
    put_fault(addr, json!({ "route": "/api/health", "hang": true })).await;
    let outcome = tokio::time::timeout(Duration::from_millis(300), get(addr, "/api/health")).await;
    assert!(outcome.is_err(), "a hung route answered: {outcome:?}");

    // A request still hanging when the shop stops does not hold the shutdown up.
    let hanging = tokio::spawn(request(addr, "GET", "/api/health", &[], b""));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(3), shop.shutdown())
        .await
        .expect("shutdown finished");
    let _ = hanging.await;
}

#[tokio::test]
async fn reset_aborts_the_connection_with_an_rst() {
    let shop = shop().await;
    let addr = shop.addr();
    put_fault(addr, json!({ "route": "/api/products", "reset": true })).await;
    let error = request(addr, "GET", "/api/products", &[], b"")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    // The shop keeps serving other connections.
    assert_eq!(get(addr, "/api/health").await.status, 200);
    let error = request(addr, "GET", "/api/products?limit=1", &[], b"")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
}

#[tokio::test]
async fn console_error_is_injected_into_pages_only() {
    let shop = shop().await;
    let addr = shop.addr();
    put_fault(addr, json!({ "route": "/*", "console_error": true })).await;
    let page = get(addr, "/products/1").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    let script = r#"<script>console.error("injected console error")</script>"#;
    assert!(html.contains(script));
    assert!(html.find(script) < html.find("</head>"));
    // JSON answers are left alone.
    assert_eq!(
        get(addr, "/api/health").await.json(),
        json!({ "status": "ok" })
    );
}

#[tokio::test]
async fn prefix_routes_cover_subpaths_and_admin_is_never_faulted() {
    let shop = shop().await;
    let addr = shop.addr();
    put_fault(addr, json!({ "route": "/api/*", "status": 502 })).await;
    assert_eq!(get(addr, "/api/health").await.status, 502);
    assert_eq!(get(addr, "/api/products/3").await.status, 502);
    assert_eq!(get(addr, "/").await.status, 200);

    put_fault(addr, json!({ "route": "/*", "status": 500 })).await;
    assert_eq!(get(addr, "/").await.status, 500);
    let listed = get(addr, "/admin/faults").await;
    assert_eq!(listed.status, 200);
    let listed = listed.json();
    let routes: Vec<&str> = listed["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["/*", "/api/*"]);
}

#[tokio::test]
async fn admin_clears_one_route_or_all_and_validates_input() {
    let shop = shop().await;
    let addr = shop.addr();
    put_fault(addr, json!({ "route": "/api/products", "status": 500 })).await;
    put_fault(addr, json!({ "route": "/api/categories", "status": 500 })).await;

    let cleared = request(
        addr,
        "DELETE",
        "/admin/faults?route=/api/products",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(cleared.status, 200);
    assert_eq!(cleared.json()["faults"].as_array().unwrap().len(), 1);
    assert_eq!(get(addr, "/api/products").await.status, 200);
    assert_eq!(get(addr, "/api/categories").await.status, 500);
    let missing = request(addr, "DELETE", "/admin/faults?route=/nothing", &[], b"")
        .await
        .unwrap();
    assert_eq!(missing.status, 404);

    let cleared = request(addr, "DELETE", "/admin/faults", &[], b"")
        .await
        .unwrap();
    assert_eq!(cleared.json(), json!({ "faults": [] }));
    assert_eq!(get(addr, "/api/categories").await.status, 200);

    for bad in [
        json!({ "status": 500 }),
        json!({ "route": "api", "status": 500 }),
        json!({ "route": "/x", "status": 1000 }),
        json!({ "route": "/x", "error_rate": 2.0 }),
        json!({ "route": "/x", "latency": 100 }),
    ] {
        let reply = put_fault(addr, bad.clone()).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert!(reply.json()["error"].is_string());
    }
    assert_eq!(
        get(addr, "/admin/faults").await.json(),
        json!({ "faults": [] })
    );
}

#[tokio::test]
async fn admin_reset_clears_faults_and_reseeds_accounts() {
    let shop = shop().await;
    let addr = shop.addr();
    let user = json!({ "email": "reset@citadelbuy.com", "password": "Test1234!", "name": "R" });
    assert_eq!(
        post_json(addr, "/api/auth/register", None, &user)
            .await
            .status,
        201
    );
    put_fault(addr, json!({ "route": "/api/health", "status": 500 })).await;

    let reset = post_json(addr, "/admin/reset", None, &json!({})).await;
    assert_eq!(reset.status, 200);
    assert_eq!(reset.json(), json!({ "status": "reset" }));
    assert_eq!(get(addr, "/api/health").await.status, 200);
    assert_eq!(
        post_json(addr, "/api/auth/register", None, &user)
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn faults_can_be_set_and_cleared_programmatically() {
    let shop = shop().await;
    let addr = shop.addr();
    shop.faults().set(Fault {
        status: Some(418),
        ..Fault::new("/api/health")
    });
    assert_eq!(get(addr, "/api/health").await.status, 418);
    assert_eq!(
        get(addr, "/admin/faults").await.json()["faults"][0]["status"],
        418
    );
    shop.faults().clear();
    assert_eq!(get(addr, "/api/health").await.status, 200);

    shop.faults().set(Fault {
        status: Some(500),
        ..Fault::new("/api/*")
    });
    shop.reset();
    assert!(shop.faults().list().is_empty());
    assert_eq!(get(addr, "/api/health").await.status, 200);
}
