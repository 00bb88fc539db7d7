//! The kvm backend on synthetic long-mode guests (no kernel): vCPU start,
//! devices, per-vCPU stop/resume, hardware breakpoints, memory access.

mod kvm_support;

use std::time::Duration;

use kvm_support::{events_until, kvm_or_report, next_breakpoint, read_u64};
use memrace::backend::kvm::fixtures::{self, DeviceTour};
use memrace::backend::kvm::{self, launch_program, Space, StopReason};
use memrace::backend::{Backend, BackendError, ControlMessage, VmEvent, VmExit};
use memrace::boot::{self, exit_code, Limits};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn two_vcpus_reach_uarts_ports_mmio_and_the_exit_device() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let tour = fixtures::device_tour();
    let mut program = tour.program.clone();
    program.start_running = true;
    let mut vm = launch_program(&program, &opts).unwrap();
    let events = events_until(&mut vm, LIMIT, |e| matches!(e, VmEvent::Exited(_)));

    assert!(
        events.contains(&VmEvent::Console(DeviceTour::CONSOLE_LINE.into())),
        "{events:#?}"
    );
    assert!(events.contains(&VmEvent::Control(ControlMessage::Hello { version: 1 })));
    assert!(events.contains(&VmEvent::Control(ControlMessage::Phase {
        name: "tour".into()
    })));
    assert!(events
        .iter()
        .any(|e| matches!(e, VmEvent::BadControl { line, .. } if line == "FROBNICATE now")));
    assert_eq!(events.last(), Some(&VmEvent::Exited(VmExit::GuestStopped)));
    assert_eq!(
        vm.stop_reason(),
        Some(StopReason::ExitDevice(DeviceTour::EXIT_CODE))
    );
    assert_eq!(read_u64(&vm, tour.flag), 1, "vCPU 1 ran");
    assert_eq!(
        read_u64(&vm, tour.port_value),
        0xff,
        "unclaimed port reads all-ones"
    );
    assert_eq!(
        read_u64(&vm, tour.mmio_value),
        0xffff_ffff,
        "unclaimed MMIO reads all-ones"
    );
    let unclaimed = vm.unclaimed_accesses();
    assert!(
        unclaimed.contains(&(Space::Pio, u64::from(fixtures::UNCLAIMED_PORT))),
        "{unclaimed:?}"
    );
    assert!(
        unclaimed.contains(&(Space::Mmio, fixtures::UNCLAIMED_MMIO)),
        "{unclaimed:?}"
    );
    assert_eq!(
        vm.unlogged_unclaimed_accesses(),
        0,
        "two addresses, far below the cap"
    );
    assert!(matches!(
        vm.next_event(std::time::Instant::now() + LIMIT),
        Err(BackendError::Exited)
    ));
}

#[test]
fn a_paused_vcpu_stays_put_while_another_runs_to_its_breakpoint() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    const N: u64 = 500;
    let fx = fixtures::counters(2, N);
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    vm.set_breakpoints(0, &[fx.done[0]]).unwrap();
    vm.set_breakpoints(1, &[fx.done[1]]).unwrap();

    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.done[0]));
    assert_eq!(
        (read_u64(&vm, fx.counters[0]), read_u64(&vm, fx.counters[1])),
        (N, 0)
    );
    assert_eq!(vm.regs(0).unwrap().pc(), fx.done[0]);

    vm.resume(&[1]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (1, fx.done[1]));
    assert_eq!(
        (read_u64(&vm, fx.counters[0]), read_u64(&vm, fx.counters[1])),
        (N, N)
    );
}

#[test]
fn stopping_freezes_counters_exactly_and_resume_runs_only_the_named_vcpu() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let fx = fixtures::counters(2, u64::MAX);
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    let counts = |vm: &memrace::backend::kvm::KvmVm| {
        (read_u64(vm, fx.counters[0]), read_u64(vm, fx.counters[1]))
    };
    let settle = Duration::from_millis(200);

    vm.resume(&[0, 1]).unwrap();
    std::thread::sleep(settle);
    vm.stop_all().unwrap();
    let frozen = counts(&vm);
    assert!(frozen.0 > 0 && frozen.1 > 0, "both ran: {frozen:?}");
    std::thread::sleep(settle);
    assert_eq!(counts(&vm), frozen, "stopped vCPUs do not move");

    vm.resume(&[1]).unwrap();
    std::thread::sleep(settle);
    vm.stop_all().unwrap();
    let after = counts(&vm);
    assert_eq!(after.0, frozen.0, "vCPU 0 stayed paused");
    assert!(after.1 > frozen.1, "vCPU 1 ran: {after:?} vs {frozen:?}");
}

#[test]
fn hardware_breakpoint_hits_exactly_n_times_resuming_past_each_hit() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    const N: u64 = 25;
    let fx = fixtures::breakpoint_loop(N);
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    vm.set_breakpoints(0, &[fx.target]).unwrap();
    vm.resume(&[0]).unwrap();
    let mut hits = 0;
    loop {
        let events = events_until(&mut vm, LIMIT, |e| {
            matches!(e, VmEvent::Breakpoint { .. } | VmEvent::Exited(_))
        });
        match events.last() {
            Some(VmEvent::Breakpoint { vcpu: 0, addr }) => {
                assert_eq!(*addr, fx.target);
                assert_eq!(
                    read_u64(&vm, fx.hits),
                    hits,
                    "stopped before the counted instruction"
                );
                hits += 1;
                vm.resume(&[0]).unwrap();
            }
            Some(VmEvent::Exited(VmExit::GuestStopped)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(hits, N);
    assert_eq!(read_u64(&vm, fx.hits), N);
    assert_eq!(
        vm.stop_reason(),
        Some(StopReason::ExitDevice(u32::from(
            fixtures::BreakpointLoop::EXIT_CODE
        )))
    );
    eprintln!(
        "breakpoint resume on this host: {:?}",
        vm.breakpoint_resume()
    );
}

/// Resume `vm` (vCPU 0) past every hit until it exits; `at_hit(n)` runs at the n-th hit.
fn hits_until_exit(
    vm: &mut kvm::KvmVm,
    target: u64,
    mut at_hit: impl FnMut(&kvm::KvmVm, u64),
) -> u64 {
    vm.resume(&[0]).unwrap();
    let mut hits = 0;
    loop {
        let events = events_until(vm, LIMIT, |e| {
            matches!(e, VmEvent::Breakpoint { .. } | VmEvent::Exited(_))
        });
        match events.last() {
            Some(VmEvent::Breakpoint { vcpu: 0, addr }) => {
                assert_eq!(*addr, target);
                at_hit(vm, hits);
                hits += 1;
                vm.resume(&[0]).unwrap();
            }
            Some(VmEvent::Exited(VmExit::GuestStopped)) => return hits,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_breakpoint_on_a_repeated_string_instruction_hits_once_per_execution() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    const N: u64 = 5;
    let fx = fixtures::repeat_loop(N);
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    vm.set_breakpoints(0, &[fx.target]).unwrap();
    let hits = hits_until_exit(&mut vm, fx.target, |vm, n| {
        assert_eq!(read_u64(vm, fx.completed), n, "stopped before fill {n}");
    });
    assert_eq!(
        hits, N,
        "one hit per rep stosb, however many bytes it stores"
    );
    assert_eq!(read_u64(&vm, fx.completed), N);
    let len = fixtures::RepeatLoop::LEN as usize;
    assert_eq!(
        vm.read_phys(fx.buffer, len).unwrap(),
        vec![fixtures::RepeatLoop::FILL; len]
    );
    assert_eq!(
        vm.stop_reason(),
        Some(StopReason::ExitDevice(u32::from(
            fixtures::RepeatLoop::EXIT_CODE
        )))
    );
    eprintln!("breakpoint resume: {:?}", vm.breakpoint_resume());
}

#[test]
fn a_breakpoint_on_a_faulting_instruction_hits_once_per_execution() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    const N: u64 = 5;
    let fx = fixtures::faulting_loop(N);
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    vm.set_breakpoints(0, &[fx.target]).unwrap();
    let hits = hits_until_exit(&mut vm, fx.target, |vm, n| {
        assert_eq!(read_u64(vm, fx.completed), n, "stopped before div {n}");
        assert_eq!(
            read_u64(vm, fx.handled),
            n,
            "#DE handler not yet run for div {n}"
        );
    });
    assert_eq!(
        hits, N,
        "the retried div after the #DE handler is the same hit"
    );
    assert_eq!(read_u64(&vm, fx.handled), N, "every div faulted once");
    assert_eq!(read_u64(&vm, fx.completed), N);
    assert_eq!(
        vm.stop_reason(),
        Some(StopReason::ExitDevice(u32::from(
            fixtures::FaultingLoop::EXIT_CODE
        )))
    );
    eprintln!("breakpoint resume: {:?}", vm.breakpoint_resume());
}

#[test]
fn race_fixture_loses_an_update_only_under_the_forced_interleaving() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let fx = fixtures::race(1);

    // Interleaved: vCPU 0 loads, vCPU 1 does a whole increment, vCPU 0 stores a stale value.
    let open = 1u64.to_le_bytes();
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    vm.write_phys(fx.gate, &open).unwrap();
    vm.set_breakpoints(0, &[fx.between]).unwrap();
    vm.set_breakpoints(1, &[fx.done]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.between));
    vm.resume(&[1]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (1, fx.done));
    assert_eq!(read_u64(&vm, fx.counter), 1);
    vm.set_breakpoints(0, &[fx.done]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.done));
    assert_eq!(read_u64(&vm, fx.counter), 1, "lost update");

    // Serialised: both increments land.
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    vm.write_phys(fx.gate, &open).unwrap();
    vm.set_breakpoints(0, &[fx.done]).unwrap();
    vm.set_breakpoints(1, &[fx.done]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.done));
    vm.resume(&[1]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (1, fx.done));
    assert_eq!(read_u64(&vm, fx.counter), 2);
}

#[test]
fn write_phys_opens_a_gate_and_read_virt_walks_page_tables() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let tour = fixtures::device_tour();
    let mut vm = launch_program(&tour.program, &opts).unwrap();
    // Only vCPU 0 runs: it waits on the flag that vCPU 1 would set; the bench sets it instead.
    vm.resume(&[0]).unwrap();
    events_until(&mut vm, LIMIT, |e| matches!(e, VmEvent::BadControl { .. }));
    vm.stop_all().unwrap();
    let code = &tour.program.segments[0].1;
    assert_eq!(
        vm.read_virt(1, fixtures::CODE_BASE, 64).unwrap(),
        code[..64]
    );
    let across_pages = fixtures::CODE_BASE + 4096 - 8;
    assert_eq!(vm.read_virt(0, across_pages, 16).unwrap(), vec![0; 16]);
    assert!(matches!(
        vm.read_virt(0, 1 << 40, 8),
        Err(BackendError::Memory { .. })
    ));

    vm.write_phys(tour.flag, &1u64.to_le_bytes()).unwrap();
    vm.resume(&[0]).unwrap();
    events_until(&mut vm, LIMIT, |e| matches!(e, VmEvent::Exited(_)));
    assert_eq!(
        vm.stop_reason(),
        Some(StopReason::ExitDevice(DeviceTour::EXIT_CODE))
    );
}

#[test]
fn breakpoint_requests_are_checked() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let fx = fixtures::counters(2, u64::MAX);
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    assert_eq!(vm.max_breakpoints(), 4);
    assert!(matches!(
        vm.set_breakpoints(0, &[1, 2, 3, 4, 5]),
        Err(BackendError::TooManyBreakpoints { wanted: 5, .. })
    ));
    assert!(matches!(
        vm.set_breakpoints(2, &[1]),
        Err(BackendError::NoSuchVcpu(2, 2))
    ));
    vm.resume(&[0]).unwrap();
    vm.set_breakpoints(0, &[fx.done[0]])
        .expect("a running vCPU takes new breakpoints");
    vm.kill();
    vm.kill();
    assert!(matches!(vm.resume(&[0]), Err(BackendError::Exited)));
}

#[test]
fn each_vcpu_sees_its_own_normalised_cpuid() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let fx = fixtures::cpuid_probe(3, 1);
    let mut vm = launch_program(&fx.program, &opts).unwrap();
    for cpu in 0..3 {
        vm.set_breakpoints(cpu, &[fx.done[cpu]]).unwrap();
    }
    vm.resume(&[0, 1, 2]).unwrap();
    let mut parked: Vec<usize> = (0..3).map(|_| next_breakpoint(&mut vm, LIMIT).0).collect();
    parked.sort();
    assert_eq!(parked, [0, 1, 2]);
    for cpu in 0..3 {
        let ebx = read_u64(&vm, fx.results[cpu] + 8);
        let ecx = read_u64(&vm, fx.results[cpu] + 16);
        assert_eq!(ebx >> 24, cpu as u64, "APIC id of vCPU {cpu}");
        assert_eq!((ebx >> 16) & 0xff, 3, "logical CPUs per package");
        assert_ne!(ecx & (1 << 31), 0, "hypervisor bit");
    }
}

/// EAX..EDX of CPUID `leaf` (subleaf 0) as vCPU 0 of a guest launched with `opts` sees it.
fn guest_cpuid(opts: &kvm::KvmOptions, leaf: u32) -> [u32; 4] {
    let fx = fixtures::cpuid_probe(1, leaf);
    let mut vm = launch_program(&fx.program, opts).unwrap();
    vm.set_breakpoints(0, &[fx.done[0]]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.done[0]));
    [0, 1, 2, 3].map(|i| read_u64(&vm, fx.results[0] + i * 8) as u32)
}

#[test]
fn cpuid_masking_hides_the_named_features() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    use kvm::CpuFeature::*;
    // KVM emulates x2APIC everywhere, so unmasked the guest sees it: the check below bites.
    let [_, _, plain_leaf1_ecx, _] = guest_cpuid(&opts, 1);
    assert_ne!(plain_leaf1_ecx & (1 << 21), 0, "x2apic offered unmasked");
    let opts = opts.hiding(&[Xsave, X2apic, Rdtscp, Pdpe1gb]);
    let [_, _, leaf1_ecx, _] = guest_cpuid(&opts, 1);
    let [_, _, _, ext_edx] = guest_cpuid(&opts, 0x8000_0001);
    // Leaf 1's x2apic bit and leaf 0x8000_0001 are honoured by every KVM, PVM included
    // (measured; rdtscp and pdpe1gb may be absent on the host anyway).
    assert_eq!(leaf1_ecx & (1 << 21), 0, "x2apic hidden: {leaf1_ecx:#x}");
    assert_eq!(ext_edx & (1 << 27), 0, "rdtscp hidden: {ext_edx:#x}");
    assert_eq!(ext_edx & (1 << 26), 0, "pdpe1gb hidden: {ext_edx:#x}");

    // The hypervisor leaves are set by memrace, not passed through.
    let [max, ebx, ecx, edx] = guest_cpuid(&opts, 0x4000_0000);
    assert_eq!((max, [ebx, ecx, edx]), (0x4000_0001, kvm::KVM_SIGNATURE));
    let [pv_features, ..] = guest_cpuid(&opts, 0x4000_0001);
    assert_eq!(
        pv_features & !kvm::KVM_PV_FEATURES_OFFERED,
        0,
        "only the offered PV features: {pv_features:#x}"
    );

    // XSAVE and what needs it: leaf 1 ECX, leaf 7 EBX (AVX2), leaf 0xD.
    let [_, leaf7_ebx, ..] = guest_cpuid(&opts, 7);
    let leaf_d = guest_cpuid(&opts, 0xd);
    let xsave_family = [
        ("xsave", leaf1_ecx & (1 << 26)),
        ("avx", leaf1_ecx & (1 << 28)),
        ("fma", leaf1_ecx & (1 << 12)),
        ("avx2", leaf7_ebx & (1 << 5)),
        ("leaf 0xd", leaf_d.iter().fold(0, |a, b| a | b)),
    ];
    let level = kvm::probe();
    if level.boots_linux_fully() {
        for (name, bits) in xsave_family {
            assert_eq!(bits, 0, "{name} hidden");
        }
    } else {
        // PVM ORs the host's leaf-1 ECX into the table and reports leaves 7 and 0xD as
        // the host has them; memrace adds `noxsave` to the kernel command line instead.
        kvm_support::level_not_run(&format!(
            "cpuid masking of xsave/avx/avx2/fma/leaf 0xd — /dev/kvm is {} and does not apply \
             KVM_SET_CPUID2 to these leaves (guest saw: {xsave_family:x?}); only x2apic, rdtscp, \
             pdpe1gb and the hypervisor leaves were checked",
            level.name()
        ));
    }
}

/// Both vCPUs race to `between`; the gate is open before they start.
fn race_to_between(opts: &kvm::KvmOptions) -> (memrace::backend::kvm::KvmVm, fixtures::Race) {
    let fx = fixtures::race(1);
    let mut vm = launch_program(&fx.program, opts).unwrap();
    vm.write_phys(fx.gate, &1u64.to_le_bytes()).unwrap();
    vm.set_breakpoints(0, &[fx.between]).unwrap();
    vm.set_breakpoints(1, &[fx.between]).unwrap();
    (vm, fx)
}

#[test]
fn a_hit_not_yet_received_is_not_stepped_past_by_resume() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let (mut vm, fx) = race_to_between(&opts);
    vm.resume(&[0, 1]).unwrap();
    let (first, _) = next_breakpoint(&mut vm, LIMIT);
    let other = 1 - first;
    // Let the other vCPU reach its breakpoint too, unreported.
    std::thread::sleep(Duration::from_millis(200));
    vm.resume(&[other]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (other, fx.between));
    assert_eq!(
        vm.regs(other).unwrap().pc(),
        fx.between,
        "still stopped on it"
    );
    assert_eq!(read_u64(&vm, fx.counter), 0, "no store yet");
}

#[test]
fn servicing_a_parked_vcpu_re_fires_its_breakpoint_without_stepping() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let (mut vm, fx) = race_to_between(&opts);
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.between));
    for _ in 0..3 {
        assert!(vm.service_parked(&[], &[0]).unwrap());
        assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.between));
        assert_eq!(vm.regs(0).unwrap().pc(), fx.between);
    }
    vm.set_breakpoints(0, &[fx.done]).unwrap();
    vm.resume(&[0]).unwrap();
    assert_eq!(next_breakpoint(&mut vm, LIMIT), (0, fx.done));
    assert_eq!(
        read_u64(&vm, fx.counter),
        1,
        "one increment after the services"
    );
}

/// How a guest that ends in a triple fault (Linux's `reboot=t`) is judged by the
/// same code as `memrace boot`: a clean end is the harness's EXIT before the reset.
#[test]
fn a_triple_fault_after_exit_is_a_clean_end_and_without_it_is_not() {
    let Some(opts) = kvm_or_report("kvm synthetic guests") else {
        return;
    };
    let limits = Limits {
        boot: LIMIT,
        run: LIMIT,
    };
    let panic_line = "[    1.0] Kernel panic - not syncing: Attempted to kill init!\n";
    for (console, control, expected_code) in [
        ("", "HELLO 1\nEXIT 7\n", 7),
        ("", "HELLO 1\n", exit_code::NO_STATUS),
        (panic_line, "HELLO 1\nEXIT 0\n", exit_code::KERNEL_PANIC),
    ] {
        let program = fixtures::write_then_triple_fault(console, control);
        let mut vm = launch_program(&program, &opts).unwrap();
        let report = boot::run(&mut vm, limits, &mut |_| {}, &mut |_| {});
        assert_eq!(
            vm.stop_reason(),
            Some(StopReason::TripleFault),
            "{report:?}"
        );
        assert_eq!(
            report.verdict.exit_code(),
            expected_code,
            "{control:?} then a triple fault: {:?}",
            report.verdict
        );
    }
}
