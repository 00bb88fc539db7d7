//! memrace: a hypervisor-level test bench for Linux memory-management races.

pub mod backend;
pub mod initramfs;
pub mod kernel;
pub mod guest;
pub mod console;
pub mod boot;
pub mod sched;
pub mod scenario;
pub mod report;
