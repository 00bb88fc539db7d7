//! The control channel: protocol lines on ttyS1 (docs/control-protocol.md).
//!
//! The descriptor is opened once by PID 1 and inherited by every forked trial process.
//! Each message is written with a single `write(2)`; the tty layer serialises whole writes,
//! so lines from different threads and processes never interleave.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use control_proto::{Message, Stream};

use crate::error::{self, Res};

/// Largest payload of one `OUT` message (escaped, it stays far below the 4096-byte line limit).
pub const OUT_CHUNK: usize = 1024;

/// Where lines go. Until ttyS1 is open (or if it cannot be), stderr, i.e. the console.
static FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// Open `path` (a serial tty) in raw mode and make it the control channel.
pub fn open(path: &str) -> Res<()> {
    let cpath = std::ffi::CString::new(path).map_err(|_| format!("bad path {path}"))?;
    // SAFETY: `cpath` is a valid NUL-terminated string; open has no other preconditions.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(error::last(&format!("open({path})")));
    }
    // SAFETY: termios is plain old data; an all-zero value is valid and is overwritten by
    // tcgetattr before use.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `tio` a valid, writable termios.
    if unsafe { libc::tcgetattr(fd, &mut tio) } == 0 {
        // SAFETY: `tio` is a valid termios obtained from tcgetattr.
        unsafe { libc::cfmakeraw(&mut tio) };
        // SAFETY: `fd` is open and `tio` a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) } != 0 {
            return Err(error::last(&format!("tcsetattr({path})")));
        }
    } else {
        return Err(error::last(&format!("tcgetattr({path})")));
    }
    FD.store(fd, Ordering::SeqCst);
    Ok(())
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

/// Wait (at most `limit`) until the serial driver has sent everything queued.
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
    // The UART's transmitter may still hold the last bytes.
    std::thread::sleep(Duration::from_millis(20));
}
