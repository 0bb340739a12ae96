//! `citadel-shop --listen ADDR`: runs the reference shop until SIGINT or SIGTERM.
//!
//! Layout: this file only parses arguments, sets up logging (stderr, `RUST_LOG`, default
//! `warn`), prints the listening line on stdout and waits for a signal; the shop itself is
//! the `citadel_shop` library.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use citadel_shop::Shop;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The reference CitadelBuy shop that Patrol probes, with switchable faults.
#[derive(Debug, Parser)]
#[command(name = "citadel-shop", version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let shop = match Shop::start(args.listen).await {
        Ok(shop) => shop,
        Err(error) => {
            eprintln!("citadel-shop: cannot listen on {}: {error}", args.listen);
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout();
    // The launcher reads this line to learn the address; without it the shop is useless.
    if writeln!(stdout, "citadel-shop listening on {}", shop.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        eprintln!("citadel-shop: cannot write to stdout");
        return ExitCode::from(2);
    }

    shutdown_signal().await;
    shop.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on the first SIGINT or SIGTERM (only Ctrl-C off Unix).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                eprintln!("citadel-shop: cannot watch SIGTERM ({error}); stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
