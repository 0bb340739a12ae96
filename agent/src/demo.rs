//! `patrol demo`: starts the bundled reference shop on loopback and runs the example CitadelBuy
//! suite against it, so a new user sees a real report with one command.

use std::net::SocketAddr;
use std::process::ExitCode;

use citadel_shop::Shop;
use patrol_probes::template::Masker;

use crate::config;
use crate::verify::Selection;
use crate::{Outputs, run_and_report};

/// The example suite, compiled in so the demo runs from any directory.
const EXAMPLE: &str = include_str!("../../examples/citadelbuy.yaml");
const EXAMPLE_NAME: &str = "examples/citadelbuy.yaml";

/// Runs the demo; the exit code is the verify run's.
pub async fn run(shop_listen: SocketAddr, verbose: bool) -> ExitCode {
    let shop = match Shop::start(shop_listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the demo shop on {shop_listen}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = match config::load_str(EXAMPLE_NAME, EXAMPLE) {
        Ok((c, _warnings)) => c,
        Err(report) => {
            eprintln!("{report}");
            return ExitCode::from(2);
        }
    };
    let password = citadel_shop::catalog::TEST_USER_PASSWORD;
    config.set_var("api", &shop.url());
    config.set_var("smoke_password", password);
    println!("Reference shop listening on {}", shop.url());
    println!("Running {EXAMPLE_NAME} against it (the test password is masked as ***):\n");
    let outputs = Outputs {
        config_name: EXAMPLE_NAME.into(),
        verbose,
        ..Outputs::default()
    };
    let code = run_and_report(
        &config,
        &Selection::default(),
        Masker::new([password.to_string()]),
        &outputs,
    )
    .await;
    shop.shutdown().await;
    code
}
