//! What kind of KVM this host has, so tests and the CLI can say which level
//! of testing is possible (and never report a skipped level as passed).

use std::path::Path;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;

use super::vm::open_kvm;

/// The host's KVM, from most to least capable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmLevel {
    /// Hardware virtualization (VMX/SVM): guests run natively; Linux boots fully.
    Hardware { reason: String },
    /// A software KVM (PVM, `kvm_pvm`): unmodified guests run in KVM's
    /// instruction emulator, ~1000x slower; good for small guests and early boot.
    Software { reason: String },
    /// No usable `/dev/kvm`.
    Unavailable { reason: String },
}

impl KvmLevel {
    pub fn reason(&self) -> &str {
        match self {
            KvmLevel::Hardware { reason }
            | KvmLevel::Software { reason }
            | KvmLevel::Unavailable { reason } => reason,
        }
    }

    /// VMs can be created at all.
    pub fn can_run_vms(&self) -> bool {
        !matches!(self, KvmLevel::Unavailable { .. })
    }

    /// A full Linux boot finishes in useful time.
    pub fn boots_linux_fully(&self) -> bool {
        matches!(self, KvmLevel::Hardware { .. })
    }

    /// The guest-visible features the host can actually execute should be masked.
    pub fn needs_xsave_masked(&self) -> bool {
        matches!(self, KvmLevel::Software { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            KvmLevel::Hardware { .. } => "hardware",
            KvmLevel::Software { .. } => "software (PVM)",
            KvmLevel::Unavailable { .. } => "unavailable",
        }
    }
}

/// A kernel module exists, loaded or built in (built-in code with parameters has a
/// `/sys/module` entry too, whether or not its initialisation succeeded).
fn module_present(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// A loadable module whose initialisation succeeded (built-in code has no `initstate`).
/// A loaded `kvm_intel`/`kvm_amd` is KVM's vendor module: only one can register.
fn module_live(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/module").join(name).join("initstate"))
        .is_ok_and(|state| state.trim() == "live")
}

fn cpu_flags() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .map(|flags| flags.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Whether `/dev/kvm` offers VMX or SVM to its guests (nested virtualization):
/// only a KVM on hardware virtualization can, never a software one.
fn offers_nested_virtualization(kvm: &Kvm) -> Option<&'static str> {
    const VMX: (u32, u32) = (0x1, 1 << 5); // leaf 1 ECX
    const SVM: (u32, u32) = (0x8000_0001, 1 << 2); // leaf 0x8000_0001 ECX
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).ok()?;
    let has = |(leaf, bit): (u32, u32)| {
        cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == leaf && e.index == 0 && e.ecx & bit != 0)
    };
    [("vmx", VMX), ("svm", SVM)]
        .into_iter()
        .find(|&(_, feature)| has(feature))
        .map(|(name, _)| name)
}

/// What the host shows about the KVM behind a working `/dev/kvm`.
#[derive(Debug, Default)]
struct Evidence {
    /// VMX/SVM that KVM offers to guests.
    nested: Option<&'static str>,
    /// A loaded (not built-in) kvm_intel or kvm_amd.
    live_vendor_module: Option<&'static str>,
    /// kvm_pvm loaded or built in.
    pvm: bool,
    /// vmx/svm in the host CPU's flags.
    cpu_flag: Option<String>,
}

/// Classify a working KVM, strongest evidence first. PVM can sit next to a
/// built-in kvm_intel on a CPU with vmx, so neither the CPU flag nor a built-in
/// vendor module proves that `/dev/kvm` is the hardware one; what KVM itself
/// offers, or a vendor module that loaded, does.
fn classify(evidence: &Evidence) -> KvmLevel {
    if let Some(feature) = evidence.nested {
        return KvmLevel::Hardware {
            reason: format!(
                "/dev/kvm offers {feature} to guests: it runs on hardware virtualization"
            ),
        };
    }
    if let Some(module) = evidence.live_vendor_module {
        return KvmLevel::Hardware {
            reason: format!("{module} is loaded: guests run on VMX/SVM hardware"),
        };
    }
    if evidence.pvm {
        return KvmLevel::Software {
            reason: "/dev/kvm is PVM (kvm_pvm, software): guests run in KVM's instruction emulator"
                .into(),
        };
    }
    match &evidence.cpu_flag {
        Some(flag) => KvmLevel::Hardware {
            reason: format!("host CPU has {flag}, /dev/kvm works and no software KVM is present"),
        },
        None => KvmLevel::Software {
            reason: "/dev/kvm works but the CPU shows neither vmx nor svm: assuming a software KVM"
                .into(),
        },
    }
}

/// Probe `/dev/kvm` and classify it.
pub fn probe() -> KvmLevel {
    probe_device(Path::new("/dev/kvm"))
}

/// Probe a KVM device at `path`.
pub fn probe_device(path: &Path) -> KvmLevel {
    match open_kvm(path) {
        Err(e) => KvmLevel::Unavailable {
            reason: e.to_string(),
        },
        Ok(kvm) => classify(&Evidence {
            nested: offers_nested_virtualization(&kvm),
            live_vendor_module: ["kvm_intel", "kvm_amd"]
                .into_iter()
                .find(|m| module_live(m)),
            pvm: module_present("kvm_pvm"),
            cpu_flag: cpu_flags().into_iter().find(|f| f == "vmx" || f == "svm"),
        }),
    }
}

/// One line for humans: `kvm: software (PVM) — /dev/kvm is PVM ...`.
pub fn describe() -> String {
    let level = probe();
    format!("kvm: {} — {}", level.name(), level.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_itself_then_a_loaded_vendor_module_then_pvm_then_cpu_flags() {
        let hardware = |e: &Evidence| classify(e).boots_linux_fully();
        let svm = Some("svm".to_string());
        // PVM next to a built-in kvm_amd on an SVM CPU: software, unless KVM proves otherwise.
        let pvm_on_svm_cpu = Evidence {
            pvm: true,
            cpu_flag: svm.clone(),
            ..Evidence::default()
        };
        assert!(!hardware(&pvm_on_svm_cpu));
        assert!(hardware(&Evidence {
            nested: Some("svm"),
            ..pvm_on_svm_cpu
        }));
        assert!(hardware(&Evidence {
            live_vendor_module: Some("kvm_amd"),
            pvm: true,
            ..Evidence::default()
        }));
        assert!(hardware(&Evidence {
            cpu_flag: svm,
            ..Evidence::default()
        }));
        assert!(matches!(
            classify(&Evidence::default()),
            KvmLevel::Software { .. }
        ));
    }

    #[test]
    fn a_missing_device_is_unavailable_with_advice() {
        let level = probe_device(Path::new("/nonexistent/kvm"));
        assert!(!level.can_run_vms());
        assert!(
            level.reason().contains("--backend qemu"),
            "{}",
            level.reason()
        );
    }
}
