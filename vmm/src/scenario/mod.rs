//! Scenarios: files, runs, verdicts.

pub mod exec;
pub mod file;
pub mod orchestrate;
pub mod run;
pub mod verdict;
