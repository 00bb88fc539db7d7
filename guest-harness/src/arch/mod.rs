//! What differs between the guest architectures, behind the same names for each: the
//! harness is compiled once per guest architecture, so a `cfg(target_arch)` picks one.
//!
//! * [`NAME`]: the kernel's name for the architecture (`x86_64`, `arm64`).
//! * [`CONTROL_TTY`], [`CONTROL_TTY_WAIT`]: the control channel's tty and how long it may
//!   take to appear after init starts.
//! * [`counter`], [`counter_ticks_per_ms`]: a free-running counter user mode reads without
//!   entering the kernel (the gates' spin bound).
//! * [`BOOT_CLOCKSOURCE`]: a clocksource the kernel replaces after boot, if any.
//! * [`PERF_CLOCKSOURCE`], [`PERF_CLOCKSOURCE_HINT`]: the clocksource `mode perf` needs.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the guest harness runs on x86_64 and arm64 (aarch64) guests only");

use std::time::{Duration, Instant};

/// Measure `counter`'s rate in ticks per millisecond against the monotonic clock (20 ms).
fn calibrate(counter: fn() -> u64) -> u64 {
    let (t0, c0) = (Instant::now(), counter());
    std::thread::sleep(Duration::from_millis(20));
    let (ms, c1) = (t0.elapsed().as_secs_f64() * 1000.0, counter());
    ((c1.wrapping_sub(c0)) as f64 / ms).max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_advances_at_its_stated_rate() {
        let rate = counter_ticks_per_ms();
        assert!(rate > 0);
        let c0 = counter();
        std::thread::sleep(Duration::from_millis(50));
        let ticks = counter().wrapping_sub(c0);
        // At least the 50 ms slept (a loaded host or an emulator only adds to it).
        assert!(ticks >= rate * 45, "{ticks} ticks at {rate}/ms");
    }
}
