//! `--backend` on the command line: `kvm` fails fast with advice on hosts whose KVM
//! cannot boot Linux; `auto` says what it picked and why; a kernel the chosen
//! backend cannot boot is refused with advice.

mod common;
mod kvm_support;

use common::{memrace, run, text};
use kvm_support::level_not_run;
use memrace::backend::kvm::{self, KvmLevel};

#[test]
fn boot_on_kvm_without_hardware_virtualization_fails_fast_and_suggests_qemu() {
    let level = kvm::probe();
    if level.boots_linux_fully() {
        level_not_run("`--backend kvm` refusal — this host has hardware virtualization");
        return;
    }
    // An empty cache: building a kernel or starting a VM would leave files in it.
    let cache = tempfile::tempdir().unwrap();
    let out = memrace()
        .args(["boot", "--backend", "kvm", "--", "true"])
        .env("MEMRACE_CACHE", cache.path())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--backend qemu"), "{stderr}");
    if let KvmLevel::Software { .. } = level {
        assert!(stderr.contains("only a software KVM"), "{stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "it must not build or boot anything: {left:?}"
    );
}

#[test]
fn run_on_kvm_without_hardware_virtualization_fails_fast_and_suggests_qemu() {
    if kvm::probe().boots_linux_fully() {
        level_not_run("`run --backend kvm` refusal — this host has hardware virtualization");
        return;
    }
    let (out, _) = run(&["run", "--backend", "kvm"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--backend qemu"), "{stderr}");
}

#[test]
fn auto_says_which_backend_it_chose_and_why() {
    let (out, _) = run(&[
        "boot",
        "--backend",
        "auto",
        "--kernel",
        "/nonexistent/vmlinux",
        "--",
        "true",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let chosen = if kvm::probe().boots_linux_fully() {
        "memrace: backend kvm"
    } else {
        "memrace: backend qemu"
    };
    assert!(stderr.contains(chosen), "{stderr}");
    assert!(
        stderr.contains(" — "),
        "a reason follows the choice: {stderr}"
    );
}

#[test]
fn an_elf_without_a_pvh_note_is_refused_on_qemu_with_advice() {
    // This test binary is an x86-64 ELF with an entry point and no PVH note.
    let elf = std::env::current_exe().unwrap();
    let (out, _) = run(&[
        "boot",
        "--backend",
        "qemu",
        "--kernel",
        elf.to_str().unwrap(),
        "--",
        "true",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("without a PVH entry note")
            && stderr.contains("CONFIG_PVH=y")
            && stderr.contains("--backend kvm"),
        "{stderr}"
    );
}

#[test]
fn cpuid_mask_names_are_checked_and_only_the_kvm_backend_takes_them() {
    let (out, _) = run(&["boot", "--cpuid-mask", "xsave,avx3", "--", "true"]);
    let (_, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("unknown CPU feature \"avx3\"") && stderr.contains("known: xsave, avx,"),
        "{stderr}"
    );
    let (out, _) = run(&[
        "boot",
        "--backend",
        "qemu",
        "--cpuid-mask",
        "avx",
        "--",
        "true",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--cpuid-mask applies to memrace's own VMM")
            && stderr.contains("--backend kvm"),
        "{stderr}"
    );
}
