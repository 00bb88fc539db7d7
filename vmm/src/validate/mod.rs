//! `memrace validate`: a developer's patch (or kernel git tree) against its base. Both
//! kernels are built, every chosen race scenario runs on both under its schedule, the
//! verdicts are taken relative to the base, and the performance comparison runs on
//! the benchmarks the patch concerns. One report, one exit code (see `verdict`).

pub mod report;
pub mod select;
pub mod verdict;

use crate::arch::Arch;
use crate::backend::Launcher;
use crate::kernel::patch::{self, Hunk, PatchPart};
use crate::kernel::recipe::{Images, Variant};
use crate::kernel::{self, tree, Kernel, KernelError};
use crate::perf::{self, KernelUnderTest, PerfError, PerfPlan, PerfResult};
use crate::scenario::file::{self, Scenario, ScenarioError};
use crate::scenario::orchestrate::{self, Kernels, OrchestrateError, Settings};
use select::{Pick, Touched};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use verdict::{Outcome, RaceVerdict};

/// The scenario kernel entry that configures a tree's kernels (params, oracle).
const TREE_BASE_ENTRY: &str = "base";
/// Trials per kernel and scenario in `--quick`.
const QUICK_TRIALS: u32 = 3;
/// Bound of `git diff` between the tree's two commits.
const GIT_DIFF_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Recipe(#[from] crate::kernel::recipe::RecipeError),
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Orchestrate(#[from] OrchestrateError),
    #[error(transparent)]
    Perf(#[from] PerfError),
    #[error("--scenarios {name:?}: no such scenario; known: {known}")]
    UnknownScenario { name: String, known: String },
    #[error("--benches {name:?}: no such benchmark; known: {known}")]
    UnknownBench { name: String, known: String },
    #[error("git diff {base}..{head} in {repo} failed: {why}", repo = .repo.display())]
    GitDiff {
        repo: PathBuf,
        base: String,
        head: String,
        why: String,
    },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What is validated.
#[derive(Debug, Clone)]
pub enum Input {
    /// Patch files applied in order on the `base` variant.
    Patches { base: String, files: Vec<PathBuf> },
    /// A kernel git tree: HEAD against `base_rev`.
    Tree { repo: PathBuf, base_rev: String },
}

/// Which scenarios run.
#[derive(Debug, Clone)]
pub enum ScenarioChoice {
    All,
    /// Those whose race code the patch changes (see `select`).
    Auto,
    Named(Vec<String>),
}

/// Which benchmarks run.
#[derive(Debug, Clone)]
pub enum BenchChoice {
    /// Those exercising a file the patch changes.
    Auto,
    All,
    Named(Vec<String>),
    /// No performance comparison.
    Skip,
}

pub struct Options {
    /// The guest architecture both kernels are built for and run on.
    pub arch: Arch,
    pub input: Input,
    pub scenarios: ScenarioChoice,
    pub benches: BenchChoice,
    /// Trials per kernel and scenario (default: the scenario's; `quick`: 3).
    pub trials: Option<u32>,
    /// Fewer trials and the perf comparison's short mode.
    pub quick: bool,
    pub verbose: bool,
    pub out: PathBuf,
}

/// One of the two kernels.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub label: String,
    pub description: String,
    /// Content address of the build (`memrace kernel list`).
    pub hash: String,
    /// The scenario kernel entry whose configuration (params, oracle) it runs with.
    pub configured_as: String,
    #[serde(skip)]
    kernel: Kernel,
}

/// One scenario on both kernels.
#[derive(Debug, Clone, Serialize)]
pub struct RaceRecord {
    pub scenario: String,
    pub verdict: RaceVerdict,
    pub why: String,
    pub base: Option<Outcome>,
    pub patched: Option<Outcome>,
    /// The scenario's own results (result.json, report.md, per-boot logs).
    pub dir: String,
    pub seconds: f64,
}

/// The performance part.
#[derive(Debug, Clone, Serialize)]
pub struct PerfRecord {
    /// Each benchmark run, with why (the files that made it relevant, or "all").
    pub benches: Vec<(String, Vec<String>)>,
    pub dir: String,
    /// `metric bench (+x%)` of every declared change.
    pub declared: Vec<String>,
    pub regressed: bool,
    /// Why the comparison did not finish, if it did not.
    pub error: Option<String>,
    #[serde(skip)]
    pub result: Option<PerfResult>,
}

/// Everything a validation found: `result.json`, rewritten after every step.
#[derive(Debug, Clone, Serialize)]
pub struct ValidateResult {
    /// What was validated, in words.
    pub input: String,
    pub base: Side,
    pub patched: Side,
    pub backend: String,
    /// The guest architecture both kernels were built for and ran.
    pub arch: Arch,
    pub started_unix: u64,
    pub touched: Touched,
    /// `all`, `auto` or `named`.
    pub selection: String,
    /// With `auto`: the scenarios picked and why.
    pub picks: Vec<Pick>,
    pub races: Vec<RaceRecord>,
    pub perf: Option<PerfRecord>,
    pub exit_code: i32,
    pub complete: bool,
    pub seconds: f64,
}

impl ValidateResult {
    /// Write result.json, report.md, report.html and junit.xml, each atomically.
    pub fn write(&self, dir: &Path) -> Result<(), ValidateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ValidateError::Io { path, source }
        };
        let json = dir.join("result.json");
        crate::fsutil::write_json_atomically(&json, self).map_err(io(&json))?;
        for (name, text) in [
            ("report.md", report::markdown(self)),
            ("report.html", report::html(self)),
            ("junit.xml", report::junit(self)),
        ] {
            let path = dir.join(name);
            crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
        }
        Ok(())
    }
}

/// The two kernels' variants and the patch text, checked before anything builds.
struct Prepared {
    input: String,
    variants: [Variant; 2],
    configured_as: String,
    /// Every hunk of the change from base to patched.
    hunks: Vec<Hunk>,
}

fn prepare(input: &Input, images: &Images) -> Result<Prepared, ValidateError> {
    match input {
        Input::Patches { base, files } => {
            let base_variant = images.variant(base)?;
            let mut hunks = Vec::new();
            let mut absolute = Vec::new();
            for f in files {
                // Read first: "not a patch" before any build.
                let parsed = patch::read(f)?;
                hunks.extend(parsed.parts.iter().flat_map(patch::hunks));
                absolute.push(std::path::absolute(f).map_err(|source| ValidateError::Io {
                    path: f.clone(),
                    source,
                })?);
            }
            let stem = |p: &PathBuf| {
                p.file_stem()
                    .map_or("patch".into(), |s| s.to_string_lossy().into_owned())
            };
            let mut label = format!("{base}+{}", stem(&files[0]));
            if files.len() > 1 {
                label.push_str(&format!("+{}more", files.len() - 1));
            }
            let patched = base_variant.with_patches(&label, &absolute);
            Ok(Prepared {
                input: format!(
                    "{} on {base}",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                variants: [base_variant, patched],
                configured_as: base.clone(),
                hunks,
            })
        }
        Input::Tree { repo, base_rev } => {
            let head = tree::resolve(repo, "HEAD")?;
            let base = tree::resolve(repo, base_rev)?;
            let short = |c: &str| c[..12.min(c.len())].to_string();
            let diff = git_diff(repo, &base.commit, &head.commit)?;
            let hunks = patch::hunks(&PatchPart {
                subject: None,
                text: diff,
            });
            Ok(Prepared {
                input: format!(
                    "git tree {}: HEAD {} ({}) against {base_rev} {}",
                    repo.display(),
                    short(&head.commit),
                    head.subject,
                    short(&base.commit)
                ),
                variants: [
                    Variant::from_git(&format!("tree-{}", short(&base.commit)), base),
                    Variant::from_git(&format!("tree-{}", short(&head.commit)), head),
                ],
                configured_as: TREE_BASE_ENTRY.into(),
                hunks,
            })
        }
    }
}

fn git_diff(repo: &Path, base: &str, head: &str) -> Result<String, ValidateError> {
    let mut cmd = std::process::Command::new("git");
    cmd.arg("-C")
        .arg(repo)
        .args(["diff", "--no-color", "--no-ext-diff", base, head]);
    let failed = |why: String| ValidateError::GitDiff {
        repo: repo.to_path_buf(),
        base: base.into(),
        head: head.into(),
        why,
    };
    let out =
        crate::child::output_within(&mut cmd, GIT_DIFF_LIMIT).map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The scenarios `choice` names, each checked against `breakpoint_limit` per vCPU.
fn scenarios(
    choice: &ScenarioChoice,
    breakpoint_limit: usize,
) -> Result<Vec<Scenario>, ValidateError> {
    let dir = file::default_dir();
    let known = file::names(&dir);
    let names: Vec<String> = match choice {
        ScenarioChoice::Named(names) => {
            if let Some(bad) = names.iter().find(|n| !known.contains(n)) {
                return Err(ValidateError::UnknownScenario {
                    name: bad.clone(),
                    known: known.join(", "),
                });
            }
            names.clone()
        }
        _ => known,
    };
    names
        .iter()
        .map(|n| Ok(file::find(&dir, n, breakpoint_limit)?))
        .collect()
}

fn benches(
    choice: &BenchChoice,
    touched: &Touched,
) -> Result<Vec<(String, Vec<String>)>, ValidateError> {
    let all = || {
        control_proto::PERF_BENCHES
            .iter()
            .map(|b| (b.to_string(), vec!["all benchmarks asked for".to_string()]))
            .collect()
    };
    Ok(match choice {
        BenchChoice::Skip => Vec::new(),
        BenchChoice::All => all(),
        BenchChoice::Auto => select::benches(touched),
        BenchChoice::Named(names) => {
            if let Some(bad) = names
                .iter()
                .find(|n| !control_proto::PERF_BENCHES.contains(&n.as_str()))
            {
                return Err(ValidateError::UnknownBench {
                    name: bad.clone(),
                    known: control_proto::PERF_BENCHES.join(", "),
                });
            }
            names
                .iter()
                .map(|n| (n.clone(), vec!["named".to_string()]))
                .collect()
        }
    })
}

/// Validate as `opts` say on `launcher`. Results are in `opts.out` after every step,
/// whatever happens later.
pub fn run(opts: &Options, launcher: &Launcher) -> Result<ValidateResult, ValidateError> {
    let started = Instant::now();
    let images = Images::open(&kernel::default_images_dir())?;
    // Everything that can be refused is refused before the first build.
    let prepared = prepare(&opts.input, &images)?;
    let mut chosen = scenarios(&opts.scenarios, launcher.max_breakpoints(opts.arch))?;
    for s in &chosen {
        orchestrate::check_vm_breakpoints(s, launcher)?;
    }
    if let BenchChoice::Named(_) = opts.benches {
        benches(&opts.benches, &Touched::default())?;
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| ValidateError::Io {
        path: opts.out.clone(),
        source,
    })?;
    let [base_variant, patched_variant] = &prepared.variants;
    eprintln!(
        "memrace: validate: building {} and {}",
        base_variant.name, patched_variant.name
    );
    let built = [
        kernel::build(&images, opts.arch, base_variant)?,
        kernel::build(&images, opts.arch, patched_variant)?,
    ];
    let mut kernels = Kernels::new(opts.arch);
    let side = |v: &Variant, k: &Kernel| Side {
        label: v.name.clone(),
        description: v.description.clone(),
        hash: k.manifest.hash.clone(),
        configured_as: prepared.configured_as.clone(),
        kernel: k.clone(),
    };
    let (base, patched) = (
        side(base_variant, &built[0]),
        side(patched_variant, &built[1]),
    );
    kernels.add(&base.label, &built[0])?;
    let patched_loaded = kernels.add(&patched.label, &built[1])?;
    let touched = Touched::of(&prepared.hunks, &patched_loaded.symbols);
    let picks = match opts.scenarios {
        ScenarioChoice::Auto => {
            let picks = select::scenarios(&chosen, &touched, &patched_loaded.symbols, &images);
            chosen.retain(|s| picks.iter().any(|p| p.scenario == s.name));
            picks
        }
        _ => Vec::new(),
    };
    let mut result = ValidateResult {
        input: prepared.input.clone(),
        base,
        patched,
        backend: launcher.to_string(),
        arch: opts.arch,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        touched,
        selection: match opts.scenarios {
            ScenarioChoice::All => "all",
            ScenarioChoice::Auto => "auto",
            ScenarioChoice::Named(_) => "named",
        }
        .into(),
        picks,
        races: Vec::new(),
        perf: None,
        exit_code: verdict::EXIT_INCONCLUSIVE,
        complete: false,
        seconds: 0.0,
    };
    result.write(&opts.out)?;
    for (i, scenario) in chosen.iter().enumerate() {
        eprintln!(
            "memrace: validate: scenario {}/{} {}",
            i + 1,
            chosen.len(),
            scenario.name
        );
        let record = race(scenario, &result, opts, launcher, &mut kernels);
        eprintln!(
            "memrace: validate: {} — {}",
            scenario.name,
            record.verdict.text()
        );
        result.races.push(record);
        result.seconds = started.elapsed().as_secs_f64();
        result.write(&opts.out)?;
    }
    let bench_list = benches(&opts.benches, &result.touched)?;
    if !bench_list.is_empty() {
        result.perf = Some(perf_part(bench_list, &result, opts, launcher));
    }
    let perf_regressed = result.perf.as_ref().is_some_and(|p| p.regressed);
    let verdicts: Vec<RaceVerdict> = result.races.iter().map(|r| r.verdict).collect();
    result.exit_code = verdict::exit_code(&verdicts, perf_regressed);
    let perf_unfinished = result.perf.as_ref().is_some_and(|p| p.error.is_some());
    if result.exit_code == verdict::EXIT_OK && perf_unfinished {
        result.exit_code = verdict::EXIT_INCONCLUSIVE;
    }
    result.complete = true;
    result.seconds = started.elapsed().as_secs_f64();
    result.write(&opts.out)?;
    Ok(result)
}

/// One scenario on both kernels. A scenario that cannot run is a verdict (not
/// applicable, inconclusive), never an error that stops the others.
fn race(
    scenario: &Scenario,
    result: &ValidateResult,
    opts: &Options,
    launcher: &Launcher,
    kernels: &mut Kernels,
) -> RaceRecord {
    let started = Instant::now();
    let dir = opts.out.join("races").join(&scenario.name);
    let mut record = RaceRecord {
        scenario: scenario.name.clone(),
        verdict: RaceVerdict::Inconclusive,
        why: String::new(),
        base: None,
        patched: None,
        dir: dir.display().to_string(),
        seconds: 0.0,
    };
    let trials = opts.trials.unwrap_or(if opts.quick {
        QUICK_TRIALS
    } else {
        scenario.workload.trials
    });
    let entry = scenario
        .kernels
        .iter()
        .find(|e| e.variant == result.base.configured_as);
    let plans: Vec<_> = [&result.base, &result.patched]
        .iter()
        .map(|side| orchestrate::kernel_plan(scenario, entry, &side.label, &side.label, trials))
        .collect();
    if let Err(e) = orchestrate::preflight(scenario, &plans, kernels) {
        (record.verdict, record.why) = match e.absent_breakpoint() {
            Some(spec) => (
                RaceVerdict::NotApplicable,
                format!("not applicable: no symbol {spec} ({e})"),
            ),
            None => (RaceVerdict::Inconclusive, format!("could not run: {e}")),
        };
        return record;
    }
    let settings = Settings {
        launcher,
        dir: &dir,
        verbose: opts.verbose,
    };
    match orchestrate::run_scenario(scenario, plans, &settings, kernels) {
        Ok(r) if r.kernels.len() == 2 => {
            let (a, b) = (Outcome::of(&r.kernels[0]), Outcome::of(&r.kernels[1]));
            record.verdict = RaceVerdict::compare(&a, &b);
            record.why = format!(
                "base {}: {}; patched {}: {}",
                result.base.label,
                a.text(),
                result.patched.label,
                b.text()
            );
            (record.base, record.patched) = (Some(a), Some(b));
        }
        Ok(r) => record.why = format!("ran on {} kernels, not 2", r.kernels.len()),
        Err(e) => record.why = format!("could not run: {e}"),
    }
    record.seconds = started.elapsed().as_secs_f64();
    record
}

/// The performance comparison of the two kernels on `bench_list`.
fn perf_part(
    bench_list: Vec<(String, Vec<String>)>,
    result: &ValidateResult,
    opts: &Options,
    launcher: &Launcher,
) -> PerfRecord {
    let dir = opts.out.join("perf");
    let under_test = |s: &Side| KernelUnderTest {
        label: s.label.clone(),
        image: s.kernel.boot_image(),
        hash: s.hash.clone(),
    };
    let mut plan = PerfPlan::standard(
        [under_test(&result.base), under_test(&result.patched)],
        bench_list.iter().map(|(b, _)| b.clone()).collect(),
        opts.quick,
    );
    plan.arch = opts.arch;
    let mut record = PerfRecord {
        benches: bench_list,
        dir: dir.display().to_string(),
        declared: Vec::new(),
        regressed: false,
        error: None,
        result: None,
    };
    if let Err(source) = std::fs::create_dir_all(&dir) {
        record.error = Some(format!("creating {}: {source}", dir.display()));
        return record;
    }
    eprintln!("memrace: validate: performance comparison");
    match perf::run_with_progress(plan, launcher, &dir) {
        Ok(r) => {
            for c in &r.comparisons {
                use crate::perf::stats::Verdict;
                if matches!(c.change.verdict, Verdict::Regression | Verdict::Improvement) {
                    record.declared.push(format!(
                        "{} {} ({:+.1}%)",
                        c.metric.name(),
                        c.bench,
                        c.change.pct
                    ));
                }
                record.regressed |= c.change.verdict == Verdict::Regression;
            }
            record.result = Some(r);
        }
        Err(e) => record.error = Some(e.to_string()),
    }
    record
}
