//! The channel a user program opens with memrace.h (guest-harness/include/memrace.h):
//! a pipe on which it writes `READY`, `GATE`, `PHASE` and `FACT` lines, and a gate page
//! of its own (a memfd it may only read) on which it spins.
//!
//! The program is untrusted: its lines are parsed, checked and re-sent by the harness,
//! never passed through. A READY's tid must be one of the program's own threads (its cpu
//! is read from /proc, not believed); a gate slot must lie in the program's page; names
//! the harness announces itself cannot be claimed; RESULT and EXIT cannot be sent at
//! all; lines and messages per trial are bounded.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use control_proto::Message;

use crate::control;
use crate::error::{self, Res};
use crate::gate::{self, Gate};

/// The child's descriptor numbers, as memrace.h finds them in its environment.
pub const CTL_FD: RawFd = 3;
pub const GATE_FD: RawFd = 4;
/// Messages relayed per program and trial; the rest are dropped with one note.
const MAX_MESSAGES: usize = 256;
const MAX_LINE: usize = 200;
const MAX_NAME: usize = 32;

/// One program's channel, created before it is forked.
pub struct Relay {
    process: String,
    gate: Gate,
    /// What the child gets as `CTL_FD` and `GATE_FD`: the pipe's write end and the
    /// read-only gate page (close-on-exec here, numbered above the child's targets so the
    /// dup2s in the child cannot clobber each other). Dropped once the child is forked.
    child_ends: Option<(OwnedFd, OwnedFd)>,
    pending: Vec<u8>,
    relayed: usize,
    gates: Vec<String>,
}

fn high_fd(fd: OwnedFd) -> Res<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one (or -1).
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    let high = error::check(high.into(), "fcntl(F_DUPFD_CLOEXEC)")? as RawFd;
    // SAFETY: `high` was just returned to us and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

impl Relay {
    /// The channel and the read end the supervisor polls.
    pub fn new(process: &str) -> Res<(Relay, File)> {
        // SAFETY: memfd_create with a constant name; returns a new descriptor or -1.
        let memfd = unsafe { libc::memfd_create(c"memrace-gates".as_ptr(), libc::MFD_CLOEXEC) };
        let memfd = error::check(memfd.into(), "memfd_create")? as RawFd;
        // SAFETY: just created and owned by nothing else.
        let memfd = unsafe { OwnedFd::from_raw_fd(memfd) };
        // SAFETY: sizing the memfd we own.
        let sized = unsafe { libc::ftruncate(memfd.as_raw_fd(), crate::mem::PAGE as i64) };
        error::check(sized.into(), "ftruncate(memfd)")?;
        let gate = Gate::shared(&memfd)?;
        // The program gets the page read-only: it cannot open gates itself.
        let read_only = File::open(format!("/proc/self/fd/{}", memfd.as_raw_fd()))
            .map_err(|e| error::describe("reopen the gate memfd read-only", &e))?;
        let (read_end, write_end) =
            crate::child::pipe().map_err(|e| error::describe("pipe2", &e))?;
        let relay = Relay {
            process: process.to_string(),
            gate,
            child_ends: Some((high_fd(write_end)?, high_fd(read_only.into())?)),
            pending: Vec::new(),
            relayed: 0,
            gates: Vec::new(),
        };
        Ok((relay, File::from(read_end)))
    }

    /// In the forked child, before execve: put the channel at `CTL_FD` and `GATE_FD`.
    pub fn install_in_child(&self) -> bool {
        let Some((ctl, gate)) = &self.child_ends else {
            return false;
        };
        // SAFETY: dup2 of descriptors this process owns onto fixed numbers; the results
        // are not close-on-exec, so the program inherits them.
        unsafe {
            libc::dup2(ctl.as_raw_fd(), CTL_FD) == CTL_FD
                && libc::dup2(gate.as_raw_fd(), GATE_FD) == GATE_FD
        }
    }

    /// After the fork, the parent keeps no write end: EOF then means the program ended.
    pub fn close_child_ends(&mut self) {
        self.child_ends = None;
    }

    /// Take bytes the program wrote; relay each complete line. `reserved` are the names
    /// the harness announces itself; `pid` is the program's process.
    pub fn feed(&mut self, data: &[u8], pid: libc::pid_t, reserved: &[String]) {
        self.pending.extend_from_slice(data);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line[..line.len() - 1], pid, reserved);
        }
        if self.pending.len() > MAX_LINE {
            self.refuse("a line longer than 200 bytes");
            self.pending.clear();
        }
    }

    fn refuse(&self, why: &str) {
        control::note(&format!(
            "{}: memrace.h message refused: {why}",
            self.process
        ));
    }

    fn line(&mut self, line: &[u8], pid: libc::pid_t, reserved: &[String]) {
        if self.relayed == MAX_MESSAGES {
            self.refuse("more than 256 messages this trial (the rest are dropped)");
        }
        self.relayed += 1;
        if self.relayed > MAX_MESSAGES {
            return;
        }
        match self.message(line, pid, reserved) {
            Ok(message) => control::send(&message),
            Err(why) => self.refuse(&why),
        }
    }

    fn message(
        &mut self,
        line: &[u8],
        pid: libc::pid_t,
        reserved: &[String],
    ) -> Result<Message, String> {
        let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
        let words: Vec<&str> = text.split(' ').collect();
        let name = |w: &str| -> Result<String, String> {
            let ok = !w.is_empty()
                && w.len() <= MAX_NAME
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(format!("bad name {w:?}"));
            }
            if reserved.iter().any(|r| r == w) {
                return Err(format!("{w:?} is a name the harness announces itself"));
            }
            Ok(w.to_string())
        };
        match words.as_slice() {
            ["READY", n, tid] => {
                let tid: u32 = tid.parse().map_err(|_| format!("bad tid {tid:?}"))?;
                let cpu = thread_cpu(pid, tid)
                    .ok_or_else(|| format!("tid {tid} is not a thread of this program"))?;
                Ok(Message::Ready {
                    name: name(n)?,
                    cpu,
                    tid,
                })
            }
            ["GATE", n, slot] => {
                let slot: usize = slot
                    .parse()
                    .ok()
                    .filter(|s| *s < gate::WORDS)
                    .ok_or_else(|| format!("gate slot {slot:?} (0..{})", gate::WORDS))?;
                let n = name(n)?;
                if self.gates.contains(&n) {
                    return Err(format!("gate {n:?} announced twice"));
                }
                self.gates.push(n.clone());
                Ok(Message::Gate {
                    name: n,
                    gpa: self.gate.gpa(slot),
                })
            }
            ["PHASE", n] => Ok(Message::Phase { name: name(n)? }),
            ["FACT", k, v] if v.len() <= MAX_NAME => Ok(Message::Fact {
                key: name(k)?,
                value: v
                    .parse::<i64>()
                    .map_err(|_| format!("bad value {v:?}"))?
                    .to_string(),
            }),
            _ => Err(format!("not READY/GATE/PHASE/FACT: {text:?}")),
        }
    }
}

/// The CPU thread `tid` of process `pid` last ran on (field 39 of its stat), if it is
/// one of that process's threads.
fn thread_cpu(pid: libc::pid_t, tid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(36)?.parse().ok()
}
