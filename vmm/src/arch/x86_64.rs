//! x86_64 (System V ABI, as the kernel uses it).

use super::{CurrentTask, ForcedReturn};

/// The x86_64 registers the schedule engine reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct X86Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    /// Active GS base: the per-CPU area while the vCPU runs kernel code.
    pub gs_base: u64,
    pub cr3: u64,
}

/// Interrupt-enable flag in RFLAGS.
pub const RFLAGS_IF: u64 = 1 << 9;

/// The registers in [`X86Regs`] field order, by their gdb names (QEMU's target
/// description). The first [`WRITABLE`] are written back by `set_regs`.
pub const REGISTER_NAMES: [&str; 20] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "eflags", "gs_base", "cr3",
];

/// Index of the program counter in [`REGISTER_NAMES`].
pub const PC: usize = 16;

/// General-purpose registers, `rip` and `rflags`; `gs_base` and `cr3` are never written.
pub const WRITABLE: usize = 18;

impl X86Regs {
    pub fn values(&self) -> [u64; 20] {
        [
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rbp,
            self.rsp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.rip,
            self.rflags,
            self.gs_base,
            self.cr3,
        ]
    }

    pub fn from_values(v: &[u64; 20]) -> X86Regs {
        X86Regs {
            rax: v[0],
            rbx: v[1],
            rcx: v[2],
            rdx: v[3],
            rsi: v[4],
            rdi: v[5],
            rbp: v[6],
            rsp: v[7],
            r8: v[8],
            r9: v[9],
            r10: v[10],
            r11: v[11],
            r12: v[12],
            r13: v[13],
            r14: v[14],
            r15: v[15],
            rip: v[16],
            rflags: v[17],
            gs_base: v[18],
            cr3: v[19],
        }
    }

    /// A register by name; `argN` are the SysV integer argument registers.
    pub fn named(&self, name: &str) -> Option<u64> {
        let index = match name {
            "arg1" => 5,
            "arg2" => 4,
            "arg3" => 3,
            "arg4" => 2,
            "arg5" => 8,
            "arg6" => 9,
            "eflags" | "rflags" | "gs_base" | "cr3" => return None,
            _ => REGISTER_NAMES.iter().position(|n| *n == name)?,
        };
        Some(self.values()[index])
    }

    pub fn irqs_enabled(&self) -> bool {
        self.rflags & RFLAGS_IF != 0
    }

    /// In kernel mode GS holds this CPU's per-CPU base (a kernel address); in user
    /// mode it is the user's, and the base comes from `__per_cpu_offset[cpu]`.
    pub fn current_task(&self) -> CurrentTask {
        if self.gs_base >= 0xffff_8000_0000_0000 {
            CurrentTask::InPerCpuArea {
                base: Some(self.gs_base),
            }
        } else {
            CurrentTask::InPerCpuArea { base: None }
        }
    }

    /// At the first instruction of a function entered by `call`, return `value` without
    /// running it: `rax = value`, then what `ret` does (`rip = [rsp]`, `rsp += 8`).
    /// Nothing else changes, and at the entry the function has saved or clobbered
    /// nothing, so the caller sees an ordinary return.
    pub fn forced_return<E>(
        &self,
        value: i64,
        read_u64: impl FnOnce(u64) -> Result<u64, E>,
    ) -> Result<ForcedReturn<X86Regs>, E> {
        let return_address = read_u64(self.rsp)?;
        let mut after = *self;
        after.rax = value as u64;
        after.rip = return_address;
        after.rsp = self.rsp.wrapping_add(8);
        Ok(ForcedReturn {
            regs: after,
            return_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_return_pops_the_return_address_and_sets_rax() {
        let regs = X86Regs {
            rax: 1,
            rbx: 2,
            rsp: 0x1000,
            rip: 0xffff_ffff_8100_0000,
            ..X86Regs::default()
        };
        let forced = regs
            .forced_return(-12, |at| {
                assert_eq!(at, 0x1000);
                Ok::<u64, ()>(0xffff_ffff_8123_4567)
            })
            .unwrap();
        assert_eq!(forced.return_address, 0xffff_ffff_8123_4567);
        assert_eq!(forced.regs.rip, 0xffff_ffff_8123_4567);
        assert_eq!(forced.regs.rsp, 0x1008);
        assert_eq!(forced.regs.rax as i64, -12);
        assert_eq!(
            forced.regs.rbx, 2,
            "callee-saved and other registers unchanged"
        );
    }

    #[test]
    fn arguments_are_the_sysv_registers_and_values_round_trip() {
        let mut v = [0u64; 20];
        for (i, slot) in v.iter_mut().enumerate() {
            *slot = i as u64 + 100;
        }
        let r = X86Regs::from_values(&v);
        assert_eq!(r.values(), v);
        assert_eq!(r.named("arg1"), Some(r.rdi));
        assert_eq!(r.named("arg3"), Some(r.rdx));
        assert_eq!(r.named("arg6"), Some(r.r9));
        assert_eq!(r.named("rip"), Some(r.rip));
        assert_eq!(r.named("x0"), None);
        assert_eq!(r.named("cr3"), None, "not a condition operand");
    }
}
