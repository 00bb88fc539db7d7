//! Mailbox gates: an mlocked page whose u32 words the bench sets (by guest-physical
//! address) to release threads spinning on them in user mode.

use std::time::Duration;

use control_proto::Message;

use crate::arch;
use crate::control;
use crate::error::{self, Res};
use crate::mem::{self, Mapping, PAGE};

/// Gate words in one page.
pub const WORDS: usize = PAGE / 4;

/// One locked page of gate words, with its guest-physical address.
pub struct Gate {
    page: Mapping,
    gpa: u64,
    /// Counter ticks per millisecond, so that the spin bound needs no system call.
    ticks_per_ms: u64,
}

impl Gate {
    /// Map, lock and zero a page, then find its physical address in /proc/self/pagemap.
    pub fn new() -> Res<Gate> {
        Gate::lock(Mapping::private(PAGE)?)
    }

    /// A gate page in a memfd, shared with whoever maps `fd` (a user program, through
    /// memrace.h).
    pub fn shared(fd: &std::os::fd::OwnedFd) -> Res<Gate> {
        Gate::lock(Mapping::shared(fd, PAGE)?)
    }

    /// Lock and zero `page`, then find its physical address.
    fn lock(page: Mapping) -> Res<Gate> {
        page.madvise(
            0,
            PAGE,
            libc::MADV_NOHUGEPAGE,
            "madvise(gate, MADV_NOHUGEPAGE)",
        )?;
        // SAFETY: the range is exactly the page we own.
        let ret = unsafe { libc::mlock(page.ptr().cast(), PAGE) };
        error::check(ret.into(), "mlock(gate)")?;
        page.fill(0);
        let info = mem::pagemap(page.addr(), 1)?[0];
        if !info.present || info.pfn == 0 {
            return Err(format!("gate page not resolved in pagemap: {info:?}"));
        }
        Ok(Gate {
            page,
            gpa: info.pfn * PAGE as u64,
            ticks_per_ms: arch::counter_ticks_per_ms(),
        })
    }

    /// Send `GATE <name> <gpa of word index>`.
    pub fn announce(&self, index: usize, name: &str) {
        control::send(&Message::Gate {
            name: name.to_string(),
            gpa: self.gpa(index),
        });
    }

    /// Guest-physical address of word `index`.
    pub fn gpa(&self, index: usize) -> u64 {
        assert!(index < WORDS);
        self.gpa + 4 * index as u64
    }

    /// Spin in user mode until word `index` is non-zero, at most `timeout`. The bound is
    /// kept with the architecture's user-mode counter (x86: the TSC; arm64: CNTVCT_EL0), so
    /// the thread never enters the kernel while it waits (without a vDSO clocksource,
    /// reading the clock would be a system call).
    pub fn wait(&self, index: usize, timeout: Duration) -> Res<()> {
        assert!(index < WORDS);
        let word = self.page.ptr().cast::<u32>().wrapping_add(index);
        let limit = (timeout.as_millis() as u64).saturating_mul(self.ticks_per_ms);
        let start = arch::counter();
        loop {
            for _ in 0..256 {
                // SAFETY: `word` is an aligned u32 inside the locked page owned by `self`;
                // the bench writes it from outside, hence the volatile read.
                if unsafe { std::ptr::read_volatile(word) } != 0 {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            if arch::counter().wrapping_sub(start) >= limit {
                return Err("gate-timeout".into());
            }
        }
    }
}
