//! x86_64: how a VM and its vCPUs are prepared to run Linux or a bare program.
//!
//! Ordering rules (KVM's, not ours):
//! * the in-kernel irqchip and PIT exist before any vCPU is created;
//! * `KVM_SET_CPUID2` comes before the MSRs (KVM validates MSRs against CPUID);
//! * the LAPIC is programmed after CPUID (the APIC id comes from it).

mod cpuid;
mod debug;
mod interrupts;
pub mod layout;
mod linux;
mod mptable;
mod msr;
mod paging;
mod regs;

pub use cpuid::{
    kernel_params, CpuFeature, CpuidError, CpuidPolicy, KVM_PV_FEATURES_OFFERED, KVM_SIGNATURE,
};
pub use debug::{
    arm_single_step, cancel_suppression, interrupted_at, position, set_breakpoints, set_regs,
    snapshot, suppress_breakpoint_once, suppression_pending, DebugError, StepMode, MAX_BREAKPOINTS,
};
pub use linux::{load_linux, BootProtocol, LinuxImage, LoadError, LoadedKernel};
pub use mptable::MptableError;
pub use paging::{translate, PagingError, PagingState};
pub use regs::LONG_MODE_CODE_SELECTOR;

use kvm_bindings::{
    kvm_mp_state, kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::backend::kvm::memory::GuestRam;
use interrupts::LapicError;
use layout::{HIMEM_START, KVM_TSS_ADDRESS, MMIO_GAP_END, MMIO_GAP_START};
use msr::MsrError;
use regs::{CpuMode, EntryRegs, RegsError};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    Msr(#[from] MsrError),
    #[error(transparent)]
    Lapic(#[from] LapicError),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    CpuidTable(#[from] CpuidError),
    #[error("KVM refused the CPUID table of vCPU {vcpu}: {source}")]
    Cpuid {
        vcpu: usize,
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> BootError {
    move |source| BootError::Kvm { what, source }
}

/// RAM ranges (start, length) for a guest of `bytes`: RAM from 0 up to the
/// 32-bit MMIO gap, the rest above 4 GiB.
pub fn ram_ranges(bytes: u64) -> Vec<(u64, u64)> {
    let low = bytes.min(MMIO_GAP_START);
    let mut ranges = vec![(0, low)];
    if bytes > low {
        ranges.push((MMIO_GAP_END, bytes - low));
    }
    ranges
}

/// VM-wide state that must exist before the first vCPU: the real-mode TSS,
/// the in-kernel PIC/IOAPIC/LAPICs and the PIT.
pub fn setup_vm_before_vcpus(vm: &VmFd) -> Result<(), BootError> {
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm("create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("create the PIT"))
}

/// Tables every vCPU shares: GDT, identity page tables, MP table.
pub fn write_system_tables(ram: &GuestRam, cpus: usize) -> Result<(), BootError> {
    regs::write_boot_tables(ram)?;
    mptable::write_mptable(ram, cpus)?;
    Ok(())
}

/// What the host's KVM offers, fetched once per VM.
pub struct Platform {
    cpuid: CpuId,
    msrs: Vec<u32>,
    cpus: usize,
    policy: CpuidPolicy,
}

impl Platform {
    pub fn query(kvm_fd: &Kvm, cpus: usize, policy: CpuidPolicy) -> Result<Self, BootError> {
        let cpuid = kvm_fd
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("report supported CPUID"))?;
        let msrs = kvm_fd
            .get_msr_index_list()
            .map_err(kvm("list MSRs"))?
            .as_slice()
            .to_vec();
        Ok(Platform {
            cpuid,
            msrs,
            cpus,
            policy,
        })
    }
}

/// Per-vCPU architectural state every vCPU needs, whatever it runs.
pub fn configure_vcpu(vcpu: &VcpuFd, index: usize, platform: &Platform) -> Result<(), BootError> {
    let cpuid = cpuid::vcpu_cpuid(
        &platform.cpuid,
        index as u32,
        platform.cpus as u32,
        platform.policy,
    )?;
    // CPUID before MSRs: KVM checks MSR writes against the advertised features.
    vcpu.set_cpuid2(&cpuid).map_err(|source| BootError::Cpuid {
        vcpu: index,
        source,
    })?;
    msr::set_boot_msrs(vcpu, index, &platform.msrs)?;
    regs::set_fpu(vcpu, index)?;
    interrupts::set_lint(vcpu, index)?;
    Ok(())
}

/// Entry state of the boot vCPU of a Linux guest. Application processors are
/// left in KVM's wait-for-SIPI state; the kernel starts them with INIT/SIPI.
pub fn set_linux_entry(vcpu: &VcpuFd, kernel: &LoadedKernel) -> Result<(), BootError> {
    let (mode, rsi, rbx) = match kernel.protocol {
        BootProtocol::Pvh => (CpuMode::Protected32, 0, kernel.boot_info),
        BootProtocol::Linux64 => (CpuMode::Long64, kernel.boot_info, 0),
    };
    regs::set_sregs(vcpu, 0, mode)?;
    // The 64-bit protocol wants a usable stack; below the kernel is free.
    let entry = EntryRegs {
        rip: kernel.entry,
        rsp: HIMEM_START - 16,
        rsi,
        rbx,
        rdi: 0,
    };
    regs::set_regs(vcpu, 0, &entry)?;
    Ok(())
}

/// Entry state of vCPU `index` of a bare long-mode program starting at `rip`,
/// with RDI = `index` and a private stack. Every such vCPU is runnable at once.
pub fn set_bare_entry(vcpu: &VcpuFd, index: usize, rip: u64) -> Result<(), BootError> {
    regs::set_sregs(vcpu, index, CpuMode::Long64)?;
    let entry = EntryRegs {
        rip,
        rsp: layout::bare_stack_top(index),
        rsi: 0,
        rbx: 0,
        rdi: index as u64,
    };
    regs::set_regs(vcpu, index, &entry)?;
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(kvm("make a vCPU runnable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(1 << 30), vec![(0, 1 << 30)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
