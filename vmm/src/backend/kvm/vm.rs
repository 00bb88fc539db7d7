//! Opening `/dev/kvm` and creating the VM, with errors that say what to do.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm, VmFd};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{path} does not exist: this host has no KVM. Load kvm_intel or kvm_amd (and enable virtualization in the firmware), or use `--backend qemu`")]
    DeviceMissing { path: PathBuf },
    #[error("{path} is not accessible ({source}). Add your user to the `kvm` group (`sudo usermod -aG kvm $USER`, then log in again) or use `--backend qemu`")]
    DeviceDenied {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    DeviceOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not behave like /dev/kvm (KVM_GET_API_VERSION answered {version}, expected 12)")]
    NotKvm { path: PathBuf, version: i32 },
    #[error("a VM needs at least one vCPU (cpus = 0)")]
    NoVcpus,
    #[error(
        "{asked} vCPUs requested but this host's KVM allows at most {max} (KVM_CAP_MAX_VCPUS)"
    )]
    TooManyVcpus { asked: usize, max: usize },
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

const KVM_API_VERSION: i32 = 12;

/// Open the KVM device at `path` and check it speaks the stable API.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| VmError::DeviceOpen {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|e| {
        let source = std::io::Error::from_raw_os_error(e.errno());
        let path = path.to_path_buf();
        match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::DeviceMissing { path },
            libc::EACCES | libc::EPERM => VmError::DeviceDenied { path, source },
            _ => VmError::DeviceOpen { path, source },
        }
    })?;
    // An ioctl on something that is not /dev/kvm fails with ENOTTY: version -1.
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(VmError::NotKvm {
            path: path.to_path_buf(),
            version,
        });
    }
    Ok(kvm)
}

/// The most vCPUs one VM may have on this host.
pub fn max_vcpus(kvm: &Kvm) -> usize {
    // KVM_CAP_MAX_VCPUS answers 0 on very old kernels: fall back to the recommended count.
    match kvm.check_extension_int(Cap::MaxVcpus) {
        n if n > 0 => n as usize,
        _ => kvm.get_nr_vcpus(),
    }
}

/// Create an empty VM for `cpus` vCPUs, refusing counts KVM cannot give.
pub fn create_vm(kvm: &Kvm, cpus: usize) -> Result<VmFd, VmError> {
    if cpus == 0 {
        return Err(VmError::NoVcpus);
    }
    let max = max_vcpus(kvm);
    if cpus > max {
        return Err(VmError::TooManyVcpus { asked: cpus, max });
    }
    kvm.create_vm().map_err(|source| VmError::Kvm {
        what: "create a VM",
        source,
    })
}
