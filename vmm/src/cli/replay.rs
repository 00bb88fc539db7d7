//! `memrace replay RESULT.json`: run a recorded scenario again and check that every
//! trial's breakpoint hits occur in the recorded order.

use anyhow::{bail, Context, Result};
use clap::Args;
use memrace::scenario::file::{Expect, Scenario};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReplayArgs {
    /// A `result.json` written by `memrace run`.
    pub result: PathBuf,
    /// Replay only this kernel row (its label, e.g. `madv-free-unpatched`).
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long, value_enum, default_value_t = super::boot::BackendKind::Auto)]
    pub backend: super::boot::BackendKind,
}

/// One recorded kernel row, as far as a replay needs it.
#[derive(serde::Deserialize)]
struct Recorded {
    label: String,
    variant: String,
    expect: Expect,
    schedule_name: String,
    params: BTreeMap<String, String>,
    trials: Vec<RecordedTrial>,
}

#[derive(serde::Deserialize)]
struct RecordedTrial {
    hits: Vec<String>,
    verdict: String,
}

#[derive(serde::Deserialize)]
struct RecordedResult {
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
    let scenario = Scenario::parse(Path::new(&rec.scenario_file), &rec.scenario_text, 4)?;
    let baseline = scenario.schedule.without_breakpoints();
    let accel = super::boot::choose_qemu(args.backend)?;
    super::run::check_vm_breakpoints(&scenario, accel)?;
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
    let mut cache = super::run::KernelCache::new();
    let mut all_same = true;
    for r in rows {
        let schedule = if r.schedule_name == "scenario" {
            &scenario.schedule
        } else {
            &baseline
        };
        let planned = memrace::scenario::run::KernelPlan {
            control: false,
            label: r.label.clone(),
            variant: r.variant.clone(),
            expect: r.expect,
            note: String::new(),
            schedule,
            schedule_name: r.schedule_name.clone(),
            params: r.params.clone(),
            trials: r.trials.len() as u32,
        };
        let again = super::run::run_planned(
            &scenario,
            planned,
            accel,
            &dir,
            false,
            &mut cache,
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
