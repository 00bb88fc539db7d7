//! Per-trial verdicts and per-kernel expectations.

use super::file::{Expect, Oracle};
use crate::sched::engine::{ScheduleStatus, TrialRun};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrialVerdict {
    /// The oracle fired and every scheduled breakpoint was hit, in order.
    Reproduced,
    /// The oracle saw correct behaviour.
    Passed,
    /// The schedule could not be carried out on this kernel (bounded wait or detector).
    Infeasible,
    Error,
}

/// Why a trial got its verdict, for the report.
pub fn classify(
    run: &TrialRun,
    expected_hits: &[String],
    oracle: &Oracle,
) -> (TrialVerdict, String) {
    let kernel_hit = run.kernel_report.as_ref().filter(|r| {
        oracle
            .kernel
            .iter()
            .any(|p| r.headline.contains(p) || r.lines.iter().any(|l| l.contains(p)))
    });
    let oracle_repro = run.oracle.as_ref().is_some_and(|(o, _)| o == "reproduced");
    let in_order = run.hits == expected_hits;
    // A kernel oracle usually takes the VM down with it (panic): that ends the schedule too.
    let schedule_done = matches!(run.schedule, ScheduleStatus::Completed)
        || (kernel_hit.is_some() && matches!(run.schedule, ScheduleStatus::VmGone { .. }));
    if oracle_repro || kernel_hit.is_some() {
        let what = match kernel_hit {
            Some(r) => format!("kernel: {}", r.headline),
            None => format!(
                "oracle: {}",
                run.oracle.as_ref().map(|o| o.1.as_str()).unwrap_or("")
            ),
        };
        return if schedule_done && in_order {
            (TrialVerdict::Reproduced, what)
        } else {
            (
                TrialVerdict::Error,
                format!(
                    "{what}, but the schedule did not complete in order (hits {:?}, status {:?})",
                    run.hits, run.schedule
                ),
            )
        };
    }
    match &run.schedule {
        ScheduleStatus::Infeasible { reason, line, .. } => {
            return (TrialVerdict::Infeasible, format!("line {line}: {reason}"))
        }
        ScheduleStatus::Detected { detector, line } => {
            return (
                TrialVerdict::Infeasible,
                format!("line {line}: detector {detector} fired (the kernel blocks this order)"),
            )
        }
        _ => {}
    }
    if let Some(r) = &run.kernel_report {
        return (
            TrialVerdict::Error,
            format!("unexpected kernel report: {}", r.headline),
        );
    }
    match (&run.schedule, &run.oracle) {
        (ScheduleStatus::Completed, Some((o, d))) if o == "intact" => {
            (TrialVerdict::Passed, d.clone())
        }
        (ScheduleStatus::Completed, Some((o, d))) => {
            (TrialVerdict::Error, format!("oracle {o}: {d}"))
        }
        (ScheduleStatus::Completed, None) => (
            TrialVerdict::Error,
            "no oracle result from the guest".into(),
        ),
        (status, _) => (TrialVerdict::Error, format!("{status:?}")),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub trials: u32,
    pub reproduced: u32,
    pub passed: u32,
    pub infeasible: u32,
    pub errors: u32,
}

impl Counts {
    pub fn add(&mut self, v: TrialVerdict) {
        self.trials += 1;
        match v {
            TrialVerdict::Reproduced => self.reproduced += 1,
            TrialVerdict::Passed => self.passed += 1,
            TrialVerdict::Infeasible => self.infeasible += 1,
            TrialVerdict::Error => self.errors += 1,
        }
    }

    /// Did the kernel show what the scenario expects of it?
    pub fn meets(&self, expect: Expect) -> bool {
        match expect {
            Expect::Reproduced => self.trials > 0 && self.reproduced == self.trials,
            Expect::Intact => self.trials > 0 && self.passed == self.trials,
            Expect::IntactOrInfeasible => {
                self.trials > 0 && self.reproduced == 0 && self.errors == 0
            }
            Expect::Report => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::KernelReport;

    fn run(
        schedule: ScheduleStatus,
        oracle: Option<&str>,
        hits: &[&str],
        report: Option<&str>,
    ) -> TrialRun {
        TrialRun {
            trial: 1,
            schedule,
            oracle: oracle.map(|o| (o.to_string(), "detail".to_string())),
            hits: hits.iter().map(|s| s.to_string()).collect(),
            filtered_hits: 0,
            serviced: 0,
            kernel_report: report.map(|h| KernelReport {
                headline: h.into(),
                panicked: true,
                lines: vec![h.into()],
            }),
            seconds: 0.1,
            trace: vec![],
        }
    }

    #[test]
    fn reproduced_needs_the_oracle_and_every_hit_in_order() {
        let want = vec!["a".to_string(), "b".to_string()];
        let o = Oracle {
            kernel: vec!["kernel BUG at".into()],
        };
        let c = ScheduleStatus::Completed;
        assert_eq!(
            classify(
                &run(c.clone(), Some("reproduced"), &["a", "b"], None),
                &want,
                &o
            )
            .0,
            TrialVerdict::Reproduced
        );
        assert_eq!(
            classify(
                &run(c.clone(), Some("reproduced"), &["b", "a"], None),
                &want,
                &o
            )
            .0,
            TrialVerdict::Error
        );
        assert_eq!(
            classify(
                &run(c.clone(), Some("intact"), &["a", "b"], None),
                &want,
                &o
            )
            .0,
            TrialVerdict::Passed
        );
        let gone = ScheduleStatus::VmGone {
            why: "panic".into(),
        };
        assert_eq!(
            classify(
                &run(
                    gone.clone(),
                    None,
                    &["a", "b"],
                    Some("kernel BUG at x.h:5!")
                ),
                &want,
                &o
            )
            .0,
            TrialVerdict::Reproduced
        );
        assert_eq!(
            classify(
                &run(gone, None, &["a", "b"], Some("BUG: unable to handle")),
                &want,
                &o
            )
            .0,
            TrialVerdict::Error
        );
        let det = ScheduleStatus::Detected {
            detector: "d".into(),
            line: 3,
        };
        assert_eq!(
            classify(&run(det, Some("intact"), &["a"], None), &want, &o).0,
            TrialVerdict::Infeasible
        );
    }

    #[test]
    fn expectations() {
        let mut c = Counts::default();
        assert!(!c.meets(Expect::Intact), "no trials proves nothing");
        c.add(TrialVerdict::Passed);
        c.add(TrialVerdict::Infeasible);
        assert!(
            c.meets(Expect::IntactOrInfeasible)
                && !c.meets(Expect::Intact)
                && !c.meets(Expect::Reproduced)
        );
        c.add(TrialVerdict::Reproduced);
        assert!(!c.meets(Expect::IntactOrInfeasible) && c.meets(Expect::Report));
    }
}
