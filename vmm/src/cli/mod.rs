pub mod bench;
pub mod boot;
pub mod kernel;
pub mod perf;
pub mod replay;
pub mod run;
pub mod validate;

/// `runs/<name>-<unix seconds>`, the default result directory of a command.
pub fn stamped_runs_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(std::path::PathBuf::from("runs").join(format!("{name}-{stamp}")))
}
