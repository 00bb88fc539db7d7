//! Other programs run with a time bound: a command that outlives its limit is stopped
//! together with everything it started (make's compilers, a shell pipeline, QEMU
//! under a test), so no wait on another program can hang memrace or its tests.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `kill_tree` lets a process tree exit on SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);
/// After a child exits, how long its pipes may stay open (held by something it left
/// running in the background) before the output collected so far is returned.
const DRAIN: Duration = Duration::from_secs(5);
const POLL_MAX: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("waiting for {what}: {source}")]
    Wait {
        what: String,
        source: std::io::Error,
    },
    /// `output` holds what the command printed before it was killed.
    #[error("{what} did not finish within {limit:.0?}; it was killed with everything it started")]
    Timeout {
        what: String,
        limit: Duration,
        output: Output,
    },
}

/// `cmd` as a person would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        text.push(' ');
        text.push_str(&a.to_string_lossy());
    }
    format!("`{text}`")
}

/// Like `Command::output`, but bounded by `limit`: on expiry the command and all its
/// descendants are killed and `ChildError::Timeout` carries what they printed.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, ChildError> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ChildError::Spawn {
            what: what.clone(),
            source,
        })?;
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = collect(child.stdout.take(), done_tx.clone());
    let stderr = collect(child.stderr.take(), done_tx);
    let wait_err = |source| ChildError::Wait {
        what: what.clone(),
        source,
    };
    let exited = wait_within(&mut child, limit).map_err(wait_err)?;
    let status = match exited {
        Some(status) => status,
        None => {
            kill_tree(child.id(), TERM_GRACE);
            child.wait().map_err(wait_err)?
        }
    };
    let drain_until = Instant::now() + DRAIN;
    for _ in 0..2 {
        let left = drain_until.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let take = |buf: &Arc<Mutex<Vec<u8>>>| {
        std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let output = Output {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    };
    match exited {
        Some(_) => Ok(output),
        None => Err(ChildError::Timeout {
            what,
            limit,
            output,
        }),
    }
}

/// Read `pipe` to its end on a thread, into the returned buffer; signal `done` then.
fn collect(pipe: Option<impl Read + Send + 'static>, done: Sender<()>) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let Some(mut pipe) = pipe else {
        let _ = done.send(());
        return buf;
    };
    let shared = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
        let _ = done.send(());
    });
    buf
}

/// The child's exit status, or `None` if it is still running after `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    let mut poll = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(poll.min(left));
        poll = (poll * 2).min(POLL_MAX);
    }
}

/// Stop `root` and every process below it. The tree is first frozen (SIGSTOP) so that
/// nothing forks away while it is collected; then SIGTERM (make deletes half-written
/// targets and stops its jobs), and SIGKILL for whatever is left after `grace`.
/// The caller still reaps `root` itself.
pub fn kill_tree(root: u32, grace: Duration) {
    let Ok(root) = i32::try_from(root) else {
        return;
    };
    let mut tree: Vec<i32> = Vec::new();
    // Each round freezes the processes found so far; a fork that raced with the
    // freeze shows up in the next round. A tree cannot outgrow the rounds: it is frozen.
    for _ in 0..64 {
        let new: Vec<i32> = tree_of(root)
            .into_iter()
            .filter(|p| !tree.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        for &p in &new {
            signal(p, libc::SIGSTOP);
        }
        tree.extend(new);
    }
    if !grace.is_zero() {
        for &p in &tree {
            signal(p, libc::SIGTERM);
            signal(p, libc::SIGCONT);
        }
        let deadline = Instant::now() + grace;
        while tree.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for &p in &tree {
        if alive(p) {
            signal(p, libc::SIGKILL);
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; the pids come
    // from /proc and belong to the process tree of a child this process started.
    unsafe { libc::kill(pid, sig) };
}

/// State and parent of a process, from `/proc/<pid>/stat` (the command name in
/// parentheses may itself contain spaces and parentheses: split after the last one).
fn stat(pid: i32) -> Option<(char, i32)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<(char, i32)> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Running or stopped, not gone and not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// `root` and all its descendants that are still alive.
fn tree_of(root: i32) -> Vec<i32> {
    let procs: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (state, ppid) = stat(pid)?;
            (state != 'Z' && state != 'X').then_some((pid, ppid))
        })
        .collect();
    let mut tree = Vec::new();
    if alive(root) {
        tree.push(root);
    }
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SIGKILL is delivered asynchronously: a killed process may take a moment to die.
    fn gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        !alive(pid)
    }

    #[test]
    fn a_quick_command_gives_its_output_and_status() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_command_past_its_bound_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A shell with a background grandchild and a foreground child, both sleeping
        // far longer than the bound, and output printed before the hang.
        let script = format!(
            "sleep 600 & echo $! > {p}; sleep 600 & echo $! >> {p}; echo started; wait",
            p = pids.display()
        );
        let started = Instant::now();
        let err = output_within(
            Command::new("sh").args(["-c", &script]),
            Duration::from_millis(500),
        )
        .unwrap_err();
        let ChildError::Timeout { output, .. } = &err else {
            panic!("expected a timeout, got {err}");
        };
        assert_eq!(
            output.stdout, b"started\n",
            "output before the kill is kept"
        );
        assert!(
            err.to_string().contains("did not finish within 500ms"),
            "{err}"
        );
        // The bound held: not the children's 600 s (slack for a loaded 2-core machine).
        assert!(started.elapsed() < Duration::from_secs(60));
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.lines().map(|l| l.parse::<i32>().unwrap()) {
            assert!(gone(pid), "sleep {pid} outlived the kill");
        }
    }

    #[test]
    fn a_tree_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 600; echo unreachable"])
            .spawn()
            .unwrap();
        // Let the shell install its trap and start sleep.
        let deadline = Instant::now() + Duration::from_secs(20);
        while tree_of(child.id() as i32).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let tree = tree_of(child.id() as i32);
        assert_eq!(tree.len(), 2, "sh and its sleep: {tree:?}");
        kill_tree(child.id(), Duration::from_millis(200));
        child.wait().unwrap();
        assert!(tree.iter().all(|&p| gone(p)), "{tree:?}");
    }

    #[test]
    fn stat_parses_names_with_parentheses_and_spaces() {
        assert_eq!(
            parse_stat("4242 (a (b) c) S 17 4242 4242 0 -1"),
            Some(('S', 17))
        );
        assert_eq!(parse_stat("4242 (x) "), None);
        let (_, ppid) = stat(std::process::id() as i32).unwrap();
        assert!(ppid > 0);
        assert!(stat(-1).is_none());
    }
}
