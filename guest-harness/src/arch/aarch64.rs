//! arm64 guests: a virtio console, the generic timer's virtual counter, and the
//! architected timer as the clocksource from the start.

use std::time::Duration;

pub const NAME: &str = "arm64";

/// The first virtio console port (qemu: `-device virtio-serial-device -device
/// virtconsole`). The machine's own UART (ttyAMA0) is the kernel console.
pub const CONTROL_TTY: &str = "/dev/hvc0";
/// virtio-console adds its ports from a work item once the device answers the driver's
/// "ready" message, which may run after init has started: until then `/dev/hvc0` is
/// missing or refuses to open (ENODEV).
pub const CONTROL_TTY_WAIT: Duration = Duration::from_secs(5);

/// The virtual count, CNTVCT_EL0. Linux lets EL0 read it (CNTKCTL_EL1.EL0VCTEN) unless a
/// CPU erratum makes it trap the read and emulate it, which would enter the kernel.
pub fn counter() -> u64 {
    let count: u64;
    // SAFETY: reads a system register EL0 may read on Linux; the `isb` keeps the read from
    // being performed ahead of the instructions before it. No memory or flags are touched.
    unsafe {
        std::arch::asm!(
            "isb",
            "mrs {count}, cntvct_el0",
            count = out(reg) count,
            options(nomem, nostack, preserves_flags),
        );
    }
    count
}

/// CNTFRQ_EL0: the counter's frequency in Hz, set by firmware (qemu: 62.5 MHz, or 1 GHz
/// for newer CPU models and machine types).
fn frequency() -> u64 {
    let hz: u64;
    // SAFETY: reads a system register EL0 may read on Linux; no memory or flags touched.
    unsafe {
        std::arch::asm!(
            "mrs {hz}, cntfrq_el0",
            hz = out(reg) hz,
            options(nomem, nostack, preserves_flags),
        );
    }
    hz
}

/// The counter's rate from CNTFRQ_EL0, or measured if firmware left it unset.
pub fn counter_ticks_per_ms() -> u64 {
    static RATE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| match frequency() / 1000 {
        0 => super::calibrate(counter),
        rate => rate,
    })
}

/// The architected timer (`arch_sys_counter`) is registered in time_init(), before any
/// initcall: there is no boot clocksource to wait out.
pub const BOOT_CLOCKSOURCE: Option<&str> = None;

/// The clocksource `mode perf` times with.
pub const PERF_CLOCKSOURCE: &str = "arch_sys_counter";
/// How to get it when the guest has another.
pub const PERF_CLOCKSOURCE_HINT: &str =
    "the kernel did not register the arm64 architected timer (CONFIG_ARM_ARCH_TIMER)";
