//! The `exec` workload's host side: a scenario that runs the user's own programs.
//!
//! `[[file]]` entries are C sources (compiled here, statically, with the host's gcc and
//! the scenario's flags) or ready static binaries, shipped in the initramfs;
//! `[[process]]` entries say what each trial starts, pinned where; `[verdict]` says how
//! the programs' output and exit status are judged. The guest harness does the running
//! and judging (docs/guest-harness.md, "exec"); everything it needs travels as workload
//! parameters, which this module renders.

use crate::arch::Arch;
use crate::guest::StaticProblem;
use control_proto::escape;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use toml::Spanned;

/// The header a user program includes for READY, gates, PHASE and FACT
/// (guest-harness/include/memrace.h; the harness side is guest-harness/src/relay.rs).
const MEMRACE_H: &str = include_str!("../../../guest-harness/include/memrace.h");

/// Where shipped programs go in the guest unless a file says otherwise.
const DEFAULT_DEST_DIR: &str = "/memrace/bin";
/// A compiler that takes longer than this on a reproducer is stuck.
const COMPILE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{file}:{line}: {why}")]
    At {
        file: String,
        line: usize,
        why: String,
    },
}

/// One `[[file]]`: what to ship into the guest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// A C source, compiled with `gcc -static -O2 <cflags>`.
    source: Option<String>,
    /// A ready static executable.
    binary: Option<String>,
    #[serde(default)]
    cflags: Vec<String>,
    /// Absolute guest path (default `/memrace/bin/<file stem>`).
    dest: Option<String>,
}

/// One `[[process]]`: a program every trial starts fresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcess {
    name: String,
    argv: Vec<String>,
    #[serde(default)]
    cpu: usize,
    /// Held before execve until the schedule opens gate `<name>` (default true).
    gated: Option<bool>,
    /// Runs to completion before the trial's other processes start (e.g. to fill a
    /// device); a non-zero exit is a trial error.
    #[serde(default)]
    setup: bool,
}

/// `[verdict]`: how a trial of the user's programs is judged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerdict {
    /// Regexes over every process's stdout lines; a match means reproduced.
    #[serde(default)]
    reproduced: Vec<Spanned<String>>,
    /// A match means intact (reproduced wins when both match).
    #[serde(default)]
    intact: Vec<Spanned<String>>,
    /// Exit statuses of the first non-setup process.
    #[serde(default)]
    exit: ExitVerdict,
    /// Bound for every process of a trial to finish (default 20000).
    timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitVerdict {
    #[serde(default)]
    reproduced: Vec<i32>,
    #[serde(default)]
    intact: Vec<i32>,
}

/// A validated program to ship.
#[derive(Debug, Clone)]
pub struct ProgramFile {
    /// Absolute host path of the source or binary.
    pub host: PathBuf,
    pub compile: bool,
    pub cflags: Vec<String>,
    pub dest: String,
    /// `file:line` of its `[[file]]` entry, for errors found later (compiling).
    pub origin: (String, usize),
}

/// The validated `exec` part of a scenario.
#[derive(Debug, Clone)]
pub struct Exec {
    pub files: Vec<ProgramFile>,
    /// Workload parameters for the harness (rendered once, at parse time).
    pub params: Vec<(String, String)>,
    /// Names of the processes a trial runs after its setup (pressure targets).
    pub programs: Vec<String>,
}

fn is_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Space-separated percent-escaped words (the control protocol's escaping), so that an
/// argv travels as one parameter value.
fn words(items: &[String]) -> String {
    items
        .iter()
        .map(|a| escape(a.as_bytes()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ints(items: &[i32]) -> String {
    items
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Exec {
    /// Validate the `[[file]]`, `[[process]]` and `[verdict]` tables of `scenario_path`
    /// (its text `text`) for a VM with `cpus` vCPUs.
    pub fn from_raw(
        scenario_path: &Path,
        text: &str,
        files: Vec<Spanned<RawFile>>,
        processes: Vec<Spanned<RawProcess>>,
        verdict: Option<Spanned<RawVerdict>>,
        cpus: usize,
    ) -> Result<Exec, ExecError> {
        let file = scenario_path.display().to_string();
        let at = |offset: usize, why: String| ExecError::At {
            file: file.clone(),
            line: crate::sched::schedule::line_of(text, offset),
            why,
        };
        let dir = scenario_path.parent().unwrap_or(Path::new("."));
        let mut shipped = Vec::new();
        for f in &files {
            let offset = f.span().start;
            let raw = f.get_ref();
            let (rel, compile) = match (&raw.source, &raw.binary) {
                (Some(s), None) => (s, true),
                (None, Some(b)) => (b, false),
                _ => {
                    return Err(at(
                        offset,
                        "a [[file]] needs exactly one of `source` (a C file) or `binary`".into(),
                    ))
                }
            };
            if !compile && !raw.cflags.is_empty() {
                return Err(at(offset, "cflags only apply to a `source`".into()));
            }
            let host = dir.join(rel);
            if !host.is_file() {
                return Err(at(
                    offset,
                    format!(
                        "{rel}: no such file ({} does not exist; paths are relative to the scenario file)",
                        host.display()
                    ),
                ));
            }
            let stem = Path::new(rel)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("program");
            let dest = raw
                .dest
                .clone()
                .unwrap_or_else(|| format!("{DEFAULT_DEST_DIR}/{stem}"));
            if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
                return Err(at(
                    offset,
                    format!("dest {dest:?} must be an absolute guest path without `..`"),
                ));
            }
            if shipped.iter().any(|p: &ProgramFile| p.dest == dest) {
                return Err(at(offset, format!("two files ship to {dest}")));
            }
            shipped.push(ProgramFile {
                host,
                compile,
                cflags: raw.cflags.clone(),
                dest,
                origin: (file.clone(), crate::sched::schedule::line_of(text, offset)),
            });
        }
        if processes.is_empty() {
            return Err(at(
                0,
                "workload \"exec\" needs at least one [[process]]".into(),
            ));
        }
        let mut params = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for (i, p) in processes.iter().enumerate() {
            let offset = p.span().start;
            let raw = p.get_ref();
            if !is_name(&raw.name) {
                return Err(at(
                    offset,
                    format!(
                        "process name {:?}: 1-15 characters of [A-Za-z0-9_-] (it is also a gate and READY name)",
                        raw.name
                    ),
                ));
            }
            if names.contains(&raw.name.as_str()) {
                return Err(at(
                    offset,
                    format!("two processes are named {:?}", raw.name),
                ));
            }
            names.push(&raw.name);
            if raw.argv.is_empty() || raw.argv[0].is_empty() {
                return Err(at(offset, "argv needs at least the program".into()));
            }
            if raw.cpu >= cpus {
                return Err(at(
                    offset,
                    format!("cpu {} does not exist: the VM has {cpus} vCPUs", raw.cpu),
                ));
            }
            let gated = raw.gated.unwrap_or(!raw.setup);
            if raw.setup && gated {
                return Err(at(
                    offset,
                    "a setup process runs before the schedule and cannot be gated".into(),
                ));
            }
            let key = |k: &str| format!("proc{i}_{k}");
            params.push((key("name"), raw.name.clone()));
            params.push((key("argv"), words(&raw.argv)));
            params.push((key("cpu"), raw.cpu.to_string()));
            params.push((key("gated"), (gated as u8).to_string()));
            params.push((key("setup"), (raw.setup as u8).to_string()));
        }
        if processes.iter().all(|p| p.get_ref().setup) {
            return Err(at(0, "every [[process]] is a setup process".into()));
        }
        let Some(verdict) = verdict else {
            return Err(at(
                0,
                "workload \"exec\" needs a [verdict] (output patterns or exit statuses)".into(),
            ));
        };
        let v = verdict.get_ref();
        for pattern in v.reproduced.iter().chain(&v.intact) {
            if let Err(e) = regex::Regex::new(pattern.get_ref()) {
                return Err(at(
                    pattern.span().start,
                    format!("bad regex {:?}: {e}", pattern.get_ref()),
                ));
            }
        }
        let empty = v.reproduced.is_empty()
            && v.intact.is_empty()
            && v.exit.reproduced.is_empty()
            && v.exit.intact.is_empty();
        if empty {
            return Err(at(
                verdict.span().start,
                "[verdict] names no pattern and no exit status: nothing could ever be judged"
                    .into(),
            ));
        }
        for (kind, list) in [("reproduced", &v.reproduced), ("intact", &v.intact)] {
            for (j, pattern) in list.iter().enumerate() {
                params.push((format!("verdict_{kind}{j}"), pattern.get_ref().clone()));
            }
        }
        if !v.exit.reproduced.is_empty() {
            params.push(("exit_reproduced".into(), ints(&v.exit.reproduced)));
        }
        if !v.exit.intact.is_empty() {
            params.push(("exit_intact".into(), ints(&v.exit.intact)));
        }
        let timeout = v.timeout_ms.unwrap_or(20_000);
        if !(1..=600_000).contains(&timeout) {
            return Err(at(
                verdict.span().start,
                format!("verdict.timeout_ms {timeout}: must be 1 ms to 10 min"),
            ));
        }
        params.push(("timeout_ms".into(), timeout.to_string()));
        let programs = processes
            .iter()
            .filter(|p| !p.get_ref().setup)
            .map(|p| p.get_ref().name.clone())
            .collect();
        Ok(Exec {
            files: shipped,
            params,
            programs,
        })
    }

    /// Compile the sources and check every program, in `work` (created); returns the
    /// `(host, guest)` files for the initramfs.
    pub fn prepare(&self, work: &Path, arch: Arch) -> Result<Vec<(PathBuf, String)>, ExecError> {
        std::fs::create_dir_all(work).map_err(|e| ExecError::At {
            file: work.display().to_string(),
            line: 0,
            why: e.to_string(),
        })?;
        // Sources may `#include "memrace.h"` (docs/scenarios.md): it is on the include path.
        let include = work.join("include");
        std::fs::create_dir_all(&include)
            .and_then(|()| std::fs::write(include.join("memrace.h"), MEMRACE_H))
            .map_err(|e| ExecError::At {
                file: include.display().to_string(),
                line: 0,
                why: e.to_string(),
            })?;
        let mut out = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            let at = |why: String| ExecError::At {
                file: f.origin.0.clone(),
                line: f.origin.1,
                why,
            };
            let program = if f.compile {
                let exe = work.join(format!("{i}-{}", f.dest.rsplit('/').next().unwrap_or("p")));
                let mut gcc = Command::new(arch.c_compiler());
                gcc.arg("-static")
                    .arg("-O2")
                    .arg("-I")
                    .arg(&include)
                    .args(&f.cflags)
                    .arg("-o")
                    .arg(&exe)
                    .arg(&f.host);
                let output = crate::child::output_within(&mut gcc, COMPILE_LIMIT)
                    .map_err(|e| at(format!("compiling {}: {e}", f.host.display())))?;
                if !output.status.success() {
                    return Err(at(format!(
                        "{} does not compile ({}):\n{}",
                        f.host.display(),
                        crate::child::describe(&gcc),
                        String::from_utf8_lossy(&output.stderr).trim_end()
                    )));
                }
                exe
            } else {
                f.host.clone()
            };
            crate::guest::static_problem(&program, arch).map_err(|problem| {
                let why = match problem {
                    StaticProblem::Unreadable(e) => e.to_string(),
                    StaticProblem::Not(why) => why,
                };
                at(format!("{}: {why}", program.display()))
            })?;
            out.push((program, f.dest.clone()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(host: PathBuf, compile: bool) -> Exec {
        Exec {
            files: vec![ProgramFile {
                host,
                compile,
                cflags: vec!["-DX=1".into()],
                dest: "/memrace/bin/p".into(),
                origin: ("s.toml".into(), 7),
            }],
            params: Vec::new(),
            programs: Vec::new(),
        }
    }

    #[test]
    fn a_compile_error_shows_the_compilers_output_and_a_dynamic_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bad.c");
        std::fs::write(&src, "int main(void) { return undeclared_thing; }\n").unwrap();
        let e = program(src, true)
            .prepare(&dir.path().join("out"), Arch::X86_64)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.toml:7:") && e.contains("does not compile"),
            "{e}"
        );
        assert!(e.contains("undeclared_thing"), "gcc's own message: {e}");

        let good = dir.path().join("good.c");
        std::fs::write(&good, "int main(void) { return X - 1; }\n").unwrap();
        let files = program(good, true)
            .prepare(&dir.path().join("out"), Arch::X86_64)
            .unwrap();
        assert_eq!(files[0].1, "/memrace/bin/p");

        // The host's own tools are dynamically linked.
        let e = program(PathBuf::from("/bin/true"), false)
            .prepare(&dir.path().join("out"), Arch::X86_64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dynamically linked"), "{e}");
    }
}
