//! `fork-anon-vma` (docs/scenario-source-notes.md §C): after a VMA split and fork, the
//! child's COW copy of the second page must be reachable by rmap. The child makes it
//! lazyfree and pages it out: a correct kernel discards it (reads zero), a buggy one cannot
//! find the mapping (old data). `warn_check 1` then unmaps the first page, which fires a
//! DEBUG_VM warning on buggy kernels, and sends `PHASE munmap-done` once the munmap
//! returned. `uaf_check 1` (for KASAN kernels booted with `panic_on_warn=0`) then waits for
//! an RCU grace period — the buggy munmap freed the child's anon_vma, and SLUB_RCU_DEBUG
//! defers that free by one — and pages the COW page out again: that rmap walk uses the
//! freed anon_vma (a KASAN use-after-free). `PHASE uaf-check-done` follows, and `PHASE
//! checks-done` ends every trial.

use std::time::Duration;

use control_proto::Outcome;

use super::{Trial, Workload};
use crate::child::{self, Ended};
use crate::control;
use crate::error::{self, Res};
use crate::job::Params;
use crate::mem::{Mapping, PAGE};
use crate::pin;

const PARENT_BYTE: u8 = 0x11;
const CHILD_BYTE: u8 = 0x22;

pub struct ForkAnonVma {
    warn_check: bool,
    uaf_check: bool,
    cpu: usize,
}

impl ForkAnonVma {
    pub fn new(params: &mut Params) -> Res<ForkAnonVma> {
        let warn_check = params.take_bool("warn_check", true)?;
        let uaf_check = params.take_bool("uaf_check", false)?;
        if uaf_check && !warn_check {
            return Err(
                "param uaf_check 1 needs warn_check 1 (the munmap frees the anon_vma)".into(),
            );
        }
        Ok(ForkAnonVma {
            warn_check,
            uaf_check,
            cpu: params.take_cpu("cpu", 0)?,
        })
    }
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL)`: returns after an RCU grace period (synchronize_rcu).
fn rcu_grace_period() -> Res<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    error::check(
        ret,
        "membarrier(MEMBARRIER_CMD_GLOBAL) (needs CONFIG_MEMBARRIER)",
    )
    .map(drop)
}

/// The child's side: COW, lazyfree, page out, look.
fn child_side(trial: &Trial, p: &Mapping, checks: &ForkAnonVma) -> Res<()> {
    let second = p.ptr().wrapping_add(PAGE);
    // SAFETY: the second page of the live two-page mapping; no Rust references point into it.
    unsafe { std::ptr::write_bytes(second, CHILD_BYTE, PAGE) };
    p.madvise(PAGE, PAGE, libc::MADV_FREE, "madvise(MADV_FREE)")?;
    p.madvise(PAGE, PAGE, libc::MADV_PAGEOUT, "madvise(MADV_PAGEOUT)")?;
    // SAFETY: as above; the page is mapped (possibly re-faulted as zero) and readable.
    let data = unsafe { std::slice::from_raw_parts(second, PAGE) };
    if data.iter().all(|&b| b == CHILD_BYTE) {
        trial.report(Outcome::Reproduced, "rmap-walk-missed-child-cow-page");
    } else if data.iter().all(|&b| b == 0) {
        trial.report(Outcome::Intact, "page-discarded");
    } else {
        let off = data.iter().position(|&b| b != 0).unwrap_or(0);
        trial.report(
            Outcome::Error,
            &format!(
                "unexpected-content offset={off:#x} value={:#04x}",
                data[off]
            ),
        );
    }
    if checks.warn_check {
        // SAFETY: unmaps the first page of our own mapping, which nothing references. The
        // child `_exit`s right after this, so the Mapping is never dropped in this process.
        let ret = unsafe { libc::munmap(p.ptr().cast(), PAGE) };
        error::check(ret.into(), "munmap(first page)")?;
        // A buggy kernel warned (and panicked) inside that munmap; a scenario can wait for
        // this marker so the bench sees the warning before it judges the trial.
        control::phase("munmap-done");
    }
    if checks.uaf_check {
        rcu_grace_period()?;
        p.madvise(
            PAGE,
            PAGE,
            libc::MADV_PAGEOUT,
            "madvise(MADV_PAGEOUT) after munmap",
        )?;
        control::phase("uaf-check-done");
    }
    // The last check is done: a scenario waits for this, so that whatever the kernel
    // printed on the way (WARN, KASAN) is on the console before the trial is judged.
    control::phase("checks-done");
    Ok(())
}

impl Workload for ForkAnonVma {
    fn trial_timeout(&self) -> Duration {
        Duration::from_secs(120)
    }

    fn trial(&self, trial: &Trial) -> Res<()> {
        // The whole trial (and the forked child) stays on one CPU: MADV_FREE queues the folio
        // in this CPU's lazyfree batch and MADV_PAGEOUT drains only its own CPU's batch.
        pin::pin_to(self.cpu)?;
        let p = Mapping::private(2 * PAGE)?;
        p.fill(PARENT_BYTE);
        p.madvise(
            PAGE,
            PAGE,
            libc::MADV_NOHUGEPAGE,
            "madvise(MADV_NOHUGEPAGE)",
        )?;
        let pid = child::fork(|| {
            if let Err(e) = child_side(trial, &p, self) {
                trial.report(Outcome::Error, &e);
            }
            0
        })?;
        match child::wait(pid, Duration::from_secs(60), pid)? {
            Ended::Exited(0) => Ok(()),
            other => Err(format!("child-ended-{other:?}")),
        }
    }
}
