//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! The kick is a real-time signal sent to the thread. Its handler sets
//! `immediate_exit` in that thread's `kvm_run`, so a kick that lands just
//! before the thread enters `KVM_RUN` is not lost: the ioctl returns EINTR at
//! once instead of running the guest.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The `kvm_run` of the vCPU this thread drives; null on other threads.
    static THIS_THREAD_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_signal: c_int, _info: *mut libc::siginfo_t, _context: *mut c_void) {
    THIS_THREAD_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` was registered by this very thread and points at its vCPU's
            // mmapped `kvm_run`, which stays mapped until the thread unregisters it.
            // A volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Install the process-wide handler (once).
pub fn install_handler() -> Result<(), std::io::Error> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

/// Called on a vCPU thread: kicks to this thread now set `run.immediate_exit`.
pub fn register_this_thread(run: *mut kvm_run) {
    THIS_THREAD_RUN.with(|cell| cell.set(run));
}

/// Called on a vCPU thread before its `kvm_run` is unmapped.
pub fn unregister_this_thread() {
    THIS_THREAD_RUN.with(|cell| cell.set(null_mut()));
}

/// Kick the thread `thread` (a vCPU thread that has not been joined yet).
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: callers pass the pthread_t of a thread whose JoinHandle they still
    // hold, so the id is valid; the signal's handler is installed before any
    // vCPU thread exists. A failure (ESRCH after the thread ended) is harmless.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
