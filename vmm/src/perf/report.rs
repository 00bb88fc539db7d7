//! The Markdown report: one table per metric in the layout of the kernel test robot's
//! comparisons (A's median and %stddev, the %change, B's median and %stddev), with the
//! range and the change's confidence interval that LKP leaves out.

use super::stats::{Change, Summary, Verdict};
use super::{Metric, PerfResult};
use std::fmt::Write;

/// What each metric measures, for every report.
pub fn metric_meaning(metric: Metric) -> &'static str {
    match metric {
        Metric::Wall => {
            "guest CLOCK_MONOTONIC following the host clock. Under TCG it measures the \
             emulated cost, host noise included; on hardware KVM it is the real figure."
        }
        Metric::Icount => {
            "QEMU icount: guest time advances a fixed step per instruction executed, so a \
             figure is instructions per operation, free of host noise. It counts work, not \
             cycles: cache misses, TLB flushes and lock waits cost no more than any \
             instruction. With several threads the vCPUs take turns on one host thread, so \
             a thread that waits for another (a lock holder) can show as an outlier."
        }
    }
}

pub fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Regression => "**regression**",
        Verdict::Improvement => "**improvement**",
        Verdict::NoChange => "no change",
        Verdict::Insufficient => "too few boots",
    }
}

fn signed(pct: f64) -> String {
    if pct.is_nan() {
        "n/a".into()
    } else {
        format!("{pct:+.1}%")
    }
}

fn figure(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn side(s: &Summary) -> [String; 3] {
    [
        figure(s.median),
        format!("±{:.1}%", s.stddev_pct),
        format!("{}–{}", figure(s.min), figure(s.max)),
    ]
}

fn interval(c: &Change) -> String {
    if c.ci_low_pct.is_nan() {
        "n/a".into()
    } else {
        format!("[{}, {}]", signed(c.ci_low_pct), signed(c.ci_high_pct))
    }
}

/// The whole report.
pub fn markdown(r: &PerfResult) -> String {
    let p = &r.plan;
    let (a, b) = (&p.kernels[0].label, &p.kernels[1].label);
    let mut out = String::new();
    let _ = writeln!(out, "# memrace perf: {a} (A) against {b} (B)\n");
    let _ = writeln!(
        out,
        "Backend {}, {} guests, {} vCPUs, {} MiB. Per metric, {} boots per kernel in ABBA order; each \
         boot runs {} warm-up and {} timed repetitions of every benchmark. Figures are \
         medians over all repetitions; %change is B against A from the boots' medians, with \
         its confidence interval (Welch). The intervals of one metric are simultaneous at 95% \
         (Bonferroni: with m comparisons each is a 1 − 0.05/m interval), so an A/A run \
         declares anything at most 5% of the time. A change is declared when the interval \
         excludes zero and the change is at least {}% (wall) or {}% (icount).{}\n",
        r.backend,
        p.arch,
        p.cpus,
        p.mem_mib,
        p.boots,
        p.warmup,
        p.reps,
        p.threshold_wall_pct,
        p.threshold_icount_pct,
        if r.complete {
            ""
        } else {
            " **Incomplete run: not every boot finished.**"
        }
    );
    for &metric in &p.metrics {
        let rows: Vec<_> = r
            .comparisons
            .iter()
            .filter(|c| c.metric == metric)
            .collect();
        let _ = writeln!(out, "## {}: {}\n", metric.name(), metric.unit());
        let _ = writeln!(out, "{}\n", metric_meaning(metric));
        let _ = writeln!(
            out,
            "| benchmark | {a} | %stddev | min–max | %change | 95% simultaneous CI | {b} | %stddev | min–max | verdict |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for c in rows {
            let [am, asd, ar] = side(&c.a);
            let [bm, bsd, br] = side(&c.b);
            let _ = writeln!(
                out,
                "| {} | {am} | {asd} | {ar} | {} | {} | {bm} | {bsd} | {br} | {} |",
                c.bench,
                signed(c.change.pct),
                interval(&c.change),
                verdict_word(c.change.verdict)
            );
        }
        out.push('\n');
    }
    let changed: Vec<_> = r
        .comparisons
        .iter()
        .filter(|c| matches!(c.change.verdict, Verdict::Regression | Verdict::Improvement))
        .map(|c| format!("{} {} ({})", c.metric.name(), c.bench, signed(c.change.pct)))
        .collect();
    let _ = writeln!(
        out,
        "Declared changes: {}.",
        if changed.is_empty() {
            "none".to_string()
        } else {
            changed.join(", ")
        }
    );
    out
}
