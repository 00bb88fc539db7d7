//! `memrace run [SCENARIO] [--trials N] [--kernel VARIANT]… [--controls] [--all]`

use anyhow::{bail, Context, Result};
use clap::Args;
use memrace::backend::Launcher;
use memrace::debug::Symbols;
use memrace::report;
use memrace::scenario::file::{self, Scenario};
use memrace::scenario::run::{run_kernel, KernelPlan, KernelRun, RunContext, ScenarioResult};
use memrace::sched::engine::Introspect;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The race the README's first command shows.
pub const DEFAULT_SCENARIO: &str = "madv-free-dio";
/// x86 debug registers per vCPU; schedules are checked against this before boot.
const MAX_BREAKPOINTS: usize = 4;

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
    #[arg(long, value_enum, default_value_t = super::boot::BackendKind::Auto)]
    pub backend: super::boot::BackendKind,
    /// Directory for result.json and report.md (default: runs/<scenario>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Echo the guest console.
    #[arg(long, short)]
    pub verbose: bool,
}

pub struct Loaded {
    symbols: Symbols,
    hash: String,
}

pub fn load_kernel(
    variant: &str,
    cache: &mut BTreeMap<String, (PathBuf, std::rc::Rc<Loaded>)>,
) -> Result<(PathBuf, std::rc::Rc<Loaded>)> {
    if let Some(v) = cache.get(variant) {
        return Ok(v.clone());
    }
    let k = super::kernel::ensure(variant)?;
    let symbols = Symbols::load(&k.vmlinux())
        .with_context(|| format!("loading symbols of {}", k.vmlinux().display()))?;
    let hash = k.manifest.hash.clone();
    // Symbols always come from the vmlinux; the guest boots what the variant says.
    let v = (k.boot_image(), std::rc::Rc::new(Loaded { symbols, hash }));
    cache.insert(variant.to_string(), v.clone());
    Ok(v)
}

fn out_dir(args: &RunArgs, name: &str) -> Result<PathBuf> {
    let dir = match &args.out {
        Some(d) if !args.all => d.clone(),
        Some(d) => d.join(name),
        None => super::stamped_runs_dir(name)?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub type KernelCache = BTreeMap<String, (PathBuf, std::rc::Rc<Loaded>)>;

/// Run one kernel's trials with a progress bar; `snapshot` sees every partial result.
pub fn run_planned(
    scenario: &Scenario,
    plan: KernelPlan,
    launcher: &Launcher,
    dir: &std::path::Path,
    verbose: bool,
    cache: &mut KernelCache,
    snapshot: &mut dyn FnMut(&KernelRun),
) -> Result<KernelRun> {
    let (image, loaded) = load_kernel(&plan.variant, cache)?;
    // The exec workload's programs, compiled and checked before the kernel's first boot.
    let files = scenario.guest_files(dir)?;
    let intro = memrace::debug::KernelIntrospect::new(&loaded.symbols);
    let ctx = RunContext {
        scenario,
        launcher,
        image: &image,
        kernel_hash: &loaded.hash,
        intro: &intro,
        out_dir: dir,
        verbose,
        files: &files,
    };
    let (label, trials) = (plan.label.clone(), plan.trials);
    let bar = indicatif::ProgressBar::new(trials as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:<40} [{elapsed_precise}] {bar:25} {pos}/{len} {msg}",
        )
        .expect("static template"),
    );
    bar.set_prefix(label.clone());
    let run = run_kernel(&ctx, &plan, &mut |partial| {
        let c = partial.counts;
        bar.set_position(c.trials as u64);
        bar.set_message(format!(
            "reproduced {} passed {} blocked {} infeasible {} errors {}",
            c.reproduced, c.passed, c.blocked, c.infeasible, c.errors
        ));
        if bar.is_hidden() {
            eprintln!(
                "memrace: {label}: trial {} — reproduced {} passed {} blocked {} infeasible {} errors {}",
                c.trials, c.reproduced, c.passed, c.blocked, c.infeasible, c.errors
            );
        }
        snapshot(partial);
    })?;
    bar.finish_and_clear();
    Ok(run)
}

/// Run one scenario; returns its result (also written to disk after every trial).
pub fn run_scenario(
    scenario: &Scenario,
    args: &RunArgs,
    launcher: &Launcher,
) -> Result<ScenarioResult> {
    let dir = out_dir(args, &scenario.name)?;
    eprintln!(
        "memrace: scenario {} — results in {}",
        scenario.name,
        dir.display()
    );
    for k in &args.kernels {
        if !scenario.kernels.iter().any(|e| &e.variant == k) {
            let known: Vec<&str> = scenario
                .kernels
                .iter()
                .map(|e| e.variant.as_str())
                .collect();
            bail!(
                "scenario {} has no kernel {k:?}; it declares {}",
                scenario.name,
                known.join(", ")
            );
        }
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut result = ScenarioResult {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        scenario_file: scenario.path.display().to_string(),
        scenario_text: scenario.text.clone(),
        backend: launcher.to_string(),
        started_unix: started,
        kernels: Vec::new(),
        controls: Vec::new(),
        held: false,
        complete: false,
    };
    let mut cache = BTreeMap::new();
    let baseline = scenario.schedule.without_breakpoints();
    let trials = args.trials.unwrap_or(scenario.workload.trials);
    let mut plans: Vec<KernelPlan> = Vec::new();
    for k in scenario
        .kernels
        .iter()
        .filter(|k| args.kernels.is_empty() || args.kernels.contains(&k.variant))
    {
        let mut params = scenario.workload.params.clone();
        params.extend(k.params.clone());
        plans.push(KernelPlan {
            control: false,
            label: k.variant.clone(),
            variant: k.variant.clone(),
            expect: k.expect,
            note: k.note.clone(),
            schedule: &scenario.schedule,
            schedule_name: "scenario".into(),
            params,
            cmdline: k.cmdline.clone(),
            oracle: scenario.oracle.with_kernel_patterns(k.oracle.as_ref()),
            trials,
            trials_per_boot: scenario.workload.trials_per_boot,
        });
    }
    if args.controls {
        for c in &scenario.controls {
            let mut params = scenario.workload.params.clone();
            params.extend(c.params.clone());
            let (schedule, schedule_name) = if c.schedule == "none" {
                (&baseline, "none (gates opened back to back)")
            } else {
                (&scenario.schedule, "scenario")
            };
            plans.push(KernelPlan {
                control: true,
                label: format!("{} [{}]", c.kernel, c.name),
                variant: c.kernel.clone(),
                expect: c.expect,
                note: c.description.clone(),
                schedule,
                schedule_name: schedule_name.into(),
                params,
                cmdline: c.cmdline.clone(),
                oracle: scenario.oracle.with_kernel_patterns(c.oracle.as_ref()),
                trials: c.trials.unwrap_or(trials),
                trials_per_boot: c
                    .trials_per_boot
                    .unwrap_or(scenario.workload.trials_per_boot),
            });
        }
    }
    // Build every kernel and resolve every breakpoint before the first boot: an unknown
    // or inlined symbol is an error up front, with suggestions, not a failed trial.
    for p in &plans {
        let (_, loaded) = load_kernel(&p.variant, &mut cache)?;
        let intro = memrace::debug::KernelIntrospect::new(&loaded.symbols);
        for (line, spec) in p.schedule.breakpoint_specs() {
            if let Err(why) = intro.resolve(spec) {
                bail!(
                    "{}:{line}: breakpoint {spec:?} on kernel {}: {why}",
                    scenario.path.display(),
                    p.variant
                );
            }
            if let Some((_, _, value)) = p
                .schedule
                .injections()
                .into_iter()
                .find(|(l, _, _)| *l == line)
            {
                if let Some(why) = memrace::debug::injection_problem(&loaded.symbols, spec, value) {
                    bail!(
                        "{}:{line}: fault injection at {spec:?} on kernel {}: {why}",
                        scenario.path.display(),
                        p.variant
                    );
                }
                continue;
            }
            // An out-of-line function may also have inlined copies: their call sites never
            // reach the breakpoint. Legitimate, but the schedule author should know.
            if let Ok(memrace::debug::Spec::Function { name, .. }) =
                memrace::debug::Spec::parse(spec)
            {
                let callers = loaded.symbols.inlined_callers(&name);
                if !callers.is_empty() {
                    eprintln!(
                        "memrace: warning: {}:{line}: `{name}` is also inlined into {} on kernel {}; calls from there do not reach this breakpoint",
                        scenario.path.display(),
                        callers.join(", "),
                        p.variant
                    );
                }
            }
        }
    }
    for p in plans {
        let is_control = p.control;
        let run = run_planned(
            scenario,
            p,
            launcher,
            &dir,
            args.verbose,
            &mut cache,
            &mut |partial| {
                let mut r = result.clone();
                if is_control {
                    r.controls.push(partial.clone())
                } else {
                    r.kernels.push(partial.clone())
                }
                let _ = r.write(&dir);
            },
        )?;
        if is_control {
            result.controls.push(run)
        } else {
            result.kernels.push(run)
        }
        result.write(&dir)?;
    }
    result.held = result
        .kernels
        .iter()
        .chain(&result.controls)
        .all(|k| k.held);
    result.complete = true;
    result.write(&dir)?;
    let md = dir.join("report.md");
    memrace::fsutil::write_atomic(&md, report::markdown(&result).as_bytes())
        .with_context(|| format!("writing {}", md.display()))?;
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
        md.display(),
        dir.join("result.json").display()
    );
    Ok(result)
}

pub fn run(args: RunArgs) -> Result<i32> {
    let launcher = super::boot::choose_backend(args.backend)?;
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
        .map(|n| file::find(&dir, n, MAX_BREAKPOINTS))
        .collect::<Result<Vec<_>, _>>()?;
    for s in &scenarios {
        check_vm_breakpoints(s, &launcher)?;
    }
    if !args.all {
        let r = run_scenario(&scenarios[0], &args, &launcher)?;
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
        match run_scenario(s, &args, &launcher) {
            Ok(r) => summary.push(r),
            Err(e) => {
                eprintln!("memrace: scenario {} could not run: {e:#}", s.name);
                failed.push((s.name.clone(), format!("{e:#}")));
            }
        }
    }
    println!("\nSUMMARY");
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

/// A backend with a VM-wide breakpoint limit (QEMU with KVM acceleration holds 4 for
/// the whole VM, not per vCPU): refuse a schedule that arms more at once before anything
/// boots.
pub fn check_vm_breakpoints(scenario: &Scenario, launcher: &Launcher) -> Result<()> {
    if let Some((armed, line)) = scenario.schedule.peak_armed() {
        launcher
            .check_vm_breakpoints(armed)
            .with_context(|| format!("{}:{line}", scenario.path.display()))?;
    }
    Ok(())
}
