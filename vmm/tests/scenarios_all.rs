//! Every scenario in scenarios/ meets its expectations on the qemu backend over at least
//! 10 trials per kernel, and every negative control and no-schedule baseline runs and
//! holds, through `memrace run --all --controls` and its summary table.

mod common;
use common::{kernel_dir, memrace, output_within, text, COMMAND_LIMIT};
use serde_json::Value;

#[test]
fn every_scenario_meets_its_expectations_over_10_trials_per_kernel() {
    for k in [
        "base",
        "madv-free-unpatched",
        "mremap-unpatched",
        "fork-anon-vma-unpatched",
        "thp-early-pte",
        "base-kasan",
        "fork-anon-vma-unpatched-kasan",
    ] {
        kernel_dir(k);
    }
    let out = tempfile::tempdir().unwrap();
    let output = output_within(
        memrace()
            .args(["run", "--all", "--controls", "--trials", "10", "--out"])
            .arg(out.path()),
        COMMAND_LIMIT,
    );
    let (stdout, stderr) = text(&output);
    println!("{stdout}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{stderr}\ntrials that erred or were infeasible:\n{}",
        failed_trials(out.path())
    );
    assert!(stdout.contains("SUMMARY"), "{stdout}");
    let mut scenarios = 0;
    for entry in std::fs::read_dir(out.path()).unwrap().flatten() {
        let path = entry.path().join("result.json");
        let result: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        scenarios += 1;
        assert_eq!(result["held"], true, "{}", path.display());
        for k in result["kernels"].as_array().unwrap() {
            assert!(
                k["counts"]["trials"].as_u64().unwrap() >= 10,
                "{}: {}",
                result["scenario"],
                k["label"]
            );
            assert_eq!(
                k["held"], true,
                "{}: {} {}",
                result["scenario"], k["label"], k["counts"]
            );
            let counts = &k["counts"];
            let count = |what: &str| counts[what].as_u64().unwrap();
            match k["expect"].as_str().unwrap() {
                "reproduced" => assert_eq!(count("reproduced"), count("trials")),
                "intact" => assert_eq!(count("passed"), count("trials")),
                // "Infeasible on this kernel (expected)" must come from the declared
                // detector, never from a step that timed out.
                "intact-or-blocked" => assert_eq!(
                    count("passed") + count("blocked"),
                    count("trials"),
                    "{counts}"
                ),
                other => panic!("scenario kernels declare an expectation, not {other}"),
            }
        }
        let controls = result["controls"].as_array().unwrap();
        let race = result["scenario_text"]
            .as_str()
            .unwrap()
            .contains("\nseed = ");
        assert!(
            !race
                || controls
                    .iter()
                    .any(|c| c["schedule_name"].as_str().unwrap().starts_with("none")),
            "{}: every race scenario has a no-schedule baseline",
            result["scenario"]
        );
        for c in controls {
            assert_eq!(
                c["held"], true,
                "{}: {} {}",
                result["scenario"], c["label"], c["counts"]
            );
            assert!(c["counts"]["trials"].as_u64().unwrap() > 0);
        }
        for name in [
            "mremap-migration",
            "fork-anon-vma",
            "thp-pagetable-exposure",
        ] {
            if result["scenario"] == name {
                assert!(
                    stdout.lines().any(|l| l.starts_with(name)),
                    "summary row for {name}"
                );
            }
        }
    }
    assert!(scenarios >= 5, "{scenarios} scenario results");
}

/// Every trial under `dir` whose verdict is an error or infeasible, with its reason: what
/// a failed run needs to be diagnosed once its temporary directory is gone.
fn failed_trials(dir: &std::path::Path) -> String {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("result.json")) else {
            continue;
        };
        let Ok(result) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let rows = result["kernels"].as_array().into_iter().flatten();
        let controls = result["controls"].as_array().into_iter().flatten();
        for k in rows.chain(controls) {
            for t in k["trials"].as_array().into_iter().flatten() {
                let verdict = t["verdict"].as_str().unwrap_or("?");
                if verdict == "error" || verdict == "infeasible" {
                    lines.push(format!(
                        "  {} / {} trial {}: {verdict}: {}",
                        result["scenario"], k["label"], t["run"]["trial"], t["why"]
                    ));
                }
            }
        }
    }
    lines.join("\n")
}
