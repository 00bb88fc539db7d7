//! The kvm backend on a real Linux 6.12 kernel.
//!
//! * Early boot (every KVM host, PVM included): a hardware breakpoint on
//!   `start_kernel` is hit and the console shows the `Linux version` banner.
//! * Full boot to the guest harness (hardware virtualization only): on a PVM
//!   host the test says LOUDLY that this level did not run.
//!
//! The kernel comes from `memrace kernel path` (the cached default kernel
//! directory with `vmlinux` and `bzImage`), else from `$MEMRACE_KERNEL_DIR`.

mod kvm_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvm_support::{events_until, kvm_or_report, level_not_run, next_breakpoint};
use memrace::backend::kvm::{self, launch, BootProtocol, KvmOptions};
use memrace::backend::{Backend, ControlMessage, VmConfig, VmEvent};
use object::{Object, ObjectSymbol};

/// Building the default kernel from scratch takes minutes on 2 cores.
const KERNEL_BUILD_LIMIT: Duration = Duration::from_secs(40 * 60);
const START_KERNEL_LIMIT: Duration = Duration::from_secs(60);
const BANNER_LIMIT: Duration = Duration::from_secs(180);

/// `memrace kernel path`, bounded; `None` if it fails or prints no usable directory.
fn kernel_dir_from_cli() -> Option<PathBuf> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memrace"))
        .args(["kernel", "path"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + KERNEL_BUILD_LIMIT;
    while child.try_wait().ok()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`memrace kernel path` did not finish within {KERNEL_BUILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let dir = PathBuf::from(text.lines().last()?.trim());
    (output.status.success() && dir.join("vmlinux").is_file()).then_some(dir)
}

fn kernel_dir() -> PathBuf {
    if let Some(dir) = kernel_dir_from_cli() {
        return dir;
    }
    match std::env::var_os("MEMRACE_KERNEL_DIR") {
        Some(dir) if Path::new(&dir).join("vmlinux").is_file() => PathBuf::from(dir),
        _ => panic!(
            "no kernel: `memrace kernel path` gave no directory with a vmlinux and MEMRACE_KERNEL_DIR is not set \
             to one (it must contain vmlinux and bzImage)"
        ),
    }
}

fn symbol(vmlinux: &Path, name: &str) -> u64 {
    let data = std::fs::read(vmlinux).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let found = file.symbols().find(|s| s.name() == Ok(name));
    found
        .unwrap_or_else(|| panic!("{name} not in {}", vmlinux.display()))
        .address()
}

fn config(kernel: PathBuf, run_dir: &Path, cpus: usize) -> VmConfig {
    VmConfig {
        kernel,
        initramfs: PathBuf::new(),
        cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 reboot=k".into(),
        cpus,
        mem_mib: 256,
        run_dir: run_dir.to_path_buf(),
        debug: true,
    }
}

#[test]
fn linux_early_boot_hits_start_kernel_and_prints_the_banner() {
    let Some(opts) = kvm_or_report("kvm linux early boot") else {
        return;
    };
    let dir = kernel_dir();
    let vmlinux = dir.join("vmlinux");
    let start_kernel = symbol(&vmlinux, "start_kernel");
    let run_dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut vm = launch(&config(vmlinux, run_dir.path(), 2), &opts).unwrap();
    assert_eq!(vm.boot_protocol(), Some(BootProtocol::Pvh));
    vm.set_breakpoints(0, &[start_kernel]).unwrap();
    vm.resume(&[0, 1]).unwrap();
    assert_eq!(
        next_breakpoint(&mut vm, START_KERNEL_LIMIT),
        (0, start_kernel)
    );
    let regs = vm.regs(0).unwrap();
    assert_eq!(regs.rip, start_kernel);
    eprintln!("start_kernel reached after {:.2?}", t0.elapsed());
    // The breakpoint's own bytes, read through the kernel's page tables.
    let code = vm.read_virt(0, start_kernel, 4).unwrap();
    assert_ne!(code, vec![0; 4]);

    vm.set_breakpoints(0, &[]).unwrap();
    vm.resume(&[0, 1]).unwrap();
    let events = events_until(&mut vm, BANNER_LIMIT, |e| {
        matches!(e, VmEvent::Console(line) if line.contains("Linux version"))
            || matches!(e, VmEvent::Exited(_))
    });
    eprintln!("banner after {:.2?}: {:?}", t0.elapsed(), events.last());
    assert!(
        matches!(events.last(), Some(VmEvent::Console(_))),
        "{events:#?}"
    );
    let log = std::fs::read_to_string(run_dir.path().join("console.log")).unwrap();
    assert!(log.contains("Linux version"), "console.log: {log}");
}

#[test]
fn bzimage_enters_its_64_bit_entry_point() {
    let Some(opts) = kvm_or_report("kvm linux bzImage entry") else {
        return;
    };
    let bzimage = kernel_dir().join("bzImage");
    assert!(bzimage.is_file(), "{} missing", bzimage.display());
    let run_dir = tempfile::tempdir().unwrap();
    let mut vm = launch(&config(bzimage, run_dir.path(), 1), &opts).unwrap();
    assert_eq!(vm.boot_protocol(), Some(BootProtocol::Linux64));
    // startup_64 of the decompressor: load address 1 MiB + 0x200, identity-mapped.
    let entry = 0x10_0200;
    vm.set_breakpoints(0, &[entry]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, START_KERNEL_LIMIT), (0, entry));
    assert_eq!(
        vm.regs(0).unwrap().rsi,
        0x7000,
        "RSI points at the zero page"
    );
}

/// Full boot to the guest harness, which reports an exit code on the control
/// channel. Runs only with hardware virtualization and an initramfs
/// (`$MEMRACE_INITRAMFS`, or `initramfs.cpio` in the kernel directory).
#[test]
fn linux_full_boot_to_harness_exit_code_on_hardware_kvm_only() {
    let level = kvm::probe();
    if !level.boots_linux_fully() {
        level_not_run(&format!(
            "kvm full boot — host /dev/kvm is {} ({}); a full Linux boot needs VMX/SVM. \
             This test passing here means nothing about full boot.",
            level.name(),
            level.reason()
        ));
        return;
    }
    let dir = kernel_dir();
    let initramfs = std::env::var_os("MEMRACE_INITRAMFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("initramfs.cpio"));
    assert!(
        initramfs.is_file(),
        "full boot needs an initramfs with the harness: {} missing",
        initramfs.display()
    );
    let run_dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.join("vmlinux"), run_dir.path(), 2);
    cfg.initramfs = initramfs;
    cfg.debug = false;
    let mut vm = launch(&cfg, &KvmOptions::for_host()).unwrap();
    let events = events_until(&mut vm, Duration::from_secs(120), |e| {
        matches!(e, VmEvent::Exited(_))
    });
    let code = events.iter().find_map(|e| match e {
        VmEvent::Control(ControlMessage::Exit { code }) => Some(*code),
        _ => None,
    });
    assert!(
        code.is_some(),
        "no EXIT on the control channel: {events:#?}"
    );
}
