//! The architecture facade of the kvm backend: the rest of the VMM (`mod.rs`,
//! `vcpu/`, `fixtures/`) names only these four sub-facades, so an aarch64
//! module offering the same names can slot in beside `x86_64`.
//!
//! * `boot`: VM-wide and per-vCPU setup, and loading the guest (Linux or a bare
//!   program) with its entry state;
//! * `cpuid`: the CPU model the guest is shown and the features it hides;
//! * `debug`: hardware breakpoints, single steps, the register snapshot;
//! * `paging`: guest-virtual to guest-physical translation.
//!
//! (Not to be confused with `crate::arch`, which names the guest architecture
//! and its register sets for the whole of memrace.)

#[cfg(target_arch = "x86_64")]
mod x86_64;

/// Bringing a VM up. Ordering rules are in the architecture's `boot` module.
pub mod boot {
    #[cfg(target_arch = "x86_64")]
    pub use super::x86_64::boot::{
        configure_vcpu, load_linux, ram_ranges, set_bare_entry, set_linux_entry,
        setup_vm_before_vcpus, write_system_tables, BootError, BootProtocol, LinuxImage, LoadError,
        MptableError, Platform, LONG_MODE_CODE_SELECTOR,
    };
}

/// The CPU the guest sees.
pub mod cpuid {
    #[cfg(target_arch = "x86_64")]
    pub use super::x86_64::cpuid::{
        kernel_params, CpuFeature, CpuidError, CpuidPolicy, KVM_PV_FEATURES_OFFERED, KVM_SIGNATURE,
    };
}

/// Breakpoints, single steps and registers of a stopped vCPU.
pub mod debug {
    #[cfg(target_arch = "x86_64")]
    pub use super::x86_64::debug::{
        arm_single_step, cancel_suppression, interrupted_at, position, set_breakpoints, set_regs,
        snapshot, suppress_breakpoint_once, suppression_pending, DebugError, StepMode,
        MAX_BREAKPOINTS,
    };
}

/// Walking the guest's page tables.
pub mod paging {
    #[cfg(target_arch = "x86_64")]
    pub use super::x86_64::paging::{translate, PagingError, PagingState};
}
