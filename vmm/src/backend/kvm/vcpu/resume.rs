//! Resuming a vCPU past the breakpoint it is parked on, reporting each hit once.
//!
//! First choice is the CPU's own mechanism
//! (`arch::debug::suppress_breakpoint_once`, RFLAGS.RF on x86): no extra exit,
//! and the CPU keeps the breakpoint quiet while that instruction faults or
//! repeats. A KVM that ignores it (PVM's instruction emulator) reports the same
//! breakpoint again at once with the suppression still pending; that re-report
//! is swallowed here, and from then on every vCPU of the VM resumes by
//! single-stepping instead.
//!
//! A single step must give the same guarantee as RF: the instruction at the
//! breakpoint runs to completion before its breakpoint is armed again. So the
//! step is repeated while the vCPU is still on that instruction (a repeated
//! string operation advances one iteration per step), and when an exception or
//! interrupt stops the instruction midway, the vCPU is stepped through the
//! handler, with every breakpoint disarmed, until the handler returns; back on
//! the instruction, stepping over it starts again.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Outcome, RunState, VcpuThread, MAX_COMPLETION_ROUNDS};
use crate::backend::kvm::arch::debug;

/// Single steps allowed for one resume: a long repeated string operation, or an
/// exception handler walked through instruction by instruction (~12 µs per step
/// on PVM, so about a second). Past this the breakpoints are re-armed anyway and
/// the instruction may be reported once more; a message says so.
const MAX_STEPS: usize = 100_000;

/// How the vCPUs of a VM resume past a breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointResume {
    /// The CPU skips the breakpoint for one instruction (RFLAGS.RF).
    ResumeFlag,
    /// KVM ignores the resume flag: the VMM single-steps over the instruction.
    SingleStep,
}

/// Shared by the vCPU threads of one VM; the first re-report switches them all.
#[derive(Debug, Default)]
pub struct ResumeMethod {
    resume_flag_ignored: AtomicBool,
}

impl ResumeMethod {
    pub fn current(&self) -> BreakpointResume {
        if self.resume_flag_ignored.load(Ordering::Relaxed) {
            BreakpointResume::SingleStep
        } else {
            BreakpointResume::ResumeFlag
        }
    }

    fn resume_flag_ignored(&self) {
        if !self.resume_flag_ignored.swap(true, Ordering::Relaxed) {
            eprintln!(
                "memrace kvm: this KVM reports a breakpoint again although the guest was resumed \
                 past it (RFLAGS.RF; its instruction emulator checks host breakpoints first); \
                 resuming by single step from now on"
            );
        }
    }
}

/// Where stepping over one instruction stands.
enum Phase {
    /// The vCPU is on the instruction at the breakpoint, or just ran part of it.
    OnInstruction,
    /// An event handler interrupted the instruction; it returns to `Position`.
    InHandler,
}

impl VcpuThread {
    /// Resume past the breakpoint at `addr` the vCPU is parked on.
    pub(super) fn resume_past(&mut self, addr: u64) {
        if self.ctx.resume.current() == BreakpointResume::SingleStep {
            return self.step_over(addr);
        }
        match debug::suppress_breakpoint_once(&self.fd) {
            Ok(()) => self.suppressed_at = Some(addr),
            Err(e) => self.fail(format!(
                "vCPU {}: cannot resume past {addr:#x}: {e}",
                self.id
            )),
        }
    }

    /// Called on every breakpoint exit before it is reported. Returns true if the
    /// exit was KVM ignoring the suppression just asked for at `addr`; then the
    /// instruction has been stepped over instead and there is no hit to report.
    pub(super) fn swallow_ignored_suppression(&mut self, addr: u64) -> bool {
        if self.suppressed_at.take() != Some(addr) {
            return false;
        }
        match debug::suppression_pending(&self.fd) {
            Ok(false) => false,
            Ok(true) => {
                self.ctx.resume.resume_flag_ignored();
                match debug::cancel_suppression(&self.fd) {
                    Ok(()) => self.step_over(addr),
                    Err(e) => self.fail(format!("vCPU {}: {e}", self.id)),
                }
                true
            }
            Err(e) => {
                self.fail(format!("vCPU {}: {e}", self.id));
                true
            }
        }
    }

    /// Run the instruction at breakpoint `addr` to completion by single steps,
    /// without reporting it again, then re-arm every breakpoint.
    fn step_over(&mut self, addr: u64) {
        let fail = |this: &mut Self, what: &str, e: &dyn std::fmt::Display| {
            this.fail(format!(
                "vCPU {}: stepping over {addr:#x}: {what}: {e}",
                this.id
            ))
        };
        let hit = match debug::position(&self.fd) {
            Ok(hit) => hit,
            Err(e) => return fail(self, "cannot read the position", &e),
        };
        let keep: Vec<u64> = self
            .breakpoints
            .iter()
            .copied()
            .filter(|&a| a != addr)
            .collect();
        let mut phase = Phase::OnInstruction;
        let mut armed = debug::arm_single_step(&self.fd, &keep, self.ctx.step);
        let mut steps = 0;
        loop {
            if let Err(e) = armed {
                return fail(self, "cannot arm the single step", &e);
            }
            if steps == MAX_STEPS {
                eprintln!(
                    "memrace kvm: vCPU {}: the instruction at {addr:#x} did not complete within \
                     {MAX_STEPS} single steps; re-arming its breakpoint (it may be reported again)",
                    self.id
                );
                break;
            }
            steps += 1;
            if !self.take_step() {
                return;
            }
            let now = match debug::position(&self.fd) {
                Ok(now) => now,
                Err(e) => return fail(self, "cannot read the position", &e),
            };
            match phase {
                // Still on the instruction (one iteration of a repeated string operation done).
                Phase::OnInstruction if now == hit => {}
                Phase::OnInstruction => {
                    match debug::interrupted_at(&self.fd, &self.ctx.ram, hit, now) {
                        Ok(true) => {
                            // Nothing may fire inside the handler: it is part of this one hit.
                            phase = Phase::InHandler;
                            armed = debug::arm_single_step(&self.fd, &[], self.ctx.step);
                        }
                        Ok(false) => break,
                        Err(e) => return fail(self, "cannot read the stack", &e),
                    }
                }
                // Returning restores the interrupted stack pointer; a handler that resumes
                // elsewhere (an exception fixup) ends the instruction there.
                Phase::InHandler if now.sp == hit.sp => {
                    if now.pc != hit.pc {
                        break;
                    }
                    phase = Phase::OnInstruction;
                    armed = debug::arm_single_step(&self.fd, &keep, self.ctx.step);
                }
                Phase::InHandler => {}
            }
        }
        if let Err(e) = debug::set_breakpoints(&self.fd, &self.breakpoints) {
            fail(self, "cannot re-arm the breakpoints", &e);
        }
    }

    /// Enter the guest until the armed single step ends. Returns false if the
    /// vCPU stopped for another reason (already settled).
    fn take_step(&mut self) -> bool {
        for _ in 0..MAX_COMPLETION_ROUNDS {
            if self.ctx.lifecycle.is_stopped() {
                self.state = RunState::Exited;
                return false;
            }
            // A kick (this command's, or a later one's, whose command waits in the
            // channel) must not cut the step short: clear it and take the step.
            self.fd.set_kvm_immediate_exit(0);
            match self.enter_guest() {
                // The step's own debug exit: no armed breakpoint can sit on the
                // instruction being stepped.
                Outcome::Breakpoint(_) => return true,
                Outcome::Access | Outcome::Interrupted => {}
                outcome => {
                    self.settle(outcome);
                    return false;
                }
            }
        }
        self.fail(format!(
            "vCPU {}: a single step did not finish within {MAX_COMPLETION_ROUNDS} exits",
            self.id
        ));
        false
    }
}
