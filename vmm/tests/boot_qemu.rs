//! End-to-end: boot a real Linux 6.12 kernel built from Debian's source on the qemu
//! backend, run commands in the guest, and check what the guest really saw.
//! Every boot names `--backend qemu`: `auto` picks kvm on a host with hardware
//! virtualization.

mod common;
use common::{kernel_dir, run, text};
use std::time::Duration;

#[test]
fn guest_exit_status_is_returned() {
    kernel_dir("base");
    let (out, _) = run(&["boot", "--backend", "qemu", "--", "/bin/sh", "-c", "exit 7"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    let (out, _) = run(&["boot", "--backend", "qemu", "--", "/bin/sh", "-c", "exit 0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

#[test]
fn guest_sees_the_requested_cpus_and_memory() {
    kernel_dir("base");
    let (out, _) = run(&[
        "boot",
        "--backend",
        "qemu",
        "--cpus",
        "3",
        "--mem",
        "384M",
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/cpuinfo /proc/meminfo",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let cpus = stdout
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(cpus, 3, "guest /proc/cpuinfo:\n{stdout}");
    let mem_kb: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in guest output:\n{stdout}"));
    // MemTotal is RAM minus what the kernel reserves for itself.
    assert!(
        (300 * 1024..=384 * 1024).contains(&mem_kb),
        "MemTotal {mem_kb} kB for 384M"
    );
}

#[test]
fn a_panicking_guest_gives_the_panic_verdict() {
    kernel_dir("base");
    // No /init and no root device: the kernel panics in mount_root.
    let (out, _) = run(&[
        "boot",
        "--backend",
        "qemu",
        "--append",
        "rdinit=/no-such-init",
        "--",
        "/bin/true",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(240), "{stderr}");
    assert!(
        stderr.contains("verdict: kernel-panic") && stderr.contains("Kernel panic - not syncing"),
        "{stderr}"
    );
}

#[test]
fn a_guest_that_never_reaches_init_times_out_within_the_bound() {
    kernel_dir("base");
    // rootwait waits forever for a root device that never appears: /init is never run.
    let args = [
        "boot",
        "--backend",
        "qemu",
        "--boot-timeout",
        "8",
        "--append",
        "rdinit=/no-such-init root=/dev/vda rootwait",
        "--",
        "/bin/true",
    ];
    let (out, took) = run(&args);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(241), "{stderr}");
    assert!(
        stderr.contains("verdict: timeout") && stderr.contains("Waiting for root device"),
        "{stderr}"
    );
    // A bound on the documented timeout, not a speed target: 8 s plus slack for the
    // initramfs, QEMU's start and teardown on a loaded 2-core TCG host.
    assert!(
        took < Duration::from_secs(8 + 30),
        "took {took:?} for an 8 s bound"
    );
}
