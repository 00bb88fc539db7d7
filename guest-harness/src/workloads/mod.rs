//! Workloads: each trial runs in a fresh forked process and ends with exactly one `RESULT`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use control_proto::{Message, Outcome};

use crate::child::{self, Ended};
use crate::control;
use crate::error::Res;
use crate::job::Params;
use crate::mem::{Mapping, PAGE};
use crate::pin;

mod exec;
mod fork_anon_vma;
mod madv_free_dio;
mod mremap_migration;
mod race;
mod syscall_pair;
mod thp_pmd;

pub use thp_pmd::smaps_field;

/// The housekeeping CPU: trial processes start here; racing threads pin elsewhere.
const HOUSEKEEPING_CPU: usize = 0;
/// How long the boot clocksource may take to be replaced (x86_64: about a second after
/// TSC calibration; see `system::settle_clocksource`).
const CLOCKSOURCE_BOUND: Duration = Duration::from_secs(15);

/// One scenario's guest side.
trait Workload {
    /// Once per boot, before the first trial (in PID 1).
    fn prepare(&self) -> Res<()> {
        Ok(())
    }
    /// Bound for one trial process; it is killed after this.
    fn trial_timeout(&self) -> Duration;
    /// One trial, in its own process. Must call [`Trial::report`] (once) or return `Err`.
    fn trial(&self, trial: &Trial) -> Res<()>;
}

/// Handle of the running trial. Its verdict slot lives in shared memory so that it also
/// works from a process forked by the trial, and so that the parent knows whether a
/// `RESULT` line went out.
pub struct Trial {
    number: u32,
    slot: Mapping,
}

impl Trial {
    fn new(number: u32) -> Res<Trial> {
        let slot = Mapping::anon(
            0,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )?;
        Ok(Trial { number, slot })
    }

    fn reported(&self) -> &AtomicU32 {
        // SAFETY: the slot page is mapped for the lifetime of `self`, zero-initialised and
        // suitably aligned; it is only ever accessed atomically.
        unsafe { &*self.slot.ptr().cast::<AtomicU32>() }
    }

    /// Send `RESULT <t> <outcome> <detail>` unless a verdict was already sent for this trial.
    pub fn report(&self, outcome: Outcome, detail: &str) {
        if self.reported().swap(1, Ordering::SeqCst) == 0 {
            control::send(&Message::Result {
                trial: self.number,
                outcome,
                detail: detail.to_string(),
            });
        }
    }
}

fn build(name: &str, params: &mut Params) -> Res<Box<dyn Workload>> {
    Ok(match name {
        "exec" => Box::new(exec::Exec::new(params)?),
        "madv-free-dio" => Box::new(madv_free_dio::MadvFreeDio::new(params)?),
        "fork-anon-vma" => Box::new(fork_anon_vma::ForkAnonVma::new(params)?),
        "thp-pmd" => Box::new(thp_pmd::ThpPmd),
        "mremap-migration" => Box::new(mremap_migration::MremapMigration::new(params)?),
        "syscall-pair" => Box::new(syscall_pair::SyscallPair::new(params)?),
        other => return Err(format!("unknown workload {other:?}")),
    })
}

/// Run `trials` trials of workload `name`. `Ok(0)` once all trials ran, whatever their verdicts.
pub fn run(name: &str, trials: u32, mut params: Params) -> Res<i32> {
    let workload = build(name, &mut params)?;
    params.finish()?;
    crate::mem::check_page_size()?;
    crate::system::settle_clocksource(CLOCKSOURCE_BOUND)?;
    workload.prepare()?;
    for t in 1..=trials {
        control::phase(&format!("trial-{t}"));
        let trial = Trial::new(t)?;
        let pid = child::fork(|| {
            let verdict = pin::pin_to(HOUSEKEEPING_CPU).and_then(|()| workload.trial(&trial));
            match verdict {
                Ok(()) => trial.report(Outcome::Error, "no-verdict"),
                Err(e) => trial.report(Outcome::Error, &e),
            }
            0
        })?;
        let ended = child::wait(pid, workload.trial_timeout(), pid)?;
        match ended {
            Ended::Exited(0) => trial.report(Outcome::Error, "no-verdict"),
            Ended::Exited(c) => trial.report(Outcome::Error, &format!("trial-process-exited-{c}")),
            Ended::Signaled(s) => trial.report(
                Outcome::Error,
                &format!("trial-process-killed-by-signal-{s}"),
            ),
            Ended::TimedOut => trial.report(Outcome::Error, "trial-timeout"),
        }
    }
    Ok(0)
}
