//! Per-vCPU CPUID, derived from `KVM_GET_SUPPORTED_CPUID`.
//!
//! Normalisation gives each vCPU its APIC id and a consistent topology
//! (N single-thread cores in one package), marks the CPU as running under a
//! hypervisor, and can hide feature families the host cannot execute.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Which features to hide from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidPolicy {
    /// Hide XSAVE and everything that depends on it (AVX, AVX2, AVX-512, AMX,
    /// FMA, F16C; leaf 0xD). PVM's instruction emulator cannot run `xrstor`,
    /// which Linux executes in FPU init when XSAVE is advertised.
    pub mask_xsave: bool,
}

/// Kernel parameters that enforce `policy` from inside the guest. PVM keeps
/// the host's leaf-1 ECX whatever `KVM_SET_CPUID2` says (checked by
/// `each_vcpu_sees_its_own_normalised_cpuid`), so on PVM hiding XSAVE through
/// CPUID alone does not stop Linux from running `xrstor`; `noxsave` does.
pub fn kernel_params(policy: CpuidPolicy) -> &'static [&'static str] {
    if policy.mask_xsave {
        &["noxsave"]
    } else {
        &[]
    }
}

fn clear(reg: &mut u32, bits: &[u32]) {
    for bit in bits {
        *reg &= !(1 << bit);
    }
}

/// Bits needed to number `n` items (x2APIC id shift for the core level).
fn id_bits(n: u32) -> u32 {
    u32::BITS - n.saturating_sub(1).leading_zeros()
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .any(|e| e.function == 0 && e.ebx == 0x6874_7541 && e.edx == 0x6974_6e65)
}

/// Leaf 1: APIC id, logical CPU count, hypervisor bit.
fn normalize_leaf_1(e: &mut kvm_cpuid_entry2, apic_id: u32, cpus: u32, policy: CpuidPolicy) {
    const HTT: u32 = 28;
    const HYPERVISOR: u32 = 31;
    e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((cpus & 0xff) << 16);
    if cpus > 1 {
        e.edx |= 1 << HTT;
    } else {
        clear(&mut e.edx, &[HTT]);
    }
    e.ecx |= 1 << HYPERVISOR;
    if policy.mask_xsave {
        // FMA 12, XSAVE 26, OSXSAVE 27, AVX 28, F16C 29.
        clear(&mut e.ecx, &[12, 26, 27, 28, 29]);
    }
}

/// Leaf 7: the AVX2/AVX-512/AMX/VAES families live here.
fn mask_leaf_7(e: &mut kvm_cpuid_entry2) {
    match e.index {
        0 => {
            // AVX2 5, AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31.
            clear(&mut e.ebx, &[5, 16, 17, 21, 26, 27, 28, 30, 31]);
            // VBMI 1, VBMI2 6, VAES 9, VPCLMULQDQ 10, VNNI 11, BITALG 12, VPOPCNTDQ 14.
            clear(&mut e.ecx, &[1, 6, 9, 10, 11, 12, 14]);
            // 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, FP16 23, AMX-TILE 24, AMX-INT8 25.
            clear(&mut e.edx, &[2, 3, 8, 22, 23, 24, 25]);
        }
        1 => clear(&mut e.eax, &[4, 5]), // AVX-VNNI, AVX512-BF16
        _ => {}
    }
}

/// Leaves 0xB / 0x1F: one thread per core, `cpus` cores per package.
fn normalize_topology(e: &mut kvm_cpuid_entry2, apic_id: u32, cpus: u32) {
    const LEVEL_SMT: u32 = 1;
    const LEVEL_CORE: u32 = 2;
    e.edx = apic_id;
    match e.index {
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx = LEVEL_SMT << 8;
        }
        1 => {
            e.eax = id_bits(cpus);
            e.ebx = cpus;
            e.ecx = (LEVEL_CORE << 8) | 1;
        }
        n => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = n;
        }
    }
}

/// Build the CPUID table of vCPU `apic_id` out of `cpus`.
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u32, cpus: u32, policy: CpuidPolicy) -> CpuId {
    let mut cpuid = supported.clone();
    let amd = is_amd(cpuid.as_slice());
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => normalize_leaf_1(e, apic_id, cpus, policy),
            // Intel deterministic cache parameters: cores per package, sharing.
            0x4 if !amd => {
                let shared_by_all = (e.eax >> 5) & 0x7 == 3;
                let sharing = if shared_by_all { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cpus - 1) & 0x3f) << 26);
            }
            0x7 if policy.mask_xsave => mask_leaf_7(e),
            0xb | 0x1f => normalize_topology(e, apic_id, cpus),
            0xd if policy.mask_xsave => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            // AMD: core count and APIC-id width.
            0x8000_0008 if amd => e.ecx = (id_bits(cpus) << 12) | ((cpus - 1) & 0xff),
            // AMD topology extensions: extended APIC id, core id, one thread per core.
            0x8000_001e if amd => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn each_vcpu_sees_its_apic_id_and_the_package_size() {
        let host = CpuId::from_entries(&[entry(1, 0), entry(0xb, 1), entry(7, 0)]).unwrap();
        let cpuid = vcpu_cpuid(&host, 3, 4, CpuidPolicy { mask_xsave: true });
        let leaves = cpuid.as_slice();
        assert_eq!(leaves[0].ebx >> 24, 3);
        assert_eq!((leaves[0].ebx >> 16) & 0xff, 4);
        assert_eq!(leaves[0].ecx & (1 << 26), 0, "XSAVE masked");
        assert_ne!(leaves[0].ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!((leaves[1].eax, leaves[1].ebx, leaves[1].edx), (2, 4, 3));
        assert_eq!(leaves[2].ebx & (1 << 5), 0, "AVX2 masked");
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5)],
            [0, 1, 2, 2, 3]
        );
    }
}
