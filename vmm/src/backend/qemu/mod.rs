//! The qemu backend: qemu-system-x86_64 or qemu-system-aarch64 (TCG here, KVM where the
//! host has hardware virtualization for the guest's architecture) driven over the gdb
//! remote protocol.
//!
//! QEMU's gdbstub is all-stop: when any vCPU stops, all do. `vCont` resumes only
//! the vCPUs it names, which is what lets a schedule park one vCPU while others run.
//! gdb breakpoints in QEMU apply to every vCPU; per-vCPU breakpoints are emulated
//! here: a hit on a vCPU that did not ask for that address is stepped over silently.
//! QEMU therefore holds the union of all vCPUs' breakpoints. With TCG that is a list
//! per vCPU without a fixed size (accel/tcg, `cpu_breakpoint_insert`); with KVM it is
//! one list of 4 for the whole VM, programmed into every vCPU's debug registers
//! (target/i386/kvm/kvm.c, `nb_hw_breakpoint`): see [`check_vm_breakpoints`].

pub mod gdb;
mod link;
pub mod process;

use super::{Backend, BackendError, Regs, VcpuId, VmConfig, VmEvent, VmExit};
use crate::arch::{hardware_breakpoints, register_file, Arch, RegisterFile};
use gdb::{RegDesc, Stop};
use link::GdbLink;
use process::{Accel, Incoming, Process};
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use process::{find_qemu, tcg_guest_tsc_khz, Accel as QemuAccel, ICOUNT_SHIFT};

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("QEMU binary {path} not found; install it with: apt-get install {package} (or set {variable})")]
    NotInstalled {
        path: String,
        package: &'static str,
        variable: &'static str,
    },
    #[error("{0}")]
    Io(String),
    #[error("gdb stub: {0}")]
    Protocol(String),
    #[error("gdb stub did not answer {request:?} within {seconds} s")]
    Timeout { request: String, seconds: u64 },
    #[error("this VM was started without a debugger (VmConfig::debug = false)")]
    NotDebugging,
    #[error("{wanted} breakpoints armed at once: QEMU with KVM acceleration has {limit} hardware breakpoints for the whole VM (one set of debug registers, programmed on every vCPU), not {limit} per vCPU. Disarm breakpoints, or release the vCPUs parked on them, before arming more (TCG, used on hosts without hardware virtualization, has no such limit)")]
    VmBreakpoints { wanted: usize, limit: usize },
}

/// Refuse `armed` breakpoints at once if QEMU with `accel` cannot hold them all.
pub fn check_vm_breakpoints(accel: Accel, armed: usize) -> Result<(), QemuError> {
    match accel {
        Accel::Kvm if armed > KVM_VM_BREAKPOINTS => Err(QemuError::VmBreakpoints {
            wanted: armed,
            limit: KVM_VM_BREAKPOINTS,
        }),
        Accel::Kvm | Accel::Tcg => Ok(()),
    }
}

/// QEMU with KVM on an x86 host programs one set of four debug address registers.
const KVM_VM_BREAKPOINTS: usize = hardware_breakpoints(Arch::X86_64);

pub struct QemuVm {
    arch: Arch,
    /// The registers `regs` reads for `arch`.
    file: RegisterFile,
    process: Process,
    accel: Accel,
    link: GdbLink,
    cpus: usize,
    /// gdb thread id of each vCPU, in vCPU order.
    threads: Vec<String>,
    /// Register number and size of each of `file.names`, from the target description.
    regs: Vec<RegDesc>,
    /// Where each of `file.names` sits in the `g` packet, if it is there.
    g_offsets: Vec<Option<usize>>,
    /// Breakpoints each vCPU asked for.
    wanted: Vec<Vec<u64>>,
    /// Breakpoints inserted in QEMU (the union of `wanted`).
    inserted: BTreeSet<u64>,
    /// Per vCPU: stopped on this breakpoint address, to be stepped over on resume.
    on_breakpoint: Vec<Option<u64>>,
    /// The set last passed to `resume`, while it runs.
    running: Option<Vec<VcpuId>>,
    /// Breakpoint hits that were stepped over because another vCPU owned the address.
    pub foreign_hits: u64,
    pub run_dir: PathBuf,
}

fn sockets_dir() -> Result<tempfile_dir::Dir, QemuError> {
    tempfile_dir::Dir::new()
        .map_err(|e| QemuError::Io(format!("cannot create a socket directory: {e}")))
}

/// A short-lived directory for the unix sockets (their paths must stay under 108 bytes).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            let base = std::env::temp_dir();
            for n in 0..1000u32 {
                let p = base.join(format!("memrace-{}-{n}", std::process::id()));
                if std::fs::create_dir(&p).is_ok() {
                    return Ok(Dir(p));
                }
            }
            Err(std::io::Error::other("no free socket directory name"))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl QemuVm {
    /// Start QEMU for `cfg`. With `cfg.debug`, every vCPU starts stopped under the gdb stub.
    pub fn launch(cfg: &VmConfig, accel: Accel) -> Result<QemuVm, QemuError> {
        let qemu = find_qemu(cfg.arch)?;
        if cfg.cpus == 0 {
            return Err(QemuError::Io(
                "a VM needs at least one vCPU (--cpus 0 given)".into(),
            ));
        }
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(|e| QemuError::Io(format!("{}: {e}", cfg.run_dir.display())))?;
        let sockets = sockets_dir()?;
        let args = process::command_line(cfg, accel, &sockets.0, cfg.debug);
        let _ = std::fs::write(
            cfg.run_dir.join("qemu.cmdline"),
            format!("{} {}\n", qemu.display(), args.join(" ")),
        );
        let (tx, rx) = channel();
        let process = Process::start(&qemu, &args, cfg, &sockets.0, tx)?;
        let gdb = process
            .gdb
            .as_ref()
            .map(|g| g.try_clone())
            .transpose()
            .map_err(|e| QemuError::Io(e.to_string()))?;
        let mut vm = QemuVm {
            arch: cfg.arch,
            file: register_file(cfg.arch),
            process,
            accel,
            link: GdbLink::new(gdb, rx, &cfg.run_dir),
            cpus: cfg.cpus,
            threads: Vec::new(),
            regs: Vec::new(),
            g_offsets: Vec::new(),
            wanted: vec![Vec::new(); cfg.cpus],
            inserted: BTreeSet::new(),
            on_breakpoint: vec![None; cfg.cpus],
            running: None,
            foreign_hits: 0,
            run_dir: cfg.run_dir.clone(),
        };
        if vm.link.attached() {
            if let Err(e) = vm.attach() {
                vm.kill();
                return Err(e);
            }
        }
        Ok(vm)
    }

    /// Learn the vCPU threads and the register layout.
    fn attach(&mut self) -> Result<(), QemuError> {
        let mut threads = Vec::new();
        let mut reply = self.link.request("qfThreadInfo")?;
        while let Some(list) = reply.strip_prefix(b"m") {
            threads.extend(String::from_utf8_lossy(list).split(',').map(str::to_string));
            reply = self.link.request("qsThreadInfo")?;
        }
        if threads.len() != self.cpus {
            return Err(QemuError::Protocol(format!(
                "expected {} vCPU threads, QEMU lists {threads:?}",
                self.cpus
            )));
        }
        self.threads = threads;
        self.regs = self.register_layout()?;
        Ok(())
    }

    fn register_layout(&mut self) -> Result<Vec<RegDesc>, QemuError> {
        let mut all = Vec::new();
        let mut next = 0;
        let mut queue = VecDeque::from(["target.xml".to_string()]);
        while let Some(annex) = queue.pop_front() {
            let xml = self.link.read_xfer(&annex)?;
            queue.extend(gdb::includes(&xml));
            all.extend(gdb::parse_regs(&xml, &mut next));
        }
        // Byte offsets in the `g` packet, which carries registers in number order.
        all.sort_by_key(|r| r.regnum);
        let mut offset = 0;
        let names = self.file.names;
        self.g_offsets = names.iter().map(|_| None).collect();
        for r in &all {
            if let Some(i) = names.iter().position(|n| *n == r.name) {
                self.g_offsets[i] = Some(offset);
            }
            offset += r.bits / 8;
        }
        names
            .iter()
            .map(|name| {
                all.iter()
                    .find(|r| r.name == *name)
                    .cloned()
                    .ok_or_else(|| {
                        QemuError::Protocol(format!(
                            "QEMU's target description has no register {name} (an {} guest)",
                            self.arch
                        ))
                    })
            })
            .collect()
    }

    fn vcpu_of_thread(&self, thread: &str) -> Option<VcpuId> {
        let norm = |t: &str| {
            u64::from_str_radix(
                t.trim_start_matches('p').rsplit('.').next().unwrap_or(t),
                16,
            )
            .ok()
        };
        let want = norm(thread)?;
        self.threads.iter().position(|t| norm(t) == Some(want))
    }

    fn select(&mut self, vcpu: VcpuId) -> Result<(), BackendError> {
        self.check_vcpu(vcpu)?;
        let t = self.threads[vcpu].clone();
        Ok(self.link.request_ok(&format!("Hg{t}"))?)
    }

    fn check_vcpu(&self, vcpu: VcpuId) -> Result<(), BackendError> {
        if vcpu < self.cpus {
            Ok(())
        } else {
            Err(BackendError::NoSuchVcpu(vcpu, self.cpus))
        }
    }

    fn read_register(&mut self, desc: &RegDesc) -> Result<u64, QemuError> {
        let reply = self.link.request(&format!("p{:x}", desc.regnum))?;
        let bytes = gdb::decode_hex(&reply).ok_or_else(|| {
            QemuError::Protocol(format!(
                "register {}: {:?}",
                desc.name,
                String::from_utf8_lossy(&reply)
            ))
        })?;
        let mut le = [0u8; 8];
        for (i, b) in bytes.iter().take(8).enumerate() {
            le[i] = *b;
        }
        Ok(u64::from_le_bytes(le))
    }

    fn pc(&mut self, vcpu: VcpuId) -> Result<u64, BackendError> {
        self.select(vcpu)?;
        let desc = self.regs[self.file.pc].clone();
        Ok(self.read_register(&desc)?)
    }

    /// Step `vcpu` over the breakpoint it is stopped on (QEMU would re-report it).
    fn step_over(&mut self, vcpu: VcpuId, addr: u64) -> Result<(), BackendError> {
        let armed = self.inserted.contains(&addr);
        if armed {
            self.link.request_ok(&format!("z1,{addr:x},1"))?;
        }
        let t = self.threads[vcpu].clone();
        self.link.send_raw(&gdb::frame(&format!("vCont;s:{t}")))?;
        // The step's own stop reply names the stepped thread; anything else is stale.
        let stop = loop {
            let stop = self.link.wait_stop("single-step")?;
            match &stop {
                Stop::Signal {
                    thread: Some(th), ..
                } if self.vcpu_of_thread(th) != Some(vcpu) => continue,
                _ => break stop,
            }
        };
        if stop == Stop::Exited {
            self.link.exited = true;
            return Err(BackendError::Exited);
        }
        if armed {
            self.link.request_ok(&format!("Z1,{addr:x},1"))?;
        }
        Ok(())
    }

    fn sync_breakpoints(&mut self) -> Result<(), BackendError> {
        let union: BTreeSet<u64> = self.wanted.iter().flatten().copied().collect();
        for addr in self
            .inserted
            .difference(&union)
            .copied()
            .collect::<Vec<_>>()
        {
            self.link.request_ok(&format!("z1,{addr:x},1"))?;
            self.inserted.remove(&addr);
        }
        for addr in union
            .difference(&self.inserted)
            .copied()
            .collect::<Vec<_>>()
        {
            self.link.request_ok(&format!("Z1,{addr:x},1"))?;
            self.inserted.insert(addr);
        }
        Ok(())
    }

    /// Run `f` with every vCPU stopped, then restart what was running.
    fn while_stopped<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let was = self.running.clone();
        self.stop_all()?;
        let out = f(self)?;
        if let Some(set) = was {
            self.resume(&set)?;
        }
        Ok(out)
    }

    /// Handle a stop reply that arrived while vCPUs were running.
    fn on_stop(&mut self, stop: Stop) -> Result<Option<VmEvent>, BackendError> {
        let set = self.running.take().unwrap_or_default();
        let Stop::Signal { thread, .. } = stop else {
            self.link.exited = true;
            return Ok(Some(VmEvent::Exited(VmExit::GuestStopped)));
        };
        let vcpu = thread.as_deref().and_then(|t| self.vcpu_of_thread(t));
        let Some(vcpu) = vcpu else {
            self.resume(&set)?;
            return Ok(None);
        };
        let pc = self.pc(vcpu)?;
        if self.inserted.contains(&pc) {
            self.on_breakpoint[vcpu] = Some(pc);
            if self.wanted[vcpu].contains(&pc) {
                return Ok(Some(VmEvent::Breakpoint { vcpu, addr: pc }));
            }
            self.foreign_hits += 1;
        }
        self.resume(&set)?;
        Ok(None)
    }

    fn next_event_inner(&mut self, deadline: Instant) -> Result<Option<VmEvent>, BackendError> {
        loop {
            if let Some(e) = self.link.pending.pop_front() {
                return Ok(Some(e));
            }
            if self.link.exited {
                return Ok(Some(VmEvent::Exited(VmExit::GuestStopped)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.link.recv(left) {
                Ok(Incoming::Event(VmEvent::Exited(exit))) => {
                    self.link.exited = true;
                    let exit = match self.process.exit_status() {
                        Some(s) if !s.success() => {
                            let why = std::fs::read_to_string(self.run_dir.join("qemu.stderr"))
                                .unwrap_or_default();
                            VmExit::VmmFailed(format!("QEMU exited with {s}: {}", why.trim()))
                        }
                        _ => exit,
                    };
                    return Ok(Some(VmEvent::Exited(exit)));
                }
                Ok(Incoming::Event(e)) => return Ok(Some(e)),
                Ok(Incoming::GdbPacket(p)) => {
                    if let Some(stop) = gdb::parse_stop(&p) {
                        if let Some(e) = self.on_stop(stop)? {
                            return Ok(Some(e));
                        }
                    }
                }
                Ok(Incoming::GdbClosed) => self.link.detach(),
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    self.link.exited = true;
                    return Ok(Some(VmEvent::Exited(VmExit::VmmFailed(
                        "QEMU's reader threads ended".into(),
                    ))));
                }
            }
        }
    }
}

impl Backend for QemuVm {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn arch(&self) -> Arch {
        self.arch
    }

    fn vcpu_count(&self) -> usize {
        self.cpus
    }

    fn max_breakpoints(&self) -> usize {
        hardware_breakpoints(self.arch)
    }

    fn set_breakpoints(&mut self, vcpu: VcpuId, addrs: &[u64]) -> Result<(), BackendError> {
        self.check_vcpu(vcpu)?;
        if addrs.len() > self.max_breakpoints() {
            return Err(BackendError::TooManyBreakpoints {
                vcpu,
                wanted: addrs.len(),
                limit: self.max_breakpoints(),
                backend: "qemu",
            });
        }
        if !self.link.attached() {
            return Err(QemuError::NotDebugging.into());
        }
        let union: BTreeSet<u64> = (self.wanted.iter().enumerate())
            .filter(|(v, _)| *v != vcpu)
            .flat_map(|(_, a)| a.iter().copied())
            .chain(addrs.iter().copied())
            .collect();
        check_vm_breakpoints(self.accel, union.len())?;
        self.wanted[vcpu] = addrs.to_vec();
        self.while_stopped(|vm| vm.sync_breakpoints())
    }

    fn resume(&mut self, running: &[VcpuId]) -> Result<(), BackendError> {
        if self.link.exited {
            return Err(BackendError::Exited);
        }
        if !self.link.attached() {
            return Err(QemuError::NotDebugging.into());
        }
        for &v in running {
            self.check_vcpu(v)?;
        }
        if self.running.is_some() {
            self.stop_all()?;
        }
        for &v in running {
            if let Some(addr) = self.on_breakpoint[v].take() {
                self.step_over(v, addr)?;
            }
        }
        if running.is_empty() {
            return Ok(());
        }
        let mut cmd = String::from("vCont");
        for &v in running {
            cmd.push_str(&format!(";c:{}", self.threads[v]));
        }
        self.link.send_raw(&gdb::frame(&cmd))?;
        self.running = Some(running.to_vec());
        Ok(())
    }

    fn service_parked(
        &mut self,
        running: &[VcpuId],
        parked: &[VcpuId],
    ) -> Result<bool, BackendError> {
        // Forgetting the pending step-over makes `resume` re-enter them at the breakpoint.
        for &v in parked {
            self.check_vcpu(v)?;
            self.on_breakpoint[v] = None;
        }
        let all: Vec<VcpuId> = running.iter().chain(parked).copied().collect();
        self.resume(&all)?;
        Ok(true)
    }

    fn next_event(&mut self, deadline: Instant) -> Result<Option<VmEvent>, BackendError> {
        let event = self.next_event_inner(deadline);
        if let Ok(Some(e @ (VmEvent::Breakpoint { .. } | VmEvent::Exited(_)))) = &event {
            let text = format!("event {e:?}");
            self.link.log("=", text.as_bytes());
        }
        event
    }
    fn stop_all(&mut self) -> Result<(), BackendError> {
        if self.running.take().is_none() {
            return Ok(());
        }
        self.link.send_raw(&[0x03])?;
        // A vCPU stopped here at a breakpoint address, by the interrupt or by a hit that
        // raced with it, is *not* marked for stepping: on resume QEMU's breakpoint check
        // fires again before the instruction runs, and the hit is reported then.
        let stop = self.link.wait_stop("interrupt")?;
        if let Stop::Signal { signal, .. } = stop {
            if signal != 2 {
                // The hit won the race; QEMU dropped our interrupt byte, but be sure no
                // second stop reply is left to be mistaken for a later one.
                self.link.drain_stale_stops(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn regs(&mut self, vcpu: VcpuId) -> Result<Regs, BackendError> {
        self.select(vcpu)?;
        // One `g` round trip for all of them; `p` only for what it does not carry.
        let all = self.link.request("g")?;
        let all = gdb::decode_hex(&all).unwrap_or_default();
        let descs = self.regs.clone();
        let mut v = vec![0u64; descs.len()];
        for (i, (slot, desc)) in v.iter_mut().zip(&descs).enumerate() {
            let size = (desc.bits / 8).min(8);
            *slot = match self.g_offsets.get(i).copied().flatten() {
                Some(off) if off + size <= all.len() => {
                    let mut le = [0u8; 8];
                    le[..size].copy_from_slice(&all[off..off + size]);
                    u64::from_le_bytes(le)
                }
                _ => self.read_register(desc)?,
            };
        }
        Ok(Regs::from_values(self.arch, &v).expect("one value per register of the file"))
    }

    fn set_regs(&mut self, vcpu: VcpuId, regs: &Regs) -> Result<(), BackendError> {
        self.while_stopped(|vm| {
            if regs.arch() != vm.arch {
                return Err(BackendError::WrongArch {
                    backend: "qemu",
                    runs: vm.arch,
                    given: regs.arch(),
                });
            }
            let now = vm.regs(vcpu)?;
            let writable = vm.file.writable;
            let values = |r: &Regs| r.values()[..writable].to_vec();
            // `regs` (above) selected the vCPU. Only what changes is written, one `P`
            // packet each, in the target description's size and byte order.
            let descs = vm.regs.clone();
            for ((new, old), desc) in values(regs).iter().zip(values(&now)).zip(&descs) {
                if *new == old {
                    continue;
                }
                let size = (desc.bits / 8).min(8);
                let hex: String = new.to_le_bytes()[..size]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                vm.link
                    .request_ok(&format!("P{:x}={hex}", desc.regnum))
                    .map_err(|e| {
                        QemuError::Protocol(format!("writing register {}: {e}", desc.name))
                    })?;
            }
            if regs.pc() != now.pc() {
                vm.on_breakpoint[vcpu] = None;
            }
            Ok(())
        })
    }

    fn read_virt(&mut self, vcpu: VcpuId, addr: u64, len: usize) -> Result<Vec<u8>, BackendError> {
        // `addr` is often a pointer read from guest memory: untrusted. Once the whole
        // range is known not to wrap, `addr + out.len()` below cannot overflow.
        crate::backend::check_guest_range(addr, len)?;
        self.select(vcpu)?;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let chunk = (len - out.len()).min(0x400);
            let at = addr + out.len() as u64;
            let reply = self.link.request(&format!("m{at:x},{chunk:x}"))?;
            match gdb::decode_hex(&reply) {
                Some(bytes) if bytes.len() == chunk => out.extend(bytes),
                _ => {
                    return Err(BackendError::Memory {
                        addr: at,
                        len: chunk,
                        why: format!("gdb stub answered {:?}", String::from_utf8_lossy(&reply)),
                    })
                }
            }
        }
        Ok(out)
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.while_stopped(|vm| {
            vm.link.request_ok("Qqemu.PhyMemMode:1")?;
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            let wrote = vm
                .link
                .request_ok(&format!("M{gpa:x},{:x}:{hex}", data.len()));
            vm.link.request_ok("Qqemu.PhyMemMode:0")?;
            wrote.map_err(|e| BackendError::Memory {
                addr: gpa,
                len: data.len(),
                why: e.to_string(),
            })
        })
    }

    fn kill(&mut self) {
        self.process.kill();
        self.link.exited = true;
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.process.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_acceleration_has_four_breakpoints_for_the_whole_vm_tcg_no_fixed_limit() {
        assert!(check_vm_breakpoints(Accel::Kvm, 4).is_ok());
        let err = check_vm_breakpoints(Accel::Kvm, 5).unwrap_err().to_string();
        assert!(
            err.contains("5 breakpoints armed at once") && err.contains("whole VM"),
            "{err}"
        );
        assert!(check_vm_breakpoints(Accel::Tcg, 12).is_ok());
    }

    #[test]
    fn a_guest_range_that_wraps_is_refused() {
        assert!(
            crate::backend::check_guest_range(0xffff_ffff_ffff_fff0, 16).is_ok(),
            "ends at the top"
        );
        assert!(crate::backend::check_guest_range(u64::MAX, 0).is_ok());
        let err = crate::backend::check_guest_range(0xffff_ffff_ffff_fff0, 17).unwrap_err();
        assert!(err.to_string().contains("wraps"), "{err}");
    }
}
