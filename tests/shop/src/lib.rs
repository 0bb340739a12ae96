//! `citadel-shop`: a small, in-memory CitadelBuy storefront that Patrol's end-to-end tests,
//! benchmarks and `patrol demo` probe. It serves the JSON API and pages from the CitadelBuy
//! deployment runbook's smoke tests, and faults (latency, error status, malformed JSON, hangs,
//! TCP resets, console errors) can be switched on per route at runtime, through the admin API
//! or [`Shop::faults`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use citadel_shop::{Fault, Shop};
//! let shop = Shop::start("127.0.0.1:0".parse().expect("literal address")).await?;
//! shop.faults().set(Fault { status: Some(503), ..Fault::new("/api/products") });
//! println!("probe me at {}", shop.url());
//! shop.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//! - `admin`   — admin API: set, list and clear faults; reset to the seed
//! - `api`     — JSON API: health, auth, products, search, categories, cart, checkout, `/slow`
//! - `app`     — shared request state and the route table
//! - `auth`    — session tokens from bearer headers and cookies
//! - `catalog` — the seed products, categories and test account
//! - `faults`  — the fault model and the runtime fault table
//! - `html`    — page shell, escaping and product cards
//! - `inject`  — middleware that applies a route's fault
//! - `pages`   — the server-rendered storefront
//! - `serve`   — accept loop; serves connections with hyper and can reset them
//! - `store`   — in-memory users, sessions and carts

mod admin;
mod api;
mod app;
mod auth;
pub mod catalog;
mod faults;
mod html;
mod inject;
mod pages;
mod serve;
mod store;

use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{Fault, Faults};

/// A running shop, serving on a background tokio task until [`Shop::shutdown`] or drop.
#[derive(Debug)]
pub struct Shop {
    addr: SocketAddr,
    faults: Faults,
    store: store::Store,
    shutdown: watch::Sender<bool>,
    /// `None` only after `shutdown` has taken it.
    server: Option<JoinHandle<()>>,
}

impl Shop {
    /// Binds `addr` (port 0 picks a free port) and starts serving in a background task.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Shop> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = app::AppState {
            store: store::Store::default(),
            faults: Faults::default(),
            started: Instant::now(),
            shutdown: shutdown_rx.clone(),
        };
        let (faults, store) = (state.faults.clone(), state.store.clone());
        let server = tokio::spawn(serve::serve(listener, app::router(state), shutdown_rx));
        tracing::info!(%addr, "Shop started.");
        Ok(Shop {
            addr,
            faults,
            store,
            shutdown,
            server: Some(server),
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:8080`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The live fault table; changes apply to the next request.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Clears faults and puts users, sessions and carts back to the seed (`POST /admin/reset`).
    pub fn reset(&self) {
        self.faults.clear();
        self.store.reset();
    }

    /// Stops accepting, lets in-flight requests finish (hung ones are released), and waits
    /// for the server task to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        tracing::info!(addr = %self.addr, "Shop stopped.");
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Aborting the server task drops its connection set, which aborts every connection.
            server.abort();
        }
    }
}
