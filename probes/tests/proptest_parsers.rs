//! Property tests of what parses user text: the assertion and capture parser, the template
//! engine and the secret masker. Arbitrary strings and strings built from the grammar's own
//! pieces (so the parsers get past their first token) must never panic; every error must carry
//! a message and a byte offset that is inside the text and on a character boundary (config
//! errors turn it into a column); a parsed assertion evaluated against any body, valid UTF-8 or
//! JSON or not, yields a result; and a masked text never contains a secret.

use std::time::Duration;

use patrol_probes::assert::Assertion;
use patrol_probes::capture::Capture;
use patrol_probes::query::Observation;
use patrol_probes::syntax::SyntaxError;
use patrol_probes::template::{Masker, Placeholder, Scope, Template};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces of the assertion and capture grammar, valid and nearly valid, to be strung together.
fn assertion_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("status".to_string()),
        Just("header".to_string()),
        Just("jsonpath".to_string()),
        Just("body".to_string()),
        Just("duration".to_string()),
        Just("cert_expiry".to_string()),
        Just("regex".to_string()),
        Just("cookie".to_string()),
        Just("count".to_string()),
        Just("exists".to_string()),
        Just("not".to_string()),
        Just("in".to_string()),
        Just("contains".to_string()),
        Just("matches".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        prop::sample::select(vec![
            "==", "!=", "<", "<=", ">", ">=", "===", "=>", "!", "="
        ])
        .prop_map(str::to_string),
        prop::sample::select(vec!["[", "]", ",", "\"", "'", "\\", "{{", "}}"])
            .prop_map(str::to_string),
        prop::sample::select(vec![
            "\"$.a\"",
            "\"$.products[*].id\"",
            "\"$[\"",
            "\"(\"",
            "\"[a-z]+\"",
            "\"Content-Type\"",
            "\"{{ api }}\"",
            "\"{{ env.X\"",
            "\"{{ }}\"",
            "\"é\\\"ü\"",
        ])
        .prop_map(str::to_string),
        prop::sample::select(vec![
            "200", "-1", "0.5", "1e309", "500ms", "30d", "2x", "-5s", "+", ".", "1..2", "0x10",
        ])
        .prop_map(str::to_string),
        "\\PC{0,6}",
    ]
}

/// An assertion-like line: pieces joined by spaces (sometimes none).
fn assertion_like() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(assertion_piece(), 0..7),
        prop::bool::ANY,
    )
        .prop_map(|(pieces, spaced)| pieces.join(if spaced { " " } else { "" }))
}

/// A mostly well-formed assertion: query, optional `count`, operator, value.
fn assertion_shaped() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "status",
            "body",
            "duration",
            "cert_expiry",
            "header \"Content-Type\"",
            "jsonpath \"$.a\"",
            "jsonpath \"$.a[*]\"",
            "jsonpath \"$..b\"",
            "regex \"([a-z]+)\"",
            "cookie \"session\"",
        ]),
        prop::bool::ANY,
        prop::sample::select(vec![
            "==",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            "contains",
            "matches",
            "in",
            "exists",
            "not exists",
        ]),
        prop::sample::select(vec![
            "200",
            "0.5",
            "500ms",
            "30d",
            "true",
            "null",
            "\"x\"",
            "\"[0-9]+\"",
            "\"{{ api }}\"",
            "[200, \"a\", null]",
            "[]",
        ]),
    )
        .prop_map(|(query, count, op, value)| {
            let count = if count { " count" } else { "" };
            if op.ends_with("exists") {
                format!("{query}{count} {op}")
            } else {
                format!("{query}{count} {op} {value}")
            }
        })
}

/// A template-like string: literal text, braces and placeholder bodies.
fn template_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        prop::sample::select(vec![
            " api ",
            "env.HOME",
            "env.",
            "env.1X",
            "file.",
            "vault.key",
            "uuid",
            "random",
            "timestamp",
            " ",
            "a-b_c",
            "9lives",
            "é",
        ])
        .prop_map(str::to_string),
        "\\PC{0,5}",
    ];
    prop::collection::vec(piece, 0..10).prop_map(|p| p.concat())
}

/// Fails unless `e` is a usable error for `source`.
fn check_error(source: &str, e: &SyntaxError) -> Result<(), TestCaseError> {
    prop_assert!(
        e.offset <= source.len(),
        "offset {} past the end of {source:?} ({} bytes): {}",
        e.offset,
        source.len(),
        e.message
    );
    prop_assert!(
        source.is_char_boundary(e.offset),
        "offset {} inside a character of {source:?}",
        e.offset
    );
    prop_assert!(!e.message.trim().is_empty(), "empty message for {source:?}");
    Ok(())
}

/// Evaluates `assertion` against `body` (and a few headers): must not panic, and must report.
fn evaluate_on(assertion: &Assertion, body: &[u8]) -> Result<(), TestCaseError> {
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("set-cookie".to_string(), "session=s1; Path=/".to_string()),
    ];
    let obs = Observation::new(
        Some(200),
        &headers,
        body,
        Duration::from_millis(12),
        Some(4_102_444_800),
    );
    let mut scope = Scope::new();
    scope.set("api", "http://127.0.0.1:1");
    let result = assertion.evaluate(&obs, &mut scope, &Masker::default());
    prop_assert!(!result.expr.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn assertion_parser_never_panics_on_arbitrary_text(source in "\\PC{0,40}") {
        if let Err(e) = Assertion::parse(&source) {
            check_error(&source, &e)?;
        }
    }

    #[test]
    fn assertion_parser_never_panics_on_grammar_soup(source in assertion_like()) {
        if let Err(e) = Assertion::parse(&source) {
            check_error(&source, &e)?;
        }
    }

    #[test]
    fn capture_parser_never_panics(source in prop_oneof![assertion_like(), "\\PC{0,30}"]) {
        if let Err(e) = Capture::parse("x", &source) {
            check_error(&source, &e)?;
        }
    }

    #[test]
    fn parsed_assertions_evaluate_against_any_body(
        source in prop_oneof![assertion_shaped(), assertion_like()],
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "\\PC{0,40}".prop_map(String::into_bytes),
            Just(br#"{"a": [1, "x", null, {"b": true}], "products": []}"#.to_vec()),
            Just(b"{\"a\": \xff\xfe}".to_vec()),
        ],
    ) {
        if let Ok(assertion) = Assertion::parse(&source) {
            evaluate_on(&assertion, &body)?;
        }
    }

    #[test]
    fn templates_parse_and_render_without_panicking(
        source in prop_oneof![template_like(), "\\PC{0,40}"],
    ) {
        match Template::parse(&source) {
            Err(e) => {
                prop_assert!(e.offset <= source.len(), "offset {} in {source:?}", e.offset);
                prop_assert!(source.is_char_boundary(e.offset), "offset {} in {source:?}", e.offset);
                prop_assert!(!e.message.trim().is_empty());
            }
            Ok(template) => {
                prop_assert_eq!(template.source(), source.as_str());
                for (_, offset) in template.placeholders() {
                    prop_assert!(offset <= source.len() && source.is_char_boundary(offset));
                }
                // `file.` placeholders read the named file; arbitrary paths are not read here.
                let reads_files = template
                    .placeholders()
                    .any(|(p, _)| matches!(p, Placeholder::File(_)));
                if !reads_files {
                    let mut scope = Scope::new();
                    scope.set("api", "http://127.0.0.1:1");
                    match template.render(&mut scope) {
                        Ok(text) => {
                            if template.is_literal() {
                                prop_assert_eq!(text, source);
                            }
                        }
                        Err(e) => prop_assert!(!e.0.trim().is_empty()),
                    }
                }
            }
        }
    }

    #[test]
    fn masked_text_never_contains_a_secret(
        secrets in prop::collection::vec("[^*]{1,8}", 1..4),
        pieces in prop::collection::vec(
            prop_oneof![
                "\\PC{0,6}".prop_map(|s| (s, 0usize)),
                (0usize..4).prop_map(|i| (String::new(), i + 1)),
            ],
            0..8,
        ),
    ) {
        // Text made of arbitrary pieces and secrets, raw and in the spellings Patrol sends them
        // (JSON string, form and percent encoding).
        let mut text = String::new();
        for (piece, which) in &pieces {
            text.push_str(piece);
            if *which > 0 {
                let secret = &secrets[(which - 1) % secrets.len()];
                match which % 3 {
                    0 => text.push_str(secret),
                    1 => text.push_str(&serde_json::Value::String(secret.clone()).to_string()),
                    _ => text.extend(url::form_urlencoded::byte_serialize(secret.as_bytes())),
                }
            }
        }
        let masker = Masker::new(secrets.clone());
        let masked = masker.mask(&text);
        for secret in &secrets {
            prop_assert!(
                !masked.contains(secret.as_str()),
                "{secret:?} left in {masked:?} (from {text:?})"
            );
        }
        let mut in_place = text.clone();
        masker.mask_in_place(&mut in_place);
        prop_assert_eq!(in_place, masked);
    }
}
