//! The architecture facade: the rest of the VMM calls these names only, so an
//! aarch64 module exposing the same functions can slot in beside x86_64.

#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{
    arm_single_step, configure_vcpu, kernel_params, load_linux, ram_ranges, set_bare_entry,
    set_breakpoints, set_linux_entry, setup_vm_before_vcpus, snapshot, translate,
    write_system_tables, BootError, BootProtocol, CpuidPolicy, DebugError, LinuxImage, LoadError,
    MptableError, PagingError, PagingState, Platform, StepMode, MAX_BREAKPOINTS,
};
