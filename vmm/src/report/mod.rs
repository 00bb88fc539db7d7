//! Reports for people: a summary table for the terminal and a Markdown report.

use crate::scenario::run::{KernelRun, ScenarioResult};
use crate::scenario::verdict::TrialVerdict;
use crate::sched::trace::TraceEvent;
use std::fmt::Write;

fn expect_text(k: &KernelRun) -> String {
    serde_json::to_value(k.expect)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The per-kernel table: expected and observed verdicts, the counts behind them, time
/// per trial and per boot, and whether the expectation held.
pub fn table(rows: &[KernelRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<38} {:<18} {:<25} {:>6} {:>10} {:>6} {:>7} {:>10} {:>6} {:>8} {:>6}  HELD",
        "KERNEL",
        "EXPECT",
        "OBSERVED",
        "TRIALS",
        "REPRODUCED",
        "PASSED",
        "BLOCKED",
        "INFEASIBLE",
        "ERRORS",
        "S/TRIAL",
        "BOOT S",
    );
    for k in rows {
        let c = k.counts;
        let _ = writeln!(
            s,
            "{:<38} {:<18} {:<25} {:>6} {:>10} {:>6} {:>7} {:>10} {:>6} {:>8.3} {:>6.2}  {}",
            k.label,
            expect_text(k),
            c.observed(),
            c.trials,
            c.reproduced,
            c.passed,
            c.blocked,
            c.infeasible,
            c.errors,
            k.seconds_per_trial,
            k.boot_seconds,
            if k.held { "yes" } else { "NO" }
        );
    }
    s
}

fn trace_lines(events: &[TraceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            TraceEvent::Step { t_us, line, action } => format!("{:>10.3} ms  step (line {line}): {action}", *t_us as f64 / 1e3),
            TraceEvent::Hit { t_us, name, cpu, symbol, tid, comm, regs } => format!(
                "{:>10.3} ms  HIT {name} on vCPU {cpu} at {symbol} (task {} {:?}, arg1={:#x} arg2={:#x} arg3={:#x}) -> parked",
                *t_us as f64 / 1e3,
                tid.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                comm.clone().unwrap_or_default(),
                regs.named("arg1").unwrap_or_default(),
                regs.named("arg2").unwrap_or_default(),
                regs.named("arg3").unwrap_or_default()
            ),
            TraceEvent::Inject { t_us, name, cpu, symbol, tid, comm, value, returned_to } => format!(
                "{:>10.3} ms  INJECT {name} on vCPU {cpu} at {symbol} (task {} {:?}): returned {value} to {returned_to} without running it",
                *t_us as f64 / 1e3,
                tid.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                comm.clone().unwrap_or_default(),
            ),
            TraceEvent::Filtered { t_us, name, cpu, tid } => {
                format!("{:>10.3} ms  hit {name} on vCPU {cpu} by task {tid:?}: condition false, continued", *t_us as f64 / 1e3)
            }
            TraceEvent::Detector { t_us, name, cpu, symbol } => {
                format!("{:>10.3} ms  DETECTOR {name} on vCPU {cpu} at {symbol}", *t_us as f64 / 1e3)
            }
            TraceEvent::Release { t_us, cpu } => format!("{:>10.3} ms  release vCPU {cpu}", *t_us as f64 / 1e3),
            TraceEvent::Open { t_us, gate } => format!("{:>10.3} ms  open gate {gate}", *t_us as f64 / 1e3),
            TraceEvent::Control { t_us, line } => format!("{:>10.3} ms  guest: {line}", *t_us as f64 / 1e3),
            TraceEvent::Infeasible { t_us, line, reason, vcpus } => {
                format!("{:>10.3} ms  INFEASIBLE at line {line}: {reason}; {}", *t_us as f64 / 1e3, vcpus.join("; "))
            }
        })
        .collect()
}

fn kernel_section(s: &mut String, k: &KernelRun) {
    let c = k.counts;
    let _ = writeln!(s, "### {} (`{}`)\n", k.label, k.variant);
    if !k.note.is_empty() {
        let _ = writeln!(s, "{}\n", k.note);
    }
    let _ = writeln!(
        s,
        "Expected **{}**, observed **{}**; {} trials: {} reproduced, {} passed, {} blocked, {} infeasible, {} errors in {} boot(s); {:.3} s per trial, {:.2} s per boot. Expectation held: **{}**.\n",
        expect_text(k),
        c.observed(),
        c.trials,
        c.reproduced,
        c.passed,
        c.blocked,
        c.infeasible,
        c.errors,
        k.boots,
        k.seconds_per_trial,
        k.boot_seconds,
        if k.held { "yes" } else { "no" }
    );
    if !k.params.is_empty() {
        let _ = writeln!(
            s,
            "Workload parameters: {:?}; schedule: {}\n",
            k.params, k.schedule_name
        );
    }
    let mut whys: Vec<(TrialVerdict, &str)> = k
        .trials
        .iter()
        .map(|t| (t.verdict, t.why.as_str()))
        .collect();
    whys.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let _ = writeln!(s, "| verdict | why (first of each kind) |\n|---|---|");
    let mut seen = std::collections::BTreeSet::new();
    for (v, why) in whys {
        if seen.insert(format!("{v:?}")) {
            let _ = writeln!(s, "| {v:?} | {} |", why.replace('|', "\\|"));
        }
    }
    let _ = writeln!(s);
    let shown = k
        .trials
        .iter()
        .find(|t| t.verdict == TrialVerdict::Reproduced)
        .or_else(|| k.trials.last());
    if let Some(t) = shown {
        let _ = writeln!(
            s,
            "Schedule trace of trial {} ({:?}):\n\n```",
            t.run.trial, t.verdict
        );
        for l in trace_lines(&t.run.trace) {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "```\n");
        if let Some(r) = &t.run.kernel_report {
            let _ = writeln!(s, "Kernel report:\n\n```");
            for l in &r.lines {
                let _ = writeln!(s, "{l}");
            }
            let _ = writeln!(s, "```\n");
        }
    }
    if !k.console_excerpt.is_empty() {
        let _ = writeln!(s, "Console excerpt:\n\n```");
        for l in &k.console_excerpt {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "```\n");
    }
}

/// The Markdown report of a scenario run.
pub fn markdown(r: &ScenarioResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# memrace: {}\n\n{}\n", r.scenario, r.description);
    let _ = writeln!(
        s,
        "Scenario file: `{}`; backend: {}; guest architecture: {}. Overall: **{}**{}.\n",
        r.scenario_file,
        r.backend,
        r.arch,
        if r.held {
            "expectations held"
        } else {
            "EXPECTATIONS NOT MET"
        },
        if r.complete { "" } else { " (run incomplete)" }
    );
    let _ = writeln!(
        s,
        "```\n{}```\n",
        table(
            &r.kernels
                .iter()
                .chain(&r.controls)
                .cloned()
                .collect::<Vec<_>>()
        )
    );
    let _ = writeln!(s, "## Kernels\n");
    for k in &r.kernels {
        kernel_section(&mut s, k);
    }
    if !r.controls.is_empty() {
        let _ = writeln!(s, "## Negative controls and baselines\n");
        for k in &r.controls {
            kernel_section(&mut s, k);
        }
    }
    s
}
