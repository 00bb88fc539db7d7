//! Forking trial processes and waiting for children with a deadline.

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

/// Wait for `pid` for at most `timeout`; on timeout kill `kill_target` (a pid, or a
/// negative process-group id) with SIGKILL and reap briefly.
pub fn wait(pid: libc::pid_t, timeout: Duration, kill_target: libc::pid_t) -> Res<Ended> {
    let deadline = Instant::now() + timeout;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid c_int for waitpid to fill.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if ret == pid {
            return Ok(decode(status));
        }
        if ret < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(error::last("waitpid"));
        }
        if Instant::now() >= deadline {
            // SAFETY: kill only sends a signal to our own child (or its process group).
            unsafe { libc::kill(kill_target, libc::SIGKILL) };
            let reap_deadline = Instant::now() + Duration::from_secs(5);
            // SAFETY: as above.
            while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0
                && Instant::now() < reap_deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Ok(Ended::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
