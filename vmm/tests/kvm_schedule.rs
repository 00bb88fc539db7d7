//! The real schedule engine on the kvm backend, against the synthetic lost-update
//! race (`fixtures::race`): schedules written in TOML, breakpoints at raw addresses.
//!
//! Each run boots a fresh two-vCPU guest. Both vCPUs spin on a mailbox gate the guest
//! announces (`GATE go …`), so the schedule arms its breakpoints before either vCPU
//! touches the counter; `open = "go"` starts the race.

mod kvm_support;

use std::time::{Duration, Instant};

use kvm_support::{kvm_or_report, read_u64};
use memrace::backend::kvm::fixtures::{self, Race};
use memrace::backend::kvm::{launch_program, KvmOptions};
use memrace::backend::Backend;
use memrace::sched::engine::{Engine, Introspect, ScheduleStatus, TaskLayout, TrialRun};
use memrace::sched::schedule::{RawSchedule, Schedule};
use memrace::sched::trace::TraceEvent;

const RUNS: usize = 100;

/// Breakpoint specs are raw hexadecimal addresses; there is no kernel to introspect.
struct RawAddresses;

impl Introspect for RawAddresses {
    fn resolve(&self, spec: &str) -> Result<u64, String> {
        let hex = spec
            .strip_prefix("0x")
            .ok_or_else(|| format!("{spec:?}: synthetic guests take raw addresses (0x…)"))?;
        u64::from_str_radix(hex, 16).map_err(|e| format!("{spec:?}: {e}"))
    }

    fn describe(&self, addr: u64) -> String {
        format!("{addr:#x}")
    }

    fn task_layout(&self) -> Option<TaskLayout> {
        None
    }

    fn is_code(&self, addr: u64) -> bool {
        (fixtures::CODE_BASE..fixtures::DATA_BASE).contains(&addr)
    }
}

#[derive(serde::Deserialize)]
struct ScheduleFile {
    schedule: RawSchedule,
}

fn parse(name: &str, text: &str) -> Schedule {
    let file: ScheduleFile = toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    Schedule::from_raw(name, text, file.schedule, 2, 4).unwrap_or_else(|e| panic!("{e}"))
}

/// vCPU 0 loads, vCPU 1 then does a whole increment, vCPU 0 stores its stale value.
fn lost_update(fx: &Race) -> String {
    format!(
        r#"
[schedule]
step_timeout_ms = 10000
fallback = [1, 0]
steps = [
  {{ break = "{between:#x}", cpu = 0, name = "v0-loaded" }},
  {{ break = "{load:#x}", cpu = 1, name = "v1-load" }},
  {{ open = "{gate}" }},
  {{ hit = "v0-loaded", allow_irqs_off = true }},
  {{ hit = "v1-load", allow_irqs_off = true }},
  {{ break = "{done:#x}", cpu = 1, name = "v1-done" }},
  {{ release = 1 }},
  {{ hit = "v1-done", allow_irqs_off = true }},
  {{ break = "{done:#x}", cpu = 0, name = "v0-done" }},
  {{ release = 0 }},
  {{ hit = "v0-done", allow_irqs_off = true }},
]
"#,
        between = fx.between,
        load = fx.load,
        done = fx.done,
        gate = Race::GATE,
    )
}

/// vCPU 0 completes its increment before vCPU 1 loads.
fn serialised(fx: &Race) -> String {
    format!(
        r#"
[schedule]
step_timeout_ms = 10000
fallback = [1, 0]
steps = [
  {{ break = "{done:#x}", cpu = 0, name = "v0-done" }},
  {{ break = "{load:#x}", cpu = 1, name = "v1-load" }},
  {{ open = "{gate}" }},
  {{ hit = "v0-done", allow_irqs_off = true }},
  {{ hit = "v1-load", allow_irqs_off = true }},
  {{ break = "{done:#x}", cpu = 1, name = "v1-done" }},
  {{ release = 1 }},
  {{ hit = "v1-done", allow_irqs_off = true }},
]
"#,
        load = fx.load,
        done = fx.done,
        gate = Race::GATE,
    )
}

/// One fresh guest, one trial; returns the trial and the final counter.
fn run_once(opts: &KvmOptions, fx: &Race, schedule: &Schedule) -> (TrialRun, u64) {
    let mut vm = launch_program(&fx.program, opts).expect("launch the race guest");
    let trial = {
        let intro = RawAddresses;
        let mut engine = Engine::start(&mut vm, &intro).expect("start the engine");
        engine.run_trial(1, schedule)
    };
    let counter = read_u64(&vm, fx.counter);
    vm.kill();
    (trial, counter)
}

/// Microseconds from each `release` to the next hit: the engine's per-hit round trip
/// (resume with a step past the breakpoint, guest run, event, register read).
fn release_to_hit_us(trial: &TrialRun) -> Vec<u64> {
    let mut gaps = Vec::new();
    let mut released = None;
    for event in &trial.trace {
        match event {
            TraceEvent::Release { t_us, .. } => released = Some(*t_us),
            TraceEvent::Hit { t_us, .. } => {
                if let Some(from) = released.take() {
                    gaps.push(t_us - from);
                }
            }
            _ => {}
        }
    }
    gaps
}

/// Run `schedule` `RUNS` times; every run must complete and end with `expected`.
fn repeat(opts: &KvmOptions, name: &str, text: &str, expected: u64) {
    let fx = fixtures::race(1);
    let schedule = parse(name, text);
    let (mut matched, mut gaps, mut trials) = (0, Vec::new(), Vec::new());
    let started = Instant::now();
    for run in 0..RUNS {
        let (trial, counter) = run_once(opts, &fx, &schedule);
        assert_eq!(
            trial.schedule,
            ScheduleStatus::Completed,
            "{name} run {run}: {trial:#?}"
        );
        assert_eq!(trial.hits.len(), schedule.expected_hits().len());
        matched += usize::from(counter == expected);
        gaps.extend(release_to_hit_us(&trial));
        trials.push(Duration::from_secs_f64(trial.seconds));
    }
    let wall = started.elapsed();
    gaps.sort_unstable();
    trials.sort_unstable();
    let trial = trials[RUNS / 2];
    let hits = schedule.expected_hits().len();
    eprintln!(
        "{name}: counter == {expected} in {matched}/{RUNS} runs; median trial {trial:.2?} for \
         {hits} hits ({:.0} hits/s, slowest trial {:.2?}); release to next hit: median {} µs, \
         p90 {} µs; {:.2?} per run with launch and teardown",
        hits as f64 / trial.as_secs_f64(),
        trials[RUNS - 1],
        gaps[gaps.len() / 2],
        gaps[gaps.len() * 9 / 10],
        wall / RUNS as u32,
    );
    assert_eq!(matched, RUNS, "{name}: counter == {expected}");
}

#[test]
fn parking_vcpu0_between_load_and_store_loses_the_update_every_time() {
    let Some(opts) = kvm_or_report("kvm schedule engine") else {
        return;
    };
    repeat(
        &opts,
        "lost-update.toml",
        &lost_update(&fixtures::race(1)),
        1,
    );
}

#[test]
fn the_serialised_schedule_never_loses_an_update() {
    let Some(opts) = kvm_or_report("kvm schedule engine") else {
        return;
    };
    repeat(&opts, "serialised.toml", &serialised(&fixtures::race(1)), 2);
}

#[test]
fn parking_with_interrupts_off_is_refused_unless_allowed() {
    let Some(opts) = kvm_or_report("kvm schedule engine") else {
        return;
    };
    let fx = fixtures::race(1);
    // The first `hit` parks vCPU 0 at `between`; recovery then releases it.
    let text = lost_update(&fx).replacen(", allow_irqs_off = true", "", 1);
    let (trial, _) = run_once(&opts, &fx, &parse("irqs-off.toml", &text));
    match &trial.schedule {
        ScheduleStatus::Error { why, .. } => assert!(why.contains("IF=0"), "{why}"),
        other => panic!("expected a schedule error, got {other:?}"),
    }
}

/// Fault injection on memrace's own VMM: a breakpoint at a function's entry with
/// `return = 42` makes the call return 42 without running the function (KVM_SET_REGS:
/// rax, rip from the stack, rsp); with a plain breakpoint there the function runs and
/// returns its own 7.
#[test]
fn a_forced_return_at_a_function_entry_hands_the_caller_the_chosen_value() {
    let Some(opts) = kvm_or_report("kvm fault injection") else {
        return;
    };
    let fx = fixtures::call_return();
    for (inject, expected) in [(", return = 42", 42), ("", fixtures::CallReturn::RETURNED)] {
        let release = if inject.is_empty() {
            "{ release = 0 },"
        } else {
            ""
        };
        let text = format!(
            r#"
[schedule]
step_timeout_ms = 10000
fallback = [0]
steps = [
  {{ break = "{function:#x}", cpu = 0, name = "f"{inject} }},
  {{ break = "{done:#x}", cpu = 0, name = "done" }},
  {{ open = "{gate}" }},
  {{ hit = "f", allow_irqs_off = true }},
  {release}
  {{ hit = "done", allow_irqs_off = true }},
]
"#,
            function = fx.function,
            done = fx.done,
            gate = fixtures::CallReturn::GATE,
        );
        let schedule = parse("inject.toml", &text);
        let mut vm = launch_program(&fx.program, &opts).expect("launch the call guest");
        let trial = {
            let intro = RawAddresses;
            let mut engine = Engine::start(&mut vm, &intro).expect("start the engine");
            engine.run_trial(1, &schedule)
        };
        let result = read_u64(&vm, fx.result);
        vm.kill();
        assert_eq!(trial.schedule, ScheduleStatus::Completed, "{trial:#?}");
        assert_eq!(result, expected, "{inject:?}: {trial:#?}");
        let injected = trial
            .trace
            .iter()
            .any(|e| matches!(e, TraceEvent::Inject { value: 42, .. }));
        assert_eq!(injected, !inject.is_empty(), "{trial:#?}");
    }
}
