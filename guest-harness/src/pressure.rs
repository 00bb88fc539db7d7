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
    /// process_madvise(MADV_PAGEOUT) over a program's private anonymous mappings.
    Anon { target: String },
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

/// `pressure<i>_name`, `_kind` (`anon|cgroup|pagecache`), `_cpu`, `_target`, `_bytes`.
pub fn from_params(params: &mut Params) -> Res<Vec<Pressure>> {
    let mut out = Vec::new();
    while let Some(name) = params.take(&format!("pressure{}_name", out.len())) {
        let key = |k: &str| format!("pressure{}_{k}", out.len());
        let kind = match params.take_choice(&key("kind"), &["anon", "cgroup", "pagecache"])? {
            "anon" => Kind::Anon {
                target: params
                    .take(&key("target"))
                    .ok_or_else(|| format!("pressure {name}: anon needs a target"))?,
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

/// Private anonymous ranges (`[heap]`, `[stack]` and unnamed) of `pid`, from its maps.
fn anon_ranges(pid: libc::pid_t) -> Res<Vec<(usize, usize)>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| error::describe("read target maps", &e))?;
    Ok(maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let path = f.nth(3).unwrap_or("");
            let anon = path.is_empty() || path == "[heap]" || path == "[stack]";
            if !anon || !perms.ends_with('p') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (b > a).then_some((a, b - a))
        })
        .collect())
}

fn page_out(pid: libc::pid_t) -> Res<u64> {
    let ranges = anon_ranges(pid)?;
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

fn act(kind: &Kind, pids: &[(String, libc::pid_t)], cgroup: &TrialCgroup) -> Res<u64> {
    match kind {
        Kind::Anon { target } => {
            let pid = pids
                .iter()
                .find(|(n, _)| n == target)
                .map(|p| p.1)
                .ok_or_else(|| format!("no process {target} in this trial"))?;
            page_out(pid)
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
                match act(&step.kind, pids, cgroup) {
                    Ok(bytes) => control::fact(&format!("{}.bytes", step.name), bytes),
                    Err(e) => control::note(&format!("pressure {}: {e}", step.name)),
                }
                control::phase(&step.name);
            })
            .map_err(|e| format!("spawn pressure worker: {e}"))?;
    }
    Ok(())
}
