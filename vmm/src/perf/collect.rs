//! One perf boot: start the VM with the perf job, take its `SAMPLE`s, and check they are
//! exactly the ones asked for. Samples come from the guest, so they are untrusted: a
//! name, repetition or count that was not asked for, a duplicate, or a missing one makes
//! the boot fail with a reason instead of entering the statistics.

use super::{PerfError, SampleRecord};
use crate::backend::{ControlMessage, Launcher, VmConfig};
use crate::boot::{self, Limits, Verdict};
use std::collections::BTreeSet;
use std::time::Duration;

/// Bound from VM start to the harness's HELLO.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// Fixed part of the run bound, plus a generous allowance per repetition (warm-ups too).
const RUN_BASE: Duration = Duration::from_secs(120);
const PER_REPETITION: Duration = Duration::from_secs(20);
/// Bytes of the harness's own output kept for an error message.
const OUTPUT_TAIL: usize = 4096;

/// Which samples one boot must deliver.
pub struct Expected {
    /// `<bench>.t<threads>` labels.
    pub labels: Vec<String>,
    pub reps: u32,
    /// Repetitions per label including warm-ups, for the time bound.
    pub runs_per_label: u32,
}

impl Expected {
    fn limits(&self) -> Limits {
        let runs = self.labels.len() as u32 * self.runs_per_label;
        Limits {
            boot: BOOT_LIMIT,
            run: RUN_BASE + PER_REPETITION * runs,
        }
    }
}

/// What one boot produced.
pub struct Collected {
    pub samples: Vec<SampleRecord>,
    pub boot_seconds: f64,
    pub seconds: f64,
}

/// Boot `cfg` on `launcher`, collect its samples; `on_sample` is told about each one.
pub fn collect(
    launcher: &Launcher,
    cfg: &VmConfig,
    expected: &Expected,
    on_sample: &mut dyn FnMut(&SampleRecord),
) -> Result<Collected, PerfError> {
    let mut vm = launcher.launch(cfg)?;
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    // What the harness wrote (its error messages): kept to a bounded tail.
    let mut output = Vec::new();
    let report = boot::run(
        vm.as_mut(),
        expected.limits(),
        &mut |message| {
            if let ControlMessage::Output { data, .. } = message {
                output.extend_from_slice(data);
                let excess = output.len().saturating_sub(OUTPUT_TAIL);
                output.drain(..excess);
            }
            if let ControlMessage::Sample {
                bench,
                rep,
                ns,
                ops,
            } = message
            {
                match check(expected, &mut seen, bench, *rep, *ns, *ops) {
                    Ok(()) => {
                        let s = SampleRecord {
                            bench: bench.clone(),
                            rep: *rep,
                            ns: *ns,
                            ops: *ops,
                        };
                        on_sample(&s);
                        samples.push(s);
                    }
                    Err(why) if problems.len() < 8 => problems.push(why),
                    Err(_) => {}
                }
            }
        },
        &mut |_| {},
    );
    vm.kill();
    let console = || report.console_tail.join("\n");
    match &report.verdict {
        Verdict::Exited { code: 0 } => {}
        Verdict::Exited { code } => {
            return Err(PerfError::Guest(format!(
                "the perf job exited with status {code}: {}",
                String::from_utf8_lossy(&output).trim()
            )))
        }
        Verdict::KernelPanic { report: k } => {
            return Err(PerfError::Guest(format!(
                "the kernel reported a bug: {}\n{}",
                k.headline,
                k.lines.join("\n")
            )))
        }
        Verdict::Timeout { stage, seconds } => {
            return Err(PerfError::Guest(format!(
                "timeout: no {} within {seconds} s; console:\n{}",
                if stage == "boot" {
                    "/init"
                } else {
                    "end of the perf job"
                },
                console()
            )))
        }
        Verdict::NoStatus { why } => {
            return Err(PerfError::Guest(format!("{why}; console:\n{}", console())))
        }
    }
    if !problems.is_empty() {
        return Err(PerfError::Guest(format!(
            "the guest sent samples that were not asked for: {}",
            problems.join("; ")
        )));
    }
    let want = expected.labels.len() * expected.reps as usize;
    if samples.len() != want {
        return Err(PerfError::Guest(format!(
            "the guest sent {} of the {want} samples asked for",
            samples.len()
        )));
    }
    Ok(Collected {
        samples,
        boot_seconds: report.time_to_init.map_or(0.0, |d| d.as_secs_f64()),
        seconds: report.total.as_secs_f64(),
    })
}

fn check(
    expected: &Expected,
    seen: &mut BTreeSet<(String, u32)>,
    bench: &str,
    rep: u32,
    ns: u64,
    ops: u64,
) -> Result<(), String> {
    if !expected.labels.iter().any(|l| l == bench) {
        return Err(format!("unknown benchmark {bench:?}"));
    }
    if !(1..=expected.reps).contains(&rep) {
        return Err(format!("{bench}: repetition {rep} of {}", expected.reps));
    }
    if ns == 0 || ops == 0 {
        return Err(format!("{bench}: {ops} operations in {ns} ns"));
    }
    if !seen.insert((bench.to_string(), rep)) {
        return Err(format!("{bench}: repetition {rep} sent twice"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_that_were_not_asked_for_are_refused() {
        let expected = Expected {
            labels: vec!["fork.t1".into()],
            reps: 2,
            runs_per_label: 3,
        };
        let mut seen = BTreeSet::new();
        assert_eq!(check(&expected, &mut seen, "fork.t1", 1, 10, 1), Ok(()));
        for (bench, rep, ns, ops) in [
            ("fork.t1", 1, 10, 1),
            ("fork.t9", 1, 10, 1),
            ("fork.t1", 3, 10, 1),
            ("fork.t1", 0, 10, 1),
            ("fork.t1", 2, 0, 1),
            ("fork.t1", 2, 10, 0),
        ] {
            assert!(check(&expected, &mut seen, bench, rep, ns, ops).is_err());
        }
        assert_eq!(expected.limits().run, RUN_BASE + PER_REPETITION * 3);
    }
}
