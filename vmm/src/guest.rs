//! What goes into the guest: the static harness binary, the job file and the initramfs.

use crate::initramfs::{self, GuestFile};
use control_proto::escape;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest harness {0} does not exist (MEMRACE_HARNESS)")]
    MissingHarness(PathBuf),
    #[error("{0} is not a static executable (it has an ELF interpreter); build it with RUSTFLAGS=\"-C target-feature=+crt-static\"")]
    NotStatic(PathBuf),
    #[error("building the guest harness failed: {0}\n  try: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p guest-harness --release --target x86_64-unknown-linux-gnu")]
    Build(String),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the harness does once it is up.
#[derive(Debug, Clone)]
pub enum Job {
    /// Run a command and report its output and exit status.
    Command(Vec<String>),
    /// Run a named workload for `trials` trials with parameters.
    Workload {
        name: String,
        trials: u32,
        params: Vec<(String, String)>,
    },
    /// Run mm microbenchmarks and send their samples (`memrace perf`).
    Perf { params: Vec<(String, String)> },
}

impl Job {
    /// The job file (`/memrace/job`), documented in docs/control-protocol.md.
    pub fn render(&self) -> String {
        let e = |s: &str| escape(s.as_bytes());
        match self {
            Job::Command(argv) => {
                let mut out = String::from("mode command\n");
                for a in argv {
                    out.push_str(&format!("arg {}\n", e(a)));
                }
                out
            }
            Job::Workload {
                name,
                trials,
                params,
            } => {
                let head = format!("mode workload\nworkload {}\ntrials {trials}\n", e(name));
                head + &render_params(params)
            }
            Job::Perf { params } => format!("mode perf\n{}", render_params(params)),
        }
    }
}

fn render_params(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("param {} {}\n", escape(k.as_bytes()), escape(v.as_bytes())))
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const HARNESS_TARGET: &str = "x86_64-unknown-linux-gnu";
const HARNESS_BUILD_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The static guest harness: `$MEMRACE_HARNESS`, else built (or rebuilt if stale) from
/// this workspace with cargo, which is a no-op when it is up to date.
pub fn harness() -> Result<PathBuf, GuestError> {
    if let Some(p) = std::env::var_os("MEMRACE_HARNESS") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            check_static(p)
        } else {
            Err(GuestError::MissingHarness(p))
        };
    }
    let root = workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "guest-harness",
            "--target",
            HARNESS_TARGET,
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // A static glibc binary: the initramfs has no dynamic loader or libraries.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    // Generous (a cold build of the harness and its crates takes a minute here), but
    // bounded: a stuck cargo (a lock held elsewhere) must not hang a run.
    let out = crate::child::output_within(&mut build, HARNESS_BUILD_LIMIT)
        .map_err(|e| GuestError::Build(e.to_string()))?;
    if !out.status.success() {
        return Err(GuestError::Build(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    check_static(
        target_dir
            .join(HARNESS_TARGET)
            .join("release")
            .join("guest-harness"),
    )
}

fn check_static(path: PathBuf) -> Result<PathBuf, GuestError> {
    match static_x86_64_problem(&path) {
        Ok(()) => Ok(path),
        Err(StaticProblem::Unreadable(source)) => Err(GuestError::Io { path, source }),
        Err(StaticProblem::Not(_)) => Err(GuestError::NotStatic(path)),
    }
}

/// Why a file cannot run in the guest, which has no dynamic loader or libraries.
#[derive(Debug)]
pub enum StaticProblem {
    Unreadable(std::io::Error),
    /// It is not a static x86_64 ELF executable: why, for the user.
    Not(String),
}

/// Whether `path` is a static x86_64 ELF executable (the guest harness, and every program
/// a scenario ships).
pub fn static_x86_64_problem(path: &Path) -> Result<(), StaticProblem> {
    use object::{Object, ObjectSection};
    let data = std::fs::read(path).map_err(StaticProblem::Unreadable)?;
    let not = |why: &str| StaticProblem::Not(why.to_string());
    let elf = object::File::parse(&*data)
        .map_err(|_| not("not an ELF executable (ship a static x86_64 Linux binary)"))?;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(StaticProblem::Not(format!(
            "an ELF for {:?}; the guest runs x86_64",
            elf.architecture()
        )));
    }
    if elf.sections().any(|s| s.name() == Ok(".interp")) {
        return Err(not(
            "dynamically linked (it has an ELF interpreter); the guest has no libraries: build it with -static",
        ));
    }
    Ok(())
}

/// Write an initramfs with the harness as `/init`, the job, and extra `(host, guest)` files.
pub fn build_initramfs(
    out: &Path,
    job: &Job,
    extra: &[(PathBuf, String)],
) -> Result<(), GuestError> {
    let mut files = vec![
        GuestFile::from_host(&harness()?, "/init")?,
        GuestFile {
            guest_path: "/memrace/job".into(),
            contents: job.render().into_bytes(),
            mode: 0o644,
        },
    ];
    for (host, guest) in extra {
        files.push(GuestFile::from_host(host, guest)?);
    }
    Ok(initramfs::write(out, &files)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_job_files() {
        let j = Job::Command(vec!["/bin/sh".into(), "-c".into(), "exit 7".into()]);
        assert_eq!(
            j.render(),
            "mode command\narg /bin/sh\narg -c\narg exit%207\n"
        );
        let w = Job::Workload {
            name: "madv-free-dio".into(),
            trials: 3,
            params: vec![("pages".into(), "1".into())],
        };
        assert_eq!(
            w.render(),
            "mode workload\nworkload madv-free-dio\ntrials 3\nparam pages 1\n"
        );
        let p = Job::Perf {
            params: vec![("benches".into(), "fork,migrate".into())],
        };
        assert_eq!(p.render(), "mode perf\nparam benches fork,migrate\n");
    }
}
