//! Scenario files (`scenarios/*.toml`, documented in docs/scenarios.md): data only.
//! A new race is a scenario file plus a kernel patch; no Rust.

use super::exec::{Exec, ExecError, RawFile, RawProcess, RawVerdict};
use crate::sched::schedule::{parse_bytes, PressureKind, RawSchedule, Schedule, ScheduleError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("unknown scenario {name:?}; known: {known}\n  scenarios are files in {dir}")]
    Unknown {
        name: String,
        known: String,
        dir: PathBuf,
    },
}

/// What a kernel is expected to show over all its trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Every trial reproduces the bug, with every scheduled breakpoint hit in order.
    Reproduced,
    /// Every trial completes the schedule in order and the oracle sees correct behaviour.
    Intact,
    /// Every trial is intact or *blocked*: the correct kernel legitimately blocks the
    /// schedule (a declared detector fires, e.g. on an rmap lock the parked vCPU holds)
    /// and the oracle then sees correct behaviour — "infeasible on this kernel
    /// (expected)". A trial whose step merely timed out does not count.
    IntactOrBlocked,
    /// No expectation: the rate is reported (baselines).
    Report,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    #[serde(default = "default_cpus")]
    pub cpus: usize,
    #[serde(default = "default_mem")]
    pub mem: String,
    /// Extra kernel command-line arguments.
    #[serde(default)]
    pub cmdline: String,
}

fn default_cpus() -> usize {
    3
}
fn default_mem() -> String {
    "512M".into()
}

/// The workload that runs the user's own programs (scenario/exec.rs).
pub const EXEC_WORKLOAD: &str = "exec";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The harness workload (guest-harness/src/workloads).
    pub name: String,
    #[serde(default = "default_trials")]
    pub trials: u32,
    /// Trials run in one boot; 1 when the oracle ends the kernel (panic on WARN/BUG).
    #[serde(default = "default_per_boot")]
    pub trials_per_boot: u32,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Bound for one trial's oracle result after the schedule finished.
    #[serde(default = "default_result_timeout")]
    pub result_timeout_ms: u64,
    /// Per-trial cgroup v2 limits (`64M`, `1G`; exec workload): `memory.max`, `memory.high`.
    pub memory_max: Option<toml::Spanned<String>>,
    pub memory_high: Option<toml::Spanned<String>>,
}

fn default_trials() -> u32 {
    20
}
fn default_per_boot() -> u32 {
    1000
}
fn default_result_timeout() -> u64 {
    30_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelExpectation {
    pub variant: String,
    pub expect: Expect,
    /// Why, for the report (e.g. "the correct kernel blocks on the anon_vma lock").
    #[serde(default)]
    pub note: String,
    /// Kernel command-line arguments after the scenario's (later ones win, e.g.
    /// `panic_on_warn=0` so that a KASAN report can follow a WARN).
    #[serde(default)]
    pub cmdline: String,
    /// Workload parameters merged over the scenario's.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Console reports that count as the bug on this kernel, instead of `[oracle].kernel`.
    pub oracle: Option<Vec<String>>,
}

impl Oracle {
    /// This oracle with a kernel's (or control's) own console patterns, if it has any.
    pub fn with_kernel_patterns(&self, patterns: Option<&Vec<String>>) -> Oracle {
        Oracle {
            kernel: patterns.cloned().unwrap_or_else(|| self.kernel.clone()),
            all: self.all,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Oracle {
    /// Console reports (e.g. "kernel BUG at include/linux/swapops.h") that count as
    /// reproducing the bug.
    #[serde(default)]
    pub kernel: Vec<String>,
    /// Reproduced only when the guest's oracle *and* a kernel report both say so (e.g. an
    /// rmap miss and the DEBUG_VM warning it leads to); one alone is an error.
    #[serde(default)]
    pub all: bool,
}

/// A negative control or baseline: the scenario run with changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub name: String,
    pub description: String,
    pub kernel: String,
    pub expect: Expect,
    /// `"scenario"` (default) or `"none"`: gates open back to back, no breakpoints.
    #[serde(default = "default_control_schedule")]
    pub schedule: String,
    /// Merged over the workload's parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// As for a kernel: extra command line, own console oracle.
    #[serde(default)]
    pub cmdline: String,
    pub oracle: Option<Vec<String>>,
    pub trials: Option<u32>,
    /// Overrides `workload.trials_per_boot` (e.g. a baseline that rarely panics can
    /// share boots; a trial that does panic ends its boot and the next boot goes on).
    pub trials_per_boot: Option<u32>,
}

fn default_control_schedule() -> String {
    "scenario".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    description: String,
    #[serde(default)]
    seed: String,
    vm: Vm,
    workload: Workload,
    kernel: Vec<KernelExpectation>,
    #[serde(default)]
    oracle: Oracle,
    #[serde(default)]
    control: Vec<Control>,
    schedule: Option<RawSchedule>,
    /// `exec` workload only (scenario/exec.rs): the user's programs and their verdict.
    #[serde(default)]
    file: Vec<toml::Spanned<RawFile>>,
    #[serde(default)]
    process: Vec<toml::Spanned<RawProcess>>,
    verdict: Option<toml::Spanned<RawVerdict>>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    pub seed: String,
    pub vm: Vm,
    /// `vm.mem` in MiB, checked.
    pub mem_mib: u64,
    pub workload: Workload,
    pub kernels: Vec<KernelExpectation>,
    pub oracle: Oracle,
    pub controls: Vec<Control>,
    pub schedule: Schedule,
    /// The user's programs, for the `exec` workload.
    pub exec: Option<Exec>,
    pub text: String,
}

impl Scenario {
    pub fn parse(path: &Path, text: &str, max_bp: usize) -> Result<Scenario, ScenarioError> {
        let malformed = |message: String| ScenarioError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| malformed(e.to_string()))?;
        if raw.vm.cpus == 0 {
            return Err(malformed("vm.cpus must be at least 1".into()));
        }
        let mem_mib = crate::backend::parse_mem_mib(&raw.vm.mem)
            .map_err(|e| malformed(format!("vm.mem: {e}")))?;
        if raw.workload.trials == 0 || raw.workload.trials_per_boot == 0 {
            return Err(malformed(
                "workload.trials and workload.trials_per_boot must be at least 1".into(),
            ));
        }
        if raw.kernel.is_empty() {
            return Err(malformed("at least one [[kernel]] is needed".into()));
        }
        for c in &raw.control {
            if c.trials == Some(0) || c.trials_per_boot == Some(0) {
                return Err(malformed(format!(
                    "control {:?}: trials and trials_per_boot must be at least 1",
                    c.name
                )));
            }
            if c.schedule != "scenario" && c.schedule != "none" {
                return Err(malformed(format!(
                    "control {:?}: schedule must be \"scenario\" or \"none\"",
                    c.name
                )));
            }
        }
        let mut exec = if raw.workload.name == EXEC_WORKLOAD {
            Some(Exec::from_raw(
                path,
                text,
                raw.file,
                raw.process,
                raw.verdict,
                raw.vm.cpus,
            )?)
        } else if !raw.file.is_empty() || !raw.process.is_empty() || raw.verdict.is_some() {
            return Err(malformed(format!(
                "[[file]], [[process]] and [verdict] belong to workload \"{EXEC_WORKLOAD}\", not {:?}",
                raw.workload.name
            )));
        } else {
            None
        };
        let file = path.display().to_string();
        let schedule = match raw.schedule {
            Some(s) => Schedule::from_raw(&file, text, s, raw.vm.cpus, max_bp)?,
            None => Schedule {
                steps: Vec::new(),
                fallback: Vec::new(),
            },
        };
        let pressure = schedule.pressure();
        let limits = [
            ("memory_max", &raw.workload.memory_max),
            ("memory_high", &raw.workload.memory_high),
        ];
        let at = |offset: usize, why: String| {
            ScenarioError::Schedule(ScheduleError::At {
                file: file.clone(),
                line: crate::sched::schedule::line_of(text, offset),
                why,
            })
        };
        match &mut exec {
            None => {
                if let Some((line, p)) = pressure.first() {
                    return Err(ScenarioError::Schedule(ScheduleError::At {
                        file: file.clone(),
                        line: *line,
                        why: format!(
                            "reclaim {:?}: pressure steps need workload \"{EXEC_WORKLOAD}\" (its harness starts the pressure workers)",
                            p.name
                        ),
                    }));
                }
                if let Some(l) = limits.iter().find_map(|(_, l)| l.as_ref()) {
                    return Err(at(
                        l.span().start,
                        format!("memory limits apply to workload \"{EXEC_WORKLOAD}\" (its trial cgroup)"),
                    ));
                }
            }
            Some(exec) => {
                for (i, (line, p)) in pressure.iter().enumerate() {
                    if let PressureKind::Anon { target, .. } = &p.kind {
                        if !exec.programs.contains(target) {
                            return Err(ScenarioError::Schedule(ScheduleError::At {
                                file: file.clone(),
                                line: *line,
                                why: format!(
                                    "reclaim anon: unknown target {target:?}; the trial's processes are {}",
                                    exec.programs.join(", ")
                                ),
                            }));
                        }
                    }
                    exec.params.extend(p.job_params(i));
                }
                for (key, limit) in limits {
                    if let Some(l) = limit {
                        let bytes = parse_bytes(l.get_ref())
                            .map_err(|e| at(l.span().start, format!("workload.{key}: {e}")))?;
                        exec.params.push((key.to_string(), bytes.to_string()));
                    }
                }
            }
        }
        Ok(Scenario {
            path: path.to_path_buf(),
            name: raw.name,
            description: raw.description,
            seed: raw.seed,
            vm: raw.vm,
            mem_mib,
            workload: raw.workload,
            kernels: raw.kernel,
            oracle: raw.oracle,
            controls: raw.control,
            schedule,
            exec,
            text: text.to_string(),
        })
    }

    /// The files this scenario ships into an `arch` guest, built in `dir` (the exec
    /// workload's programs: compiled for `arch` and checked here, before any boot).
    pub fn guest_files(
        &self,
        dir: &Path,
        arch: crate::arch::Arch,
    ) -> Result<Vec<(PathBuf, String)>, ScenarioError> {
        match &self.exec {
            Some(exec) => Ok(exec.prepare(&dir.join("programs").join(arch.name()), arch)?),
            None => Ok(Vec::new()),
        }
    }

    pub fn load(path: &Path, max_bp: usize) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::parse(path, &text, max_bp)
    }
}

/// The repository's `scenarios/` directory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("MEMRACE_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios"))
}

/// Scenario names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .into_string()
                .ok()?
                .strip_suffix(".toml")
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// Find a scenario by name (a file in `dir`) or by path.
pub fn find(dir: &Path, name_or_path: &str, max_bp: usize) -> Result<Scenario, ScenarioError> {
    let p = PathBuf::from(name_or_path);
    if p.is_file() {
        return Scenario::load(&p, max_bp);
    }
    let file = dir.join(format!("{name_or_path}.toml"));
    if name_or_path.contains('/') || !file.is_file() {
        return Err(ScenarioError::Unknown {
            name: name_or_path.into(),
            known: names(dir).join(", "),
            dir: dir.to_path_buf(),
        });
    }
    Scenario::load(&file, max_bp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_scenarios_parse() {
        let dir = default_dir();
        for name in names(&dir) {
            let s = find(&dir, &name, 4).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.name, name, "file name and `name` agree");
        }
    }

    #[test]
    fn malformed_scenarios_name_the_problem() {
        let p = Path::new("x.toml");
        let e = Scenario::parse(p, "name = 3", 4).unwrap_err().to_string();
        assert!(e.starts_with("x.toml:"), "{e}");
        let ok = "name = \"n\"\ndescription = \"d\"\n[vm]\n[workload]\nname = \"w\"\n[[kernel]]\nvariant = \"base\"\nexpect = \"intact\"\n";
        Scenario::parse(p, ok, 4).unwrap();
        let e = Scenario::parse(p, &ok.replace("intact", "maybe"), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant") || e.contains("maybe"), "{e}");
        let e = Scenario::parse(
            p,
            &format!("{ok}[schedule]\nsteps = [\n  {{ hit = \"x\" }},\n]\n"),
            4,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("x.toml:11:"), "{e}");
        assert!(matches!(
            find(Path::new("/nonexistent"), "nope", 4),
            Err(ScenarioError::Unknown { .. })
        ));
    }

    const EXEC: &str = r#"name = "x"
description = "d"
[vm]
[workload]
name = "exec"
[[file]]
source = "madv-free-upstream/test.c"
[[process]]
name = "test"
argv = ["/memrace/bin/test"]
cpu = 1
[verdict]
reproduced = ['^lost$']
[[kernel]]
variant = "base"
expect = "intact"
"#;

    fn exec_err(text: &str) -> String {
        Scenario::parse(&default_dir().join("x.toml"), text, 4)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn exec_scenarios_parse_and_bad_input_names_file_and_line() {
        let path = default_dir().join("x.toml");
        let s = Scenario::parse(&path, EXEC, 4).unwrap();
        assert_eq!(s.exec.unwrap().programs, vec!["test".to_string()]);
        let e = exec_err(&EXEC.replace("test.c", "nope.c"));
        assert!(e.contains("x.toml:6:") && e.contains("no such file"), "{e}");
        let e = exec_err(&EXEC.replace("^lost$", "(unclosed"));
        assert!(e.contains("x.toml:13:") && e.contains("bad regex"), "{e}");
        let e = exec_err(&EXEC.replace("cpu = 1", "cpu = 9"));
        assert!(e.contains("x.toml:8:") && e.contains("cpu 9"), "{e}");
        let with_reclaim = |target: &str| {
            format!(
                "{EXEC}[schedule]\nsteps = [\n  {{ reclaim = \"anon\", target = \"{target}\", cpu = 2, name = \"p\" }},\n]\n"
            )
        };
        Scenario::parse(&path, &with_reclaim("test"), 4).unwrap();
        let e = exec_err(&with_reclaim("other"));
        assert!(
            e.contains("x.toml:19:") && e.contains("unknown target"),
            "{e}"
        );
        let e = exec_err(&with_reclaim("test").replace("\"anon\"", "\"swap\""));
        assert!(e.contains("unknown pressure target"), "{e}");
    }
}
