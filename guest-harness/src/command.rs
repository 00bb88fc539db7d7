//! `mode command`: run an argv, forward its output as `OUT` lines, report `EXIT`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_proto::Stream;

use crate::child::{self, Ended};
use crate::control;
use crate::error::{self, Res};
use crate::job::Params;
use crate::shell;

const PATH: &str = "/bin:/sbin:/usr/bin";

/// Build the command; `sh`/`/bin/sh` falls back to the built-in shell when the initramfs
/// has no `/bin/sh`.
fn command(argv: &[OsString]) -> Command {
    let builtin_sh = (argv[0] == "/bin/sh" || argv[0] == "sh") && !Path::new("/bin/sh").exists();
    let mut cmd = if builtin_sh {
        let mut c = Command::new("/proc/self/exe");
        c.arg0("sh").arg(shell::BUILTIN_FLAG);
        c
    } else {
        Command::new(&argv[0])
    };
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/")
        .env("TERM", "dumb")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// Read what is available on `pipe`; forward it. Returns false once the pipe is finished.
fn forward(pipe: &mut File, stream: Stream, buf: &mut [u8]) -> bool {
    match pipe.read(buf) {
        Ok(0) => false,
        Ok(n) => {
            control::output(stream, &buf[..n]);
            true
        }
        Err(e) => matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock),
    }
}

/// Run the job's argv. Params: `timeout_s` (default 3600): after it the command's process
/// group is killed and the exit code is 124. Returns the exit code to report.
pub fn run(argv: &[OsString], mut params: Params) -> Res<i32> {
    let timeout = Duration::from_secs(params.take_u64("timeout_s", 3600)?);
    params.finish()?;
    let mut child = match command(argv).spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "memrace-harness: cannot execute {}: {e}\n",
                argv[0].to_string_lossy()
            );
            control::output(Stream::Stderr, msg.as_bytes());
            return Ok(127);
        }
    };
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let mut pipes = [
        (
            Stream::Stdout,
            child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        ),
        (
            Stream::Stderr,
            child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
        ),
    ];
    let mut buf = [0u8; control::OUT_CHUNK];
    let mut status = None;
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(|e| error::describe("wait", &e))?;
        }
        let open: Vec<usize> = (0..2).filter(|&i| pipes[i].1.is_some()).collect();
        let now = Instant::now();
        if open.is_empty() || now >= deadline {
            break;
        }
        let mut pfds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| libc::pollfd {
                fd: pipes[i].1.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait_ms = (deadline - now).min(Duration::from_millis(200)).as_millis() as libc::c_int;
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures.
        let ready = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait_ms) };
        if ready == 0 && status.is_some() {
            // The command is gone and nothing arrived for a while: a leftover background
            // process holds the pipe. Stop here rather than wait for the timeout.
            break;
        }
        for (pfd, &i) in pfds.iter().zip(&open) {
            if pfd.revents != 0 {
                let (stream, pipe) = &mut pipes[i];
                if !pipe.as_mut().is_some_and(|p| forward(p, *stream, &mut buf)) {
                    *pipe = None;
                }
            }
        }
    }
    if status.is_none() {
        let ended = child::wait(
            pid,
            deadline.saturating_duration_since(Instant::now()),
            -pid,
        )?;
        if ended == Ended::TimedOut {
            control::note(&format!(
                "command timed out after {} s and was killed",
                timeout.as_secs()
            ));
        }
        return Ok(ended.code());
    }
    let st = status.expect("checked above");
    Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
}
