//! Helpers shared by the integration tests: run the real `memrace` binary.

#![allow(dead_code)] // each test binary uses a different subset

pub mod not_run;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn memrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memrace"))
}

/// Run memrace with `args`; returns the output and how long it took.
pub fn run(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = memrace().args(args).output().expect("memrace runs");
    (out, started.elapsed())
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cached kernel directory of `variant`, building it if needed. Panics (fails the
/// test) with memrace's own error if no kernel can be had: never a silent pass.
pub fn kernel_dir(variant: &str) -> PathBuf {
    let (out, _) = run(&["kernel", "path", variant]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "cannot get kernel {variant}: {stderr}"
    );
    PathBuf::from(stdout.trim())
}

/// The vmlinux to test against: `$MEMRACE_VMLINUX`, else the base variant's (built if
/// needed). Fails the test with instructions if neither works.
pub fn vmlinux() -> PathBuf {
    if let Some(p) = std::env::var_os("MEMRACE_VMLINUX") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "MEMRACE_VMLINUX={} is not a file", p.display());
        return p;
    }
    let v = kernel_dir("base").join("vmlinux");
    assert!(
        v.is_file(),
        "{} missing after `memrace kernel path`",
        v.display()
    );
    v
}
