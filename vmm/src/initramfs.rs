//! The guest's initramfs: a newc cpio archive memrace writes itself, holding the
//! static guest harness as `/init`, the job file, and any extra files the user names.

use crate::arch::Arch;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("guest path {0:?} must be absolute and must not contain `..`")]
    BadGuestPath(String),
    #[error("{0} is larger than 4 GiB, the newc format's limit")]
    TooLarge(PathBuf),
    #[error("guest file {guest_path}: {why}")]
    WrongArch { guest_path: String, why: String },
}

/// Err (why, naming both architectures) unless the ELF `elf` is for `arch`.
pub fn elf_arch_problem(elf: &object::File, arch: Arch) -> Result<(), String> {
    use object::Object;
    let found = elf.architecture();
    if found == arch.elf_architecture() {
        return Ok(());
    }
    let found = match Arch::from_elf(found) {
        Some(other) => other.to_string(),
        None => format!("{found:?}"),
    };
    Err(format!(
        "an ELF for {found}, but the guest is {arch}: build it for {arch}"
    ))
}

/// Err unless `contents`, if it is an ELF file, is one for `arch`. Other files (data,
/// scripts) pass.
fn arch_check(guest_path: &str, contents: &[u8], arch: Arch) -> Result<(), InitramfsError> {
    if !contents.starts_with(b"\x7fELF") {
        return Ok(());
    }
    match object::File::parse(contents) {
        Ok(elf) => elf_arch_problem(&elf, arch).map_err(|why| InitramfsError::WrongArch {
            guest_path: guest_path.to_string(),
            why,
        }),
        // Not an ELF the parser knows (truncated, exotic): the kernel will say.
        Err(_) => Ok(()),
    }
}

/// One file to place in the guest.
#[derive(Debug, Clone)]
pub struct GuestFile {
    /// Absolute path inside the guest, e.g. `/init`.
    pub guest_path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl GuestFile {
    pub fn from_host(host: &Path, guest_path: &str) -> Result<GuestFile, InitramfsError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| InitramfsError::Io {
            path: host.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(host).map_err(io)?;
        if meta.len() > u32::MAX as u64 {
            return Err(InitramfsError::TooLarge(host.to_path_buf()));
        }
        Ok(GuestFile {
            guest_path: guest_path.to_string(),
            contents: std::fs::read(host).map_err(io)?,
            mode: meta.permissions().mode() & 0o7777,
        })
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

fn check(guest_path: &str) -> Result<&str, InitramfsError> {
    let rel = guest_path
        .strip_prefix('/')
        .ok_or_else(|| InitramfsError::BadGuestPath(guest_path.into()))?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(InitramfsError::BadGuestPath(guest_path.into()));
    }
    Ok(rel)
}

/// Write the archive for an `arch` guest to `out` (atomically: a temp file renamed into
/// place). Every ELF file among `files` must be for `arch`.
pub fn write(out: &Path, arch: Arch, files: &[GuestFile]) -> Result<(), InitramfsError> {
    let io = |source| InitramfsError::Io {
        path: out.to_path_buf(),
        source,
    };
    // Directories the harness mounts on, plus every parent of every file.
    let mut dirs: Vec<String> = ["dev", "proc", "sys", "tmp", "memrace"]
        .map(String::from)
        .to_vec();
    for f in files {
        let rel = check(&f.guest_path)?;
        arch_check(&f.guest_path, &f.contents, arch)?;
        let mut parts: Vec<&str> = rel.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            dirs.push(parts[..i].join("/"));
        }
    }
    dirs.sort();
    dirs.dedup();

    let tmp = out.with_extension("tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    let mut ino = 1;
    let mut entry = |name: &str, mode: u32| {
        ino += 1;
        cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(1)
    };
    for d in &dirs {
        entry(d, S_IFDIR | 0o755)
            .write(&mut w, 0)
            .finish()
            .map_err(io)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    entry("dev/console", S_IFCHR | 0o600)
        .rdev_major(5)
        .rdev_minor(1)
        .write(&mut w, 0)
        .finish()
        .map_err(io)?;
    for f in files {
        let name = check(&f.guest_path)?;
        let size = u32::try_from(f.contents.len())
            .map_err(|_| InitramfsError::TooLarge(f.guest_path.clone().into()))?;
        let mut fw = entry(name, S_IFREG | f.mode).write(&mut w, size);
        fw.write_all(&f.contents).map_err(io)?;
        fw.finish().map_err(io)?;
    }
    let w = cpio::newc::trailer(w).map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)
}

/// Minimal ELF files for tests.
#[cfg(test)]
pub(crate) mod test_elf {
    pub const EM_X86_64: u16 = 62;
    pub const EM_AARCH64: u16 = 183;
    pub const EM_RISCV: u16 = 243;

    /// A 64-bit little-endian ELF executable header for `machine`, with no segments or
    /// sections (so also no interpreter).
    pub fn header(machine: u16) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        h.resize(16, 0);
        h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h.extend_from_slice(&machine.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
        h.extend_from_slice(&0x40_0000u64.to_le_bytes()); // entry
        h.extend_from_slice(&0u64.to_le_bytes()); // phoff
        h.extend_from_slice(&0u64.to_le_bytes()); // shoff
        h.extend_from_slice(&0u32.to_le_bytes()); // flags
        for half in [64u16, 56, 0, 64, 0, 0] {
            // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
            h.extend_from_slice(&half.to_le_bytes());
        }
        assert_eq!(h.len(), 64);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_cpio_tool_reads_back_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("initrd.cpio");
        let files = vec![
            GuestFile {
                guest_path: "/init".into(),
                contents: b"#!/bin/true\n".to_vec(),
                mode: 0o755,
            },
            GuestFile {
                guest_path: "/memrace/job".into(),
                contents: b"mode command\n".to_vec(),
                mode: 0o644,
            },
            GuestFile {
                guest_path: "/a/b/c.txt".into(),
                contents: vec![7u8; 5000],
                mode: 0o600,
            },
        ];
        write(&archive, Arch::X86_64, &files).unwrap();
        let listing = Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&archive)
            .output()
            .expect("cpio tool installed");
        assert!(
            listing.status.success(),
            "{}",
            String::from_utf8_lossy(&listing.stderr)
        );
        let text = String::from_utf8_lossy(&listing.stdout);
        for name in [
            "init",
            "memrace/job",
            "a/b/c.txt",
            "a/b",
            "dev/console",
            "proc",
            "sys",
        ] {
            assert!(
                text.lines().any(|l| l.ends_with(&format!(" {name}"))),
                "{name} missing in\n{text}"
            );
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("crw-------") && l.ends_with("dev/console")),
            "{text}"
        );
        let out = dir.path().join("x");
        std::fs::create_dir(&out).unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -i -d --quiet < {}", archive.display()))
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read(out.join("a/b/c.txt")).unwrap(),
            vec![7u8; 5000]
        );
        assert_eq!(
            std::fs::read(out.join("memrace/job")).unwrap(),
            b"mode command\n"
        );
    }

    #[test]
    fn rejects_escaping_guest_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["init", "/../etc/x", "/a//b", "/", "/a/./b"] {
            let f = GuestFile {
                guest_path: bad.into(),
                contents: vec![],
                mode: 0o644,
            };
            assert!(
                matches!(
                    write(&dir.path().join("x"), Arch::X86_64, &[f]),
                    Err(InitramfsError::BadGuestPath(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_elf_for_another_architecture_is_refused_and_other_files_pass() {
        let dir = tempfile::tempdir().unwrap();
        let file = |path: &str, contents: Vec<u8>| GuestFile {
            guest_path: path.into(),
            contents,
            mode: 0o755,
        };
        let x86 = file("/memrace/bin/p", test_elf::header(test_elf::EM_X86_64));
        let arm = file("/memrace/bin/q", test_elf::header(test_elf::EM_AARCH64));
        let data = file("/data.txt", b"not an ELF\n".to_vec());
        let out = dir.path().join("initrd");
        write(&out, Arch::Arm64, &[arm.clone(), data.clone()]).unwrap();
        write(&out, Arch::X86_64, &[x86.clone(), data]).unwrap();
        let err = write(&out, Arch::Arm64, &[arm, x86]).unwrap_err();
        assert!(matches!(err, InitramfsError::WrongArch { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "guest file /memrace/bin/p: an ELF for x86_64, but the guest is arm64: build it for arm64"
        );
        let riscv = file("/r", test_elf::header(test_elf::EM_RISCV));
        let err = write(&out, Arch::X86_64, &[riscv]).unwrap_err().to_string();
        assert!(err.contains("Riscv64") && err.contains("x86_64"), "{err}");
    }
}
