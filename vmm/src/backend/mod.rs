//! The backend trait: everything the debugger and schedule engine need from a VM.
//!
//! Two implementations live below: `qemu` (drives qemu-system-x86_64 over the gdb
//! remote protocol) and `kvm` (memrace's own VMM). Code above this module never
//! knows which one runs.
//!
//! Execution model shared by both backends:
//! * Every vCPU is either *running* or *stopped*. `resume` names exactly the set
//!   that runs next; vCPUs not named stay (or become) stopped.
//! * A vCPU that hits one of *its* breakpoints stops and `next_event` reports it.
//!   Other vCPUs may stop with it (qemu's gdbstub is all-stop) — the caller always
//!   follows an event with `resume(set)`, which restarts whatever it names.
//! * Resuming a vCPU that is stopped on a breakpoint steps past that breakpoint
//!   (remove/step/re-insert on both backends) without re-reporting it.
//! * No hit is stepped past before the caller has it: a vCPU that stopped on a hit
//!   `next_event` has not returned yet stays stopped when `resume` names it (kvm),
//!   or reports the hit again (qemu).

pub mod choice;
pub mod kvm;
pub mod qemu;

use std::path::PathBuf;
use std::time::Instant;

pub use crate::arch::Regs;
pub use control_proto::Message as ControlMessage;

/// Index of a vCPU; equals the guest's CPU number (APIC id).
pub type VcpuId = usize;

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The guest architecture (the kernel's and the harness's).
    pub arch: crate::arch::Arch,
    /// ELF `vmlinux` (PVH entry) or `bzImage`.
    pub kernel: PathBuf,
    /// newc cpio archive whose `/init` is the guest harness.
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub cpus: usize,
    pub mem_mib: u64,
    /// Directory for this VM's files (console.log, sockets).
    pub run_dir: PathBuf,
    /// Start with every vCPU stopped and a debugger attached, so breakpoints
    /// can be armed before the first guest instruction.
    pub debug: bool,
    /// QEMU's instruction counting (`-icount`, TCG only): guest time advances with the
    /// instructions executed instead of the host's clock, so guest timings of the same
    /// work repeat without host noise. Other backends refuse it.
    pub instruction_clock: bool,
}

/// Guest memory as users write it (`512M`, `1G`, or MiB as a plain number), in MiB.
/// The error names the accepted forms and range.
pub fn parse_mem_mib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        Some((i, 'M' | 'm')) => (&t[..i], 1),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("memory size {text:?}: expected e.g. 512M or 1G"))?;
    let mib = n.saturating_mul(mult);
    if !(64..=65536).contains(&mib) {
        return Err(format!(
            "memory size {text}: guest memory must be between 64M and 64G"
        ));
    }
    Ok(mib)
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset or powered off (our kernels reboot on panic: `panic=-1`).
    GuestStopped,
    /// The VMM process or thread ended unexpectedly.
    VmmFailed(String),
}

/// Something that happened in the VM.
#[derive(Debug, Clone, PartialEq)]
pub enum VmEvent {
    /// `vcpu` stopped at breakpoint address `addr`.
    Breakpoint { vcpu: VcpuId, addr: u64 },
    /// A well-formed control-channel message from the guest harness.
    Control(ControlMessage),
    /// A control-channel line that did not parse (untrusted input: never acted on).
    BadControl { line: String, error: String },
    /// One line of the guest console (ttyS0), without the newline.
    Console(String),
    /// The VM is gone.
    Exited(VmExit),
}

/// `addr..addr + len` must not wrap past the top of the address space.
pub(crate) fn check_guest_range(addr: u64, len: usize) -> Result<(), BackendError> {
    let last = (len as u64).checked_sub(1).map(|n| addr.checked_add(n));
    match last {
        Some(None) => Err(BackendError::Memory {
            addr,
            len,
            why: "the range wraps past the end of the address space (corrupt guest pointer?)"
                .into(),
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("vCPU {0} does not exist (the VM has {1})")]
    NoSuchVcpu(VcpuId, usize),
    #[error(
        "vCPU {vcpu} asks for {wanted} hardware breakpoints; {backend} allows {limit} per vCPU"
    )]
    TooManyBreakpoints {
        vcpu: VcpuId,
        wanted: usize,
        limit: usize,
        backend: &'static str,
    },
    #[error("guest memory access at {addr:#x} (+{len}) failed: {why}")]
    Memory { addr: u64, len: usize, why: String },
    #[error("{backend} runs {runs} guests; registers of an {given} vCPU cannot be written to it")]
    WrongArch {
        backend: &'static str,
        runs: crate::arch::Arch,
        given: crate::arch::Arch,
    },
    #[error("the VM has exited")]
    Exited,
    #[error("{0} cannot count instructions as guest time: QEMU's icount needs TCG. Use --backend qemu on a host without hardware virtualization, or the wall-time metric")]
    NoInstructionClock(String),
    /// The chosen backend cannot run on this host (the message says what to use).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Qemu(#[from] qemu::QemuError),
    #[error("{0}")]
    Kvm(#[from] kvm::KvmError),
}

/// The backend a command boots its VMs on, chosen once (from `--backend`). Code above
/// this module starts VMs through it and then only sees `dyn Backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// memrace's own VMM with these options.
    Kvm(kvm::KvmOptions),
    /// qemu-system-x86_64 with this accelerator.
    Qemu(qemu::QemuAccel),
}

impl Launcher {
    pub fn launch(&self, cfg: &VmConfig) -> Result<Box<dyn Backend>, BackendError> {
        if cfg.instruction_clock && *self != Launcher::Qemu(qemu::QemuAccel::Tcg) {
            return Err(BackendError::NoInstructionClock(self.to_string()));
        }
        Ok(match self {
            Launcher::Kvm(opts) => Box::new(kvm::launch(cfg, opts)?),
            Launcher::Qemu(accel) => Box::new(qemu::QemuVm::launch(cfg, *accel)?),
        })
    }

    /// Hardware breakpoints per vCPU this backend gives an `arch` guest: what every
    /// schedule is checked against when its scenario file is read, before a VM exists.
    pub fn max_breakpoints(&self, arch: crate::arch::Arch) -> usize {
        match self {
            Launcher::Kvm(_) => kvm::MAX_BREAKPOINTS,
            Launcher::Qemu(_) => crate::arch::hardware_breakpoints(arch),
        }
    }

    /// Refuse `armed` breakpoints at once (over all vCPUs) if this backend cannot hold
    /// them: QEMU with KVM acceleration has one set of debug registers for the whole VM.
    /// The per-vCPU budget is checked with the schedule itself.
    pub fn check_vm_breakpoints(&self, armed: usize) -> Result<(), BackendError> {
        match self {
            Launcher::Kvm(_) => Ok(()),
            Launcher::Qemu(accel) => Ok(qemu::check_vm_breakpoints(*accel, armed)?),
        }
    }
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launcher::Kvm(_) => write!(f, "kvm (memrace's own VMM)"),
            Launcher::Qemu(qemu::QemuAccel::Kvm) => write!(f, "qemu (kvm)"),
            Launcher::Qemu(qemu::QemuAccel::Tcg) => write!(f, "qemu (tcg)"),
        }
    }
}

/// A running VM under a debugger. See the module doc for the execution model.
pub trait Backend {
    /// "qemu" or "kvm", for reports.
    fn name(&self) -> &'static str;
    /// The guest architecture this VM runs.
    fn arch(&self) -> crate::arch::Arch;
    fn vcpu_count(&self) -> usize;
    /// Hardware breakpoints available per vCPU (4 on x86: DR0–DR3).
    fn max_breakpoints(&self) -> usize;
    /// Replace `vcpu`'s breakpoints with `addrs`, whether it runs or is stopped (a
    /// running vCPU gets them before its next guest instruction).
    fn set_breakpoints(&mut self, vcpu: VcpuId, addrs: &[u64]) -> Result<(), BackendError>;
    /// Run exactly the vCPUs in `running`; all others stay stopped.
    fn resume(&mut self, running: &[VcpuId]) -> Result<(), BackendError>;
    /// Like `resume(running)`, but also re-enter the vCPUs in `parked`, which are stopped
    /// on a breakpoint, *without* stepping past it: pending interrupts and IPIs are
    /// delivered first (where the guest has IF=1), then the breakpoint fires again and
    /// is reported as a new hit at the same address. Returns false if the backend
    /// cannot do this (the parked vCPUs then simply stay stopped).
    fn service_parked(
        &mut self,
        running: &[VcpuId],
        parked: &[VcpuId],
    ) -> Result<bool, BackendError> {
        let _ = parked;
        self.resume(running)?;
        Ok(false)
    }
    /// Wait for the next event until `deadline`; `None` means the deadline passed.
    fn next_event(&mut self, deadline: Instant) -> Result<Option<VmEvent>, BackendError>;
    /// Stop every vCPU (for inspection or a memory write); `resume` restarts them.
    fn stop_all(&mut self) -> Result<(), BackendError>;
    /// Registers of a stopped vCPU.
    fn regs(&mut self, vcpu: VcpuId) -> Result<Regs, BackendError>;
    /// Write the general-purpose registers, `rip` and `rflags` of a stopped vCPU
    /// (`gs_base` and `cr3` are not written). A vCPU stopped on a breakpoint whose `rip`
    /// changes is no longer on it: it resumes at the new `rip`, nothing is stepped over.
    fn set_regs(&mut self, vcpu: VcpuId, regs: &Regs) -> Result<(), BackendError>;
    /// Read guest-virtual memory through `vcpu`'s page tables (vCPU stopped).
    fn read_virt(&mut self, vcpu: VcpuId, addr: u64, len: usize) -> Result<Vec<u8>, BackendError>;
    /// Write guest-physical memory (all vCPUs stopped on all-stop backends).
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Tear the VM down. Idempotent.
    fn kill(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_qemu_tcg_counts_instructions_as_guest_time() {
        let cfg = VmConfig {
            arch: crate::arch::Arch::X86_64,
            kernel: PathBuf::from("/nonexistent/vmlinux"),
            initramfs: PathBuf::new(),
            cmdline: String::new(),
            cpus: 1,
            mem_mib: 64,
            run_dir: std::env::temp_dir(),
            debug: false,
            instruction_clock: true,
        };
        let kvm = Launcher::Kvm(kvm::KvmOptions {
            device: PathBuf::from("/nonexistent/kvm"),
            cpuid: Default::default(),
            prefer_pvh: true,
        });
        for launcher in [kvm, Launcher::Qemu(qemu::QemuAccel::Kvm)] {
            let err = launcher.launch(&cfg).err().expect("refused");
            assert!(matches!(err, BackendError::NoInstructionClock(_)), "{err}");
        }
    }
}
