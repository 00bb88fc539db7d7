//! One host thread per vCPU, each an explicit state machine:
//!
//! ```text
//!            Run                    breakpoint exit
//!   Paused ───────► Running ───────────────────────► Parked{addr}
//!     ▲    ◄─────── │   ▲                                 │
//!     │      Stop   │   ├──── Run (resume past it) ───────┤
//!     │             │   └──── Service (re-enter on it) ───┘
//!     └─────────────┴──► Exited (guest stopped, VMM failure, Quit)
//! ```
//!
//! Every breakpoint exit is reported as a `VmEvent` and counted. `Run` and
//! `Service` carry how many of this vCPU's hits the caller has received: a
//! vCPU parked on a hit the caller has not seen yet stays parked, so the hit
//! is still true when the caller gets to it (no lost or stale hits).
//!
//! The VMM thread sends a `Command`, kicks the thread (see `kick`), and waits
//! a bounded time for the `Reply` (matched by sequence number, see `link`).
//! Before a running vCPU stops, it re-enters `KVM_RUN` with `immediate_exit = 1`
//! so a pending port/MMIO access completes and the guest state is consistent
//! while it is stopped.
//!
//! How `Run` gets past the breakpoint (RFLAGS.RF, or single steps where KVM
//! ignores it) is in `resume`.

mod link;
mod resume;

pub use resume::{BreakpointResume, ResumeMethod};

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::arch::debug::{self, DebugError, StepMode};
use super::arch::paging::PagingState;
use super::devices::{Devices, Lifecycle, StopReason};
use super::kick;
use super::memory::GuestRam;
use crate::arch::X86Regs;
use crate::backend::{VcpuId, VmEvent};
use link::{HostEnd, LinkError, VcpuEnd};

/// How long the VMM waits for a vCPU thread to answer a command. A vCPU
/// answers within one guest exit; only a wedged host gets anywhere near this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Re-entries allowed while completing a pending access before stopping
/// (a `rep ins/outs` may need several), or while taking one single step
/// (the stepped instruction may itself exit for port IO or MMIO).
const MAX_COMPLETION_ROUNDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot start the thread of vCPU {vcpu}: {source}")]
    Spawn {
        vcpu: VcpuId,
        source: std::io::Error,
    },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(std::io::Error),
    #[error("vCPU {vcpu} did not answer within {REPLY_TIMEOUT:?}")]
    Unresponsive { vcpu: VcpuId },
    #[error("vCPU {vcpu} is running; stop it first")]
    Running { vcpu: VcpuId },
    #[error("vCPU {vcpu} has exited")]
    Gone { vcpu: VcpuId },
    #[error("vCPU {vcpu}: {source}")]
    Debug { vcpu: VcpuId, source: DebugError },
}

/// Where a vCPU is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Stopped on request.
    Paused,
    /// Stopped on one of its breakpoints at `addr`.
    Parked {
        addr: u64,
    },
    Exited,
}

/// What `VcpuHandle::request` asks of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunRequest {
    /// Run; resume past the breakpoint it is parked on.
    Run,
    /// Run; if parked, re-enter at the breakpoint without stepping past it, so pending
    /// interrupts are delivered (guest IF=1) and the breakpoint fires again.
    Service,
    Stop,
}

impl RunState {
    pub fn is_stopped(self) -> bool {
        matches!(self, RunState::Paused | RunState::Parked { .. })
    }
}

enum Command {
    /// Run; a vCPU parked on a hit the caller has seen (`seen` hits) resumes past it.
    Run {
        seen: u64,
    },
    /// Run; a vCPU parked on a seen hit re-enters the guest *at* its breakpoint.
    Service {
        seen: u64,
    },
    Stop,
    SetBreakpoints(Vec<u64>),
    SetRegs(Box<X86Regs>),
    Snapshot,
    Quit,
}

enum Reply {
    State(RunState),
    Done(Result<(), VcpuError>),
    Snapshot(Result<(X86Regs, PagingState), VcpuError>),
}

/// The VMM side of one vCPU thread.
pub struct VcpuHandle {
    id: VcpuId,
    link: HostEnd<Command, Reply>,
    thread: Option<JoinHandle<()>>,
}

/// Everything a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub struct VcpuContext {
    pub devices: Arc<Devices>,
    pub lifecycle: Arc<Lifecycle>,
    pub events: Sender<VmEvent>,
    pub step: StepMode,
    pub resume: Arc<ResumeMethod>,
    /// Guest RAM; holding it also keeps it mapped for as long as the vCPU fd can touch it.
    pub ram: Arc<GuestRam>,
}

impl VcpuHandle {
    /// Start the thread of vCPU `id`, initially running or paused.
    pub fn spawn(
        id: VcpuId,
        fd: VcpuFd,
        ctx: VcpuContext,
        start_running: bool,
    ) -> Result<Self, VcpuError> {
        kick::install_handler().map_err(VcpuError::KickHandler)?;
        let (host_end, vcpu_end) = link::link();
        let state = if start_running {
            RunState::Running
        } else {
            RunState::Paused
        };
        let worker = VcpuThread {
            id,
            fd,
            ctx,
            link: vcpu_end,
            state,
            breakpoints: Vec::new(),
            hits: 0,
            suppressed_at: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || worker.run())
            .map_err(|source| VcpuError::Spawn { vcpu: id, source })?;
        Ok(VcpuHandle {
            id,
            link: host_end,
            thread: Some(thread),
        })
    }

    pub fn pthread(&self) -> Option<libc::pthread_t> {
        use std::os::unix::thread::JoinHandleExt;
        self.thread.as_ref().map(|t| t.as_pthread_t())
    }

    fn send(&self, command: Command) -> Result<(), VcpuError> {
        self.link
            .send(command)
            .map_err(|_| VcpuError::Gone { vcpu: self.id })?;
        if let Some(thread) = self.pthread() {
            kick::kick(thread);
        }
        Ok(())
    }

    fn reply(&self) -> Result<Reply, VcpuError> {
        self.link.reply(REPLY_TIMEOUT).map_err(|e| match e {
            LinkError::Timeout => VcpuError::Unresponsive { vcpu: self.id },
            LinkError::Closed => VcpuError::Gone { vcpu: self.id },
        })
    }

    /// Ask the vCPU to run, re-enter at its breakpoint, or stop; the answer comes from
    /// `state_reply`. `seen` is how many of its breakpoint events the caller has received.
    /// Split in two so a whole set of vCPUs is told before any answer is awaited.
    pub fn request(&self, request: RunRequest, seen: u64) -> Result<(), VcpuError> {
        self.send(match request {
            RunRequest::Run => Command::Run { seen },
            RunRequest::Service => Command::Service { seen },
            RunRequest::Stop => Command::Stop,
        })
    }

    pub fn state_reply(&self) -> Result<RunState, VcpuError> {
        match self.reply()? {
            Reply::State(state) => Ok(state),
            _ => Err(VcpuError::Unresponsive { vcpu: self.id }),
        }
    }

    pub fn set_breakpoints(&self, addrs: &[u64]) -> Result<(), VcpuError> {
        self.send(Command::SetBreakpoints(addrs.to_vec()))?;
        match self.reply()? {
            Reply::Done(result) => result,
            _ => Err(VcpuError::Unresponsive { vcpu: self.id }),
        }
    }

    pub fn set_regs(&self, regs: &X86Regs) -> Result<(), VcpuError> {
        self.send(Command::SetRegs(Box::new(*regs)))?;
        match self.reply()? {
            Reply::Done(result) => result,
            _ => Err(VcpuError::Unresponsive { vcpu: self.id }),
        }
    }

    pub fn snapshot(&self) -> Result<(X86Regs, PagingState), VcpuError> {
        self.send(Command::Snapshot)?;
        match self.reply()? {
            Reply::Snapshot(result) => result,
            _ => Err(VcpuError::Unresponsive { vcpu: self.id }),
        }
    }

    /// Tell the thread to end, kick it, and wait up to `timeout` for it.
    /// A thread that does not end in time is left detached rather than hanging the caller.
    pub fn quit(&mut self, timeout: Duration) {
        let _ = self.send(Command::Quit);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + timeout;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            // The thread's own panics were already reported on stderr.
            let _ = thread.join();
        } else {
            eprintln!(
                "memrace kvm: vCPU {} did not stop within {timeout:?}; leaving it detached",
                self.id
            );
        }
    }
}

/// The vCPU thread's side.
struct VcpuThread {
    id: VcpuId,
    fd: VcpuFd,
    ctx: VcpuContext,
    link: VcpuEnd<Command, Reply>,
    state: RunState,
    breakpoints: Vec<u64>,
    /// Breakpoint exits reported so far.
    hits: u64,
    /// The breakpoint a resume asked the CPU to skip, until the next breakpoint exit.
    suppressed_at: Option<u64>,
}

impl VcpuThread {
    fn run(mut self) {
        kick::register_this_thread(self.fd.get_kvm_run());
        self.serve();
        kick::unregister_this_thread();
    }

    fn serve(&mut self) {
        loop {
            if self.ctx.lifecycle.is_stopped() {
                self.state = RunState::Exited;
            }
            let command = if self.state == RunState::Running {
                // Clear a kick that was already handled. A kick is sent after its command,
                // so one landing before this line has its command visible below, and one
                // landing after it makes the next KVM_RUN return at once.
                self.fd.set_kvm_immediate_exit(0);
                match self.link.try_recv() {
                    Ok(command) => command,
                    Err(_) => return,
                }
            } else {
                match self.link.recv() {
                    Ok(command) => Some(command),
                    Err(_) => return,
                }
            };
            match command {
                Some(Command::Quit) => return,
                Some(command) => self.handle(command),
                None => {
                    let outcome = self.enter_guest();
                    self.settle(outcome);
                }
            }
        }
    }

    fn answer(&self, reply: Reply) {
        self.link.answer(reply);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Run { seen } => self.run_from(seen, true),
            Command::Service { seen } => self.run_from(seen, false),
            Command::Stop => {
                if self.state == RunState::Running {
                    self.complete_pending_access();
                    if self.state == RunState::Running {
                        self.state = RunState::Paused;
                    }
                }
                self.answer(Reply::State(self.state));
            }
            Command::SetBreakpoints(addrs) => {
                if self.state == RunState::Running {
                    // Between two guest entries: finish an emulated access, then re-arm.
                    self.complete_pending_access();
                }
                let result = match self.state {
                    RunState::Exited => Err(VcpuError::Gone { vcpu: self.id }),
                    _ => debug::set_breakpoints(&self.fd, &addrs).map_err(|source| {
                        VcpuError::Debug {
                            vcpu: self.id,
                            source,
                        }
                    }),
                };
                if result.is_ok() {
                    self.breakpoints = addrs;
                }
                self.answer(Reply::Done(result));
            }
            Command::SetRegs(regs) => {
                let result = match self.state {
                    RunState::Running => Err(VcpuError::Running { vcpu: self.id }),
                    RunState::Exited => Err(VcpuError::Gone { vcpu: self.id }),
                    _ => debug::set_regs(&self.fd, &regs).map_err(|source| VcpuError::Debug {
                        vcpu: self.id,
                        source,
                    }),
                };
                // Moved off the breakpoint it was parked on: nothing is left to step
                // over, and it runs from the new rip (where a breakpoint fires as usual).
                if let (Ok(()), RunState::Parked { addr }) = (&result, self.state) {
                    if regs.rip != addr {
                        self.state = RunState::Paused;
                    }
                }
                self.answer(Reply::Done(result));
            }
            Command::Snapshot => {
                let result = match self.state {
                    RunState::Running => Err(VcpuError::Running { vcpu: self.id }),
                    _ => debug::snapshot(&self.fd).map_err(|source| VcpuError::Debug {
                        vcpu: self.id,
                        source,
                    }),
                };
                self.answer(Reply::Snapshot(result));
            }
            Command::Quit => {}
        }
    }

    /// Answer `Run` (`step`) or `Service`. A vCPU parked on a hit the caller has not
    /// received yet (`seen` < `hits`) stays parked.
    fn run_from(&mut self, seen: u64, step: bool) {
        match self.state {
            RunState::Parked { .. } if seen < self.hits => {}
            RunState::Parked { addr } => {
                if step {
                    self.resume_past(addr);
                }
                if self.state.is_stopped() {
                    self.state = RunState::Running;
                }
            }
            RunState::Paused => self.state = RunState::Running,
            RunState::Running | RunState::Exited => {}
        }
        self.answer(Reply::State(self.state));
    }

    /// Re-enter with `immediate_exit` so KVM finishes an access userspace just
    /// emulated, without running further guest instructions.
    fn complete_pending_access(&mut self) {
        for _ in 0..MAX_COMPLETION_ROUNDS {
            // Set on every round: settling an exit may single-step, which clears it.
            self.fd.set_kvm_immediate_exit(1);
            let outcome = self.enter_guest();
            if !self.settle(outcome) {
                break;
            }
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    /// One `KVM_RUN`, with port/MMIO accesses handed to the device model.
    fn enter_guest(&mut self) -> Outcome {
        let VcpuThread { fd, ctx, .. } = self;
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                ctx.devices.pio_read(port, data);
                Outcome::Access
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.devices.pio_write(port, data);
                Outcome::Access
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.devices.mmio_read(addr, data);
                Outcome::Access
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.devices.mmio_write(addr, data);
                Outcome::Access
            }
            Ok(VcpuExit::Debug(debug)) => Outcome::Breakpoint(debug.pc),
            Ok(VcpuExit::Shutdown) => Outcome::Stop(StopReason::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => Outcome::Stop(StopReason::SystemEvent(kind)),
            // With the in-kernel irqchip KVM handles HLT; these are just returns to userspace.
            Ok(VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr) => Outcome::Interrupted,
            Ok(VcpuExit::InternalError) => {
                Outcome::Failed("KVM internal error (emulation failure)".into())
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Outcome::Failed(format!(
                "VM entry failed (reason {reason:#x}, host cpu {cpu})"
            )),
            Ok(other) => Outcome::Failed(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Outcome::Interrupted,
            Err(e) => Outcome::Failed(format!("KVM_RUN failed: {e}")),
        }
    }

    /// Apply what `enter_guest` saw. Returns whether it was an emulated access
    /// (which needs completing before the vCPU may stop).
    fn settle(&mut self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Access => true,
            Outcome::Interrupted => false,
            Outcome::Breakpoint(addr) if self.swallow_ignored_suppression(addr) => false,
            Outcome::Breakpoint(addr) => {
                self.state = RunState::Parked { addr };
                self.hits += 1;
                let _ = self.ctx.events.send(VmEvent::Breakpoint {
                    vcpu: self.id,
                    addr,
                });
                false
            }
            Outcome::Stop(reason) => {
                self.ctx.lifecycle.stop(reason);
                false
            }
            Outcome::Failed(why) => {
                let rip = self
                    .fd
                    .get_regs()
                    .map(|r| format!("{:#x}", r.rip))
                    .unwrap_or_else(|_| "unknown".into());
                self.fail(format!("vCPU {}: {why} at rip {rip}", self.id));
                false
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.state = RunState::Exited;
        self.ctx.lifecycle.stop(StopReason::Failed(why));
    }
}

enum Outcome {
    Access,
    Interrupted,
    Breakpoint(u64),
    Stop(StopReason),
    Failed(String),
}
