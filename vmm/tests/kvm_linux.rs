//! The kvm backend on a real Linux 6.12 kernel.
//!
//! * Early boot (every KVM host, PVM included): a hardware breakpoint on
//!   `start_kernel` is hit, through PVH and through the ELF's 64-bit entry
//!   point, with our command line in the kernel's `boot_command_line`; the
//!   console shows the `Linux version` banner.
//! * bzImage: the 64-bit protocol's entry state and zero page (the decompressor
//!   does not reach `start_kernel` in useful time under PVM; on such hosts the
//!   test says so LOUDLY).
//! * Full boot to the guest harness through `memrace boot --backend kvm`, exit
//!   status and CPU count (hardware virtualization only): on a PVM host the
//!   test says LOUDLY that this level did not run.
//!
//! The kernel comes from `memrace kernel path` (the cached default kernel
//! directory with `vmlinux` and `bzImage`), else from `$MEMRACE_KERNEL_DIR`.

mod kvm_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvm_support::{events_until, kvm_or_report, level_not_run, next_breakpoint};
use memrace::backend::kvm::{self, launch, BootProtocol, KvmOptions, KvmVm};
use memrace::backend::{Backend, VmConfig, VmEvent};
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
        arch: memrace::arch::Arch::X86_64,
        kernel,
        initramfs: PathBuf::new(),
        cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 reboot=k".into(),
        cpus,
        mem_mib: 256,
        run_dir: run_dir.to_path_buf(),
        debug: true,
        instruction_clock: false,
    }
}

/// The kernel's copy of the command line (`boot_command_line`), read at a stop.
fn kernel_command_line(vm: &mut KvmVm, vmlinux: &Path) -> String {
    let at = symbol(vmlinux, "boot_command_line");
    let bytes = vm.read_virt(0, at, 2048).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Launch `vmlinux` as `opts` say, run to the `start_kernel` breakpoint and check
/// the kernel took our command line. Returns the stopped VM.
fn run_to_start_kernel(vmlinux: &Path, opts: &KvmOptions, run_dir: &Path) -> (KvmVm, Instant) {
    let start_kernel = symbol(vmlinux, "start_kernel");
    let cfg = config(vmlinux.to_path_buf(), run_dir, 2);
    let t0 = Instant::now();
    let mut vm = launch(&cfg, opts).unwrap();
    vm.set_breakpoints(0, &[start_kernel]).unwrap();
    vm.resume(&[0, 1]).unwrap();
    assert_eq!(
        next_breakpoint(&mut vm, START_KERNEL_LIMIT),
        (0, start_kernel)
    );
    assert_eq!(vm.regs(0).unwrap().pc(), start_kernel);
    eprintln!(
        "start_kernel reached after {:.2?} ({:?} entry)",
        t0.elapsed(),
        vm.boot_protocol()
    );
    let line = kernel_command_line(&mut vm, vmlinux);
    assert!(
        line.starts_with(&cfg.cmdline),
        "boot_command_line {line:?} is not ours ({:?})",
        cfg.cmdline
    );
    (vm, t0)
}

#[test]
fn linux_early_boot_hits_start_kernel_and_prints_the_banner() {
    let Some(opts) = kvm_or_report("kvm linux early boot") else {
        return;
    };
    let vmlinux = kernel_dir().join("vmlinux");
    let run_dir = tempfile::tempdir().unwrap();
    let (mut vm, t0) = run_to_start_kernel(&vmlinux, &opts, run_dir.path());
    assert_eq!(vm.boot_protocol(), Some(BootProtocol::Pvh));

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
fn linux_elf_without_pvh_enters_through_the_64_bit_entry_point() {
    let Some(opts) = kvm_or_report("kvm linux ELF 64-bit entry") else {
        return;
    };
    let opts = KvmOptions {
        prefer_pvh: false,
        ..opts
    };
    let vmlinux = kernel_dir().join("vmlinux");
    let run_dir = tempfile::tempdir().unwrap();
    let (vm, _) = run_to_start_kernel(&vmlinux, &opts, run_dir.path());
    assert_eq!(vm.boot_protocol(), Some(BootProtocol::Linux64));
}

/// Little-endian field of `len` bytes at `at`.
fn field(bytes: &[u8], at: usize, len: usize) -> u64 {
    bytes[at..at + len]
        .iter()
        .rev()
        .fold(0, |v, &b| (v << 8) | u64::from(b))
}

#[test]
fn bzimage_enters_its_64_bit_entry_point_with_the_zero_page() {
    let Some(opts) = kvm_or_report("kvm linux bzImage entry") else {
        return;
    };
    let bzimage = kernel_dir().join("bzImage");
    assert!(bzimage.is_file(), "{} missing", bzimage.display());
    let run_dir = tempfile::tempdir().unwrap();
    let cfg = config(bzimage.clone(), run_dir.path(), 1);
    let mut vm = launch(&cfg, &opts).unwrap();
    assert_eq!(vm.boot_protocol(), Some(BootProtocol::Linux64));
    // startup_64 of the decompressor: load address 1 MiB + 0x200, identity-mapped.
    let entry = 0x10_0200;
    vm.set_breakpoints(0, &[entry]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, START_KERNEL_LIMIT), (0, entry));
    let zero_page = vm.regs(0).unwrap().named("rsi").unwrap();
    assert_eq!(zero_page, 0x7000, "RSI points at the zero page");

    // What the decompressor reads from the zero page (Documentation/arch/x86/zero-page.rst).
    let params = vm.read_phys(zero_page, 4096).unwrap();
    let image = std::fs::read(&bzimage).unwrap();
    const CMDLINE_SIZE: usize = 0x238;
    assert_eq!(
        field(&params, CMDLINE_SIZE, 4),
        field(&image, CMDLINE_SIZE, 4),
        "cmdline_size is the kernel's own limit, untouched"
    );
    let cmd_line_ptr = field(&params, 0x228, 4);
    let line = vm.read_phys(cmd_line_ptr, cfg.cmdline.len() + 1).unwrap();
    assert!(line.starts_with(cfg.cmdline.as_bytes()), "{line:?}");
    assert_eq!(field(&params, 0x210, 1), 0xff, "type_of_loader: undefined");
    let e820_entries = field(&params, 0x1e8, 1);
    assert!(e820_entries >= 3, "{e820_entries} e820 entries");
    // Entry 2 is the RAM above 1 MiB: up to the guest's size.
    let (addr, size, kind) = (
        field(&params, 0x2d0 + 2 * 20, 8),
        field(&params, 0x2d0 + 2 * 20 + 8, 8),
        field(&params, 0x2d0 + 2 * 20 + 16, 4),
    );
    assert_eq!((addr, addr + size, kind), (1 << 20, cfg.mem_mib << 20, 1));

    if !kvm::probe().boots_linux_fully() {
        // Measured here: the decompressor (xz) was still running after 25 minutes.
        level_not_run(
            "kvm bzImage to start_kernel — under a software KVM the bzImage decompressor runs \
             in KVM's instruction emulator and takes more than 25 minutes; only the entry state \
             and zero page were checked",
        );
        return;
    }
    let start_kernel = symbol(&kernel_dir().join("vmlinux"), "start_kernel");
    vm.set_breakpoints(0, &[start_kernel]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(
        next_breakpoint(&mut vm, START_KERNEL_LIMIT),
        (0, start_kernel)
    );
}

/// Full boot to the guest harness through the CLI, exactly as a user runs it: the
/// exit status comes back, and the guest saw both vCPUs (the second one can only come
/// up through the kernel's INIT/SIPI path). Needs hardware virtualization.
#[test]
fn linux_full_boot_to_harness_exit_code_on_hardware_kvm_only() {
    let level = kvm::probe();
    if !level.boots_linux_fully() {
        level_not_run(&format!(
            "kvm full boot (`memrace boot --backend kvm --cpus 2`, exit status, AP bring-up) — \
             host /dev/kvm is {} ({}); a full Linux boot needs VMX/SVM. \
             This test passing here means nothing about full boot.",
            level.name(),
            level.reason()
        ));
        return;
    }
    kernel_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_memrace"))
        .args(["boot", "--backend", "kvm", "--cpus", "2", "--"])
        .args(["/bin/sh", "-c", "cat /proc/cpuinfo; exit 7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "stderr:\n{stderr}");
    assert!(
        stderr.contains("memrace: backend kvm"),
        "the kvm backend ran: {stderr}"
    );
    let cpus = stdout
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(cpus, 2, "guest /proc/cpuinfo:\n{stdout}");
}

/// The schedule engine on memrace's own VMM with a real kernel: the syscall-order
/// self-test through `memrace run --backend kvm`, hits in schedule order on every trial.
/// Needs hardware virtualization (the same schedule runs on qemu in schedule_qemu.rs).
#[test]
fn scenario_schedule_on_the_kvm_backend_on_hardware_kvm_only() {
    let level = kvm::probe();
    if !level.boots_linux_fully() {
        level_not_run(&format!(
            "kvm scenario run (`memrace run syscall-order --backend kvm`) — host /dev/kvm is \
             {} ({}); a full Linux boot needs VMX/SVM.",
            level.name(),
            level.reason()
        ));
        return;
    }
    kernel_dir();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_memrace"))
        .args([
            "run",
            "syscall-order",
            "--backend",
            "kvm",
            "--trials",
            "5",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("result.json")).unwrap())
            .unwrap();
    assert!(result["backend"].as_str().unwrap().starts_with("kvm"));
    for t in result["kernels"][0]["trials"].as_array().unwrap() {
        assert_eq!(
            t["hits"],
            serde_json::json!(["a-in-getppid", "b-in-getpid"]),
            "{t}"
        );
    }
}
