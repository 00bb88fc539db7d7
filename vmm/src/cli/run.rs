//! `memrace run [SCENARIO] [--trials N] [--kernel VARIANT]… [--controls] [--all]`

use anyhow::Result;
use clap::Args;
use memrace::arch::Arch;
use memrace::backend::Launcher;
use memrace::report;
use memrace::scenario::file::{self, Scenario};
use memrace::scenario::orchestrate::{self, Kernels, Selection, Settings};
use memrace::scenario::run::ScenarioResult;
use std::path::PathBuf;

/// The race the README's first command shows.
pub const DEFAULT_SCENARIO: &str = "madv-free-dio";

#[derive(Args)]
pub struct RunArgs {
    /// Scenario name (a file in scenarios/) or path.
    pub scenario: Option<String>,
    /// Trials per kernel (default: the scenario's). Controls keep their own counts.
    #[arg(long)]
    pub trials: Option<u32>,
    /// Run only these kernel variants of the scenario.
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Also run the scenario's negative controls and baselines.
    #[arg(long)]
    pub controls: bool,
    /// Run every scenario and print one summary table.
    #[arg(long, conflicts_with = "scenario")]
    pub all: bool,
    #[arg(long, value_enum, default_value_t = memrace::backend::choice::BackendKind::Auto)]
    pub backend: memrace::backend::choice::BackendKind,
    /// Guest architecture: the kernels are built for it and the VM emulates it.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// Directory for result.json and report.md (default: runs/<scenario>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Echo the guest console.
    #[arg(long, short)]
    pub verbose: bool,
}

fn out_dir(args: &RunArgs, name: &str) -> Result<PathBuf> {
    Ok(match &args.out {
        Some(d) if !args.all => d.clone(),
        Some(d) => d.join(name),
        None => super::stamped_runs_dir(name)?,
    })
}

/// Run one scenario; returns its result (also written to disk after every trial).
fn run_scenario(
    scenario: &Scenario,
    args: &RunArgs,
    launcher: &Launcher,
    kernels: &mut Kernels,
) -> Result<ScenarioResult> {
    let dir = out_dir(args, &scenario.name)?;
    eprintln!(
        "memrace: scenario {} on {} guests — results in {}",
        scenario.name,
        kernels.arch(),
        dir.display()
    );
    let baseline = scenario.schedule.without_breakpoints();
    let selection = Selection {
        kernels: &args.kernels,
        trials: args.trials,
        controls: args.controls,
    };
    let plans = orchestrate::plans(scenario, &baseline, &selection)?;
    for warning in orchestrate::preflight(scenario, &plans, kernels)? {
        eprintln!("memrace: warning: {warning}");
    }
    let settings = Settings {
        launcher,
        dir: &dir,
        verbose: args.verbose,
    };
    let result = orchestrate::run_scenario(scenario, plans, &settings, kernels)?;
    println!(
        "{}",
        report::table(
            &result
                .kernels
                .iter()
                .chain(&result.controls)
                .cloned()
                .collect::<Vec<_>>()
        )
    );
    println!(
        "report: {}\nresults: {}",
        dir.join("report.md").display(),
        dir.join("result.json").display()
    );
    Ok(result)
}

pub fn run(args: RunArgs) -> Result<i32> {
    let launcher = super::boot::choose_backend(args.backend, args.arch)?;
    let dir = file::default_dir();
    let names: Vec<String> = if args.all {
        file::names(&dir)
    } else {
        vec![args
            .scenario
            .clone()
            .unwrap_or_else(|| DEFAULT_SCENARIO.to_string())]
    };
    // Validate every scenario before booting anything.
    let scenarios = names
        .iter()
        .map(|n| file::find(&dir, n, launcher.max_breakpoints(args.arch)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut kernels = Kernels::new(args.arch);
    for s in &scenarios {
        orchestrate::check_vm_breakpoints(s, &launcher)?;
    }
    if !args.all {
        let r = run_scenario(&scenarios[0], &args, &launcher, &mut kernels)?;
        if !r.held {
            eprintln!("memrace: EXPECTATIONS NOT MET (see the report above)");
        }
        return Ok(if r.held { 0 } else { 3 });
    }
    // One scenario that cannot run (a kernel that does not build, a symbol it lacks) is
    // reported in the summary; the others still run.
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for s in &scenarios {
        match run_scenario(s, &args, &launcher, &mut kernels) {
            Ok(r) => summary.push(r),
            Err(e) => {
                eprintln!("memrace: scenario {} could not run: {e:#}", s.name);
                failed.push((s.name.clone(), format!("{e:#}")));
            }
        }
    }
    println!("\nSUMMARY ({} guests, {launcher})", args.arch);
    println!(
        "{:<26} {}",
        "SCENARIO",
        report::table(&[]).lines().next().unwrap_or("")
    );
    for r in &summary {
        for k in r.kernels.iter().chain(&r.controls) {
            let row = report::table(std::slice::from_ref(k));
            println!("{:<26} {}", r.scenario, row.lines().nth(1).unwrap_or(""));
        }
    }
    for (name, why) in &failed {
        let first = why.lines().next().unwrap_or("");
        println!("{name:<26} COULD NOT RUN: {first}");
    }
    let held = failed.is_empty() && summary.iter().all(|r| r.held);
    if !held {
        eprintln!("memrace: EXPECTATIONS NOT MET (see the summary above)");
    }
    Ok(if held { 0 } else { 3 })
}
