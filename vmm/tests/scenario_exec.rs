//! The exec workload and memory-pressure steps end to end on the qemu backend: the
//! upstream reporter's unchanged test.c (scenarios/madv-free-upstream.toml) is
//! compiled statically on the host, started fresh per trial behind its gate, parked by
//! tid in brd_submit_bio, and its buffer is reclaimed by a pressure worker on another
//! vCPU whose tid the schedule also filters on; the verdict comes from test.c's output.

mod common;
use common::{kernel_dir, run_scenario_json};

#[test]
fn an_unchanged_reproducer_runs_under_a_schedule_with_a_pressure_step() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/madv-free-upstream.toml"
    );
    let result = run_scenario_json(&[scenario, "--kernel", "base", "--trials", "3"], out.path());
    let base = &result["kernels"][0];
    assert_eq!(base["counts"]["trials"], 3, "{}", base["counts"]);
    for t in base["trials"].as_array().unwrap() {
        // The schedule completed with both hits in order, and test.c printed the
        // device's data ('y' = 0x79) for its pages.
        assert_eq!(t["verdict"], "passed", "{t}");
        assert_eq!(t["hits"], serde_json::json!(["dio-pinned", "reclaim-done"]));
        let detail = t["oracle"][1].as_str().unwrap();
        assert!(detail.contains(": 0x79"), "{detail}");
        let trace = t["trace"].to_string();
        assert!(
            trace.contains("reclaim anon of test on vCPU 2 as pageout"),
            "the pressure step is in the trace: {trace}"
        );
    }
    // The pressure worker reported what it paged out, once per trial.
    let control = std::fs::read_to_string(out.path().join("base-boot1/control.log")).unwrap();
    let reports = control
        .lines()
        .filter(|l| l.starts_with("FACT pageout.bytes "))
        .count();
    assert_eq!(reports, 3, "{control}");
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
