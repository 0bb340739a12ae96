//! The console report of `patrol verify`, compared with a golden file: a passing probe, a probe
//! failing on an injected 500 (both failed assertions with actual vs expected) and the step it
//! skips, and the summary line. Durations become `<dur>` (keeping their columns) and the shop's
//! address `<shop>`; `PATROL_BLESS=1` rewrites tests/golden/console_report.txt.

mod common;

use citadel_shop::Fault;
use common::{assert_golden, golden, normalise_console, shop, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_report_matches_the_golden_file() {
    let shop = shop().await;
    shop.faults().set(Fault {
        status: Some(500),
        ..Fault::new("/api/products")
    });
    let v = verify(
        &shop,
        r#"
  - name: health
    steps:
      - name: health
        request: { url: "{{ api }}/api/health" }
        assert:
          - status == 200
          - jsonpath "$.status" == "ok"
      - name: ready
        request: { url: "{{ api }}/api/health/ready" }
  - name: catalog
    steps:
      - name: list_products
        request: { url: "{{ api }}/api/products" }
        assert:
          - status == 200
          - jsonpath "$.products" count >= 1
      - name: product_detail
        request: { url: "{{ api }}/api/products/1" }
"#,
        &["--concurrency", "1"],
    )
    .await;
    v.run.assert_code(1);
    let console = normalise_console(&v.run.stdout, &shop);
    assert_golden(&golden("console_report.txt"), &console);
    // Durations are really there, only hidden from the comparison.
    assert_eq!(console.matches("<dur>").count(), 6, "{console}");
    assert!(
        !console.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}

#[test]
fn normalising_keeps_duration_columns() {
    // A row as console.rs prints it (`{name}  {duration:>8}`) normalises to the same text
    // whatever the duration's length.
    let rt = tokio::runtime::Runtime::new().expect("a runtime for the shop");
    let shop = rt.block_on(shop());
    for duration in ["2.93ms", "305ms", "1.02s", "12ms"] {
        let row = format!("PASS     health  {duration:>8}\n");
        assert_eq!(
            normalise_console(&row, &shop),
            "PASS     health     <dur>\n",
            "{row:?}"
        );
    }
    let summary = "2 probes: 1 passed in 12ms\n";
    assert_eq!(
        normalise_console(summary, &shop),
        "2 probes: 1 passed in <dur>\n"
    );
    assert_eq!(
        normalise_console("  actual:   305ms\n", &shop),
        "  actual:   <dur>\n"
    );
    let verbose = format!("> GET http://{}/api/health\n", shop.addr());
    assert_eq!(
        normalise_console(&verbose, &shop),
        "> GET http://<shop>/api/health\n"
    );
}
