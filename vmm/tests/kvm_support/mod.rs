//! Helpers shared by the kvm_* integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

use memrace::backend::kvm::{self, KvmOptions, KvmVm};
use memrace::backend::{Backend, VmEvent};

/// `LEVEL NOT RUN: ...` past libtest's capture, and into scripts/test's summary.
/// (Binaries with both `common` and `kvm_support` compile the file twice, harmlessly.)
#[allow(clippy::duplicate_mod)]
#[path = "../common/not_run.rs"]
mod not_run;
pub use not_run::level_not_run;

/// Options for this host, or `None` (after a loud line) when there is no usable KVM.
pub fn kvm_or_report(level: &str) -> Option<KvmOptions> {
    let probe = kvm::probe();
    if probe.can_run_vms() {
        eprintln!("{level}: running on {}", kvm::describe());
        Some(KvmOptions::for_host())
    } else {
        level_not_run(&format!("{level} — {}", probe.reason()));
        None
    }
}

/// Events until one satisfies `stop` (included), or panic at `limit` with what arrived.
pub fn events_until(
    vm: &mut KvmVm,
    limit: Duration,
    stop: impl Fn(&VmEvent) -> bool,
) -> Vec<VmEvent> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match vm.next_event(deadline) {
            Ok(Some(event)) => {
                let done = stop(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("no matching event within {limit:?}; got {seen:#?}"),
            Err(e) => panic!("backend error {e} after {seen:#?}"),
        }
    }
}

/// The next breakpoint event (console/control output is skipped); panics on anything else.
pub fn next_breakpoint(vm: &mut KvmVm, limit: Duration) -> (usize, u64) {
    let events = events_until(vm, limit, |e| {
        !matches!(e, VmEvent::Console(_) | VmEvent::Control(_))
    });
    match events.last() {
        Some(VmEvent::Breakpoint { vcpu, addr }) => (*vcpu, *addr),
        other => panic!("expected a breakpoint, got {other:?} (all: {events:#?})"),
    }
}

pub fn read_u64(vm: &KvmVm, gpa: u64) -> u64 {
    u64::from_le_bytes(vm.read_phys(gpa, 8).unwrap().try_into().unwrap())
}
