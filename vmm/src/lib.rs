//! memrace: a hypervisor-level test bench for Linux memory-management races.

pub mod backend;
pub mod debug;
