//! `mremap-migration` (docs/scenario-source-notes.md §B): move_pages() migrating a page
//! (thread "migrator") while mremap() moves it back into the VMA it came from (thread
//! "remapper"). Without the rmap locks a migration entry is left behind at the destination;
//! touching it BUGs.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use control_proto::Outcome;

use super::race::{self, Action, Racer, StartMode};
use super::{Trial, Workload};
use crate::control;
use crate::error::{self, Res};
use crate::gate::Gate;
use crate::job::Params;
use crate::mem::{Mapping, PAGE};
use crate::system;

const X: usize = 0x4_0000_0000;
const Y: usize = 0x8_0000_0000;
const MPOL_MF_MOVE: libc::c_int = 1 << 1;

pub struct MremapMigration {
    migrator_cpu: usize,
    remapper_cpu: usize,
    start: StartMode,
}

impl MremapMigration {
    pub fn new(params: &mut Params) -> Res<MremapMigration> {
        Ok(MremapMigration {
            migrator_cpu: params.take_cpu("migrator_cpu", 1)?,
            remapper_cpu: params.take_cpu("remapper_cpu", 2)?,
            start: StartMode::from_params(params)?,
        })
    }
}

/// move_pages(2) of one page of this process: `node` None queries, Some moves.
/// Returns the per-page status (a node number, or -errno).
fn move_page(addr: usize, node: Option<libc::c_int>) -> Res<libc::c_int> {
    let pages = [addr as *mut libc::c_void];
    let nodes = node.map(|n| [n]);
    let nodes_ptr = nodes.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
    let mut status: [libc::c_int; 1] = [i32::MIN];
    let flags = if node.is_some() { MPOL_MF_MOVE } else { 0 };
    // SAFETY: the arrays hold one element each, matching count 1; pid 0 is this process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            1,
            pages.as_ptr(),
            nodes_ptr,
            status.as_mut_ptr(),
            flags,
        )
    };
    error::check(ret, "move_pages")?;
    Ok(status[0])
}

/// mremap(old, P, P, MREMAP_MAYMOVE|MREMAP_FIXED, new).
fn mremap_page(old: usize, new: usize) -> Res<()> {
    // SAFETY: moves one page of this process' own anonymous memory to a chosen address that
    // this workload reserved for it; no Rust references point into either range.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mremap,
            old,
            PAGE,
            PAGE,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            new,
        )
    };
    match error::check(ret, &format!("mremap({old:#x} -> {new:#x})"))? as usize {
        got if got == new => Ok(()),
        got => Err(format!("mremap moved to {got:#x}, want {new:#x}")),
    }
}

impl Workload for MremapMigration {
    fn trial_timeout(&self) -> Duration {
        self.start.trial_timeout()
    }

    fn trial(&self, trial: &Trial) -> Res<()> {
        let nodes = system::numa_nodes();
        if nodes < 2 {
            trial.report(Outcome::Error, "needs-2-numa-nodes");
            return Ok(());
        }
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let x = Mapping::anon(
            X,
            3 * PAGE,
            rw,
            libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
        )?;
        if x.addr() != X {
            return Err(format!("mmap placed X at {:#x}", x.addr()));
        }
        x.madvise(
            0,
            3 * PAGE,
            libc::MADV_NOHUGEPAGE,
            "madvise(MADV_NOHUGEPAGE)",
        )?;
        for i in 0..3 {
            // SAFETY: page i of the live three-page mapping X.
            unsafe { std::ptr::write_bytes(x.ptr().wrapping_add(i * PAGE), 0x10 + i as u8, PAGE) };
        }
        // From here on the process owns [X, X+2P) and [Y, Y+P); the trial process exits
        // without unmapping them.
        let x = x.leak();
        let x2 = x + 2 * PAGE;
        mremap_page(x2, Y)?;
        let source = move_page(Y, None)?;
        if source < 0 {
            return Err(format!("move_pages query status {source}"));
        }
        let target = if source == 0 { 1 } else { 0 };
        control::fact("addr.y", format!("{Y:#x}"));
        control::fact("addr.x2", format!("{x2:#x}"));
        let gate = if self.start.gated {
            Some(Gate::new()?)
        } else {
            None
        };
        let status = AtomicI32::new(i32::MIN);
        let status_ref = &status;
        let migrator = Racer {
            name: "migrator",
            cpu: self.migrator_cpu,
            setup: Box::new(move || -> Res<Action> {
                Ok(Box::new(move || {
                    status_ref.store(move_page(Y, Some(target))?, Ordering::SeqCst);
                    control::phase("migrate-done");
                    Ok(())
                }))
            }),
        };
        let remapper = Racer {
            name: "remapper",
            cpu: self.remapper_cpu,
            setup: Box::new(move || -> Res<Action> {
                Ok(Box::new(move || {
                    mremap_page(Y, x2)?;
                    control::phase("mremap-done");
                    Ok(())
                }))
            }),
        };
        race::race(self.start, gate.as_ref(), vec![migrator, remapper], &[0, 1])?;
        // The oracle: on a buggy kernel this access hits the leftover migration entry.
        // SAFETY: X+2P is mapped again (mremap back succeeded) and readable.
        let value = unsafe { std::ptr::read_volatile(x2 as *const u8) };
        let status = status.load(Ordering::SeqCst);
        let now = move_page(x2, None).unwrap_or(i32::MIN);
        let detail = format!(
            "value={value:#04x} status={status} source={source} target={target} node-now={now}"
        );
        if value != 0x12 {
            trial.report(Outcome::Reproduced, &detail);
        } else if status == target {
            trial.report(Outcome::Intact, &format!("migrated {detail}"));
        } else if status == -libc::ENOENT || status == -libc::EFAULT {
            // move_pages ran after the page had left Y: a legitimate ordering, nothing moved.
            trial.report(Outcome::Intact, &format!("mremap-first {detail}"));
        } else {
            trial.report(Outcome::Error, &format!("move_pages-status {detail}"));
        }
        Ok(())
    }
}
