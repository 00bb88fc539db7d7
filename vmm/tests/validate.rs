//! `memrace validate` end to end on the qemu backend with real kernels: a known race
//! regression, the upstream fix confirmed, a harmless patch, a git tree, and bad input
//! refused before any boot. Each runs in the quick mode (3 trials, short perf).

mod common;

use common::{output_within, text, KERNEL_LIMIT};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Validations measure wall time too: two at once on 2 cores would measure each other.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
        .display()
        .to_string()
}

/// `memrace validate ARGS… --quick --backend qemu --out DIR`: its exit code and
/// result.json, after checking every report is there and the run completed.
fn validate(args: &[&str], out: &Path) -> (i32, Value) {
    let _turn = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let output = output_within(
        common::memrace()
            .arg("validate")
            .args(args)
            .args(["--quick", "--backend", "qemu", "--out"])
            .arg(out),
        KERNEL_LIMIT,
    );
    let (stdout, stderr) = text(&output);
    println!("{stdout}");
    let code = output.status.code().expect("exit code");
    for report in ["report.md", "report.html", "junit.xml", "result.json"] {
        assert!(out.join(report).is_file(), "{report} missing\n{stderr}");
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap())
        .expect("result.json parses");
    assert_eq!(v["complete"], true, "{stderr}");
    assert_eq!(v["exit_code"], code, "{stderr}");
    (code, v)
}

fn race_verdict<'a>(r: &'a Value, scenario: &str) -> &'a str {
    r["races"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["scenario"] == scenario)
        .unwrap_or_else(|| panic!("no race record of {scenario}: {r:#}"))["verdict"]
        .as_str()
        .unwrap()
}

fn junit(out: &Path) -> String {
    std::fs::read_to_string(out.join("junit.xml")).unwrap()
}

#[test]
fn dropping_the_rmap_locks_of_mremap_is_a_race_regression() {
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = validate(
        &[
            &repo_file("images/patches/mremap-rmap-locks.patch"),
            "--scenarios",
            "mremap-migration",
        ],
        dir.path(),
    );
    assert_eq!(code, 3, "the race-regression exit code");
    assert_eq!(race_verdict(&r, "mremap-migration"), "regression");
    assert_eq!(r["races"][0]["patched"]["outcome"], "reproduced");
    // The patch changes copy_vma (mm/vma.c): the mremap benchmarks ran.
    assert!(r["touched"]["functions"]["copy_vma"].is_array(), "{r:#}");
    let benches: Vec<&str> = r["perf"]["benches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[0].as_str().unwrap())
        .collect();
    assert!(benches.contains(&"mremap-4k"), "{benches:?}");
    let xml = junit(dir.path());
    assert!(
        xml.contains("name=\"mremap-migration\"")
            && xml.contains("<failure message=\"REGRESSION\""),
        "{xml}"
    );
}

#[test]
fn the_upstream_madv_free_fix_is_confirmed_with_its_cost() {
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = validate(
        &[
            &repo_file("examples/patches/madv-free-fix.patch"),
            "--base",
            "madv-free-unpatched",
            "--scenarios",
            "madv-free-dio",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(race_verdict(&r, "madv-free-dio"), "fix-confirmed");
    assert!(
        r["touched"]["functions"]["try_to_unmap_one"].is_array(),
        "{r:#}"
    );
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("| madv-free-pageout.t1 |"),
        "the perf table: {md}"
    );
    assert_eq!(r["perf"]["regressed"], false);
}

#[test]
fn a_comment_change_leaves_every_scenario_unchanged_and_costs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = validate(
        &[&repo_file("examples/patches/rmap-comment.patch")],
        dir.path(),
    );
    assert_eq!(code, 0, "{r:#}");
    let races = r["races"].as_array().unwrap();
    let scenarios = std::fs::read_dir(repo_file("scenarios"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert_eq!(races.len(), scenarios, "every scenario ran");
    for race in races {
        assert_eq!(race["verdict"], "unchanged", "{race:#}");
    }
    // A comment compiles to nothing.
    assert_eq!(r["touched"]["functions"], serde_json::json!({}));
    assert!(r["perf"]["result"].is_null(), "not serialised");
    assert_eq!(r["perf"]["declared"], serde_json::json!([]), "{r:#}");
    assert!(r["perf"]["error"].is_null(), "{r:#}");
}

/// The Debian source the kernels are built from, unpacked by the first build.
fn pristine_source() -> PathBuf {
    let kernel = common::kernel_dir("base");
    let cache = kernel.parent().and_then(Path::parent).expect("cache root");
    std::fs::read_dir(cache.join("src"))
        .expect("the unpacked source")
        .flatten()
        .map(|e| e.path().join("linux"))
        .find(|p| p.join("Makefile").is_file())
        .expect("an unpacked kernel tree in the cache")
}

fn git(dir: &Path, args: &[&str]) {
    let out = output_within(
        Command::new("git")
            .args([
                "-c",
                "user.name=memrace",
                "-c",
                "user.email=memrace@example.invalid",
            ])
            .arg("-C")
            .arg(dir)
            .args(args),
        KERNEL_LIMIT,
    );
    assert!(out.status.success(), "git {args:?}: {:?}", text(&out));
}

#[test]
fn a_git_tree_commit_is_validated_like_the_patch_it_carries() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("linux");
    // Hard links are cheap; the one file the patch changes gets its own copy so the
    // shared source is never written through a link.
    let cp = output_within(
        Command::new("cp")
            .arg("-al")
            .arg(pristine_source())
            .arg(&tree),
        KERNEL_LIMIT,
    );
    assert!(cp.status.success(), "{:?}", text(&cp));
    let vma = tree.join("mm/vma.c");
    let private = std::fs::read(&vma).unwrap();
    std::fs::remove_file(&vma).unwrap();
    std::fs::write(&vma, private).unwrap();
    git(&tree, &["init", "-q", "-b", "main"]);
    // -f: Debian's top-level .gitignore ignores everything at the top (its packaging
    // repository's layout).
    git(&tree, &["add", "-A", "-f", "."]);
    git(&tree, &["commit", "-q", "-m", "Debian linux-source-6.12"]);
    git(
        &tree,
        &[
            "apply",
            &repo_file("images/patches/mremap-rmap-locks.patch"),
        ],
    );
    git(
        &tree,
        &[
            "commit",
            "-q",
            "-am",
            "mm/vma: copy_vma without the rmap locks",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = validate(
        &[
            "--tree",
            tree.to_str().unwrap(),
            "--scenarios",
            "mremap-migration",
        ],
        dir.path(),
    );
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(race_verdict(&r, "mremap-migration"), "regression");
    assert!(r["input"].as_str().unwrap().contains("git tree"), "{r:#}");
    assert!(r["touched"]["functions"]["copy_vma"].is_array(), "{r:#}");
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_patch = dir.path().join("notes.txt");
    std::fs::write(&not_a_patch, "just some text\n").unwrap();
    let not_git = dir.path().join("plain");
    std::fs::create_dir(&not_git).unwrap();
    let fix = repo_file("images/patches/madv-free-unpatched.patch");
    let not_a_patch = not_a_patch.to_str().unwrap();
    let not_git = not_git.to_str().unwrap();
    for (args, want) in [
        (vec![], "nothing to validate"),
        (vec!["/no/such.patch"], "no such patch file"),
        (vec![not_a_patch], "not a patch"),
        (vec![&fix, "--base", "no-such-variant"], "no-such-variant"),
        (vec![&fix, "--scenarios", "nope"], "no such scenario"),
        (vec![&fix, "--benches", "nope"], "no such benchmark"),
        (vec!["--tree", not_git], "not a git"),
        // Already applied on this base: patch names the file and refuses.
        (vec![&fix, "--base", "madv-free-unpatched"], "mm/rmap.c"),
    ] {
        let out = output_within(
            common::memrace()
                .arg("validate")
                .args(&args)
                .args(["--backend", "qemu", "--out"])
                .arg(dir.path().join("out")),
            KERNEL_LIMIT,
        );
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: want {want:?} in {stderr}");
        assert!(!stderr.contains("perf boot"), "{args:?} booted: {stderr}");
    }
}
