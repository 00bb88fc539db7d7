//! Per-vCPU state at boot: what every vCPU needs whatever it runs (CPUID, MSRs,
//! FPU, LAPIC wiring, in that order), then the entry state of a Linux kernel or
//! a bare program.

use kvm_bindings::{kvm_mp_state, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{Kvm, VcpuFd};

use super::layout::{self, HIMEM_START};
use super::linux::{BootProtocol, LoadedKernel};
use super::regs::{self, CpuMode, EntryRegs};
use super::{kvm, msr, BootError};
use crate::backend::kvm::arch::x86_64::cpuid::{self, CpuidPolicy};
use crate::backend::kvm::arch::x86_64::interrupts;

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
