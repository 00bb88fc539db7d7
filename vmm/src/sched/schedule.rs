//! The schedule file format (docs/schedules.md): TOML, validated before boot with
//! line-numbered errors.

use super::cond::{CondError, Condition};
use crate::backend::VcpuId;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{file}:{line}: {why}")]
    At {
        file: String,
        line: usize,
        why: String,
    },
}

/// What one step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Wait for a control message: `READY <name>`, `PHASE <name>`, `GATE <name>`,
    /// `FACT <key>`, `RESULT` or `EXIT`.
    Wait { verb: String, name: Option<String> },
    /// Arm breakpoint `name` at `at` (symbol, `sym+off`, `file:line` or address) on `cpu`.
    /// A detector releases parked vCPUs when it fires (deadlock rule R3) instead of parking.
    /// An injection (`return = v`) makes the function return `v` instead.
    Break {
        name: String,
        at: String,
        cpu: VcpuId,
        cond: Option<Condition>,
        detector: bool,
        /// Fault injection: at the hit, the function (`at` is its entry) returns this
        /// value at once without running, and its vCPU goes on instead of parking.
        inject: Option<i64>,
    },
    /// Wait until breakpoint `name` fires with its condition true; its vCPU then parks.
    Hit { name: String },
    /// Open a mailbox gate the guest announced with `GATE <name>`.
    Open { gate: String },
    /// Let a parked vCPU run again (stepping past its breakpoint).
    Release { cpu: VcpuId },
    /// Disarm a breakpoint that was never hit.
    Disarm { name: String },
    /// Open the gate of the guest's pressure worker `name`, which then reclaims on its
    /// vCPU and reports `PHASE <name>` (docs/schedules.md, "Memory pressure").
    Reclaim(Pressure),
}

/// What a `reclaim` step reclaims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PressureKind {
    /// The private anonymous memory of the exec process `target` (process_madvise with
    /// MADV_PAGEOUT); with `lazyfree_only`, only its mappings that hold MADV_FREE'd pages.
    Anon { target: String, lazyfree_only: bool },
    /// `bytes` from the trial's cgroup (`memory.reclaim`).
    Cgroup { bytes: u64 },
    /// The clean page cache (`vm.drop_caches = 1`).
    PageCache,
}

/// One `reclaim` step: a guest worker pinned to `cpu`, announced as READY/GATE `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pressure {
    pub name: String,
    pub cpu: VcpuId,
    pub kind: PressureKind,
}

impl Pressure {
    /// The guest harness's parameters for the `index`-th worker (guest-harness/src/pressure.rs).
    pub fn job_params(&self, index: usize) -> Vec<(String, String)> {
        let key = |k: &str| format!("pressure{index}_{k}");
        let mut out = vec![
            (key("name"), self.name.clone()),
            (key("cpu"), self.cpu.to_string()),
        ];
        match &self.kind {
            PressureKind::Anon {
                target,
                lazyfree_only,
            } => {
                out.push((key("kind"), "anon".into()));
                out.push((key("target"), target.clone()));
                if *lazyfree_only {
                    out.push((key("mappings"), "lazyfree".into()));
                }
            }
            PressureKind::Cgroup { bytes } => {
                out.push((key("kind"), "cgroup".into()));
                out.push((key("bytes"), bytes.to_string()));
            }
            PressureKind::PageCache => out.push((key("kind"), "pagecache".into())),
        }
        out
    }
}

/// A size such as `64M`, `512K`, `1G` or plain bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'K' | b'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&t[..t.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("size {text:?}: expected e.g. 64M, 512K, 1G or a byte count"))
}

impl std::fmt::Display for Action {
    /// The step as a schedule author would say it, for traces and reports.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Wait {
                verb,
                name: Some(n),
            } => write!(f, "wait {verb} {n}"),
            Action::Wait { verb, name: None } => write!(f, "wait {verb}"),
            Action::Break {
                name,
                at,
                cpu,
                cond,
                detector,
                inject,
            } => {
                let kind = if *detector { "detector" } else { "break" };
                write!(f, "{kind} {name} at {at} on vCPU {cpu}")?;
                if let Some(c) = cond {
                    write!(f, " if {c}")?;
                }
                match inject {
                    Some(v) => write!(f, " returning {v}"),
                    None => Ok(()),
                }
            }
            Action::Hit { name } => write!(f, "hit {name}"),
            Action::Open { gate } => write!(f, "open gate {gate}"),
            Action::Release { cpu } => write!(f, "release vCPU {cpu}"),
            Action::Disarm { name } => write!(f, "disarm {name}"),
            Action::Reclaim(p) => {
                match &p.kind {
                    PressureKind::Anon {
                        target,
                        lazyfree_only,
                    } => {
                        write!(f, "reclaim anon of {target}")?;
                        if *lazyfree_only {
                            write!(f, " (its lazyfree mappings)")?;
                        }
                    }
                    PressureKind::Cgroup { bytes } => {
                        write!(f, "reclaim {bytes} bytes of the trial cgroup")?
                    }
                    PressureKind::PageCache => write!(f, "reclaim page cache")?,
                }
                write!(f, " on vCPU {} as {}", p.cpu, p.name)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    /// 1-based line in the schedule file, for errors and traces.
    pub line: usize,
    pub timeout_ms: u64,
    /// Parking this vCPU with interrupts disabled is intended (normally an error).
    pub allow_irqs_off: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub steps: Vec<Step>,
    /// Order in which parked vCPUs are released when a step cannot complete.
    pub fallback: Vec<VcpuId>,
}

/// The `[schedule]` table as written; deserialize it straight from the file's text
/// (not via `toml::Value`) so that step spans, and so line numbers, survive.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    #[serde(default = "default_timeout")]
    step_timeout_ms: toml::Spanned<u64>,
    #[serde(default = "no_fallback")]
    fallback: toml::Spanned<Vec<VcpuId>>,
    #[serde(default)]
    steps: Vec<toml::Spanned<RawStep>>,
}

fn default_timeout() -> toml::Spanned<u64> {
    toml::Spanned::new(0..0, 20_000)
}

fn no_fallback() -> toml::Spanned<Vec<VcpuId>> {
    toml::Spanned::new(0..0, Vec::new())
}

/// Bounds of a step's wait: a zero bound cannot be met, and a wait of more than ten
/// minutes is not a bound a user wants from a bench that must never hang.
const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 1..=600_000;

fn check_timeout(ms: u64) -> Result<u64, String> {
    if TIMEOUT_RANGE_MS.contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "timeout {ms} ms: a step's bound must be between {} ms and {} ms",
            TIMEOUT_RANGE_MS.start(),
            TIMEOUT_RANGE_MS.end()
        ))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStep {
    wait: Option<String>,
    #[serde(rename = "break")]
    break_at: Option<String>,
    hit: Option<String>,
    open: Option<String>,
    release: Option<VcpuId>,
    disarm: Option<String>,
    reclaim: Option<String>,
    target: Option<String>,
    mappings: Option<String>,
    bytes: Option<String>,
    cpu: Option<VcpuId>,
    name: Option<String>,
    #[serde(rename = "if")]
    cond: Option<String>,
    detector: Option<bool>,
    #[serde(rename = "return")]
    inject: Option<i64>,
    timeout_ms: Option<u64>,
    allow_irqs_off: Option<bool>,
}

const WAIT_VERBS: [&str; 6] = ["READY", "PHASE", "GATE", "FACT", "RESULT", "EXIT"];

/// 1-based line of byte `offset` in `text` (for errors that name file and line).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Schedule {
    /// Validate a `[schedule]` table from `text` (the file `file`), against a VM with
    /// `cpus` vCPUs and `max_bp` breakpoints per vCPU.
    pub fn from_raw(
        file: &str,
        text: &str,
        raw: RawSchedule,
        cpus: usize,
        max_bp: usize,
    ) -> Result<Schedule, ScheduleError> {
        let at = |line: usize, why: String| ScheduleError::At {
            file: file.to_string(),
            line,
            why,
        };
        let default_line = line_of(text, raw.step_timeout_ms.span().start);
        let default_timeout =
            check_timeout(*raw.step_timeout_ms.get_ref()).map_err(|why| at(default_line, why))?;
        let mut steps = Vec::new();
        for spanned in raw.steps {
            let line = line_of(text, spanned.span().start);
            let s = spanned.into_inner();
            let action = Self::action(&s).map_err(|why| at(line, why))?;
            let timeout_ms = match s.timeout_ms {
                Some(ms) => check_timeout(ms).map_err(|why| at(line, why))?,
                None => default_timeout,
            };
            steps.push(Step {
                action,
                line,
                timeout_ms,
                allow_irqs_off: s.allow_irqs_off.unwrap_or(false),
            });
        }
        let fallback_line = line_of(text, raw.fallback.span().start);
        let schedule = Schedule {
            steps,
            fallback: raw.fallback.into_inner(),
        };
        schedule
            .check(cpus, max_bp, fallback_line)
            .map_err(|(line, why)| at(line, why))?;
        Ok(schedule)
    }

    fn action(s: &RawStep) -> Result<Action, String> {
        let chosen = [
            s.wait.is_some(),
            s.break_at.is_some(),
            s.hit.is_some(),
            s.open.is_some(),
            s.release.is_some(),
            s.disarm.is_some(),
            s.reclaim.is_some(),
        ];
        if chosen.iter().filter(|c| **c).count() != 1 {
            return Err(
                "a step needs exactly one of: wait, break, hit, open, release, disarm, reclaim"
                    .into(),
            );
        }
        if let Some(kind) = &s.reclaim {
            return Self::reclaim(kind, s);
        }
        if s.target.is_some() || s.bytes.is_some() || s.mappings.is_some() {
            return Err("`target`, `mappings` and `bytes` belong to a `reclaim` step".into());
        }
        let extras_only_for_break = s.cpu.is_some()
            || s.name.is_some()
            || s.cond.is_some()
            || s.detector.is_some()
            || s.inject.is_some();
        if s.break_at.is_none() && extras_only_for_break {
            return Err(
                "`cpu`, `name`, `if`, `detector` and `return` belong to a `break` step".into(),
            );
        }
        if let Some(w) = &s.wait {
            let mut parts = w.split_whitespace();
            let verb = parts.next().unwrap_or("").to_string();
            let name = parts.next().map(str::to_string);
            if !WAIT_VERBS.contains(&verb.as_str()) || parts.next().is_some() {
                return Err(format!(
                    "wait {w:?}: expected one of {} followed by an optional name",
                    WAIT_VERBS.join(", ")
                ));
            }
            return Ok(Action::Wait { verb, name });
        }
        if let Some(at) = &s.break_at {
            let cpu = s.cpu.ok_or("a `break` step needs `cpu`")?;
            let name = s
                .name
                .clone()
                .ok_or("a `break` step needs a `name` (used by `hit`)")?;
            let cond = s
                .cond
                .as_deref()
                .map(Condition::parse)
                .transpose()
                .map_err(|e: CondError| e.to_string())?;
            let detector = s.detector.unwrap_or(false);
            if detector && s.inject.is_some() {
                return Err(
                    "a `break` step is a detector or an injection (`return`), not both".into(),
                );
            }
            return Ok(Action::Break {
                name,
                at: at.clone(),
                cpu,
                cond,
                detector,
                inject: s.inject,
            });
        }
        if let Some(h) = &s.hit {
            return Ok(Action::Hit { name: h.clone() });
        }
        if let Some(g) = &s.open {
            return Ok(Action::Open { gate: g.clone() });
        }
        if let Some(d) = &s.disarm {
            return Ok(Action::Disarm { name: d.clone() });
        }
        Ok(Action::Release {
            cpu: s.release.expect("one action is set"),
        })
    }

    fn reclaim(kind: &str, s: &RawStep) -> Result<Action, String> {
        if s.cond.is_some() || s.detector.is_some() || s.inject.is_some() {
            return Err("`if`, `detector` and `return` belong to a `break` step".into());
        }
        let cpu = s
            .cpu
            .ok_or("a `reclaim` step needs `cpu` (where the guest reclaims)")?;
        let name = s
            .name
            .clone()
            .ok_or("a `reclaim` step needs a `name` (its READY, GATE and PHASE name)")?;
        let kind = match kind {
            "anon" => PressureKind::Anon {
                target: s
                    .target
                    .clone()
                    .ok_or("reclaim \"anon\" needs `target`: the name of an exec [[process]]")?,
                lazyfree_only: match s.mappings.as_deref() {
                    None | Some("all") => false,
                    Some("lazyfree") => true,
                    Some(other) => {
                        return Err(format!(
                            "mappings {other:?}: use \"all\" (every private anonymous mapping, the default) or \"lazyfree\" (those holding MADV_FREE'd pages)"
                        ))
                    }
                },
            },
            "cgroup" => PressureKind::Cgroup {
                bytes: parse_bytes(s.bytes.as_deref().unwrap_or("1G"))?,
            },
            "pagecache" => PressureKind::PageCache,
            other => {
                return Err(format!(
                    "reclaim {other:?}: unknown pressure target; use \"anon\" (a process), \"cgroup\" (the trial cgroup) or \"pagecache\""
                ))
            }
        };
        if !matches!(kind, PressureKind::Anon { .. })
            && (s.target.is_some() || s.mappings.is_some())
        {
            return Err("`target` and `mappings` belong to reclaim \"anon\"".into());
        }
        if !matches!(kind, PressureKind::Cgroup { .. }) && s.bytes.is_some() {
            return Err("`bytes` belongs to reclaim \"cgroup\"".into());
        }
        Ok(Action::Reclaim(Pressure { name, cpu, kind }))
    }

    /// The pressure workers the guest must start for this schedule.
    pub fn pressure(&self) -> Vec<(usize, &Pressure)> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Reclaim(p) => Some((s.line, p)),
                _ => None,
            })
            .collect()
    }

    /// Static checks: vCPU numbers, breakpoint names, the per-vCPU breakpoint budget
    /// at every point of the schedule, and releases of vCPUs that are parked. Returns
    /// the most breakpoints armed at once over all vCPUs and the first line where that
    /// many are (None without breakpoints).
    fn check(
        &self,
        cpus: usize,
        max_bp: usize,
        fallback_line: usize,
    ) -> Result<Option<(usize, usize)>, (usize, String)> {
        // A parked vCPU keeps its breakpoint armed (it re-fires when the vCPU re-enters
        // to service interrupts), so its debug register is only freed by `release`.
        let mut armed: BTreeMap<String, VcpuId> = BTreeMap::new();
        let mut defined: BTreeSet<String> = BTreeSet::new();
        let mut parked: BTreeMap<VcpuId, String> = BTreeMap::new();
        let mut injections: BTreeSet<String> = BTreeSet::new();
        let mut peak: Option<(usize, usize)> = None;
        let cpu_ok = |cpu: VcpuId, line| {
            if cpu < cpus {
                Ok(())
            } else {
                Err((
                    line,
                    format!(
                        "vCPU {cpu} does not exist: the VM has {cpus} (0..{})",
                        cpus - 1
                    ),
                ))
            }
        };
        for step in &self.steps {
            let line = step.line;
            match &step.action {
                Action::Break {
                    name, cpu, inject, ..
                } => {
                    cpu_ok(*cpu, line)?;
                    if inject.is_some() {
                        injections.insert(name.clone());
                    }
                    if !defined.insert(name.clone()) {
                        return Err((line, format!("breakpoint name {name:?} is used twice")));
                    }
                    armed.insert(name.clone(), *cpu);
                    if peak.is_none_or(|(n, _)| armed.len() > n) {
                        peak = Some((armed.len(), line));
                    }
                    let on_cpu = armed.values().filter(|c| *c == cpu).count();
                    if on_cpu > max_bp {
                        return Err((
                            line,
                            format!("vCPU {cpu} would have {on_cpu} breakpoints armed; x86 has {max_bp} debug registers per vCPU (DR0-DR3). Disarm one, or release the vCPU parked on one, first"),
                        ));
                    }
                }
                Action::Hit { name } => {
                    let cpu = *armed.get(name).ok_or((
                        line,
                        format!("hit {name:?}: no armed breakpoint has that name"),
                    ))?;
                    if injections.contains(name) {
                        // The function returned at once and its vCPU went on; the
                        // breakpoint fired once and is disarmed.
                        armed.remove(name);
                        continue;
                    }
                    if parked.contains_key(&cpu) {
                        return Err((
                            line,
                            format!("hit {name:?}: vCPU {cpu} is already parked; release it first"),
                        ));
                    }
                    parked.insert(cpu, name.clone());
                }
                Action::Disarm { name } => {
                    if parked.values().any(|n| n == name) {
                        return Err((
                            line,
                            format!(
                                "disarm {name:?}: its vCPU is parked on it; release it instead"
                            ),
                        ));
                    }
                    armed.remove(name).ok_or((
                        line,
                        format!("disarm {name:?}: no armed breakpoint has that name"),
                    ))?;
                }
                Action::Release { cpu } => {
                    cpu_ok(*cpu, line)?;
                    let name = parked.remove(cpu).ok_or((
                        line,
                        format!("release {cpu}: vCPU {cpu} is not parked at this point"),
                    ))?;
                    armed.remove(&name);
                }
                Action::Reclaim(p) => cpu_ok(p.cpu, line)?,
                Action::Wait { .. } | Action::Open { .. } => {}
            }
        }
        for cpu in &self.fallback {
            cpu_ok(*cpu, fallback_line)?;
        }
        Ok(peak)
    }

    /// The same schedule with every breakpoint step removed: gates open back to back
    /// and the threads run free. The no-schedule baseline of a scenario.
    pub fn without_breakpoints(&self) -> Schedule {
        let steps = self
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s.action,
                    Action::Wait { .. } | Action::Open { .. } | Action::Reclaim(_)
                )
            })
            // Waits for progress that only happens inside the race are kept: they are bounded.
            .cloned()
            .collect();
        Schedule {
            steps,
            fallback: Vec::new(),
        }
    }

    /// Every breakpoint spec with its line, to resolve against a kernel before booting it.
    pub fn breakpoint_specs(&self) -> Vec<(usize, &str)> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Break { at, .. } => Some((s.line, at.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Every fault injection (`break` with `return`): its line, spec and value, to check
    /// against a kernel's debug info before booting it.
    pub fn injections(&self) -> Vec<(usize, &str, i64)> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Break {
                    at,
                    inject: Some(v),
                    ..
                } => Some((s.line, at.as_str(), *v)),
                _ => None,
            })
            .collect()
    }

    /// The most breakpoints armed at once over all vCPUs, and the first line where
    /// that many are (None without breakpoints): for backends whose limit is per VM.
    /// The same walk as the validation (without its per-vCPU and vCPU-count limits):
    /// a breakpoint stays armed until disarmed, or until the vCPU parked on it is
    /// released.
    pub fn peak_armed(&self) -> Option<(usize, usize)> {
        self.check(usize::MAX, usize::MAX, 0).ok().flatten()
    }

    /// A hash of what the schedule does (every step as the trace names it, its bound
    /// and flags, and the fallback order; not line numbers or comments): `memrace
    /// replay` checks that it replays the schedule a result was recorded with.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for s in &self.steps {
            h.update(format!(
                "{}\t{}\t{}\n",
                s.action, s.timeout_ms, s.allow_irqs_off
            ));
        }
        h.update(format!("fallback {:?}", self.fallback));
        hex::encode(h.finalize())[..16].to_string()
    }

    /// Names of the breakpoints that must be hit, in schedule order.
    pub fn expected_hits(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Hit { name } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        schedule: RawSchedule,
    }

    fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let f: File = toml::from_str(text).map_err(|e| ScheduleError::At {
            file: "t.toml".into(),
            line: 0,
            why: e.to_string(),
        })?;
        Schedule::from_raw("t.toml", text, f.schedule, 3, 4)
    }

    const GOOD: &str = r#"
[schedule]
fallback = [1, 2]
steps = [
  { wait = "READY reader" },
  { break = "submit_bio_wait", cpu = 1, name = "pinned", if = "tid == $reader.tid" },
  { open = "reader" },
  { hit = "pinned" },
  { release = 1 },
  { wait = "RESULT" },
]
"#;

    #[test]
    fn parses_a_schedule() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.steps.len(), 6);
        assert_eq!(
            s.steps[0].action,
            Action::Wait {
                verb: "READY".into(),
                name: Some("reader".into())
            }
        );
        assert!(matches!(
            &s.steps[1].action,
            Action::Break {
                cpu: 1,
                detector: false,
                inject: None,
                cond: Some(_),
                ..
            }
        ));
        assert_eq!(s.expected_hits(), vec!["pinned".to_string()]);
        assert_eq!(s.fallback, vec![1, 2]);
        assert_eq!(
            s.steps[1].action.to_string(),
            "break pinned at submit_bio_wait on vCPU 1 if tid == $reader.tid"
        );
        assert_eq!(s.without_breakpoints().steps.len(), 3);
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_injection_does_not_park_and_is_spent_by_its_hit() {
        let s = parse(
            "[schedule]\nsteps = [\n  { break = \"copy_vma\", cpu = 1, name = \"f\", return = -12 },\n  { hit = \"f\" },\n  { break = \"copy_vma\", cpu = 1, name = \"g\" },\n  { hit = \"g\" },\n  { release = 1 },\n]\n",
        )
        .unwrap();
        assert_eq!(s.injections(), vec![(3, "copy_vma", -12)]);
        assert!(s.steps[0].action.to_string().ends_with("returning -12"));
        // The injection's vCPU is not parked: releasing it is an error.
        let e = err("[schedule]\nsteps = [\n  { break = \"f\", cpu = 1, name = \"f\", return = 0 },\n  { hit = \"f\" },\n  { release = 1 },\n]\n");
        assert!(
            e.starts_with("t.toml:5:") && e.contains("not parked"),
            "{e}"
        );
        let e = err("[schedule]\nsteps = [\n  { break = \"f\", cpu = 1, name = \"f\", return = 0, detector = true },\n]\n");
        assert!(e.starts_with("t.toml:3:") && e.contains("not both"), "{e}");
        let e = err("[schedule]\nsteps = [\n  { hit = \"f\", return = 0 },\n]\n");
        assert!(e.contains("belong to a `break` step"), "{e}");
        let e = err("[schedule]\nsteps = [\n  { reclaim = \"cgroup\", cpu = 1, name = \"p\", mappings = \"lazyfree\" },\n]\n");
        assert!(e.contains("`mappings` belong to reclaim \"anon\""), "{e}");
    }

    #[test]
    fn errors_carry_line_numbers() {
        let e = err("[schedule]\nsteps = [\n  { wait = \"READY a\" },\n  { hit = \"nope\" },\n]\n");
        assert!(
            e.starts_with("t.toml:4:") && e.contains("no armed breakpoint"),
            "{e}"
        );
        let e = err("[schedule]\nsteps = [\n { wait = \"SLEEP 3\" },\n]\n");
        assert!(
            e.starts_with("t.toml:3:") && e.contains("expected one of"),
            "{e}"
        );
        let e = err("[schedule]\nsteps = [\n { release = 1 },\n]\n");
        assert!(e.contains("t.toml:3:") && e.contains("not parked"), "{e}");
        let e = err("[schedule]\nsteps = [\n { break = \"f\", cpu = 7, name = \"x\" },\n]\n");
        assert!(e.contains("vCPU 7 does not exist"), "{e}");
        let e = err("[schedule]\nsteps = [\n { break = \"f\", cpu = 1 },\n]\n");
        assert!(e.contains("needs a `name`"), "{e}");
        let e = err("[schedule]\nsteps = [\n { break = \"f\", cpu = 1, name = \"x\", if = \"tid = 3\" },\n]\n");
        assert!(e.contains("condition"), "{e}");
        let e = err("[schedule]\nsteps = [\n { wait = \"RESULT\", open = \"g\" },\n]\n");
        assert!(e.contains("exactly one"), "{e}");
        let e = err("[schedule]\nsteps = [\n { wait = \"RESULT\", bogus = 1 },\n]\n");
        assert!(e.contains("unknown field"), "{e}");
        let e = err("[schedule]\nfallback = [\n  1, 9]\nsteps = []\n");
        assert!(
            e.starts_with("t.toml:2:") && e.contains("vCPU 9 does not exist"),
            "{e}"
        );
    }

    #[test]
    fn every_wait_has_a_real_bound() {
        let e = err("[schedule]\nsteps = [\n { wait = \"RESULT\", timeout_ms = 0 },\n]\n");
        assert!(
            e.starts_with("t.toml:3:") && e.contains("between 1 ms"),
            "{e}"
        );
        let e = err("[schedule]\n\nstep_timeout_ms = 86400000\nsteps = []\n");
        assert!(e.starts_with("t.toml:3:") && e.contains("600000 ms"), "{e}");
        let s = parse("[schedule]\nstep_timeout_ms = 500\nsteps = [\n { wait = \"RESULT\" },\n { wait = \"EXIT\", timeout_ms = 9 },\n]\n").unwrap();
        assert_eq!(
            s.steps.iter().map(|s| s.timeout_ms).collect::<Vec<_>>(),
            [500, 9]
        );
    }

    #[test]
    fn peak_armed_counts_every_vcpu_and_frees_on_release_and_disarm() {
        let s = parse(
            r#"[schedule]
steps = [
  { break = "f", cpu = 0, name = "a" },
  { break = "g", cpu = 1, name = "b" },
  { hit = "a" },
  { release = 0 },
  { disarm = "b" },
  { break = "h", cpu = 2, name = "c" },
  { break = "i", cpu = 0, name = "d" },
  { break = "j", cpu = 1, name = "e" },
]
"#,
        )
        .unwrap();
        // a and b (2 at line 4) are freed by release and disarm; c, d, e make 3 at line 10.
        assert_eq!(s.peak_armed(), Some((3, 10)));
        assert_eq!(s.without_breakpoints().peak_armed(), None);
    }

    #[test]
    fn the_fingerprint_follows_what_the_schedule_does_not_its_layout() {
        let a = parse(GOOD).unwrap();
        let moved = parse(&GOOD.replace("[schedule]", "# a comment\n\n[schedule]")).unwrap();
        assert_ne!(a.steps[0].line, moved.steps[0].line);
        assert_eq!(a.fingerprint(), moved.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert_ne!(a.fingerprint(), a.without_breakpoints().fingerprint());
        let mut slower = a.clone();
        slower.steps[0].timeout_ms += 1;
        assert_ne!(a.fingerprint(), slower.fingerprint());
    }

    #[test]
    fn a_fifth_breakpoint_on_one_vcpu_is_refused() {
        let mut text = String::from("[schedule]\nsteps = [\n");
        for i in 0..5 {
            text.push_str(&format!(
                "  {{ break = \"f{i}\", cpu = 1, name = \"b{i}\" }},\n"
            ));
        }
        text.push_str("]\n");
        let e = err(&text);
        assert!(
            e.starts_with("t.toml:7:") && e.contains("5 breakpoints") && e.contains("DR0-DR3"),
            "{e}"
        );
        // Four are fine, and hitting one frees a register for another.
        let ok = "[schedule]\nsteps = [\n{ break = \"a\", cpu = 1, name = \"a\" },{ break = \"b\", cpu = 1, name = \"b\" },\
{ break = \"c\", cpu = 1, name = \"c\" },{ break = \"d\", cpu = 1, name = \"d\" },{ hit = \"a\" },{ release = 1 },{ break = \"e\", cpu = 1, name = \"e\" },]\n";
        parse(ok).unwrap();
    }
}
