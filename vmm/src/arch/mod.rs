//! Guest-architecture facade: what the layers above the backends need to know about
//! an instruction set, with the same function names for every architecture. The guest
//! architecture is a run-time value ([`Arch`]), not a `cfg`: QEMU's TCG runs an arm64
//! guest on an x86_64 host.

mod aarch64;
mod x86_64;

pub use self::aarch64::Arm64Regs;
pub use self::x86_64::X86Regs;

/// A stopped vCPU's registers, tagged with the guest architecture. The layers above
/// the backends use the verbs (`pc`, `sp`, `irqs_enabled`, `named`, …), which mean the
/// same on every architecture; only backends look inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
// Untagged: each architecture's registers have their own field names, and traces
// recorded before arm64 existed (plain x86 registers) still read back.
#[serde(untagged)]
pub enum Regs {
    X86_64(X86Regs),
    Arm64(Arm64Regs),
}

/// Where the current task is found at a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrentTask {
    /// x86_64: `current_task` in this CPU's per-CPU area, whose base is known from the
    /// registers (`Some`, kernel GS) or must be read from `__per_cpu_offset[cpu]`.
    InPerCpuArea { base: Option<u64> },
    /// arm64: the task pointer itself (SP_EL0 in the kernel).
    Pointer(u64),
    /// Not known from these registers (why).
    Unknown(&'static str),
}

/// A function made to return at once from its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForcedReturn<R = Regs> {
    /// The registers after the return: the value in the return register, execution at
    /// the return address, the frame the call pushed popped.
    pub regs: R,
    /// Where the function returns to.
    pub return_address: u64,
}

impl Regs {
    pub fn arch(&self) -> Arch {
        match self {
            Regs::X86_64(_) => Arch::X86_64,
            Regs::Arm64(_) => Arch::Arm64,
        }
    }

    /// The program counter (`rip`, `pc`).
    pub fn pc(&self) -> u64 {
        match self {
            Regs::X86_64(r) => r.rip,
            Regs::Arm64(r) => r.pc,
        }
    }

    /// The stack pointer (`rsp`, `sp`).
    pub fn sp(&self) -> u64 {
        match self {
            Regs::X86_64(r) => r.rsp,
            Regs::Arm64(r) => r.sp,
        }
    }

    /// Whether the vCPU takes interrupts (RFLAGS.IF set; PSTATE.I clear).
    pub fn irqs_enabled(&self) -> bool {
        match self {
            Regs::X86_64(r) => r.irqs_enabled(),
            Regs::Arm64(r) => r.irqs_enabled(),
        }
    }

    /// A register a breakpoint condition names: the architecture's own names, or
    /// `argN`, the N-th integer argument of the kernel's calling convention at a
    /// function's entry.
    pub fn named(&self, name: &str) -> Option<u64> {
        match self {
            Regs::X86_64(r) => r.named(name),
            Regs::Arm64(r) => r.named(name),
        }
    }

    pub fn current_task(&self) -> CurrentTask {
        match self {
            Regs::X86_64(r) => r.current_task(),
            Regs::Arm64(r) => r.current_task(),
        }
    }

    /// At the entry of a function entered by a call, make it return `value` at once
    /// (the caller sees an ordinary return). `read_u64` reads guest memory at a
    /// virtual address, where the architecture keeps the return address on the stack.
    pub fn forced_return<E>(
        &self,
        value: i64,
        read_u64: impl FnOnce(u64) -> Result<u64, E>,
    ) -> Result<ForcedReturn, E> {
        Ok(match self {
            Regs::X86_64(r) => {
                let f = r.forced_return(value, read_u64)?;
                ForcedReturn {
                    regs: Regs::X86_64(f.regs),
                    return_address: f.return_address,
                }
            }
            Regs::Arm64(r) => {
                let f = r.forced_return(value);
                ForcedReturn {
                    regs: Regs::Arm64(f.regs),
                    return_address: f.return_address,
                }
            }
        })
    }

    /// Every register as a value, in the order of [`register_file`] for its arch.
    pub fn values(&self) -> Vec<u64> {
        match self {
            Regs::X86_64(r) => r.values().to_vec(),
            Regs::Arm64(r) => r.values().to_vec(),
        }
    }

    /// The registers of `arch` from `values` in [`register_file`] order, or `None`
    /// if there are not exactly that many.
    pub fn from_values(arch: Arch, values: &[u64]) -> Option<Regs> {
        Some(match arch {
            Arch::X86_64 => Regs::X86_64(X86Regs::from_values(values.try_into().ok()?)),
            Arch::Arm64 => Regs::Arm64(Arm64Regs::from_values(values.try_into().ok()?)),
        })
    }
}

/// The registers a backend reads for an architecture, as [`Regs::values`] orders them.
#[derive(Debug, Clone, Copy)]
pub struct RegisterFile {
    /// gdb's names (QEMU's target description).
    pub names: &'static [&'static str],
    /// The first `writable` are the ones `set_regs` writes (the rest, such as the
    /// per-CPU or task pointer and the page-table base, are only read).
    pub writable: usize,
    /// Where the program counter is.
    pub pc: usize,
}

pub fn register_file(arch: Arch) -> RegisterFile {
    match arch {
        Arch::X86_64 => RegisterFile {
            names: &x86_64::REGISTER_NAMES,
            writable: x86_64::WRITABLE,
            pc: x86_64::PC,
        },
        Arch::Arm64 => RegisterFile {
            names: &aarch64::REGISTER_NAMES,
            writable: aarch64::WRITABLE,
            pc: aarch64::PC,
        },
    }
}

/// Hardware breakpoints per vCPU that a schedule may use on `arch`, so that a schedule
/// that runs under TCG (which has no limit) also fits a hardware-virtualized vCPU:
/// x86_64 has four debug address registers (DR0–DR3); arm64 cores have 2 to 16
/// breakpoint register pairs (DBGBVR/DBGBCR), and the Cortex-A57/A72 class that QEMU
/// models and most arm64 KVM hosts have gives 6.
pub const fn hardware_breakpoints(arch: Arch) -> usize {
    match arch {
        Arch::X86_64 => 4,
        Arch::Arm64 => 6,
    }
}

/// Whether `name` is a register (or `argN`) a condition can read on `arch`.
pub fn is_register_name(arch: Arch, name: &str) -> bool {
    let zeros = vec![0; register_file(arch).names.len()];
    Regs::from_values(arch, &zeros).is_some_and(|r| r.named(name).is_some())
}

/// The name `arch`'s kernel gives a symbol scenario files spell the x86_64 way:
/// system call entry points are `__x64_sys_<name>` on x86_64 and `__arm64_sys_<name>`
/// on arm64 (the syscall wrapper prefix of each architecture). `None` if no alias
/// applies.
pub fn kernel_symbol_alias(arch: Arch, name: &str) -> Option<String> {
    const PREFIXES: [(Arch, &str); 2] =
        [(Arch::X86_64, "__x64_sys_"), (Arch::Arm64, "__arm64_sys_")];
    let own = PREFIXES.iter().find(|(a, _)| *a == arch)?.1;
    PREFIXES
        .iter()
        .filter(|(a, _)| *a != arch)
        .find_map(|(_, other)| name.strip_prefix(other))
        .map(|rest| format!("{own}{rest}"))
}

/// A guest architecture. Its [`Arch::name`] is the kernel's name for it (the recipe's
/// `[arch.<name>]` table, the manifest, reports).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum Arch {
    #[default]
    #[serde(rename = "x86_64")]
    #[value(name = "x86_64", alias = "x86-64", alias = "amd64")]
    X86_64,
    #[serde(rename = "arm64")]
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The architecture memrace itself runs on, if it is one it runs guests of.
    pub fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Arm64)
        } else {
            None
        }
    }

    /// The kernel's name (`ARCH=` and `arch/<dir>` aside): `x86_64` or `arm64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target the static guest harness is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The C compiler that builds static programs for this guest: the host's `gcc` when
    /// the host is this architecture, else Debian's cross compiler.
    pub fn c_compiler(self) -> &'static str {
        match (self, Arch::host() == Some(self)) {
            (_, true) => "gcc",
            (Arch::X86_64, false) => "x86_64-linux-gnu-gcc",
            (Arch::Arm64, false) => "aarch64-linux-gnu-gcc",
        }
    }

    /// The ELF machine of the guest's kernel and programs.
    pub fn elf_architecture(self) -> object::Architecture {
        match self {
            Arch::X86_64 => object::Architecture::X86_64,
            Arch::Arm64 => object::Architecture::Aarch64,
        }
    }

    /// The architecture whose ELF machine is `arch`, if memrace runs guests of it.
    pub fn from_elf(arch: object::Architecture) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_architecture() == arch)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Arch, String> {
        <Arch as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown architecture {s:?}: expected x86_64 or arm64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_parse_by_their_kernel_names_and_aliases() {
        assert_eq!("x86_64".parse::<Arch>(), Ok(Arch::X86_64));
        assert_eq!("aarch64".parse::<Arch>(), Ok(Arch::Arm64));
        assert_eq!("arm64".parse::<Arch>(), Ok(Arch::Arm64));
        let err = "riscv64".parse::<Arch>().unwrap_err();
        assert!(err.contains("x86_64 or arm64"), "{err}");
        assert_eq!(Arch::Arm64.to_string(), "arm64");
        assert_eq!(serde_json::to_string(&Arch::X86_64).unwrap(), "\"x86_64\"");
        assert_eq!(
            Arch::from_elf(object::Architecture::Aarch64),
            Some(Arch::Arm64)
        );
    }

    #[test]
    fn system_call_entry_points_are_aliased_per_architecture() {
        assert_eq!(
            kernel_symbol_alias(Arch::Arm64, "__x64_sys_getpid").as_deref(),
            Some("__arm64_sys_getpid")
        );
        assert_eq!(
            kernel_symbol_alias(Arch::X86_64, "__arm64_sys_mremap").as_deref(),
            Some("__x64_sys_mremap")
        );
        assert_eq!(kernel_symbol_alias(Arch::Arm64, "brd_submit_bio"), None);
        assert_eq!(kernel_symbol_alias(Arch::X86_64, "__x64_sys_getpid"), None);
    }

    #[test]
    fn registers_round_trip_through_values_and_serde() {
        for arch in Arch::ALL {
            let file = register_file(arch);
            let names = file.names;
            assert!(file.writable < names.len());
            assert!(file.pc < file.writable);
            let values: Vec<u64> = (0..names.len() as u64).map(|i| i * 3 + 1).collect();
            let regs = Regs::from_values(arch, &values).unwrap();
            assert_eq!(regs.arch(), arch);
            assert_eq!(regs.values(), values);
            assert_eq!(regs.pc(), values[file.pc]);
            let json = serde_json::to_string(&regs).unwrap();
            assert_eq!(serde_json::from_str::<Regs>(&json).unwrap(), regs, "{json}");
            assert!(Regs::from_values(arch, &values[1..]).is_none());
        }
        let old_trace = r#"{"rax":1,"rbx":0,"rcx":0,"rdx":0,"rsi":0,"rdi":0,"rbp":0,"rsp":0,"r8":0,"r9":0,"r10":0,"r11":0,"r12":0,"r13":0,"r14":0,"r15":0,"rip":5,"rflags":514,"gs_base":0,"cr3":0}"#;
        let regs: Regs = serde_json::from_str(old_trace).unwrap();
        assert_eq!(
            (regs.arch(), regs.pc(), regs.irqs_enabled()),
            (Arch::X86_64, 5, true)
        );
    }
}
