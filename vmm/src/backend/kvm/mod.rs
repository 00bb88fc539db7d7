//! The kvm backend: memrace's own minimal VMM on `/dev/kvm`.
//!
//! `launch` boots Linux (ELF vmlinux through PVH, or bzImage through the 64-bit
//! protocol); `launch_program` starts a bare long-mode program on every vCPU
//! (the synthetic guests of the test suite, see `fixtures`). Both return a
//! `KvmVm`, which implements `Backend` with the execution model documented there.
//!
//! Creation order (each step needs the previous one):
//! open /dev/kvm → create VM → RAM slots → TSS, irqchip, PIT (before vCPUs)
//! → devices (irqfds need the irqchip) → vCPUs → CPUID, MSRs, LAPIC
//! → load the guest → entry registers → start the vCPU threads.

mod arch;
pub mod bench;
mod devices;
pub mod fixtures;
mod kick;
mod memory;
mod probe;
mod vcpu;
mod vm;

pub use arch::boot::{BootError, BootProtocol, LoadError, MptableError};
pub use arch::cpuid::{
    CpuFeature, CpuidError, CpuidPolicy, KVM_PV_FEATURES_OFFERED, KVM_SIGNATURE,
};
pub use arch::debug::DebugError;
pub use arch::paging::PagingError;
pub use devices::{Space, StopReason, EXIT_MMIO, EXIT_PORT, UNCLAIMED_LOGGED};
pub use memory::MemoryError;
pub use probe::{describe, probe, probe_device, KvmLevel};
pub use vcpu::{BreakpointResume, VcpuError};
pub use vm::VmError;

use std::cell::Cell;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::{Backend, BackendError, Regs, VcpuId, VmConfig, VmEvent};
use crate::arch::{Arch, X86Regs};

/// x86's four debug address registers (DR0–DR3) per vCPU.
pub use arch::debug::MAX_BREAKPOINTS;
use arch::paging::PagingState;
use arch::{boot, cpuid, debug};
use devices::{DeviceError, Devices, Lifecycle};
use memory::GuestRam;
use vcpu::{ResumeMethod, RunRequest, VcpuContext, VcpuHandle};

/// How long `kill` waits for each vCPU thread to end.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot create the VM's run directory file {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Host-dependent knobs of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmOptions {
    /// The KVM device, normally `/dev/kvm`.
    pub device: PathBuf,
    /// CPU features to hide from the guest.
    pub cpuid: CpuidPolicy,
    /// Enter an ELF kernel that has a PVH note through PVH (32-bit, paging off);
    /// otherwise through its 64-bit entry point with a zero page.
    pub prefer_pvh: bool,
}

impl KvmOptions {
    /// Defaults for this host: on a software KVM, whose emulator cannot run
    /// `xrstor`, XSAVE and everything that needs it are hidden.
    pub fn for_host() -> Self {
        let cpuid = if probe().needs_xsave_masked() {
            CpuidPolicy::masking(&[CpuFeature::Xsave])
        } else {
            CpuidPolicy::default()
        };
        KvmOptions {
            device: PathBuf::from("/dev/kvm"),
            cpuid,
            prefer_pvh: true,
        }
    }

    /// These options, also hiding `features` (and what depends on them) from the guest.
    pub fn hiding(self, features: &[CpuFeature]) -> Self {
        let cpuid = features
            .iter()
            .fold(self.cpuid, |policy, &f| policy.with(f));
        KvmOptions { cpuid, ..self }
    }
}

impl Default for KvmOptions {
    fn default() -> Self {
        KvmOptions::for_host()
    }
}

/// A bare long-mode program: identity-mapped first GiB, interrupts off, vCPU
/// `i` starts at `entries[i]` with RDI = `i` and its own 4 KiB stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BareProgram {
    pub mem_mib: u64,
    /// (guest-physical address, bytes) copied into RAM before start.
    pub segments: Vec<(u64, Vec<u8>)>,
    /// One entry point per vCPU; their number is the vCPU count.
    pub entries: Vec<u64>,
    /// Start every vCPU running (else all stopped, for arming breakpoints first).
    pub start_running: bool,
}

/// A VM whose pieces exist but whose vCPU threads do not run yet.
struct Assembly {
    kvm: Kvm,
    vm: VmFd,
    ram: Arc<GuestRam>,
    vcpu_fds: Vec<VcpuFd>,
    devices: Arc<Devices>,
    lifecycle: Arc<Lifecycle>,
    events: (Sender<VmEvent>, Receiver<VmEvent>),
}

fn assemble(
    cpus: usize,
    mem_mib: u64,
    opts: &KvmOptions,
    console_log: Option<File>,
) -> Result<Assembly, KvmError> {
    let kvm = vm::open_kvm(&opts.device)?;
    let vm = vm::create_vm(&kvm, cpus)?;
    let ram = Arc::new(GuestRam::new(&boot::ram_ranges(mem_mib << 20))?);
    ram.register(&vm)?;
    // irqchip and PIT before any vCPU; devices after the irqchip (irqfds).
    boot::setup_vm_before_vcpus(&vm)?;
    let (tx, rx) = channel();
    let lifecycle = Lifecycle::new(tx.clone());
    let devices = Arc::new(devices::pc_devices(&vm, &tx, &lifecycle, console_log)?);
    let platform = boot::Platform::query(&kvm, cpus, opts.cpuid)?;
    boot::write_system_tables(&ram, cpus)?;
    let mut vcpu_fds = Vec::with_capacity(cpus);
    for index in 0..cpus {
        let fd = vm
            .create_vcpu(index as u64)
            .map_err(|source| VmError::Kvm {
                what: "create a vCPU",
                source,
            })?;
        boot::configure_vcpu(&fd, index, &platform)?;
        vcpu_fds.push(fd);
    }
    Ok(Assembly {
        kvm,
        vm,
        ram,
        vcpu_fds,
        devices,
        lifecycle,
        events: (tx, rx),
    })
}

fn start(parts: Assembly, start_running: bool) -> Result<KvmVm, KvmError> {
    let Assembly {
        kvm,
        vm,
        ram,
        vcpu_fds,
        devices,
        lifecycle,
        events: (tx, rx),
    } = parts;
    let step = debug::StepMode::query(&vm);
    let resume = Arc::new(ResumeMethod::default());
    let ctx = VcpuContext {
        devices: devices.clone(),
        lifecycle: lifecycle.clone(),
        events: tx,
        step,
        resume: resume.clone(),
        ram: ram.clone(),
    };
    let mut vcpus = Vec::with_capacity(vcpu_fds.len());
    for (index, fd) in vcpu_fds.into_iter().enumerate() {
        vcpus.push(VcpuHandle::spawn(index, fd, ctx.clone(), start_running)?);
    }
    let threads: Vec<libc::pthread_t> = vcpus.iter().filter_map(VcpuHandle::pthread).collect();
    lifecycle.set_kick_all(Box::new(move || {
        threads.iter().for_each(|&t| kick::kick(t))
    }));
    Ok(KvmVm {
        seen_hits: vec![0; vcpus.len()],
        snapshots: vec![Cell::new(None); vcpus.len()],
        vcpus,
        resume,
        events: rx,
        lifecycle,
        devices,
        protocol: None,
        exit_reported: false,
        killed: false,
        _vm: vm,
        _kvm: kvm,
        ram,
    })
}

/// Boot Linux as `cfg` says. The console goes to `cfg.run_dir/console.log` and
/// to `VmEvent::Console`; an empty `cfg.initramfs` path means no initramfs.
/// Parameters enforcing `opts.cpuid` (e.g. `noxsave`) are appended to the command line.
pub fn launch(cfg: &VmConfig, opts: &KvmOptions) -> Result<KvmVm, KvmError> {
    let log_path = cfg.run_dir.join("console.log");
    let run_dir = |source| KvmError::RunDir {
        path: log_path.clone(),
        source,
    };
    std::fs::create_dir_all(&cfg.run_dir).map_err(run_dir)?;
    let console_log = File::create(&log_path).map_err(run_dir)?;
    let parts = assemble(cfg.cpus, cfg.mem_mib, opts, Some(console_log))?;
    let initrd = (!cfg.initramfs.as_os_str().is_empty()).then_some(cfg.initramfs.as_path());
    let cmdline = [cfg.cmdline.as_str()]
        .into_iter()
        .chain(cpuid::kernel_params(opts.cpuid).iter().copied())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let image = boot::LinuxImage {
        kernel: &cfg.kernel,
        initrd,
        cmdline: &cmdline,
    };
    let kernel = boot::load_linux(&parts.ram, &image, opts.prefer_pvh).map_err(BootError::from)?;
    boot::set_linux_entry(&parts.vcpu_fds[0], &kernel)?;
    let mut vm = start(parts, !cfg.debug)?;
    vm.protocol = Some(kernel.protocol);
    Ok(vm)
}

/// Start a bare program (see `BareProgram`).
pub fn launch_program(program: &BareProgram, opts: &KvmOptions) -> Result<KvmVm, KvmError> {
    let parts = assemble(program.entries.len(), program.mem_mib, opts, None)?;
    for (gpa, bytes) in &program.segments {
        parts.ram.write(*gpa, bytes)?;
    }
    for (index, (fd, &entry)) in parts.vcpu_fds.iter().zip(&program.entries).enumerate() {
        boot::set_bare_entry(fd, index, entry)?;
    }
    start(parts, program.start_running)
}

/// A running VM on memrace's own VMM.
pub struct KvmVm {
    // Field order is drop order: vCPU threads end (in `kill`) before the VM
    // fd closes, and the VM fd closes before guest RAM is unmapped.
    vcpus: Vec<VcpuHandle>,
    /// Breakpoint events `next_event` has handed out, per vCPU.
    seen_hits: Vec<u64>,
    /// Registers and paging state of each stopped vCPU, read once per stop: a condition
    /// reads the registers and then walks page tables several times, and every read
    /// would otherwise be a round trip to the vCPU thread. Cleared when it runs again.
    snapshots: Vec<Cell<Option<(X86Regs, PagingState)>>>,
    resume: Arc<ResumeMethod>,
    events: Receiver<VmEvent>,
    lifecycle: Arc<Lifecycle>,
    devices: Arc<Devices>,
    protocol: Option<BootProtocol>,
    exit_reported: bool,
    killed: bool,
    _vm: VmFd,
    _kvm: Kvm,
    ram: Arc<GuestRam>,
}

impl KvmVm {
    /// Why the VM stopped, once it has (exit-device code, reset, failure).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.lifecycle.reason()
    }

    /// How vCPUs resume past breakpoints on this VM: `ResumeFlag` until KVM has
    /// shown, at the first resume, that it ignores it.
    pub fn breakpoint_resume(&self) -> BreakpointResume {
        self.resume.current()
    }

    /// How the Linux kernel was entered (`None` for bare programs).
    pub fn boot_protocol(&self) -> Option<BootProtocol> {
        self.protocol
    }

    /// Read guest-physical memory; works while vCPUs run and after the VM exits.
    pub fn read_phys(&self, gpa: u64, len: usize) -> Result<Vec<u8>, BackendError> {
        let mut buf = vec![0; len];
        self.ram
            .read(gpa, &mut buf)
            .map_err(|e| memory_error(gpa, len, e))?;
        Ok(buf)
    }

    /// Port and MMIO addresses the guest touched that no device claims (the first
    /// `UNCLAIMED_LOGGED` of them).
    pub fn unclaimed_accesses(&self) -> Vec<(Space, u64)> {
        self.devices.unclaimed()
    }

    /// Unclaimed accesses beyond the first `UNCLAIMED_LOGGED` addresses: counted, not logged.
    pub fn unlogged_unclaimed_accesses(&self) -> u64 {
        self.devices.unclaimed_unlogged()
    }

    /// Tell every vCPU what to do, then collect the answers, so the set starts together.
    fn request_all(&self, what: impl Fn(VcpuId) -> RunRequest) -> Result<(), BackendError> {
        for (id, handle) in self.vcpus.iter().enumerate() {
            let request = what(id);
            if !matches!(request, RunRequest::Stop) {
                self.snapshots[id].set(None);
            }
            handle.request(request, self.seen_hits[id])?;
        }
        for handle in &self.vcpus {
            handle.state_reply()?;
        }
        Ok(())
    }

    fn vcpu(&self, id: VcpuId) -> Result<&VcpuHandle, BackendError> {
        self.vcpus
            .get(id)
            .ok_or(BackendError::NoSuchVcpu(id, self.vcpus.len()))
    }

    /// Registers and paging state of stopped vCPU `id` (cached until it runs again).
    fn snapshot(&self, id: VcpuId) -> Result<(X86Regs, PagingState), BackendError> {
        let handle = self.vcpu(id)?;
        if let Some(s) = self.snapshots[id].get() {
            return Ok(s);
        }
        let s = handle.snapshot()?;
        self.snapshots[id].set(Some(s));
        Ok(s)
    }
}

fn memory_error(addr: u64, len: usize, e: impl std::fmt::Display) -> BackendError {
    BackendError::Memory {
        addr,
        len,
        why: e.to_string(),
    }
}

impl From<VcpuError> for BackendError {
    fn from(e: VcpuError) -> Self {
        match e {
            VcpuError::Gone { .. } => BackendError::Exited,
            e => BackendError::Kvm(KvmError::Vcpu(e)),
        }
    }
}

impl Backend for KvmVm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    fn arch(&self) -> Arch {
        // memrace's own VMM boots x86_64 guests only (docs/arm64.md has the design for
        // arm64 hosts).
        Arch::X86_64
    }

    fn max_breakpoints(&self) -> usize {
        MAX_BREAKPOINTS
    }

    fn set_breakpoints(&mut self, vcpu: VcpuId, addrs: &[u64]) -> Result<(), BackendError> {
        let handle = self.vcpu(vcpu)?;
        if addrs.len() > MAX_BREAKPOINTS {
            return Err(BackendError::TooManyBreakpoints {
                vcpu,
                wanted: addrs.len(),
                limit: MAX_BREAKPOINTS,
                backend: "kvm",
            });
        }
        Ok(handle.set_breakpoints(addrs)?)
    }

    fn resume(&mut self, running: &[VcpuId]) -> Result<(), BackendError> {
        for &id in running {
            self.vcpu(id)?;
        }
        self.request_all(|id| {
            if running.contains(&id) {
                RunRequest::Run
            } else {
                RunRequest::Stop
            }
        })
    }

    fn service_parked(
        &mut self,
        running: &[VcpuId],
        parked: &[VcpuId],
    ) -> Result<bool, BackendError> {
        for &id in running.iter().chain(parked) {
            self.vcpu(id)?;
        }
        self.request_all(|id| {
            if parked.contains(&id) {
                RunRequest::Service
            } else if running.contains(&id) {
                RunRequest::Run
            } else {
                RunRequest::Stop
            }
        })?;
        Ok(true)
    }

    fn next_event(&mut self, deadline: Instant) -> Result<Option<VmEvent>, BackendError> {
        let event = if self.exit_reported {
            // After the exit only already-queued output remains: never wait for more.
            match self.events.try_recv() {
                Ok(event) => event,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    return Err(BackendError::Exited)
                }
            }
        } else {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err(BackendError::Exited),
            }
        };
        match event {
            VmEvent::Exited(_) => self.exit_reported = true,
            VmEvent::Breakpoint { vcpu, .. } => self.seen_hits[vcpu] += 1,
            _ => {}
        }
        Ok(Some(event))
    }

    fn stop_all(&mut self) -> Result<(), BackendError> {
        self.resume(&[])
    }

    fn regs(&mut self, vcpu: VcpuId) -> Result<Regs, BackendError> {
        Ok(Regs::X86_64(self.snapshot(vcpu)?.0))
    }

    fn set_regs(&mut self, vcpu: VcpuId, regs: &Regs) -> Result<(), BackendError> {
        let Regs::X86_64(regs) = regs else {
            return Err(BackendError::WrongArch {
                backend: self.name(),
                runs: Arch::X86_64,
                given: regs.arch(),
            });
        };
        let handle = self.vcpu(vcpu)?;
        // The cached snapshot would hide the new values.
        self.snapshots[vcpu].set(None);
        Ok(handle.set_regs(regs)?)
    }

    fn read_virt(&mut self, vcpu: VcpuId, addr: u64, len: usize) -> Result<Vec<u8>, BackendError> {
        const PAGE: u64 = 4096;
        // The address may come from guest memory (a task pointer): untrusted.
        crate::backend::check_guest_range(addr, len)?;
        let (_, paging) = self.snapshot(vcpu)?;
        let mut out = Vec::with_capacity(len);
        let mut gva = addr;
        while out.len() < len {
            let chunk = ((PAGE - gva % PAGE) as usize).min(len - out.len());
            let gpa = arch::paging::translate(&self.ram, &paging, gva)
                .map_err(|e| memory_error(addr, len, e))?;
            let start = out.len();
            out.resize(start + chunk, 0);
            self.ram
                .read(gpa, &mut out[start..])
                .map_err(|e| memory_error(addr, len, e))?;
            // Wraps only past the last byte (checked above), when the loop ends anyway.
            gva = gva.wrapping_add(chunk as u64);
        }
        Ok(out)
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.ram
            .write(gpa, data)
            .map_err(|e| memory_error(gpa, data.len(), e))
    }

    fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        // No kick may target a thread after it is joined.
        self.lifecycle.disarm_kick_all();
        for handle in &mut self.vcpus {
            handle.quit(QUIT_TIMEOUT);
        }
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        self.kill();
    }
}
