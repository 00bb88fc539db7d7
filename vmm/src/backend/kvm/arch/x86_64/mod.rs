//! x86_64, by concern: bringing a VM up (`boot`), the CPU model (`cpuid`),
//! breakpoints and registers (`debug`), page-table walks (`paging`) and the
//! local APIC and in-kernel irqchip (`interrupts`).
//!
//! Ordering rules (KVM's, not ours), kept by `boot`:
//! * the in-kernel irqchip and PIT exist before any vCPU is created;
//! * `KVM_SET_CPUID2` comes before the MSRs (KVM validates MSRs against CPUID);
//! * the LAPIC is programmed after CPUID (the APIC id comes from it).

pub mod boot;
pub mod cpuid;
pub mod debug;
mod interrupts;
pub mod paging;
