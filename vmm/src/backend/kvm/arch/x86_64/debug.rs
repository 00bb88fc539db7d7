//! Hardware breakpoints (DR0–DR3 through `KVM_SET_GUEST_DEBUG`), the two ways
//! of resuming past one, and the register view the schedule engine reads.
//!
//! Resuming sets RFLAGS.RF, which makes the CPU skip instruction breakpoints
//! for one instruction (and keeps skipping them when that instruction faults
//! or is a repeated string operation interrupted midway). That costs nothing
//! extra on VMX/SVM. KVM's instruction emulator, which is all a guest runs in
//! on PVM, checks host-debug breakpoints before it looks at RF: there the same
//! breakpoint is reported again at once, with RF still set (measured with
//! `hardware_breakpoint_hits_exactly_n_times_resuming_past_each_hit` forced to
//! RF: the second hit came before the counted instruction). The vCPU thread
//! recognises that re-report (`suppression_pending`) and falls back to single
//! steps with the breakpoint removed.

use kvm_bindings::{
    kvm_guest_debug, kvm_guest_debug_arch, KVM_CAP_SET_GUEST_DEBUG2, KVM_GUESTDBG_BLOCKIRQ,
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::paging::{translate, PagingState};
use crate::arch::X86Regs as Regs;
use crate::backend::kvm::memory::GuestRam;

/// x86 has four address breakpoint registers (DR0–DR3): the one count in arch/.
pub const MAX_BREAKPOINTS: usize = crate::arch::hardware_breakpoints(crate::arch::Arch::X86_64);
/// DR7: global-enable bit of breakpoint `n` is bit 2n+1; GE (bit 9) asks for
/// exact breakpoint reporting. RW/LEN bits stay 0: break on execution.
const DR7_GLOBAL_EXACT: u64 = 1 << 9;
/// RFLAGS.RF: instruction breakpoints are not taken for the next instruction.
const RFLAGS_RF: u64 = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error("{wanted} breakpoints requested, x86 has {MAX_BREAKPOINTS}")]
    TooMany { wanted: usize },
    #[error("KVM refused to {what}: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> DebugError {
    move |source| DebugError::Ioctl { what, source }
}

/// DR7 value enabling execution breakpoints in the first `count` slots.
fn dr7_for(count: usize) -> u64 {
    (0..count).fold(DR7_GLOBAL_EXACT, |dr7, n| dr7 | 1 << (2 * n + 1))
}

fn set_guest_debug(vcpu: &VcpuFd, addrs: &[u64], extra_control: u32) -> Result<(), DebugError> {
    if addrs.len() > MAX_BREAKPOINTS {
        return Err(DebugError::TooMany {
            wanted: addrs.len(),
        });
    }
    let mut debugreg = [0u64; 8];
    debugreg[..addrs.len()].copy_from_slice(addrs);
    debugreg[7] = dr7_for(addrs.len());
    let breakpoints = if addrs.is_empty() {
        0
    } else {
        KVM_GUESTDBG_USE_HW_BP
    };
    let control = match breakpoints | extra_control {
        0 => 0,
        flags => KVM_GUESTDBG_ENABLE | flags,
    };
    let debug = kvm_guest_debug {
        control,
        pad: 0,
        arch: kvm_guest_debug_arch { debugreg },
    };
    vcpu.set_guest_debug(&debug)
        .map_err(ioctl("set guest debug registers"))
}

/// Replace the vCPU's breakpoints; an empty list turns guest debugging off.
pub fn set_breakpoints(vcpu: &VcpuFd, addrs: &[u64]) -> Result<(), DebugError> {
    set_guest_debug(vcpu, addrs, 0)
}

/// How single steps are taken on this VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMode {
    /// KVM can hold off interrupts during the step, so it cannot land in a handler.
    pub block_irqs: bool,
}

impl StepMode {
    pub fn query(vm: &VmFd) -> Self {
        let supported = vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_SET_GUEST_DEBUG2));
        StepMode {
            block_irqs: supported > 0 && supported as u32 & KVM_GUESTDBG_BLOCKIRQ != 0,
        }
    }
}

/// Arm one single step with `keep` as the only breakpoints (the one being
/// stepped over left out). The next `KVM_EXIT_DEBUG` ends the step; then
/// restore the full set with `set_breakpoints`.
pub fn arm_single_step(vcpu: &VcpuFd, keep: &[u64], mode: StepMode) -> Result<(), DebugError> {
    let block = if mode.block_irqs {
        KVM_GUESTDBG_BLOCKIRQ
    } else {
        0
    };
    set_guest_debug(vcpu, keep, KVM_GUESTDBG_SINGLESTEP | block)
}

/// Let the next instruction run past a breakpoint on it (set RFLAGS.RF).
pub fn suppress_breakpoint_once(vcpu: &VcpuFd) -> Result<(), DebugError> {
    let mut regs = vcpu.get_regs().map_err(ioctl("read registers"))?;
    regs.rflags |= RFLAGS_RF;
    vcpu.set_regs(&regs).map_err(ioctl("set RFLAGS.RF"))
}

/// Whether the suppression asked for by `suppress_breakpoint_once` is still
/// pending: the CPU clears RF once an instruction completes, so a breakpoint
/// exit that finds RF set was taken without running the instruction.
pub fn suppression_pending(vcpu: &VcpuFd) -> Result<bool, DebugError> {
    let regs = vcpu.get_regs().map_err(ioctl("read registers"))?;
    Ok(regs.rflags & RFLAGS_RF != 0)
}

/// Drop a pending suppression (before stepping instead).
pub fn cancel_suppression(vcpu: &VcpuFd) -> Result<(), DebugError> {
    let mut regs = vcpu.get_regs().map_err(ioctl("read registers"))?;
    regs.rflags &= !RFLAGS_RF;
    vcpu.set_regs(&regs).map_err(ioctl("clear RFLAGS.RF"))
}

/// Where a vCPU is: instruction and stack pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub pc: u64,
    pub sp: u64,
}

pub fn position(vcpu: &VcpuFd) -> Result<Position, DebugError> {
    let regs = vcpu.get_regs().map_err(ioctl("read registers"))?;
    Ok(Position {
        pc: regs.rip,
        sp: regs.rsp,
    })
}

/// Whether an exception or interrupt has just interrupted the instruction at
/// `hit` before it completed, the vCPU now being at `now`: the stack holds a
/// long-mode event frame (RIP, CS, RFLAGS, RSP, SS) whose RIP and RSP are the
/// hit's. The frame is looked for at the stack pointer and one or two slots
/// above it (an error code; a push by the handler's first instruction, which an
/// emulated single step may already have run).
pub fn interrupted_at(
    vcpu: &VcpuFd,
    ram: &GuestRam,
    hit: Position,
    now: Position,
) -> Result<bool, DebugError> {
    const FRAME_RSP: u64 = 24;
    // The common case, answered without an ioctl: a frame is 40 bytes at least,
    // so a stack pointer within one slot of the hit's cannot be below one (and
    // an event taken on another stack does not land right next to this one).
    if now.sp.abs_diff(hit.sp) <= 8 {
        return Ok(false);
    }
    let sregs = vcpu.get_sregs().map_err(ioctl("read system registers"))?;
    // Taking an event does not switch page tables: the current ones are the hit's.
    let paging = PagingState::from(&sregs);
    let read = |gva: u64| -> Option<u64> {
        let gpa = translate(ram, &paging, gva).ok()?;
        ram.read_u64(gpa).ok()
    };
    Ok((0..3).any(|slot| {
        let frame = now.sp.wrapping_add(slot * 8);
        read(frame) == Some(hit.pc) && read(frame.wrapping_add(FRAME_RSP)) == Some(hit.sp)
    }))
}

/// The registers the schedule engine reads, plus the paging state for walks.
pub fn snapshot(vcpu: &VcpuFd) -> Result<(Regs, PagingState), DebugError> {
    let r = vcpu.get_regs().map_err(ioctl("read registers"))?;
    let s = vcpu.get_sregs().map_err(ioctl("read system registers"))?;
    let regs = Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rbp: r.rbp,
        rsp: r.rsp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
        gs_base: s.gs.base,
        cr3: s.cr3,
    };
    Ok((regs, PagingState::from(&s)))
}

/// Write the general-purpose registers, `rip` and `rflags` of a stopped vCPU (segment
/// and control registers are left alone). Read-modify-write: KVM_SET_REGS replaces the
/// whole set, so the rest keeps the values KVM has.
pub fn set_regs(vcpu: &VcpuFd, regs: &Regs) -> Result<(), DebugError> {
    let mut r = vcpu.get_regs().map_err(ioctl("read registers"))?;
    r.rax = regs.rax;
    r.rbx = regs.rbx;
    r.rcx = regs.rcx;
    r.rdx = regs.rdx;
    r.rsi = regs.rsi;
    r.rdi = regs.rdi;
    r.rbp = regs.rbp;
    r.rsp = regs.rsp;
    r.r8 = regs.r8;
    r.r9 = regs.r9;
    r.r10 = regs.r10;
    r.r11 = regs.r11;
    r.r12 = regs.r12;
    r.r13 = regs.r13;
    r.r14 = regs.r14;
    r.r15 = regs.r15;
    r.rip = regs.rip;
    r.rflags = regs.rflags;
    vcpu.set_regs(&r).map_err(ioctl("write registers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_enables_exactly_the_used_slots() {
        assert_eq!(dr7_for(0), 1 << 9);
        assert_eq!(dr7_for(2), (1 << 9) | 0b1010);
        assert_eq!(dr7_for(4), (1 << 9) | 0b1010_1010);
    }
}
