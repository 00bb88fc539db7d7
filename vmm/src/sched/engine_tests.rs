//! The schedule engine against a scripted guest (sched/fake.rs): no VM, no kernel.

use super::engine::{Engine, ScheduleStatus, TrialRun};
use super::fake::*;
use super::trace::TraceEvent;
use crate::backend::{Backend, VmEvent, VmExit};
use std::time::Duration;

/// One trial of the schedule `text` on `vm`, as `memrace run` starts it.
fn run(vm: &mut FakeVm, text: &str) -> TrialRun {
    let s = schedule(text, vm.vcpu_count());
    let mut engine = Engine::start(vm, &FakeKernel).expect("started");
    engine.run_trial(1, &s)
}

fn bp(vcpu: usize, name: &str) -> Call {
    Call::Event(VmEvent::Breakpoint {
        vcpu,
        addr: sym(name),
    })
}

/// The index of the control message `line` among the fake's calls.
fn message_at(vm: &FakeVm, line: &str) -> usize {
    vm.first(|c| matches!(c, Call::Event(VmEvent::Control(m)) if m.to_string() == line))
        .unwrap_or_else(|| panic!("the guest never sent {line:?}"))
}

fn trace_hits(run: &TrialRun) -> Vec<(String, usize)> {
    run.trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Hit { name, cpu, .. } => Some((name.clone(), *cpu)),
            _ => None,
        })
        .collect()
}

fn releases(run: &TrialRun) -> Vec<usize> {
    run.trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Release { cpu, .. } => Some(*cpu),
            _ => None,
        })
        .collect()
}

const IN_ORDER: &str = r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "a" },
  { break = "beta", cpu = 2, name = "b" },
  { hit = "a" },
  { hit = "b" },
  { release = 2 },
  { wait = "PHASE two-done" },
  { release = 1 },
  { wait = "PHASE one-done" },
  { wait = "RESULT" },
]
"#;

fn in_order_guest() -> FakeVm {
    FakeVm::new(3)
        .script(
            0,
            [
                after(2, "beta"),
                after(1, "alpha"),
                send("RESULT 1 intact fine"),
            ],
        )
        .script(1, [reach("alpha"), send("PHASE one-done")])
        .script(2, [reach("beta"), send("PHASE two-done")])
}

#[test]
fn hits_in_schedule_order_park_each_vcpu_until_its_release() {
    for all_stop in [false, true] {
        let mut vm = in_order_guest();
        if all_stop {
            vm = vm.all_stop();
        }
        let run = run(&mut vm, IN_ORDER);
        assert_eq!(
            run.schedule,
            ScheduleStatus::Completed,
            "all-stop {all_stop}"
        );
        assert_eq!(run.hits, ["a", "b"]);
        assert_eq!(trace_hits(&run), [("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(run.oracle, Some(("intact".into(), "fine".into())));
        // Parked vCPUs stay out of every resume until their release; the start runs all.
        assert_eq!(
            vm.resumes(),
            [
                vec![0, 1, 2],
                vec![0, 2],
                vec![0],
                vec![0, 2],
                vec![0, 1, 2]
            ],
            "all-stop {all_stop}"
        );
        // Breakpoints only on their own vCPU; a release disarms its breakpoint.
        let sets: Vec<Call> = vm
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::SetBreakpoints(..)))
            .cloned()
            .collect();
        assert_eq!(
            sets,
            [
                Call::SetBreakpoints(1, vec![sym("alpha")]),
                Call::SetBreakpoints(2, vec![sym("beta")]),
                Call::SetBreakpoints(2, vec![]),
                Call::SetBreakpoints(1, vec![]),
            ]
        );
        // Released in the schedule's order: vCPU 2's thread finished first.
        assert!(message_at(&vm, "PHASE two-done") < message_at(&vm, "PHASE one-done"));
        let Some(TraceEvent::Hit {
            symbol, tid, comm, ..
        }) = run.trace.iter().find(|e| e.hit_name() == Some("a"))
        else {
            panic!("no hit a in {:?}", run.trace)
        };
        assert_eq!(
            (symbol.as_str(), *tid, comm.as_deref()),
            ("alpha+0x0", Some(1001), Some("swapper"))
        );
    }
}

#[test]
fn a_hit_before_its_step_parks_at_once_and_completes_that_step_later() {
    // vCPU 1 (scripted first) reaches b's point while the engine waits for a.
    let mut vm = FakeVm::new(3)
        .script(1, [reach("beta"), send("PHASE one-done")])
        .script(2, [reach("alpha")]);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "alpha", cpu = 2, name = "a" },
  { break = "beta", cpu = 1, name = "b" },
  { hit = "a" },
  { hit = "b" },
  { release = 1 },
  { wait = "PHASE one-done" },
  { release = 2 },
]
"#,
    );
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    // The trial records the order the hits happened in: not the schedule's.
    assert_eq!(run.hits, ["b", "a"]);
    assert_ne!(run.hits, schedule_hits(&run));
    // vCPU 1 was parked at its early hit, before its `hit` step ran.
    assert_eq!(vm.resumes()[1], [0, 2]);
    let step_b = run
        .trace
        .iter()
        .position(|e| matches!(e, TraceEvent::Step { line: 6, .. }))
        .unwrap();
    let hit_b = run
        .trace
        .iter()
        .position(|e| e.hit_name() == Some("b"))
        .unwrap();
    assert!(hit_b < step_b, "{:?}", run.trace);
    // The `hit b` step took the remembered hit: only the two stops were reported.
    let stops = vm
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Event(VmEvent::Breakpoint { .. })))
        .count();
    assert_eq!(stops, 2);
}

fn schedule_hits(run: &TrialRun) -> Vec<String> {
    run.trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Step { action, .. } => action.strip_prefix("hit ").map(String::from),
            _ => None,
        })
        .collect()
}

#[test]
fn a_hit_whose_task_condition_is_false_is_stepped_over_and_counted() {
    let mut vm = FakeVm::new(2)
        .script(0, [send("READY reader 1 101")])
        .task(1, 200, "other")
        .script(
            1,
            [
                reach("alpha"),
                switch(101, "reader"),
                reach("alpha"),
                send("PHASE done"),
            ],
        );
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { wait = "READY reader" },
  { break = "alpha", cpu = 1, name = "a", if = "tid == $reader.tid && comm == \"reader\"" },
  { hit = "a" },
  { release = 1 },
  { wait = "PHASE done" },
]
"#,
    );
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    assert_eq!(run.filtered_hits, 1);
    let kinds: Vec<(&str, Option<u64>)> = run
        .trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Filtered { tid, .. } => Some(("filtered", *tid)),
            TraceEvent::Hit { tid, .. } => Some(("hit", *tid)),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [("filtered", Some(200)), ("hit", Some(101))]);
    // The filtered hit was stepped over at once: vCPU 1 was resumed right after it.
    let first = vm.first(|c| *c == bp(1, "alpha")).unwrap();
    assert_eq!(vm.calls()[first + 1], Call::Resume(vec![0, 1]));
    assert_eq!(vm.passed(1), [sym("alpha"), sym("alpha")]);
}

#[test]
fn a_register_condition_with_a_fact_and_the_hit_count_picks_the_matching_hit() {
    let arg3 = |v: u64| [0, 0, v, 0, 0, 0];
    let mut vm = FakeVm::new(2)
        .script(0, [send("FACT addr.y 0x7000")])
        .script(
            1,
            [
                reach_with("alpha", true, arg3(0x7000)),
                reach_with("alpha", true, arg3(0x6000)),
                reach_with("alpha", true, arg3(0x7000)),
            ],
        );
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { wait = "FACT addr.y" },
  { break = "alpha", cpu = 1, name = "a", if = "arg3 == $fact.addr.y && hits >= 2" },
  { hit = "a" },
  { release = 1 },
]
"#,
    );
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    // The first fails `hits >= 2`, the second `arg3`; the third is the hit.
    assert_eq!(run.filtered_hits, 2);
    let Some(TraceEvent::Hit { regs, .. }) = run.trace.iter().find(|e| e.hit_name().is_some())
    else {
        panic!("no hit in {:?}", run.trace)
    };
    assert_eq!(vm.stops().len(), 3);
    assert_eq!(
        **regs,
        vm.stops()[2].1,
        "the hit records the third stop's registers"
    );
}

#[test]
fn a_condition_on_a_name_the_guest_never_reported_is_a_schedule_error() {
    let mut vm = FakeVm::new(2).script(1, [reach("alpha")]);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "a", if = "tid == $writer.tid" },
  { hit = "a" },
]
"#,
    );
    let ScheduleStatus::Error { line, why } = &run.schedule else {
        panic!("{:?}", run.schedule)
    };
    assert_eq!(*line, 4);
    assert!(
        why.contains("breakpoint \"a\"") && why.contains("not known yet"),
        "{why}"
    );
    assert!(run.hits.is_empty());
    // The vCPU left on the breakpoint is let go by the recovery.
    assert_eq!(vm.resumes().last().unwrap(), &[0, 1]);
    assert_eq!(vm.passed(1), [sym("alpha")]);
}

/// vCPU 1 parks at alpha; vCPU 2's thread, started by gate `flusher`, then IPIs it and
/// waits for the IPI to be taken (a TLB shootdown) before it reports `PHASE flushed`.
fn ipi_guest(noise: Option<&str>) -> FakeVm {
    FakeVm::new(3)
        .script(
            2,
            [
                gate("flusher", 0x1000),
                match noise {
                    None => ipi(1),
                    Some(line) => Ev::Ipi {
                        cpu: 1,
                        noise: Some(line.into()),
                    },
                },
                send("PHASE flushed"),
            ],
        )
        .script(1, [reach("alpha"), reach("beta"), send("PHASE done")])
}

const IPI: &str = r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "a" },
  { hit = "a" },
  { open = "flusher" },
  { wait = "PHASE flushed", timeout_ms = 2000 },
  { release = 1 },
  { wait = "PHASE done" },
]
"#;

#[test]
fn a_parked_vcpu_is_reentered_to_take_an_ipi_another_vcpu_waits_for() {
    let mut vm = ipi_guest(None);
    let run = run(&mut vm, IPI);
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    assert_eq!(run.serviced, 1);
    let service = vm
        .first(|c| matches!(c, Call::Service { .. }))
        .expect("serviced");
    assert_eq!(
        vm.calls()[service],
        Call::Service {
            running: vec![0, 2],
            parked: vec![1]
        }
    );
    // Its breakpoint fired again and it stayed parked; the IPI was taken only then.
    let refire = service
        + 1
        + vm.calls()[service + 1..]
            .iter()
            .position(|c| *c == bp(1, "alpha"))
            .unwrap();
    assert_eq!(vm.calls()[refire + 1], Call::Resume(vec![0, 2]));
    assert!(service < message_at(&vm, "PHASE flushed"));
    // The re-fire is not a new hit.
    assert_eq!(run.hits, ["a"]);
    assert_eq!(trace_hits(&run).len(), 1);
}

#[test]
fn a_stream_of_console_lines_does_not_starve_the_parked_vcpus_of_their_service() {
    // vCPU 2 prints at every poll while it waits: the engine is never idle.
    let mut vm = ipi_guest(Some("rcu: INFO: rcu_preempt detected stalls"));
    let run = run(&mut vm, IPI);
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    assert_eq!(run.serviced, 1);
    let lines = vm
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Event(VmEvent::Console(_))))
        .count();
    assert!(lines > 100, "only {lines} console lines before the service");
    assert!(
        vm.first(|c| matches!(c, Call::Service { .. })).unwrap() < message_at(&vm, "PHASE flushed")
    );
}

#[test]
fn a_serviced_vcpu_steps_past_another_of_its_breakpoints_on_the_interrupt_path_and_stays_parked() {
    // The interrupt handler runs through beta, where b is armed; b is hit later on the
    // vCPU's own path.
    let mut vm = ipi_guest(None).on_service(1, [reach("beta")]);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "a" },
  { hit = "a" },
  { break = "beta", cpu = 1, name = "b" },
  { open = "flusher" },
  { wait = "PHASE flushed", timeout_ms = 2000 },
  { release = 1 },
  { hit = "b" },
  { release = 1 },
  { wait = "PHASE done" },
]
"#,
    );
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    assert_eq!(run.hits, ["a", "b"]);
    let stops: Vec<&Call> = vm
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Event(VmEvent::Breakpoint { .. })))
        .collect();
    // alpha (hit a), beta on the interrupt path, alpha (the re-fire), beta (hit b).
    assert_eq!(
        stops,
        [
            &bp(1, "alpha"),
            &bp(1, "beta"),
            &bp(1, "alpha"),
            &bp(1, "beta")
        ]
    );
    // At the interrupt-path stop vCPU 1 is resumed to step past it...
    let irq_stop = vm.first(|c| *c == bp(1, "beta")).unwrap();
    assert_eq!(vm.calls()[irq_stop + 1], Call::Resume(vec![0, 2, 1]));
    // ... and at the re-fire that follows it is parked again.
    assert_eq!(vm.calls()[irq_stop + 3], Call::Resume(vec![0, 2]));
}

#[test]
fn a_parked_task_switched_out_between_reentries_is_a_schedule_error() {
    let mut vm = ipi_guest(None).on_service(1, [switch(300, "intruder")]);
    let run = run(&mut vm, IPI);
    let ScheduleStatus::Error { line, why } = &run.schedule else {
        panic!("{:?}", run.schedule)
    };
    assert_eq!(*line, 6);
    assert!(
        why.contains("in task 1001") && why.contains("task 300 (intruder)"),
        "{why}"
    );
    assert_eq!(releases(&run), [1], "the recovery released the parked vCPU");
}

#[test]
fn a_detector_ends_the_schedule_as_detected_and_the_recovery_lets_every_vcpu_go() {
    let mut vm = FakeVm::new(3)
        .script(
            1,
            [
                reach("alpha"),
                after(2, "gamma"),
                send("RESULT 1 intact blocked"),
            ],
        )
        .script(2, [reach("detect"), reach("gamma")]);
    let s = schedule(
        r#"[schedule]
fallback = [1]
steps = [
  { break = "alpha", cpu = 1, name = "a" },
  { hit = "a" },
  { break = "detect", cpu = 2, name = "d", detector = true },
  { break = "gamma", cpu = 2, name = "c" },
  { hit = "c" },
  { release = 2 },
  { release = 1 },
]
"#,
        3,
    );
    let mut engine = Engine::start(&mut vm, &FakeKernel).unwrap();
    let run = engine.run_trial(1, &s);
    let oracle = engine.await_result(Duration::from_millis(100));
    drop(engine);
    assert_eq!(
        run.schedule,
        ScheduleStatus::Detected {
            detector: "d".into(),
            line: 8
        }
    );
    assert!(run.trace.iter().any(|e| matches!(e,
        TraceEvent::Detector { name, cpu: 2, symbol, .. } if name == "d" && symbol == "detect+0x0")));
    assert_eq!(run.hits, ["a"], "a detector is not a hit");
    assert_eq!(releases(&run), [1]);
    // Everything disarmed, everything running: the guest finished its trial.
    assert_eq!(oracle, Some(("intact".into(), "blocked".into())));
    assert_eq!(vm.passed(2), [sym("detect"), sym("gamma")]);
}

#[test]
fn a_step_missing_its_bound_is_infeasible_with_every_vcpu_position_then_releases_in_fallback_order()
{
    let mut vm = FakeVm::new(4)
        .script(
            0,
            [
                console("[    1.0] reader: waiting"),
                gate("late", 0x2000),
                after(3, "gamma"),
                send("RESULT 1 intact unscheduled"),
            ],
        )
        .script(1, [reach("alpha")])
        .script(2, [reach("beta")])
        .script(3, [after(1, "alpha"), reach("gamma")]);
    let s = schedule(
        r#"[schedule]
fallback = [3, 2]
steps = [
  { break = "alpha", cpu = 1, name = "a" },
  { break = "beta", cpu = 2, name = "b" },
  { break = "gamma", cpu = 3, name = "c" },
  { hit = "a" },
  { hit = "b" },
  { hit = "c", timeout_ms = 30 },
  { release = 1 },
]
"#,
        4,
    );
    let mut engine = Engine::start(&mut vm, &FakeKernel).unwrap();
    let run = engine.run_trial(1, &s);
    let oracle = engine.await_result(Duration::from_millis(100));
    drop(engine);
    let ScheduleStatus::Infeasible {
        line,
        reason,
        vcpus,
        console,
    } = &run.schedule
    else {
        panic!("{:?}", run.schedule)
    };
    assert_eq!(
        (*line, reason.as_str()),
        (9, "breakpoint \"c\" was not hit")
    );
    assert_eq!(
        vcpus,
        &[
            "vCPU 0 (running): idle+0x0",
            "vCPU 1 (parked): alpha+0x0",
            "vCPU 2 (parked): beta+0x0",
            "vCPU 3 (running): idle+0x0",
        ]
    );
    assert_eq!(console, &["[    1.0] reader: waiting"]);
    assert!(run.seconds >= 0.03);
    // Fallback order (vCPU 3 is not parked), then the other parked vCPUs; then the gate
    // the schedule never opened.
    assert_eq!(releases(&run), [2, 1]);
    let stop = vm.first(|c| *c == Call::StopAll).unwrap();
    assert_eq!(
        vm.calls()[stop + 1..stop + 10],
        [
            Call::SetBreakpoints(1, vec![]),
            Call::SetBreakpoints(2, vec![]),
            Call::SetBreakpoints(3, vec![]),
            Call::SetBreakpoints(2, vec![]),
            Call::Resume(vec![0, 2, 3]),
            Call::SetBreakpoints(1, vec![]),
            Call::Resume(vec![0, 1, 2, 3]),
            Call::WritePhys(0x2000, 1u32.to_le_bytes().to_vec()),
            Call::Resume(vec![0, 1, 2, 3]),
        ]
    );
    assert!(run
        .trace
        .iter()
        .any(|e| matches!(e, TraceEvent::Open { gate, .. } if gate == "late")));
    // The guest finished its trial unscheduled; c, disarmed, was passed silently.
    assert_eq!(oracle, Some(("intact".into(), "unscheduled".into())));
    assert_eq!(vm.passed(3), [sym("gamma")]);
    assert_eq!(vm.first(|c| *c == bp(3, "gamma")), None);
}

#[test]
fn parking_with_interrupts_off_is_a_schedule_error_unless_the_step_allows_it() {
    let text = |allow: bool| {
        format!(
            "[schedule]\nsteps = [\n  {{ break = \"alpha\", cpu = 1, name = \"a\" }},\n  {{ hit = \"a\", allow_irqs_off = {allow} }},\n  {{ release = 1 }},\n  {{ wait = \"PHASE done\" }},\n]\n"
        )
    };
    let guest =
        || FakeVm::new(2).script(1, [reach_with("alpha", false, [0; 6]), send("PHASE done")]);
    let mut vm = guest();
    let run1 = run(&mut vm, &text(false));
    let ScheduleStatus::Error { line, why } = &run1.schedule else {
        panic!("{:?}", run1.schedule)
    };
    assert_eq!(*line, 4);
    assert!(
        why.contains("vCPU 1 parked at \"a\"") && why.contains("IF=0"),
        "{why}"
    );
    assert_eq!(releases(&run1), [1], "the recovery released it");

    let mut vm = guest();
    let run2 = run(&mut vm, &text(true));
    assert_eq!(run2.schedule, ScheduleStatus::Completed);
    assert_eq!(run2.hits, ["a"]);
}

#[test]
fn the_vm_exiting_mid_trial_is_vm_gone_with_the_kernel_report_or_the_vmm_reason() {
    let text = r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "a" },
  { hit = "a" },
  { open = "crash" },
  { wait = "RESULT", timeout_ms = 1000 },
]
"#;
    let panic = "[    2.0] Kernel panic - not syncing: Fatal exception";
    for (exit, want) in [
        (
            VmExit::GuestStopped,
            "guest stopped: Kernel panic - not syncing: Fatal exception",
        ),
        (
            VmExit::VmmFailed("vCPU 1 thread ended".into()),
            "vCPU 1 thread ended",
        ),
    ] {
        let mut vm = FakeVm::new(2)
            .script(0, [gate("crash", 0x3000), console(panic), Ev::Exit(exit)])
            .script(1, [reach("alpha")]);
        let s = schedule(text, 2);
        let mut engine = Engine::start(&mut vm, &FakeKernel).unwrap();
        let run = engine.run_trial(1, &s);
        assert_eq!(run.schedule, ScheduleStatus::VmGone { why: want.into() });
        assert!(engine.is_gone());
        assert!(run.kernel_report.as_ref().is_some_and(|r| r.panicked));
        // A gone VM is not waited for.
        assert_eq!(engine.await_result(Duration::from_secs(5)), None);
    }
}

#[test]
fn a_backend_refusing_a_breakpoint_is_a_schedule_error_at_its_break_step() {
    let mut vm = FakeVm::new(2).max_breakpoints(1);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "a" },
  { break = "beta", cpu = 1, name = "b" },
  { hit = "a" },
]
"#,
    );
    let ScheduleStatus::Error { line, why } = &run.schedule else {
        panic!("{:?}", run.schedule)
    };
    assert_eq!(
        (*line, why.as_str()),
        (
            4,
            "vCPU 1 asks for 2 hardware breakpoints; fake allows 1 per vCPU"
        )
    );
    // The one it did arm is disarmed by the recovery.
    assert_eq!(
        vm.calls()
            .iter()
            .filter(|c| matches!(c, Call::SetBreakpoints(1, _)))
            .collect::<Vec<_>>(),
        [
            &Call::SetBreakpoints(1, vec![sym("alpha")]),
            &Call::SetBreakpoints(1, vec![])
        ]
    );
}

#[test]
fn a_forced_return_writes_the_registers_of_arch_forced_return_and_the_vcpu_goes_on() {
    let ret = sym("caller") + 0x10;
    let mut vm = FakeVm::new(2)
        .stack_top(1, ret)
        .script(1, [reach("alpha"), send("PHASE after-return")]);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "f", return = -12 },
  { hit = "f" },
  { wait = "PHASE after-return" },
]
"#,
    );
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    assert_eq!(run.hits, ["f"]);
    let (cpu, at_entry) = vm.stops()[0];
    assert_eq!(cpu, 1);
    let expected = at_entry
        .forced_return(-12, |at| vm.read_u64(at).ok_or("unmapped stack"))
        .unwrap();
    assert_eq!(expected.return_address, ret);
    let set = vm
        .first(|c| matches!(c, Call::SetRegs(..)))
        .expect("registers written");
    assert_eq!(vm.calls()[set], Call::SetRegs(1, Box::new(expected.regs)));
    // The breakpoint is spent and the vCPU goes on without parking.
    assert_eq!(vm.calls()[set + 1], Call::SetBreakpoints(1, vec![]));
    assert_eq!(vm.calls()[set + 2], Call::Resume(vec![0, 1]));
    assert!(run.trace.iter().any(|e| matches!(e,
        TraceEvent::Inject { name, cpu: 1, value: -12, returned_to, tid: Some(1001), .. }
            if name == "f" && returned_to == "caller+0x10")));
    assert!(vm.passed(1).is_empty(), "the function's body never ran");
}

#[test]
fn a_forced_return_to_an_address_outside_kernel_code_is_refused() {
    let mut vm = FakeVm::new(2)
        .stack_top(1, 0x4000_1000)
        .script(1, [reach("alpha")]);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "alpha", cpu = 1, name = "f", return = 0 },
  { hit = "f" },
]
"#,
    );
    let ScheduleStatus::Error { line, why } = &run.schedule else {
        panic!("{:?}", run.schedule)
    };
    assert_eq!(*line, 4);
    assert!(why.contains("0x40001000 is not kernel code"), "{why}");
    assert_eq!(vm.first(|c| matches!(c, Call::SetRegs(..))), None);
    assert_eq!(vm.passed(1), [sym("alpha")], "the function runs unfailed");
}

#[test]
fn begin_trial_drops_the_messages_from_before_the_trial_start() {
    let mut vm = FakeVm::new(1).script(
        0,
        [
            send("FACT stale 1"),
            send("PHASE trial-1"),
            send("READY reader 0 5"),
        ],
    );
    let s = schedule(
        r#"[schedule]
steps = [
  { wait = "READY reader" },
  { wait = "FACT stale", timeout_ms = 20 },
]
"#,
        1,
    );
    let mut engine = Engine::start(&mut vm, &FakeKernel).unwrap();
    assert!(engine.begin_trial(1, Duration::from_millis(100)));
    let run = engine.run_trial(1, &s);
    assert!(
        matches!(&run.schedule, ScheduleStatus::Infeasible { line: 4, reason, .. } if reason.starts_with("no FACT stale")),
        "{:?}",
        run.schedule
    );
    // A trial that never starts is reported as such, in bounded time.
    assert!(!engine.begin_trial(2, Duration::from_millis(20)));
}

#[test]
fn a_control_line_that_does_not_parse_is_traced_and_never_acted_on() {
    let mut vm = FakeVm::new(2).script(0, [Ev::SendBad("READY reader x 5".into())]);
    let run = run(
        &mut vm,
        "[schedule]\nsteps = [\n  { wait = \"READY reader\", timeout_ms = 20 },\n]\n",
    );
    assert!(
        matches!(run.schedule, ScheduleStatus::Infeasible { line: 3, .. }),
        "{:?}",
        run.schedule
    );
    assert!(run.trace.iter().any(|e| matches!(e,
        TraceEvent::Control { line, .. } if line.starts_with("(rejected: ") && line.ends_with("READY reader x 5"))));
}

#[test]
fn a_completed_schedule_leaves_no_breakpoint_armed_behind_it() {
    // The detector never fires during the schedule; vCPU 2 reaches it afterwards,
    // before the guest reports its result.
    let mut vm = FakeVm::new(3)
        .script(1, [reach("alpha"), send("PHASE one-done")])
        .script(
            2,
            [
                after(1, "alpha"),
                reach("detect"),
                send("RESULT 1 intact done"),
            ],
        );
    let s = schedule(
        r#"[schedule]
steps = [
  { break = "detect", cpu = 2, name = "d", detector = true },
  { break = "alpha", cpu = 1, name = "a" },
  { hit = "a" },
  { release = 1 },
  { wait = "PHASE one-done" },
]
"#,
        3,
    );
    let mut engine = Engine::start(&mut vm, &FakeKernel).unwrap();
    let run = engine.run_trial(1, &s);
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    let oracle = engine.await_result(Duration::from_millis(50));
    drop(engine);
    assert_eq!(oracle, Some(("intact".into(), "done".into())));
    assert!(vm.calls().contains(&Call::SetBreakpoints(2, vec![])));
    assert_eq!(vm.first(|c| *c == bp(2, "detect")), None);
}

#[test]
fn an_injection_hit_is_not_blamed_for_another_vcpu_parked_with_interrupts_off() {
    // vCPU 0 parks with IF=0 where the schedule allows it; then vCPU 1's injection fires.
    let mut vm = FakeVm::new(2)
        .stack_top(1, sym("caller") + 0x10)
        .script(0, [reach_with("zeta", false, [0; 6])])
        .script(1, [reach("alpha"), send("PHASE returned")]);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "zeta", cpu = 0, name = "z" },
  { hit = "z", allow_irqs_off = true },
  { break = "alpha", cpu = 1, name = "f", return = 0 },
  { hit = "f" },
  { wait = "PHASE returned" },
  { release = 0 },
]
"#,
    );
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    assert_eq!(run.hits, ["z", "f"]);
}

#[test]
fn disarming_a_breakpoint_a_vcpu_parked_on_early_lets_that_vcpu_go() {
    // b fires (vCPU 1 parks) while the schedule waits for a; the schedule then
    // disarms b as a breakpoint that was not needed.
    let mut vm = FakeVm::new(3)
        .script(1, [reach("beta"), send("RESULT 1 intact ok")])
        .script(2, [reach("alpha")]);
    let run = run(
        &mut vm,
        r#"[schedule]
steps = [
  { break = "beta", cpu = 1, name = "b" },
  { break = "alpha", cpu = 2, name = "a" },
  { hit = "a" },
  { disarm = "b" },
  { release = 2 },
  { wait = "RESULT", timeout_ms = 50 },
]
"#,
    );
    assert_eq!(run.schedule, ScheduleStatus::Completed);
    assert_eq!(run.oracle, Some(("intact".into(), "ok".into())));
    assert_eq!(releases(&run), [1, 2]);
    assert_eq!(
        run.hits,
        ["b", "a"],
        "b did fire: the trial is out of order"
    );
}
