//! Browser probes in real headless Chromium (Debian's chromium + chromium-driver) against the
//! reference shop on 127.0.0.1:0.
//!
//! The tests run one at a time (a shared lock): each starts its own [`Browser`], and a session
//! costs ~400 MiB and a good part of a core. Each ends with `shutdown` and checks that nothing
//! it started is left: no process naming the browser's work directory, no zombie child, no
//! profile directory.
//!
//! Without /usr/bin/chromium the tests skip with a loud message; with `CI` set they fail
//! instead, since CI installs Chromium.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use citadel_shop::{Fault, Shop};
use patrol_probes::artifacts::ArtifactStore;
use patrol_probes::browser::{Browser, BrowserSettings};
use patrol_probes::result::{Outcome, ProbeResult};
use patrol_probes::run::{Runtime, run_probe};
use patrol_probes::spec::{
    BrowserAction, BrowserProbe, BrowserStep, ProbeKind, ProbeSpec, TextMatch, Viewport,
};
use patrol_probes::template::{Masker, Template};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// False (after saying so loudly) when Chromium is not installed here.
fn chromium_installed() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    let message = format!(
        "{CHROMIUM} or {CHROMEDRIVER} is missing: install them with `apt-get install chromium chromium-driver`"
    );
    if std::env::var_os("CI").is_some() {
        panic!("browser tests cannot run in CI: {message}");
    }
    eprintln!("\n!!!!!!!! SKIPPED browser test: {message} !!!!!!!!\n");
    false
}

fn settings(max_sessions: usize) -> BrowserSettings {
    BrowserSettings {
        chromedriver: PathBuf::from(CHROMEDRIVER),
        chromium: PathBuf::from(CHROMIUM),
        max_sessions,
    }
}

fn t(source: &str) -> Template {
    Template::parse(source).expect("a valid template")
}

fn step(name: &str, action: BrowserAction) -> BrowserStep {
    BrowserStep {
        name: name.into(),
        action,
        timeout: None,
    }
}

fn probe(name: &str, steps: Vec<BrowserStep>, viewport: Option<Viewport>) -> ProbeSpec {
    ProbeSpec {
        name: name.into(),
        timeout: Duration::from_secs(30),
        retries: 0,
        retry_backoff: Duration::ZERO,
        kind: ProbeKind::Browser(BrowserProbe {
            steps,
            viewport,
            insecure: false,
        }),
    }
}

struct Env {
    shop: Shop,
    browser: Arc<Browser>,
    runtime: Runtime,
    artifacts: PathBuf,
}

async fn env(masker: Masker) -> Env {
    let shop = Shop::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("shop starts");
    let browser = Arc::new(Browser::new(settings(1)));
    let artifacts = std::env::temp_dir().join(format!(
        "patrol-artifacts-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let runtime = Runtime::new(
        vec![("shop".to_string(), Template::literal(shop.url()))],
        masker,
    )
    .with_browser(browser.clone())
    .with_artifacts(ArtifactStore {
        root: artifacts.clone(),
        keep: 10,
    });
    Env {
        shop,
        browser,
        runtime,
        artifacts,
    }
}

impl Env {
    /// Stops everything and checks nothing is left behind.
    async fn finish(self) {
        let work_dir = self.browser.work_dir().to_path_buf();
        self.browser.shutdown().await;
        assert_clean(&work_dir);
        self.shop.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.artifacts);
    }
}

/// Processes whose command line or environment names `path`.
fn processes_naming(path: &Path) -> Vec<(u32, String)> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| {
            let read = |file: &str| {
                let text = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
                String::from_utf8_lossy(&text).replace('\0', " ")
            };
            let cmd = read("cmdline");
            (cmd.contains(&needle) || read("environ").contains(&needle)).then_some((pid, cmd))
        })
        .collect()
}

/// The `--user-data-dir` of every process under `work_dir`.
fn profiles_in_use(work_dir: &Path) -> BTreeSet<String> {
    processes_naming(work_dir)
        .into_iter()
        .filter_map(|(_, cmd)| {
            let dir = cmd
                .split(' ')
                .find_map(|arg| arg.strip_prefix("--user-data-dir="))?;
            Some(dir.to_string())
        })
        .collect()
}

/// Zombie children of this test process (an unreaped chromedriver).
fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state == Some("Z") && ppid == Some(me)
        })
        .collect()
}

fn assert_clean(work_dir: &Path) {
    let left = processes_naming(work_dir);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    assert!(
        !work_dir.exists(),
        "work directory left behind: {}",
        work_dir.display()
    );
    let zombies = zombie_children();
    assert!(zombies.is_empty(), "unreaped children: {zombies:?}");
}

fn describe(result: &ProbeResult) -> String {
    serde_json::to_string_pretty(result).expect("serializable")
}

#[tokio::test]
async fn a_multi_step_journey_passes() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = env(Masker::default()).await;
    let spec = probe(
        "journey",
        vec![
            step("home", BrowserAction::Goto(t("{{ shop }}/"))),
            step("search_box", BrowserAction::WaitFor(t("#search"))),
            step(
                "type_query",
                BrowserAction::Fill {
                    selector: t("#search"),
                    text: t("laptop"),
                },
            ),
            step("submit", BrowserAction::Click(t("#search-button"))),
            step(
                "on_results",
                BrowserAction::WaitForUrl(TextMatch::Contains(t("/search?q=laptop"))),
            ),
            step(
                "results",
                BrowserAction::AssertText {
                    selector: t(".results"),
                    expect: TextMatch::Contains(t("Laptop")),
                },
            ),
            step(
                "three_laptops",
                BrowserAction::AssertCount {
                    selector: t(".results .product-card"),
                    op: ">=".into(),
                    count: 3,
                },
            ),
            step(
                "first_link",
                BrowserAction::Capture {
                    name: "product_path".into(),
                    selector: t(".results .product-name a"),
                    attribute: Some("href".into()),
                },
            ),
            step(
                "first_name",
                BrowserAction::Capture {
                    name: "product_name".into(),
                    selector: t(".results .product-name"),
                    attribute: None,
                },
            ),
            step(
                "product",
                BrowserAction::Goto(t("{{ shop }}{{ product_path }}")),
            ),
            step(
                "title",
                BrowserAction::AssertTitle(TextMatch::Contains(t("{{ product_name }}"))),
            ),
            step(
                "name_matches",
                BrowserAction::AssertText {
                    selector: t("h1.product-name"),
                    expect: TextMatch::Equals(t("{{ product_name }}")),
                },
            ),
            step("add_to_cart", BrowserAction::Click(t("#add-to-cart"))),
            step(
                "asks_to_log_in",
                BrowserAction::AssertText {
                    selector: t("#cart-message"),
                    expect: TextMatch::Equals(t("Please log in")),
                },
            ),
            step("login_page", BrowserAction::Goto(t("{{ shop }}/login"))),
            step(
                "email",
                BrowserAction::Fill {
                    selector: t("#email"),
                    text: t("test@citadelbuy.com"),
                },
            ),
            step(
                "password",
                BrowserAction::Fill {
                    selector: t("#password"),
                    text: t("Test1234!"),
                },
            ),
            step(
                "submit_login",
                BrowserAction::Press {
                    selector: Some(t("#password")),
                    key: "Enter".into(),
                },
            ),
            step(
                "logged_in",
                BrowserAction::AssertText {
                    selector: t("#user-name"),
                    expect: TextMatch::Matches(t("^Smoke Test")),
                },
            ),
            step(
                "url",
                BrowserAction::AssertUrl(TextMatch::Equals(t("{{ shop }}/"))),
            ),
            step(
                "login_link_gone",
                BrowserAction::AssertHidden(t("#login-link")),
            ),
            step(
                "logout_visible",
                BrowserAction::AssertVisible(t("#logout-link")),
            ),
            step(
                "twelve_products",
                BrowserAction::Eval(t(
                    "return document.querySelectorAll('.product-card').length >= 8",
                )),
            ),
            step("screenshot", BrowserAction::Screenshot("screenshot".into())),
            step(
                "select_page",
                BrowserAction::Goto(t(
                    "data:text/html,<select id=size><option value=s>S</option><option value=m>M</option></select>",
                )),
            ),
            step(
                "choose_size",
                BrowserAction::Select {
                    selector: t("#size"),
                    value: t("m"),
                },
            ),
            step(
                "size_chosen",
                BrowserAction::Eval(t("return document.querySelector('#size').value === 'm'")),
            ),
            step(
                "clean_console",
                BrowserAction::AssertNoConsoleErrors { ignore: Vec::new() },
            ),
        ],
        None,
    );
    let result = run_probe(&spec, &env.runtime).await;
    assert_eq!(result.result, Outcome::Pass, "{}", describe(&result));
    let home = &result.steps[0];
    let vitals = home.vitals.expect("goto records vitals");
    assert!(
        vitals.ttfb.is_some() && vitals.load.is_some() && vitals.dom_content_loaded.is_some(),
        "{vitals:?}"
    );
    assert!(vitals.fcp.is_some(), "first contentful paint: {vitals:?}");
    assert_eq!(home.status, Some(200));
    let results = result
        .steps
        .iter()
        .find(|s| s.name == "results")
        .expect("step");
    assert_eq!(
        results.asserts[0].expr,
        r#"assert_text ".results" contains "Laptop""#
    );
    assert_eq!(results.asserts[0].expected, r#"contains "Laptop""#);
    let count = result
        .steps
        .iter()
        .find(|s| s.name == "three_laptops")
        .expect("step");
    assert_eq!(count.asserts[0].actual.as_deref(), Some("4"));
    let shot = result
        .steps
        .iter()
        .find(|s| s.name == "screenshot")
        .expect("step");
    assert_eq!(shot.artifacts.len(), 1, "{}", describe(&result));
    assert!(shot.artifacts[0].ends_with("/screenshot.png"));
    let png = std::fs::read(env.artifacts.join(&shot.artifacts[0])).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    env.finish().await;
}

#[tokio::test]
async fn a_missing_element_fails_within_its_timeout_with_artifacts() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    // "CitadelBuy" stands in for a secret that the page happens to show.
    let env = env(Masker::new(["CitadelBuy".to_string()])).await;
    let mut buy = step("buy", BrowserAction::Click(t("#buy-now")));
    buy.timeout = Some(Duration::from_secs(1));
    let spec = probe(
        "missing",
        vec![
            step("products", BrowserAction::Goto(t("{{ shop }}/products"))),
            buy,
            step("never", BrowserAction::WaitFor(t("body"))),
        ],
        None,
    );
    let result = run_probe(&spec, &env.runtime).await;
    assert_eq!(result.result, Outcome::Fail, "{}", describe(&result));
    let failed = &result.steps[1];
    assert_eq!(failed.result, Outcome::Fail);
    assert_eq!(
        failed.error.as_deref(),
        Some("element `#buy-now` was not visible within 1s (no element matches)")
    );
    assert!(
        failed.duration >= Duration::from_secs(1) && failed.duration < Duration::from_secs(5),
        "{:?}",
        failed.duration
    );
    assert_eq!(result.steps[2].result, Outcome::Skipped);
    let names: Vec<&str> = failed
        .artifacts
        .iter()
        .map(|a| a.rsplit('/').next().unwrap_or(""))
        .collect();
    assert_eq!(names, ["failure.png", "page.html"], "{}", describe(&result));
    let png = std::fs::read(env.artifacts.join(&failed.artifacts[0])).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"));
    let html =
        std::fs::read_to_string(env.artifacts.join(&failed.artifacts[1])).expect("page saved");
    assert!(html.contains("All products"), "the page's HTML");
    assert!(
        !html.contains("CitadelBuy") && html.contains("***"),
        "secrets masked in page.html"
    );
    env.finish().await;
}

#[tokio::test]
async fn console_errors_are_caught_and_can_be_ignored() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = env(Masker::default()).await;
    env.shop.faults().set(Fault {
        console_error: true,
        ..Fault::new("/products")
    });
    let journey = |ignore: Vec<regex::Regex>| {
        probe(
            "console",
            vec![
                step("products", BrowserAction::Goto(t("{{ shop }}/products"))),
                // A later clean page does not hide the earlier error.
                step("home", BrowserAction::Goto(t("{{ shop }}/"))),
                step("no_errors", BrowserAction::AssertNoConsoleErrors { ignore }),
            ],
            None,
        )
    };
    let caught = run_probe(&journey(Vec::new()), &env.runtime).await;
    assert_eq!(caught.result, Outcome::Fail, "{}", describe(&caught));
    let assert = &caught.steps[2].asserts[0];
    assert_eq!(assert.result, Outcome::Fail);
    assert!(
        assert
            .actual
            .as_deref()
            .is_some_and(|a| a.contains("injected console error")),
        "{assert:?}"
    );
    assert_eq!(caught.steps[2].artifacts.len(), 2, "failure artifacts");
    let ignored = run_probe(
        &journey(vec![regex::Regex::new("injected console").expect("regex")]),
        &env.runtime,
    )
    .await;
    assert_eq!(ignored.result, Outcome::Pass, "{}", describe(&ignored));
    assert_eq!(ignored.steps[2].asserts[0].actual.as_deref(), Some("none"));
    env.finish().await;
}

#[tokio::test]
async fn a_mobile_viewport_emulates_a_phone_and_can_switch_back() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = env(Masker::default()).await;
    let phone = Viewport {
        width: 390,
        height: 844,
        mobile: true,
    };
    let desktop = Viewport {
        width: 1280,
        height: 800,
        mobile: false,
    };
    let spec = probe(
        "mobile",
        vec![
            step("home", BrowserAction::Goto(t("{{ shop }}/"))),
            step("width", BrowserAction::Eval(t("return window.innerWidth"))),
            step(
                "phone",
                BrowserAction::Eval(t(
                    "return navigator.userAgent.includes('Mobile') && devicePixelRatio === 3 && navigator.maxTouchPoints > 0",
                )),
            ),
            step(
                "menu_button",
                BrowserAction::AssertVisible(t(".mobile-menu-button")),
            ),
            step("nav_hidden", BrowserAction::AssertHidden(t(".desktop-nav"))),
            step("to_desktop", BrowserAction::Viewport(desktop)),
            // The switch outlives navigation.
            step("reload", BrowserAction::Goto(t("{{ shop }}/products"))),
            step(
                "desktop_now",
                BrowserAction::Eval(t(
                    "return innerWidth === 1280 && devicePixelRatio === 1 && !navigator.userAgent.includes('Mobile')",
                )),
            ),
            step("nav_shown", BrowserAction::AssertVisible(t(".desktop-nav"))),
            step("back_to_phone", BrowserAction::Viewport(phone)),
            step("reload_again", BrowserAction::Goto(t("{{ shop }}/"))),
            step(
                "phone_again",
                BrowserAction::Eval(t(
                    "return innerWidth === 390 && navigator.userAgent.includes('Mobile')",
                )),
            ),
        ],
        Some(phone),
    );
    let result = run_probe(&spec, &env.runtime).await;
    assert_eq!(result.result, Outcome::Pass, "{}", describe(&result));
    assert_eq!(result.steps[1].asserts[0].actual.as_deref(), Some("390"));
    // The next run most likely gets the spare session started after this one, shaped as a
    // phone; a desktop probe must not notice.
    let desktop_probe = probe(
        "desktop",
        vec![
            step("home", BrowserAction::Goto(t("{{ shop }}/"))),
            step(
                "desktop",
                BrowserAction::Eval(t(
                    "return innerWidth === 1280 && devicePixelRatio === 1 && !navigator.userAgent.includes('Mobile')",
                )),
            ),
        ],
        None,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let result = run_probe(&desktop_probe, &env.runtime).await;
    assert_eq!(result.result, Outcome::Pass, "{}", describe(&result));
    env.finish().await;
}

#[tokio::test]
async fn a_killed_chromedriver_errors_the_run_and_the_next_run_recovers() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = env(Masker::default()).await;
    let mut wait = step("wait_forever", BrowserAction::WaitFor(t("#never-appears")));
    wait.timeout = Some(Duration::from_secs(20));
    let doomed = probe(
        "doomed",
        vec![step("home", BrowserAction::Goto(t("{{ shop }}/"))), wait],
        None,
    );
    let run = {
        let runtime = env.runtime.clone();
        tokio::spawn(async move { run_probe(&doomed, &runtime).await })
    };
    // Kill chromedriver once Chromium runs (most likely while the run waits in its second step;
    // any moment is fair).
    let mut pid = None;
    let mut doomed_profiles = BTreeSet::new();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        doomed_profiles = profiles_in_use(env.browser.work_dir());
        if let Some(p) = env.browser.driver_pid().await
            && !doomed_profiles.is_empty()
        {
            pid = Some(p);
            break;
        }
    }
    let pid = pid.expect("chromedriver and a session started");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let result = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("the run ends soon after chromedriver dies")
        .expect("the run task");
    assert_eq!(result.result, Outcome::Error, "{}", describe(&result));
    let broken = result
        .steps
        .iter()
        .find(|s| s.result == Outcome::Error)
        .expect("an errored step");
    let error = broken.error.as_deref().unwrap_or_default();
    assert!(error.contains("chromedriver"), "{error}");
    // The session's guard kills the orphaned Chromium and removes its profile (a spare session
    // for the next run may be starting meanwhile, under a profile of its own).
    assert_eq!(doomed_profiles.len(), 1, "{doomed_profiles:?}");
    let mut left = BTreeSet::new();
    for _ in 0..100 {
        left = profiles_in_use(env.browser.work_dir());
        left.retain(|p| doomed_profiles.contains(p));
        if left.is_empty() && doomed_profiles.iter().all(|p| !Path::new(p).exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "orphaned Chromium left running: {left:#?}");
    assert!(
        doomed_profiles.iter().all(|p| !Path::new(p).exists()),
        "profile left behind"
    );
    let recovered = run_probe(
        &probe(
            "recovered",
            vec![
                step("home", BrowserAction::Goto(t("{{ shop }}/"))),
                step("cards", BrowserAction::WaitFor(t(".product-card"))),
            ],
            None,
        ),
        &env.runtime,
    )
    .await;
    assert_eq!(recovered.result, Outcome::Pass, "{}", describe(&recovered));
    let new_pid = env
        .browser
        .driver_pid()
        .await
        .expect("chromedriver restarted");
    assert_ne!(new_pid, pid);
    env.finish().await;
}

#[tokio::test]
async fn a_hung_page_times_out_instead_of_hanging_the_run() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = env(Masker::default()).await;
    let mut wait = step("wait", BrowserAction::WaitFor(t("#never")));
    wait.timeout = Some(Duration::from_secs(1));
    let spec = probe(
        "hung",
        vec![
            // The page's main thread spins forever 300 ms after it loaded.
            step(
                "busy_page",
                BrowserAction::Goto(t(
                    "data:text/html,<p>busy</p><script>setTimeout(function(){for(;;){}},300)</script>",
                )),
            ),
            wait,
        ],
        None,
    );
    let started = std::time::Instant::now();
    let result = run_probe(&spec, &env.runtime).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(result.result, Outcome::Timeout, "{}", describe(&result));
    let error = result.steps[1].error.as_deref().unwrap_or_default();
    assert!(error.contains("did not answer"), "{error}");
    env.finish().await;
}

#[tokio::test]
async fn runs_wait_for_a_free_session_slot() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    // One slot: two runs at once take turns instead of failing.
    let env = env(Masker::default()).await;
    let spec = probe(
        "turns",
        vec![
            step("home", BrowserAction::Goto(t("{{ shop }}/"))),
            step(
                "linger",
                BrowserAction::Eval(t("return new Promise(r => setTimeout(() => r(true), 300))")),
            ),
        ],
        None,
    );
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (spec, runtime) = (spec.clone(), env.runtime.clone());
            tokio::spawn(async move { run_probe(&spec, &runtime).await })
        })
        .collect();
    let mut most = 0;
    while !runs.iter().all(|r| r.is_finished()) {
        most = most.max(profiles_in_use(env.browser.work_dir()).len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for run in runs {
        let result = run.await.expect("run task");
        assert_eq!(result.result, Outcome::Pass, "{}", describe(&result));
    }
    assert_eq!(most, 1, "max_sessions = 1 bounds live browsers");
    env.finish().await;
}

#[tokio::test]
async fn a_missing_chromium_is_an_error_with_the_install_hint() {
    // Needs no Chromium at all.
    let settings = BrowserSettings {
        chromium: PathBuf::from("/nonexistent/chromium"),
        ..settings(1)
    };
    let problem = Browser::check_installed(&settings).expect_err("chromium is missing");
    assert!(
        problem.starts_with("chromium not found at /nonexistent/chromium")
            && problem.contains("apt-get install chromium chromium-driver"),
        "{problem}"
    );
    let browser = Arc::new(Browser::new(settings));
    let runtime = Runtime::new(Vec::new(), Masker::default()).with_browser(browser.clone());
    let spec = probe(
        "no_chromium",
        vec![
            step("home", BrowserAction::Goto(t("http://127.0.0.1:9/"))),
            step(
                "title",
                BrowserAction::AssertTitle(TextMatch::Contains(t("x"))),
            ),
        ],
        None,
    );
    let result = run_probe(&spec, &runtime).await;
    assert_eq!(result.result, Outcome::Error);
    assert_eq!(result.steps[0].result, Outcome::Error);
    assert_eq!(result.steps[0].error.as_deref(), Some(problem.as_str()));
    assert_eq!(result.steps[1].result, Outcome::Skipped);
    assert!(browser.driver_pid().await.is_none(), "nothing was started");
    browser.shutdown().await;
    assert!(!browser.work_dir().exists());
}

#[tokio::test]
async fn an_unreachable_page_is_an_error_naming_the_network_failure() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = env(Masker::default()).await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let spec = probe(
        "refused",
        vec![step(
            "home",
            BrowserAction::Goto(Template::literal(url.clone())),
        )],
        None,
    );
    let result = run_probe(&spec, &env.runtime).await;
    assert_eq!(result.result, Outcome::Error, "{}", describe(&result));
    assert_eq!(
        result.steps[0].error.as_deref(),
        Some(format!("page did not load: net::ERR_CONNECTION_REFUSED at {url}").as_str())
    );
    env.finish().await;
}

/// Not a test: the issue's browser benchmark (a six-step probe on the local shop, chromedriver
/// warm, runs 5 s apart as scheduled runs are; median wall time). Run with
/// `cargo test --release -p patrol-probes --test browser bench -- --ignored --nocapture`;
/// `PATROL_BENCH_RUNS` sets the number of runs (20).
#[tokio::test]
#[ignore = "benchmark"]
async fn bench_six_step_probe_with_warm_chromedriver() {
    if !chromium_installed() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = env(Masker::default()).await;
    let spec = probe(
        "six_steps",
        vec![
            step("home", BrowserAction::Goto(t("{{ shop }}/"))),
            step("cards", BrowserAction::WaitFor(t(".product-card"))),
            step(
                "query",
                BrowserAction::Fill {
                    selector: t("#search"),
                    text: t("laptop"),
                },
            ),
            step("search", BrowserAction::Click(t("#search-button"))),
            step(
                "results",
                BrowserAction::AssertText {
                    selector: t(".results"),
                    expect: TextMatch::Contains(t("Laptop")),
                },
            ),
            step(
                "console",
                BrowserAction::AssertNoConsoleErrors { ignore: Vec::new() },
            ),
        ],
        None,
    );
    // Warm up: chromedriver started, Chromium's files in the page cache.
    for _ in 0..2 {
        assert_eq!(run_probe(&spec, &env.runtime).await.result, Outcome::Pass);
    }
    let runs: usize = std::env::var("PATROL_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let mut walls = Vec::with_capacity(runs);
    let mut steps_only = Vec::with_capacity(runs);
    let mut per_step: Vec<Vec<Duration>> = Vec::with_capacity(runs);
    for _ in 0..runs {
        // Scheduled runs are seconds apart: the previous session closes and a spare starts.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let started = std::time::Instant::now();
        let result = run_probe(&spec, &env.runtime).await;
        walls.push(started.elapsed());
        assert_eq!(result.result, Outcome::Pass, "{}", describe(&result));
        steps_only.push(result.steps.iter().map(|s| s.duration).sum::<Duration>());
        per_step.push(result.steps.iter().map(|s| s.duration).collect::<Vec<_>>());
    }
    let step_medians: Vec<String> = (0..spec.step_names().len())
        .map(|i| {
            let mut d: Vec<Duration> = per_step.iter().map(|r| r[i]).collect();
            d.sort();
            format!("{} {:?}", spec.step_names()[i], d[d.len() / 2])
        })
        .collect();
    println!("step medians: {}", step_medians.join(", "));
    walls.sort();
    steps_only.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    println!(
        "six-step browser probe, warm chromedriver, {runs} runs: wall median {:?} (min {:?}, max {:?}); steps alone median {:?}",
        median(&walls),
        walls[0],
        walls[walls.len() - 1],
        median(&steps_only)
    );
    env.finish().await;
}
