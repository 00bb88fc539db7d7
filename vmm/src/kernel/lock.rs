//! Exclusive locks on files in the shared cache (flock(2), freed when the holder
//! exits), with a bounded wait and the holder's pid recorded in the lock file, so a
//! stuck holder gives an error that names it instead of a hang.

use super::KernelError;
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(200);

/// Held until dropped (or until the process dies).
#[derive(Debug)]
pub struct CacheLock {
    _held: File,
}

impl CacheLock {
    /// Lock `path`; `what` says what the lock guards, for messages. Waits at most
    /// `limit` for another holder (and says once that it waits, and for whom).
    pub fn take(path: &Path, what: &str, limit: Duration) -> Result<CacheLock, KernelError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| KernelError::io(parent, e))?;
        }
        // No truncation before the lock is ours: the file names the current holder.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| KernelError::io(path, e))?;
        let deadline = Instant::now() + limit;
        let mut told = false;
        loop {
            // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EWOULDBLOCK | libc::EINTR)) {
                return Err(KernelError::io(path, err));
            }
            if Instant::now() >= deadline {
                return Err(KernelError::LockTimeout {
                    lock: path.to_path_buf(),
                    what: what.to_string(),
                    holder: holder(path),
                    waited: limit,
                });
            }
            if !told {
                eprintln!(
                    "memrace: waiting for {} ({what}), held by {}",
                    path.display(),
                    holder(path)
                );
                told = true;
            }
            std::thread::sleep(POLL);
        }
        let mut record = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        };
        record().map_err(|e| KernelError::io(path, e))?;
        Ok(CacheLock { _held: file })
    }
}

/// Who holds the lock at `path`, as far as its file says: the pid and command line.
fn holder(path: &Path) -> String {
    let pid: Option<u32> = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let Some(pid) = pid else {
        return "a process that recorded no pid".into();
    };
    let cmdline = std::fs::read(PathBuf::from(format!("/proc/{pid}/cmdline"))).map(|b| {
        String::from_utf8_lossy(&b)
            .replace('\0', " ")
            .trim()
            .to_string()
    });
    match cmdline {
        Ok(c) if !c.is_empty() => format!("pid {pid} (`{c}`)"),
        _ => format!("pid {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_times_out_naming_the_holder_and_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = CacheLock::take(&path, "test", Duration::ZERO).unwrap();
        // flock locks belong to the open file: a second open conflicts even in-process.
        let started = Instant::now();
        let err = CacheLock::take(&path, "the test tree", Duration::from_millis(300)).unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "waited the bound"
        );
        let text = err.to_string();
        let me = format!("pid {}", std::process::id());
        for needle in [
            path.to_str().unwrap(),
            "the test tree",
            me.as_str(),
            "stop it",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in: {text}");
        }
        drop(held);
        CacheLock::take(&path, "test", Duration::ZERO).unwrap();
    }

    #[test]
    fn a_lock_file_without_a_pid_still_gives_a_clear_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.lock");
        std::fs::write(&path, "").unwrap();
        assert_eq!(holder(&path), "a process that recorded no pid");
    }
}
