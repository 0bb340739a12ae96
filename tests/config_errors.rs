//! End-to-end tests of `patrol validate`: broken configs exit 2 and print every problem at once,
//! each as `file:line:col: error: …` with the source line, a caret under the culprit and a
//! `= help:` line, compared byte for byte with golden files in tests/golden/ (`<name>.yaml` in,
//! `<name>.stderr` out; `PATROL_BLESS=1` rewrites them). Valid configs exit 0, warnings
//! included, and a file that is not YAML or not there is still a located, exit-2 error.

mod common;

use common::{Patrol, Run, assert_golden, golden, workspace_root};

/// Runs `patrol validate --config <name>.yaml` from tests/golden/, so diagnostics name the file
/// the same way on every machine.
async fn validate_golden(name: &str) -> Run {
    Patrol::new(["validate", "--config", &format!("{name}.yaml")])
        .current_dir(golden(""))
        .run()
        .await
}

/// Checks a broken config against its golden stderr, and that each `(line, col, message)` in
/// `expected` is reported — the table pins where each problem is, so a golden file cannot be
/// blessed with a wrong line or column unnoticed.
async fn check(name: &str, expected: &[(usize, usize, &str)]) {
    let run = validate_golden(name).await;
    run.assert_code(2);
    assert!(
        run.stdout.is_empty(),
        "a broken config prints nothing on stdout: {}",
        run.output()
    );
    assert_golden(&golden(&format!("{name}.stderr")), &run.stderr);

    let headers: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{name}.yaml:")))
        .collect();
    for (line, col, message) in expected {
        let prefix = format!("{name}.yaml:{line}:{col}: error: {message}");
        assert!(
            headers.iter().any(|h| h.starts_with(&prefix)),
            "missing `{prefix}` in:\n{}",
            run.stderr
        );
    }
    let count = expected.len();
    let total = format!(
        "{name}.yaml: {count} error{}",
        if count == 1 { "" } else { "s" }
    );
    assert_eq!(
        headers.last().copied(),
        Some(total.as_str()),
        "every problem is reported in one run"
    );
    // Each diagnostic carries its source line, a caret line and a help line.
    let diagnostics = run
        .stderr
        .split("\n\n")
        .filter(|d| d.contains(": error: "))
        .collect::<Vec<_>>();
    assert_eq!(diagnostics.len(), count, "{}", run.stderr);
    for d in diagnostics {
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(lines.len(), 4, "header, source, caret, help:\n{d}");
        assert!(
            lines[2].trim_start().starts_with('|') && lines[2].ends_with('^'),
            "caret line:\n{d}"
        );
        assert!(lines[3].starts_with("  = help: "), "help line:\n{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_mistakes_are_all_reported_with_line_col_and_help() {
    check(
        "bad_keys",
        &[
            (8, 30, "invalid hours field `25` in cron expression"),
            (9, 14, "invalid duration `10` for timeout"),
            (13, 9, "unknown key `asert` in a step"),
            (15, 11, "duplicate probe name `health`"),
            (21, 48, "`token` is used before the step that captures it"),
            (23, 20, "unknown operator `===`"),
            (24, 30, "invalid JSONPath `$.items[`"),
            (26, 29, "undefined variable `apii`"),
        ],
    )
    .await;
    // The typo and the undefined variable get a suggestion.
    let stderr = std::fs::read_to_string(golden("bad_keys.stderr")).expect("golden file");
    assert!(stderr.contains("= help: did you mean `assert`?"));
    assert!(stderr.contains("= help: did you mean `api`?"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_shaped_values_are_all_reported() {
    check(
        "bad_values",
        &[
            (3, 11, "`localhost` is not an address with a port"),
            (4, 20, "max_concurrency must be at least 1"),
            (6, 12, "unknown namespace `vault.`"),
            (7, 18, "unclosed `{{` in template"),
            (9, 12, "retries: 11 is too many"),
            (10, 13, "invalid size `10 parsecs` for max_body"),
            (11, 1, "unknown key `prob` in the config file"),
            (14, 11, "probe name `Check Out` must match [a-z0-9_-]+"),
            (16, 24, "every must be longer than zero"),
            (18, 15, "step name `add to cart` must be"),
            (20, 19, "unknown HTTP method `FETCH`"),
            (21, 16, "unsupported URL scheme `ftp`"),
            (22, 22, "`X Bad` is not a valid header name"),
            (24, 17, "a request has one body"),
            (26, 23, "`in` needs a list"),
            (27, 36, "undefined variable `missing`"),
            (28, 27, "invalid regex"),
            (29, 26, "unexpected `fortnights` after the assertion"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_syntax_error_is_located() {
    check("bad_yaml", &[(4, 4, "invalid YAML")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_config_validates() {
    let example = workspace_root().join("examples/citadelbuy.yaml");
    let run = Patrol::new(["validate", "--config"])
        .arg_path(&example)
        .env("SMOKE_PASSWORD", "set-for-this-test")
        .env("DB_PASSWORD", "set-for-this-test")
        .env("PATROL_API_TOKEN", "set-for-this-test")
        .env("REDIS_PASSWORD", "set-for-this-test")
        .run()
        .await;
    run.assert_code(0);
    assert!(
        run.stdout
            .ends_with(": ok — 12 probes (12 scheduled), 7 vars\n"),
        "{}",
        run.output()
    );
    assert!(run.stderr.is_empty(), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_environment_variable_is_a_warning_not_an_error() {
    let scratch = common::Scratch::new();
    let config = scratch.write(
        "patrol.yaml",
        "vars:\n  password: \"{{ env.PATROL_E2E_SURELY_UNSET }}\"\nprobes:\n  - name: health\n    steps:\n      - request: { url: \"http://127.0.0.1:8080/api/health\" }\n",
    );
    let run = Patrol::new(["validate", "--config"])
        .arg_path(&config)
        .env_remove("PATROL_E2E_SURELY_UNSET")
        .run()
        .await;
    run.assert_code(0);
    assert!(
        run.stderr.contains(
            ":2:17: warning: environment variable PATROL_E2E_SURELY_UNSET is not set here"
        ),
        "{}",
        run.output()
    );
    assert!(run.stderr.contains(": 1 warning"), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_file_is_a_usage_error() {
    let run = Patrol::new(["validate", "--config", "no/such/patrol.yaml"])
        .run()
        .await;
    run.assert_code(2);
    assert!(
        run.stderr
            .starts_with("no/such/patrol.yaml:1:1: error: cannot read the config file"),
        "{}",
        run.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_problem_in_a_multi_line_quoted_string_with_non_ascii_text_is_reported() {
    // The first source line of the string ends inside a two-byte character, which once made
    // the column arithmetic slice through it and panic.
    let scratch = common::Scratch::new();
    let config = scratch.write(
        "patrol.yaml",
        "probes:\n  - name: a\n    steps:\n      - request:\n          url: \"{{ nope }}/café\n            /x\"\n",
    );
    let run = Patrol::new(["validate", "--config"])
        .arg_path(&config)
        .run()
        .await;
    run.assert_code(2);
    assert!(
        run.stderr
            .contains(":5:16: error: undefined variable `nope`"),
        "{}",
        run.output()
    );
}
