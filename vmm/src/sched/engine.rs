//! Executes a schedule against any backend, one trial at a time.
//!
//! Ordering rules the engine keeps:
//! * A vCPU is parked only where its guest has IF=1 (else a schedule error): a parked
//!   vCPU with interrupts off can deadlock every other vCPU that IPIs it (deadlock rule R1,
//!   docs/schedules.md).
//! * While anything is parked, the parked vCPUs are re-entered every
//!   `SERVICE_INTERVAL` with their breakpoint still armed, so pending interrupts are
//!   delivered and the breakpoint re-fires.
//! * Every wait has a deadline. A step that misses it ends the trial as
//!   `infeasible` after recording where every vCPU is; then parked vCPUs are released
//!   in the schedule's fallback order so the guest can finish the trial.

use super::hit::{self, Bindings};
use super::schedule::{Action, Schedule, Step};
use super::trace::TraceEvent;
use crate::backend::{Backend, BackendError, ControlMessage, VcpuId, VmEvent, VmExit};
use crate::console::{ConsoleWatch, KernelReport};
use control_proto::Outcome;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

const SERVICE_INTERVAL: Duration = Duration::from_millis(100);

/// Where the current guest task is found (from DWARF and the symbol table).
#[derive(Debug, Clone, Copy)]
pub struct TaskLayout {
    /// x86_64 keeps `current` in the per-CPU area; `None` where a register holds the
    /// task pointer itself (arm64's SP_EL0).
    pub per_cpu: Option<PerCpuCurrent>,
    pub pid: u64,
    pub tgid: u64,
    pub comm: u64,
}

/// Where x86_64's per-CPU `current_task` is.
#[derive(Debug, Clone, Copy)]
pub struct PerCpuCurrent {
    /// Per-CPU offset of the `current_task` pointer (`&pcpu_hot + current_task`).
    pub current_task: u64,
    /// Address of `__per_cpu_offset[]`, used when GS does not hold the kernel base.
    pub per_cpu_offset: u64,
}

/// What the engine needs from the kernel's symbols; kept as a trait so synthetic
/// guests (raw addresses, no vmlinux) run on the same engine.
pub trait Introspect {
    /// Resolve a breakpoint spec to an address, or say why not.
    fn resolve(&self, spec: &str) -> Result<u64, String>;
    /// `symbol+0xoff` for reports.
    fn describe(&self, addr: u64) -> String;
    fn task_layout(&self) -> Option<TaskLayout>;
    /// Whether `addr` is in the guest's code (a return address must be).
    fn is_code(&self, addr: u64) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("schedule line {line}: {why}")]
    Step { line: usize, why: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ScheduleStatus {
    /// Every step completed in order.
    Completed,
    /// A step did not complete within its bound.
    Infeasible {
        line: usize,
        reason: String,
        vcpus: Vec<String>,
        /// The last console lines when it gave up.
        console: Vec<String>,
    },
    /// A detector fired: the schedule would deadlock on this kernel.
    Detected { detector: String, line: usize },
    /// The schedule itself is wrong for this guest (e.g. parking with IRQs off).
    Error { line: usize, why: String },
    /// The VM went away during the trial.
    VmGone { why: String },
}

/// One trial's record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrialRun {
    pub trial: u32,
    pub schedule: ScheduleStatus,
    pub oracle: Option<(String, String)>,
    pub hits: Vec<String>,
    pub filtered_hits: u64,
    /// How often parked vCPUs were re-entered to take their interrupts.
    pub serviced: u64,
    pub kernel_report: Option<KernelReport>,
    pub seconds: f64,
    pub trace: Vec<TraceEvent>,
}

struct Armed {
    cpu: VcpuId,
    addr: u64,
    cond: Option<super::cond::Condition>,
    detector: bool,
    inject: Option<i64>,
    hits: u64,
}

struct Parked {
    name: String,
    irqs_on: bool,
    /// The task that hit the breakpoint (when the task layout is known).
    tid: Option<u64>,
}

/// What a wait turned up.
enum Happened {
    Message(ControlMessage),
    Hit { name: String },
    Detector { name: String },
    Gone(String),
}

/// Where the engine copies console lines (e.g. `--verbose`).
pub type ConsoleSink<'a> = Box<dyn FnMut(&str) + 'a>;

pub struct Engine<'a> {
    vm: &'a mut dyn Backend,
    intro: &'a dyn Introspect,
    armed: BTreeMap<String, Armed>,
    parked: BTreeMap<VcpuId, Parked>,
    /// Hits that arrived before the `hit` step asking for them.
    early_hits: BTreeSet<String>,
    inbox: VecDeque<ControlMessage>,
    bindings: Bindings,
    gates: HashMap<String, u64>,
    /// Gates this trial opened; `recover` opens the rest so no guest thread waits on a
    /// gate of an abandoned schedule (and overlaps the next trial).
    opened: BTreeSet<String>,
    oracle: Option<(Outcome, String)>,
    /// This trial's console: its kernel report, if any.
    console: ConsoleWatch,
    /// The whole boot's console tail, for reports.
    boot_console: ConsoleWatch,
    trace: Vec<TraceEvent>,
    hits: Vec<String>,
    filtered: u64,
    serviced: u64,
    /// When the parked IF=1 vCPUs are next re-entered; a fixed beat, so that a stream of
    /// console lines or filtered hits cannot starve them of their interrupts.
    next_service: Option<Instant>,
    t0: Instant,
    gone: Option<String>,
    /// Every console line, for the caller's log.
    pub on_console: Option<ConsoleSink<'a>>,
}

impl<'a> Engine<'a> {
    /// Take over a VM that was started in debug mode (all vCPUs stopped) and start it.
    pub fn start(
        vm: &'a mut dyn Backend,
        intro: &'a dyn Introspect,
    ) -> Result<Engine<'a>, EngineError> {
        let all: Vec<VcpuId> = (0..vm.vcpu_count()).collect();
        vm.resume(&all)?;
        Ok(Engine {
            vm,
            intro,
            armed: BTreeMap::new(),
            parked: BTreeMap::new(),
            early_hits: BTreeSet::new(),
            inbox: VecDeque::new(),
            bindings: Bindings::default(),
            gates: HashMap::new(),
            opened: BTreeSet::new(),
            oracle: None,
            console: ConsoleWatch::new(40),
            boot_console: ConsoleWatch::new(60),
            trace: Vec::new(),
            hits: Vec::new(),
            filtered: 0,
            serviced: 0,
            next_service: None,
            t0: Instant::now(),
            gone: None,
            on_console: None,
        })
    }

    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    fn running(&self) -> Vec<VcpuId> {
        (0..self.vm.vcpu_count())
            .filter(|v| !self.parked.contains_key(v))
            .collect()
    }

    /// The last console lines of this boot.
    pub fn console_tail(&self) -> Vec<String> {
        self.boot_console.tail()
    }

    /// The kernel report (BUG/WARN/panic) seen on the console during this trial.
    pub fn kernel_report(&self) -> Option<KernelReport> {
        self.console.report().cloned()
    }

    pub fn is_gone(&self) -> bool {
        self.gone.is_some()
    }

    /// Wait (bounded) until the guest harness starts its trial number `k` of this boot
    /// (`PHASE trial-k`), and drop whatever earlier trials left queued: the next schedule
    /// then starts in step with the guest, even after an earlier trial was abandoned.
    /// False if the trial did not start in time.
    pub fn begin_trial(&mut self, k: u32, timeout: Duration) -> bool {
        let start = format!("trial-{k}");
        let is_start =
            |m: &ControlMessage| matches!(m, ControlMessage::Phase { name } if *name == start);
        if let Some(pos) = self.inbox.iter().position(is_start) {
            self.inbox.drain(..=pos);
            return true;
        }
        let started = self.await_message(&is_start, timeout).is_some();
        // Whatever was queued meanwhile came before the start.
        self.inbox.clear();
        started
    }

    /// Run one trial of `schedule`. Trial state (bindings, gates, oracle) starts empty;
    /// control messages already queued (after [`Engine::begin_trial`]) belong to it.
    pub fn run_trial(&mut self, trial: u32, schedule: &Schedule) -> TrialRun {
        let started = Instant::now();
        self.bindings = Bindings::default();
        self.gates.clear();
        self.opened.clear();
        self.oracle = None;
        self.trace.clear();
        self.hits.clear();
        self.early_hits.clear();
        self.console = ConsoleWatch::new(40);
        let early: Vec<ControlMessage> = self.inbox.iter().cloned().collect();
        for m in &early {
            self.bind(m);
        }
        let (f0, s0) = (self.filtered, self.serviced);
        let status = match self.steps(schedule) {
            Ok(status) => status,
            Err(EngineError::Step { line, why }) => ScheduleStatus::Error { line, why },
            Err(EngineError::Backend(e)) => ScheduleStatus::VmGone { why: e.to_string() },
        };
        if status == ScheduleStatus::Completed {
            self.disarm_leftovers();
        } else {
            self.recover(schedule);
        }
        TrialRun {
            trial,
            schedule: status,
            oracle: self
                .oracle
                .as_ref()
                .map(|(o, d)| (o.to_string(), d.clone())),
            hits: self.hits.clone(),
            filtered_hits: self.filtered - f0,
            serviced: self.serviced - s0,
            kernel_report: self.console.report().cloned(),
            seconds: started.elapsed().as_secs_f64(),
            trace: std::mem::take(&mut self.trace),
        }
    }

    fn steps(&mut self, schedule: &Schedule) -> Result<ScheduleStatus, EngineError> {
        for step in &schedule.steps {
            let t_us = self.now_us();
            self.trace.push(TraceEvent::Step {
                t_us,
                line: step.line,
                action: step.action.to_string(),
            });
            let deadline = Instant::now() + Duration::from_millis(step.timeout_ms);
            match &step.action {
                Action::Wait { verb, name } => {
                    let wanted = |m: &ControlMessage| matches_wait(m, verb, name.as_deref());
                    let missing = format!("no {verb} {} message", name.as_deref().unwrap_or(""));
                    let got = self.wait_until(step, deadline, missing, |e, seen| match seen {
                        None => e
                            .inbox
                            .iter()
                            .position(wanted)
                            .and_then(|pos| e.inbox.remove(pos))
                            .map(|_| ()),
                        Some(Happened::Message(m)) if wanted(m) => Some(()),
                        Some(_) => None,
                    })?;
                    if let Err(status) = got {
                        return Ok(status);
                    }
                }
                Action::Break {
                    name,
                    at,
                    cpu,
                    cond,
                    detector,
                    inject,
                } => {
                    let addr = self.intro.resolve(at).map_err(|why| EngineError::Step {
                        line: step.line,
                        why,
                    })?;
                    if let Some(cond) = cond {
                        cond.check_registers(self.vm.arch())
                            .map_err(|e| EngineError::Step {
                                line: step.line,
                                why: format!("breakpoint {name:?}: {e}"),
                            })?;
                    }
                    self.armed.insert(
                        name.clone(),
                        Armed {
                            cpu: *cpu,
                            addr,
                            cond: cond.clone(),
                            detector: *detector,
                            inject: *inject,
                            hits: 0,
                        },
                    );
                    // A backend with fewer breakpoints than the schedule was checked for
                    // refuses them: the schedule's error, the VM is still there.
                    self.program(*cpu).map_err(|e| match e {
                        EngineError::Backend(e @ BackendError::TooManyBreakpoints { .. }) => {
                            EngineError::Step {
                                line: step.line,
                                why: e.to_string(),
                            }
                        }
                        e => e,
                    })?;
                }
                Action::Hit { name } => {
                    let missing = format!("breakpoint {name:?} was not hit");
                    let got = self.wait_until(step, deadline, missing, |e, seen| match seen {
                        None => e.early_hits.remove(name).then_some(()),
                        Some(Happened::Hit { name: got }) if got == name => Some(()),
                        Some(_) => None,
                    })?;
                    if let Err(status) = got {
                        return Ok(status);
                    }
                    // The vCPU parked at this hit; none after an injection (it went on).
                    if let Some((cpu, p)) = self.parked.iter().find(|(_, p)| p.name == *name) {
                        if !p.irqs_on && !step.allow_irqs_off {
                            return Ok(ScheduleStatus::Error {
                                line: step.line,
                                why: format!("vCPU {cpu} parked at {name:?} with interrupts disabled (IF=0): other vCPUs' IPIs to it would deadlock; choose another point or set allow_irqs_off"),
                            });
                        }
                    }
                }
                Action::Open { gate } => {
                    if let Err(status) = self.open_announced(step, gate, deadline)? {
                        return Ok(status);
                    }
                }
                // The pressure worker is a gated guest thread like any other; what it
                // reclaimed is in its FACT and PHASE, and the step in the trace.
                Action::Reclaim(p) => {
                    if let Err(status) = self.open_announced(step, &p.name, deadline)? {
                        return Ok(status);
                    }
                }
                Action::Release { cpu } => self.release(*cpu)?,
                Action::Disarm { name } => {
                    // A hit that came before any `hit` step asked for it parked its vCPU:
                    // with the breakpoint gone, nothing else would release it.
                    let parked_on = self.parked.iter().find(|(_, p)| p.name == *name);
                    if let Some(cpu) = parked_on.map(|(v, _)| *v) {
                        self.early_hits.remove(name);
                        self.release(cpu)?;
                    } else if let Some(a) = self.armed.remove(name) {
                        self.program(a.cpu)?;
                    }
                }
            }
        }
        Ok(ScheduleStatus::Completed)
    }

    /// Pump events until `check` yields a value: `check(self, None)` looks at the state
    /// (queued messages, early hits, bindings) and `check(self, Some(event))` at each new
    /// event. Events it does not take are kept for later steps. `Err` is the status that
    /// ends the schedule: the bound passed (`missing` says what did not happen), a
    /// detector fired or the VM went away.
    fn wait_until<T>(
        &mut self,
        step: &Step,
        deadline: Instant,
        missing: String,
        mut check: impl FnMut(&mut Self, Option<&Happened>) -> Option<T>,
    ) -> Result<Result<T, ScheduleStatus>, EngineError> {
        loop {
            if let Some(v) = check(self, None) {
                return Ok(Ok(v));
            }
            let happened = match self.pump(deadline, step)? {
                None => return Ok(Err(self.infeasible(step, missing))),
                Some(Happened::Detector { name }) => {
                    return Ok(Err(ScheduleStatus::Detected {
                        detector: name,
                        line: step.line,
                    }))
                }
                Some(Happened::Gone(why)) => return Ok(Err(ScheduleStatus::VmGone { why })),
                Some(h) => h,
            };
            if let Some(v) = check(self, Some(&happened)) {
                return Ok(Ok(v));
            }
            match happened {
                Happened::Message(m) => self.queue(m),
                Happened::Hit { name } => {
                    self.early_hits.insert(name);
                }
                Happened::Detector { .. } | Happened::Gone(_) => unreachable!("returned above"),
            }
        }
    }

    /// Keep a message for a later step. Bounded: a guest flooding the channel loses
    /// its oldest messages, never our memory.
    fn queue(&mut self, m: ControlMessage) {
        const MAX_QUEUED: usize = 1024;
        if self.inbox.len() >= MAX_QUEUED {
            self.inbox.pop_front();
        }
        self.inbox.push_back(m);
    }

    /// Record where every vCPU is, for the infeasible verdict.
    fn infeasible(&mut self, step: &Step, reason: String) -> ScheduleStatus {
        let mut vcpus = Vec::new();
        if self.vm.stop_all().is_ok() {
            for v in 0..self.vm.vcpu_count() {
                let state = if self.parked.contains_key(&v) {
                    "parked"
                } else {
                    "running"
                };
                let at = match self.vm.regs(v) {
                    Ok(r) => self.intro.describe(r.pc()),
                    Err(e) => format!("registers unavailable: {e}"),
                };
                vcpus.push(format!("vCPU {v} ({state}): {at}"));
            }
        }
        let t_us = self.now_us();
        self.trace.push(TraceEvent::Infeasible {
            t_us,
            line: step.line,
            reason: reason.clone(),
            vcpus: vcpus.clone(),
        });
        let tail = self.boot_console.tail();
        let console = tail[tail.len().saturating_sub(10)..].to_vec();
        ScheduleStatus::Infeasible {
            line: step.line,
            reason,
            vcpus,
            console,
        }
    }

    /// Wait (until `deadline`) for the guest to announce `gate`, then open it.
    fn open_announced(
        &mut self,
        step: &Step,
        gate: &str,
        deadline: Instant,
    ) -> Result<Result<(), ScheduleStatus>, EngineError> {
        let missing = format!("the guest never announced gate {gate:?}");
        match self.wait_until(step, deadline, missing, |e, _| e.gates.get(gate).copied())? {
            Ok(gpa) => {
                self.open_gate(gate, gpa)?;
                Ok(Ok(()))
            }
            Err(status) => Ok(Err(status)),
        }
    }

    fn open_gate(&mut self, gate: &str, gpa: u64) -> Result<(), EngineError> {
        self.vm.write_phys(gpa, &1u32.to_le_bytes())?;
        self.opened.insert(gate.to_string());
        let t_us = self.now_us();
        self.trace.push(TraceEvent::Open {
            t_us,
            gate: gate.to_string(),
        });
        Ok(())
    }

    /// After an incomplete schedule: disarm everything, release parked vCPUs in the
    /// fallback order (then any others), then open the gates the schedule never opened,
    /// so the guest finishes its trial (unscheduled) instead of waiting out its gate
    /// timeouts into the next trial. Parked vCPUs go first: a thread started from a gate
    /// may IPI them (deadlock rule R1, docs/schedules.md).
    fn recover(&mut self, schedule: &Schedule) {
        let mut order: Vec<VcpuId> = schedule
            .fallback
            .iter()
            .copied()
            .filter(|v| self.parked.contains_key(v))
            .collect();
        order.extend(
            self.parked
                .keys()
                .copied()
                .filter(|v| !schedule.fallback.contains(v))
                .collect::<Vec<_>>(),
        );
        let cpus: BTreeSet<VcpuId> = self.armed.values().map(|a| a.cpu).collect();
        self.armed.clear();
        for cpu in cpus {
            let _ = self.vm.set_breakpoints(cpu, &[]);
        }
        for cpu in order {
            let _ = self.release(cpu);
        }
        let mut closed: Vec<(String, u64)> = self
            .gates
            .iter()
            .filter(|(g, _)| !self.opened.contains(*g))
            .map(|(g, gpa)| (g.clone(), *gpa))
            .collect();
        closed.sort();
        for (gate, gpa) in closed {
            let _ = self.open_gate(&gate, gpa);
        }
        let _ = self.vm.resume(&self.running());
    }

    /// After a completed schedule: disarm the breakpoints it armed and no vCPU is parked
    /// on. Past its last step nothing releases a vCPU that parks on one, or resumes one
    /// stopped by a detector (`await_message` only notes them), and in the next trial of
    /// the boot its condition would read that trial's bindings.
    fn disarm_leftovers(&mut self) {
        let parked_on: BTreeSet<String> = self.parked.values().map(|p| p.name.clone()).collect();
        let cpus: BTreeSet<VcpuId> = self
            .armed
            .iter()
            .filter(|(n, _)| !parked_on.contains(*n))
            .map(|(_, a)| a.cpu)
            .collect();
        self.armed.retain(|n, _| parked_on.contains(n));
        for cpu in cpus {
            let _ = self.program(cpu);
        }
    }

    /// Wait for whatever the trial's steps should know about next.
    /// Trial-level bookkeeping (bindings, oracle, console) happens here.
    fn pump(&mut self, deadline: Instant, step: &Step) -> Result<Option<Happened>, EngineError> {
        loop {
            if let Some(why) = &self.gone {
                return Ok(Some(Happened::Gone(why.clone())));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let slice = if !self.parked.values().any(|p| p.irqs_on) {
                self.next_service = None;
                deadline
            } else {
                let due = *self.next_service.get_or_insert(now + SERVICE_INTERVAL);
                if now >= due {
                    self.next_service = Some(now + SERVICE_INTERVAL);
                    let due_service: Vec<VcpuId> = self
                        .parked
                        .iter()
                        .filter(|(_, p)| p.irqs_on)
                        .map(|(v, _)| *v)
                        .collect();
                    // Counted per re-entry: the re-fire that follows may be folded into
                    // another vCPU's stop on all-stop backends and never be reported.
                    if self.vm.service_parked(&self.running(), &due_service)? {
                        self.serviced += due_service.len() as u64;
                    }
                    continue;
                }
                deadline.min(due)
            };
            let Some(event) = self.vm.next_event(slice)? else {
                continue;
            };
            match event {
                VmEvent::Console(line) => {
                    if let Some(cb) = self.on_console.as_mut() {
                        cb(&line);
                    }
                    self.console.push(&line);
                    self.boot_console.push(&line);
                }
                VmEvent::Control(ControlMessage::Output { .. }) => {}
                VmEvent::Control(m) => {
                    let t_us = self.now_us();
                    self.trace.push(TraceEvent::Control {
                        t_us,
                        line: m.to_string(),
                    });
                    self.bind(&m);
                    return Ok(Some(Happened::Message(m)));
                }
                VmEvent::BadControl { line, error } => {
                    let t_us = self.now_us();
                    self.trace.push(TraceEvent::Control {
                        t_us,
                        line: format!("(rejected: {error}) {line}"),
                    });
                }
                VmEvent::Exited(exit) => {
                    let why = match exit {
                        VmExit::GuestStopped => match self.console.report() {
                            Some(r) => format!("guest stopped: {}", r.headline),
                            None => "guest stopped".into(),
                        },
                        VmExit::VmmFailed(w) => w,
                    };
                    self.gone = Some(why.clone());
                    return Ok(Some(Happened::Gone(why)));
                }
                VmEvent::Breakpoint { vcpu, addr } => {
                    if let Some(h) = self.on_breakpoint(vcpu, addr, step)? {
                        return Ok(Some(h));
                    }
                }
            }
        }
    }

    fn bind(&mut self, m: &ControlMessage) {
        match m {
            ControlMessage::Ready { name, cpu, tid } => {
                self.bindings.ready.insert(name.clone(), (*cpu, *tid));
            }
            ControlMessage::Gate { name, gpa } => {
                self.gates.insert(name.clone(), *gpa);
            }
            ControlMessage::Fact { key, value } => {
                self.bindings.facts.insert(key.clone(), value.clone());
            }
            ControlMessage::Result {
                outcome, detail, ..
            } => self.oracle = Some((*outcome, detail.clone())),
            _ => {}
        }
    }

    fn on_breakpoint(
        &mut self,
        cpu: VcpuId,
        addr: u64,
        step: &Step,
    ) -> Result<Option<Happened>, EngineError> {
        if let Some(p) = self.parked.get(&cpu) {
            let (name, parked_tid) = (p.name.clone(), p.tid);
            let mut run = self.running();
            if self.armed.get(&name).map(|a| a.addr) == Some(addr) {
                // A serviced parked vCPU came back to its breakpoint: it stays parked, as
                // long as it is still the same task (a kernel that preempted the parked
                // task would let another one through the parked point).
                if let Some(tid) = parked_tid {
                    let regs = self.vm.regs(cpu)?;
                    let now = hit::read_task(self.vm, self.intro.task_layout(), cpu, &regs);
                    if let Some(t) = now.ok().filter(|t| t.tid != tid) {
                        return Err(EngineError::Step {
                            line: step.line,
                            why: format!("vCPU {cpu} parked at {name:?} in task {tid}, but task {} ({}) came back to it: the parked task was switched out (a preemptible kernel?)", t.tid, t.comm),
                        });
                    }
                }
            } else {
                // While being serviced it stopped at another of its breakpoints (on an
                // interrupt's path): step past that one; it stops again at its parked
                // point, which stays armed.
                run.push(cpu);
            }
            self.vm.resume(&run)?;
            return Ok(None);
        }
        let Some(name) = self
            .armed
            .iter()
            .find(|(_, a)| a.cpu == cpu && a.addr == addr)
            .map(|(n, _)| n.clone())
        else {
            self.vm.resume(&self.running())?;
            return Ok(None);
        };
        let regs = self.vm.regs(cpu)?;
        let armed = self.armed.get_mut(&name).expect("found above");
        armed.hits += 1;
        let (hits, detector, inject, cond) =
            (armed.hits, armed.detector, armed.inject, armed.cond.clone());
        // The current task costs guest memory reads: read it for conditions that use it,
        // and (below) for hits that are recorded, not for every filtered hit.
        let layout = self.intro.task_layout();
        let task = cond
            .as_ref()
            .filter(|c| c.needs_task())
            .map(|_| hit::read_task(self.vm, layout, cpu, &regs));
        let holds = match &cond {
            None => true,
            Some(c) => {
                let unread = Err("the condition does not read the task".to_string());
                let t = task.as_ref().unwrap_or(&unread);
                c.eval(&mut |o| self.bindings.lookup(o, &regs, t, hits))
                    .map_err(|e| EngineError::Step {
                        line: step.line,
                        why: format!("breakpoint {name:?}: {e}"),
                    })?
            }
        };
        let t_us = self.now_us();
        if !holds {
            self.filtered += 1;
            self.trace.push(TraceEvent::Filtered {
                t_us,
                name,
                cpu,
                tid: task.and_then(Result::ok).map(|t| t.tid),
            });
            self.vm.resume(&self.running())?;
            return Ok(None);
        }
        let symbol = self.intro.describe(addr);
        if detector {
            self.trace.push(TraceEvent::Detector {
                t_us,
                name: name.clone(),
                cpu,
                symbol,
            });
            // The detector's vCPU is not parked: recovery resumes everything.
            return Ok(Some(Happened::Detector { name }));
        }
        let task = task.unwrap_or_else(|| hit::read_task(self.vm, layout, cpu, &regs));
        let (tid, comm) = match &task {
            Ok(t) => (Some(t.tid), Some(t.comm.clone())),
            Err(_) => (None, None),
        };
        if let Some(value) = inject {
            let returned_to = self.force_return(cpu, &regs, value, &name, &symbol, step)?;
            self.trace.push(TraceEvent::Inject {
                t_us,
                name: name.clone(),
                cpu,
                symbol,
                tid,
                comm,
                value,
                returned_to: self.intro.describe(returned_to),
            });
            self.hits.push(name.clone());
            self.vm.resume(&self.running())?;
            return Ok(Some(Happened::Hit { name }));
        }
        self.trace.push(TraceEvent::Hit {
            t_us,
            name: name.clone(),
            cpu,
            symbol,
            tid,
            comm,
            regs: Box::new(regs),
        });
        self.hits.push(name.clone());
        self.parked.insert(
            cpu,
            Parked {
                name: name.clone(),
                irqs_on: regs.irqs_enabled(),
                tid,
            },
        );
        self.vm.resume(&self.running())?;
        Ok(Some(Happened::Hit { name }))
    }

    /// Fault injection: the function whose entry breakpoint `name` is (hit on `cpu` with
    /// `regs`) returns `value` at once; the breakpoint is spent and the vCPU will go on
    /// (it does not park). Returns where the function returned to.
    fn force_return(
        &mut self,
        cpu: VcpuId,
        regs: &crate::backend::Regs,
        value: i64,
        name: &str,
        symbol: &str,
        step: &Step,
    ) -> Result<u64, EngineError> {
        let vm = &mut *self.vm;
        let forced = regs.forced_return(value, |at| {
            let bytes = vm.read_virt(cpu, at, 8)?;
            Ok::<u64, BackendError>(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
        })?;
        // At a function's entry the return address its caller pushed is kernel code;
        // anything else (a tail call's jump, an entry stub) cannot be returned from.
        if !self.intro.is_code(forced.return_address) {
            return Err(EngineError::Step {
                line: step.line,
                why: format!(
                    "breakpoint {name:?} at {symbol}: the return address {:#x} is not kernel code, so the function was not entered by a call there; a forced return is refused",
                    forced.return_address
                ),
            });
        }
        self.vm.set_regs(cpu, &forced.regs)?;
        self.armed.remove(name);
        self.program(cpu)?;
        Ok(forced.return_address)
    }

    /// Program `cpu`'s breakpoints: every armed one on it (including the one it is parked on).
    fn program(&mut self, cpu: VcpuId) -> Result<(), EngineError> {
        let addrs: Vec<u64> = self
            .armed
            .values()
            .filter(|a| a.cpu == cpu)
            .map(|a| a.addr)
            .collect();
        self.vm.set_breakpoints(cpu, &addrs)?;
        Ok(())
    }

    fn release(&mut self, cpu: VcpuId) -> Result<(), EngineError> {
        if let Some(p) = self.parked.remove(&cpu) {
            self.armed.remove(&p.name);
            self.program(cpu)?;
        }
        let t_us = self.now_us();
        self.trace.push(TraceEvent::Release { t_us, cpu });
        self.vm.resume(&self.running())?;
        Ok(())
    }

    /// Wait (bounded) for the next control message with `verb`, taking it from the
    /// queue if it already arrived. Breakpoint hits meanwhile are ignored.
    pub fn await_control(&mut self, verb: &str, timeout: Duration) -> Option<ControlMessage> {
        self.await_message(&|m| matches_wait(m, verb, None), timeout)
    }

    fn await_message(
        &mut self,
        wanted: &dyn Fn(&ControlMessage) -> bool,
        timeout: Duration,
    ) -> Option<ControlMessage> {
        if let Some(pos) = self.inbox.iter().position(wanted) {
            return self.inbox.remove(pos);
        }
        let step = Step {
            action: Action::Wait {
                verb: "(bench)".into(),
                name: None,
            },
            line: 0,
            timeout_ms: 0,
            allow_irqs_off: false,
        };
        let deadline = Instant::now() + timeout;
        loop {
            match self.pump(deadline, &step) {
                Ok(Some(Happened::Message(m))) if wanted(&m) => return Some(m),
                Ok(Some(Happened::Message(m))) => self.queue(m),
                Ok(Some(Happened::Hit { .. } | Happened::Detector { .. })) => {}
                _ => return None,
            }
        }
    }

    /// The trial's oracle result, waiting (bounded) if the schedule did not consume it.
    pub fn await_result(&mut self, timeout: Duration) -> Option<(String, String)> {
        if self.oracle.is_none() {
            self.await_control("RESULT", timeout);
        }
        self.inbox
            .retain(|m| !matches!(m, ControlMessage::Result { .. }));
        self.oracle
            .as_ref()
            .map(|(o, d)| (o.to_string(), d.clone()))
    }
}

fn matches_wait(m: &ControlMessage, verb: &str, name: Option<&str>) -> bool {
    let (v, n): (&str, Option<&str>) = match m {
        ControlMessage::Ready { name, .. } => ("READY", Some(name)),
        ControlMessage::Phase { name } => ("PHASE", Some(name)),
        ControlMessage::Gate { name, .. } => ("GATE", Some(name)),
        ControlMessage::Fact { key, .. } => ("FACT", Some(key)),
        ControlMessage::Result { .. } => ("RESULT", None),
        ControlMessage::Exit { .. } => ("EXIT", None),
        ControlMessage::Hello { .. } => ("HELLO", None),
        ControlMessage::Output { .. } | ControlMessage::Sample { .. } => return false,
    };
    v == verb && (name.is_none() || n == name)
}
