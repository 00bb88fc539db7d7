//! Which backend a command boots on (`--backend`), decided once from what this host's
//! KVM can do. Commands call [`choose`]; nothing above the backends probes KVM itself.

use super::kvm::{self, KvmLevel, KvmOptions};
use super::qemu::QemuAccel;
use super::{BackendError, Launcher};

/// The `--backend` choice.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum BackendKind {
    /// qemu-system-x86_64 (TCG, or KVM where the host has hardware virtualization).
    Qemu,
    /// memrace's own VMM on /dev/kvm (needs hardware virtualization to boot Linux).
    Kvm,
    /// Pick the best backend this host supports and say why.
    Auto,
}

/// The backend for a full Linux boot, and why it was chosen. `kvm` is refused on a
/// host whose KVM cannot boot Linux to the end (a software KVM reaches early boot only).
pub fn choose(kind: BackendKind) -> Result<(Launcher, String), BackendError> {
    let level = kvm::probe();
    match (kind, level.boots_linux_fully()) {
        (BackendKind::Kvm | BackendKind::Auto, true) => {
            Ok((Launcher::Kvm(KvmOptions::for_host()), kvm::describe()))
        }
        (BackendKind::Kvm, false) => Err(BackendError::Unavailable(kvm_refusal(&level))),
        (BackendKind::Qemu | BackendKind::Auto, _) => {
            let (accel, why) = qemu_accel(&level);
            Ok((Launcher::Qemu(accel), why))
        }
    }
}

/// QEMU's accelerator on a host with this KVM, and why.
pub fn qemu_accel(level: &KvmLevel) -> (QemuAccel, String) {
    match level {
        KvmLevel::Hardware { reason } => (QemuAccel::Kvm, reason.clone()),
        KvmLevel::Software { reason } => (
            QemuAccel::Tcg,
            format!("{reason}; a full Linux boot needs hardware virtualization"),
        ),
        KvmLevel::Unavailable { reason } => (QemuAccel::Tcg, reason.clone()),
    }
}

fn kvm_refusal(level: &KvmLevel) -> String {
    match level {
        KvmLevel::Software { reason } => format!(
            "--backend kvm: this host has only a software KVM ({reason}); Linux gets no further \
             than early boot on it. Use --backend qemu (or auto)"
        ),
        other => format!(
            "--backend kvm: no usable KVM on this host ({}); use --backend qemu",
            other.reason()
        ),
    }
}
