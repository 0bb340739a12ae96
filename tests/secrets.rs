//! Secrets never leave a run: values read from `{{ env.NAME }}` and `{{ file.PATH }}` (set only
//! in the child's environment and a temp file) are used in a header, the URL query, a JSON body
//! and an assertion's expected value, the shop echoes them back, and assertions fail so their
//! actual and expected values are printed. With `-v`, `--report-json` and `--junit`, the values
//! appear in none of stdout, stderr, the JSON report or the JUnit file; `***` stands in for them,
//! and Authorization and Cookie headers are always shown as `***`.

mod common;

use common::{Patrol, Scratch, shop};

/// The config: `token` from the environment, `password` from a file, both used everywhere a
/// secret can go. /api/search echoes `q` and /api/auth/register echoes `name`.
fn config(api: &str, password_file: &std::path::Path) -> String {
    format!(
        r#"vars:
  api: {api}
  token: "{{{{ env.PATROL_TEST_SECRET }}}}"
  password: "{{{{ file.{file} }}}}"
probes:
  - name: search
    steps:
      - name: search
        request:
          url: "{{{{ api }}}}/api/search"
          query: {{ q: "{{{{ token }}}}" }}
          headers:
            Authorization: "Bearer {{{{ token }}}}"
            Cookie: "session={{{{ password }}}}"
            X-Api-Key: "{{{{ token }}}}"
        assert:
          - status == 200
          - jsonpath "$.query" == "{{{{ token }}}}-expected"
          - body contains "{{{{ password }}}}"
  - name: register
    steps:
      - name: register
        request:
          method: POST
          url: "{{{{ api }}}}/api/auth/register"
          json: {{ email: "leak-check@example.com", password: "{{{{ password }}}}", name: "{{{{ token }}}}" }}
        assert:
          - status == 201
          - jsonpath "$.name" == "someone else"
"#,
        file = password_file.display()
    )
}

/// Everything one run wrote: stdout, stderr, the JSON report and the JUnit file.
struct Outputs {
    run: common::Run,
    json: String,
    junit: String,
}

async fn run_with(token: &str, password: &str) -> Outputs {
    let shop = shop().await;
    let scratch = Scratch::new();
    let password_file = scratch.write("password.txt", &format!("{password}\n"));
    let config = scratch.write("patrol.yaml", &config(&shop.url(), &password_file));
    let run = Patrol::new(["verify", "-v", "--config"])
        .arg_path(&config)
        .args(["--report-json", "report.json", "--junit", "junit.xml"])
        .env("PATROL_TEST_SECRET", token)
        .current_dir(scratch.path())
        .run()
        .await;
    run.assert_code(1);
    Outputs {
        json: scratch.read("report.json"),
        junit: scratch.read("junit.xml"),
        run,
    }
}

fn assert_absent(outputs: &Outputs, forms: &[String]) {
    let files = [
        ("stdout", &outputs.run.stdout),
        ("stderr", &outputs.run.stderr),
        ("JSON report", &outputs.json),
        ("JUnit report", &outputs.junit),
    ];
    for (what, text) in files {
        for form in forms {
            assert!(
                !text.contains(form.as_str()),
                "`{form}` leaked into the {what}:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_file_secrets_are_masked_everywhere() {
    let (token, password) = ("tok-4f9c2e71b8d05a36", "pw-Zq81xYk3Lm0v");
    let out = run_with(token, password).await;
    assert_absent(&out, &[token.to_string(), password.to_string()]);

    // The secrets were sent and echoed (the assertions saw them), and were masked.
    let report: serde_json::Value = serde_json::from_str(&out.json).expect("JSON report");
    let search = &report["probes"][0]["steps"][0]["asserts"];
    assert_eq!(
        search[1]["actual"], "\"***\"",
        "the echoed query: {search:#}"
    );
    assert_eq!(search[1]["expected"], "== \"***-expected\"");
    assert_eq!(search[2]["expected"], "contains \"***\"");
    let register = &report["probes"][1]["steps"][0]["asserts"];
    assert_eq!(
        register[1]["actual"], "\"***\"",
        "the echoed name: {register:#}"
    );
    for (what, text) in [
        ("stdout", &out.run.stdout),
        ("JSON", &out.json),
        ("JUnit", &out.junit),
    ] {
        assert!(
            text.contains("***"),
            "the {what} should show the mask:\n{text}"
        );
    }

    // -v shows request detail, with credentials hidden whatever their value.
    let stdout = &out.run.stdout;
    for line in [
        "> GET http://127.0.0.1:",
        "/api/search?q=***",
        "> Authorization: ***",
        "> Cookie: ***",
        "> X-Api-Key: ***",
        "\"password\":\"***\"",
    ] {
        assert!(stdout.contains(line), "-v output lacks `{line}`:\n{stdout}");
    }
}

/// Secrets with characters that get escaped on the way out (URL query encoding, JSON string
/// escaping) must not leak in their escaped form either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_forms_of_secrets_are_masked_too() {
    let (token, password) = ("tok 4f9c&\"2e71", "pw Zq81!x\"Yk3");
    let out = run_with(token, password).await;
    let mut forms = Vec::new();
    for secret in [token, password] {
        let query: String = url_form_encode(secret);
        let json = serde_json::to_string(secret).expect("a JSON string");
        forms.push(secret.to_string());
        forms.push(query);
        forms.push(json[1..json.len() - 1].to_string());
    }
    assert_absent(&out, &forms);
}

/// `application/x-www-form-urlencoded` encoding, as query strings carry it.
fn url_form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
