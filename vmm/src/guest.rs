//! What goes into the guest: the static harness binary, the job file and the initramfs.

use crate::arch::Arch;
use crate::initramfs::{self, GuestFile};
use control_proto::escape;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest harness {path} does not exist ({var})")]
    MissingHarness { path: PathBuf, var: String },
    #[error("{path} cannot be the {arch} guest's /init: {why}\n  build it with: {}", build_command(*arch))]
    BadHarness {
        path: PathBuf,
        arch: Arch,
        why: String,
    },
    #[error("building the {arch} guest harness failed: {why}\n  try: {}", build_command(*arch))]
    Build { arch: Arch, why: String },
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The command that builds the harness for `arch` by hand.
fn build_command(arch: Arch) -> String {
    format!(
        "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p guest-harness --release --target {}",
        arch.rust_target()
    )
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

const HARNESS_BUILD_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The environment variables that name a prebuilt harness for `arch`, in the order they
/// are consulted: `MEMRACE_HARNESS_X86_64` / `MEMRACE_HARNESS_ARM64`, then
/// `MEMRACE_HARNESS` (for whichever architecture it was built; it is checked).
pub fn harness_vars(arch: Arch) -> [String; 2] {
    [
        format!("MEMRACE_HARNESS_{}", arch.name().to_ascii_uppercase()),
        "MEMRACE_HARNESS".to_string(),
    ]
}

/// The static guest harness for `arch`: a prebuilt one named by [`harness_vars`], else
/// built (or rebuilt if stale) from this workspace with cargo for `arch`'s Rust target,
/// which is a no-op when it is up to date.
pub fn harness(arch: Arch) -> Result<PathBuf, GuestError> {
    for var in harness_vars(arch) {
        if let Some(p) = std::env::var_os(&var) {
            let path = PathBuf::from(p);
            return if path.is_file() {
                check_harness(path, arch)
            } else {
                Err(GuestError::MissingHarness { path, var })
            };
        }
    }
    let root = workspace_root();
    let build_error = |why: String| GuestError::Build { arch, why };
    // Absolute: cargo runs in the workspace root (below), memrace may run elsewhere.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = std::path::absolute(&target_dir).map_err(|e| GuestError::Io {
        path: target_dir.clone(),
        source: e,
    })?;
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
            arch.rust_target(),
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        // Cargo reads its configuration from the working directory up: the workspace's
        // .cargo/config.toml names the cross linker for the arm64 target.
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        // A static glibc binary: the initramfs has no dynamic loader or libraries.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    // Generous (a cold build of the harness and its crates takes a minute here), but
    // bounded: a stuck cargo (a lock held elsewhere) must not hang a run.
    let out = crate::child::output_within(&mut build, HARNESS_BUILD_LIMIT)
        .map_err(|e| build_error(e.to_string()))?;
    if !out.status.success() {
        return Err(build_error(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    check_harness(
        target_dir
            .join(arch.rust_target())
            .join("release")
            .join("guest-harness"),
        arch,
    )
}

fn check_harness(path: PathBuf, arch: Arch) -> Result<PathBuf, GuestError> {
    match static_problem(&path, arch) {
        Ok(()) => Ok(path),
        Err(StaticProblem::Unreadable(source)) => Err(GuestError::Io { path, source }),
        Err(StaticProblem::Not(why)) => Err(GuestError::BadHarness { path, arch, why }),
    }
}

/// Why a file cannot run in the guest, which has no dynamic loader or libraries.
#[derive(Debug)]
pub enum StaticProblem {
    Unreadable(std::io::Error),
    /// It is not a static ELF executable for the guest's architecture: why, for the user.
    Not(String),
}

/// Whether `path` is a static ELF executable for `arch` (the guest harness, and every
/// program a scenario ships).
pub fn static_problem(path: &Path, arch: Arch) -> Result<(), StaticProblem> {
    let data = std::fs::read(path).map_err(StaticProblem::Unreadable)?;
    static_elf_problem(&data, arch).map_err(StaticProblem::Not)
}

/// [`static_problem`] of a file's contents.
pub fn static_elf_problem(data: &[u8], arch: Arch) -> Result<(), String> {
    use object::{Object, ObjectSection};
    let elf = object::File::parse(data)
        .map_err(|_| format!("not an ELF executable (ship a static {arch} Linux binary)"))?;
    initramfs::elf_arch_problem(&elf, arch)?;
    if elf.sections().any(|s| s.name() == Ok(".interp")) {
        return Err(
            "dynamically linked (it has an ELF interpreter); the guest has no libraries: build it with -static"
                .into(),
        );
    }
    Ok(())
}

/// Write an initramfs for an `arch` guest with the harness as `/init`, the job, and extra
/// `(host, guest)` files; an ELF among them must be for `arch`.
pub fn build_initramfs(
    out: &Path,
    arch: Arch,
    job: &Job,
    extra: &[(PathBuf, String)],
) -> Result<(), GuestError> {
    let mut files = vec![
        GuestFile::from_host(&harness(arch)?, "/init")?,
        GuestFile {
            guest_path: "/memrace/job".into(),
            contents: job.render().into_bytes(),
            mode: 0o644,
        },
    ];
    for (host, guest) in extra {
        files.push(GuestFile::from_host(host, guest)?);
    }
    Ok(initramfs::write(out, arch, &files)?)
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

    #[test]
    fn the_static_check_wants_the_guests_architecture_and_names_both() {
        use crate::initramfs::test_elf::{header, EM_AARCH64, EM_X86_64};
        let x86 = header(EM_X86_64);
        let arm = header(EM_AARCH64);
        assert_eq!(static_elf_problem(&x86, Arch::X86_64), Ok(()));
        assert_eq!(static_elf_problem(&arm, Arch::Arm64), Ok(()));
        assert_eq!(
            static_elf_problem(&x86, Arch::Arm64),
            Err("an ELF for x86_64, but the guest is arm64: build it for arm64".into())
        );
        assert_eq!(
            static_elf_problem(&arm, Arch::X86_64),
            Err("an ELF for arm64, but the guest is x86_64: build it for x86_64".into())
        );
        let err = static_elf_problem(b"#!/bin/sh\n", Arch::Arm64).unwrap_err();
        assert!(err.contains("static arm64 Linux binary"), "{err}");
    }

    #[test]
    fn an_x86_64_harness_is_refused_for_an_arm64_guest() {
        use crate::initramfs::test_elf::{header, EM_X86_64};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guest-harness");
        std::fs::write(&path, header(EM_X86_64)).unwrap();
        assert_eq!(check_harness(path.clone(), Arch::X86_64).unwrap(), path);
        let err = check_harness(path.clone(), Arch::Arm64).unwrap_err();
        assert!(
            matches!(
                &err,
                GuestError::BadHarness {
                    arch: Arch::Arm64,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(
                "cannot be the arm64 guest's /init: an ELF for x86_64, but the guest is arm64"
            ),
            "{text}"
        );
        assert!(
            text.contains("--target aarch64-unknown-linux-gnu"),
            "{text}"
        );
        let missing = check_harness(dir.path().join("nope"), Arch::Arm64).unwrap_err();
        assert!(matches!(missing, GuestError::Io { .. }), "{missing:?}");
    }

    #[test]
    fn a_prebuilt_harness_is_looked_up_per_architecture_first() {
        assert_eq!(
            harness_vars(Arch::Arm64),
            ["MEMRACE_HARNESS_ARM64", "MEMRACE_HARNESS"]
        );
        assert_eq!(harness_vars(Arch::X86_64)[0], "MEMRACE_HARNESS_X86_64");
    }
}
