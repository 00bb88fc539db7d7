//! The memrace command line. Errors become `anyhow` here and nowhere else.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "memrace",
    version,
    about = "Deterministic Linux mm race bench: patched vs unpatched kernels under controlled vCPU schedules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, list and locate kernels from images/ recipes.
    #[command(subcommand)]
    Kernel(cli::kernel::KernelCommand),
    /// Boot a kernel, run CMD in the guest and exit with its status.
    Boot(cli::boot::BootArgs),
    /// Run a race scenario on its kernels (default: madv-free-dio) and report verdicts.
    Run(cli::run::RunArgs),
    /// Re-run a recorded scenario and check the breakpoint hits occur in the same order.
    Replay(cli::replay::ReplayArgs),
    /// Compare two kernels' performance on mm microbenchmarks in the guest (A/B, statistics, plots).
    Perf(cli::perf::PerfArgs),
    /// Validate an mm patch (or a kernel tree's HEAD) against its base: every race
    /// scenario on both kernels, verdicts relative to the base, and a performance
    /// comparison; exit code 0 when nothing regressed.
    Validate(cli::validate::ValidateArgs),
    /// Measure what the backends cost.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
}

fn main() {
    // A closed pipe (`memrace kernel list | head`) ends memrace quietly, as it does any
    // other filter, instead of a panic in println!: Rust ignores SIGPIPE by default.
    // SAFETY: setting a signal's disposition to the default before any thread starts
    // has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Kernel(k) => cli::kernel::run(k),
        Command::Boot(b) => cli::boot::run(b),
        Command::Run(r) => cli::run::run(r),
        Command::Replay(r) => cli::replay::run(r),
        Command::Perf(p) => cli::perf::run(p),
        Command::Validate(v) => cli::validate::run(v),
        Command::Bench(b) => cli::bench::run(b),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("memrace: error: {e:#}");
            std::process::exit(1);
        }
    }
}
