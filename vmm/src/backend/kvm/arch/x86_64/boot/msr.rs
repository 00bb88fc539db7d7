//! Model-specific registers at boot. Must be written after `KVM_SET_CPUID2`:
//! KVM checks MSR writes against the CPUID the vCPU advertises.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("cannot build the MSR list: {0:?}")]
    List(vmm_sys_util::fam::Error),
    #[error("KVM refused the boot MSRs of vCPU {vcpu}: {source}")]
    Set {
        vcpu: usize,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs for vCPU {vcpu} (first refused: {refused:#x})")]
    Partial {
        vcpu: usize,
        set: usize,
        wanted: usize,
        refused: u32,
    },
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// The boot MSR values, restricted to those KVM says it supports (`supported`
/// is the `KVM_GET_MSR_INDEX_LIST` answer).
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .filter(|(index, _)| supported.contains(index))
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

pub fn set_boot_msrs(vcpu: &VcpuFd, index: usize, supported: &[u32]) -> Result<(), MsrError> {
    let entries = boot_msrs(supported);
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::List)?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| MsrError::Set {
        vcpu: index,
        source,
    })?;
    if set != entries.len() {
        return Err(MsrError::Partial {
            vcpu: index,
            set,
            wanted: entries.len(),
            refused: entries[set].index,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_supported_msrs_are_written() {
        let msrs = boot_msrs(&[MSR_LSTAR, MSR_MTRR_DEF_TYPE, 0x1234]);
        let indices: Vec<u32> = msrs.iter().map(|m| m.index).collect();
        assert_eq!(indices, vec![MSR_LSTAR, MSR_MTRR_DEF_TYPE]);
        assert_eq!(msrs[1].data, MTRR_ENABLE_WRITE_BACK);
    }
}
