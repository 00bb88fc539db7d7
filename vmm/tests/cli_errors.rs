//! Bad input gives a clear error naming the problem and the fix, and a non-zero exit.

mod common;
use common::{memrace, output_within, run, text, COMMAND_LIMIT};

fn fails_with(args: &[&str], needles: &[&str]) {
    let (out, _) = run(args);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: expected {n:?} in:\n{stderr}");
    }
}

#[test]
fn missing_kernel_path() {
    fails_with(
        &["boot", "--kernel", "/nonexistent/vmlinux", "--", "true"],
        &["does not exist"],
    );
}

#[test]
fn a_file_that_is_not_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.txt");
    std::fs::write(&f, "not a kernel").unwrap();
    fails_with(
        &["boot", "--kernel", f.to_str().unwrap(), "--", "true"],
        &["is not a kernel", "bzImage"],
    );
}

#[test]
fn a_truncated_elf_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmlinux");
    std::fs::write(&f, b"\x7fELF\x02\x01\x01\x00").unwrap();
    fails_with(
        &["boot", "--kernel", f.to_str().unwrap(), "--", "true"],
        &["malformed ELF"],
    );
}

#[test]
fn unknown_variant() {
    fails_with(
        &["boot", "--kernel", "no-such-variant", "--", "true"],
        &["unknown kernel variant", "base"],
    );
    fails_with(
        &["kernel", "build", "no-such-variant"],
        &["unknown kernel variant"],
    );
}

#[test]
fn malformed_recipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("recipe.toml"), "[source]\npackage = 3\n").unwrap();
    let out = output_within(
        memrace()
            .args(["kernel", "list"])
            .env("MEMRACE_IMAGES", dir.path()),
        COMMAND_LIMIT,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("malformed") && stderr.contains("recipe.toml"),
        "{stderr}"
    );
}

#[test]
fn missing_qemu_binary_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("bzImage");
    let mut data = vec![0u8; 0x400];
    data[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(&k, data).unwrap();
    let out = output_within(
        memrace()
            // Explicitly qemu: `auto` picks kvm on a host with hardware virtualization.
            .args([
                "boot",
                "--backend",
                "qemu",
                "--kernel",
                k.to_str().unwrap(),
                "--",
                "true",
            ])
            .env("MEMRACE_QEMU", "/nonexistent/qemu-system-x86_64"),
        COMMAND_LIMIT,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("apt-get install qemu-system-x86"),
        "{stderr}"
    );
}

#[test]
fn bad_cpu_and_memory_arguments() {
    fails_with(
        &["boot", "--cpus", "0", "--", "true"],
        &["at least one vCPU"],
    );
    fails_with(&["boot", "--mem", "lots", "--", "true"], &["--mem", "512M"]);
    fails_with(
        &["boot", "--mem", "1M", "--", "true"],
        &["between 64M and 64G"],
    );
}
