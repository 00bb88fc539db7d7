//! Running a scenario: for each kernel, boot(s) under the debugger, N trials of the
//! schedule, verdicts, and results written after every trial.

use super::file::{Expect, Oracle, Scenario};
use super::verdict::{classify, Counts, TrialVerdict};
use crate::arch::Arch;
use crate::backend::{Backend, BackendError, Launcher, VmConfig};
use crate::boot::base_cmdline;
use crate::fsutil::write_json_atomically;
use crate::guest::{self, Job};
use crate::sched::engine::{Engine, Introspect, ScheduleStatus, TrialRun};
use crate::sched::schedule::Schedule;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a boot may take to reach the harness.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Guest(#[from] guest::GuestError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("writing results to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One trial as recorded in the results.
#[derive(Debug, Clone, Serialize)]
pub struct TrialRecord {
    pub verdict: TrialVerdict,
    pub why: String,
    pub boot: u32,
    #[serde(flatten)]
    pub run: TrialRun,
}

/// Everything one kernel did in a scenario (or control).
#[derive(Debug, Clone, Serialize)]
pub struct KernelRun {
    pub label: String,
    pub variant: String,
    /// The kernel build's content address (`memrace kernel list`), for `memrace replay`.
    pub kernel_hash: String,
    pub expect: Expect,
    pub note: String,
    pub schedule_name: String,
    /// `Schedule::fingerprint` of the schedule the trials ran.
    pub schedule_hash: String,
    pub params: BTreeMap<String, String>,
    pub cmdline: String,
    pub oracle: Oracle,
    pub trials_per_boot: u32,
    pub counts: Counts,
    pub held: bool,
    pub boots: u32,
    pub seconds: f64,
    /// Mean seconds per trial, schedule plus oracle (boot time excluded).
    pub seconds_per_trial: f64,
    /// Mean time from VM start to the harness's HELLO.
    pub boot_seconds: f64,
    pub trials: Vec<TrialRecord>,
    /// Console lines of the boot that held the first reproducing (else the last) trial.
    pub console_excerpt: Vec<String>,
}

/// What to run on one kernel.
pub struct KernelPlan<'a> {
    pub label: String,
    pub variant: String,
    /// A negative control or baseline rather than one of the scenario's kernels.
    pub control: bool,
    pub expect: Expect,
    pub note: String,
    pub schedule: &'a Schedule,
    pub schedule_name: String,
    pub params: BTreeMap<String, String>,
    /// Kernel command line after the scenario's.
    pub cmdline: String,
    /// How this kernel's trials are judged.
    pub oracle: Oracle,
    pub trials: u32,
    pub trials_per_boot: u32,
}

/// One kernel's run: the image it boots and its symbols, where results go.
pub struct RunContext<'a> {
    /// The guest architecture (of the kernel and the harness).
    pub arch: Arch,
    pub scenario: &'a Scenario,
    pub launcher: &'a Launcher,
    /// The vmlinux (PVH) or bzImage the guest boots.
    pub image: &'a Path,
    /// Content address of the kernel build `image` belongs to.
    pub kernel_hash: &'a str,
    pub intro: &'a dyn Introspect,
    pub out_dir: &'a Path,
    pub verbose: bool,
    /// Extra `(host, guest)` files for the initramfs (the exec workload's programs).
    pub files: &'a [(PathBuf, String)],
}

/// Build this boot's initramfs and start the VM; also returns when it was started.
fn boot_vm(
    ctx: &RunContext,
    plan: &KernelPlan,
    trials: u32,
    boot: u32,
) -> Result<(Box<dyn Backend>, Instant), RunError> {
    let dir = ctx.out_dir.join(format!("{}-boot{boot}", plan.label));
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Write {
        path: dir.clone(),
        source,
    })?;
    let initramfs = dir.join("initramfs.cpio");
    let job = Job::Workload {
        name: ctx.scenario.workload.name.clone(),
        trials,
        params: plan
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(
                ctx.scenario
                    .exec
                    .iter()
                    .flat_map(|e| e.params.iter().cloned()),
            )
            .collect(),
    };
    guest::build_initramfs(&initramfs, ctx.arch, &job, ctx.files)?;
    let mem_mib = ctx.scenario.mem_mib;
    let cfg = VmConfig {
        arch: ctx.arch,
        kernel: ctx.image.to_path_buf(),
        initramfs,
        cmdline: [
            base_cmdline(ctx.arch).as_str(),
            &ctx.scenario.vm.cmdline,
            &plan.cmdline,
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" "),
        cpus: ctx.scenario.vm.cpus,
        mem_mib,
        run_dir: dir,
        debug: true,
        instruction_clock: false,
    };
    // Boot time starts here, after the initramfs (and, once, the harness) is built.
    let launched = Instant::now();
    Ok((ctx.launcher.launch(&cfg)?, launched))
}

/// Run `plan.trials` trials, rebooting when a trial takes the kernel down.
/// `progress` is told about every finished trial.
pub fn run_kernel(
    ctx: &RunContext,
    plan: &KernelPlan,
    progress: &mut dyn FnMut(&KernelRun),
) -> Result<KernelRun, RunError> {
    let started = Instant::now();
    let expected_hits = plan.schedule.expected_hits();
    let per_boot = plan.trials_per_boot.max(1);
    let result_timeout = Duration::from_millis(ctx.scenario.workload.result_timeout_ms);
    let mut out = KernelRun {
        label: plan.label.clone(),
        variant: plan.variant.clone(),
        kernel_hash: ctx.kernel_hash.to_string(),
        expect: plan.expect,
        note: plan.note.clone(),
        schedule_name: plan.schedule_name.clone(),
        schedule_hash: plan.schedule.fingerprint(),
        params: plan.params.clone(),
        cmdline: plan.cmdline.clone(),
        oracle: plan.oracle.clone(),
        trials_per_boot: plan.trials_per_boot,
        counts: Counts::default(),
        held: false,
        boots: 0,
        seconds: 0.0,
        seconds_per_trial: 0.0,
        boot_seconds: 0.0,
        trials: Vec::new(),
        console_excerpt: Vec::new(),
    };
    let mut boot_total = 0.0;
    while out.counts.trials < plan.trials {
        let n = (plan.trials - out.counts.trials).min(per_boot);
        out.boots += 1;
        // A VM that cannot start costs its trials, not the whole run (each failure counts
        // as a trial, so this ends).
        let (mut vm, boot_started) = match boot_vm(ctx, plan, n, out.boots) {
            Ok(launched) => launched,
            Err(e) => {
                record_error(&mut out, format!("could not start the VM: {e}"));
                progress(&out);
                continue;
            }
        };
        let mut engine = match Engine::start(vm.as_mut(), ctx.intro) {
            Ok(e) => e,
            Err(e) => {
                record_error(&mut out, format!("could not start the VM: {e}"));
                progress(&out);
                continue;
            }
        };
        if ctx.verbose {
            engine.on_console = Some(Box::new(|l: &str| eprintln!("console: {l}")));
        }
        if engine.await_control("HELLO", BOOT_TIMEOUT).is_none() {
            let tail = engine.console_tail();
            record_error(
                &mut out,
                format!(
                    "the guest did not reach /init within {} s; last console: {:?}",
                    BOOT_TIMEOUT.as_secs(),
                    tail.last()
                ),
            );
            out.console_excerpt = tail;
            progress(&out);
            continue;
        }
        boot_total += boot_started.elapsed().as_secs_f64();
        for k in 1..=n {
            let trial = out.counts.trials + 1;
            if !engine.begin_trial(k, result_timeout) {
                record_error(
                    &mut out,
                    format!(
                        "the guest did not start its trial {k} within {} s (PHASE trial-{k})",
                        result_timeout.as_secs()
                    ),
                );
                progress(&out);
                break;
            }
            let mut run = engine.run_trial(trial, plan.schedule);
            if run.oracle.is_none() && !engine.is_gone() {
                run.oracle = engine.await_result(result_timeout);
            }
            // A kernel report may be printed after the schedule ended (at the oracle's access).
            run.kernel_report = engine.kernel_report();
            let (verdict, why) = classify(&run, &expected_hits, &plan.oracle);
            if out.counts.reproduced == 0 {
                out.console_excerpt = engine.console_tail();
            }
            out.counts.add(verdict);
            out.trials.push(TrialRecord {
                verdict,
                why,
                boot: out.boots,
                run,
            });
            progress(&out);
            if engine.is_gone() {
                break;
            }
        }
        if !engine.is_gone() {
            engine.await_control("EXIT", Duration::from_secs(20));
        }
        drop(engine);
        vm.kill();
    }
    out.seconds = started.elapsed().as_secs_f64();
    let n = out.trials.len().max(1) as f64;
    out.seconds_per_trial = out.trials.iter().map(|t| t.run.seconds).sum::<f64>() / n;
    out.boot_seconds = boot_total / out.boots.max(1) as f64;
    out.held = out.counts.meets(plan.expect);
    Ok(out)
}

fn record_error(out: &mut KernelRun, why: String) {
    out.counts.add(TrialVerdict::Error);
    out.trials.push(TrialRecord {
        verdict: TrialVerdict::Error,
        why: why.clone(),
        boot: out.boots,
        run: TrialRun {
            trial: out.counts.trials,
            schedule: ScheduleStatus::VmGone { why },
            oracle: None,
            hits: vec![],
            filtered_hits: 0,
            serviced: 0,
            kernel_report: None,
            seconds: 0.0,
            trace: vec![],
        },
    });
}

/// The whole scenario's results, written as `result.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub description: String,
    pub scenario_file: String,
    /// The scenario file as it was, so `memrace replay` needs nothing else.
    pub scenario_text: String,
    pub backend: String,
    /// The guest architecture every kernel of this result ran.
    pub arch: Arch,
    pub started_unix: u64,
    pub kernels: Vec<KernelRun>,
    pub controls: Vec<KernelRun>,
    pub held: bool,
    pub complete: bool,
}

impl ScenarioResult {
    /// An empty, incomplete result of `scenario` on `launcher`, started now.
    pub fn new(scenario: &Scenario, launcher: &Launcher, arch: Arch) -> ScenarioResult {
        ScenarioResult {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            scenario_file: scenario.path.display().to_string(),
            scenario_text: scenario.text.clone(),
            backend: launcher.to_string(),
            arch,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kernels: Vec::new(),
            controls: Vec::new(),
            held: false,
            complete: false,
        }
    }

    pub fn write(&self, dir: &Path) -> Result<(), RunError> {
        let path = dir.join("result.json");
        write_json_atomically(&path, self).map_err(|source| RunError::Write { path, source })
    }
}
