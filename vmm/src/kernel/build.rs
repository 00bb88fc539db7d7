//! Running the kernel build with ccache and a progress bar.

use super::KernelError;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Build `targets` in `build` (an O= directory) from `tree`.
/// `expected_steps` sizes the progress bar (kbuild prints one line per step).
/// Returns the number of steps make printed, to size the next bar.
pub fn make(
    tree: &Path,
    build: &Path,
    targets: &[&str],
    expected_steps: u64,
    label: &str,
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
        .arg(format!("-j{jobs}"));
    if which("ccache") {
        cmd.arg("CC=ccache gcc");
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
    let stdout = child.stdout.take().expect("piped");
    let (mut steps, started, mut last_note) = (0u64, Instant::now(), Instant::now());
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let _ = writeln!(log, "{line}");
        if line.starts_with("  ") {
            steps += 1;
            bar.set_position(steps.min(expected_steps));
            bar.set_message(line.trim().to_string());
        }
        // Without a terminal the bar is hidden: leave a plain trace for CI logs.
        if bar.is_hidden() && last_note.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "memrace: building {label}: {steps} steps, {}s: {}",
                started.elapsed().as_secs(),
                line.trim()
            );
            last_note = Instant::now();
        }
    }
    let errors = err_thread.join().unwrap_or_default();
    for line in &errors {
        let _ = writeln!(log, "{line}");
    }
    let status = child.wait().map_err(|e| KernelError::Spawn {
        what: "make".into(),
        why: e.to_string(),
    })?;
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
