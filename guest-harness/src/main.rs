//! memrace guest harness: `/init` (PID 1) of the test initramfs.
//!
//! Mounts the pseudo file systems, opens the control channel (x86_64: ttyS1, arm64: hvc0;
//! `HELLO`, `FACT`s), runs the job in `/memrace/job` (a command, a workload or the
//! benchmarks), reports `EXIT` and reboots. Architecture specifics live in `arch`.
//! PID 1 never returns and never panics out: every failure becomes `OUT stderr` + `EXIT 125`.
//! See docs/control-protocol.md and docs/guest-harness.md.

mod arch;
mod child;
mod command;
mod control;
mod error;
mod gate;
mod job;
mod mem;
mod perf;
mod pin;
mod pressure;
mod relay;
mod shell;
mod system;
mod trial_cgroup;
mod workloads;

use control_proto::{Message, PROTOCOL_VERSION};

use error::Res;

const JOB_FILE: &str = "/memrace/job";
/// Exit code for harness failures (as opposed to the command's or workload's own).
const HARNESS_ERROR: i32 = 125;

fn run() -> Res<i32> {
    let mounted = system::mount_all();
    system::ensure_stdio();
    let control = control::open(arch::CONTROL_TTY, arch::CONTROL_TTY_WAIT);
    control::send(&Message::Hello {
        version: PROTOCOL_VERSION,
    });
    if let Err(e) = control {
        eprintln!("memrace-harness: control channel unavailable ({e}); writing it to the console");
    }
    mounted?;
    system::pin_unevictable_pages();
    system::send_facts(&system::ram0_size());
    let text = std::fs::read_to_string(JOB_FILE)
        .map_err(|e| error::describe(&format!("read {JOB_FILE}"), &e))?;
    let job = job::parse(&text)?;
    match job.mode {
        job::Mode::Command(argv) => command::run(&argv, job.params),
        job::Mode::Workload { name, trials } => workloads::run(&name, trials, job.params),
        job::Mode::Perf => perf::run(job.params),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(shell::BUILTIN_FLAG) {
        std::process::exit(shell::main(&args[2..]));
    }
    let code = match std::panic::catch_unwind(run) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            control::note(&e);
            HARNESS_ERROR
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            control::note(&format!("internal error (panic): {what}"));
            HARNESS_ERROR
        }
    };
    control::send(&Message::Exit { code });
    system::finish(code)
}
