//! The schedule engine on the qemu backend with a real 6.12 kernel: hit order, task
//! conditions, replay, bounded infeasibility, and schedule errors caught before boot.

mod common;
use common::{kernel_dir, memrace, output_within, text, COMMAND_LIMIT};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn run_scenario(scenario: &str, out: &Path, extra: &[&str]) -> (std::process::Output, Value) {
    let mut cmd = memrace();
    cmd.args(["run", scenario, "--out"]).arg(out).args(extra);
    let output = output_within(&mut cmd, COMMAND_LIMIT);
    let result = std::fs::read_to_string(out.join("result.json"))
        .map(|t| serde_json::from_str(&t).expect("valid result.json"))
        .unwrap_or(Value::Null);
    (output, result)
}

fn trials(result: &Value, row: usize) -> Vec<Value> {
    result["kernels"][row]["trials"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn syscall_order_hits_follow_the_schedule_on_20_of_20_runs_and_the_tid_condition_filters() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let (output, result) = run_scenario("syscall-order", out.path(), &["--trials", "20"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output).1);
    let trials = trials(&result, 0);
    assert_eq!(trials.len(), 20);
    let mut filtered = 0;
    for t in &trials {
        assert_eq!(
            t["hits"],
            serde_json::json!(["a-in-getppid", "b-in-getpid"]),
            "trial {}",
            t["trial"]
        );
        filtered += t["filtered_hits"].as_u64().unwrap();
        // Each hit was taken by the thread the condition names, never by the noise thread.
        for e in t["trace"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "hit")
        {
            let want = if e["name"] == "a-in-getppid" {
                "a"
            } else {
                "b"
            };
            assert_eq!(e["comm"], want, "{e}");
        }
    }
    assert!(
        filtered > 0,
        "the noise thread's getppid calls must have been filtered out"
    );
}

#[test]
fn replay_reproduces_the_recorded_hit_order() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let (output, _) = run_scenario("syscall-order", out.path(), &["--trials", "3"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output).1);
    let replay = output_within(
        memrace().arg("replay").arg(out.path().join("result.json")),
        COMMAND_LIMIT,
    );
    let (stdout, stderr) = text(&replay);
    assert_eq!(replay.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("hit order identical in 3/3 trials"),
        "{stdout}"
    );
}

fn scenario_file(dir: &Path, steps: &str, step_timeout_ms: u64) -> String {
    // The harness gives up on an unopened gate after 8 s: the trial then ends by itself.
    let text = format!(
        "name = \"t\"\ndescription = \"test\"\n[vm]\ncpus = 3\nmem = \"256M\"\n[workload]\nname = \"syscall-pair\"\ntrials = 1\nparams = {{ gate_timeout_ms = \"8000\" }}\n\
[[kernel]]\nvariant = \"base\"\nexpect = \"intact\"\n[schedule]\nstep_timeout_ms = {step_timeout_ms}\nsteps = [\n{steps}]\n"
    );
    let path = dir.join("t.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn a_breakpoint_that_is_never_reached_is_infeasible_within_its_bound() {
    kernel_dir("base");
    let dir = tempfile::tempdir().unwrap();
    // PID 1 never calls getppid: the breakpoint's condition is never true. Gate b stays
    // shut, so the guest is still busy when the bound passes.
    let steps = "{ wait = \"READY a\" },\n{ break = \"__x64_sys_getppid\", cpu = 1, name = \"never\", if = \"tid == 1\" },\n\
{ open = \"a\" },\n{ hit = \"never\" },\n{ release = 1 },\n";
    let file = scenario_file(dir.path(), steps, 3000);
    let started = Instant::now();
    let (output, result) = run_scenario(&file, &dir.path().join("out"), &[]);
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        output.status.code(),
        Some(3),
        "expectations must fail: {}",
        text(&output).1
    );
    let t = &trials(&result, 0)[0];
    assert_eq!(t["verdict"], "infeasible", "{t}");
    assert_eq!(t["schedule"]["status"], "infeasible");
    assert!(
        t["schedule"]["reason"]
            .as_str()
            .unwrap()
            .contains("\"never\" was not hit"),
        "{t}"
    );
    let vcpus = t["schedule"]["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 3);
    assert!(
        vcpus.iter().all(|v| v.as_str().unwrap().contains("vCPU")),
        "{vcpus:?}"
    );
    let console = t["schedule"]["console"].as_array().unwrap();
    assert!(
        !console.is_empty(),
        "the verdict carries the last console lines"
    );
    let report = std::fs::read_to_string(dir.path().join("out/report.md")).unwrap();
    assert!(report.contains("INFEASIBLE at line"), "{report}");
}

fn refused_before_boot(steps: &str, needles: &[&str]) {
    kernel_dir("base");
    let dir = tempfile::tempdir().unwrap();
    let file = scenario_file(dir.path(), steps, 3000);
    let out = dir.path().join("out");
    let (output, _) = run_scenario(&file, &out, &[]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in:\n{stderr}");
    }
    let booted = std::fs::read_dir(&out)
        .map(|d| d.flatten().any(|e| e.path().join("console.log").exists()))
        .unwrap_or(false);
    assert!(!booted, "nothing may boot when the schedule is wrong");
}

#[test]
fn an_unknown_symbol_is_refused_before_boot() {
    refused_before_boot(
        "{ break = \"no_such_function_xyz\", cpu = 1, name = \"x\" },\n",
        &["t.toml:", "no_such_function_xyz"],
    );
}

#[test]
fn an_inlined_function_is_refused_with_out_of_line_neighbours() {
    refused_before_boot(
        "{ break = \"madvise_pageout\", cpu = 1, name = \"x\" },\n",
        &["inlined", "do_madvise"],
    );
}

#[test]
fn a_fifth_breakpoint_on_one_vcpu_is_refused_before_boot() {
    let steps: String = (0..5)
        .map(|i| format!("{{ break = \"__x64_sys_getppid+{i}\", cpu = 1, name = \"b{i}\" }},\n"))
        .collect();
    refused_before_boot(&steps, &["t.toml:20:", "5 breakpoints", "DR0-DR3"]);
}

#[test]
fn a_malformed_schedule_names_the_line() {
    refused_before_boot(
        "{ wait = \"READY a\" },\n{ wait = \"SLEEP 3\" },\n",
        &["t.toml:17:", "expected one of"],
    );
}
