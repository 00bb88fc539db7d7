//! The guest's initramfs: a newc cpio archive memrace writes itself, holding the
//! static guest harness as `/init`, the job file, and any extra files the user names.

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

/// Write the archive to `out` (atomically: a temp file renamed into place).
pub fn write(out: &Path, files: &[GuestFile]) -> Result<(), InitramfsError> {
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
        write(&archive, &files).unwrap();
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
                    write(&dir.path().join("x"), &[f]),
                    Err(InitramfsError::BadGuestPath(_))
                ),
                "{bad}"
            );
        }
    }
}
