pub mod boot;
pub mod kernel;
