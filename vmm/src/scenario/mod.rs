//! Scenarios: files, runs, verdicts.

pub mod file;
pub mod run;
pub mod verdict;
