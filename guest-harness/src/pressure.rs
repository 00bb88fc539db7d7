//! Memory pressure on the schedule's command: one worker per `reclaim` step, pinned to
//! its vCPU, waiting on a gate; when the bench opens it, it reclaims and reports
//! `FACT <name>.bytes` and `PHASE <name>` (docs/guest-harness.md, "Pressure").

use std::time::Duration;

use control_proto::Message;

use crate::control;
use crate::error::{self, Res};
use crate::gate::Gate;
use crate::job::Params;
use crate::pin;
use crate::trial_cgroup::TrialCgroup;

const MADV_PAGEOUT: libc::c_int = 21;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// process_madvise(MADV_PAGEOUT) over a program's private anonymous mappings (only
    /// those holding lazyfree memory, with `lazyfree_only`).
    Anon { target: String, lazyfree_only: bool },
    /// `memory.reclaim` of the trial cgroup.
    Cgroup { bytes: u64 },
    /// Drop the clean page cache (`vm.drop_caches = 1`).
    PageCache,
}

#[derive(Debug, Clone)]
pub struct Pressure {
    pub name: String,
    pub cpu: usize,
    pub kind: Kind,
}

/// `pressure<i>_name`, `_kind` (`anon|cgroup|pagecache`), `_cpu`, `_target`, `_mappings`
/// (`all|lazyfree`), `_bytes`.
pub fn from_params(params: &mut Params) -> Res<Vec<Pressure>> {
    let mut out = Vec::new();
    while let Some(name) = params.take(&format!("pressure{}_name", out.len())) {
        let key = |k: &str| format!("pressure{}_{k}", out.len());
        let kind = match params.take_choice(&key("kind"), &["anon", "cgroup", "pagecache"])? {
            "anon" => Kind::Anon {
                target: params
                    .take(&key("target"))
                    .ok_or_else(|| format!("pressure {name}: anon needs a target"))?,
                lazyfree_only: params.take_choice(&key("mappings"), &["all", "lazyfree"])?
                    == "lazyfree",
            },
            "cgroup" => Kind::Cgroup {
                bytes: params.take_u64(&key("bytes"), 1 << 30)?,
            },
            _ => Kind::PageCache,
        };
        out.push(Pressure {
            cpu: params.take_cpu(&key("cpu"), 0)?,
            name,
            kind,
        });
    }
    Ok(out)
}

/// Private anonymous ranges (`[heap]`, `[stack]` and unnamed) of `pid`, from its smaps;
/// with `lazyfree_only`, those with lazyfree memory in them (smaps `LazyFree:`).
fn anon_ranges(pid: libc::pid_t, lazyfree_only: bool) -> Res<Vec<(usize, usize)>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| error::describe("read target smaps", &e))?;
    let mut out = Vec::new();
    // (range, whether it is kept once its fields are read)
    let mut current: Option<((usize, usize), bool)> = None;
    let mut finish = |current: &mut Option<((usize, usize), bool)>| {
        if let Some((range, true)) = current.take() {
            out.push(range);
        }
    };
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("LazyFree:") {
            let lazy = kib.trim().trim_end_matches("kB").trim() != "0";
            if let Some((_, keep)) = current.as_mut() {
                *keep &= lazy || !lazyfree_only;
            }
            continue;
        }
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        // A mapping header: start, perms, offset, device, inode, optional path.
        finish(&mut current);
        let path = f.nth(3).unwrap_or("");
        let anon = path.is_empty() || path == "[heap]" || path == "[stack]";
        current = Some(((a, b - a), anon && perms.ends_with('p') && b > a));
    }
    finish(&mut current);
    Ok(out)
}

fn page_out(pid: libc::pid_t, lazyfree_only: bool) -> Res<u64> {
    let ranges = anon_ranges(pid, lazyfree_only)?;
    if ranges.is_empty() {
        return Ok(0);
    }
    let iov: Vec<libc::iovec> = ranges
        .iter()
        .map(|&(base, len)| libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = error::check(pidfd, "pidfd_open")? as libc::c_int;
    // SAFETY: `iov` is a valid array of iovecs describing the target's ranges; the kernel
    // only reads it.
    let done = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            pidfd,
            iov.as_ptr(),
            iov.len(),
            MADV_PAGEOUT,
            0,
        )
    };
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(pidfd) };
    Ok(error::check(done, "process_madvise(MADV_PAGEOUT)")? as u64)
}

/// The target's clean lazyfree memory in KiB (`LazyFree:` of smaps_rollup): what
/// reclaim may discard rather than keep.
fn lazyfree_kib(pid: libc::pid_t) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("LazyFree:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn act(name: &str, kind: &Kind, pids: &[(String, libc::pid_t)], cgroup: &TrialCgroup) -> Res<u64> {
    match kind {
        Kind::Anon {
            target,
            lazyfree_only,
        } => {
            let pid = pids
                .iter()
                .find(|(n, _)| n == target)
                .map(|p| p.1)
                .ok_or_else(|| format!("no process {target} in this trial"))?;
            if let Some(kib) = lazyfree_kib(pid) {
                control::fact(&format!("{name}.lazyfree_kib"), kib);
            }
            page_out(pid, *lazyfree_only)
        }
        Kind::Cgroup { bytes } => {
            // memory.reclaim fails with EAGAIN when less could be reclaimed: still pressure.
            let _ = std::fs::write(cgroup.reclaim_path(), bytes.to_string());
            Ok(*bytes)
        }
        Kind::PageCache => std::fs::write("/proc/sys/vm/drop_caches", "1")
            .map(|()| 0)
            .map_err(|e| error::describe("write vm.drop_caches", &e)),
    }
}

/// Start one worker thread per pressure step in `scope`; gate words start at `gate.1`.
pub fn start<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    steps: &'env [Pressure],
    gate: Option<(&'env Gate, usize, Duration)>,
    pids: &'env [(String, libc::pid_t)],
    cgroup: &'env TrialCgroup,
) -> Res<()> {
    let Some((gate, first, timeout)) = gate else {
        return Ok(());
    };
    for (i, step) in steps.iter().enumerate() {
        std::thread::Builder::new()
            .name(step.name.clone())
            .spawn_scoped(scope, move || {
                if pin::pin_to(step.cpu).is_err() {
                    control::note(&format!(
                        "pressure {}: cannot pin to cpu {}",
                        step.name, step.cpu
                    ));
                    return;
                }
                control::send(&Message::Ready {
                    name: step.name.clone(),
                    cpu: pin::current_cpu(),
                    tid: pin::tid(),
                });
                if gate.wait(first + i, timeout).is_err() {
                    control::note(&format!("pressure {}: gate-timeout", step.name));
                    return;
                }
                match act(&step.name, &step.kind, pids, cgroup) {
                    Ok(bytes) => control::fact(&format!("{}.bytes", step.name), bytes),
                    Err(e) => control::note(&format!("pressure {}: {e}", step.name)),
                }
                control::phase(&step.name);
            })
            .map_err(|e| format!("spawn pressure worker: {e}"))?;
    }
    Ok(())
}
