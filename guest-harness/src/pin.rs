//! CPU pinning and identity of the calling thread.

use crate::error::{self, Res};

/// Pin the calling thread to `cpu` (sched_setaffinity on tid 0 = this thread).
pub fn pin_to(cpu: usize) -> Res<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("cpu {cpu} out of range"));
    }
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE was checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size we pass.
    let ret = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    error::check(ret.into(), &format!("sched_setaffinity(cpu {cpu})")).map(drop)
}

/// The CPU the calling thread runs on.
pub fn current_cpu() -> u32 {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    cpu.max(0) as u32
}

/// The calling thread's task id.
pub fn tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}
