//! Boot a guest, run one command in it, and turn what happened into a verdict.
//! This is the virtme-ng/vmtest-style path: `memrace boot -- CMD`.

use crate::arch::Arch;
use crate::backend::{Backend, ControlMessage, VmEvent, VmExit};
use crate::console::{ConsoleWatch, KernelReport};
use std::time::{Duration, Instant};

/// Kernel command line every memrace guest of `arch` gets. Why each piece is there: the
/// console is the first serial port (8250 ttyS0; the virt machine's PL011 ttyAMA0);
/// `panic=-1` turns a panic into an immediate reset that ends the VM (`reboot=t`, a triple
/// fault, on x86); `panic_on_warn=1` makes WARN oracles fatal and unambiguous; the watchdog
/// and stall switches keep long breakpoint pauses from being reported as lockups
/// (docs/schedules.md, deadlock rule R4); x86's `tsc=reliable no-kvmapf` keep TCG's TSC as
/// the clock and async page faults off.
pub fn base_cmdline(arch: Arch) -> String {
    let common = "nokaslr panic=-1 panic_on_warn=1 nowatchdog rcupdate.rcu_cpu_stall_suppress=1 \
workqueue.watchdog_thresh=0";
    match arch {
        Arch::X86_64 => {
            format!("console=ttyS0 {common} reboot=t nmi_watchdog=0 tsc=reliable no-kvmapf")
        }
        Arch::Arm64 => format!("console=ttyAMA0 {common}"),
    }
}

/// Exit statuses of `memrace boot` that are not the guest command's own.
pub mod exit_code {
    /// The guest kernel panicked, oopsed or hit BUG/WARN.
    pub const KERNEL_PANIC: i32 = 240;
    /// The guest did not reach /init, or the command did not finish, in time.
    pub const TIMEOUT: i32 = 241;
    /// The VM stopped without the harness reporting an exit status.
    pub const NO_STATUS: i32 = 242;
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From VM start until the harness says HELLO.
    pub boot: Duration,
    /// From HELLO until the VM is gone.
    pub run: Duration,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The guest command exited with this status.
    Exited { code: i32 },
    /// The kernel reported a bug (and usually panicked).
    KernelPanic { report: KernelReport },
    /// A bound passed: `stage` is "boot" (no /init) or "run".
    Timeout { stage: String, seconds: u64 },
    /// The VM ended without an exit status from the harness.
    NoStatus { why: String },
}

impl Verdict {
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Exited { code } => *code,
            Verdict::KernelPanic { .. } => exit_code::KERNEL_PANIC,
            Verdict::Timeout { .. } => exit_code::TIMEOUT,
            Verdict::NoStatus { .. } => exit_code::NO_STATUS,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BootReport {
    pub verdict: Verdict,
    /// From VM start to the harness's HELLO (i.e. /init running).
    pub time_to_init: Option<Duration>,
    pub total: Duration,
    /// `FACT` lines the harness sent (cpus, memory, …).
    pub facts: Vec<(String, String)>,
    pub console_tail: Vec<String>,
    pub bad_control_lines: usize,
}

/// Drive a started VM until it ends or a bound passes. `control` receives every
/// well-formed control message as it arrives (the guest command's output, a perf job's
/// samples); `console` sees every console line.
pub fn run(
    vm: &mut dyn Backend,
    limits: Limits,
    control: &mut dyn FnMut(&ControlMessage),
    console: &mut dyn FnMut(&str),
) -> BootReport {
    let started = Instant::now();
    let mut watch = ConsoleWatch::new(40);
    let (mut hello, mut code, mut facts, mut bad) = (None, None, Vec::new(), 0usize);
    let mut deadline = started + limits.boot;
    let verdict = loop {
        let event = match vm.next_event(deadline) {
            Ok(Some(e)) => e,
            Ok(None) => {
                vm.kill();
                let (stage, bound) = if hello.is_none() {
                    ("boot", limits.boot)
                } else {
                    ("run", limits.run)
                };
                break Verdict::Timeout {
                    stage: stage.into(),
                    seconds: bound.as_secs(),
                };
            }
            Err(e) => {
                vm.kill();
                break Verdict::NoStatus { why: e.to_string() };
            }
        };
        if let VmEvent::Control(message) = &event {
            control(message);
        }
        match event {
            VmEvent::Console(line) => {
                console(&line);
                watch.push(&line);
            }
            VmEvent::Control(ControlMessage::Hello { .. }) if hello.is_none() => {
                hello = Some(started.elapsed());
                deadline = Instant::now() + limits.run;
            }
            VmEvent::Control(ControlMessage::Fact { key, value }) => facts.push((key, value)),
            VmEvent::Control(ControlMessage::Exit { code: c }) => code = Some(c),
            VmEvent::Control(_) | VmEvent::Breakpoint { .. } => {}
            VmEvent::BadControl { .. } => bad += 1,
            VmEvent::Exited(exit) => {
                break match (watch.report(), code, exit) {
                    (Some(report), _, _) => Verdict::KernelPanic {
                        report: report.clone(),
                    },
                    (None, Some(code), _) => Verdict::Exited { code },
                    (None, None, VmExit::VmmFailed(why)) => Verdict::NoStatus { why },
                    (None, None, VmExit::GuestStopped) => Verdict::NoStatus {
                        why: "the guest stopped without reporting an exit status".into(),
                    },
                };
            }
        }
    };
    BootReport {
        verdict,
        time_to_init: hello,
        total: started.elapsed(),
        facts,
        console_tail: watch.tail(),
        bad_control_lines: bad,
    }
}
