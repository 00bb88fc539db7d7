//! What one scenario showed on each kernel, the verdict of the patched kernel relative
//! to the base, and the exit code of the whole validation.

use crate::scenario::run::KernelRun;
use crate::scenario::verdict::TrialVerdict;
use serde::Serialize;

/// Nothing regressed and every verdict was reached.
pub const EXIT_OK: i32 = 0;
/// Bad input or a failure before any verdict (the CLI's code for every error).
pub const EXIT_BAD_INPUT: i32 = 1;
/// A race regression: the patched kernel reproduces a race the base does not, or
/// prints a kernel report (BUG, WARN, KASAN) under a schedule.
pub const EXIT_RACE_REGRESSION: i32 = 3;
/// A declared performance regression.
pub const EXIT_PERF_REGRESSION: i32 = 4;
/// Both of the above.
pub const EXIT_RACE_AND_PERF_REGRESSION: i32 = 5;
/// No regression was found, but some scenario reached no verdict (a bound passed, the
/// VM failed): the check did not run in full, so this is not a pass.
pub const EXIT_INCONCLUSIVE: i32 = 6;

/// What a scenario's trials showed on one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The oracle fired, in schedule order, in `count` of `trials`.
    Reproduced { count: u32, trials: u32 },
    /// Every trial passed, or was blocked by the kernel as a correct one may be.
    Intact { passed: u32, blocked: u32 },
    /// A kernel report that is not the scenario's oracle (quoted headline).
    KernelReport { quote: String },
    /// Some trial tested nothing (infeasible, VM failure): no conclusion.
    Inconclusive { why: String },
}

impl Outcome {
    /// The outcome of one kernel's run. A single reproduction is enough: the schedule
    /// forces the interleaving, so one reproduction shows the kernel allows it.
    pub fn of(run: &KernelRun) -> Outcome {
        let c = run.counts;
        if c.reproduced > 0 {
            return Outcome::Reproduced {
                count: c.reproduced,
                trials: c.trials,
            };
        }
        if let Some(report) = run.trials.iter().find_map(|t| t.run.kernel_report.as_ref()) {
            return Outcome::KernelReport {
                quote: report.headline.clone(),
            };
        }
        if c.trials > 0 && c.passed + c.blocked == c.trials {
            return Outcome::Intact {
                passed: c.passed,
                blocked: c.blocked,
            };
        }
        let why = run
            .trials
            .iter()
            .find(|t| !matches!(t.verdict, TrialVerdict::Passed | TrialVerdict::Blocked))
            .map_or_else(
                || "no trials ran".to_string(),
                |t| format!("trial {}: {}", t.run.trial, t.why),
            );
        Outcome::Inconclusive {
            why: format!("{} ({why})", c.observed()),
        }
    }

    /// Short text for tables.
    pub fn text(&self) -> String {
        match self {
            Outcome::Reproduced { count, trials } => format!("reproduced {count}/{trials}"),
            Outcome::Intact { passed, blocked: 0 } => format!("intact {passed}/{passed}"),
            Outcome::Intact { passed, blocked } => {
                format!("intact ({passed} passed, {blocked} blocked)")
            }
            Outcome::KernelReport { quote } => format!("kernel report: {quote}"),
            Outcome::Inconclusive { why } => format!("inconclusive: {why}"),
        }
    }
}

/// The patched kernel (B) against the base (A) on one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaceVerdict {
    /// B reproduces where A was intact.
    Regression,
    /// B prints a kernel report under the schedule.
    KernelReport,
    /// A reproduced (or reported) where B is intact.
    FixConfirmed,
    Unchanged,
    /// The scenario cannot run on one of the kernels (a breakpoint's symbol is absent).
    NotApplicable,
    /// One side reached no conclusion.
    Inconclusive,
}

impl RaceVerdict {
    pub fn compare(a: &Outcome, b: &Outcome) -> RaceVerdict {
        use Outcome::*;
        match (a, b) {
            (_, KernelReport { .. }) => RaceVerdict::KernelReport,
            (Inconclusive { .. }, _) | (_, Inconclusive { .. }) => RaceVerdict::Inconclusive,
            (Intact { .. }, Reproduced { .. }) => RaceVerdict::Regression,
            (Reproduced { .. } | KernelReport { .. }, Intact { .. }) => RaceVerdict::FixConfirmed,
            (Reproduced { .. }, Reproduced { .. }) | (Intact { .. }, Intact { .. }) => {
                RaceVerdict::Unchanged
            }
            // The base crashed where the patch reaches the race: neither a fix nor the
            // same behaviour.
            (KernelReport { .. }, Reproduced { .. }) => RaceVerdict::Inconclusive,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            RaceVerdict::Regression => "REGRESSION",
            RaceVerdict::KernelReport => "KERNEL REPORT",
            RaceVerdict::FixConfirmed => "fix confirmed",
            RaceVerdict::Unchanged => "unchanged",
            RaceVerdict::NotApplicable => "not applicable",
            RaceVerdict::Inconclusive => "INCONCLUSIVE",
        }
    }

    /// A verdict against the patch.
    pub fn is_regression(self) -> bool {
        matches!(self, RaceVerdict::Regression | RaceVerdict::KernelReport)
    }
}

/// The exit code for these race verdicts and whether perf declared a regression.
pub fn exit_code(races: &[RaceVerdict], perf_regressed: bool) -> i32 {
    let race_regressed = races.iter().any(|v| v.is_regression());
    match (race_regressed, perf_regressed) {
        (true, true) => EXIT_RACE_AND_PERF_REGRESSION,
        (true, false) => EXIT_RACE_REGRESSION,
        (false, true) => EXIT_PERF_REGRESSION,
        (false, false) if races.contains(&RaceVerdict::Inconclusive) => EXIT_INCONCLUSIVE,
        (false, false) => EXIT_OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repro() -> Outcome {
        Outcome::Reproduced {
            count: 3,
            trials: 3,
        }
    }
    fn intact() -> Outcome {
        Outcome::Intact {
            passed: 2,
            blocked: 1,
        }
    }
    fn report() -> Outcome {
        Outcome::KernelReport {
            quote: "BUG: KASAN: slab-use-after-free in unlink_anon_vmas".into(),
        }
    }
    fn unknown() -> Outcome {
        Outcome::Inconclusive {
            why: "infeasible".into(),
        }
    }

    #[test]
    fn verdicts_are_relative_to_the_base() {
        use RaceVerdict::*;
        for (a, b, want) in [
            (intact(), repro(), Regression),
            (repro(), intact(), FixConfirmed),
            (report(), intact(), FixConfirmed),
            (repro(), repro(), Unchanged),
            (intact(), intact(), Unchanged),
            (intact(), report(), KernelReport),
            (repro(), report(), KernelReport),
            (unknown(), intact(), Inconclusive),
            (repro(), unknown(), Inconclusive),
            (report(), repro(), Inconclusive),
        ] {
            assert_eq!(RaceVerdict::compare(&a, &b), want, "{a:?} → {b:?}");
        }
    }

    #[test]
    fn exit_codes_are_distinct_and_inconclusive_is_not_a_pass() {
        use RaceVerdict::*;
        assert_eq!(
            exit_code(&[Unchanged, FixConfirmed, NotApplicable], false),
            EXIT_OK
        );
        assert_eq!(
            exit_code(&[Unchanged, Regression], false),
            EXIT_RACE_REGRESSION
        );
        assert_eq!(exit_code(&[KernelReport], false), EXIT_RACE_REGRESSION);
        assert_eq!(exit_code(&[Unchanged], true), EXIT_PERF_REGRESSION);
        assert_eq!(
            exit_code(&[Regression], true),
            EXIT_RACE_AND_PERF_REGRESSION
        );
        assert_eq!(
            exit_code(&[Unchanged, Inconclusive], false),
            EXIT_INCONCLUSIVE
        );
        assert_eq!(exit_code(&[Inconclusive], true), EXIT_PERF_REGRESSION);
        let codes = [
            EXIT_OK,
            EXIT_BAD_INPUT,
            EXIT_RACE_REGRESSION,
            EXIT_PERF_REGRESSION,
            EXIT_RACE_AND_PERF_REGRESSION,
            EXIT_INCONCLUSIVE,
        ];
        let distinct: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
        // clap exits 2 on a usage error: no verdict may mean that.
        assert!(!codes.contains(&2));
    }
}
