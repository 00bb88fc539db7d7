//! The exec workload and memory-pressure steps end to end on the qemu backend: the
//! upstream reporter's unchanged test.c (scenarios/examples/madv-free-upstream.toml) is
//! compiled statically on the host, started fresh per trial behind its gate, parked by
//! tid in brd_submit_bio, and its buffer is reclaimed by a pressure worker on another
//! vCPU whose tid the schedule also filters on; the verdict comes from test.c's output.

mod common;
use common::{kernel_dir, memrace, output_within, text, COMMAND_LIMIT};
use serde_json::Value;

#[test]
fn an_unchanged_reproducer_runs_under_a_schedule_with_a_pressure_step() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/examples/madv-free-upstream.toml"
    );
    let output = output_within(
        memrace()
            .args([
                "run", scenario, "--kernel", "base", "--trials", "3", "--out",
            ])
            .arg(out.path()),
        COMMAND_LIMIT,
    );
    let (stdout, stderr) = text(&output);
    println!("{stdout}");
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("result.json")).unwrap())
            .unwrap();
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
