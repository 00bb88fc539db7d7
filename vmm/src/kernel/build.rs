//! Running the kernel build with ccache and a progress bar.

use super::recipe::ArchRecipe;
use super::KernelError;
use crate::child;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Build `targets` in `build` (an O= directory) from `tree` for `arch` (its `ARCH=`
/// and `CROSS_COMPILE=`), within `limit`.
/// `expected_steps` sizes the progress bar (kbuild prints one line per step).
/// Returns the number of steps make printed, to size the next bar.
pub fn make(
    tree: &Path,
    build: &Path,
    arch: &ArchRecipe,
    targets: &[&str],
    expected_steps: u64,
    label: &str,
    limit: Duration,
) -> Result<u64, KernelError> {
    let log_path = build.join("make.log");
    let mut log = std::fs::File::create(&log_path).map_err(|e| KernelError::io(&log_path, e))?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get() + 1)
        .unwrap_or(2);
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(tree)
        .arg(format!("O={}", build.display()))
        .arg(format!("-j{jobs}"))
        .args(arch.make_vars());
    if which("ccache") {
        cmd.arg(format!("CC=ccache {}", arch.gcc()));
        // The build dir is inside the tree, so kbuild uses relative paths; without the cwd
        // in the hash, every variant's objects hit the same ccache entries.
        cmd.env("CCACHE_NOHASHDIR", "1");
    } else {
        eprintln!(
            "memrace: ccache not found; building without it (install: apt-get install ccache)"
        );
    }
    // Fixed build metadata keeps rebuilds and ccache hits reproducible.
    cmd.env("KBUILD_BUILD_TIMESTAMP", "memrace")
        .env("KBUILD_BUILD_USER", "memrace")
        .env("KBUILD_BUILD_HOST", "memrace")
        .args(targets)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| KernelError::Spawn {
        what: "make".into(),
        why: e.to_string(),
    })?;

    let bar = ProgressBar::new(expected_steps.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
        )
        .expect("static template"),
    );
    bar.set_prefix(format!("building {label}"));
    // stderr is drained on its own thread so a chatty compiler can never block make.
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // stdout is read on its own thread too, so that this one can enforce the bound
    // even while make prints nothing.
    let stdout = child.stdout.take().expect("piped");
    let (out_bar, label_out) = (bar.clone(), label.to_string());
    let out_thread = std::thread::spawn(move || {
        let (mut steps, started, mut last_note) = (0u64, Instant::now(), Instant::now());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if line.starts_with("  ") {
                steps += 1;
                out_bar.set_position(steps.min(expected_steps));
                out_bar.set_message(line.trim().to_string());
            }
            // Without a terminal the bar is hidden: leave a plain trace for CI logs.
            if out_bar.is_hidden() && last_note.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "memrace: building {label_out}: {steps} steps, {}s: {}",
                    started.elapsed().as_secs(),
                    line.trim()
                );
                last_note = Instant::now();
            }
        }
        (steps, log)
    });
    let wait_err = |e: std::io::Error| KernelError::Spawn {
        what: "make".into(),
        why: e.to_string(),
    };
    let status = match child::wait_within(&mut child, limit).map_err(wait_err)? {
        Some(status) => status,
        None => {
            // SIGTERM first: make deletes half-written targets, so a rerun resumes cleanly.
            child::kill_tree(child.id(), child::TERM_GRACE);
            child.wait().map_err(wait_err)?;
            bar.finish_and_clear();
            return Err(KernelError::BuildTimeout {
                log: log_path,
                limit,
            });
        }
    };
    // make and everything it started have exited: both pipes are at their end.
    let (steps, mut log) = out_thread.join().expect("make output reader");
    let errors = err_thread.join().unwrap_or_default();
    for line in &errors {
        let _ = writeln!(log, "{line}");
    }
    bar.finish_and_clear();
    if !status.success() {
        let tail: Vec<String> = errors.iter().rev().take(25).rev().cloned().collect();
        return Err(KernelError::BuildFailed {
            log: log_path,
            tail: tail.join("\n"),
        });
    }
    Ok(steps)
}

pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real make, on a Makefile whose recipe hangs: the bound stops it and the
    /// recipe's process, and the error names the limit and the log.
    #[test]
    fn a_build_past_its_bound_is_stopped_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, build) = (dir.path().join("tree"), dir.path().join("tree/out"));
        std::fs::create_dir_all(&build).unwrap();
        let pid_file = dir.path().join("pid");
        std::fs::write(
            tree.join("Makefile"),
            format!(
                "vmlinux:\n\t@echo '  CC      hang.o'; echo $$$$ > {}; exec sleep 600\n",
                pid_file.display()
            ),
        )
        .unwrap();
        let native = ArchRecipe {
            base: "tinyconfig".into(),
            fragment: "x86_64.config".into(),
            image: "arch/x86/boot/bzImage".into(),
            make_arch: None,
            cross_compile: None,
        };
        let err = make(
            &tree,
            &build,
            &native,
            &["vmlinux"],
            10,
            "test",
            Duration::from_secs(2),
        )
        .unwrap_err();
        let KernelError::BuildTimeout { log, .. } = &err else {
            panic!("expected BuildTimeout, got {err}");
        };
        assert!(
            err.to_string().contains("did not finish within 0 min"),
            "{err}"
        );
        assert_eq!(log, &build.join("make.log"));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        assert!(
            stat.map(|s| s.contains(") Z ")).unwrap_or(true),
            "the recipe's sleep {pid} still runs"
        );
    }
}
