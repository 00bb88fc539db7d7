//! Mailbox gates: an mlocked page whose u32 words the bench sets (by guest-physical
//! address) to release threads spinning on them in user mode.

use std::time::{Duration, Instant};

use control_proto::Message;

use crate::control;
use crate::error::{self, Res};
use crate::mem::{self, Mapping, PAGE};

/// Gate words in one page.
pub const WORDS: usize = PAGE / 4;

/// One locked page of gate words, with its guest-physical address.
pub struct Gate {
    page: Mapping,
    gpa: u64,
    /// TSC ticks per millisecond, so that the spin bound needs no system call.
    tsc_per_ms: u64,
}

/// The TSC rate, measured once per boot.
fn tsc_per_ms() -> u64 {
    static RATE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RATE.get_or_init(calibrate_tsc)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (user mode may use it on Linux/x86_64).
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Measure the TSC rate against the monotonic clock (20 ms).
fn calibrate_tsc() -> u64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(20));
    let (ms, c1) = (t0.elapsed().as_secs_f64() * 1000.0, rdtsc());
    ((c1.wrapping_sub(c0)) as f64 / ms).max(1.0) as u64
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
            tsc_per_ms: tsc_per_ms(),
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
    /// kept with RDTSC, so the thread never enters the kernel while it waits (without a vDSO
    /// clocksource, reading the clock would be a system call).
    pub fn wait(&self, index: usize, timeout: Duration) -> Res<()> {
        assert!(index < WORDS);
        let word = self.page.ptr().cast::<u32>().wrapping_add(index);
        let limit = (timeout.as_millis() as u64).saturating_mul(self.tsc_per_ms);
        let start = rdtsc();
        loop {
            for _ in 0..256 {
                // SAFETY: `word` is an aligned u32 inside the locked page owned by `self`;
                // the bench writes it from outside, hence the volatile read.
                if unsafe { std::ptr::read_volatile(word) } != 0 {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            if rdtsc().wrapping_sub(start) >= limit {
                return Err("gate-timeout".into());
            }
        }
    }
}
