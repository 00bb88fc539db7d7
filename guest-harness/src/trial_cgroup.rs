//! The per-trial cgroup (v2) of the `exec` workload: every program of a trial runs in it,
//! under a memory bound, and the whole group is killed when the trial ends, so nothing a
//! program started (a fork bomb's children, a daemon) survives into the next trial.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{self, Res};
use crate::job::Params;

const ROOT: &str = "/sys/fs/cgroup";
/// Without a scenario limit, programs get this share of guest RAM: a memory hog is
/// OOM-killed inside its cgroup and PID 1 keeps running.
const DEFAULT_SHARE: (u64, u64) = (3, 4);

/// `memory_max` / `memory_high` in bytes (the host converts `64M`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
}

impl Limits {
    pub fn from_params(params: &mut Params) -> Res<Limits> {
        let mut take = |name: &str| -> Res<Option<u64>> {
            Ok(match params.take_u64(name, 0)? {
                0 => None,
                n => Some(n),
            })
        };
        Ok(Limits {
            memory_max: take("memory_max")?,
            memory_high: take("memory_high")?,
        })
    }
}

/// Let child cgroups of the root use the memory controller (once per boot).
pub fn enable_controllers() -> Res<()> {
    std::fs::write(format!("{ROOT}/cgroup.subtree_control"), "+memory")
        .map_err(|e| error::describe("enable the cgroup memory controller", &e))
}

pub struct TrialCgroup {
    dir: PathBuf,
}

fn write(path: PathBuf, value: &str) -> Res<()> {
    std::fs::write(&path, value)
        .map_err(|e| error::describe(&format!("write {value} to {}", path.display()), &e))
}

impl TrialCgroup {
    pub fn create(trial: u32, limits: &Limits) -> Res<TrialCgroup> {
        let dir = PathBuf::from(format!("{ROOT}/memrace-trial-{trial}"));
        std::fs::create_dir(&dir)
            .map_err(|e| error::describe(&format!("mkdir {}", dir.display()), &e))?;
        let cg = TrialCgroup { dir };
        let max = match limits.memory_max {
            Some(m) => m,
            None => {
                let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
                let total_kb = crate::system::meminfo_value(&meminfo, "MemTotal").unwrap_or(0);
                total_kb * 1024 * DEFAULT_SHARE.0 / DEFAULT_SHARE.1
            }
        };
        if max > 0 {
            write(cg.dir.join("memory.max"), &max.to_string())?;
        }
        if let Some(high) = limits.memory_high {
            write(cg.dir.join("memory.high"), &high.to_string())?;
        }
        Ok(cg)
    }

    /// `cgroup.procs`: a process writes 0 here to join.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// `memory.reclaim`: the kernel reclaims this many bytes from the group.
    pub fn reclaim_path(&self) -> PathBuf {
        self.dir.join("memory.reclaim")
    }

    /// SIGKILL everything in the group (`cgroup.kill`) and wait, bounded, until it is empty.
    pub fn kill_all(&self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Reap whatever of ours died (our direct children); others are reparented to PID 1.
            // SAFETY: waitpid with WNOHANG on any child only collects exit statuses.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
            let procs = std::fs::read_to_string(self.procs_path()).unwrap_or_default();
            if procs.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TrialCgroup {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
