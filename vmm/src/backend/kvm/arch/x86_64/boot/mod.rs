//! x86_64: how a VM and its vCPUs are prepared to run Linux or a bare program.
//! VM-wide state is here; per-vCPU state in `vcpu`.
//!
//! Ordering rules (KVM's, not ours):
//! * the in-kernel irqchip and PIT exist before any vCPU is created;
//! * `KVM_SET_CPUID2` comes before the MSRs (KVM validates MSRs against CPUID);
//! * the LAPIC is programmed after CPUID (the APIC id comes from it).

pub mod layout;
mod linux;
mod mptable;
mod msr;
mod regs;
mod vcpu;

pub use linux::{load_linux, BootProtocol, LinuxImage, LoadError};
pub use mptable::MptableError;
pub use regs::LONG_MODE_CODE_SELECTOR;
pub use vcpu::{configure_vcpu, set_bare_entry, set_linux_entry, Platform};

use kvm_ioctls::VmFd;

use super::cpuid::CpuidError;
use super::interrupts::{self, InterruptError};
use crate::backend::kvm::memory::GuestRam;
use layout::{KVM_TSS_ADDRESS, MMIO_GAP_END, MMIO_GAP_START};
use msr::MsrError;
use regs::RegsError;

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
    Interrupts(#[from] InterruptError),
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
    interrupts::create_irqchip(vm)?;
    Ok(())
}

/// Tables every vCPU shares: GDT, identity page tables, MP table.
pub fn write_system_tables(ram: &GuestRam, cpus: usize) -> Result<(), BootError> {
    regs::write_boot_tables(ram)?;
    mptable::write_mptable(ram, cpus)?;
    Ok(())
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
