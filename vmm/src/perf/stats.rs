//! Statistics of an A/B comparison (docs/perf.md, "Statistics").
//!
//! The unit of replication is the boot, not the repetition: repetitions in one boot share
//! its page layout, caches and host load, so they are not independent. Each boot is
//! reduced to the median of its repetitions, and the change B/A is estimated from the
//! boots' log medians with Welch's t interval (unequal variances), exponentiated back to
//! a ratio. A change is declared only when that interval excludes zero and the point
//! estimate passes the metric's threshold.
//!
//! One run makes many comparisons (every benchmark, thread count and metric), and "no
//! change anywhere" is a statement about all of them: at 95% each, an A/A run of 24 noisy
//! comparisons would declare something about two times in three. So the intervals of one
//! metric are simultaneous (Bonferroni): with m comparisons each is a 1 − 0.05/m interval,
//! and the chance that any of them excludes a true zero is at most 5%.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};
use statrs::statistics::{Data, Median, Statistics};

/// Family-wise confidence level of one metric's intervals.
pub const CONFIDENCE: f64 = 0.95;

/// The confidence of each of `comparisons` simultaneous intervals (Bonferroni).
pub fn per_comparison_confidence(comparisons: usize) -> f64 {
    1.0 - (1.0 - CONFIDENCE) / comparisons.max(1) as f64
}

/// One kernel's figures for one benchmark and metric, in ns per operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub samples: usize,
    pub boots: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Standard deviation of all repetitions, in % of their mean.
    pub stddev_pct: f64,
}

/// What the comparison concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// B is slower: the interval is above zero and the change passes the threshold.
    Regression,
    /// B is faster, by the same rule.
    Improvement,
    NoChange,
    /// Fewer than two boots with samples on a side: no interval can be computed.
    Insufficient,
}

/// B against A.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Estimated change of B relative to A, in % (positive: B takes longer).
    pub pct: f64,
    /// The confidence interval of `pct`, at `confidence`.
    pub ci_low_pct: f64,
    pub ci_high_pct: f64,
    /// This interval's own level: 95% shared among the metric's comparisons.
    pub confidence: f64,
    pub verdict: Verdict,
}

/// Summarise one kernel's repetitions, grouped by boot (ns per operation).
pub fn summarise(boots: &[Vec<f64>]) -> Option<Summary> {
    let all: Vec<f64> = boots.iter().flatten().copied().collect();
    if all.is_empty() {
        return None;
    }
    let mean = all.iter().mean();
    let stddev = if all.len() > 1 {
        all.iter().std_dev()
    } else {
        0.0
    };
    Some(Summary {
        samples: all.len(),
        boots: boots.iter().filter(|b| !b.is_empty()).count(),
        median: Data::new(all.clone()).median(),
        min: Statistics::min(all.iter()),
        max: Statistics::max(all.iter()),
        stddev_pct: if mean > 0.0 {
            100.0 * stddev / mean
        } else {
            0.0
        },
    })
}

/// The natural log of each non-empty boot's median.
fn log_boot_medians(boots: &[Vec<f64>]) -> Vec<f64> {
    boots
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| Data::new(b.clone()).median().max(f64::MIN_POSITIVE).ln())
        .collect()
}

/// Compare B's boots to A's with an interval at `confidence` (see
/// [`per_comparison_confidence`]). `threshold_pct` is the smallest change worth declaring.
pub fn compare(a: &[Vec<f64>], b: &[Vec<f64>], threshold_pct: f64, confidence: f64) -> Change {
    let (la, lb) = (log_boot_medians(a), log_boot_medians(b));
    if la.len() < 2 || lb.len() < 2 {
        let pct = match (la.first(), lb.first()) {
            (Some(x), Some(y)) => 100.0 * ((y - x).exp() - 1.0),
            _ => f64::NAN,
        };
        return Change {
            pct,
            ci_low_pct: f64::NAN,
            ci_high_pct: f64::NAN,
            confidence,
            verdict: Verdict::Insufficient,
        };
    }
    let (na, nb) = (la.len() as f64, lb.len() as f64);
    let (va, vb) = (la.iter().variance() / na, lb.iter().variance() / nb);
    let diff = lb.iter().mean() - la.iter().mean();
    let se = (va + vb).sqrt();
    let half = if se > 0.0 {
        // Welch–Satterthwaite degrees of freedom.
        let df = (va + vb).powi(2) / (va.powi(2) / (na - 1.0) + vb.powi(2) / (nb - 1.0));
        let t = StudentsT::new(0.0, 1.0, df)
            .map(|d| d.inverse_cdf(0.5 + confidence / 2.0))
            .unwrap_or(f64::INFINITY);
        t * se
    } else {
        // Every boot gave the same median on both sides (an instruction count can):
        // the interval is the point.
        0.0
    };
    let pct = |x: f64| 100.0 * (x.exp() - 1.0);
    let (low, high) = (pct(diff - half), pct(diff + half));
    let change = pct(diff);
    let verdict = if low > 0.0 && change >= threshold_pct {
        Verdict::Regression
    } else if high < 0.0 && change <= -threshold_pct {
        Verdict::Improvement
    } else {
        Verdict::NoChange
    };
    Change {
        pct: change,
        ci_low_pct: low,
        ci_high_pct: high,
        confidence,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boots(medians: &[f64]) -> Vec<Vec<f64>> {
        medians
            .iter()
            .map(|m| vec![m * 0.99, *m, m * 1.01])
            .collect()
    }

    #[test]
    fn summary_of_repetitions() {
        let s = summarise(&[vec![1.0, 2.0], vec![3.0]]).unwrap();
        assert_eq!(
            (s.samples, s.boots, s.median, s.min, s.max),
            (3, 2, 2.0, 1.0, 3.0)
        );
        assert!((s.stddev_pct - 50.0).abs() < 1e-9);
        assert_eq!(summarise(&[vec![]]), None);
    }

    #[test]
    fn a_clear_slowdown_is_a_regression_with_an_interval_around_it() {
        let c = compare(
            &boots(&[100.0, 102.0, 99.0]),
            &boots(&[150.0, 149.0, 152.0]),
            2.0,
            0.95,
        );
        assert_eq!(c.verdict, Verdict::Regression);
        assert!(c.ci_low_pct > 40.0 && c.ci_high_pct < 60.0, "{c:?}");
        assert!((c.pct - 49.8).abs() < 1.0, "{c:?}");
        let back = compare(
            &boots(&[150.0, 149.0, 152.0]),
            &boots(&[100.0, 102.0, 99.0]),
            2.0,
            0.95,
        );
        assert_eq!(back.verdict, Verdict::Improvement);
    }

    #[test]
    fn noise_and_small_changes_are_not_declared() {
        // Overlapping boots: the interval spans zero.
        let c = compare(&boots(&[100.0, 110.0]), &boots(&[105.0, 98.0]), 2.0, 0.95);
        assert_eq!(c.verdict, Verdict::NoChange, "{c:?}");
        assert!(c.ci_low_pct < 0.0 && c.ci_high_pct > 0.0);
        // Significant but below the threshold.
        let c = compare(&boots(&[100.0, 100.1]), &boots(&[101.0, 101.1]), 2.0, 0.95);
        assert!(c.ci_low_pct > 0.0, "{c:?}");
        assert_eq!(c.verdict, Verdict::NoChange);
    }

    #[test]
    fn simultaneous_intervals_are_wider_and_can_withdraw_a_marginal_change() {
        assert!((per_comparison_confidence(10) - 0.995).abs() < 1e-12);
        assert_eq!(per_comparison_confidence(0), CONFIDENCE);
        let (a, b) = (boots(&[100.0, 102.0, 99.0]), boots(&[104.0, 106.0, 104.5]));
        let single = compare(&a, &b, 2.0, 0.95);
        let family = compare(&a, &b, 2.0, per_comparison_confidence(24));
        assert_eq!(single.verdict, Verdict::Regression, "{single:?}");
        assert_eq!(family.verdict, Verdict::NoChange, "{family:?}");
        assert_eq!(single.pct, family.pct);
        assert!(family.ci_low_pct < single.ci_low_pct && family.ci_high_pct > single.ci_high_pct);
    }

    #[test]
    fn identical_counts_give_a_point_interval_and_one_boot_is_not_enough() {
        let c = compare(&boots(&[100.0, 100.0]), &boots(&[100.0, 100.0]), 1.0, 0.95);
        assert_eq!((c.pct, c.ci_low_pct, c.ci_high_pct), (0.0, 0.0, 0.0));
        assert_eq!(c.verdict, Verdict::NoChange);
        let c = compare(&boots(&[100.0]), &boots(&[200.0, 201.0]), 1.0, 0.95);
        assert_eq!(c.verdict, Verdict::Insufficient);
        assert!((c.pct - 100.0).abs() < 1e-9);
    }
}
