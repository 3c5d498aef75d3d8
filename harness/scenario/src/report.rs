//! Reports of a run: text for a terminal (one line per step, a readable diff on failure, a
//! summary) and JUnit XML for CI systems.

use std::fmt::Write as _;

use crate::check::Verdict;
use crate::run::{ScenarioReport, StepReport};

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Scenarios run.
    pub scenarios: usize,
    /// Scenarios that failed.
    pub failed_scenarios: usize,
    /// Steps run.
    pub steps: usize,
    /// Steps that failed.
    pub failed_steps: usize,
    /// Expectations a judge could not observe.
    pub unobservable: usize,
    /// Places where the judges disagreed.
    pub disagreements: usize,
}

impl Summary {
    /// The totals of `reports`.
    pub fn of(reports: &[ScenarioReport]) -> Self {
        let mut summary = Self::default();
        for report in reports {
            summary.scenarios += 1;
            summary.failed_scenarios += usize::from(!report.passed());
            for step in &report.steps {
                summary.steps += 1;
                summary.failed_steps += usize::from(!step.passed());
                summary.disagreements += step.disagreements.len();
                summary.unobservable += step
                    .judges
                    .iter()
                    .flat_map(|judge| &judge.checks)
                    .filter(|check| matches!(check.verdict, Verdict::Unobservable(_)))
                    .count();
            }
        }
        summary
    }

    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.failed_scenarios == 0
    }
}

/// The terminal report of one scenario.
pub fn text(report: &ScenarioReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}) [{}]",
        report.name,
        report.path.display(),
        report.judges.join(", ")
    );
    if !report.harness_only.is_empty() {
        let _ = writeln!(
            out,
            "  note  set in the harness only (Envoy takes no such setting): {}",
            report.harness_only.join(", ")
        );
    }
    for (judge, error) in &report.errors {
        let _ = writeln!(out, "  FAIL  the scenario did not start under {judge}:");
        for line in error.lines() {
            let _ = writeln!(out, "          {line}");
        }
    }
    for step in &report.steps {
        step_text(&mut out, step);
    }
    out
}

fn step_text(out: &mut String, step: &StepReport) {
    let only: Vec<&str> = step
        .judges
        .iter()
        .filter(|judge| judge.seen.not_run.is_none() && judge.error.is_none())
        .map(|judge| judge.judge)
        .collect();
    let mark = if !step.passed() {
        "FAIL"
    } else if only.len() < step.judges.len() {
        "ok*"
    } else {
        "ok"
    };
    let checks: usize = step.judges.iter().map(|judge| judge.checks.len()).sum();
    let _ = writeln!(
        out,
        "  {mark:<5} {}. {} ({checks} checks)",
        step.index + 1,
        step.name
    );
    for judge in &step.judges {
        if let Some(error) = &judge.error {
            let _ = writeln!(out, "          [{}] stopped: {error}", judge.judge);
        }
        if let Some(why) = &judge.seen.not_run {
            let _ = writeln!(out, "          [{}] not run: {why}", judge.judge);
            continue;
        }
        for check in &judge.checks {
            match &check.verdict {
                Verdict::Pass => {}
                Verdict::Fail { expected, got } => {
                    let _ = writeln!(out, "          [{}] {}:", judge.judge, check.field);
                    let _ = writeln!(out, "            expected {expected}");
                    let _ = writeln!(out, "            got      {got}");
                }
                Verdict::Unobservable(why) => {
                    let _ = writeln!(
                        out,
                        "          [{}] {}: not checked: {why}",
                        judge.judge, check.field
                    );
                }
            }
        }
    }
    for disagreement in &step.disagreements {
        let _ = writeln!(out, "          judges disagree: {disagreement}");
    }
}

/// The closing line of a run.
pub fn summary_line(summary: &Summary) -> String {
    let verdict = if summary.passed() { "passed" } else { "FAILED" };
    format!(
        "{verdict}: {} of {} scenarios, {} of {} steps passed; {} expectations not observable by a judge; {} disagreements between judges",
        summary.scenarios - summary.failed_scenarios,
        summary.scenarios,
        summary.steps - summary.failed_steps,
        summary.steps,
        summary.unobservable,
        summary.disagreements,
    )
}

/// JUnit XML: one test suite per scenario, one test case per step and judge.
pub fn junit(reports: &[ScenarioReport]) -> String {
    let summary = Summary::of(reports);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let cases: usize = reports.iter().map(case_count).sum();
    let start_failures: usize = reports.iter().map(|report| report.errors.len()).sum();
    let _ = writeln!(
        out,
        "<testsuites name=\"wasmesh test\" tests=\"{cases}\" failures=\"{}\">",
        summary.failed_steps + start_failures
    );
    for report in reports {
        let failures =
            report.steps.iter().filter(|step| !step.passed()).count() + report.errors.len();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" file=\"{}\">",
            escape(&report.name),
            case_count(report),
            escape(&report.path.display().to_string())
        );
        for (judge, error) in &report.errors {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{}\" name=\"start [{judge}]\">\n      <failure message=\"the scenario did not start\">{}</failure>\n    </testcase>",
                escape(&report.name),
                escape(error)
            );
        }
        for step in &report.steps {
            for judge in &step.judges {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{}. {} [{}]\">",
                    escape(&report.name),
                    step.index + 1,
                    escape(&step.name),
                    judge.judge
                );
                let mut failures = Vec::new();
                if let Some(error) = &judge.error {
                    failures.push(format!("stopped: {error}"));
                }
                for check in &judge.checks {
                    if let Verdict::Fail { expected, got } = &check.verdict {
                        failures.push(format!("{}: expected {expected}, got {got}", check.field));
                    }
                }
                if !failures.is_empty() {
                    let _ = write!(
                        out,
                        "\n      <failure message=\"{}\">{}</failure>\n    ",
                        escape(failures.first().map(String::as_str).unwrap_or_default()),
                        escape(&failures.join("\n"))
                    );
                } else if let Some(why) = &judge.seen.not_run {
                    let _ = write!(out, "\n      <skipped message=\"{}\"/>\n    ", escape(why));
                }
                out.push_str("</testcase>\n");
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn case_count(report: &ScenarioReport) -> usize {
    report.errors.len()
        + report
            .steps
            .iter()
            .map(|step| step.judges.len())
            .sum::<usize>()
}

/// XML text and attribute escaping.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            control if control.is_control() && !matches!(control, '\n' | '\t' | '\r') => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(control));
            }
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_escaped() {
        assert_eq!(
            escape("a<b & \"c\"\u{1}"),
            "a&lt;b &amp; &quot;c&quot;\\u{1}"
        );
    }
}
