//! arm64 guests end to end: the same kernel recipe cross-built for arm64, the aarch64
//! guest harness, and qemu-system-aarch64 (virt, TCG) under the same gdb-driven engine.
//! Every command names `--arch arm64 --backend qemu`.

mod common;
use common::{output_within, run, run_scenario_json, text, KERNEL_LIMIT};

/// The arm64 kernel of `variant`, built if needed; fails the test with memrace's error.
fn arm64_kernel(variant: &str) {
    let out = output_within(
        common::memrace().args(["kernel", "path", "--arch", "arm64", variant]),
        KERNEL_LIMIT,
    );
    assert!(
        out.status.success(),
        "cannot get the arm64 kernel {variant}: {}",
        text(&out).1
    );
}

#[test]
fn an_arm64_guest_returns_its_commands_exit_status() {
    arm64_kernel("base");
    let boot = |cmd: &str| {
        run(&[
            "boot",
            "--arch",
            "arm64",
            "--backend",
            "qemu",
            "--",
            "/bin/sh",
            "-c",
            cmd,
        ])
    };
    let (out, _) = boot("exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out).1);
    // The guest really is arm64, with the harness's control channel on hvc0.
    let (out, _) = boot("cat /proc/cpuinfo /proc/cmdline");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("CPU architecture: 8"), "{stdout}");
    assert!(stdout.contains("console=ttyAMA0"), "{stdout}");
}

#[test]
fn madv_free_dio_reproduces_on_every_arm64_trial_and_the_fixed_kernel_holds() {
    for k in ["base", "madv-free-unpatched"] {
        arm64_kernel(k);
    }
    let out = tempfile::tempdir().unwrap();
    let r = run_scenario_json(
        &[
            "madv-free-dio",
            "--arch",
            "arm64",
            "--backend",
            "qemu",
            "--trials",
            "10",
        ],
        out.path(),
    );
    assert_eq!(r["arch"], "arm64");
    assert_eq!(r["held"], true);
    let kernels = r["kernels"].as_array().unwrap();
    let counts = |variant: &str| {
        let k = kernels
            .iter()
            .find(|k| k["variant"] == variant)
            .unwrap_or_else(|| panic!("no {variant} row: {kernels:?}"));
        (
            k["counts"]["trials"].as_u64().unwrap(),
            k["counts"]["reproduced"].as_u64().unwrap(),
            k["counts"]["passed"].as_u64().unwrap(),
        )
    };
    assert_eq!(counts("madv-free-unpatched"), (10, 10, 0));
    assert_eq!(counts("base"), (10, 0, 10));
}

#[test]
fn an_x86_kernel_is_refused_for_an_arm64_guest_before_it_boots() {
    let x86 = common::kernel_dir("base");
    let image = x86.join("bzImage");
    let (out, took) = run(&[
        "boot",
        "--arch",
        "arm64",
        "--backend",
        "qemu",
        "--kernel",
        image.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "exit 0",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("arm64"), "{stderr}");
    assert!(took.as_secs() < 60, "refused after {took:?}");
}
