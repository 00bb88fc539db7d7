//! AArch64 (AAPCS64, as the kernel uses it).

use super::{CurrentTask, ForcedReturn};

/// The AArch64 registers the schedule engine reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arm64Regs {
    /// x0–x30 (x29 is the frame pointer, x30 the link register).
    pub x: [u64; 31],
    /// The stack pointer of the current exception level (SP_EL1 in the kernel).
    pub sp: u64,
    pub pc: u64,
    /// PSTATE as gdb's `cpsr`: NZCV, DAIF, the exception level.
    pub pstate: u64,
    /// In the kernel (EL1) SP_EL0 holds `current`: the arm64 kernel keeps the task
    /// pointer there while user space is not running.
    pub sp_el0: u64,
}

/// PSTATE.I: IRQs masked.
pub const PSTATE_I: u64 = 1 << 7;

/// PSTATE.M[3:2]: the exception level the vCPU was in.
const PSTATE_EL_SHIFT: u64 = 2;

/// The registers in [`Arm64Regs::values`] order, by their gdb names (QEMU's target
/// description: the core feature, then the system-register feature for SP_EL0). The
/// first [`WRITABLE`] are written back by `set_regs`.
pub const REGISTER_NAMES: [&str; 35] = [
    "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14",
    "x15", "x16", "x17", "x18", "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27",
    "x28", "x29", "x30", "sp", "pc", "cpsr", "SP_EL0",
];

/// Index of the program counter in [`REGISTER_NAMES`].
pub const PC: usize = 32;

/// x0–x30, sp, pc and PSTATE; SP_EL0 (the task pointer) is never written.
pub const WRITABLE: usize = 34;

impl Arm64Regs {
    pub fn values(&self) -> [u64; 35] {
        let mut v = [0u64; 35];
        v[..31].copy_from_slice(&self.x);
        v[31] = self.sp;
        v[32] = self.pc;
        v[33] = self.pstate;
        v[34] = self.sp_el0;
        v
    }

    pub fn from_values(v: &[u64; 35]) -> Arm64Regs {
        let mut x = [0u64; 31];
        x.copy_from_slice(&v[..31]);
        Arm64Regs {
            x,
            sp: v[31],
            pc: v[32],
            pstate: v[33],
            sp_el0: v[34],
        }
    }

    /// A register by name: `x0`–`x30`, `fp` (x29), `lr` (x30), `sp`, `pc`; `argN`
    /// are the AAPCS64 argument registers x0–x7.
    pub fn named(&self, name: &str) -> Option<u64> {
        match name {
            "sp" => return Some(self.sp),
            "pc" => return Some(self.pc),
            "fp" => return Some(self.x[29]),
            "lr" => return Some(self.x[30]),
            _ => {}
        }
        let (index, canonical) = if let Some(n) = name.strip_prefix("arg") {
            let n: usize = n.parse().ok().filter(|n| (1..=8).contains(n))?;
            (n - 1, format!("arg{n}"))
        } else {
            let n: usize = name.strip_prefix('x')?.parse().ok().filter(|n| *n <= 30)?;
            (n, format!("x{n}"))
        };
        // `parse` also takes "01" and "+1": only the canonical spelling is a name.
        (canonical == name).then_some(self.x[index])
    }

    pub fn irqs_enabled(&self) -> bool {
        self.pstate & PSTATE_I == 0
    }

    /// The exception level (0 user, 1 kernel).
    pub fn exception_level(&self) -> u64 {
        (self.pstate >> PSTATE_EL_SHIFT) & 3
    }

    /// In the kernel SP_EL0 is the task pointer itself; at EL0 it is the user's stack
    /// pointer and the task is not known from registers.
    pub fn current_task(&self) -> CurrentTask {
        if self.exception_level() >= 1 {
            CurrentTask::Pointer(self.sp_el0)
        } else {
            CurrentTask::Unknown(
                "the vCPU is in user mode (EL0): SP_EL0 is the user's stack pointer, not the task",
            )
        }
    }

    /// At the first instruction of a function entered by `bl`/`blr`, return `value`
    /// without running it: `x0 = value`, then what `ret` does (`pc = x30`). `bl` pushes
    /// nothing, so the stack is unchanged, and at the entry the function has saved or
    /// clobbered nothing. `read_u64` is not needed: the return address is in a register.
    pub fn forced_return(&self, value: i64) -> ForcedReturn<Arm64Regs> {
        let mut after = *self;
        after.x[0] = value as u64;
        after.pc = self.x[30];
        ForcedReturn {
            regs: after,
            return_address: self.x[30],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Arm64Regs {
        let mut v = [0u64; 35];
        for (i, slot) in v.iter_mut().enumerate() {
            *slot = i as u64 + 100;
        }
        Arm64Regs::from_values(&v)
    }

    #[test]
    fn a_forced_return_goes_to_the_link_register_with_x0_set() {
        let mut regs = sample();
        regs.x[30] = 0xffff_8000_8012_3456;
        let forced = regs.forced_return(-12);
        assert_eq!(forced.return_address, 0xffff_8000_8012_3456);
        assert_eq!(forced.regs.pc, 0xffff_8000_8012_3456);
        assert_eq!(forced.regs.x[0] as i64, -12);
        assert_eq!(forced.regs.sp, regs.sp, "bl pushes nothing");
        assert_eq!(forced.regs.x[19], regs.x[19], "callee-saved unchanged");
    }

    #[test]
    fn registers_by_name_and_argument_number() {
        let r = sample();
        assert_eq!(r.values(), sample().values());
        assert_eq!(r.named("x0"), Some(100));
        assert_eq!(r.named("x30"), Some(130));
        assert_eq!(r.named("lr"), Some(130));
        assert_eq!(r.named("fp"), Some(129));
        assert_eq!(r.named("arg1"), Some(100));
        assert_eq!(r.named("arg3"), Some(102));
        assert_eq!(r.named("arg8"), Some(107));
        assert_eq!(r.named("sp"), Some(131));
        assert_eq!(r.named("pc"), Some(132));
        for bad in ["x31", "x01", "arg0", "arg9", "arg01", "rdi", "x", "SP_EL0"] {
            assert_eq!(r.named(bad), None, "{bad}");
        }
    }

    #[test]
    fn interrupts_and_the_task_follow_pstate() {
        let mut r = Arm64Regs {
            pstate: 0x3c5, // EL1h with DAIF all masked
            sp_el0: 0xffff_0000_c0de_0000,
            ..Arm64Regs::default()
        };
        assert!(!r.irqs_enabled());
        assert_eq!(
            r.current_task(),
            CurrentTask::Pointer(0xffff_0000_c0de_0000)
        );
        r.pstate = 0x345; // I clear
        assert!(r.irqs_enabled());
        r.pstate = 0x0; // EL0t
        assert!(matches!(r.current_task(), CurrentTask::Unknown(_)));
    }
}
