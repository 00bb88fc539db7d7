//! `--backend` on the command line: `kvm` fails fast with advice on hosts whose KVM
//! cannot boot Linux; `auto` says what it picked and why.

mod common;
mod kvm_support;

use std::time::Duration;

use common::{run, text};
use kvm_support::level_not_run;
use memrace::backend::kvm::{self, KvmLevel};

#[test]
fn boot_on_kvm_without_hardware_virtualization_fails_fast_and_suggests_qemu() {
    let level = kvm::probe();
    if level.boots_linux_fully() {
        level_not_run("`--backend kvm` refusal — this host has hardware virtualization");
        return;
    }
    let (out, took) = run(&["boot", "--backend", "kvm", "--", "true"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--backend qemu"), "{stderr}");
    if let KvmLevel::Software { .. } = level {
        assert!(stderr.contains("only a software KVM"), "{stderr}");
    }
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: it must not build or boot anything"
    );
}

#[test]
fn run_refuses_kvm_because_scenarios_drive_qemu() {
    let (out, _) = run(&["run", "--backend", "kvm"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--backend qemu or auto"), "{stderr}");
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
