//! The schedule engine on the qemu backend with a real 6.12 kernel: hit order, task
//! conditions, replay, bounded infeasibility, and schedule errors caught before boot.

mod common;
use common::{kernel_dir, memrace, output_within, text, COMMAND_LIMIT};
use memrace::debug::Symbols;
use serde_json::Value;
use std::path::Path;

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

/// `memrace replay` of `result` after `tamper` changed the first kernel row.
fn replay_tampered(
    result: &Path,
    tamper: impl Fn(&mut Value),
    extra: &[&str],
) -> (std::process::Output, String) {
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(result).unwrap()).unwrap();
    tamper(&mut json["kernels"][0]);
    let tampered = result.with_file_name("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = output_within(
        memrace().arg("replay").arg(&tampered).args(extra),
        COMMAND_LIMIT,
    );
    let (stdout, stderr) = text(&out);
    (out, format!("{stdout}{stderr}"))
}

#[test]
fn replay_refuses_another_kernel_build_or_schedule_and_empty_rows_unless_forced() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let (output, result) = run_scenario("syscall-order", out.path(), &["--trials", "2"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output).1);
    let row = &result["kernels"][0];
    let hash = row["kernel_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 16, "{row}");
    assert_eq!(row["schedule_hash"].as_str().unwrap().len(), 16, "{row}");
    let path = out.path().join("result.json");

    let other = |r: &mut Value| r["kernel_hash"] = "0123456789abcdef".into();
    let (refused, text) = replay_tampered(&path, other, &[]);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    for needle in ["recorded on kernel build 0123456789abcdef", hash, "--force"] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
    // Results written before hashes were recorded are refused too.
    let old = |r: &mut Value| {
        r.as_object_mut().unwrap().remove("kernel_hash");
    };
    let (refused, text) = replay_tampered(&path, old, &[]);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("records no kernel build"), "{text}");
    let schedule = |r: &mut Value| r["schedule_hash"] = "fedcba9876543210".into();
    let (refused, text) = replay_tampered(&path, schedule, &[]);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("recorded with schedule fedcba9876543210"),
        "{text}"
    );
    // Zero trials would compare nothing: refused, even with --force.
    let empty = |r: &mut Value| r["trials"] = serde_json::json!([]);
    let (refused, text) = replay_tampered(&path, empty, &["--force"]);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("recorded 0 trials"), "{text}");
    // --force replays, and says loudly what it overrode.
    let (forced, text) = replay_tampered(&path, other, &["--force"]);
    assert_eq!(forced.status.code(), Some(0), "{text}");
    assert!(
        text.contains("WARNING: --force") && text.contains("hit order identical in 2/2 trials"),
        "{text}"
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
fn a_parked_vcpu_takes_the_tlb_shootdown_ipi_another_vcpu_waits_for() {
    kernel_dir("base");
    let out = tempfile::tempdir().unwrap();
    let (output, result) = run_scenario("parked-ipi", out.path(), &["--trials", "5"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output).1);
    let trials = trials(&result, 0);
    assert_eq!(trials.len(), 5);
    for t in &trials {
        assert_eq!(t["verdict"], "passed", "{t}");
        assert_eq!(
            t["hits"],
            serde_json::json!(["a-parked", "b-after-munmap"]),
            "b got past its munmap while a was parked"
        );
        assert!(
            t["serviced"].as_u64().unwrap() > 0,
            "the parked vCPU was re-entered to take the IPI: {}",
            t["serviced"]
        );
    }
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
    let (output, result) = run_scenario(&file, &dir.path().join("out"), &[]);
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
    // The bound held: the hit step gave up after its 3 s, not before, and not much
    // later (slack for stopping the VM and reading registers on a loaded TCG host).
    let trace = t["trace"].as_array().unwrap();
    let gave_up = trace.iter().find(|e| e["kind"] == "infeasible").unwrap();
    let step = trace
        .iter()
        .find(|e| e["kind"] == "step" && e["line"] == gave_up["line"])
        .unwrap();
    let waited_ms = (gave_up["t_us"].as_u64().unwrap() - step["t_us"].as_u64().unwrap()) / 1000;
    assert!(
        (3000..3000 + 30_000).contains(&waited_ms),
        "the 3000 ms step gave up after {waited_ms} ms: {step} {gave_up}"
    );
    // Each vCPU exactly once, in order, none parked (the breakpoint never fired), at
    // `symbol+0xoff` (kernel code) or a bare address (user mode).
    let syms = Symbols::load(&kernel_dir("base").join("vmlinux")).unwrap();
    let vcpus: Vec<&str> = t["schedule"]["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(vcpus.len(), 3, "{vcpus:?}");
    let mut in_kernel = 0;
    for (i, entry) in vcpus.iter().enumerate() {
        let (n, state, at) = parse_vcpu(entry)
            .unwrap_or_else(|| panic!("not `vCPU N (state): location`: {entry:?}"));
        assert_eq!((n, state), (i, "running"), "{entry:?}");
        if let Some((symbol, offset)) = parse_symbol_offset(at) {
            // A real symbol of this kernel, and the same place memrace's own lookup names.
            let start = syms
                .symbol(symbol)
                .unwrap_or_else(|e| panic!("{entry:?}: {e}"));
            assert_eq!(syms.describe(start + offset), at, "{entry:?}");
            in_kernel += 1;
        } else {
            let addr = at.strip_prefix("0x").map(|h| u64::from_str_radix(h, 16));
            assert!(
                matches!(addr, Some(Ok(_))),
                "neither symbol+0xoff nor an address: {entry:?}"
            );
        }
    }
    assert!(in_kernel > 0, "no vCPU was in kernel code: {vcpus:?}");
    let console = t["schedule"]["console"].as_array().unwrap();
    assert!(
        !console.is_empty(),
        "the verdict carries the last console lines"
    );
    let report = std::fs::read_to_string(dir.path().join("out/report.md")).unwrap();
    assert!(report.contains("INFEASIBLE at line"), "{report}");
}

/// `vCPU N (parked|running): LOCATION`, strictly: N decimal, one of the two states.
fn parse_vcpu(entry: &str) -> Option<(usize, &str, &str)> {
    let (n, rest) = entry.strip_prefix("vCPU ")?.split_once(" (")?;
    let (state, at) = rest.split_once("): ")?;
    let decimal = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    if !decimal || !matches!(state, "parked" | "running") || at.is_empty() {
        return None;
    }
    Some((n.parse().ok()?, state, at))
}

/// `symbol+0xOFF` with a C identifier (or a compiler's `name.cold`/`.isra.0` suffix).
fn parse_symbol_offset(at: &str) -> Option<(&str, u64)> {
    let (symbol, hex) = at.split_once("+0x")?;
    let ident = symbol.starts_with(|c: char| c == '_' || c.is_ascii_alphabetic())
        && symbol
            .chars()
            .all(|c| c == '_' || c == '.' || c.is_ascii_alphanumeric());
    if !ident || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((symbol, u64::from_str_radix(hex, 16).ok()?))
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
