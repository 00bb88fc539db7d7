//! VMM micro-benchmarks on synthetic guests (and one on a real kernel), for
//! `memrace bench vmm` and `cargo bench --bench kvm`. Every wait is bounded.

use std::time::{Duration, Instant};

use super::fixtures;
use super::{launch, launch_program, BreakpointResume, KvmError, KvmOptions, KvmVm};
use crate::backend::{Backend, BackendError, VmConfig, VmEvent};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{what} did not finish within {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
    #[error("{what}: unexpected event {event:?}")]
    Unexpected { what: &'static str, event: VmEvent },
}

/// `iterations` repetitions of one operation took `total`.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub name: &'static str,
    pub iterations: u64,
    pub total: Duration,
}

impl Measurement {
    pub fn per_iteration(&self) -> Duration {
        self.total / self.iterations.max(1) as u32
    }
}

impl std::fmt::Display for Measurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<28} {:>10.2?} per iteration ({} in {:.2?})",
            self.name,
            self.per_iteration(),
            self.iterations,
            self.total
        )
    }
}

/// Wait for the next event that is not console/control output.
fn next_vm_event(
    vm: &mut KvmVm,
    what: &'static str,
    deadline: Instant,
    limit: Duration,
) -> Result<VmEvent, BenchError> {
    loop {
        match vm.next_event(deadline)? {
            None => return Err(BenchError::Timeout { what, limit }),
            Some(VmEvent::Console(_) | VmEvent::Control(_) | VmEvent::BadControl { .. }) => {}
            Some(event) => return Ok(event),
        }
    }
}

fn wait_exit(vm: &mut KvmVm, what: &'static str, limit: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + limit;
    match next_vm_event(vm, what, deadline, limit)? {
        VmEvent::Exited(_) => Ok(()),
        event => Err(BenchError::Unexpected { what, event }),
    }
}

/// One guest `out` to a no-op port, through KVM to the device model and back.
pub fn port_io_round_trip(
    opts: &KvmOptions,
    iterations: u64,
    limit: Duration,
) -> Result<Measurement, BenchError> {
    let mut vm = launch_program(&fixtures::port_io_loop(iterations), opts)?;
    let start = Instant::now();
    vm.resume(&[0])?;
    wait_exit(&mut vm, "port-IO loop", limit)?;
    Ok(Measurement {
        name: "port-IO exit round trip",
        iterations,
        total: start.elapsed(),
    })
}

/// One hardware-breakpoint exit, reported as an event, and the resume past it:
/// RFLAGS.RF where KVM honours it, else single steps (see `KvmVm::breakpoint_resume`,
/// which the measurement's name reports).
pub fn breakpoint_round_trip(
    opts: &KvmOptions,
    iterations: u64,
    limit: Duration,
) -> Result<Measurement, BenchError> {
    let fixture = fixtures::breakpoint_loop(iterations);
    let mut vm = launch_program(&fixture.program, opts)?;
    vm.set_breakpoints(0, &[fixture.target])?;
    let deadline = Instant::now() + limit;
    let start = Instant::now();
    vm.resume(&[0])?;
    loop {
        match next_vm_event(&mut vm, "breakpoint loop", deadline, limit)? {
            VmEvent::Breakpoint { vcpu: 0, .. } => vm.resume(&[0])?,
            VmEvent::Exited(_) => break,
            event => {
                return Err(BenchError::Unexpected {
                    what: "breakpoint loop",
                    event,
                })
            }
        }
    }
    let total = start.elapsed();
    Ok(Measurement {
        name: match vm.breakpoint_resume() {
            BreakpointResume::ResumeFlag => "breakpoint exit round trip (RF resume)",
            BreakpointResume::SingleStep => "breakpoint exit round trip (single-step resume)",
        },
        iterations,
        total,
    })
}

/// Create a 2-vCPU VM, run a guest that exits at once, destroy the VM.
pub fn create_destroy(
    opts: &KvmOptions,
    rounds: u64,
    limit: Duration,
) -> Result<Measurement, BenchError> {
    let start = Instant::now();
    for _ in 0..rounds {
        let mut program = fixtures::port_io_loop(1);
        // A second vCPU runs the same code; whichever exits first ends the VM.
        program.entries.push(program.entries[0]);
        program.start_running = true;
        let mut vm = launch_program(&program, opts)?;
        wait_exit(&mut vm, "create/run/destroy", limit)?;
        vm.kill();
    }
    Ok(Measurement {
        name: "VM create+run+destroy",
        iterations: rounds,
        total: start.elapsed(),
    })
}

/// From `launch` to the boot vCPU reaching `start_kernel` (a hardware breakpoint at
/// `start_kernel_addr`, the symbol's virtual address).
pub fn time_to_start_kernel(
    cfg: &VmConfig,
    opts: &KvmOptions,
    start_kernel_addr: u64,
    limit: Duration,
) -> Result<Measurement, BenchError> {
    let mut cfg = cfg.clone();
    cfg.debug = true;
    let start = Instant::now();
    let mut vm = launch(&cfg, opts)?;
    vm.set_breakpoints(0, &[start_kernel_addr])?;
    let all: Vec<usize> = (0..vm.vcpu_count()).collect();
    vm.resume(&all)?;
    let deadline = start + limit;
    match next_vm_event(&mut vm, "boot to start_kernel", deadline, limit)? {
        VmEvent::Breakpoint { vcpu: 0, addr } if addr == start_kernel_addr => {}
        event => {
            return Err(BenchError::Unexpected {
                what: "boot to start_kernel",
                event,
            })
        }
    }
    Ok(Measurement {
        name: "launch to start_kernel",
        iterations: 1,
        total: start.elapsed(),
    })
}
