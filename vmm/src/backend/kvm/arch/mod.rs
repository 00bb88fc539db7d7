//! The architecture facade: the rest of the VMM calls these names only, so an
//! aarch64 module exposing the same functions can slot in beside x86_64.

#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{
    arm_single_step, cancel_suppression, configure_vcpu, interrupted_at, kernel_params, load_linux,
    position, ram_ranges, set_bare_entry, set_breakpoints, set_linux_entry, set_regs,
    setup_vm_before_vcpus, snapshot, suppress_breakpoint_once, suppression_pending, translate,
    write_system_tables, BootError, BootProtocol, CpuFeature, CpuidError, CpuidPolicy, DebugError,
    LinuxImage, LoadError, MptableError, PagingError, PagingState, Platform, StepMode,
    KVM_PV_FEATURES_OFFERED, KVM_SIGNATURE, LONG_MODE_CODE_SELECTOR, MAX_BREAKPOINTS,
};
