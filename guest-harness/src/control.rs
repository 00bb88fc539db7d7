//! The control channel: protocol lines on a tty of their own, ttyS1 on x86_64 and the
//! virtio console hvc0 on arm64 (docs/control-protocol.md).
//!
//! The descriptor is opened once by PID 1 and inherited by every forked trial process.
//! Each message is written with a single `write(2)`; the tty layer serialises whole writes,
//! so lines from different threads and processes never interleave.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use control_proto::{Message, Stream};

use crate::error::{self, Res};

/// Largest payload of one `OUT` message (escaped, it stays far below the 4096-byte line limit).
pub const OUT_CHUNK: usize = 1024;

/// Where lines go. Until the control tty is open (or if it cannot be), stderr, i.e. the console.
static FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// Whether a failed open of the control tty may succeed later: the device node or its
/// port does not exist yet.
fn not_there_yet(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::ENOENT | libc::ENODEV | libc::ENXIO))
}

/// Open `path` (a tty: a serial port or a virtio console) in raw mode and make it the
/// control channel. While it does not exist yet, retry for at most `wait`.
pub fn open(path: &str, wait: Duration) -> Res<()> {
    let fd = open_raw(path, wait)?;
    FD.store(fd.into_raw_fd(), Ordering::SeqCst);
    Ok(())
}

/// Open the tty `path` (retrying for at most `wait` while it does not exist) and put it
/// in raw mode.
fn open_raw(path: &str, wait: Duration) -> Res<OwnedFd> {
    let cpath = std::ffi::CString::new(path).map_err(|_| format!("bad path {path}"))?;
    let deadline = Instant::now() + wait;
    let fd = loop {
        // SAFETY: `cpath` is a valid NUL-terminated string; open has no other preconditions.
        let fd = unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor open just returned, owned by nothing else.
            break unsafe { OwnedFd::from_raw_fd(fd) };
        }
        let err = std::io::Error::last_os_error();
        if !not_there_yet(err.raw_os_error()) || Instant::now() >= deadline {
            return Err(error::describe(&format!("open({path})"), &err));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: termios is plain old data; an all-zero value is valid and is overwritten by
    // tcgetattr before use.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `tio` a valid, writable termios.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut tio) } != 0 {
        return Err(error::last(&format!("tcgetattr({path})")));
    }
    // SAFETY: `tio` is a valid termios obtained from tcgetattr.
    unsafe { libc::cfmakeraw(&mut tio) };
    // SAFETY: `fd` is open and `tio` a valid termios.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &tio) } != 0 {
        return Err(error::last(&format!("tcsetattr({path})")));
    }
    Ok(fd)
}

/// Send one message. Write errors are ignored: there is nobody left to tell.
pub fn send(msg: &Message) {
    let mut line = msg.to_string().into_bytes();
    line.push(b'\n');
    let fd = FD.load(Ordering::SeqCst);
    let mut rest = &line[..];
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// `PHASE <name>`.
pub fn phase(name: &str) {
    send(&Message::Phase {
        name: name.to_string(),
    });
}

/// `FACT <key> <value>`.
pub fn fact(key: &str, value: impl ToString) {
    send(&Message::Fact {
        key: key.to_string(),
        value: value.to_string(),
    });
}

/// Forward output bytes as `OUT` messages of at most [`OUT_CHUNK`] bytes each.
pub fn output(stream: Stream, data: &[u8]) {
    for chunk in data.chunks(OUT_CHUNK) {
        send(&Message::Output {
            stream,
            data: chunk.to_vec(),
        });
    }
}

/// A harness diagnostic: an `OUT stderr` line prefixed with `memrace-harness: `.
pub fn note(text: &str) {
    output(
        Stream::Stderr,
        format!("memrace-harness: {text}\n").as_bytes(),
    );
}

/// Wait (at most `limit`) until the tty driver has sent everything queued.
pub fn drain(limit: Duration) {
    let fd = FD.load(Ordering::SeqCst);
    let deadline = Instant::now() + limit;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ stores one c_int through the valid pointer we pass.
        let ret = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        if ret != 0 || queued == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // A UART's transmitter may still hold the last bytes.
    std::thread::sleep(Duration::from_millis(20));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slave side of a new pseudo-terminal (and its master, to keep it alive).
    fn pty() -> (OwnedFd, String) {
        // SAFETY: posix_openpt has no preconditions; the result is checked.
        let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(master >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `master` was just opened and is owned by nothing else.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `master` is a pty master; `name` is a writable buffer of its length.
        unsafe {
            assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
            assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
            assert_eq!(
                libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
                0
            );
        }
        // SAFETY: ptsname_r wrote a NUL-terminated name into `name`.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        (master, name.to_string_lossy().into_owned())
    }

    #[test]
    fn a_tty_is_opened_in_raw_mode() {
        let (_master, slave) = pty();
        let fd = open_raw(&slave, Duration::ZERO).unwrap();
        // SAFETY: as in `open_raw`.
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open tty and `tio` a valid, writable termios.
        assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut tio) }, 0);
        assert_eq!(tio.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        assert_eq!(tio.c_oflag & libc::OPOST, 0);
        assert_eq!(tio.c_cflag & libc::CSIZE, libc::CS8);
    }

    #[test]
    fn a_missing_tty_is_waited_for_then_reported() {
        let started = Instant::now();
        let err = open_raw("/dev/memrace-no-such-tty", Duration::from_millis(50)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(err, "open(/dev/memrace-no-such-tty): ENOENT");
        // Not a tty at all: refused at once, whatever the wait.
        let started = Instant::now();
        let err = open_raw("/dev/null", Duration::from_secs(5)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{err}");
        assert!(err.starts_with("tcgetattr(/dev/null)"), "{err}");
    }
}
