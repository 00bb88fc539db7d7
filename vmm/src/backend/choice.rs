//! Which backend a command boots on (`--backend`), decided once from what this host's
//! KVM can do. Commands call [`choose`]; nothing above the backends probes KVM itself.

use super::kvm::{self, KvmLevel, KvmOptions};
use super::qemu::QemuAccel;
use super::{BackendError, Launcher};
use crate::arch::Arch;

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

/// The backend for a full Linux boot of an `arch` guest, and why it was chosen. `kvm` is
/// refused on a host whose KVM cannot boot Linux to the end (a software KVM reaches
/// early boot only), and for a guest of another architecture than the host's, which
/// only QEMU's TCG can emulate.
pub fn choose(kind: BackendKind, arch: Arch) -> Result<(Launcher, String), BackendError> {
    if Some(arch) != Arch::host() {
        let host = Arch::host().map_or("this host's".to_string(), |h| h.to_string());
        return match kind {
            BackendKind::Kvm => Err(BackendError::Unavailable(format!(
                "--backend kvm: memrace's own VMM runs guests of the host's architecture, and this {host} host cannot run an {arch} guest on KVM; use --backend qemu (or auto), which emulates it with TCG"
            ))),
            BackendKind::Qemu | BackendKind::Auto => Ok((
                Launcher::Qemu(QemuAccel::Tcg),
                format!("an {arch} guest on an {host} host: QEMU's TCG emulates it"),
            )),
        };
    }
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
