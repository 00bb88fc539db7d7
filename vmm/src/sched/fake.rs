//! A scripted guest for the schedule engine's tests: a [`Backend`] without a VM.
//!
//! Each vCPU follows a script of [`Ev`]ents (reach an address, send a control message,
//! print a console line, wait for a gate or for another vCPU, interrupt another vCPU
//! and wait for it, switch tasks, end the VM). The fake keeps the execution model of
//! `backend/mod.rs`:
//! * only the vCPUs named in `resume` advance; the others stay (or become) stopped;
//! * breakpoints are per vCPU: a script address without one of *that vCPU's*
//!   breakpoints is passed silently; one with it stops the vCPU and is reported;
//! * resuming a vCPU stopped on a breakpoint steps past it without re-reporting it;
//!   `service_parked` re-enters it without stepping: it takes its pending interrupts
//!   (IPIs, and the events scripted with [`FakeVm::on_service`]) where it has IF=1, then
//!   comes back to the breakpoint, which fires again as a new hit;
//! * a hit `next_event` has not returned yet is not stepped past by `resume`;
//! * `set_breakpoints` refuses more than `max_breakpoints`;
//! * `next_event` returns `None` only when nothing can happen before its deadline, and
//!   then only at the deadline (the scripts take no time: tests stay fast with short
//!   bounds).
//!
//! Ties are broken by vCPU number: the lowest-numbered vCPU that can act acts first, so
//! every run of a script is the same. Every call the engine makes, and every event the
//! fake reports, is recorded in order ([`FakeVm::calls`]).

use crate::arch::{Arch, X86Regs};
use crate::backend::{
    check_guest_range, Backend, BackendError, ControlMessage, Regs, VcpuId, VmEvent, VmExit,
};
use crate::sched::engine::{Introspect, PerCpuCurrent, TaskLayout};
use crate::sched::schedule::{RawSchedule, Schedule};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

/// The register values a vCPU has at a point of its script, whatever the architecture.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub sp: u64,
    /// Base of the vCPU's per-CPU area (where `current_task` is found).
    pub per_cpu: u64,
    /// The function-argument registers, in argument order (`arg1`..`arg6`).
    pub args: [u64; 6],
}

/// The only place the fake (and the engine tests) build a [`Regs`]: a vCPU at `pc`, with
/// interrupts on or off, and `frame`'s stack pointer, per-CPU base and arguments.
pub fn regs_at(pc: u64, irqs_on: bool, frame: &Frame) -> Regs {
    let [a1, a2, a3, a4, a5, a6] = frame.args;
    // The fake guest is an x86_64 one: RFLAGS bit 1 is always set, bit 9 is IF.
    Regs::X86_64(X86Regs {
        rip: pc,
        rflags: 0x2 | if irqs_on { 1 << 9 } else { 0 },
        rsp: frame.sp,
        gs_base: frame.per_cpu,
        rdi: a1,
        rsi: a2,
        rdx: a3,
        rcx: a4,
        r8: a5,
        r9: a6,
        ..X86Regs::default()
    })
}

/// Where a vCPU with `regs` executes (the fake's only read of a register by name).
fn pc_of(regs: &Regs) -> u64 {
    regs.pc()
}

/// The fake kernel's functions, each 0x1000 bytes long from [`CODE_BASE`] + 0x1000.
pub const SYMBOLS: [&str; 8] = [
    "idle", "alpha", "beta", "gamma", "delta", "zeta", "detect", "caller",
];
pub const CODE_BASE: u64 = 0xffff_ffff_8100_0000;
const CODE_END: u64 = CODE_BASE + 0x1000 * (SYMBOLS.len() as u64 + 1);
const PER_CPU_BASE: u64 = 0xffff_8880_0010_0000;
const STACK_BASE: u64 = 0xffff_c900_0000_8000;
const TASK_BASE: u64 = 0xffff_8880_0800_0000;

/// The address of fake kernel function `name`.
pub fn sym(name: &str) -> u64 {
    let i = SYMBOLS
        .iter()
        .position(|s| *s == name)
        .unwrap_or_else(|| panic!("the fake kernel has no function {name:?}"));
    CODE_BASE + 0x1000 * (i as u64 + 1)
}

/// Where the fake guest's current task is found.
pub const LAYOUT: TaskLayout = TaskLayout {
    per_cpu: Some(PerCpuCurrent {
        current_task: 0x100,
        per_cpu_offset: 0xffff_ffff_8300_0000,
    }),
    pid: 0x10,
    tgid: 0x14,
    comm: 0x20,
};

/// The engine's view of the fake kernel: [`SYMBOLS`], hex addresses, [`LAYOUT`].
pub struct FakeKernel;

impl Introspect for FakeKernel {
    fn resolve(&self, spec: &str) -> Result<u64, String> {
        if let Some(hex) = spec.strip_prefix("0x") {
            return u64::from_str_radix(hex, 16).map_err(|e| e.to_string());
        }
        SYMBOLS
            .contains(&spec)
            .then(|| sym(spec))
            .ok_or_else(|| format!("no symbol {spec:?} in the fake kernel"))
    }

    fn describe(&self, addr: u64) -> String {
        if !self.is_code(addr) || addr < sym(SYMBOLS[0]) {
            return format!("{addr:#x}");
        }
        let i = ((addr - CODE_BASE) / 0x1000 - 1) as usize;
        format!("{}+{:#x}", SYMBOLS[i], (addr - CODE_BASE) % 0x1000)
    }

    fn task_layout(&self) -> Option<TaskLayout> {
        Some(LAYOUT)
    }

    fn is_code(&self, addr: u64) -> bool {
        (CODE_BASE..CODE_END).contains(&addr)
    }
}

/// One step of a vCPU's script.
#[derive(Debug, Clone)]
pub enum Ev {
    /// Execute the instruction at `addr`: stops there if the vCPU has a breakpoint at it.
    Reach {
        addr: u64,
        irqs_on: bool,
        args: [u64; 6],
    },
    /// Send a control message.
    Send(ControlMessage),
    /// Send a control line that does not parse.
    SendBad(String),
    /// Print a console line.
    Console(String),
    /// Announce gate `name` (`GATE name gpa`), then spin until the host writes 1 there.
    Gate { name: String, gpa: u64 },
    /// Wait until vCPU `cpu` got past `addr` (stepped or passed over it).
    After { cpu: VcpuId, addr: u64 },
    /// Interrupt `cpu` (an IPI, e.g. a TLB shootdown) and wait until it took the
    /// interrupt; while waiting, print `noise` on the console each time it is polled.
    Ipi { cpu: VcpuId, noise: Option<String> },
    /// The vCPU now runs task `tid` (`comm`); its tgid is `tid` too.
    Switch { tid: u64, comm: String },
    /// The VM ends.
    Exit(VmExit),
}

/// `vCPU reaches function` at its entry, with interrupts on.
pub fn reach(name: &str) -> Ev {
    reach_with(name, true, [0; 6])
}

/// `vCPU reaches function` at its entry with interrupts on or off and these arguments.
pub fn reach_with(name: &str, irqs_on: bool, args: [u64; 6]) -> Ev {
    Ev::Reach {
        addr: sym(name),
        irqs_on,
        args,
    }
}

/// Send the control message whose wire form is `line` (docs/control-protocol.md).
pub fn send(line: &str) -> Ev {
    Ev::Send(control_proto::parse_line(line.as_bytes()).expect("a valid control line"))
}

pub fn console(line: &str) -> Ev {
    Ev::Console(line.into())
}

pub fn gate(name: &str, gpa: u64) -> Ev {
    Ev::Gate {
        name: name.into(),
        gpa,
    }
}

pub fn after(cpu: VcpuId, name: &str) -> Ev {
    Ev::After {
        cpu,
        addr: sym(name),
    }
}

pub fn ipi(cpu: VcpuId) -> Ev {
    Ev::Ipi { cpu, noise: None }
}

pub fn switch(tid: u64, comm: &str) -> Ev {
    Ev::Switch {
        tid,
        comm: comm.into(),
    }
}

/// What the engine did to the fake, or what the fake reported, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    SetBreakpoints(VcpuId, Vec<u64>),
    Resume(Vec<VcpuId>),
    Service {
        running: Vec<VcpuId>,
        parked: Vec<VcpuId>,
    },
    StopAll,
    SetRegs(VcpuId, Box<Regs>),
    WritePhys(u64, Vec<u8>),
    /// An event `next_event` returned.
    Event(VmEvent),
}

#[derive(Debug, Clone, Copy)]
struct Stop {
    addr: u64,
    reported: bool,
    /// Stopped on the interrupt path (an `on_service` event), not on its script's front.
    from_irq: bool,
}

struct Cpu {
    script: VecDeque<Ev>,
    on_service: VecDeque<Ev>,
    running: bool,
    /// Re-entered by `service_parked`: on its interrupt path (`on_service`), after which
    /// it comes back to the breakpoint it is parked on.
    in_irq: bool,
    stop: Option<Stop>,
    bps: Vec<u64>,
    regs: Regs,
    irqs_on: bool,
    frame: Frame,
    /// Addresses it got past, in order.
    passed: Vec<u64>,
    /// IPIs sent to it that it has not taken yet.
    pending_ipis: Vec<u64>,
    /// The IPI its script's front `Ipi` sent.
    sent_ipi: Option<u64>,
    /// Its script's front `Gate` was announced.
    announced: bool,
}

/// The scripted guest. Build it, run the engine on it, then read [`FakeVm::calls`].
pub struct FakeVm {
    cpus: Vec<Cpu>,
    max_bp: usize,
    all_stop: bool,
    exited: bool,
    next_ipi: u64,
    taken_ipis: BTreeSet<u64>,
    /// Guest-virtual memory (per-CPU areas, tasks, stacks), byte by byte.
    mem: BTreeMap<u64, u8>,
    phys: BTreeMap<u64, u8>,
    calls: Vec<Call>,
    /// Registers of every breakpoint stop, in order.
    stops: Vec<(VcpuId, Regs)>,
}

enum Progress {
    Event(VmEvent),
    /// Something happened that is not reported (a breakpoint passed silently, a gate
    /// or a wait satisfied): look again.
    Silent,
    Blocked,
}

impl FakeVm {
    /// `cpus` stopped vCPUs (as a VM started for debugging) with empty scripts, 4
    /// breakpoints each, per-vCPU stops (like kvm); vCPU `v` runs task `1000 + v`.
    pub fn new(cpus: usize) -> FakeVm {
        let mut vm = FakeVm {
            cpus: Vec::new(),
            max_bp: 4,
            all_stop: false,
            exited: false,
            next_ipi: 0,
            taken_ipis: BTreeSet::new(),
            mem: BTreeMap::new(),
            phys: BTreeMap::new(),
            calls: Vec::new(),
            stops: Vec::new(),
        };
        for v in 0..cpus {
            let frame = Frame {
                sp: STACK_BASE + 0x1_0000 * v as u64,
                per_cpu: PER_CPU_BASE + 0x1_0000 * v as u64,
                args: [0; 6],
            };
            vm.cpus.push(Cpu {
                script: VecDeque::new(),
                on_service: VecDeque::new(),
                running: false,
                in_irq: false,
                stop: None,
                bps: Vec::new(),
                regs: regs_at(sym("idle"), true, &frame),
                irqs_on: true,
                frame,
                passed: Vec::new(),
                pending_ipis: Vec::new(),
                sent_ipi: None,
                announced: false,
            });
            vm.set_task(v, 1000 + v as u64, "swapper");
        }
        vm
    }

    /// vCPU `cpu` follows `events` (after whatever it was given before).
    pub fn script(mut self, cpu: VcpuId, events: impl IntoIterator<Item = Ev>) -> FakeVm {
        self.cpus[cpu].script.extend(events);
        self
    }

    /// What `cpu` does on its interrupt path the next time it is serviced while parked.
    pub fn on_service(mut self, cpu: VcpuId, events: impl IntoIterator<Item = Ev>) -> FakeVm {
        self.cpus[cpu].on_service.extend(events);
        self
    }

    /// vCPU `cpu` starts in task `tid`.
    pub fn task(mut self, cpu: VcpuId, tid: u64, comm: &str) -> FakeVm {
        self.set_task(cpu, tid, comm);
        self
    }

    pub fn max_breakpoints(mut self, n: usize) -> FakeVm {
        self.max_bp = n;
        self
    }

    /// Every vCPU stops when one reports a breakpoint (qemu's gdbstub).
    pub fn all_stop(mut self) -> FakeVm {
        self.all_stop = true;
        self
    }

    /// The u64 `value` at `cpu`'s stack pointer (a return address).
    pub fn stack_top(mut self, cpu: VcpuId, value: u64) -> FakeVm {
        let sp = self.cpus[cpu].frame.sp;
        self.write_mem(sp, &value.to_le_bytes());
        self
    }

    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// The vCPU sets of every `resume`, in order.
    pub fn resumes(&self) -> Vec<Vec<VcpuId>> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Resume(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Index in [`FakeVm::calls`] of the first call `matches` accepts.
    pub fn first(&self, matches: impl Fn(&Call) -> bool) -> Option<usize> {
        self.calls.iter().position(matches)
    }

    /// Registers of every breakpoint stop, in order.
    pub fn stops(&self) -> &[(VcpuId, Regs)] {
        &self.stops
    }

    /// Addresses `cpu` got past, in order.
    pub fn passed(&self, cpu: VcpuId) -> &[u64] {
        &self.cpus[cpu].passed
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = *self.mem.get(&(addr + i as u64))?;
        }
        Some(u64::from_le_bytes(b))
    }

    fn write_mem(&mut self, addr: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.mem.insert(addr + i as u64, *b);
        }
    }

    fn set_task(&mut self, cpu: VcpuId, tid: u64, comm: &str) {
        let task = TASK_BASE + 0x1000 * tid;
        self.write_mem(task + LAYOUT.pid, &(tid as u32).to_le_bytes());
        self.write_mem(task + LAYOUT.tgid, &(tid as u32).to_le_bytes());
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm.as_bytes());
        self.write_mem(task + LAYOUT.comm, &name);
        let per_cpu = LAYOUT.per_cpu.expect("the fake guest is x86_64");
        let slot = self.cpus[cpu].frame.per_cpu + per_cpu.current_task;
        self.write_mem(slot, &task.to_le_bytes());
    }

    fn check(&self, vcpu: VcpuId) -> Result<(), BackendError> {
        if self.exited {
            return Err(BackendError::Exited);
        }
        if vcpu >= self.cpus.len() {
            return Err(BackendError::NoSuchVcpu(vcpu, self.cpus.len()));
        }
        Ok(())
    }

    fn check_stopped(&self, vcpu: VcpuId) -> Result<(), BackendError> {
        self.check(vcpu)?;
        if self.cpus[vcpu].running {
            return Err(BackendError::Unavailable(format!(
                "fake: vCPU {vcpu} is running; stop it first"
            )));
        }
        Ok(())
    }

    /// `cpu` runs on: a reported stop is stepped past, an unreported one stays.
    fn run(&mut self, cpu: VcpuId) {
        let c = &mut self.cpus[cpu];
        match c.stop {
            Some(s) if !s.reported => return,
            Some(s) => {
                c.stop = None;
                c.passed.push(s.addr);
                if !s.from_irq {
                    c.script.pop_front();
                }
            }
            None => {}
        }
        c.running = true;
    }

    fn set_running(&mut self, running: &[VcpuId], keep: &[VcpuId]) -> Result<(), BackendError> {
        for &v in running.iter().chain(keep) {
            self.check(v)?;
        }
        for v in 0..self.cpus.len() {
            if running.contains(&v) {
                self.run(v);
            } else if !keep.contains(&v) {
                self.cpus[v].running = false;
            }
        }
        Ok(())
    }

    /// Let `cpu` do one thing.
    fn step(&mut self, cpu: VcpuId) -> Progress {
        let c = &mut self.cpus[cpu];
        if let Some(s) = &mut c.stop {
            if s.reported {
                return Progress::Blocked;
            }
            s.reported = true;
            let addr = s.addr;
            if self.all_stop {
                for c in &mut self.cpus {
                    c.running = false;
                }
            }
            return Progress::Event(VmEvent::Breakpoint { vcpu: cpu, addr });
        }
        if !c.running {
            return Progress::Blocked;
        }
        // Interrupts: a running vCPU takes them at once, a re-entered one where IF=1
        // (the engine re-enters only those).
        if !c.pending_ipis.is_empty() && (!c.in_irq || c.irqs_on) {
            self.taken_ipis.extend(c.pending_ipis.drain(..));
            return Progress::Silent;
        }
        let from_irq = c.in_irq;
        let ev = if from_irq {
            let next = if c.irqs_on {
                c.on_service.pop_front()
            } else {
                None
            };
            match next {
                Some(ev) => ev,
                None => {
                    // Back from the interrupt: to the breakpoint it is parked on.
                    c.in_irq = false;
                    return Progress::Silent;
                }
            }
        } else {
            match c.script.front() {
                Some(ev) => ev.clone(),
                None => return Progress::Blocked,
            }
        };
        let done = |vm: &mut FakeVm, p: Progress| {
            if !from_irq {
                vm.cpus[cpu].script.pop_front();
            }
            p
        };
        match ev {
            Ev::Reach {
                addr,
                irqs_on,
                args,
            } => {
                let c = &mut self.cpus[cpu];
                c.irqs_on = irqs_on;
                c.regs = regs_at(addr, irqs_on, &Frame { args, ..c.frame });
                if !c.bps.contains(&addr) {
                    c.passed.push(addr);
                    return done(self, Progress::Silent);
                }
                c.running = false;
                c.stop = Some(Stop {
                    addr,
                    reported: false,
                    from_irq,
                });
                self.stops.push((cpu, c.regs));
                Progress::Silent
            }
            Ev::Send(m) => done(self, Progress::Event(VmEvent::Control(m))),
            Ev::SendBad(line) => {
                let error = match control_proto::parse_line(line.as_bytes()) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("{line:?} is a valid control line"),
                };
                done(self, Progress::Event(VmEvent::BadControl { line, error }))
            }
            Ev::Console(line) => done(self, Progress::Event(VmEvent::Console(line))),
            Ev::Gate { name, gpa } => {
                let c = &mut self.cpus[cpu];
                if !c.announced {
                    c.announced = true;
                    let m = ControlMessage::Gate { name, gpa };
                    return Progress::Event(VmEvent::Control(m));
                }
                let open = (0..4u64).map(|i| self.phys.get(&(gpa + i)).copied().unwrap_or(0));
                if open.eq(1u32.to_le_bytes()) {
                    self.cpus[cpu].announced = false;
                    return done(self, Progress::Silent);
                }
                Progress::Blocked
            }
            Ev::After { cpu: other, addr } => {
                if self.cpus[other].passed.contains(&addr) {
                    done(self, Progress::Silent)
                } else {
                    Progress::Blocked
                }
            }
            Ev::Ipi { cpu: target, noise } => match self.cpus[cpu].sent_ipi {
                None => {
                    let id = self.next_ipi;
                    self.next_ipi += 1;
                    self.cpus[target].pending_ipis.push(id);
                    self.cpus[cpu].sent_ipi = Some(id);
                    Progress::Silent
                }
                Some(id) if self.taken_ipis.contains(&id) => {
                    self.cpus[cpu].sent_ipi = None;
                    done(self, Progress::Silent)
                }
                Some(_) => match noise {
                    Some(line) => Progress::Event(VmEvent::Console(line)),
                    None => Progress::Blocked,
                },
            },
            Ev::Switch { tid, comm } => {
                self.set_task(cpu, tid, &comm);
                done(self, Progress::Silent)
            }
            Ev::Exit(exit) => {
                self.exited = true;
                done(self, Progress::Event(VmEvent::Exited(exit)))
            }
        }
    }
}

impl Backend for FakeVm {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn arch(&self) -> Arch {
        Arch::X86_64
    }

    fn vcpu_count(&self) -> usize {
        self.cpus.len()
    }

    fn max_breakpoints(&self) -> usize {
        self.max_bp
    }

    fn set_breakpoints(&mut self, vcpu: VcpuId, addrs: &[u64]) -> Result<(), BackendError> {
        self.check(vcpu)?;
        if addrs.len() > self.max_bp {
            return Err(BackendError::TooManyBreakpoints {
                vcpu,
                wanted: addrs.len(),
                limit: self.max_bp,
                backend: "fake",
            });
        }
        self.calls.push(Call::SetBreakpoints(vcpu, addrs.to_vec()));
        self.cpus[vcpu].bps = addrs.to_vec();
        Ok(())
    }

    fn resume(&mut self, running: &[VcpuId]) -> Result<(), BackendError> {
        self.set_running(running, &[])?;
        self.calls.push(Call::Resume(running.to_vec()));
        Ok(())
    }

    fn service_parked(
        &mut self,
        running: &[VcpuId],
        parked: &[VcpuId],
    ) -> Result<bool, BackendError> {
        self.set_running(running, parked)?;
        for &v in parked {
            let c = &mut self.cpus[v];
            let stop = c
                .stop
                .take()
                .filter(|s| s.reported)
                .unwrap_or_else(|| panic!("vCPU {v} is serviced but not stopped on a hit"));
            if stop.from_irq {
                // Re-entered without stepping: its interrupt path comes back to this stop.
                c.on_service.push_front(Ev::Reach {
                    addr: stop.addr,
                    irqs_on: c.irqs_on,
                    args: [0; 6],
                });
            }
            c.running = true;
            c.in_irq = true;
        }
        self.calls.push(Call::Service {
            running: running.to_vec(),
            parked: parked.to_vec(),
        });
        Ok(true)
    }

    fn next_event(&mut self, deadline: Instant) -> Result<Option<VmEvent>, BackendError> {
        if self.exited {
            return Err(BackendError::Exited);
        }
        'scan: loop {
            for v in 0..self.cpus.len() {
                match self.step(v) {
                    Progress::Event(e) => {
                        self.calls.push(Call::Event(e.clone()));
                        return Ok(Some(e));
                    }
                    Progress::Silent => continue 'scan,
                    Progress::Blocked => {}
                }
            }
            // Nothing can happen before the deadline.
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return Ok(None);
        }
    }

    fn stop_all(&mut self) -> Result<(), BackendError> {
        self.set_running(&[], &[])?;
        self.calls.push(Call::StopAll);
        Ok(())
    }

    fn regs(&mut self, vcpu: VcpuId) -> Result<Regs, BackendError> {
        self.check_stopped(vcpu)?;
        Ok(self.cpus[vcpu].regs)
    }

    fn set_regs(&mut self, vcpu: VcpuId, regs: &Regs) -> Result<(), BackendError> {
        self.check_stopped(vcpu)?;
        self.calls.push(Call::SetRegs(vcpu, Box::new(*regs)));
        let c = &mut self.cpus[vcpu];
        if let Some(s) = c.stop.filter(|s| s.addr != pc_of(regs)) {
            // No longer on the breakpoint: it goes on from the new pc, skipping the rest
            // of whatever its script was executing there.
            c.stop = None;
            if !s.from_irq {
                c.script.pop_front();
            }
        }
        c.regs = *regs;
        Ok(())
    }

    fn read_virt(&mut self, vcpu: VcpuId, addr: u64, len: usize) -> Result<Vec<u8>, BackendError> {
        self.check_stopped(vcpu)?;
        check_guest_range(addr, len)?;
        (0..len as u64)
            .map(|i| self.mem.get(&(addr + i)).copied())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| BackendError::Memory {
                addr,
                len,
                why: "not mapped in the fake guest".into(),
            })
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        if self.exited {
            return Err(BackendError::Exited);
        }
        self.calls.push(Call::WritePhys(gpa, data.to_vec()));
        for (i, b) in data.iter().enumerate() {
            self.phys.insert(gpa + i as u64, *b);
        }
        Ok(())
    }

    fn kill(&mut self) {
        self.exited = true;
    }
}

/// Parse a scenario's `[schedule]` table as `memrace run` does, for a VM of `cpus` vCPUs
/// with 4 breakpoints each.
pub fn schedule(text: &str, cpus: usize) -> Schedule {
    #[derive(serde::Deserialize)]
    struct File {
        schedule: RawSchedule,
    }
    let f: File = toml::from_str(text).expect("a schedule table");
    Schedule::from_raw("test.toml", text, f.schedule, cpus, 4).expect("a valid schedule")
}
