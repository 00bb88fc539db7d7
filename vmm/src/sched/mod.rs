//! The schedule engine: which vCPU runs, parks and is released, in what order.

pub mod cond;
pub mod engine;
pub mod hit;
pub mod schedule;
pub mod trace;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod fake;
