//! Forking trial processes, spawning commands, waiting for children with a deadline.
//!
//! `std::process::Command` cannot be used: on Linux it creates an AF_UNIX socketpair to
//! talk to the child, and the guest kernel has no networking (socketpair → ENOSYS).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{self, Res};

/// How a waited-for child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Normal exit with this status.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Still running at the deadline; it has been sent SIGKILL (and reaped if it died).
    TimedOut,
}

impl Ended {
    /// Shell-style exit code: status, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(c) => c,
            Ended::Signaled(s) => 128 + s,
            Ended::TimedOut => 124,
        }
    }
}

fn decode(status: libc::c_int) -> Ended {
    if libc::WIFSIGNALED(status) {
        Ended::Signaled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

/// Fork; the child runs `f` and `_exit`s with its return value (never returns to the caller).
pub fn fork(f: impl FnOnce() -> i32) -> Res<libc::pid_t> {
    // SAFETY: callers fork only from single-threaded processes (PID 1, trial processes
    // before they start threads), so the child's heap and locks are consistent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(error::last("fork"));
    }
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(126);
        // SAFETY: _exit ends this child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// Reap `pid` if it has ended.
pub fn try_wait(pid: libc::pid_t) -> Res<Option<Ended>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid c_int for waitpid to fill.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if ret == pid {
            return Ok(Some(decode(status)));
        }
        if ret == 0 {
            return Ok(None);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(error::last("waitpid"));
        }
    }
}

/// Wait for `pid` for at most `timeout`; on timeout kill `kill_target` (a pid, or a
/// negative process-group id) with SIGKILL and reap briefly.
pub fn wait(pid: libc::pid_t, timeout: Duration, kill_target: libc::pid_t) -> Res<Ended> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ended) = try_wait(pid)? {
            return Ok(ended);
        }
        if Instant::now() >= deadline {
            // SAFETY: kill only sends a signal to our own child (or its process group).
            unsafe { libc::kill(kill_target, libc::SIGKILL) };
            let reap_deadline = Instant::now() + Duration::from_secs(5);
            while try_wait(pid)?.is_none() && Instant::now() < reap_deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Ok(Ended::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Resolve `name` like execvp: names with a `/` are used as they are, others are looked up
/// in the `:`-separated `path`.
pub fn find_program(name: &OsStr, path: &str) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(name));
    }
    path.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A started command.
pub struct Spawned {
    pub pid: libc::pid_t,
    /// The read ends of its stdout and stderr (when captured).
    pub output: Option<(File, File)>,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// fork + execve `program` with `argv` and `env`, stdin from /dev/null, cwd `/`, SIGPIPE
/// default. With `capture`, stdout/stderr go to new pipes and the child leads a new process
/// group (so that it can be killed as a whole). An exec failure is returned as the error.
/// Call only from a single-threaded process.
pub fn spawn(
    program: &Path,
    argv: &[OsString],
    env: &[(&str, &str)],
    capture: bool,
) -> io::Result<Spawned> {
    let path = cstring(program.as_os_str())?;
    let args = argv
        .iter()
        .map(|a| cstring(a))
        .collect::<io::Result<Vec<_>>>()?;
    let envs = env
        .iter()
        .map(|(k, v)| cstring(OsStr::new(&format!("{k}={v}"))))
        .collect::<io::Result<Vec<_>>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let null = File::open("/dev/null")?;
    let pipes = if capture {
        Some((pipe()?, pipe()?))
    } else {
        None
    };
    let (status_r, status_w) = pipe()?;
    use std::os::fd::AsRawFd;
    // SAFETY: the process is single-threaded (documented precondition); the child only
    // makes raw syscalls on memory prepared before the fork, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: all descriptors and pointers were set up before the fork and are valid;
        // on any failure the child reports errno through the status pipe and _exits.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            if let Some(((_, out_w), (_, err_w))) = &pipes {
                libc::dup2(out_w.as_raw_fd(), 1);
                libc::dup2(err_w.as_raw_fd(), 2);
                libc::setpgid(0, 0);
            }
            libc::chdir(c"/".as_ptr());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(status_w.as_raw_fd(), (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    drop(status_w);
    let mut errno = [0u8; 4];
    let mut status = File::from(status_r);
    let n = loop {
        match io::Read::read(&mut status, &mut errno) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if n == 4 {
        let _ = wait(pid, Duration::from_secs(5), pid);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
    }
    let output = pipes.map(|((out_r, _), (err_r, _))| (File::from(out_r), File::from(err_r)));
    Ok(Spawned { pid, output })
}
