//! `LEVEL NOT RUN` reports: a test that cannot run its real check on this host says
//! so loudly instead of passing silently.
//!
//! libtest captures `print!`/`eprint!` of passing tests, so the line is written
//! straight to fd 2 (visible in the live output) and, when `MEMRACE_NOT_RUN_LOG`
//! names a file (scripts/test sets it), appended to that file: the suite's closing
//! summary counts and lists the levels that did not run from there, not from a
//! console log in which parallel tests' output interleaves.

use std::io::Write;

/// The file `scripts/test` collects NOT RUN reports in.
pub const LOG_ENV: &str = "MEMRACE_NOT_RUN_LOG";

/// Report that `what` (a level and why it cannot run here) did not run.
pub fn level_not_run(what: &str) {
    let line = format!("LEVEL NOT RUN: {}: {what}\n", test_name());
    // One write each: whole lines, never interleaved with other tests' output.
    let _ = std::io::stderr().write_all(format!("\n{line}").as_bytes());
    if let Some(path) = std::env::var_os(LOG_ENV) {
        let recorded = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = recorded {
            // The summary would undercount: fail rather than pass quietly.
            panic!(
                "cannot record the NOT RUN report in {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// `binary::test` for the report (libtest names each test's thread after the test).
fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_else(|| "?".into());
    match std::thread::current().name() {
        Some(test) if test != "main" => format!("{binary}::{test}"),
        _ => binary,
    }
}
