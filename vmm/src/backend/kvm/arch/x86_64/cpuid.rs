//! Per-vCPU CPUID, derived from `KVM_GET_SUPPORTED_CPUID`.
//!
//! Normalisation gives each vCPU its APIC id and a consistent topology
//! (N single-thread cores in one package), marks the CPU as running under a
//! hypervisor, and can hide feature families the host cannot execute.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("unknown CPU feature {name:?} (known: {known})")]
    UnknownFeature { name: String, known: String },
    #[error("the CPUID table has no room for leaf {leaf:#x} ({max} entries at most)")]
    TableFull { leaf: u32, max: usize },
}

/// CPU features that can be hidden from the guest. Hiding one also hides every
/// feature that cannot work without it (AVX without XSAVE, AVX2 without AVX, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuFeature {
    /// XSAVE/XRSTOR and the extended state they manage (leaf 0xD).
    Xsave,
    Avx,
    Avx2,
    /// The whole AVX-512 family.
    Avx512,
    /// AMX tiles.
    Amx,
    Fma,
    F16c,
    X2apic,
    Pcid,
    Rdrand,
    Rdseed,
    Rdtscp,
    /// 1 GiB pages.
    Pdpe1gb,
    /// 5-level paging.
    La57,
}

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Where a feature's bits are: (leaf, subleaf, register, bits).
type Bits = &'static [(u32, u32, Reg, &'static [u32])];

impl CpuFeature {
    pub const ALL: [CpuFeature; 14] = [
        CpuFeature::Xsave,
        CpuFeature::Avx,
        CpuFeature::Avx2,
        CpuFeature::Avx512,
        CpuFeature::Amx,
        CpuFeature::Fma,
        CpuFeature::F16c,
        CpuFeature::X2apic,
        CpuFeature::Pcid,
        CpuFeature::Rdrand,
        CpuFeature::Rdseed,
        CpuFeature::Rdtscp,
        CpuFeature::Pdpe1gb,
        CpuFeature::La57,
    ];

    /// The name on the command line (as Linux's /proc/cpuinfo spells it).
    pub fn name(self) -> &'static str {
        match self {
            CpuFeature::Xsave => "xsave",
            CpuFeature::Avx => "avx",
            CpuFeature::Avx2 => "avx2",
            CpuFeature::Avx512 => "avx512",
            CpuFeature::Amx => "amx",
            CpuFeature::Fma => "fma",
            CpuFeature::F16c => "f16c",
            CpuFeature::X2apic => "x2apic",
            CpuFeature::Pcid => "pcid",
            CpuFeature::Rdrand => "rdrand",
            CpuFeature::Rdseed => "rdseed",
            CpuFeature::Rdtscp => "rdtscp",
            CpuFeature::Pdpe1gb => "pdpe1gb",
            CpuFeature::La57 => "la57",
        }
    }

    pub fn from_name(name: &str) -> Result<CpuFeature, CpuidError> {
        CpuFeature::ALL
            .into_iter()
            .find(|f| f.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| CpuidError::UnknownFeature {
                name: name.to_string(),
                known: CpuFeature::ALL.map(CpuFeature::name).join(", "),
            })
    }

    /// The features that need this one (hidden along with it).
    fn dependents(self) -> &'static [CpuFeature] {
        use CpuFeature::*;
        match self {
            Xsave => &[Avx, Amx],
            Avx => &[Avx2, Avx512, Fma, F16c],
            _ => &[],
        }
    }

    /// The CPUID bits that advertise exactly this feature.
    fn bits(self) -> Bits {
        use Reg::*;
        match self {
            // XSAVE 26, OSXSAVE 27; leaf 0xD goes too (see `vcpu_cpuid`).
            CpuFeature::Xsave => &[(0x1, 0, Ecx, &[26, 27])],
            // AVX 28; VAES 9 and VPCLMULQDQ 10 are AVX encodings; AVX-VNNI 4.
            CpuFeature::Avx => &[
                (0x1, 0, Ecx, &[28]),
                (0x7, 0, Ecx, &[9, 10]),
                (0x7, 1, Eax, &[4]),
            ],
            CpuFeature::Avx2 => &[(0x7, 0, Ebx, &[5])],
            CpuFeature::Avx512 => &[
                // F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31.
                (0x7, 0, Ebx, &[16, 17, 21, 26, 27, 28, 30, 31]),
                // VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14.
                (0x7, 0, Ecx, &[1, 6, 11, 12, 14]),
                // 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, FP16 23.
                (0x7, 0, Edx, &[2, 3, 8, 23]),
                // BF16 5.
                (0x7, 1, Eax, &[5]),
            ],
            // AMX-BF16 22, AMX-TILE 24, AMX-INT8 25.
            CpuFeature::Amx => &[(0x7, 0, Edx, &[22, 24, 25])],
            CpuFeature::Fma => &[(0x1, 0, Ecx, &[12])],
            CpuFeature::F16c => &[(0x1, 0, Ecx, &[29])],
            CpuFeature::X2apic => &[(0x1, 0, Ecx, &[21])],
            CpuFeature::Pcid => &[(0x1, 0, Ecx, &[17])],
            CpuFeature::Rdrand => &[(0x1, 0, Ecx, &[30])],
            CpuFeature::Rdseed => &[(0x7, 0, Ebx, &[18])],
            CpuFeature::Rdtscp => &[(0x8000_0001, 0, Edx, &[27])],
            CpuFeature::Pdpe1gb => &[(0x8000_0001, 0, Edx, &[26])],
            CpuFeature::La57 => &[(0x7, 0, Ecx, &[16])],
        }
    }
}

/// Which features to hide from the guest: a set of `CpuFeature`s, closed
/// under `dependents` when built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidPolicy {
    masked: u32,
}

impl CpuidPolicy {
    /// Hide `features` and everything that depends on them.
    pub fn masking(features: &[CpuFeature]) -> Self {
        features
            .iter()
            .fold(CpuidPolicy::default(), |policy, &f| policy.with(f))
    }

    /// This policy, also hiding `feature` and its dependents.
    pub fn with(self, feature: CpuFeature) -> Self {
        let masked = CpuidPolicy {
            masked: self.masked | 1 << feature as u32,
        };
        feature
            .dependents()
            .iter()
            .fold(masked, |policy, &f| policy.with(f))
    }

    pub fn masks(self, feature: CpuFeature) -> bool {
        self.masked & 1 << feature as u32 != 0
    }

    /// The hidden features, in `CpuFeature::ALL` order.
    pub fn masked(self) -> Vec<CpuFeature> {
        CpuFeature::ALL
            .into_iter()
            .filter(|&f| self.masks(f))
            .collect()
    }
}

/// Kernel parameters that enforce `policy` from inside the guest. PVM ORs the
/// host's own leaf-1 ECX bits (XSAVE, AVX, …) into whatever `KVM_SET_CPUID2`
/// says and reports the host's leaves 7 and 0xD as they are (measured by
/// `cpuid_masking_hides_the_named_features`), so on PVM hiding XSAVE through
/// CPUID alone does not stop Linux from running `xrstor`; `noxsave` does.
pub fn kernel_params(policy: CpuidPolicy) -> &'static [&'static str] {
    if policy.masks(CpuFeature::Xsave) {
        &["noxsave"]
    } else {
        &[]
    }
}

/// Leaf 0x4000_0000: "KVMKVMKVM\0\0\0", highest hypervisor leaf 0x4000_0001.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const HYPERVISOR_BASE: u32 = 0x4000_0000;
const KVM_FEATURES: u32 = 0x4000_0001;
/// PV features offered in leaf 0x4000_0001 EAX (when KVM supports them): the
/// clocks (kvmclock 0 and 3, stable bit 24) and `NOP_IO_DELAY` (1). The others
/// react to a vCPU being descheduled: KVM marks a vCPU that sits parked at a
/// breakpoint outside `KVM_RUN` as preempted, and a guest with PV TLB flush
/// then skips its flush IPIs, with PV spinlocks halts instead of spinning, with
/// PV sched-yield yields to it. Races would then depend on which vCPUs the bench
/// holds, unlike under the qemu backend, so those features stay hidden.
pub const KVM_PV_FEATURES_OFFERED: u32 = 1 << 0 | 1 << 1 | 1 << 3 | 1 << 24;

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
fn normalize_leaf_1(e: &mut kvm_cpuid_entry2, apic_id: u32, cpus: u32) {
    const HTT: u32 = 28;
    const HYPERVISOR: u32 = 31;
    e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((cpus & 0xff) << 16);
    if cpus > 1 {
        e.edx |= 1 << HTT;
    } else {
        clear(&mut e.edx, &[HTT]);
    }
    e.ecx |= 1 << HYPERVISOR;
}

/// Clear the bits of every feature `policy` hides from entry `e`.
fn mask_features(e: &mut kvm_cpuid_entry2, policy: CpuidPolicy) {
    for feature in policy.masked() {
        for &(leaf, subleaf, reg, bits) in feature.bits() {
            if e.function == leaf && e.index == subleaf {
                let reg = match reg {
                    Reg::Eax => &mut e.eax,
                    Reg::Ebx => &mut e.ebx,
                    Reg::Ecx => &mut e.ecx,
                    Reg::Edx => &mut e.edx,
                };
                clear(reg, bits);
            }
        }
    }
}

/// The hypervisor leaves, set here rather than passed through from
/// `KVM_GET_SUPPORTED_CPUID`: the KVM signature, and of KVM's PV features only
/// `KVM_PV_FEATURES_OFFERED`.
fn set_hypervisor_leaves(entries: &mut Vec<kvm_cpuid_entry2>) {
    let supported = entries
        .iter()
        .find(|e| e.function == KVM_FEATURES)
        .map_or(0, |e| e.eax);
    entries.retain(|e| e.function != HYPERVISOR_BASE && e.function != KVM_FEATURES);
    let [ebx, ecx, edx] = KVM_SIGNATURE;
    entries.push(kvm_cpuid_entry2 {
        function: HYPERVISOR_BASE,
        eax: KVM_FEATURES,
        ebx,
        ecx,
        edx,
        ..Default::default()
    });
    entries.push(kvm_cpuid_entry2 {
        function: KVM_FEATURES,
        eax: supported & KVM_PV_FEATURES_OFFERED,
        ..Default::default()
    });
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
pub fn vcpu_cpuid(
    supported: &CpuId,
    apic_id: u32,
    cpus: u32,
    policy: CpuidPolicy,
) -> Result<CpuId, CpuidError> {
    let mut entries = supported.as_slice().to_vec();
    let amd = is_amd(&entries);
    for e in &mut entries {
        mask_features(e, policy);
        match e.function {
            0x1 => normalize_leaf_1(e, apic_id, cpus),
            // Intel deterministic cache parameters: cores per package, sharing.
            0x4 if !amd => {
                let shared_by_all = (e.eax >> 5) & 0x7 == 3;
                let sharing = if shared_by_all { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cpus - 1) & 0x3f) << 26);
            }
            0xb | 0x1f => normalize_topology(e, apic_id, cpus),
            0xd if policy.masks(CpuFeature::Xsave) => {
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
    set_hypervisor_leaves(&mut entries);
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TableFull {
        leaf: KVM_FEATURES,
        max: kvm_bindings::KVM_MAX_CPUID_ENTRIES,
    })
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
        let policy = CpuidPolicy::masking(&[CpuFeature::Xsave]);
        let cpuid = vcpu_cpuid(&host, 3, 4, policy).unwrap();
        let leaves = cpuid.as_slice();
        assert_eq!(leaves[0].ebx >> 24, 3);
        assert_eq!((leaves[0].ebx >> 16) & 0xff, 4);
        assert_eq!(leaves[0].ecx & (1 << 26), 0, "XSAVE masked");
        assert_ne!(leaves[0].ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!((leaves[1].eax, leaves[1].ebx, leaves[1].edx), (2, 4, 3));
        assert_eq!(leaves[2].ebx & (1 << 5), 0, "AVX2 masked with XSAVE");
    }

    #[test]
    fn masking_a_feature_masks_what_depends_on_it() {
        let policy = CpuidPolicy::masking(&[CpuFeature::Xsave, CpuFeature::Rdtscp]);
        use CpuFeature::*;
        assert_eq!(
            policy.masked(),
            [Xsave, Avx, Avx2, Avx512, Amx, Fma, F16c, Rdtscp]
        );
        assert_eq!(CpuidPolicy::masking(&[Avx2]).masked(), [Avx2]);
        assert_eq!(kernel_params(policy), ["noxsave"]);
        assert!(kernel_params(CpuidPolicy::masking(&[Avx])).is_empty());
    }

    #[test]
    fn feature_names_parse_and_unknown_ones_list_the_known() {
        assert_eq!(CpuFeature::from_name("AVX2").unwrap(), CpuFeature::Avx2);
        for f in CpuFeature::ALL {
            assert_eq!(CpuFeature::from_name(f.name()).unwrap(), f);
        }
        let err = CpuFeature::from_name("avx3").unwrap_err().to_string();
        assert!(
            err.contains("\"avx3\"") && err.contains("xsave, avx,"),
            "{err}"
        );
    }

    #[test]
    fn the_hypervisor_leaves_are_kvms_with_only_the_offered_pv_features() {
        let mut pv = entry(KVM_FEATURES, 0);
        pv.eax = 0xffff_ffff;
        let odd_signature = entry(HYPERVISOR_BASE, 0);
        let host = CpuId::from_entries(&[entry(1, 0), odd_signature, pv]).unwrap();
        let cpuid = vcpu_cpuid(&host, 0, 1, CpuidPolicy::default()).unwrap();
        let leaf = |f| *cpuid.as_slice().iter().find(|e| e.function == f).unwrap();
        let base = leaf(HYPERVISOR_BASE);
        assert_eq!([base.ebx, base.ecx, base.edx], KVM_SIGNATURE);
        assert_eq!(base.eax, KVM_FEATURES);
        assert_eq!(leaf(KVM_FEATURES).eax, KVM_PV_FEATURES_OFFERED);
        // No PV features from KVM: none offered, the signature still set.
        let bare = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        let cpuid = vcpu_cpuid(&bare, 0, 1, CpuidPolicy::default()).unwrap();
        let pv = cpuid.as_slice().iter().find(|e| e.function == KVM_FEATURES);
        assert_eq!(pv.map(|e| e.eax), Some(0));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5)],
            [0, 1, 2, 2, 3]
        );
    }
}
