//! The gdb connection to QEMU's stub: framing, acknowledgements, requests and replies.
//! VM events that arrive while a reply is awaited are kept in `pending`, in order.

use super::gdb::{self, Stop};
use super::process::Incoming;
use super::QemuError;
use crate::backend::VmEvent;
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long QEMU may take to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct GdbLink {
    /// `None` when the VM runs without a debugger, or after the stub hung up.
    gdb: Option<UnixStream>,
    /// Everything QEMU's reader threads produce: VM events and gdb packets.
    rx: Receiver<Incoming>,
    /// VM events that arrived while a gdb reply was awaited.
    pub pending: VecDeque<VmEvent>,
    /// The VM is gone.
    pub exited: bool,
    /// `MEMRACE_GDB_LOG=1`: every exchange, timestamped, in `gdb.log` of the run directory.
    log_file: Option<std::fs::File>,
    started: Instant,
}

impl GdbLink {
    pub fn new(gdb: Option<UnixStream>, rx: Receiver<Incoming>, run_dir: &Path) -> GdbLink {
        GdbLink {
            gdb,
            rx,
            pending: VecDeque::new(),
            exited: false,
            log_file: std::env::var_os("MEMRACE_GDB_LOG")
                .and_then(|_| std::fs::File::create(run_dir.join("gdb.log")).ok()),
            started: Instant::now(),
        }
    }

    pub fn attached(&self) -> bool {
        self.gdb.is_some()
    }

    pub fn detach(&mut self) {
        self.gdb = None;
    }

    pub fn read_xfer(&mut self, annex: &str) -> Result<String, QemuError> {
        let mut text = String::new();
        loop {
            let reply = self.request(&format!(
                "qXfer:features:read:{annex}:{:x},{:x}",
                text.len(),
                0x3000
            ))?;
            let (more, data) = match reply.split_first() {
                Some((b'm', d)) => (true, d),
                Some((b'l', d)) => (false, d),
                _ => {
                    return Err(QemuError::Protocol(format!(
                        "qXfer {annex}: {:?}",
                        String::from_utf8_lossy(&reply)
                    )))
                }
            };
            text.push_str(&String::from_utf8_lossy(data));
            if !more || data.is_empty() {
                return Ok(text);
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), QemuError> {
        self.log(">", bytes);
        let gdb = self.gdb.as_mut().ok_or(QemuError::NotDebugging)?;
        gdb.write_all(bytes)
            .map_err(|e| QemuError::Io(format!("gdb socket: {e}")))
    }

    /// Receive from the channel, acknowledging gdb packets on the way. QEMU 7.2's stub
    /// has no no-ack mode, and it treats any byte that arrives while the VM runs as an
    /// interrupt: the `+` must therefore leave before our next command (which may
    /// resume the VM), so it is sent here, on the same thread, never from the reader.
    pub fn recv(&mut self, timeout: Duration) -> Result<Incoming, RecvTimeoutError> {
        let got = self.rx.recv_timeout(timeout)?;
        if let Incoming::GdbPacket(p) = &got {
            let p = p.clone();
            self.log("<", &p);
            if let Some(g) = self.gdb.as_mut() {
                let _ = g.write_all(b"+");
            }
        }
        Ok(got)
    }

    /// With `MEMRACE_GDB_LOG=1`, every gdb exchange goes to `gdb.log` in the run directory.
    pub fn log(&mut self, dir: &str, bytes: &[u8]) {
        if let Some(log) = self.log_file.as_mut() {
            let _ = writeln!(
                log,
                "{:>12.6} {dir} {}",
                self.started.elapsed().as_secs_f64(),
                String::from_utf8_lossy(bytes).escape_debug()
            );
        }
    }

    /// Wait for the next gdb packet; VM events arriving meanwhile are queued.
    pub fn next_packet(&mut self, what: &str, timeout: Duration) -> Result<Vec<u8>, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(Incoming::GdbPacket(p)) => return Ok(p),
                Ok(Incoming::Event(e)) => {
                    if matches!(e, VmEvent::Exited(_)) {
                        self.exited = true;
                        self.pending.push_back(e);
                        return Err(QemuError::Protocol(format!(
                            "QEMU exited while waiting for the answer to {what}"
                        )));
                    }
                    self.pending.push_back(e);
                }
                Ok(Incoming::GdbClosed) => {
                    return Err(QemuError::Protocol("gdb connection closed".into()))
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(QemuError::Timeout {
                        request: what.to_string(),
                        seconds: timeout.as_secs(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(QemuError::Protocol("QEMU is gone".into()))
                }
            }
        }
    }

    /// Send a command and return its answer. A stop reply is never the answer to a
    /// command; one arriving here is stale (QEMU stops and reports on *any* byte it
    /// receives while running) and is dropped: a real breakpoint hit it might stand for
    /// fires again when that vCPU resumes, because QEMU checks breakpoints before
    /// executing an instruction.
    pub fn request(&mut self, payload: &str) -> Result<Vec<u8>, QemuError> {
        self.send_raw(&gdb::frame(payload))?;
        loop {
            let p = self.next_packet(payload, REQUEST_TIMEOUT)?;
            if gdb::parse_stop(&p).is_none() || payload.starts_with('?') {
                return Ok(p);
            }
        }
    }

    /// Consume stop replies that are already queued or arrive within `grace`.
    pub fn drain_stale_stops(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Ok(Incoming::GdbPacket(_)) => {}
                Ok(Incoming::Event(e)) => self.pending.push_back(e),
                Ok(Incoming::GdbClosed) | Err(_) => return,
            }
        }
    }

    pub fn request_ok(&mut self, payload: &str) -> Result<(), QemuError> {
        match self.request(payload)? {
            r if r == b"OK" => Ok(()),
            r => Err(QemuError::Protocol(format!(
                "{payload} answered {:?}",
                String::from_utf8_lossy(&r)
            ))),
        }
    }

    /// Wait for the stop reply that follows an interrupt or a step.
    pub fn wait_stop(&mut self, what: &str) -> Result<Stop, QemuError> {
        loop {
            let p = self.next_packet(what, REQUEST_TIMEOUT)?;
            if let Some(stop) = gdb::parse_stop(&p) {
                return Ok(stop);
            }
        }
    }
}
