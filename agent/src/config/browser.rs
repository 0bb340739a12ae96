//! Browser probe steps in the config: one action key per step (`goto`, `click`, `fill`, ...),
//! optionally with `name` and `timeout`, checked with the same line:col diagnostics as HTTP
//! steps (unknown actions get a "did you mean", selectors and texts are templates).

use std::collections::HashMap;

use patrol_probes::spec::{BrowserAction, BrowserStep, TextMatch, Viewport};
use patrol_probes::template::Template;
use saphyr::{Scalar, YamlData};

use super::build::{check_template_at, field, name_safe, template_at};
use super::yaml::{Node, Walker, did_you_mean};

/// Actions a browser step can take.
pub const ACTIONS: [&str; 18] = [
    "goto",
    "click",
    "fill",
    "press",
    "select",
    "wait_for",
    "wait_for_url",
    "assert_text",
    "assert_url",
    "assert_title",
    "assert_visible",
    "assert_hidden",
    "assert_count",
    "eval",
    "capture",
    "screenshot",
    "viewport",
    "assert_no_console_errors",
];

/// Parses `viewport: { width, height, mobile }`.
pub fn viewport(w: &mut Walker<'_>, node: &Node<'_>) -> Option<Viewport> {
    let entries = w.map(
        node,
        "viewport",
        &["width", "height", "mobile"],
        &["width", "height"],
    )?;
    let mut vp = Viewport {
        width: 0,
        height: 0,
        mobile: false,
    };
    for (k, _, v) in entries {
        match k.as_str() {
            "width" => vp.width = w.count(v, "width").map_or(0, |n| n as u32),
            "height" => vp.height = w.count(v, "height").map_or(0, |n| n as u32),
            _ => vp.mobile = w.boolean(v, "mobile").unwrap_or(false),
        }
    }
    if !(100..=8000).contains(&vp.width) || !(100..=8000).contains(&vp.height) {
        w.error(
            node,
            "viewport width and height must be between 100 and 8000 pixels",
            "e.g. `{ width: 390, height: 844, mobile: true }`",
        );
        return None;
    }
    Some(vp)
}

/// Parses the steps of a browser probe; `vars` are the config's var names.
pub fn steps(w: &mut Walker<'_>, node: &Node<'_>, vars: &[String]) -> Vec<BrowserStep> {
    let Some(items) = w.list(node, "steps") else {
        return Vec::new();
    };
    if items.is_empty() {
        w.error(
            node,
            "a probe needs at least one step",
            "add a step such as `- goto: \"{{ web }}/\"`",
        );
    }
    let captured: Vec<Option<(String, String)>> = items
        .iter()
        .map(|item| {
            let capture = field(item, "capture")?;
            let name = field(capture, "name").and_then(|n| w.scalar(n))?;
            let step = field(item, "name")
                .and_then(|n| w.scalar(n))
                .unwrap_or_else(|| "capture".into());
            Some((name, step))
        })
        .collect();
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let visible: Vec<String> = vars
            .iter()
            .cloned()
            .chain(captured[..i].iter().flatten().map(|(n, _)| n.clone()))
            .collect();
        let later: Vec<(String, String)> = captured[i..].iter().flatten().cloned().collect();
        if let Some(mut step) = step(w, item, &visible, &later) {
            let n = used.entry(step.name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                if field(item, "name").is_some() {
                    w.error(
                        item,
                        format!("duplicate step name `{}`", step.name),
                        "step names must be unique within a probe",
                    );
                }
                step.name = format!("{}_{}", step.name, n);
            }
            out.push(step);
        }
    }
    out
}

fn step(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    visible: &[String],
    later: &[(String, String)],
) -> Option<BrowserStep> {
    let YamlData::Mapping(map) = &node.data else {
        w.error(
            node,
            "a browser step must be a mapping with one action",
            "write e.g. `- click: \"#buy\"`",
        );
        return None;
    };
    let mut name = None;
    let mut timeout = None;
    let mut action = None;
    for (k, v) in map {
        let Some(key) = w.scalar(k) else { continue };
        match key.as_str() {
            "name" => {
                if let Some(n) = w.string(v, "step name") {
                    if !name_safe(&n) {
                        w.error(
                            v,
                            format!("step name `{n}` must be letters, digits, `_` and `-`"),
                            "it becomes the `step` metric label; write e.g. open_home",
                        );
                    }
                    name = Some(n);
                }
            }
            "timeout" => timeout = w.duration(v, "step timeout"),
            other if ACTIONS.contains(&other) => {
                if action.is_some() {
                    w.error(
                        k,
                        "a browser step has exactly one action",
                        "split it into two steps",
                    );
                    continue;
                }
                action = Some(parse_action(w, other, v));
            }
            other => {
                let mut candidates: Vec<&str> = ACTIONS.to_vec();
                candidates.extend(["name", "timeout"]);
                let help = did_you_mean(other, candidates.iter().copied())
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| {
                        format!("browser steps take one of: {}", ACTIONS.join(", "))
                    });
                w.error(k, format!("unknown browser action `{other}`"), help);
            }
        }
    }
    let Some(action) = action else {
        w.error(
            node,
            "this browser step has no action",
            format!("add one of: {}", ACTIONS.join(", ")),
        );
        return None;
    };
    let action = action?;
    for t in action.templates() {
        let at = super::build::find_scalar(w, node, t.source()).unwrap_or(node);
        check_template_at(w, at, t, 0, visible, later);
    }
    let name = name.unwrap_or_else(|| action.keyword().to_string());
    Some(BrowserStep {
        name,
        action,
        timeout,
    })
}

fn parse_action(w: &mut Walker<'_>, key: &str, v: &Node<'_>) -> Option<BrowserAction> {
    let selector_only = |w: &mut Walker<'_>| -> Option<Template> {
        if let YamlData::Mapping(_) = v.data {
            let entries = w.map(v, key, &["selector"], &["selector"])?;
            return template_at(w, entries[0].2, "selector");
        }
        template_at(w, v, "selector")
    };
    Some(match key {
        "goto" => BrowserAction::Goto(template_at(w, v, "URL")?),
        "click" => BrowserAction::Click(selector_only(w)?),
        "wait_for" => BrowserAction::WaitFor(selector_only(w)?),
        "assert_visible" => BrowserAction::AssertVisible(selector_only(w)?),
        "assert_hidden" => BrowserAction::AssertHidden(selector_only(w)?),
        "eval" => BrowserAction::Eval(template_at(w, v, "JavaScript")?),
        "fill" => {
            let e = w.map(v, "fill", &["selector", "text"], &["selector", "text"])?;
            let (mut selector, mut text) = (None, None);
            for (k, _, n) in e {
                if k == "selector" {
                    selector = template_at(w, n, "selector")
                } else {
                    text = template_at(w, n, "text")
                }
            }
            BrowserAction::Fill {
                selector: selector?,
                text: text?,
            }
        }
        "select" => {
            let e = w.map(v, "select", &["selector", "value"], &["selector", "value"])?;
            let (mut selector, mut value) = (None, None);
            for (k, _, n) in e {
                if k == "selector" {
                    selector = template_at(w, n, "selector")
                } else {
                    value = template_at(w, n, "value")
                }
            }
            BrowserAction::Select {
                selector: selector?,
                value: value?,
            }
        }
        "press" => match &v.data {
            YamlData::Mapping(_) => {
                let e = w.map(v, "press", &["selector", "key"], &["key"])?;
                let (mut selector, mut key_name) = (None, None);
                for (k, _, n) in e {
                    if k == "selector" {
                        selector = template_at(w, n, "selector")
                    } else {
                        key_name = w.string(n, "key")
                    }
                }
                BrowserAction::Press {
                    selector,
                    key: key_name?,
                }
            }
            _ => BrowserAction::Press {
                selector: None,
                key: w.string(v, "key")?,
            },
        },
        "wait_for_url" => BrowserAction::WaitForUrl(text_match(w, v, key, None)?),
        "assert_url" => BrowserAction::AssertUrl(text_match(w, v, key, None)?),
        "assert_title" => BrowserAction::AssertTitle(text_match(w, v, key, None)?),
        "assert_text" => {
            let mut selector = None;
            let expect = text_match(w, v, key, Some(&mut selector))?;
            let Some(selector) = selector else {
                w.error(
                    v,
                    "assert_text needs a `selector`",
                    "write `{ selector: \".results\", contains: laptop }`",
                );
                return None;
            };
            BrowserAction::AssertText { selector, expect }
        }
        "assert_count" => {
            let e = w.map(
                v,
                "assert_count",
                &["selector", "equals", "min", "max"],
                &["selector"],
            )?;
            let mut selector = None;
            let mut bound = None;
            for (k, kn, n) in e {
                if k == "selector" {
                    selector = template_at(w, n, "selector");
                } else if bound.is_some() {
                    w.error(
                        kn,
                        "assert_count takes one of `equals`, `min` or `max`",
                        "use a second step for a range",
                    );
                } else {
                    let op = match k.as_str() {
                        "equals" => "==",
                        "min" => ">=",
                        _ => "<=",
                    };
                    bound = w.count(n, &k).map(|c| (op.to_string(), c));
                }
            }
            let Some((op, count)) = bound else {
                w.error(
                    v,
                    "assert_count needs `equals`, `min` or `max`",
                    "write `{ selector: \".product-card\", min: 1 }`",
                );
                return None;
            };
            BrowserAction::AssertCount {
                selector: selector?,
                op,
                count,
            }
        }
        "capture" => {
            let e = w.map(
                v,
                "capture",
                &["name", "selector", "attribute"],
                &["name", "selector"],
            )?;
            let (mut name, mut selector, mut attribute) = (None, None, None);
            for (k, _, n) in e {
                match k.as_str() {
                    "name" => {
                        name = w.string(n, "capture name").filter(|s| {
                            let ok = name_safe(s);
                            if !ok {
                                w.error(
                                    n,
                                    format!(
                                        "capture name `{s}` must be letters, digits, `_` and `-`"
                                    ),
                                    "rename it, e.g. `price`",
                                );
                            }
                            ok
                        })
                    }
                    "selector" => selector = template_at(w, n, "selector"),
                    _ => attribute = w.string(n, "attribute"),
                }
            }
            BrowserAction::Capture {
                name: name?,
                selector: selector?,
                attribute,
            }
        }
        "screenshot" => match &v.data {
            YamlData::Value(Scalar::Boolean(true)) => {
                BrowserAction::Screenshot("screenshot".into())
            }
            _ => {
                let n = w.string(v, "screenshot name")?;
                if !name_safe(&n) {
                    w.error(
                        v,
                        format!("screenshot name `{n}` must be letters, digits, `_` and `-`"),
                        "it becomes a file name, e.g. home_page",
                    );
                    return None;
                }
                BrowserAction::Screenshot(n)
            }
        },
        "viewport" => BrowserAction::Viewport(viewport(w, v)?),
        _ => match &v.data {
            YamlData::Value(Scalar::Boolean(true)) => {
                BrowserAction::AssertNoConsoleErrors { ignore: Vec::new() }
            }
            _ => {
                let e = w.map(v, "assert_no_console_errors", &["ignore"], &[])?;
                let mut ignore = Vec::new();
                for (_, _, n) in e {
                    let items: Vec<&Node<'_>> = match &n.data {
                        YamlData::Sequence(items) => items.iter().collect(),
                        _ => vec![n],
                    };
                    for item in items {
                        let Some(p) = w.string(item, "an ignore pattern") else {
                            continue;
                        };
                        match regex::Regex::new(&p) {
                            Ok(re) => ignore.push(re),
                            Err(e) => w.error(item, format!("invalid regex `{p}`: {}", e.to_string().lines().last().unwrap_or("").trim()), "ignore patterns are regular expressions matched against each console message"),
                        }
                    }
                }
                BrowserAction::AssertNoConsoleErrors { ignore }
            }
        },
    })
}

/// `"text"` (contains) or `{ contains | equals | matches: text }`, plus `selector` when asked.
fn text_match(
    w: &mut Walker<'_>,
    v: &Node<'_>,
    key: &str,
    selector: Option<&mut Option<Template>>,
) -> Option<TextMatch> {
    if selector.is_none()
        && let Some(t) = w.scalar(v).and_then(|_| template_at(w, v, key))
    {
        return Some(TextMatch::Contains(t));
    }
    let mut allowed = vec!["contains", "equals", "matches"];
    if selector.is_some() {
        allowed.push("selector");
    }
    let e = w.map(v, key, &allowed, &[])?;
    let mut found = None;
    let mut sel = None;
    for (k, kn, n) in e {
        if k == "selector" {
            sel = template_at(w, n, "selector");
            continue;
        }
        if found.is_some() {
            w.error(
                kn,
                format!("{key} takes one of `contains`, `equals` or `matches`"),
                "use a second step for a second check",
            );
            continue;
        }
        let t = template_at(w, n, &k)?;
        if k == "matches"
            && t.is_literal()
            && let Err(e) = regex::Regex::new(t.source())
        {
            w.error(
                n,
                format!(
                    "invalid regex: {}",
                    e.to_string().lines().last().unwrap_or("").trim()
                ),
                "see https://docs.rs/regex for the syntax",
            );
            return None;
        }
        found = Some(match k.as_str() {
            "contains" => TextMatch::Contains(t),
            "equals" => TextMatch::Equals(t),
            _ => TextMatch::Matches(t),
        });
    }
    if let Some(slot) = selector {
        *slot = sel;
    }
    if found.is_none() {
        w.error(
            v,
            format!("{key} needs `contains`, `equals` or `matches`"),
            format!("write e.g. `{key}: {{ contains: laptop }}`"),
        );
    }
    found
}
