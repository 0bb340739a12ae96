//! `patrol demo`: starts the bundled reference shop on loopback and an agent probing it with the
//! example CitadelBuy suite, and prints where to look. `--once` runs the suite a single time as
//! `patrol verify` would and exits with its code.
//!
//! The shop speaks HTTP only: the example's infrastructure probes (database, Redis, TLS, DNS,
//! tagged `infra`) target real hosts and are left out, as browser probes are without Chromium.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use citadel_shop::Shop;
use patrol_probes::browser::Browser;
use patrol_probes::spec::{ProbeKind, Protocol};
use patrol_probes::template::Masker;
use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::config;
use crate::daemon::{self, RunOptions};
use crate::gate::{Outputs, run_and_report};
use crate::verify::Selection;

/// The example suite, compiled in so the demo runs from any directory.
const EXAMPLE: &str = include_str!("../../examples/citadelbuy.yaml");
const EXAMPLE_NAME: &str = "examples/citadelbuy.yaml";

/// What `patrol demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Shop address.
    pub shop_listen: SocketAddr,
    /// Agent address.
    pub listen: SocketAddr,
    /// Verify once and exit.
    pub once: bool,
    /// Verbose report (with `once`).
    pub verbose: bool,
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> ExitCode {
    let shop = match Shop::start(options.shop_listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot start the demo shop on {}: {e}",
                options.shop_listen
            );
            return ExitCode::from(2);
        }
    };
    let password = citadel_shop::catalog::TEST_USER_PASSWORD.to_string();
    let vars = vec![
        ("api".to_string(), shop.url()),
        ("smoke_password".to_string(), password.clone()),
    ];
    println!("Reference shop: {}", shop.url());
    // A fresh machine may lack Chromium: the demo then shows the API probes only.
    let browser_missing = config::load_str(EXAMPLE_NAME, EXAMPLE)
        .ok()
        .and_then(|(c, _)| Browser::check_installed(&c.browser_settings()).err());
    if let Some(why) = &browser_missing {
        println!("Browser probes are left out: {why}");
    }
    let with_browser = browser_missing.is_none();
    println!(
        "Infrastructure probes (tag infra: database, Redis, TLS, DNS) are left out: they target real hosts."
    );
    let code = if options.once {
        once(&vars, &password, options.verbose, with_browser).await
    } else {
        agent(&vars, &password, options.listen, with_browser).await
    };
    shop.shutdown().await;
    code
}

async fn once(
    vars: &[(String, String)],
    password: &str,
    verbose: bool,
    with_browser: bool,
) -> ExitCode {
    let mut config = match config::load_str(EXAMPLE_NAME, EXAMPLE) {
        Ok((c, _warnings)) => c,
        Err(report) => {
            eprintln!("{report}");
            return ExitCode::from(2);
        }
    };
    for (name, value) in vars {
        config.set_var(name, value);
    }
    if !with_browser {
        config
            .probes
            .retain(|p| !matches!(p.spec.kind, ProbeKind::Browser(_)));
    }
    config
        .probes
        .retain(|p| !matches!(p.spec.kind, ProbeKind::Infra(_)));
    println!("Running {EXAMPLE_NAME} once (the test password is masked as ***):\n");
    let outputs = Outputs {
        config_name: EXAMPLE_NAME.into(),
        verbose,
        ..Outputs::default()
    };
    run_and_report(
        &config,
        &Selection::default(),
        Masker::new([password.to_string()]),
        &outputs,
    )
    .await
}

async fn agent(
    vars: &[(String, String)],
    password: &str,
    listen: SocketAddr,
    with_browser: bool,
) -> ExitCode {
    // The agent reads (and reloads) its config from a file: give it the example.
    let dir = std::env::temp_dir().join(format!("patrol-demo-{}", std::process::id()));
    let path = dir.join("citadelbuy.yaml");
    let example = without_infra_probes(EXAMPLE);
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, example)) {
        eprintln!(
            "error: cannot write the demo config to {}: {e}",
            path.display()
        );
        return ExitCode::from(2);
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let options = RunOptions {
        config: path,
        listen: Some(listen),
        grace: Duration::from_secs(5),
        vars: vars.to_vec(),
        secrets: vec![password.to_string()],
        api_token: Some(token.clone()),
        show_warnings: false,
        run_at_start: true,
        without_browser_probes: !with_browser,
    };
    let announce = |addr: SocketAddr| {
        println!("Patrol agent probing it with {EXAMPLE_NAME}:");
        println!("  status page  http://{addr}/");
        println!("  metrics      http://{addr}/metrics");
        println!("  API          http://{addr}/api/v1/probes");
        println!(
            "  run now      curl -X POST -H 'Authorization: Bearer {token}' http://{addr}/api/v1/runs"
        );
        println!("Press Ctrl-C to stop.");
    };
    let result = daemon::run(options, daemon::termination(), announce).await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The config text without its infrastructure probes: each such item of the `probes:` list is
/// cut out by its lines, so the agent reads (and reloads) the example otherwise unchanged.
fn without_infra_probes(source: &str) -> String {
    let Ok(docs) = MarkedYaml::load_from_str(source) else {
        return source.to_string();
    };
    let Some(YamlData::Mapping(root)) = docs.first().map(|d| &d.data) else {
        return source.to_string();
    };
    let is_key = |k: &MarkedYaml<'_>, name: &str| matches!(&k.data, YamlData::Value(Scalar::String(s)) if s == name);
    let Some((probes_key, probes)) = root.iter().find(|(k, _)| is_key(k, "probes")) else {
        return source.to_string();
    };
    let YamlData::Sequence(items) = &probes.data else {
        return source.to_string();
    };
    // Lines are 1-based; the list ends where the next top-level key starts.
    let list_end = root
        .keys()
        .map(|k| k.span.start.line())
        .filter(|l| *l > probes_key.span.start.line())
        .min()
        .unwrap_or(usize::MAX);
    let mut cut = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let YamlData::Mapping(fields) = &item.data else {
            continue;
        };
        let infra = fields.iter().any(|(k, v)| {
            is_key(k, "type")
                && matches!(&v.data, YamlData::Value(Scalar::String(t)) if Protocol::from_name(t).is_some())
        });
        if infra {
            let end = items
                .get(i + 1)
                .map_or(list_end, |next| next.span.start.line());
            cut.push(item.span.start.line()..end);
        }
    }
    source
        .split_inclusive('\n')
        .enumerate()
        .filter(|(i, _)| !cut.iter().any(|r| r.contains(&(i + 1))))
        .map(|(_, line)| line)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_the_example_without_infrastructure_probes() {
        let (full, _) = config::load_str(EXAMPLE_NAME, EXAMPLE).unwrap_or_else(|r| panic!("{r}"));
        let demo = without_infra_probes(EXAMPLE);
        let (cut, _) = config::load_str(EXAMPLE_NAME, &demo).unwrap_or_else(|r| panic!("{r}"));
        let names = |c: &config::Config, infra: bool| -> Vec<String> {
            c.probes
                .iter()
                .filter(|p| matches!(p.spec.kind, ProbeKind::Infra(_)) == infra)
                .map(|p| p.spec.name.clone())
                .collect()
        };
        assert!(
            !names(&full, true).is_empty(),
            "the example has infrastructure probes"
        );
        assert!(
            names(&cut, true).is_empty(),
            "left in: {:?}",
            names(&cut, true)
        );
        assert_eq!(names(&cut, false), names(&full, false));
        assert_eq!(cut.vars.len(), full.vars.len());
        assert_eq!(cut.verify.baseline, full.verify.baseline);
    }
}
