//! Running scenarios as a library: which kernels a scenario runs on, the checks made
//! before the first boot, and the runs themselves with progress and results written
//! after every trial. `memrace run`, `replay` and `validate` all go through here; the
//! CLI only parses arguments and prints.

use super::file::{KernelExpectation, Scenario, ScenarioError};
use super::run::{run_kernel, KernelPlan, KernelRun, RunContext, RunError, ScenarioResult};
use crate::backend::{BackendError, Launcher};
use crate::debug::{KernelIntrospect, Spec, SymbolError, Symbols};
use crate::kernel::{self, Kernel, KernelError};
use crate::sched::schedule::Schedule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// x86 debug registers per vCPU: every schedule is checked against this when its
/// scenario file is read.
pub const MAX_BREAKPOINTS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum OrchestrateError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{file}:{line}: {source}", file = .file.display())]
    VmBreakpoints {
        file: PathBuf,
        line: usize,
        #[source]
        source: BackendError,
    },
    #[error("loading symbols of {path}: {source}")]
    Symbols {
        path: PathBuf,
        source: Box<SymbolError>,
    },
    #[error("scenario {scenario} has no kernel {kernel:?}; it declares {known}")]
    NoSuchKernel {
        scenario: String,
        kernel: String,
        known: String,
    },
    #[error("{file}:{line}: breakpoint {spec:?} on kernel {kernel}: {source}", file = .file.display())]
    Breakpoint {
        file: PathBuf,
        line: usize,
        spec: String,
        kernel: String,
        source: Box<SymbolError>,
    },
    #[error("{file}:{line}: fault injection at {spec:?} on kernel {kernel}: {why}", file = .file.display())]
    Injection {
        file: PathBuf,
        line: usize,
        spec: String,
        kernel: String,
        why: String,
    },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl OrchestrateError {
    /// The breakpoint spec this kernel has no code for, when that is the whole problem:
    /// the scenario does not apply to the kernel (another version, a config without
    /// the function), which is not the same as the scenario being wrong.
    pub fn absent_breakpoint(&self) -> Option<&str> {
        match self {
            OrchestrateError::Breakpoint { spec, source, .. }
                if matches!(
                    **source,
                    SymbolError::NotFound { .. } | SymbolError::NoSuchFile { .. }
                ) =>
            {
                Some(spec)
            }
            _ => None,
        }
    }
}

/// A kernel ready to run scenarios: what the guest boots and the symbols that resolve
/// its breakpoints (always from the vmlinux, whichever image boots).
pub struct LoadedKernel {
    pub image: PathBuf,
    pub symbols: Symbols,
    /// The build's content address (`memrace kernel list`), recorded for `replay`.
    pub hash: String,
}

/// The kernels of one command, by label, loaded once. A label that was not added is
/// taken to be a variant in `images/` and built on first use.
#[derive(Default)]
pub struct Kernels {
    loaded: BTreeMap<String, Rc<LoadedKernel>>,
}

impl Kernels {
    /// Register an already built kernel under `label` (one not named by a variant).
    pub fn add(
        &mut self,
        label: &str,
        built: &Kernel,
    ) -> Result<Rc<LoadedKernel>, OrchestrateError> {
        let vmlinux = built.vmlinux();
        let symbols = Symbols::load(&vmlinux).map_err(|source| OrchestrateError::Symbols {
            path: vmlinux.clone(),
            source: Box::new(source),
        })?;
        let loaded = Rc::new(LoadedKernel {
            image: built.boot_image(),
            symbols,
            hash: built.manifest.hash.clone(),
        });
        self.loaded.insert(label.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// The kernel registered as `label`, else the variant of that name.
    pub fn get(&mut self, label: &str) -> Result<Rc<LoadedKernel>, OrchestrateError> {
        if let Some(k) = self.loaded.get(label) {
            return Ok(k.clone());
        }
        let built = kernel::ensure(crate::arch::Arch::X86_64, label)?;
        self.add(label, &built)
    }
}

/// What to run of a scenario.
pub struct Selection<'a> {
    /// Only these of its kernels (empty: all of them).
    pub kernels: &'a [String],
    /// Trials per kernel instead of the scenario's; controls keep their own counts.
    pub trials: Option<u32>,
    /// Also its negative controls and baselines.
    pub controls: bool,
}

/// The scenario's main schedule on `kernel` (a label for [`Kernels`]), configured as
/// the scenario configures `entry` (its params, command line and oracle; `None`: the
/// scenario's defaults). `validate` runs a base entry's configuration on other builds.
pub fn kernel_plan<'s>(
    scenario: &'s Scenario,
    entry: Option<&KernelExpectation>,
    label: &str,
    kernel: &str,
    trials: u32,
) -> KernelPlan<'s> {
    let mut params = scenario.workload.params.clone();
    if let Some(e) = entry {
        params.extend(e.params.clone());
    }
    KernelPlan {
        control: false,
        label: label.to_string(),
        variant: kernel.to_string(),
        expect: entry.map_or(super::file::Expect::Intact, |e| e.expect),
        note: entry.map(|e| e.note.clone()).unwrap_or_default(),
        schedule: &scenario.schedule,
        schedule_name: "scenario".into(),
        params,
        cmdline: entry.map(|e| e.cmdline.clone()).unwrap_or_default(),
        oracle: scenario
            .oracle
            .with_kernel_patterns(entry.and_then(|e| e.oracle.as_ref())),
        trials,
        trials_per_boot: scenario.workload.trials_per_boot,
    }
}

/// Every run `selection` asks of `scenario`. `baseline` is the scenario's schedule
/// without breakpoints (for controls that run none).
pub fn plans<'s>(
    scenario: &'s Scenario,
    baseline: &'s Schedule,
    selection: &Selection,
) -> Result<Vec<KernelPlan<'s>>, OrchestrateError> {
    if let Some(k) = selection
        .kernels
        .iter()
        .find(|k| !scenario.kernels.iter().any(|e| &e.variant == *k))
    {
        let known: Vec<&str> = scenario
            .kernels
            .iter()
            .map(|e| e.variant.as_str())
            .collect();
        return Err(OrchestrateError::NoSuchKernel {
            scenario: scenario.name.clone(),
            kernel: k.clone(),
            known: known.join(", "),
        });
    }
    let trials = selection.trials.unwrap_or(scenario.workload.trials);
    let mut plans: Vec<KernelPlan> = scenario
        .kernels
        .iter()
        .filter(|k| selection.kernels.is_empty() || selection.kernels.contains(&k.variant))
        .map(|k| kernel_plan(scenario, Some(k), &k.variant, &k.variant, trials))
        .collect();
    if !selection.controls {
        return Ok(plans);
    }
    for c in &scenario.controls {
        let mut params = scenario.workload.params.clone();
        params.extend(c.params.clone());
        let (schedule, schedule_name) = if c.schedule == "none" {
            (baseline, "none (gates opened back to back)")
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
    Ok(plans)
}

/// A backend with a VM-wide breakpoint limit (QEMU with KVM acceleration holds 4 for
/// the whole VM, not per vCPU): refuse a schedule that arms more at once before
/// anything boots.
pub fn check_vm_breakpoints(
    scenario: &Scenario,
    launcher: &Launcher,
) -> Result<(), OrchestrateError> {
    if let Some((armed, line)) = scenario.schedule.peak_armed() {
        launcher
            .check_vm_breakpoints(armed)
            .map_err(|source| OrchestrateError::VmBreakpoints {
                file: scenario.path.clone(),
                line,
                source,
            })?;
    }
    Ok(())
}

/// Build every kernel of `plans` and resolve every breakpoint before the first boot:
/// an unknown or inlined symbol is an error up front, with suggestions, not a failed
/// trial. Returns warnings for the report (a breakpoint function that also has inlined
/// copies, whose callers never reach it).
pub fn preflight(
    scenario: &Scenario,
    plans: &[KernelPlan],
    kernels: &mut Kernels,
) -> Result<Vec<String>, OrchestrateError> {
    let mut warnings = Vec::new();
    for p in plans {
        let loaded = kernels.get(&p.variant)?;
        for (line, spec) in p.schedule.breakpoint_specs() {
            let at = |source| OrchestrateError::Breakpoint {
                file: scenario.path.clone(),
                line,
                spec: spec.to_string(),
                kernel: p.variant.clone(),
                source: Box::new(source),
            };
            loaded.symbols.resolve(spec).map_err(at)?;
            if let Some((_, _, value)) = p
                .schedule
                .injections()
                .into_iter()
                .find(|(l, _, _)| *l == line)
            {
                if let Some(why) = crate::debug::injection_problem(&loaded.symbols, spec, value) {
                    return Err(OrchestrateError::Injection {
                        file: scenario.path.clone(),
                        line,
                        spec: spec.to_string(),
                        kernel: p.variant.clone(),
                        why,
                    });
                }
                continue;
            }
            if let Ok(Spec::Function { name, .. }) = Spec::parse(spec) {
                let callers = loaded.symbols.inlined_callers(&name);
                if !callers.is_empty() {
                    warnings.push(format!(
                        "{}:{line}: `{name}` is also inlined into {} on kernel {}; calls from there do not reach this breakpoint",
                        scenario.path.display(),
                        callers.join(", "),
                        p.variant
                    ));
                }
            }
        }
    }
    Ok(warnings)
}

/// Where and how runs happen.
pub struct Settings<'a> {
    pub launcher: &'a Launcher,
    /// The scenario's result directory.
    pub dir: &'a Path,
    /// Echo the guest console.
    pub verbose: bool,
}

/// Run one kernel's trials with a progress bar; `snapshot` sees every partial result.
pub fn run_plan(
    scenario: &Scenario,
    plan: KernelPlan,
    settings: &Settings,
    kernels: &mut Kernels,
    snapshot: &mut dyn FnMut(&KernelRun),
) -> Result<KernelRun, OrchestrateError> {
    let loaded = kernels.get(&plan.variant)?;
    // The exec workload's programs, compiled and checked before the kernel's first boot.
    let files = scenario.guest_files(settings.dir)?;
    let intro = KernelIntrospect::new(&loaded.symbols);
    let ctx = RunContext {
        scenario,
        launcher: settings.launcher,
        image: &loaded.image,
        kernel_hash: &loaded.hash,
        intro: &intro,
        out_dir: settings.dir,
        verbose: settings.verbose,
        files: &files,
    };
    let label = plan.label.clone();
    let bar = indicatif::ProgressBar::new(plan.trials as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:<40} [{elapsed_precise}] {bar:25} {pos}/{len} {msg}",
        )
        .expect("static template"),
    );
    bar.set_prefix(label.clone());
    let run = run_kernel(&ctx, &plan, &mut |partial| {
        let c = partial.counts;
        let counts = format!(
            "reproduced {} passed {} blocked {} infeasible {} errors {}",
            c.reproduced, c.passed, c.blocked, c.infeasible, c.errors
        );
        bar.set_position(c.trials as u64);
        if bar.is_hidden() {
            eprintln!("memrace: {label}: trial {} — {counts}", c.trials);
        }
        bar.set_message(counts);
        snapshot(partial);
    })?;
    bar.finish_and_clear();
    Ok(run)
}

/// Run `plans` of `scenario` in order into `settings.dir`: result.json after every
/// trial (a run that fails half-way keeps what it measured), report.md at the end.
pub fn run_scenario(
    scenario: &Scenario,
    plans: Vec<KernelPlan>,
    settings: &Settings,
    kernels: &mut Kernels,
) -> Result<ScenarioResult, OrchestrateError> {
    std::fs::create_dir_all(settings.dir).map_err(|source| OrchestrateError::Io {
        path: settings.dir.to_path_buf(),
        source,
    })?;
    let mut result = ScenarioResult::new(scenario, settings.launcher);
    for plan in plans {
        let is_control = plan.control;
        let run = run_plan(scenario, plan, settings, kernels, &mut |partial| {
            let mut snapshot = result.clone();
            if is_control {
                snapshot.controls.push(partial.clone())
            } else {
                snapshot.kernels.push(partial.clone())
            }
            let _ = snapshot.write(settings.dir);
        })?;
        if is_control {
            result.controls.push(run)
        } else {
            result.kernels.push(run)
        }
        result.write(settings.dir)?;
    }
    result.held = result
        .kernels
        .iter()
        .chain(&result.controls)
        .all(|k| k.held);
    result.complete = true;
    result.write(settings.dir)?;
    let md = settings.dir.join("report.md");
    crate::fsutil::write_atomic(&md, crate::report::markdown(&result).as_bytes()).map_err(
        |source| OrchestrateError::Io {
            path: md.clone(),
            source,
        },
    )?;
    Ok(result)
}
