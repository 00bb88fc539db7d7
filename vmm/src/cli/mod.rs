pub mod bench;
pub mod boot;
pub mod kernel;
pub mod perf;
pub mod replay;
pub mod run;
