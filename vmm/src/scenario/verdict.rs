//! Per-trial verdicts and per-kernel expectations.

use super::file::{Expect, Oracle};
use crate::sched::engine::{ScheduleStatus, TrialRun};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrialVerdict {
    /// The oracle fired and every scheduled breakpoint was hit, in order.
    Reproduced,
    /// The schedule completed in order and the oracle saw correct behaviour.
    Passed,
    /// The kernel blocked the schedule, as a correct kernel may: a detector fired (e.g.
    /// on an rmap lock the parked vCPU holds), the parked vCPUs were released in fallback
    /// order, and the guest's oracle then saw correct behaviour. "Infeasible on this
    /// kernel (expected)" where the scenario declares `intact-or-blocked`.
    Blocked,
    /// A step missed its bound: the interleaving was never tested.
    Infeasible,
    Error,
}

/// Why a trial got its verdict, for the report. The order of the checks matters: a
/// kernel report or a bad oracle result outranks an incomplete schedule, so a kernel
/// that crashes or corrupts data after a detector fired is never "blocked".
pub fn classify(
    run: &TrialRun,
    expected_hits: &[String],
    oracle: &Oracle,
) -> (TrialVerdict, String) {
    // The kernel oracle: the first console line that matches one of its patterns.
    let kernel_hit: Option<&str> = run
        .kernel_report
        .as_ref()
        .and_then(|r| oracle.kernel.iter().find_map(|p| r.line_mentioning(p)));
    let guest = run.oracle.as_ref().map(|(o, d)| (o.as_str(), d.as_str()));
    let in_order = run.hits == expected_hits;
    let out_of_order = || {
        format!(
            "the schedule did not complete in order (hits {:?}, status {})",
            run.hits,
            status_text(&run.schedule)
        )
    };
    let guest_repro = guest.is_some_and(|(o, _)| o == "reproduced");
    let guest_text = || {
        guest
            .map(|(o, d)| format!("{o}: {d}"))
            .unwrap_or_else(|| "nothing".into())
    };
    let fired = match (kernel_hit, guest_repro) {
        (Some(line), true) => Some(format!("kernel: {line}; oracle: {}", guest_text())),
        (None, false) => None,
        // `all`: one oracle alone is not the bug (e.g. a WARN without the rmap miss).
        (Some(line), false) if oracle.all => {
            return (
                TrialVerdict::Error,
                format!(
                    "kernel: {line}, but the guest's oracle said {} (every oracle is required)",
                    guest_text()
                ),
            )
        }
        (None, true) if oracle.all => {
            return (
                TrialVerdict::Error,
                format!(
                    "oracle {}, but no kernel report matched {:?} (every oracle is required)",
                    guest_text(),
                    oracle.kernel
                ),
            )
        }
        (Some(line), false) => Some(format!("kernel: {line}")),
        (None, true) => Some(format!("oracle {}", guest_text())),
    };
    if let Some(what) = fired {
        // A kernel oracle usually takes the VM down with it (panic): that ends the schedule too.
        let schedule_done = matches!(run.schedule, ScheduleStatus::Completed)
            || (kernel_hit.is_some() && matches!(run.schedule, ScheduleStatus::VmGone { .. }));
        return if schedule_done && in_order {
            (TrialVerdict::Reproduced, what)
        } else {
            (
                TrialVerdict::Error,
                format!("{what}, but {}", out_of_order()),
            )
        };
    }
    if let Some(r) = &run.kernel_report {
        return (
            TrialVerdict::Error,
            format!("unexpected kernel report: {}", r.headline),
        );
    }
    match (&run.schedule, guest) {
        (ScheduleStatus::Infeasible { reason, line, .. }, _) => {
            (TrialVerdict::Infeasible, format!("line {line}: {reason}"))
        }
        (ScheduleStatus::Detected { detector, line }, Some(("intact", d))) => (
            TrialVerdict::Blocked,
            format!("infeasible on this kernel (expected where declared): detector {detector:?} fired at line {line}, the kernel blocks this order; then the oracle: {d}"),
        ),
        (ScheduleStatus::Detected { detector, line }, _) => (
            TrialVerdict::Error,
            format!(
                "detector {detector:?} fired at line {line}, but the guest's oracle then said {}",
                guest_text()
            ),
        ),
        (ScheduleStatus::Completed, Some(("intact", d))) if in_order => {
            (TrialVerdict::Passed, d.to_string())
        }
        (ScheduleStatus::Completed, Some(("intact", d))) => {
            (TrialVerdict::Error, format!("oracle intact: {d}, but {}", out_of_order()))
        }
        (ScheduleStatus::Completed, Some((o, d))) => {
            (TrialVerdict::Error, format!("oracle {o}: {d}"))
        }
        (ScheduleStatus::Completed, None) => (
            TrialVerdict::Error,
            "no oracle result from the guest".into(),
        ),
        (status, _) => (TrialVerdict::Error, status_text(status)),
    }
}

fn status_text(status: &ScheduleStatus) -> String {
    match status {
        ScheduleStatus::Completed => "completed".into(),
        ScheduleStatus::Infeasible { line, reason, .. } => {
            format!("infeasible at line {line}: {reason}")
        }
        ScheduleStatus::Detected { detector, line } => {
            format!("detector {detector:?} fired at line {line}")
        }
        ScheduleStatus::Error { line, why } => format!("schedule error at line {line}: {why}"),
        ScheduleStatus::VmGone { why } => format!("the VM went away: {why}"),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub trials: u32,
    pub reproduced: u32,
    pub passed: u32,
    pub blocked: u32,
    pub infeasible: u32,
    pub errors: u32,
}

impl Counts {
    pub fn add(&mut self, v: TrialVerdict) {
        self.trials += 1;
        match v {
            TrialVerdict::Reproduced => self.reproduced += 1,
            TrialVerdict::Passed => self.passed += 1,
            TrialVerdict::Blocked => self.blocked += 1,
            TrialVerdict::Infeasible => self.infeasible += 1,
            TrialVerdict::Error => self.errors += 1,
        }
    }

    /// Did the kernel show what the scenario expects of it? A trial that never tested the
    /// interleaving (infeasible: a bound passed) counts against every expectation but
    /// `report`: it proves nothing either way.
    pub fn meets(&self, expect: Expect) -> bool {
        match expect {
            Expect::Reproduced => self.trials > 0 && self.reproduced == self.trials,
            Expect::Intact => self.trials > 0 && self.passed == self.trials,
            Expect::IntactOrBlocked => self.trials > 0 && self.passed + self.blocked == self.trials,
            Expect::Report => true,
        }
    }

    /// What the trials showed, in the words of the expectations.
    pub fn observed(&self) -> String {
        let kinds = [
            (self.reproduced, "reproduced"),
            (self.passed, "intact"),
            (self.blocked, "blocked"),
            (self.infeasible, "infeasible"),
            (self.errors, "error"),
        ];
        let present: Vec<String> = kinds
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| {
                if *n == self.trials {
                    what.to_string()
                } else {
                    format!("{n} {what}")
                }
            })
            .collect();
        if present.is_empty() {
            "no trials".into()
        } else {
            present.join(", ")
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
                further: vec![],
            }),
            seconds: 0.1,
            trace: vec![],
        }
    }

    fn verdict(run: &TrialRun, oracle: &Oracle) -> TrialVerdict {
        classify(run, &["a".to_string(), "b".to_string()], oracle).0
    }

    fn kernel_oracle(all: bool) -> Oracle {
        Oracle {
            kernel: vec!["kernel BUG at".into()],
            all,
        }
    }

    #[test]
    fn reproduced_needs_the_oracle_and_every_hit_in_order() {
        let o = kernel_oracle(false);
        let c = ScheduleStatus::Completed;
        let v =
            |hits: &[&str], oracle: &str| verdict(&run(c.clone(), Some(oracle), hits, None), &o);
        assert_eq!(v(&["a", "b"], "reproduced"), TrialVerdict::Reproduced);
        assert_eq!(v(&["b", "a"], "reproduced"), TrialVerdict::Error);
        assert_eq!(v(&["a", "b"], "intact"), TrialVerdict::Passed);
        assert_eq!(
            v(&["b", "a"], "intact"),
            TrialVerdict::Error,
            "a pass needs the interleaving it claims to have tested"
        );
        assert_eq!(v(&["a", "b"], "error"), TrialVerdict::Error);
        let gone = ScheduleStatus::VmGone {
            why: "panic".into(),
        };
        let bug = Some("kernel BUG at x.h:5!");
        assert_eq!(
            verdict(&run(gone.clone(), None, &["a", "b"], bug), &o),
            TrialVerdict::Reproduced
        );
        assert_eq!(
            verdict(&run(gone.clone(), None, &["a"], bug), &o),
            TrialVerdict::Error,
            "the kernel oracle fired before the schedule was carried out"
        );
        assert_eq!(
            verdict(
                &run(gone, None, &["a", "b"], Some("BUG: unable to handle")),
                &o
            ),
            TrialVerdict::Error
        );
    }

    #[test]
    fn blocked_needs_a_detector_and_an_intact_kernel_afterwards() {
        let o = kernel_oracle(false);
        let det = ScheduleStatus::Detected {
            detector: "d".into(),
            line: 3,
        };
        let v = |oracle: Option<&str>, report: Option<&str>| {
            verdict(&run(det.clone(), oracle, &["a"], report), &o)
        };
        assert_eq!(v(Some("intact"), None), TrialVerdict::Blocked);
        assert_eq!(v(Some("reproduced"), None), TrialVerdict::Error);
        assert_eq!(
            v(None, None),
            TrialVerdict::Error,
            "no oracle after the fallback"
        );
        assert_eq!(
            v(
                Some("intact"),
                Some("WARNING: CPU: 1 PID: 9 at mm/rmap.c:451")
            ),
            TrialVerdict::Error,
            "a kernel report after the fallback is never blocked"
        );
        let timeout = ScheduleStatus::Infeasible {
            line: 4,
            reason: "breakpoint \"b\" was not hit".into(),
            vcpus: vec![],
            console: vec![],
        };
        assert_eq!(
            verdict(&run(timeout.clone(), Some("intact"), &["a"], None), &o),
            TrialVerdict::Infeasible
        );
        assert_eq!(
            verdict(
                &run(
                    timeout,
                    None,
                    &["a"],
                    Some("BUG: KASAN: slab-use-after-free")
                ),
                &o
            ),
            TrialVerdict::Error,
            "a crash outranks an incomplete schedule"
        );
    }

    #[test]
    fn all_oracles_must_agree_when_required() {
        let c = ScheduleStatus::Completed;
        let gone = ScheduleStatus::VmGone {
            why: "panic".into(),
        };
        let bug = Some("kernel BUG at y.c:1");
        for (all, status, oracle, report, want) in [
            (
                true,
                &gone,
                Some("reproduced"),
                bug,
                TrialVerdict::Reproduced,
            ),
            (true, &c, Some("reproduced"), None, TrialVerdict::Error),
            (true, &gone, Some("intact"), bug, TrialVerdict::Error),
            (true, &gone, None, bug, TrialVerdict::Error),
            (false, &gone, None, bug, TrialVerdict::Reproduced),
            (
                false,
                &c,
                Some("reproduced"),
                None,
                TrialVerdict::Reproduced,
            ),
        ] {
            let got = verdict(
                &run(status.clone(), oracle, &["a", "b"], report),
                &kernel_oracle(all),
            );
            assert_eq!(got, want, "all={all} {status:?} {oracle:?} {report:?}");
        }
    }

    #[test]
    fn expectations() {
        let mut c = Counts::default();
        assert!(!c.meets(Expect::Intact), "no trials proves nothing");
        assert!(
            !c.meets(Expect::IntactOrBlocked),
            "no trials proves nothing"
        );
        c.add(TrialVerdict::Passed);
        c.add(TrialVerdict::Blocked);
        assert!(
            c.meets(Expect::IntactOrBlocked)
                && !c.meets(Expect::Intact)
                && !c.meets(Expect::Reproduced)
        );
        assert_eq!(c.observed(), "1 intact, 1 blocked");
        let mut timed_out = c;
        timed_out.add(TrialVerdict::Infeasible);
        assert!(
            !timed_out.meets(Expect::IntactOrBlocked),
            "a step that timed out tested nothing"
        );
        c.add(TrialVerdict::Reproduced);
        assert!(!c.meets(Expect::IntactOrBlocked) && c.meets(Expect::Report));
        let mut all = Counts::default();
        all.add(TrialVerdict::Reproduced);
        all.add(TrialVerdict::Reproduced);
        assert_eq!(all.observed(), "reproduced");
        assert_eq!(Counts::default().observed(), "no trials");
    }
}
