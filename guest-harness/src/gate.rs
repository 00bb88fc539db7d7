//! Mailbox gates: an mlocked page whose u32 words the bench sets (by guest-physical
//! address) to release threads spinning on them in user mode.

use std::time::{Duration, Instant};

use control_proto::Message;

use crate::control;
use crate::error::{self, Res};
use crate::mem::{self, Mapping, PAGE};

/// One locked page of gate words, with its guest-physical address.
pub struct Gate {
    page: Mapping,
    gpa: u64,
}

impl Gate {
    /// Map, lock and zero a page, then find its physical address in /proc/self/pagemap.
    pub fn new() -> Res<Gate> {
        let page = Mapping::private(PAGE)?;
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
        })
    }

    /// Send `GATE <name> <gpa of word index>`.
    pub fn announce(&self, index: usize, name: &str) {
        control::send(&Message::Gate {
            name: name.to_string(),
            gpa: self.gpa + 4 * index as u64,
        });
    }

    /// Spin in user mode until word `index` is non-zero, at most `timeout`.
    /// The clock is read only every few thousand spins, so nearly all the time is spent in
    /// the volatile load + `pause` loop.
    pub fn wait(&self, index: usize, timeout: Duration) -> Res<()> {
        assert!(index < PAGE / 4);
        let word = self.page.ptr().cast::<u32>().wrapping_add(index);
        let start = Instant::now();
        loop {
            for _ in 0..4096 {
                // SAFETY: `word` is an aligned u32 inside the locked page owned by `self`;
                // the bench writes it from outside, hence the volatile read.
                if unsafe { std::ptr::read_volatile(word) } != 0 {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= timeout {
                return Err("gate-timeout".into());
            }
        }
    }
}
