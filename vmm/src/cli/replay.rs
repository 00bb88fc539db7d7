//! `memrace replay RESULT.json`: run a recorded scenario again and check that every
//! trial's breakpoint hits occur in the recorded order.
//!
//! A replay only means something on the same kernel build and schedule: it refuses
//! rows recorded on another build (or before builds were recorded) unless `--force`,
//! and rows without trials, which would compare nothing.

use anyhow::{bail, Context, Result};
use clap::Args;
use memrace::kernel::{self, recipe::Images};
use memrace::scenario::file::{Expect, Oracle, Scenario};
use memrace::sched::schedule::Schedule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReplayArgs {
    /// A `result.json` written by `memrace run`.
    pub result: PathBuf,
    /// Replay only this kernel row (its label, e.g. `madv-free-unpatched`).
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long, value_enum, default_value_t = memrace::backend::choice::BackendKind::Auto)]
    pub backend: memrace::backend::choice::BackendKind,
    /// Replay even if the kernel build or the schedule differs from the recorded one
    /// (the comparison is then between different kernels or schedules).
    #[arg(long)]
    pub force: bool,
}

/// One recorded kernel row, as far as a replay needs it.
#[derive(serde::Deserialize)]
struct Recorded {
    label: String,
    variant: String,
    /// Absent in results written before memrace recorded it.
    #[serde(default)]
    kernel_hash: Option<String>,
    expect: Expect,
    schedule_name: String,
    #[serde(default)]
    schedule_hash: Option<String>,
    params: BTreeMap<String, String>,
    cmdline: String,
    oracle: Oracle,
    trials_per_boot: u32,
    trials: Vec<RecordedTrial>,
}

#[derive(serde::Deserialize)]
struct RecordedTrial {
    hits: Vec<String>,
    verdict: String,
}

#[derive(serde::Deserialize)]
struct RecordedResult {
    /// Results from before arm64 existed are x86_64.
    #[serde(default)]
    arch: memrace::arch::Arch,
    scenario_file: String,
    scenario_text: String,
    kernels: Vec<Recorded>,
    controls: Vec<Recorded>,
}

pub fn run(args: ReplayArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&args.result)
        .with_context(|| format!("reading {}", args.result.display()))?;
    let rec: RecordedResult = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a memrace result.json", args.result.display()))?;
    let launcher = super::boot::choose_backend(args.backend, rec.arch)?;
    let scenario = Scenario::parse(
        Path::new(&rec.scenario_file),
        &rec.scenario_text,
        launcher.max_breakpoints(rec.arch),
    )?;
    let baseline = scenario.schedule.without_breakpoints();
    memrace::scenario::orchestrate::check_vm_breakpoints(&scenario, &launcher)?;
    let dir = args.result.with_file_name("replay");
    std::fs::create_dir_all(&dir)?;
    let rows: Vec<&Recorded> = rec
        .kernels
        .iter()
        .chain(&rec.controls)
        .filter(|r| args.kernel.as_ref().is_none_or(|k| &r.label == k))
        .collect();
    if rows.is_empty() {
        bail!(
            "{} has no kernel row {:?}",
            args.result.display(),
            args.kernel.unwrap_or_default()
        );
    }
    let schedule_of = |r: &Recorded| {
        if r.schedule_name == "scenario" {
            &scenario.schedule
        } else {
            &baseline
        }
    };
    check_rows(&args, rec.arch, &rows, &schedule_of)?;
    let mut kernels = memrace::scenario::orchestrate::Kernels::new(rec.arch);
    let settings = memrace::scenario::orchestrate::Settings {
        launcher: &launcher,
        dir: &dir,
        verbose: false,
    };
    let mut all_same = true;
    for r in rows {
        let schedule = schedule_of(r);
        let planned = memrace::scenario::run::KernelPlan {
            control: false,
            label: r.label.clone(),
            variant: r.variant.clone(),
            expect: r.expect,
            note: String::new(),
            schedule,
            schedule_name: r.schedule_name.clone(),
            params: r.params.clone(),
            cmdline: r.cmdline.clone(),
            oracle: r.oracle.clone(),
            trials: r.trials.len() as u32,
            trials_per_boot: r.trials_per_boot,
        };
        let again = memrace::scenario::orchestrate::run_plan(
            &scenario,
            planned,
            &settings,
            &mut kernels,
            &mut |_| {},
        )?;
        let same_hits = r
            .trials
            .iter()
            .zip(&again.trials)
            .filter(|(a, b)| a.hits == b.run.hits)
            .count();
        let same_verdicts = r
            .trials
            .iter()
            .zip(&again.trials)
            .filter(|(a, b)| {
                serde_json::to_value(b.verdict)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .as_deref()
                    == Some(&a.verdict)
            })
            .count();
        let n = r.trials.len();
        println!("{:<40} hit order identical in {same_hits}/{n} trials, verdict identical in {same_verdicts}/{n}", r.label);
        all_same &= same_hits == n && again.trials.len() == n;
    }
    Ok(if all_same { 0 } else { 3 })
}

/// Refuse what a replay cannot compare: rows without trials, and (unless `--force`,
/// which says loudly what it overrides) rows recorded on another kernel build or
/// with another schedule than the one replayed now.
fn check_rows<'s>(
    args: &ReplayArgs,
    arch: memrace::arch::Arch,
    rows: &[&Recorded],
    schedule_of: &dyn Fn(&Recorded) -> &'s Schedule,
) -> Result<()> {
    if let Some(empty) = rows.iter().find(|r| r.trials.is_empty()) {
        bail!(
            "{}: kernel row {:?} recorded 0 trials (the run ended before its first trial?): \
             there is nothing to compare; replay another row with --kernel",
            args.result.display(),
            empty.label
        );
    }
    let images = Images::open(&kernel::default_images_dir())?;
    let mut problems = Vec::new();
    for r in rows {
        let now = kernel::current_hash(&images, arch, &images.variant(&r.variant)?)?;
        match &r.kernel_hash {
            Some(then) if *then == now => {}
            Some(then) => problems.push(format!(
                "{}: recorded on kernel build {then}, but {} builds as {now} now (its recipe, \
                 patches, config or gcc changed)",
                r.label, r.variant
            )),
            None => problems.push(format!(
                "{}: the result records no kernel build (written by an older memrace); the \
                 current build of {} is {now}",
                r.label, r.variant
            )),
        }
        let schedule_now = schedule_of(r).fingerprint();
        match &r.schedule_hash {
            Some(then) if *then == schedule_now => {}
            Some(then) => problems.push(format!(
                "{}: recorded with schedule {then}, but the recorded scenario parses to \
                 schedule {schedule_now} now",
                r.label
            )),
            None => problems.push(format!(
                "{}: the result records no schedule hash (written by an older memrace)",
                r.label
            )),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    if !args.force {
        bail!(
            "{} cannot be replayed faithfully:\n  {}\n  rerun `memrace run` to record a new \
             result, or pass --force to replay anyway",
            args.result.display(),
            problems.join("\n  ")
        );
    }
    for p in &problems {
        eprintln!("memrace: WARNING: --force: replaying although {p}");
    }
    eprintln!(
        "memrace: WARNING: --force: hit orders and verdicts below compare DIFFERENT kernels or \
         schedules"
    );
    Ok(())
}
