//! Issue: MADV_FREE reclaim vs blkdev direct-IO read reproduces on every trial of the
//! unpatched kernel and never on stock 6.12, on the qemu backend; the negative controls
//! run and are reported.

mod common;
use common::{kernel_dir, run_scenario_json};
use serde_json::Value;

fn row<'a>(rows: &'a [Value], label: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["label"] == label)
        .unwrap_or_else(|| panic!("no row {label}"))
}

#[test]
fn unpatched_reproduces_on_every_trial_patched_passes_and_controls_hold() {
    for k in ["base", "madv-free-unpatched", "madv-free-barrier-only"] {
        kernel_dir(k);
    }
    let out = tempfile::tempdir().unwrap();
    let result = run_scenario_json(
        &["madv-free-dio", "--trials", "20", "--controls"],
        out.path(),
    );
    assert_eq!(result["complete"], true);
    let kernels = result["kernels"].as_array().unwrap();

    let unpatched = row(kernels, "madv-free-unpatched");
    assert_eq!(unpatched["counts"]["trials"], 20);
    assert_eq!(
        unpatched["counts"]["reproduced"], 20,
        "{}",
        unpatched["counts"]
    );
    for t in unpatched["trials"].as_array().unwrap() {
        assert_eq!(
            t["hits"],
            serde_json::json!(["dio-pinned", "reclaim-done"]),
            "every scheduled breakpoint hit in order"
        );
        assert!(
            t["oracle"][1]
                .as_str()
                .unwrap()
                .starts_with("pages-lost=[0]"),
            "the buffer page reads zeros with no PTE: {}",
            t["oracle"]
        );
    }
    let patched = row(kernels, "base");
    assert_eq!(patched["counts"]["trials"], 20);
    assert_eq!(patched["counts"]["passed"], 20, "{}", patched["counts"]);
    for t in patched["trials"].as_array().unwrap() {
        assert_eq!(
            t["hits"],
            serde_json::json!(["dio-pinned", "reclaim-done"]),
            "same schedule on the patched kernel"
        );
        assert!(
            t["oracle"][1]
                .as_str()
                .unwrap()
                .starts_with("read-delivered bytes=4096 present=1"),
            "the device data arrived and the page stayed mapped: {}",
            t["oracle"]
        );
    }

    let controls = result["controls"].as_array().unwrap();
    let baseline = row(controls, "madv-free-unpatched [no-schedule]");
    let natural = &baseline["counts"];
    assert!(natural["trials"].as_u64().unwrap() >= 100);
    assert_eq!(natural["errors"], 0, "{natural}");
    println!(
        "natural reproduction rate without a schedule: {}/{}",
        natural["reproduced"], natural["trials"]
    );
    assert!(
        natural["reproduced"].as_u64() < natural["trials"].as_u64(),
        "free-running threads must not reproduce every time, or the schedule proves nothing: {natural}"
    );
    // Negative controls run the same schedule to completion, in order, and stay intact.
    for label in [
        "madv-free-unpatched [async-dio]",
        "madv-free-unpatched [not-lazyfree]",
        "madv-free-barrier-only [barrier-only]",
    ] {
        let c = row(controls, label);
        assert_eq!(
            c["counts"]["passed"], c["counts"]["trials"],
            "{label} must complete the schedule and never reproduce: {}",
            c["counts"]
        );
        for t in c["trials"].as_array().unwrap() {
            assert_eq!(
                t["hits"],
                serde_json::json!(["dio-pinned", "reclaim-done"]),
                "{label}: the race was forced, not skipped"
            );
        }
        assert_eq!(c["held"], true, "{label}: {}", c["counts"]);
    }
    let sub_page = row(controls, "madv-free-unpatched [sub-page-read]");
    assert_eq!(
        sub_page["counts"]["reproduced"], sub_page["counts"]["trials"],
        "a 512-byte read loses the page too: {}",
        sub_page["counts"]
    );
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        report.contains("HIT dio-pinned") && report.contains("Console excerpt"),
        "the report shows a reproducing trace"
    );
}
