//! What kind of KVM this host has, so tests and the CLI can say which level
//! of testing is possible (and never report a skipped level as passed).

use std::path::Path;

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

fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
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

/// Classify a working KVM from the loaded modules and the host CPU flags.
fn classify(pvm: bool, intel_or_amd_module: Option<&str>, flags: &[String]) -> KvmLevel {
    if let Some(module) = intel_or_amd_module {
        return KvmLevel::Hardware {
            reason: format!("{module} is loaded: guests run on VMX/SVM hardware"),
        };
    }
    if pvm {
        return KvmLevel::Software {
            reason: "/dev/kvm is PVM (kvm_pvm, software): guests run in KVM's instruction emulator"
                .into(),
        };
    }
    match flags.iter().find(|f| *f == "vmx" || *f == "svm") {
        Some(flag) => KvmLevel::Hardware {
            reason: format!("host CPU has {flag} and /dev/kvm works"),
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
        Ok(_) => {
            let module = ["kvm_intel", "kvm_amd"]
                .into_iter()
                .find(|m| module_loaded(m));
            classify(module_loaded("kvm_pvm"), module, &cpu_flags())
        }
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
    fn hardware_modules_win_then_pvm_then_cpu_flags() {
        let flags = vec!["fpu".to_string(), "svm".to_string()];
        assert!(classify(true, Some("kvm_amd"), &flags).boots_linux_fully());
        assert!(matches!(
            classify(true, None, &flags),
            KvmLevel::Software { .. }
        ));
        assert!(classify(false, None, &flags).boots_linux_fully());
        assert!(matches!(
            classify(false, None, &[]),
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
