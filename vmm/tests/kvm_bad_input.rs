//! The kvm backend refuses bad input with a specific error that says what to do.

mod kvm_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use kvm_support::{kvm_or_report, level_not_run};
use memrace::backend::kvm::{
    fixtures, launch, launch_program, BootError, KvmError, KvmOptions, LoadError, VmError,
};
use memrace::backend::VmConfig;

fn config(kernel: &Path, run_dir: &Path, cpus: usize, mem_mib: u64) -> VmConfig {
    VmConfig {
        arch: memrace::arch::Arch::X86_64,
        kernel: kernel.to_path_buf(),
        initramfs: PathBuf::new(),
        cmdline: "console=ttyS0".into(),
        cpus,
        mem_mib,
        run_dir: run_dir.to_path_buf(),
        debug: true,
        instruction_clock: false,
    }
}

/// A minimal x86-64 ELF with one PT_LOAD segment (`filesz` bytes at file offset
/// 0x1000, loaded at `paddr`, `memsz` in memory), optionally cut to `keep` bytes.
fn elf(paddr: u64, filesz: u64, memsz: u64, keep: Option<usize>) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000 + filesz as usize];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1; // version
    f[0x10] = 2; // ET_EXEC
    f[0x12] = 0x3e; // x86-64
    f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // entry
    f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
    f[0x34] = 64; // ehsize
    f[0x36] = 56; // phentsize
    f[0x38] = 1; // phnum
    let ph = &mut f[64..120];
    ph[0] = 1; // PT_LOAD
    ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
    ph[16..24].copy_from_slice(&paddr.to_le_bytes());
    ph[24..32].copy_from_slice(&paddr.to_le_bytes());
    ph[32..40].copy_from_slice(&filesz.to_le_bytes());
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    f.truncate(keep.unwrap_or(f.len()));
    f
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_missing_kvm_device_says_what_to_do() {
    let opts = KvmOptions {
        device: "/nonexistent/kvm".into(),
        ..KvmOptions::for_host()
    };
    let err = launch_program(&fixtures::counters(1, 1).program, &opts)
        .err()
        .unwrap();
    assert!(
        matches!(err, KvmError::Vm(VmError::DeviceMissing { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("kvm_intel") && text.contains("--backend qemu"),
        "{text}"
    );
}

#[test]
fn a_device_that_is_not_kvm_is_named() {
    let opts = KvmOptions {
        device: "/dev/null".into(),
        ..KvmOptions::for_host()
    };
    let err = launch_program(&fixtures::counters(1, 1).program, &opts)
        .err()
        .unwrap();
    assert!(
        matches!(err, KvmError::Vm(VmError::NotKvm { .. })),
        "{err:?}"
    );
}

#[test]
fn zero_vcpus_and_more_than_kvm_allows_are_refused() {
    let Some(opts) = kvm_or_report("kvm bad input") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(
        dir.path(),
        "vmlinux",
        &elf(0x100_0000, 0x1000, 0x1000, None),
    );
    let err = launch(&config(&kernel, dir.path(), 0, 64), &opts)
        .err()
        .unwrap();
    assert!(matches!(err, KvmError::Vm(VmError::NoVcpus)), "{err:?}");
    let err = launch(&config(&kernel, dir.path(), 100_000, 64), &opts)
        .err()
        .unwrap();
    assert!(err.to_string().contains("KVM_CAP_MAX_VCPUS"), "{err}");
    match err {
        KvmError::Vm(VmError::TooManyVcpus {
            asked: 100_000,
            max,
        }) => assert!(max >= 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_kernel_larger_than_guest_memory_is_refused() {
    let Some(opts) = kvm_or_report("kvm bad input") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Loads at 16 MiB and needs 64 MiB of memory: does not fit in a 32 MiB guest.
    let kernel = write(
        dir.path(),
        "vmlinux",
        &elf(0x100_0000, 0x1000, 64 << 20, None),
    );
    let err = launch(&config(&kernel, dir.path(), 1, 32), &opts)
        .err()
        .unwrap();
    match &err {
        KvmError::Boot(BootError::Load(LoadError::KernelTooLarge {
            need_mib: 80,
            have_mib: 32,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("raise mem_mib"), "{err}");
}

#[test]
fn truncated_and_garbage_kernels_are_named() {
    let Some(opts) = kvm_or_report("kvm bad input") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cut = write(
        dir.path(),
        "cut",
        &elf(0x100_0000, 0x4000, 0x4000, Some(0x2000)),
    );
    let err = launch(&config(&cut, dir.path(), 1, 64), &opts)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            KvmError::Boot(BootError::Load(LoadError::Truncated { .. }))
        ),
        "{err:?}"
    );
    let headless = write(
        dir.path(),
        "headless",
        &elf(0x100_0000, 0x1000, 0x1000, Some(100)),
    );
    let err = launch(&config(&headless, dir.path(), 1, 64), &opts)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            KvmError::Boot(BootError::Load(LoadError::Truncated { .. }))
        ),
        "{err:?}"
    );
    let garbage = write(dir.path(), "garbage", &[0x42; 8192]);
    let err = launch(&config(&garbage, dir.path(), 1, 64), &opts)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            KvmError::Boot(BootError::Load(LoadError::UnknownFormat { .. }))
        ),
        "{err:?}"
    );
    let missing = dir.path().join("missing");
    let err = launch(&config(&missing, dir.path(), 1, 64), &opts)
        .err()
        .unwrap();
    assert!(
        matches!(err, KvmError::Boot(BootError::Load(LoadError::Read { .. }))),
        "{err:?}"
    );
}

#[test]
fn an_initrd_that_does_not_fit_is_refused() {
    let Some(opts) = kvm_or_report("kvm bad input") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(
        dir.path(),
        "vmlinux",
        &elf(0x100_0000, 0x1000, 0x1000, None),
    );
    let initrd = write(dir.path(), "initrd", &vec![0; 40 << 20]);
    let mut cfg = config(&kernel, dir.path(), 1, 32);
    cfg.initramfs = initrd;
    let err = launch(&cfg, &opts).err().unwrap();
    assert!(
        matches!(
            err,
            KvmError::Boot(BootError::Load(LoadError::InitrdTooLarge { .. }))
        ),
        "{err:?}"
    );
}

/// `setpriv` arguments that run a command as nobody, with no supplementary groups.
const AS_NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// Whether nobody can open /dev/kvm for reading and writing (then there is nothing to refuse).
fn nobody_can_open_kvm() -> Option<bool> {
    let status = Command::new("setpriv")
        .args(AS_NOBODY)
        .args(["test", "-r", "/dev/kvm", "-a", "-w", "/dev/kvm"])
        .status()
        .ok()?;
    // `test` answers 0 or 1; anything else (setpriv failing to switch users) is no answer.
    match status.code() {
        Some(0) => Some(true),
        Some(1) => Some(false),
        _ => None,
    }
}

#[test]
fn a_kvm_device_without_permission_says_what_to_do() {
    let what = "kvm bad input: /dev/kvm without permission";
    if !Path::new("/dev/kvm").exists() {
        return level_not_run(&format!("{what} — this host has no /dev/kvm"));
    }
    match nobody_can_open_kvm() {
        None => {
            return level_not_run(&format!(
                "{what} — cannot run a command as uid 65534 (needs setpriv and root)"
            ))
        }
        Some(true) => {
            return level_not_run(&format!(
                "{what} — /dev/kvm is open to everyone here, so no user lacks permission"
            ))
        }
        Some(false) => {}
    }
    // A copy of the binary that nobody may execute (the build tree's directories may not be).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("memrace");
    std::fs::copy(env!("CARGO_BIN_EXE_memrace"), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(dir.path(), 0o755), (bin.as_path(), 0o755)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(AS_NOBODY)
        .arg(&bin)
        .args(["boot", "--backend", "kvm", "--", "true"])
        .env("MEMRACE_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "/dev/kvm is not accessible",
        "Permission denied",
        "usermod -aG kvm",
        "--backend qemu",
    ] {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
}
