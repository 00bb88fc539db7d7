//! x86_64 guests: the second 16550 UART, the TSC, and `tsc-early` until it is refined.

use std::time::Duration;

pub const NAME: &str = "x86_64";

/// The second serial port (qemu: `isa-serial` at 0x2f8; the kvm backend emulates one).
pub const CONTROL_TTY: &str = "/dev/ttyS1";
/// The 8250 driver registers its ports before init runs.
pub const CONTROL_TTY_WAIT: Duration = Duration::ZERO;

/// The time-stamp counter.
pub fn counter() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (user mode may use it on Linux/x86_64).
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// The TSC rate, measured once per process against the monotonic clock.
pub fn counter_ticks_per_ms() -> u64 {
    static RATE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| super::calibrate(counter))
}

/// x86's boot clocksource: always replaced, by `tsc` or (TSC unstable) another one, about
/// a second after TSC calibration (`tsc_refine_calibration_work`).
pub const BOOT_CLOCKSOURCE: Option<&str> = Some("tsc-early");

/// The clocksource `mode perf` times with.
pub const PERF_CLOCKSOURCE: &str = "tsc";
/// How to get it when the guest has another.
pub const PERF_CLOCKSOURCE_HINT: &str = "boot with tsc_early_khz= (memrace perf does)";
