//! `memrace validate PATCH… [--base VARIANT]` or `memrace validate --tree PATH
//! [--base-commit REV]`: parse, hand over to `memrace::validate`, print the report and
//! exit with its code.

use anyhow::{bail, Context, Result};
use clap::Args;
use memrace::backend::choice::BackendKind;
use memrace::validate::{self, BenchChoice, Input, Options, ScenarioChoice};
use std::path::PathBuf;

#[derive(Args)]
pub struct ValidateArgs {
    /// Patch files applied in order on --base: git format-patch files, an mbox series
    /// (as `b4 am` writes it) or plain diffs.
    #[arg(conflicts_with = "tree")]
    pub patches: Vec<PathBuf>,
    /// The kernel variant the patches apply to.
    #[arg(long, default_value = "base", conflicts_with = "tree")]
    pub base: String,
    /// A kernel git tree: its HEAD is validated against --base-commit, both built with
    /// memrace's config fragment.
    #[arg(long)]
    pub tree: Option<PathBuf>,
    /// The tree's base commit.
    #[arg(long, default_value = "HEAD~1", requires = "tree")]
    pub base_commit: String,
    /// `all`, `auto` (those whose race code the patch changes) or scenario names,
    /// comma-separated.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// `auto` (those exercising a changed file), `all`, `none` or benchmark names,
    /// comma-separated.
    #[arg(long, default_value = "auto", value_delimiter = ',')]
    pub benches: Vec<String>,
    /// Trials per kernel and scenario (default: the scenario's; --quick: 3).
    #[arg(long)]
    pub trials: Option<u32>,
    /// The short mode: 3 trials per scenario and kernel, the perf comparison's quick mode.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Guest architecture: both kernels are built for it and run on it.
    #[arg(long, value_enum, default_value_t = memrace::arch::Arch::X86_64)]
    pub arch: memrace::arch::Arch,
    /// Directory for the reports (default: runs/validate-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Echo the guest console.
    #[arg(long, short)]
    pub verbose: bool,
}

/// The one word of a list option, if it is a single word (a keyword such as `auto`).
fn single(words: &[String]) -> Option<&str> {
    match words {
        [one] => Some(one.as_str()),
        _ => None,
    }
}

pub fn run(args: ValidateArgs) -> Result<i32> {
    let input = match &args.tree {
        Some(repo) => Input::Tree {
            repo: repo.clone(),
            base_rev: args.base_commit.clone(),
        },
        None if args.patches.is_empty() => bail!(
            "nothing to validate: give patch files (`memrace validate my.patch`) or a kernel \
             git tree (`memrace validate --tree ~/linux`)"
        ),
        None => {
            for p in &args.patches {
                if !p.is_file() {
                    bail!("{}: no such patch file", p.display());
                }
            }
            Input::Patches {
                base: args.base.clone(),
                files: args.patches.clone(),
            }
        }
    };
    if args.trials == Some(0) {
        bail!("--trials 0: a scenario needs at least one trial per kernel");
    }
    let launcher = super::boot::choose_backend(args.backend, args.arch)?;
    if let memrace::backend::Launcher::Qemu(_) = launcher {
        memrace::backend::qemu::find_qemu(args.arch)?;
    }
    let out = match &args.out {
        Some(d) => d.clone(),
        None => super::stamped_runs_dir("validate")?,
    };
    let opts = Options {
        arch: args.arch,
        input,
        scenarios: match single(&args.scenarios) {
            Some("all") => ScenarioChoice::All,
            Some("auto") => ScenarioChoice::Auto,
            _ => ScenarioChoice::Named(args.scenarios.clone()),
        },
        benches: match single(&args.benches) {
            Some("auto") => BenchChoice::Auto,
            Some("all") => BenchChoice::All,
            Some("none") => BenchChoice::Skip,
            _ => BenchChoice::Named(args.benches.clone()),
        },
        trials: args.trials,
        quick: args.quick,
        verbose: args.verbose,
        out: out.clone(),
    };
    let result = validate::run(&opts, &launcher).with_context(|| {
        format!(
            "validate did not finish; what it found so far is in {}",
            out.display()
        )
    })?;
    print!("{}", validate::report::markdown(&result));
    eprintln!(
        "memrace: validate took {:.0} s; reports in {} (report.md, report.html, junit.xml, result.json); exit code {}",
        result.seconds,
        out.display(),
        result.exit_code
    );
    Ok(result.exit_code)
}
