//! `memrace perf --kernel A --kernel B [--bench NAME…] [--quick]`: parse, resolve the
//! kernels, drive `memrace::perf` with a progress bar, print the Markdown report.

use anyhow::{bail, Context, Result};
use clap::Args;
use memrace::perf::{self, KernelUnderTest, Metric, PerfPlan};
use std::path::PathBuf;

#[derive(Args)]
pub struct PerfArgs {
    /// The two kernels, A then B (variant names or vmlinux/bzImage paths); changes are B
    /// relative to A.
    #[arg(long = "kernel", required = true, num_args = 1)]
    pub kernels: Vec<String>,
    /// Benchmarks to run (default: all), comma-separated or repeated.
    #[arg(long = "bench", value_delimiter = ',')]
    pub benches: Vec<String>,
    /// Thread counts, comma-separated (default: 1 and one per vCPU).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Metrics to measure, comma-separated (default: both).
    #[arg(long = "metric", value_enum, value_delimiter = ',')]
    pub metrics: Vec<Metric>,
    /// Boots per kernel and metric (ABBA order; at least 2).
    #[arg(long)]
    pub boots: Option<u32>,
    /// Timed repetitions per benchmark and boot.
    #[arg(long)]
    pub reps: Option<u32>,
    /// Untimed repetitions before them.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// The short mode: 2 boots per kernel and metric, 3 repetitions.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value_t = 2)]
    pub cpus: usize,
    /// Guest memory: 512M, 1G, or MiB as a plain number.
    #[arg(long, default_value = "512M")]
    pub mem: String,
    /// Smallest wall-time change declared, in %.
    #[arg(long, default_value_t = 5.0)]
    pub threshold_wall: f64,
    /// Smallest instruction-count change declared, in %.
    #[arg(long, default_value_t = 1.0)]
    pub threshold_icount: f64,
    #[arg(long, value_enum, default_value_t = memrace::backend::choice::BackendKind::Auto)]
    pub backend: memrace::backend::choice::BackendKind,
    /// Directory for result.json, report.md and report.html (default: runs/perf-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn kernel(spec: &str, launcher: &memrace::backend::Launcher) -> Result<KernelUnderTest> {
    let image = super::boot::resolve_kernel(spec, launcher)?;
    let hash = if spec.contains('/') {
        String::new()
    } else {
        super::kernel::ensure(memrace::arch::Arch::X86_64, spec)?
            .manifest
            .hash
    };
    Ok(KernelUnderTest {
        label: spec.to_string(),
        image,
        hash,
    })
}

fn plan(args: &PerfArgs, launcher: &memrace::backend::Launcher) -> Result<PerfPlan> {
    let [a, b] = args.kernels.as_slice() else {
        bail!(
            "--kernel: give exactly two kernels, A then B (got {}); for an A/A control give the same one twice",
            args.kernels.len()
        );
    };
    for name in &args.benches {
        if !control_proto::PERF_BENCHES.contains(&name.as_str()) {
            bail!(
                "--bench {name:?}: no such benchmark; known: {}",
                control_proto::PERF_BENCHES.join(", ")
            );
        }
    }
    if !(0.0..100.0).contains(&args.threshold_wall)
        || !(0.0..100.0).contains(&args.threshold_icount)
    {
        bail!("--threshold-wall/--threshold-icount: want a percentage in 0..100");
    }
    let mem_mib =
        memrace::backend::parse_mem_mib(&args.mem).map_err(|e| anyhow::anyhow!("--mem: {e}"))?;
    let benches = if args.benches.is_empty() {
        control_proto::PERF_BENCHES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.benches.clone()
    };
    let mut plan = PerfPlan::standard(
        [kernel(a, launcher)?, kernel(b, launcher)?],
        benches,
        args.quick,
    );
    plan.cpus = args.cpus;
    plan.threads = if args.threads.is_empty() {
        vec![1, args.cpus]
    } else {
        args.threads.clone()
    };
    plan.threads.dedup();
    if !args.metrics.is_empty() {
        plan.metrics = args.metrics.clone();
    }
    plan.reps = args.reps.unwrap_or(plan.reps);
    plan.boots = args.boots.unwrap_or(plan.boots);
    plan.warmup = args.warmup;
    plan.mem_mib = mem_mib;
    plan.threshold_wall_pct = args.threshold_wall;
    plan.threshold_icount_pct = args.threshold_icount;
    Ok(plan)
}

fn out_dir(args: &PerfArgs) -> Result<PathBuf> {
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => super::stamped_runs_dir("perf")?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn run(args: PerfArgs) -> Result<i32> {
    let launcher = super::boot::choose_backend(args.backend)?;
    if let memrace::backend::Launcher::Qemu(_) = launcher {
        memrace::backend::qemu::find_qemu()?;
    }
    let plan = plan(&args, &launcher)?;
    let dir = out_dir(&args)?;
    let result = perf::run_with_progress(plan, &launcher, &dir);
    let result = result.with_context(|| {
        format!(
            "perf run failed; what it measured is in {}",
            dir.join("result.json").display()
        )
    })?;
    print!("{}", perf::report::markdown(&result));
    eprintln!(
        "memrace: perf took {:.0} s; results in {} (report.md, report.html, result.json)",
        result.seconds,
        dir.display()
    );
    Ok(0)
}
