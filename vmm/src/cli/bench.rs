//! `memrace bench vmm`: what each backend costs, side by side, as one table.
//!
//! kvm: port-IO and breakpoint exit round trips and VM create+destroy on synthetic
//! guests, and launch to `start_kernel` on the real kernel. qemu: launch to
//! `start_kernel`, a breakpoint round trip on a hot kernel function, and boot to
//! /init through the same code path as `memrace boot` (median of `--boots`). Both: the
//! cost of a condition on the current task at a stopped hit, through the schedule
//! engine's own code (registers, the per-CPU `current` pointer, `task_struct` fields,
//! the comparison).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use memrace::backend::kvm::{self, bench, KvmOptions};
use memrace::backend::qemu::{QemuAccel, QemuVm};
use memrace::backend::{Backend, Launcher, VmConfig, VmEvent};
use memrace::boot::BASE_CMDLINE;
use memrace::debug::{KernelIntrospect, Symbols};
use memrace::sched::cond::Condition;
use memrace::sched::engine::{Introspect, TaskLayout};
use memrace::sched::hit::{self, Bindings};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::boot::BootArgs;
use memrace::backend::choice::{qemu_accel, BackendKind};

/// Bound of every single measurement.
const LIMIT: Duration = Duration::from_secs(120);
/// Called thousands of times during boot: the qemu breakpoint round-trip target.
const HOT_FUNCTION: &str = "kmem_cache_alloc_noprof";
/// How often the condition-check cost is sampled at one stopped hit.
const CONDITION_CHECKS: u32 = 100;
const QEMU_HITS: u64 = 200;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// VMM costs on kvm and qemu: exits, breakpoints, VM lifecycle, boot milestones.
    Vmm(VmmArgs),
}

#[derive(Args)]
pub struct VmmArgs {
    /// Kernel variant for the boot measurements.
    #[arg(long, default_value = "base")]
    pub kernel: String,
    /// qemu boots to /init; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub boots: usize,
}

/// One cell of the table.
enum Cell {
    Took(Duration),
    NotRun(String),
}

impl Cell {
    fn of(backend: &str, result: Result<Duration>) -> Cell {
        match result {
            Ok(d) => Cell::Took(d),
            Err(e) => Cell::NotRun(format!("{backend}: failed: {e:#}")),
        }
    }

    /// The cell's text; a reason it was not measured goes to `notes`, once.
    fn text(&self, notes: &mut Vec<String>) -> String {
        match self {
            Cell::Took(d) => format!("{d:.2?}"),
            Cell::NotRun(why) => {
                let n = match notes.iter().position(|n| n == why) {
                    Some(i) => i + 1,
                    None => {
                        notes.push(why.clone());
                        notes.len()
                    }
                };
                format!("— [{n}]")
            }
        }
    }
}

struct Row {
    name: &'static str,
    kvm: Cell,
    qemu: Cell,
}

pub fn run(cmd: BenchCommand) -> Result<i32> {
    let BenchCommand::Vmm(args) = cmd;
    let level = kvm::probe();
    let (accel, _) = qemu_accel(&level);
    let qemu = Launcher::Qemu(accel);
    println!("{} | {qemu}", kvm::describe());
    let kernel = super::kernel::ensure(memrace::arch::Arch::X86_64, &args.kernel)?;
    let vmlinux = kernel.vmlinux();
    let symbols = Symbols::load(&vmlinux)
        .with_context(|| format!("loading symbols of {}", vmlinux.display()))?;
    let start_kernel = symbols.function("start_kernel")?;
    let hot = symbols.function(HOT_FUNCTION)?;
    let scratch = tempdir()?;
    let opts = KvmOptions::for_host();
    let no_kvm = || Cell::NotRun(format!("kvm: {}", level.reason()));
    let na = |why: &str| Cell::NotRun(why.to_string());
    let kvm_cell = |f: &dyn Fn() -> Result<Duration>| {
        if level.can_run_vms() {
            Cell::of("kvm", f())
        } else {
            no_kvm()
        }
    };

    let mut rows = vec![
        Row {
            name: "port-IO exit round trip",
            kvm: kvm_cell(&|| Ok(bench::port_io_round_trip(&opts, 20_000, LIMIT)?.per_iteration())),
            qemu: na("qemu: not measured (QEMU's own device emulation, no exit to memrace)"),
        },
        Row {
            name: "VM create+run+destroy",
            kvm: kvm_cell(&|| Ok(bench::create_destroy(&opts, 20, LIMIT)?.per_iteration())),
            qemu: na("qemu: see boot to /init (a QEMU process per VM)"),
        },
    ];
    let task = KernelIntrospect::new(&symbols)
        .task_layout()
        .context("the kernel's DWARF has no task_struct layout")?;
    let (qemu_start, qemu_bp, qemu_cond) =
        match qemu_breakpoints(&vmlinux, &scratch, accel, start_kernel, hot, task) {
            Ok((start, bp, cond)) => (Cell::Took(start), Cell::Took(bp), Cell::Took(cond)),
            Err(e) => {
                let why = format!("qemu: failed: {e:#}");
                (
                    Cell::NotRun(why.clone()),
                    Cell::NotRun(why.clone()),
                    Cell::NotRun(why),
                )
            }
        };
    rows.push(Row {
        name: "breakpoint exit round trip",
        kvm: kvm_cell(&|| Ok(bench::breakpoint_round_trip(&opts, 2_000, LIMIT)?.per_iteration())),
        qemu: qemu_bp,
    });
    rows.push(Row {
        name: "condition check (regs+task)",
        kvm: kvm_cell(&|| kvm_condition(&vmlinux, &scratch, &opts, start_kernel, task)),
        qemu: qemu_cond,
    });
    rows.push(Row {
        name: "launch to start_kernel",
        kvm: kvm_cell(&|| kvm_start_kernel(&vmlinux, &scratch, &opts, start_kernel)),
        qemu: qemu_start,
    });
    let boot_args = |backend| BootArgs {
        kernel: vmlinux.display().to_string(),
        cpus: 2,
        mem: "512M".into(),
        backend,
        append: String::new(),
        boot_timeout: LIMIT.as_secs(),
        timeout: LIMIT.as_secs(),
        files: Vec::new(),
        verbose: false,
        cpuid_mask: Vec::new(),
        command: vec!["/bin/sh".into(), "-c".into(), "exit 0".into()],
    };
    let kvm_boot = if level.boots_linux_fully() {
        Cell::of(
            "kvm",
            median_boot(
                &boot_args(BackendKind::Kvm),
                &Launcher::Kvm(opts.clone()),
                args.boots,
            ),
        )
    } else {
        Cell::NotRun(format!(
            "kvm: {} (a full Linux boot needs hardware virtualization)",
            level.name()
        ))
    };
    rows.push(Row {
        name: "boot to /init (median)",
        kvm: kvm_boot,
        qemu: Cell::of(
            "qemu",
            median_boot(&boot_args(BackendKind::Qemu), &qemu, args.boots),
        ),
    });
    print_table(&rows, &qemu.to_string());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(0)
}

fn tempdir() -> Result<PathBuf> {
    let dir = memrace::kernel::cache_root()
        .join("runs")
        .join(format!("bench-vmm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn debug_config(vmlinux: &Path, initramfs: PathBuf, run_dir: PathBuf) -> VmConfig {
    VmConfig {
        kernel: vmlinux.to_path_buf(),
        initramfs,
        cmdline: BASE_CMDLINE.into(),
        cpus: 2,
        mem_mib: 512,
        run_dir,
        debug: true,
        instruction_clock: false,
    }
}

fn kvm_start_kernel(
    vmlinux: &Path,
    scratch: &Path,
    opts: &KvmOptions,
    addr: u64,
) -> Result<Duration> {
    let cfg = debug_config(vmlinux, PathBuf::new(), scratch.join("kvm"));
    Ok(bench::time_to_start_kernel(&cfg, opts, addr, LIMIT)?.total)
}

/// Boot `args` `boots` times on `backend`; the median time to /init.
fn median_boot(args: &BootArgs, backend: &Launcher, boots: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..boots.max(1) {
        let (report, dir) = super::boot::boot(args, backend)?;
        let took = report
            .time_to_init
            .with_context(|| format!("no /init: {:?} (see {})", report.verdict, dir.display()))?;
        times.push(took);
        let _ = std::fs::remove_dir_all(dir);
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// The engine's per-hit work for a task condition on stopped `cpu`, averaged over
/// `CONDITION_CHECKS`: registers, the current task (pointer, pid, tgid, comm), the
/// comparison. `condition` must hold, which proves the task was read.
fn condition_cost(
    vm: &mut dyn Backend,
    layout: TaskLayout,
    cpu: usize,
    condition: &str,
) -> Result<Duration> {
    let cond = Condition::parse(condition)?;
    let bindings = Bindings::default();
    let started = Instant::now();
    for _ in 0..CONDITION_CHECKS {
        let regs = vm.regs(cpu)?;
        let task = hit::read_task(vm, Some(layout), cpu, &regs);
        let holds = cond.eval(&mut |o| bindings.lookup(o, &regs, &task, 1))?;
        anyhow::ensure!(
            holds,
            "`{condition}` does not hold for the current task {:?}",
            task.map(|t| (t.tid, t.comm))
        );
    }
    Ok(started.elapsed() / CONDITION_CHECKS)
}

/// kvm: stop vCPU 0 at `start_kernel` (the furthest this host's KVM may get), then the
/// condition cost there.
fn kvm_condition(
    vmlinux: &Path,
    scratch: &Path,
    opts: &KvmOptions,
    start_kernel: u64,
    layout: TaskLayout,
) -> Result<Duration> {
    let cfg = debug_config(vmlinux, PathBuf::new(), scratch.join("kvm-condition"));
    let mut vm = kvm::launch(&cfg, opts)?;
    let all: Vec<usize> = (0..cfg.cpus).collect();
    let measured = (|| {
        vm.set_breakpoints(0, &[start_kernel])?;
        vm.resume(&all)?;
        next_hit(&mut vm, &all, Instant::now() + LIMIT, start_kernel)?;
        // At start_kernel the current task is init_task.
        condition_cost(&mut vm, layout, 0, "tid == 0 && comm == \"swapper\"")
    })();
    vm.kill();
    measured
}

/// qemu under its gdb stub: launch to the `start_kernel` hit, then the mean round trip
/// of `QEMU_HITS` hits on `hot` (report, step past, resume), as kvm's bench measures it,
/// and the mean cost of what a `tid`/`comm` condition reads at a hit.
fn qemu_breakpoints(
    vmlinux: &Path,
    scratch: &Path,
    accel: QemuAccel,
    start_kernel: u64,
    hot: u64,
    task: TaskLayout,
) -> Result<(Duration, Duration, Duration)> {
    let initramfs = scratch.join("initramfs.cpio");
    let job = memrace::guest::Job::Command(vec!["/bin/sh".into(), "-c".into(), "exit 0".into()]);
    memrace::guest::build_initramfs(&initramfs, &job, &[])?;
    let cfg = debug_config(vmlinux, initramfs, scratch.join("qemu"));
    let launched = Instant::now();
    let mut vm = QemuVm::launch(&cfg, accel)?;
    let all: Vec<usize> = (0..cfg.cpus).collect();
    let deadline = launched + LIMIT;
    vm.set_breakpoints(0, &[start_kernel])?;
    vm.resume(&all)?;
    next_hit(&mut vm, &all, deadline, start_kernel)?;
    let to_start_kernel = launched.elapsed();
    vm.set_breakpoints(0, &[hot])?;
    let started = Instant::now();
    let mut hits = 0;
    while hits < QEMU_HITS {
        vm.resume(&all)?;
        next_hit(&mut vm, &all, deadline, hot)?;
        hits += 1;
    }
    let per_hit = started.elapsed() / hits as u32;
    // Whatever task runs the hot function: a condition that holds for any task still
    // reads all of it.
    let per_check = condition_cost(&mut vm, task, 0, "tid >= 0")?;
    vm.kill();
    Ok((to_start_kernel, per_hit, per_check))
}

/// Wait for vCPU 0 to hit `addr`, skipping console output and other vCPUs' hits.
fn next_hit(vm: &mut dyn Backend, all: &[usize], deadline: Instant, addr: u64) -> Result<()> {
    loop {
        match vm.next_event(deadline)? {
            None => anyhow::bail!("no hit at {addr:#x} within {LIMIT:?}"),
            Some(VmEvent::Breakpoint { vcpu: 0, addr: a }) if a == addr => return Ok(()),
            Some(VmEvent::Exited(exit)) => {
                anyhow::bail!("the VM ended before a hit at {addr:#x}: {exit:?}")
            }
            Some(VmEvent::Breakpoint { .. }) => vm.resume(all)?,
            Some(_) => {}
        }
    }
}

fn print_table(rows: &[Row], qemu: &str) {
    let mut notes = Vec::new();
    println!("{:<28} {:>14} {:>14} {:>10}", "", "kvm", qemu, "kvm/qemu");
    for row in rows {
        let ratio = match (&row.kvm, &row.qemu) {
            (Cell::Took(k), Cell::Took(q)) => format!("{:.3}x", k.as_secs_f64() / q.as_secs_f64()),
            _ => "—".into(),
        };
        let (k, q) = (row.kvm.text(&mut notes), row.qemu.text(&mut notes));
        println!("{:<28} {k:>14} {q:>14} {ratio:>10}", row.name);
    }
    for (i, note) in notes.iter().enumerate() {
        println!("[{}] {note}", i + 1);
    }
}
