//! The validation's reports: Markdown for people, HTML with the perf plots, and JUnit
//! XML for CI systems (one test case per scenario and per perf comparison).

use super::verdict::{self, RaceVerdict};
use super::ValidateResult;
use crate::perf::stats::Verdict;
use quick_xml::escape::escape;
use std::fmt::Write;

/// What the exit code says, in words.
fn exit_meaning(code: i32) -> &'static str {
    match code {
        verdict::EXIT_OK => "nothing regressed",
        verdict::EXIT_RACE_REGRESSION => "race regression",
        verdict::EXIT_PERF_REGRESSION => "performance regression",
        verdict::EXIT_RACE_AND_PERF_REGRESSION => "race and performance regression",
        _ => "inconclusive: some check reached no verdict",
    }
}

pub fn markdown(r: &ValidateResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# memrace validate: {}\n", r.input);
    let _ = writeln!(
        out,
        "Base (A): `{}` ({}), build {}. Patched (B): `{}` ({}), build {}. Backend {}, \
         {} guests. Scenarios run with the configuration of their `{}` kernel.\n",
        r.base.label,
        r.base.description,
        r.base.hash,
        r.patched.label,
        r.patched.description,
        r.patched.hash,
        r.backend,
        r.arch,
        r.base.configured_as
    );
    if !r.complete {
        let _ = writeln!(out, "**Incomplete: the validation has not finished.**\n");
    } else {
        let _ = writeln!(
            out,
            "**Result: {} (exit code {}), in {:.0} s.**\n",
            exit_meaning(r.exit_code),
            r.exit_code,
            r.seconds
        );
    }
    let _ = writeln!(out, "## What the patch touches\n");
    let files: Vec<&str> = r.touched.files.iter().map(String::as_str).collect();
    let _ = writeln!(out, "Files: {}.\n", files.join(", "));
    if r.touched.functions.is_empty() {
        let _ = writeln!(
            out,
            "No changed line compiles to code in the patched build (comments, declarations, \
             files outside this configuration).\n"
        );
    } else {
        let _ = writeln!(
            out,
            "| function (patched build) | changed lines |\n|---|---|"
        );
        for (f, lines) in &r.touched.functions {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let _ = writeln!(out, "| `{f}` | {} |", lines.join(", "));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Races\n");
    if r.selection == "auto" {
        if r.picks.is_empty() {
            let _ = writeln!(
                out,
                "`--scenarios auto`: the patch changes no scenario's race code; none ran.\n"
            );
        }
        for p in &r.picks {
            let _ = writeln!(out, "- picked **{}**: {}", p.scenario, p.why);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "| scenario | base (A) | patched (B) | verdict |\n|---|---|---|---|"
    );
    for race in &r.races {
        let cell = |o: &Option<super::Outcome>| o.as_ref().map_or("-".to_string(), |o| o.text());
        let verdict = match race.verdict {
            v if v.is_regression() || v == RaceVerdict::Inconclusive => {
                format!("**{}**", v.text())
            }
            v => v.text().to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {verdict} |",
            race.scenario,
            cell(&race.base),
            cell(&race.patched)
        );
    }
    let notes: Vec<_> = r.races.iter().filter(|x| x.base.is_none()).collect();
    if !notes.is_empty() {
        out.push('\n');
        for race in notes {
            let _ = writeln!(out, "- {}: {}", race.scenario, race.why);
        }
    }
    let _ = writeln!(out, "\n## Performance\n");
    match &r.perf {
        None => {
            let _ = writeln!(
                out,
                "No benchmark exercises the touched files (or perf was skipped)."
            );
        }
        Some(p) => {
            for (bench, why) in &p.benches {
                let _ = writeln!(out, "- {bench}: {}", why.join(", "));
            }
            out.push('\n');
            if let Some(e) = &p.error {
                let _ = writeln!(out, "**The comparison did not finish:** {e}\n");
            }
            if let Some(result) = &p.result {
                let text = crate::perf::report::markdown(result);
                // Its own title becomes a section of this report.
                let body = text
                    .split_once('\n')
                    .map_or(text.as_str(), |(_, rest)| rest);
                out.push_str(body.replace("\n## ", "\n### ").trim_start());
            }
        }
    }
    out
}

pub fn html(r: &ValidateResult) -> String {
    let figures = r
        .perf
        .as_ref()
        .and_then(|p| p.result.as_ref())
        .map(crate::perf::html::figures)
        .unwrap_or_default();
    crate::perf::html::page("memrace validate", &markdown(r), &figures)
}

/// JUnit XML: suite `races` with a case per scenario, suite `perf` with a case per
/// comparison. Regressions are failures, inconclusive verdicts errors, scenarios that
/// do not apply skipped.
pub fn junit(r: &ValidateResult) -> String {
    let mut races = String::new();
    let (mut failures, mut errors, mut skipped) = (0, 0, 0);
    for race in &r.races {
        let why = escape(race.why.as_str());
        let inner = match race.verdict {
            v if v.is_regression() => {
                failures += 1;
                format!("<failure message=\"{}\">{why}</failure>", v.text())
            }
            RaceVerdict::Inconclusive => {
                errors += 1;
                format!("<error message=\"inconclusive\">{why}</error>")
            }
            RaceVerdict::NotApplicable => {
                skipped += 1;
                format!("<skipped message=\"{why}\"/>")
            }
            v => format!("<system-out>{}: {why}</system-out>", v.text()),
        };
        let _ = writeln!(
            races,
            "    <testcase classname=\"races\" name=\"{}\" time=\"{:.1}\">{inner}</testcase>",
            escape(race.scenario.as_str()),
            race.seconds
        );
    }
    let mut perf = String::new();
    let mut perf_failures = 0;
    let comparisons = r
        .perf
        .as_ref()
        .and_then(|p| p.result.as_ref())
        .map(|p| p.comparisons.as_slice())
        .unwrap_or_default();
    for c in comparisons {
        let text = format!(
            "{:+.1}% [{:+.1}%, {:+.1}%]",
            c.change.pct, c.change.ci_low_pct, c.change.ci_high_pct
        );
        let inner = if c.change.verdict == Verdict::Regression {
            perf_failures += 1;
            format!("<failure message=\"regression {text}\"/>")
        } else {
            format!(
                "<system-out>{}: {text}</system-out>",
                crate::perf::report::verdict_word(c.change.verdict)
            )
        };
        let _ = writeln!(
            perf,
            "    <testcase classname=\"perf.{}\" name=\"{}\">{inner}</testcase>",
            c.metric.name(),
            escape(c.bench.as_str())
        );
    }
    let perf_error = r.perf.as_ref().and_then(|p| p.error.as_ref());
    if let Some(e) = perf_error {
        let _ = writeln!(
            perf,
            "    <testcase classname=\"perf\" name=\"comparison\"><error message=\"did not finish\">{}</error></testcase>",
            escape(e.as_str())
        );
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"memrace validate\">\n\
         \x20 <testsuite name=\"races\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\">\n{races}  </testsuite>\n\
         \x20 <testsuite name=\"perf\" tests=\"{}\" failures=\"{perf_failures}\" errors=\"{}\">\n{perf}  </testsuite>\n\
         </testsuites>\n",
        r.races.len(),
        comparisons.len() + usize::from(perf_error.is_some()),
        usize::from(perf_error.is_some()),
    )
}
