//! `syscall-pair`: the schedule engine's real-kernel self-test. Thread "a" (CPU a_cpu)
//! calls getppid(2) and thread "b" (CPU b_cpu) calls getpid(2) once their gates open,
//! while a "noise" thread on a's CPU calls getppid(2) in a loop, so that a breakpoint
//! on the getppid entry point (`__x64_sys_getppid`, on arm64 `__arm64_sys_getppid`) is
//! also hit by a task the schedule's condition must filter out.
//! With `b_unmaps 1`, b first unmaps a page it touched: the TLB shootdown IPIs every CPU
//! of the mm, including a's, so if a is parked in the kernel b only gets to getpid once
//! the bench re-enters a's vCPU to take the IPI (the engine's parked-vCPU servicing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use control_proto::Outcome;

use super::race::{self, Action, Racer, StartMode};
use super::{Trial, Workload};
use crate::error::Res;
use crate::gate::Gate;
use crate::job::Params;
use crate::mem::{Mapping, PAGE};
use crate::pin;

/// The noise thread stops after this long even if the racers never finish.
const NOISE_BOUND: Duration = Duration::from_secs(120);

pub struct SyscallPair {
    a_cpu: usize,
    b_cpu: usize,
    noise: bool,
    b_unmaps: bool,
    start: StartMode,
}

impl SyscallPair {
    pub fn new(params: &mut Params) -> Res<SyscallPair> {
        Ok(SyscallPair {
            a_cpu: params.take_cpu("a_cpu", 1)?,
            b_cpu: params.take_cpu("b_cpu", 2)?,
            noise: params.take_bool("noise", true)?,
            b_unmaps: params.take_bool("b_unmaps", false)?,
            start: StartMode::from_params(params)?,
        })
    }
}

impl Workload for SyscallPair {
    fn trial_timeout(&self) -> Duration {
        self.start.trial_timeout()
    }

    fn trial(&self, trial: &Trial) -> Res<()> {
        let gate = if self.start.gated {
            Some(Gate::new()?)
        } else {
            None
        };
        let stop = AtomicBool::new(false);
        let noise_calls = AtomicU64::new(0);
        let (ppid, pid) = (AtomicU64::new(0), AtomicU64::new(0));
        thread::scope(|s| -> Res<()> {
            if self.noise {
                let (stop, calls, cpu) = (&stop, &noise_calls, self.a_cpu);
                s.spawn(move || {
                    let started = Instant::now();
                    if pin::pin_to(cpu).is_err() {
                        return;
                    }
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < NOISE_BOUND {
                        // SAFETY: getppid has no arguments and no memory effects.
                        unsafe { libc::getppid() };
                        calls.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(1));
                    }
                });
            }
            let ppid_ref = &ppid;
            let a = Racer {
                name: "a",
                cpu: self.a_cpu,
                setup: Box::new(move || -> Res<Action> {
                    Ok(Box::new(move || {
                        // SAFETY: getppid has no arguments and no memory effects.
                        ppid_ref.store(unsafe { libc::getppid() } as u64, Ordering::SeqCst);
                        Ok(())
                    }))
                }),
            };
            let pid_ref = &pid;
            let b_unmaps = self.b_unmaps;
            let b = Racer {
                name: "b",
                cpu: self.b_cpu,
                setup: Box::new(move || -> Res<Action> {
                    let page = if b_unmaps {
                        let m = Mapping::private(PAGE)?;
                        m.fill(0x5B);
                        Some(m)
                    } else {
                        None
                    };
                    Ok(Box::new(move || {
                        // munmap of a present page: a synchronous TLB-flush IPI to every
                        // other CPU running this mm.
                        drop(page);
                        // SAFETY: getpid has no arguments and no memory effects.
                        pid_ref.store(unsafe { libc::getpid() } as u64, Ordering::SeqCst);
                        Ok(())
                    }))
                }),
            };
            let raced = race::race(self.start, gate.as_ref(), vec![a, b], &[0, 1]);
            stop.store(true, Ordering::Relaxed);
            raced
        })?;
        let detail = format!(
            "getppid={} getpid={} noise-calls={}",
            ppid.load(Ordering::SeqCst),
            pid.load(Ordering::SeqCst),
            noise_calls.load(Ordering::SeqCst)
        );
        trial.report(Outcome::Intact, &detail);
        Ok(())
    }
}
