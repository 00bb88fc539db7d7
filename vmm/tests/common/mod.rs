//! Finding the kernel under test. Shared by tests and benches.

use std::path::PathBuf;
use std::process::Command;

/// The vmlinux to test against: `$MEMRACE_VMLINUX`, else `vmlinux` in the
/// directory printed by `memrace kernel path`. Panics with instructions if
/// neither works: a symbol test that finds no kernel must fail, not pass.
pub fn vmlinux() -> PathBuf {
    if let Some(p) = std::env::var_os("MEMRACE_VMLINUX") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "MEMRACE_VMLINUX={} is not a file", p.display());
        return p;
    }
    let exe = env!("CARGO_BIN_EXE_memrace");
    let out = Command::new(exe)
        .args(["kernel", "path"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{exe} kernel path`: {e}"));
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let vmlinux = PathBuf::from(&dir).join("vmlinux");
    assert!(
        out.status.success() && !dir.is_empty() && vmlinux.is_file(),
        "no kernel to test against: `memrace kernel path` exited with {} and printed {dir:?} \
         (stderr: {}). Build one with `memrace kernel build`, or set \
         MEMRACE_VMLINUX=/path/to/vmlinux (a 6.12 build with CONFIG_DEBUG_INFO_DWARF5=y).",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
    );
    vmlinux
}
