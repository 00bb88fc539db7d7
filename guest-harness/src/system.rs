//! PID-1 chores: mounts, standard descriptors, facts about the machine, reboot.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::arch;
use crate::control;
use crate::error::{self, Res};

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes. x86_64 and arm64 both use
/// the generic ioctl encoding and an 8-byte size_t, so the number is the same on both.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn mount(source: &str, target: &str, fstype: &str) -> Res<()> {
    fs::create_dir_all(target).map_err(|e| error::describe(&format!("mkdir {target}"), &e))?;
    let c = |s: &str| CString::new(s).expect("static mount strings have no NUL");
    let (src, tgt, ty) = (c(source), c(target), c(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings; `data` may be NULL.
    let ret = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if ret != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
        return Err(error::last(&format!("mount {fstype} on {target}")));
    }
    Ok(())
}

/// Mount proc, sysfs, devtmpfs, cgroup2 and a tmpfs (already-mounted is fine).
pub fn mount_all() -> Res<()> {
    mount("proc", "/proc", "proc")?;
    mount("sysfs", "/sys", "sysfs")?;
    mount("devtmpfs", "/dev", "devtmpfs")?;
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2")?;
    mount("tmpfs", "/tmp", "tmpfs")
}

/// Make sure descriptors 0–2 are open. Without `/dev/console` in the initramfs the kernel
/// starts init with them closed, and the next `open` would silently become "stdout".
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
            .or_else(|_| {
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        if let Ok(file) = file {
            // SAFETY: dup2 between two descriptors we own; the original closes on drop.
            unsafe { libc::dup2(file.as_raw_fd(), fd) };
        }
    }
}

/// Size of `/dev/ram0` in bytes (brd), via BLKGETSIZE64.
pub fn ram0_size() -> Res<u64> {
    let dev = fs::File::open("/dev/ram0").map_err(|e| error::describe("open /dev/ram0", &e))?;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the valid pointer we pass.
    let ret = unsafe { libc::ioctl(dev.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if ret != 0 {
        return Err(error::last("ioctl(/dev/ram0, BLKGETSIZE64)"));
    }
    Ok(size)
}

/// Online CPUs: the `processor` lines of /proc/cpuinfo.
pub fn cpu_count(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count()
}

/// The value of `key` (e.g. `MemTotal`) in /proc/meminfo-style text, in its unit (kB).
pub fn meminfo_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// NUMA nodes: `/sys/devices/system/node/node<N>` directories (at least 1).
pub fn numa_nodes() -> usize {
    let count = fs::read_dir("/sys/devices/system/node")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("node")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0);
    count.max(1)
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Send the boot facts: arch, cpus, mem_total_kb, kernel, numa_nodes, ram0_bytes.
pub fn send_facts(ram0: &Res<u64>) {
    control::fact("arch", arch::NAME);
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    control::fact("cpus", cpu_count(&cpuinfo));
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    control::fact(
        "mem_total_kb",
        meminfo_value(&meminfo, "MemTotal").unwrap_or(0),
    );
    control::fact("kernel", kernel_release());
    control::fact("numa_nodes", numa_nodes());
    match ram0 {
        Ok(size) => control::fact("ram0_bytes", size),
        Err(e) => {
            control::fact("ram0_bytes", "missing");
            control::note(e);
        }
    }
}

/// Where the kernel names its clocksource.
const CURRENT_CLOCKSOURCE: &str =
    "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// Wait (bounded) until the architecture's boot clocksource, if it has one, has been
/// replaced, and report the one in use as `FACT clocksource` (and the wait as `FACT
/// clocksource_wait_ms`). Workloads and perf call this before their first trial.
///
/// x86_64 boots on `tsc-early`: about a second after TSC calibration the kernel's delayed
/// work `tsc_refine_calibration_work` swaps it for `tsc` (or, if calibration failed,
/// unregisters it), and the switch runs under stop_machine(): every CPU must join it, so it
/// would stall behind a vCPU that a schedule parked (docs/schedules.md, deadlock rule R1)
/// and end that trial as infeasible. arm64's architected timer is the clocksource from
/// time_init() on, so there the first read is the answer.
/// Returns the clocksource in use (empty if it cannot be read).
pub fn settle_clocksource(bound: Duration) -> Res<String> {
    let started = std::time::Instant::now();
    loop {
        let current = match fs::read_to_string(CURRENT_CLOCKSOURCE) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                control::note(&error::describe(&format!("read {CURRENT_CLOCKSOURCE}"), &e));
                return Ok(String::new());
            }
        };
        let Some(transient) = arch::BOOT_CLOCKSOURCE.filter(|t| *t == current) else {
            control::fact("clocksource", &current);
            control::fact("clocksource_wait_ms", started.elapsed().as_millis());
            return Ok(current);
        };
        if started.elapsed() >= bound {
            return Err(format!(
                "the clocksource is still {transient} after {} s: its replacement (a stop_machine) would stall a parked vCPU's trial",
                bound.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Best-effort hardening of the gate pages: mlocked pages must not move (compaction may
/// migrate unevictable pages unless told not to). Absent without CONFIG_COMPACTION.
pub fn pin_unevictable_pages() {
    let knob = Path::new("/proc/sys/vm/compact_unevictable_allowed");
    if knob.exists() {
        if let Err(e) = fs::write(knob, "0") {
            control::note(&error::describe("write compact_unevictable_allowed", &e));
        }
    }
}

/// Flush, drain the control channel and reboot (the bench runs qemu with -no-reboot).
/// Outside PID 1 (a host test run) just exit with `code`.
pub fn finish(code: i32) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    control::drain(Duration::from_secs(5));
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        std::process::exit(code);
    }
    // SAFETY: reboot only affects the (guest) machine, which is what PID 1 wants here.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_RESTART) };
    eprintln!(
        "memrace-harness: reboot failed: {}",
        std::io::Error::last_os_error()
    );
    // PID 1 must not exit (that is a kernel panic); wait for the bench's timeout.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_processors_and_reads_meminfo() {
        let cpuinfo =
            "processor\t: 0\nvendor_id\t: x\n\nprocessor\t: 1\nmodel name\t: processor thing\n";
        assert_eq!(cpu_count(cpuinfo), 2);
        // arm64's format: one block per CPU, no model name.
        let arm64 = "processor\t: 0\nBogoMIPS\t: 125.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n\nprocessor\t: 1\nBogoMIPS\t: 125.00\n";
        assert_eq!(cpu_count(arm64), 2);
        let meminfo = "MemTotal:         492872 kB\nMemFree:          460000 kB\n";
        assert_eq!(meminfo_value(meminfo, "MemTotal"), Some(492872));
        assert_eq!(meminfo_value(meminfo, "MemAvail"), None);
    }
}
