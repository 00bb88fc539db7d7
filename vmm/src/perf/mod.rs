//! `memrace perf`: an A/B comparison of two kernels on mm microbenchmarks that run in
//! the guest (docs/perf.md).
//!
//! Design against drift: for each metric the kernels alternate across boots in ABBA
//! order (A B B A A B B A …), so a slow trend of the host (thermal, page cache, another
//! tenant) weighs on both equally; each boot runs warm-ups, then K timed repetitions of
//! every benchmark. Timing is taken inside the guest and sent as `SAMPLE`s; no host clock
//! times guest work. Results are written after every boot, so a run that fails half-way
//! keeps what it measured.

mod collect;
pub mod html;
pub mod report;
pub mod stats;

use crate::arch::Arch;
use crate::backend::{BackendError, Launcher, VmConfig};
use crate::boot::base_cmdline;
use crate::fsutil::write_json_atomically;
use crate::guest::{self, Job};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// A boot that did not deliver its samples, and why.
    #[error("{0}")]
    Guest(String),
    #[error(transparent)]
    Setup(#[from] guest::GuestError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Plan(String),
}

/// What guest time means in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// The guest's clock follows the host's: what the work cost in time, host noise included.
    Wall,
    /// QEMU's icount: the guest's clock counts instructions (1 ns = 1 instruction), so
    /// figures measure instructions executed and repeat without host noise.
    Icount,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Wall => "wall",
            Metric::Icount => "icount",
        }
    }

    /// What one unit of this metric is, for reports.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Wall => "ns/op (guest wall clock)",
            Metric::Icount => "instructions/op (QEMU icount)",
        }
    }

    /// Guest nanoseconds per unit of this metric.
    pub fn ns_per_unit(self) -> f64 {
        match self {
            Metric::Wall => 1.0,
            Metric::Icount => f64::from(1u32 << crate::backend::qemu::ICOUNT_SHIFT),
        }
    }
}

/// One of the two kernels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelUnderTest {
    /// The variant name (or path) as given.
    pub label: String,
    pub image: PathBuf,
    /// The build's content address (`memrace kernel list`).
    pub hash: String,
}

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfPlan {
    /// The guest architecture of both kernels (`standard` picks x86_64; results from
    /// before arm64 existed are x86_64).
    #[serde(default)]
    pub arch: Arch,
    /// A then B: changes are B relative to A.
    pub kernels: [KernelUnderTest; 2],
    pub benches: Vec<String>,
    pub threads: Vec<usize>,
    pub reps: u32,
    pub warmup: u32,
    /// Boots per kernel and metric.
    pub boots: u32,
    pub metrics: Vec<Metric>,
    pub cpus: usize,
    pub mem_mib: u64,
    /// Smallest change declared, per metric, in %.
    pub threshold_wall_pct: f64,
    pub threshold_icount_pct: f64,
}

impl PerfPlan {
    /// The default plan of `benches` on `kernels`: one thread and one per vCPU on two
    /// vCPUs, both metrics, 4 boots of 5 repetitions per kernel and metric (`quick`: 2
    /// boots of 3), thresholds 5% (wall) and 1% (icount).
    pub fn standard(kernels: [KernelUnderTest; 2], benches: Vec<String>, quick: bool) -> PerfPlan {
        let (boots, reps) = if quick { (2, 3) } else { (4, 5) };
        PerfPlan {
            arch: Arch::default(),
            kernels,
            benches,
            threads: vec![1, 2],
            reps,
            warmup: 1,
            boots,
            metrics: vec![Metric::Wall, Metric::Icount],
            cpus: 2,
            mem_mib: 512,
            threshold_wall_pct: 5.0,
            threshold_icount_pct: 1.0,
        }
    }

    pub fn threshold(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Wall => self.threshold_wall_pct,
            Metric::Icount => self.threshold_icount_pct,
        }
    }

    /// The thread counts measured under `metric`. Under icount QEMU runs every vCPU on
    /// one host thread, taking turns, so a multi-threaded figure would measure QEMU's
    /// turn-taking rather than the kernel's scalability: icount runs one thread only.
    pub fn threads(&self, metric: Metric) -> Vec<usize> {
        match metric {
            Metric::Wall => self.threads.clone(),
            Metric::Icount => self.threads.iter().copied().filter(|&t| t == 1).collect(),
        }
    }

    /// `<bench>.t<threads>` labels under `metric`, in the order the guest runs them.
    pub fn labels(&self, metric: Metric) -> Vec<String> {
        let threads = self.threads(metric);
        self.benches
            .iter()
            .flat_map(|b| threads.iter().map(move |t| format!("{b}.t{t}")))
            .collect()
    }

    /// Kernel index (0 = A, 1 = B) of each boot of one metric: ABBA ABBA …
    pub fn boot_order(&self) -> Vec<usize> {
        (0..self.boots)
            .flat_map(|i| if i % 2 == 0 { [0, 1] } else { [1, 0] })
            .collect()
    }

    fn check(&self) -> Result<(), PerfError> {
        if self.boots < 2 {
            return Err(PerfError::Plan(
                "--boots must be at least 2: the statistics need two boots per kernel".into(),
            ));
        }
        if self.benches.is_empty() || self.threads.is_empty() || self.metrics.is_empty() {
            return Err(PerfError::Plan(
                "nothing to measure: no benchmark, thread count or metric".into(),
            ));
        }
        if let Some(&m) = self.metrics.iter().find(|&&m| self.threads(m).is_empty()) {
            return Err(PerfError::Plan(format!(
                "the {} metric measures one thread only (QEMU's icount runs the vCPUs in turn); add 1 to --threads",
                m.name()
            )));
        }
        if let Some(t) = self.threads.iter().find(|&&t| t == 0 || t > self.cpus) {
            return Err(PerfError::Plan(format!(
                "--threads {t}: want 1..={} (one thread per vCPU at most; see --cpus)",
                self.cpus
            )));
        }
        Ok(())
    }
}

/// One timed repetition as the guest reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub bench: String,
    pub rep: u32,
    pub ns: u64,
    pub ops: u64,
}

/// One boot's samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootRecord {
    pub metric: Metric,
    /// 0 = A, 1 = B.
    pub kernel: usize,
    /// 1-based position among this metric's boots.
    pub sequence: u32,
    pub samples: Vec<SampleRecord>,
    pub boot_seconds: f64,
    pub seconds: f64,
}

/// A against B on one benchmark and metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub metric: Metric,
    pub bench: String,
    pub a: stats::Summary,
    pub b: stats::Summary,
    pub change: stats::Change,
}

/// Everything a run measured: written as `result.json` after every boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfResult {
    pub plan: PerfPlan,
    pub backend: String,
    pub started_unix: u64,
    pub boots: Vec<BootRecord>,
    pub comparisons: Vec<Comparison>,
    /// Every boot ran; false while running and after a failure.
    pub complete: bool,
    pub seconds: f64,
}

impl PerfResult {
    /// Each boot's per-operation values of `label` under `metric` on `kernel`, in the
    /// metric's unit.
    pub fn per_boot(&self, metric: Metric, kernel: usize, label: &str) -> Vec<Vec<f64>> {
        self.boots
            .iter()
            .filter(|b| b.metric == metric && b.kernel == kernel)
            .map(|b| {
                b.samples
                    .iter()
                    .filter(|s| s.bench == label)
                    .map(|s| s.ns as f64 / s.ops as f64 / metric.ns_per_unit())
                    .collect()
            })
            .collect()
    }

    fn compare_all(&mut self) {
        let mut out = Vec::new();
        for &metric in &self.plan.metrics {
            let labels = self.plan.labels(metric);
            let confidence = stats::per_comparison_confidence(labels.len());
            for label in labels {
                let (a, b) = (
                    self.per_boot(metric, 0, &label),
                    self.per_boot(metric, 1, &label),
                );
                if let (Some(sa), Some(sb)) = (stats::summarise(&a), stats::summarise(&b)) {
                    out.push(Comparison {
                        metric,
                        bench: label,
                        a: sa,
                        b: sb,
                        change: stats::compare(&a, &b, self.plan.threshold(metric), confidence),
                    });
                }
            }
        }
        self.comparisons = out;
    }

    /// Write `result.json`, `report.md` and `report.html` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<(), PerfError> {
        let werr = |path: PathBuf| move |source| PerfError::Write { path, source };
        let json = dir.join("result.json");
        write_json_atomically(&json, self).map_err(werr(json.clone()))?;
        for (name, text) in [
            ("report.md", report::markdown(self)),
            ("report.html", html::report(self)),
        ] {
            let path = dir.join(name);
            crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(werr(path.clone()))?;
        }
        Ok(())
    }
}

/// Progress of a run, for a progress bar.
pub enum Progress<'a> {
    /// Boot `index` of `total` starts, on this kernel and metric.
    Boot {
        index: usize,
        total: usize,
        kernel: &'a str,
        metric: Metric,
    },
    Sample(&'a SampleRecord),
}

/// Run `plan` on `launcher`, writing results into `out_dir` after every boot.
pub fn run(
    plan: PerfPlan,
    launcher: &Launcher,
    out_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PerfResult, PerfError> {
    plan.check()?;
    let started = Instant::now();
    // One initramfs per metric: the job names the thread counts that metric measures.
    let mut jobs = Vec::new();
    for &metric in &plan.metrics {
        let initramfs = out_dir.join(format!("initramfs-{}.cpio", metric.name()));
        guest::build_initramfs(&initramfs, plan.arch, &perf_job(&plan, metric), &[])?;
        let expected = collect::Expected {
            labels: plan.labels(metric),
            reps: plan.reps,
            runs_per_label: plan.reps + plan.warmup,
        };
        jobs.push((metric, initramfs, expected));
    }
    let mut result = PerfResult {
        plan,
        backend: launcher.to_string(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        boots: Vec::new(),
        comparisons: Vec::new(),
        complete: false,
        seconds: 0.0,
    };
    // The wall metric needs a TSC clocksource (see `tcg_guest_tsc_khz`); under icount
    // the TSC counts instructions and calibrates fine.
    let tsc_khz = crate::backend::qemu::tcg_guest_tsc_khz(TSC_WINDOW);
    let order = result.plan.boot_order();
    let total = order.len() * jobs.len();
    let schedule: Vec<(&(Metric, PathBuf, collect::Expected), usize)> = jobs
        .iter()
        .flat_map(|job| order.iter().map(move |&k| (job, k)))
        .collect();
    for (index, &((metric, initramfs, expected), kernel)) in schedule.iter().enumerate() {
        let metric = *metric;
        let sequence = (index % order.len()) as u32 + 1;
        let k = result.plan.kernels[kernel].clone();
        progress(Progress::Boot {
            index,
            total,
            kernel: &k.label,
            metric,
        });
        let cfg = VmConfig {
            arch: result.plan.arch,
            kernel: k.image.clone(),
            initramfs: initramfs.clone(),
            cmdline: cmdline(result.plan.arch, metric, tsc_khz),
            cpus: result.plan.cpus,
            mem_mib: result.plan.mem_mib,
            run_dir: out_dir.join(format!(
                "{}-{sequence:02}-{}",
                metric.name(),
                kernel_tag(kernel)
            )),
            debug: false,
            instruction_clock: metric == Metric::Icount,
        };
        let collected = collect::collect(launcher, &cfg, expected, &mut |s| {
            progress(Progress::Sample(s))
        });
        let collected = match collected {
            Ok(c) => c,
            Err(e) => {
                result.seconds = started.elapsed().as_secs_f64();
                result.compare_all();
                result.write(out_dir)?;
                return Err(PerfError::Guest(format!(
                    "{} boot {sequence} ({}, kernel {}): {e}",
                    metric.name(),
                    kernel_tag(kernel),
                    k.label
                )));
            }
        };
        result.boots.push(BootRecord {
            metric,
            kernel,
            sequence,
            samples: collected.samples,
            boot_seconds: collected.boot_seconds,
            seconds: collected.seconds,
        });
        result.seconds = started.elapsed().as_secs_f64();
        result.compare_all();
        result.write(out_dir)?;
    }
    result.complete = true;
    result.write(out_dir)?;
    Ok(result)
}

/// [`run`] with a progress bar over the samples (a line per boot where stderr is not
/// a terminal).
pub fn run_with_progress(
    plan: PerfPlan,
    launcher: &Launcher,
    out_dir: &Path,
) -> Result<PerfResult, PerfError> {
    let samples: usize = plan
        .metrics
        .iter()
        .map(|&m| plan.labels(m).len() * plan.reps as usize * plan.boot_order().len())
        .sum();
    let bar = indicatif::ProgressBar::new(samples as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:<28} [{elapsed_precise}] {bar:25} {pos}/{len} samples {msg}",
        )
        .expect("static template"),
    );
    let result = run(plan, launcher, out_dir, &mut |p| match p {
        Progress::Boot {
            index,
            total,
            kernel,
            metric,
        } => {
            bar.set_prefix(format!("boot {}/{total} {}", index + 1, metric.name()));
            bar.set_message(kernel.to_string());
            if bar.is_hidden() {
                eprintln!(
                    "memrace: perf boot {}/{total}: {} on {kernel}",
                    index + 1,
                    metric.name()
                );
            }
        }
        Progress::Sample(_) => bar.inc(1),
    });
    bar.finish_and_clear();
    result
}

/// How long the host's TSC is sampled to tell wall-metric guests its frequency.
const TSC_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// The kernel command line of `metric`'s boots.
fn cmdline(arch: Arch, metric: Metric, tsc_khz: Option<u64>) -> String {
    // Two fake NUMA nodes for the migration benchmark.
    let mut line = format!("{} numa=fake=2", base_cmdline(arch));
    // arm64's generic timer reports its frequency itself (CNTFRQ_EL0).
    if let (Arch::X86_64, Metric::Wall, Some(khz)) = (arch, metric, tsc_khz) {
        line.push_str(&format!(" tsc_early_khz={khz}"));
    }
    line
}

/// The guest job of `metric`'s boots.
fn perf_job(plan: &PerfPlan, metric: Metric) -> Job {
    let threads: Vec<String> = plan.threads(metric).iter().map(usize::to_string).collect();
    Job::Perf {
        params: vec![
            ("benches".to_string(), plan.benches.join(",")),
            ("threads".to_string(), threads.join(",")),
            ("reps".to_string(), plan.reps.to_string()),
            ("warmup".to_string(), plan.warmup.to_string()),
        ],
    }
}

fn kernel_tag(kernel: usize) -> &'static str {
    if kernel == 0 {
        "A"
    } else {
        "B"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(boots: u32) -> PerfPlan {
        let k = |l: &str| KernelUnderTest {
            label: l.into(),
            image: PathBuf::from("/nonexistent"),
            hash: String::new(),
        };
        PerfPlan {
            arch: Arch::X86_64,
            kernels: [k("a"), k("b")],
            benches: vec!["fork".into(), "migrate".into()],
            threads: vec![1, 2],
            reps: 3,
            warmup: 1,
            boots,
            metrics: vec![Metric::Wall],
            cpus: 2,
            mem_mib: 512,
            threshold_wall_pct: 5.0,
            threshold_icount_pct: 1.0,
        }
    }

    #[test]
    fn boots_alternate_abba_and_labels_cover_every_thread_count() {
        assert_eq!(plan(4).boot_order(), [0, 1, 1, 0, 0, 1, 1, 0]);
        assert_eq!(
            plan(2).labels(Metric::Wall),
            ["fork.t1", "fork.t2", "migrate.t1", "migrate.t2"]
        );
        assert_eq!(plan(2).labels(Metric::Icount), ["fork.t1", "migrate.t1"]);
    }

    #[test]
    fn a_plan_that_cannot_give_statistics_is_refused() {
        assert!(plan(1).check().is_err());
        let mut p = plan(2);
        p.threads = vec![3];
        assert!(p.check().is_err());
        p.threads = vec![2];
        p.metrics = vec![Metric::Icount];
        assert!(p.check().is_err());
        assert!(plan(2).check().is_ok());
    }
}
