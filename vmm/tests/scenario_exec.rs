//! The exec workload, memory-pressure steps and fault injection end to end on the qemu
//! backend: the upstream reporter's unchanged test.c (scenarios/madv-free-upstream.toml)
//! is compiled statically on the host, started fresh per trial behind its gate, parked by
//! tid in brd_submit_bio, and its buffer is reclaimed by a pressure worker on another
//! vCPU whose tid the schedule also filters on; the verdict comes from test.c's output.
//! scenarios/fault-mremap-copy-vma.toml makes copy_vma() fail inside mremap.

mod common;
use common::{kernel_dir, memrace, output_within, run_scenario_json, text};

/// The done-when of the exec workload: the reporter's test.c, unchanged, 100% reproduced
/// on the kernel without the fix and 0% on stock 6.12, over 20 trials each, and the
/// natural rate without the schedule measured and reported.
#[test]
fn the_unchanged_upstream_reproducer_reproduces_on_every_trial_and_never_on_base() {
    kernel_dir("base");
    kernel_dir("madv-free-unpatched");
    let out = tempfile::tempdir().unwrap();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/madv-free-upstream.toml"
    );
    let result = run_scenario_json(&[scenario, "--trials", "20", "--controls"], out.path());
    let kernels = result["kernels"].as_array().unwrap();
    let by_variant = |v: &str| {
        kernels
            .iter()
            .find(|k| k["variant"] == v)
            .unwrap_or_else(|| panic!("no {v} in {result}"))
    };
    for (variant, verdict, byte) in [
        ("madv-free-unpatched", "reproduced", ": 0x0"),
        ("base", "passed", ": 0x79"),
    ] {
        let k = by_variant(variant);
        assert_eq!(k["counts"]["trials"], 20, "{variant}: {}", k["counts"]);
        for t in k["trials"].as_array().unwrap() {
            // The schedule completed with every hit in order; test.c's own output gave the
            // verdict: the zero page where the device data should be, or the data ('y').
            assert_eq!(t["verdict"], verdict, "{variant}: {t}");
            assert_eq!(
                t["hits"],
                serde_json::json!(["lru-caches-off", "dio-pinned", "reclaim-done"]),
                "{variant}: {t}"
            );
            let detail = t["oracle"][1].as_str().unwrap();
            assert!(detail.contains(byte), "{variant}: {detail}");
            let trace = t["trace"].to_string();
            assert!(
                trace.contains("reclaim anon of test (its lazyfree mappings) on vCPU 2 as pageout"),
                "{variant}: the pressure step is in the trace: {trace}"
            );
            // When reclaim ran, the buffer's four pages were lazyfree: the parked page
            // migration had the LRU caches disabled.
            assert!(
                trace.contains("FACT pageout.lazyfree_kib 16"),
                "{variant}: {trace}"
            );
        }
    }
    // The no-schedule baseline ran and its rate is in the results (whatever it is).
    let baseline = &result["controls"][0];
    assert_eq!(
        baseline["label"], "madv-free-unpatched [no-schedule]",
        "{baseline}"
    );
    let counts = &baseline["counts"];
    assert_eq!(counts["trials"], 50, "{counts}");
    let rate = counts["reproduced"].as_u64().unwrap() as f64 / 50.0;
    eprintln!(
        "madv-free-upstream no-schedule baseline: {:.0}% reproduced",
        rate * 100.0
    );
}

/// The user's program is untrusted: a fork bomb, one that never exits, one that forges
/// protocol lines and writes garbage to the control port, one that kills every process
/// (kill(-1, SIGKILL)) and one that exhausts memory each end in a bounded error verdict,
/// the well-behaved run after each still passes, and every trial stays in result.json.
#[test]
fn hostile_programs_end_in_bounded_verdicts_and_earlier_trials_are_kept() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hostile.toml");
    let result = run_scenario_json(&[scenario], out.path());
    let trials = result["kernels"][0]["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 10, "every trial is kept");
    // hostile.c's attacks, in the order its odd runs make them, and how each must end.
    let expected = [
        ("fork bomb", "no-verdict timeout"),
        ("never exits", "no-verdict timeout"),
        ("control-port forgery", "no-verdict exit=3"),
        ("kill(-1)", "trial-process-killed-by-signal-9"),
        ("memory hog", "no-verdict killed-by-signal-9"),
    ];
    for (i, t) in trials.iter().enumerate() {
        let detail = t["oracle"][1].as_str().unwrap_or_default();
        if i % 2 == 0 {
            assert_eq!(
                t["verdict"],
                "passed",
                "trial {} after an attack: {t}",
                i + 1
            );
        } else {
            let (attack, ends) = expected[i / 2];
            assert_eq!(t["verdict"], "error", "{attack}: {t}");
            assert_eq!(detail, ends, "{attack}: {t}");
            // Bounded: the verdict's 5 s bound plus the kill, far below the trial bound.
            assert!(t["seconds"].as_f64().unwrap() < 30.0, "{attack}: {t}");
        }
    }
    // The forged `RESULT 4 reproduced` never reached the bench: the port was /dev/null.
    assert!(trials.iter().all(|t| t["oracle"][0] != "reproduced"));
}

/// Fault injection: copy_vma() returns NULL at its entry for the mover's mremap only, the
/// program sees ENOMEM with its source mapping intact, the kernel prints no report, and
/// the trace names the injection; without the step the same program's move succeeds.
#[test]
fn an_injected_allocation_failure_reaches_the_caller_through_the_error_path() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/fault-mremap-copy-vma.toml"
    );
    let result = run_scenario_json(&[scenario, "--trials", "5", "--controls"], out.path());
    let injected = &result["kernels"][0];
    assert_eq!(injected["counts"]["trials"], 5, "{}", injected["counts"]);
    for t in injected["trials"].as_array().unwrap() {
        assert_eq!(t["verdict"], "reproduced", "{t}");
        assert_eq!(t["kernel_report"], serde_json::Value::Null, "{t}");
        assert!(
            t["oracle"][1]
                .as_str()
                .unwrap()
                .contains("Cannot allocate memory; source intact"),
            "{t}"
        );
        let inject = t["trace"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "inject")
            .unwrap_or_else(|| panic!("no injection in the trace: {t}"));
        assert_eq!(inject["symbol"], "copy_vma+0x0", "{inject}");
        assert_eq!(inject["value"], 0, "{inject}");
        assert_eq!(inject["comm"], "move", "{inject}");
        assert!(
            inject["returned_to"]
                .as_str()
                .unwrap()
                .starts_with("move_vma"),
            "{inject}"
        );
    }
    let control = &result["controls"][0];
    assert_eq!(control["counts"]["trials"], 5, "{control}");
    for t in control["trials"].as_array().unwrap() {
        assert_eq!(
            t["verdict"], "passed",
            "without the step the move succeeds: {t}"
        );
        let detail = t["oracle"][1].as_str().unwrap();
        assert!(detail.contains("moved the mapping; data intact"), "{t}");
    }
}

/// An injection the bench cannot do safely is refused before any boot, naming the
/// scenario file and line: not a function's entry, a void function, and a value the
/// function's return type (here a pointer: only NULL or an ERR_PTR) cannot hold.
#[test]
fn unsafe_injections_are_refused_with_file_and_line() {
    kernel_dir("base");
    let dir = tempfile::tempdir().unwrap();
    let scenarios = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios");
    std::fs::create_dir(dir.path().join("fault-mremap-copy-vma")).unwrap();
    std::fs::copy(
        format!("{scenarios}/fault-mremap-copy-vma/move.c"),
        dir.path().join("fault-mremap-copy-vma/move.c"),
    )
    .unwrap();
    let original =
        std::fs::read_to_string(format!("{scenarios}/fault-mremap-copy-vma.toml")).unwrap();
    let step = r#"{ break = "copy_vma", cpu = 1, name = "no-vma", if = "tid == $mover.tid", return = 0 },"#;
    let line = original
        .lines()
        .position(|l| l.trim() == step)
        .expect("the injection step")
        + 1;
    for (bad, why) in [
        (
            step.replace("\"copy_vma\"", "\"copy_vma+0x4\""),
            "is not a bare function name",
        ),
        (
            step.replace("\"copy_vma\"", "\"vm_area_free\""),
            "returns void",
        ),
        (step.replace("return = 0", "return = 4096"), "ERR_PTR"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, original.replace(step, &bad)).unwrap();
        let out = output_within(
            memrace()
                .args(["run", path.to_str().unwrap(), "--out"])
                .arg(dir.path().join("runs")),
            std::time::Duration::from_secs(300),
        );
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{bad}: {stderr}");
        let at = format!("bad.toml:{line}: fault injection at");
        assert!(
            stderr.contains(&at) && stderr.contains(why),
            "{bad}: {stderr}"
        );
        let booted = walk_has_boot_dir(&dir.path().join("runs"));
        assert!(!booted, "refused before any VM booted: {stderr}");
    }
}

/// Whether a run directory under `runs` holds a boot directory (`<kernel>-boot<n>`).
fn walk_has_boot_dir(runs: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return false;
    };
    entries.flatten().any(|run| {
        std::fs::read_dir(run.path()).is_ok_and(|inner| {
            inner
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("-boot"))
        })
    })
}

/// memrace.h: a program the harness does not gate announces READY with its own tid and a
/// gate of its own; the schedule parks its getppid by that tid and waits for its PHASE
/// and FACT. A READY for another task's tid and one under a name the harness announces
/// itself are refused, never relayed.
#[test]
fn a_program_announces_itself_and_its_gate_through_memrace_h() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/memrace-h.toml");
    let result = run_scenario_json(&[scenario], out.path());
    let trials = result["kernels"][0]["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    for t in trials {
        assert_eq!(t["verdict"], "passed", "{t}");
        assert_eq!(t["hits"], serde_json::json!(["in-getppid"]), "{t}");
        let trace = t["trace"].to_string();
        assert!(trace.contains("FACT answer 42"), "{trace}");
        assert!(!trace.contains("READY forged"), "{trace}");
        assert_eq!(
            trace.matches("READY bystander").count(),
            1,
            "only the harness's: {trace}"
        );
    }
    let control = std::fs::read_to_string(out.path().join("base-boot1/control.log")).unwrap();
    let refused = control.matches("memrace.h%20message%20refused").count()
        + control.matches("memrace.h message refused").count();
    assert_eq!(refused, 6, "two refusals per trial: {control}");
}
