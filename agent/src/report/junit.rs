//! JUnit XML: one `<testsuite>` per probe, one `<testcase>` per step, a `<failure>` whose message
//! states actual vs expected for each failing assertion.

use patrol_probes::result::{Outcome, ProbeResult, StepResult};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::RunReport;

/// Renders the report as JUnit XML.
pub fn render(report: &RunReport) -> String {
    let mut junit = Report::new("patrol");
    junit.set_time(report.duration);
    match &report.verdict {
        None => {
            for probe in &report.results {
                junit.add_test_suite(suite(probe));
            }
        }
        Some(verdict) => {
            // Many rounds of runs: the verdict, plus every run that did not pass.
            junit.add_test_suite(verdict_suite(verdict));
            for probe in report.results.iter().filter(|r| !r.result.is_pass()) {
                junit.add_test_suite(suite(probe));
            }
        }
    }
    junit
        .to_string()
        .unwrap_or_else(|e| format!("<!-- could not render JUnit: {e} -->"))
}

fn suite(probe: &ProbeResult) -> TestSuite {
    let mut suite = TestSuite::new(probe.name.as_str());
    suite.set_time(probe.duration);
    suite.add_property(("type", probe.kind.as_str()));
    suite.add_property(("attempts", probe.attempts.to_string().as_str()));
    if probe.steps.is_empty()
        || (probe.error.is_some() && probe.steps.iter().all(|s| s.result == Outcome::Skipped))
    {
        // Nothing ran: one case carries the probe-level error.
        let mut status = TestCaseStatus::non_success(kind_of(probe.result));
        status.set_message(
            probe
                .error
                .clone()
                .unwrap_or_else(|| probe.result.to_string()),
        );
        let mut case = TestCase::new(probe.name.as_str(), status);
        case.set_classname(probe.name.as_str());
        suite.add_test_case(case);
    }
    for step in &probe.steps {
        suite.add_test_case(case(probe, step));
    }
    suite
}

fn case(probe: &ProbeResult, step: &StepResult) -> TestCase {
    let status = match step.result {
        Outcome::Pass => TestCaseStatus::success(),
        Outcome::Skipped => {
            let mut s = TestCaseStatus::skipped();
            s.set_message("skipped: an earlier step did not pass");
            s
        }
        other => {
            let mut s = TestCaseStatus::non_success(kind_of(other));
            s.set_message(failure_message(step));
            s.set_type(other.as_str());
            s.set_description(failure_detail(step));
            s
        }
    };
    let mut case = TestCase::new(step.name.as_str(), status);
    case.set_classname(probe.name.as_str());
    case.set_time(step.duration);
    case.set_assertions(step.asserts.len());
    if !step.artifacts.is_empty() {
        case.set_system_out(
            step.artifacts
                .iter()
                .map(|a| format!("[[ATTACHMENT|{a}]]"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    case
}

fn kind_of(outcome: Outcome) -> NonSuccessKind {
    match outcome {
        Outcome::Fail => NonSuccessKind::Failure,
        _ => NonSuccessKind::Error,
    }
}

/// One line: the first failing assertion's actual vs expected, or the step's error.
pub fn failure_message(step: &StepResult) -> String {
    if let Some(a) = step.failed_asserts().next() {
        let more = step.failed_asserts().count() - 1;
        let suffix = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        return format!(
            "{}: actual {}, expected {}{suffix}",
            a.expr,
            a.actual.as_deref().unwrap_or("(none)"),
            a.expected
        );
    }
    step.error
        .clone()
        .unwrap_or_else(|| step.result.to_string())
}

fn failure_detail(step: &StepResult) -> String {
    let mut lines: Vec<String> = step
        .failed_asserts()
        .map(|a| {
            let mut l = format!(
                "{}\n  actual:   {}\n  expected: {}",
                a.expr,
                a.actual.as_deref().unwrap_or("(none)"),
                a.expected
            );
            if let Some(m) = &a.message {
                l.push_str(&format!("\n  note:     {m}"));
            }
            l
        })
        .collect();
    if let Some(e) = &step.error {
        lines.push(e.clone());
    }
    lines.join("\n")
}

fn verdict_suite(verdict: &crate::verdict::Verdict) -> TestSuite {
    use crate::verdict::Decision;
    let mut suite = TestSuite::new(format!("verdict ({})", verdict.check));
    suite.add_property(("verdict", verdict.verdict.as_str()));
    for reason in &verdict.reasons {
        let status = match reason.decision {
            Decision::Pass => TestCaseStatus::success(),
            Decision::Fail => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(reason.message.as_str());
                s.set_type("fail");
                s
            }
            Decision::Inconclusive => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(format!("inconclusive: {}", reason.message));
                s
            }
        };
        let mut case = TestCase::new(format!("{} {}", reason.probe, reason.rule), status);
        case.set_classname("verdict");
        suite.add_test_case(case);
    }
    suite
}
