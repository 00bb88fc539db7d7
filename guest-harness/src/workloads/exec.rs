//! `exec`: run the user's own programs as the race workload (docs/guest-harness.md).
//!
//! Every trial starts each `[[process]]` fresh: forked, moved into the trial's cgroup,
//! pinned, cut off from the control port, and (gated) held in user mode on a mailbox gate
//! before `execve`, so that a schedule can arm breakpoints on its tid first. Pressure
//! workers (schedule `reclaim` steps) wait on gates of their own. The verdict comes from
//! the programs' stdout lines and exit status, as the scenario declares.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use control_proto::{unescape, Message, Outcome, Stream};
use regex::Regex;

use super::{Trial, Workload};
use crate::child::Ended;
use crate::control;
use crate::error::{self, Res};
use crate::gate::Gate;
use crate::job::Params;
use crate::pin;
use crate::pressure::{self, Pressure};
use crate::relay::{self, Relay};
use crate::trial_cgroup::TrialCgroup;

/// linux/capability.h (the libc crate does not export them).
const CAP_MKNOD: libc::c_ulong = 27;
const CAP_SYS_ADMIN: libc::c_ulong = 21;

/// Lines of program output forwarded as `OUT` per trial (the rest is only judged).
const FORWARDED_LINES: usize = 200;
/// Output kept for judging per trial; a program that prints more is cut off there.
const KEPT_BYTES: usize = 1 << 20;

/// One `[[process]]`.
struct Process {
    name: String,
    argv: Vec<CString>,
    cpu: usize,
    gated: bool,
    setup: bool,
}

pub struct Exec {
    processes: Vec<Process>,
    reproduced: Vec<Regex>,
    intact: Vec<Regex>,
    exit_reproduced: Vec<i32>,
    exit_intact: Vec<i32>,
    timeout: Duration,
    gate_timeout: Duration,
    pressure: Vec<Pressure>,
    cgroup: crate::trial_cgroup::Limits,
}

fn argv(text: &str) -> Res<Vec<CString>> {
    text.split(' ')
        .map(|w| {
            let bytes = unescape(w).map_err(|e| format!("argv word {w:?}: {e}"))?;
            CString::new(bytes).map_err(|_| format!("argv word {w:?} contains NUL"))
        })
        .collect()
}

fn ints(text: Option<String>) -> Res<Vec<i32>> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => t
            .split(',')
            .map(|n| n.parse().map_err(|_| format!("bad exit status {n:?}")))
            .collect(),
    }
}

fn patterns(params: &mut Params, kind: &str) -> Res<Vec<Regex>> {
    let mut out = Vec::new();
    while let Some(p) = params.take(&format!("verdict_{kind}{}", out.len())) {
        out.push(Regex::new(&p).map_err(|e| format!("verdict {kind} pattern {p:?}: {e}"))?);
    }
    Ok(out)
}

impl Exec {
    pub fn new(params: &mut Params) -> Res<Exec> {
        let mut processes = Vec::new();
        while let Some(name) = params.take(&format!("proc{}_name", processes.len())) {
            let i = processes.len();
            let key = |k: &str| format!("proc{i}_{k}");
            let text = params
                .take(&key("argv"))
                .ok_or_else(|| format!("process {name}: no argv"))?;
            processes.push(Process {
                name,
                argv: argv(&text)?,
                cpu: params.take_cpu(&key("cpu"), 0)?,
                gated: params.take_bool(&key("gated"), true)?,
                setup: params.take_bool(&key("setup"), false)?,
            });
        }
        if processes.iter().all(|p| p.setup) {
            return Err("exec: no process to run".into());
        }
        Ok(Exec {
            reproduced: patterns(params, "reproduced")?,
            intact: patterns(params, "intact")?,
            exit_reproduced: ints(params.take("exit_reproduced"))?,
            exit_intact: ints(params.take("exit_intact"))?,
            timeout: Duration::from_millis(params.take_u64("timeout_ms", 20_000)?),
            gate_timeout: Duration::from_millis(params.take_u64("gate_timeout_ms", 60_000)?),
            pressure: pressure::from_params(params)?,
            cgroup: crate::trial_cgroup::Limits::from_params(params)?,
            processes,
        })
    }

    fn judge(&self, stdout: &str, first_exit: Option<Ended>) -> (Outcome, String) {
        let find = |res: &[Regex]| {
            stdout
                .lines()
                .find(|l| res.iter().any(|r| r.is_match(l)))
                .map(str::to_string)
        };
        if let Some(line) = find(&self.reproduced) {
            return (Outcome::Reproduced, format!("line={line:?}"));
        }
        let code = match first_exit {
            Some(Ended::Exited(c)) => Some(c),
            _ => None,
        };
        if let Some(c) = code.filter(|c| self.exit_reproduced.contains(c)) {
            return (Outcome::Reproduced, format!("exit={c}"));
        }
        if let Some(line) = find(&self.intact) {
            return (Outcome::Intact, format!("line={line:?}"));
        }
        if let Some(c) = code.filter(|c| self.exit_intact.contains(c)) {
            return (Outcome::Intact, format!("exit={c}"));
        }
        let how = match first_exit {
            Some(Ended::Signaled(s)) => format!("killed-by-signal-{s}"),
            Some(Ended::TimedOut) => "timeout".into(),
            Some(Ended::Exited(c)) => format!("exit={c}"),
            None => "not-started".into(),
        };
        (Outcome::Error, format!("no-verdict {how}"))
    }
}

/// A started program: its pid, the read ends of its stdout, its stderr and (for a
/// racing process) its memrace.h channel.
struct Running {
    pid: libc::pid_t,
    out: [Option<File>; 3],
    relay: Option<Relay>,
    ended: Option<Ended>,
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    crate::child::pipe().map_err(|e| error::describe("pipe2", &e))
}

/// Cut the program off from the bench: a private mount namespace in which the control
/// port is /dev/null, and no CAP_SYS_ADMIN or CAP_MKNOD after execve (so it cannot
/// unmount that or make a new device node). Returns the failing step on error.
fn isolate() -> Result<(), &'static str> {
    // SAFETY: plain system calls on constant, NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err("unshare-mount-namespace");
        }
        // Our mounts must not propagate back into PID 1's namespace.
        let none = std::ptr::null();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err("make-mounts-private");
        }
        for port in [c"/dev/ttyS1", c"/dev/hvc0"] {
            if libc::access(port.as_ptr(), libc::F_OK) == 0
                && libc::mount(
                    c"/dev/null".as_ptr(),
                    port.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err("hide-control-port");
            }
        }
        for cap in [CAP_SYS_ADMIN, CAP_MKNOD] {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                return Err("drop-capability");
            }
        }
    }
    Ok(())
}

/// Everything the forked child needs, prepared before the fork (the child only makes
/// system calls).
struct Start<'a> {
    process: &'a Process,
    gate: Option<(&'a Gate, usize, Duration)>,
    cgroup: &'a TrialCgroup,
    env: &'a [CString],
    /// Give the program a memrace.h channel (racing processes, not setup ones).
    relay: bool,
    gate_timeout: Duration,
}

/// Fork the program; the child joins the cgroup, pins, isolates, reports READY and waits
/// at its gate (if any), then execs. A failure before exec is printed on the program's
/// stderr (so it lands in the trial's output) and exits 127.
fn start(s: &Start) -> Res<Running> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null = File::open("/dev/null").map_err(|e| error::describe("open /dev/null", &e))?;
    let (mut relay, ctl_r) = match s.relay {
        true => Relay::new(&s.process.name).map(|(r, f)| (Some(r), Some(f)))?,
        false => (None, None),
    };
    let mut env = s.env.to_vec();
    if relay.is_some() {
        for (k, v) in [
            ("MEMRACE_CTL_FD", relay::CTL_FD.to_string()),
            ("MEMRACE_GATE_FD", relay::GATE_FD.to_string()),
            (
                "MEMRACE_GATE_TIMEOUT_MS",
                s.gate_timeout.as_millis().to_string(),
            ),
        ] {
            env.push(CString::new(format!("{k}={v}")).expect("no NUL"));
        }
    }
    let mut arg_ptrs: Vec<*const libc::c_char> =
        s.process.argv.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let procs = s.cgroup.procs_path();
    // SAFETY: the trial process is single-threaded here (pressure threads start after every
    // program is forked), so the child may run Rust code until execve.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(error::last("fork"));
    }
    if pid == 0 {
        let fail = |why: &str| -> ! {
            let line = format!("memrace-harness: {}: {why}\n", s.process.name);
            // SAFETY: writes a valid buffer to our stderr pipe, then ends the child.
            unsafe {
                libc::write(err_w.as_raw_fd(), line.as_ptr().cast(), line.len());
                libc::_exit(127)
            }
        };
        if std::fs::write(&procs, b"0").is_err() {
            fail("join-trial-cgroup");
        }
        if pin::pin_to(s.process.cpu).is_err() {
            fail("pin");
        }
        if let Err(step) = isolate() {
            fail(step);
        }
        if let Some((gate, index, timeout)) = s.gate {
            control::send(&Message::Ready {
                name: s.process.name.clone(),
                cpu: pin::current_cpu(),
                tid: pin::tid(),
            });
            if gate.wait(index, timeout).is_err() {
                fail("gate-timeout");
            }
        }
        // SAFETY: every pointer was prepared before the fork and stays valid; execve only
        // returns on failure.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(out_w.as_raw_fd(), 1);
            libc::dup2(err_w.as_raw_fd(), 2);
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        if relay.as_ref().is_some_and(|r| !r.install_in_child()) {
            fail("memrace-h-channel");
        }
        // SAFETY: as above.
        unsafe {
            libc::execve(arg_ptrs[0], arg_ptrs.as_ptr(), env_ptrs.as_ptr());
        }
        let errno = std::io::Error::last_os_error();
        fail(&format!("exec-failed {errno}"));
    }
    drop((out_w, err_w));
    if let Some(r) = relay.as_mut() {
        r.close_child_ends();
    }
    Ok(Running {
        pid,
        out: [Some(File::from(out_r)), Some(File::from(err_r)), ctl_r],
        relay,
        ended: None,
    })
}

/// What a trial's programs printed, collected for judging and forwarding.
#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    forwarded_lines: usize,
}

impl Output {
    fn add(&mut self, stream: Stream, data: &[u8]) {
        if self.forwarded_lines < FORWARDED_LINES {
            self.forwarded_lines += data.iter().filter(|&&b| b == b'\n').count();
            control::output(stream, data);
        }
        if stream == Stream::Stdout && self.stdout.len() < KEPT_BYTES {
            let room = KEPT_BYTES - self.stdout.len();
            self.stdout.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
}

/// Forward every program's output, relay its memrace.h messages (names in `reserved` are
/// the harness's own), and reap them until all have ended and their pipes are drained, or
/// `deadline`.
fn supervise(
    running: &mut [Running],
    output: &mut Output,
    deadline: Instant,
    reserved: &[String],
) -> Res<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let mut fds = Vec::new();
        for (i, r) in running.iter().enumerate() {
            for (j, f) in r.out.iter().enumerate() {
                if let Some(f) = f {
                    fds.push((
                        i,
                        j,
                        libc::pollfd {
                            fd: f.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ));
                }
            }
        }
        for r in running.iter_mut().filter(|r| r.ended.is_none()) {
            r.ended = crate::child::try_wait(r.pid)?;
        }
        let all_ended = running.iter().all(|r| r.ended.is_some());
        if fds.is_empty() && all_ended {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("timeout".into());
        }
        let mut pfds: Vec<libc::pollfd> = fds.iter().map(|f| f.2).collect();
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
        for (k, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let (i, j, _) = fds[k];
            let r = &mut running[i];
            let n = r.out[j].as_mut().map_or(Ok(0), |f| f.read(&mut buf));
            match n {
                Ok(0) | Err(_) => r.out[j] = None,
                Ok(n) if j == 2 => {
                    if let Some(relay) = r.relay.as_mut() {
                        relay.feed(&buf[..n], r.pid, reserved);
                    }
                }
                Ok(n) => output.add(
                    if j == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    },
                    &buf[..n],
                ),
            }
        }
    }
}

fn environment() -> Vec<CString> {
    crate::command::ENV
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).expect("static environment"))
        .collect()
}

impl Workload for Exec {
    fn prepare(&self) -> Res<()> {
        crate::trial_cgroup::enable_controllers()
    }

    fn trial_timeout(&self) -> Duration {
        // Setup processes, the gate waits and the programs' own bound, plus the oracle.
        self.timeout * 2 + self.gate_timeout + Duration::from_secs(30)
    }

    fn trial(&self, trial: &Trial) -> Res<()> {
        let cgroup = TrialCgroup::create(trial.number, &self.cgroup)?;
        let result = self.run_programs(&cgroup);
        // Nothing the programs started may outlive the trial.
        cgroup.kill_all();
        let (outcome, detail) = result?;
        trial.report(outcome, &detail);
        Ok(())
    }
}

impl Exec {
    fn run_programs(&self, cgroup: &TrialCgroup) -> Res<(Outcome, String)> {
        let env = environment();
        let mut output = Output::default();
        for p in self.processes.iter().filter(|p| p.setup) {
            let s = Start {
                process: p,
                gate: None,
                cgroup,
                env: &env,
                relay: false,
                gate_timeout: self.gate_timeout,
            };
            let mut running = [start(&s)?];
            let deadline = Instant::now() + self.timeout;
            if supervise(&mut running, &mut output, deadline, &[]).is_err() {
                return Ok((Outcome::Error, format!("setup-timeout {}", p.name)));
            }
            if running[0].ended != Some(Ended::Exited(0)) {
                return Ok((
                    Outcome::Error,
                    format!("setup-failed {} {:?}", p.name, running[0].ended),
                ));
            }
        }
        let main: Vec<&Process> = self.processes.iter().filter(|p| !p.setup).collect();
        let gated = main.iter().filter(|p| p.gated).count() + self.pressure.len();
        let gate = if gated > 0 { Some(Gate::new()?) } else { None };
        // Gate words: gated programs first, in [[process]] order, then pressure workers.
        let mut names: Vec<&str> = main
            .iter()
            .filter(|p| p.gated)
            .map(|p| p.name.as_str())
            .collect();
        names.extend(self.pressure.iter().map(|p| p.name.as_str()));
        if let Some(g) = &gate {
            for (i, name) in names.iter().enumerate() {
                g.announce(i, name);
            }
        }
        // A program's memrace.h cannot claim what the harness announces.
        let reserved: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut running = Vec::new();
        let mut word = 0;
        for p in &main {
            let slot = gate.as_ref().filter(|_| p.gated).map(|g| {
                word += 1;
                (g, word - 1, self.gate_timeout)
            });
            let s = Start {
                process: p,
                gate: slot,
                cgroup,
                env: &env,
                relay: true,
                gate_timeout: self.gate_timeout,
            };
            running.push((p.name.clone(), start(&s)?));
        }
        let pids: Vec<(String, libc::pid_t)> =
            running.iter().map(|(n, r)| (n.clone(), r.pid)).collect();
        let mut procs: Vec<Running> = running.into_iter().map(|(_, r)| r).collect();
        let deadline = Instant::now() + self.timeout;
        // Pressure workers are threads: they start only now, after every fork above.
        let supervised = std::thread::scope(|scope| {
            pressure::start(
                scope,
                &self.pressure,
                gate.as_ref().map(|g| (g, word, self.gate_timeout)),
                &pids,
                cgroup,
            )?;
            let supervised = supervise(&mut procs, &mut output, deadline, &reserved);
            if supervised.is_err() {
                cgroup.kill_all();
                // Drain what is left so the verdict sees everything that was printed.
                let _ = supervise(
                    &mut procs,
                    &mut output,
                    Instant::now() + Duration::from_secs(2),
                    &reserved,
                );
            }
            Res::Ok(supervised)
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let first = if supervised.is_err() {
            Some(Ended::TimedOut)
        } else {
            procs.first().and_then(|r| r.ended)
        };
        let (outcome, detail) = self.judge(&stdout, first);
        Ok((outcome, detail))
    }
}
