//! `mode command`: run an argv, forward its output as `OUT` lines, report `EXIT`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control_proto::Stream;

use crate::child::{self, Ended};
use crate::control;
use crate::error::Res;
use crate::job::Params;
use crate::shell;

const PATH: &str = "/bin:/sbin:/usr/bin";
/// The command's whole environment.
pub const ENV: [(&str, &str); 3] = [("PATH", PATH), ("HOME", "/"), ("TERM", "dumb")];

/// The program and argv to run: `sh`/`/bin/sh` fall back to the built-in shell when the
/// initramfs has no `/bin/sh`.
fn program(argv: &[OsString]) -> Option<(PathBuf, Vec<OsString>)> {
    if (argv[0] == "/bin/sh" || argv[0] == "sh") && !Path::new("/bin/sh").exists() {
        let mut args = vec![OsString::from("sh"), OsString::from(shell::BUILTIN_FLAG)];
        args.extend_from_slice(&argv[1..]);
        return Some((PathBuf::from("/proc/self/exe"), args));
    }
    Some((child::find_program(&argv[0], PATH)?, argv.to_vec()))
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
    let spawned = program(argv)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        .and_then(|(path, args)| child::spawn(&path, &args, &ENV, true));
    let (pid, (stdout, stderr)) = match spawned {
        Ok(child::Spawned {
            pid,
            output: Some(output),
        }) => (pid, output),
        Ok(_) => unreachable!("capture was requested"),
        Err(e) => {
            let msg = format!(
                "memrace-harness: cannot execute {}: {e}\n",
                argv[0].to_string_lossy()
            );
            control::output(Stream::Stderr, msg.as_bytes());
            return Ok(127);
        }
    };
    let deadline = Instant::now() + timeout;
    let mut pipes = [
        (Stream::Stdout, Some(stdout)),
        (Stream::Stderr, Some(stderr)),
    ];
    let mut buf = [0u8; control::OUT_CHUNK];
    let mut status = None;
    loop {
        if status.is_none() {
            status = child::try_wait(pid)?;
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
    let ended = match status {
        Some(ended) => ended,
        None => child::wait(
            pid,
            deadline.saturating_duration_since(Instant::now()),
            -pid,
        )?,
    };
    if ended == Ended::TimedOut {
        control::note(&format!(
            "command timed out after {} s and was killed",
            timeout.as_secs()
        ));
    }
    Ok(ended.code())
}
