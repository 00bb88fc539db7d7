//! memrace: a hypervisor-level test bench for Linux memory-management races.

pub mod arch;
pub mod backend;
pub mod boot;
pub mod child;
pub mod console;
pub mod debug;
pub mod fsutil;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod perf;
pub mod report;
pub mod scenario;
pub mod sched;
pub mod validate;
