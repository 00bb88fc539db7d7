//! Helpers shared by the integration tests: run the real `memrace` binary, always
//! within a bound, and report levels that cannot run here.

#![allow(dead_code)] // each test binary uses a different subset

pub mod not_run;

use memrace::child::{self, ChildError};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Bound of one memrace command in a test. The slowest command the tests run
/// (`run --all --trials 10`) takes about 1.5 min here: only a hang gets near this.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30 * 60);
/// `memrace kernel path` may build a kernel from scratch (about 10 min cold here).
pub const KERNEL_LIMIT: Duration = Duration::from_secs(90 * 60);

pub fn memrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memrace"))
}

/// `cmd`'s output; if it runs longer than `limit` it is killed with everything it
/// started (QEMU, make) and the test fails with what it printed: a hang never hangs
/// the suite.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    match child::output_within(cmd, limit) {
        Ok(out) => out,
        Err(ChildError::Timeout { what, output, .. }) => {
            let (stdout, stderr) = text(&output);
            panic!(
                "{what} did not finish within {limit:?} and was killed (a hang?)\n\
                 --- stdout:\n{stdout}\n--- stderr:\n{stderr}"
            )
        }
        Err(e) => panic!("{e}"),
    }
}

/// Run memrace with `args` within [`COMMAND_LIMIT`]; returns the output and how long it took.
pub fn run(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = output_within(memrace().args(args), COMMAND_LIMIT);
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
    let out = output_within(memrace().args(["kernel", "path", variant]), KERNEL_LIMIT);
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

/// `memrace run ARGS… --out DIR` into `out` within [`COMMAND_LIMIT`]: the run must exit 0
/// (every expectation held; its output is the failure message otherwise). Returns its
/// `result.json`.
pub fn run_scenario_json(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let output = output_within(
        memrace().arg("run").args(args).arg("--out").arg(out),
        COMMAND_LIMIT,
    );
    let (stdout, stderr) = text(&output);
    println!("{stdout}");
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let path = out.join("result.json");
    let json = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}\n{stderr}", path.display()));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
