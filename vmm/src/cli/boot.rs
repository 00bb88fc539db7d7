//! `memrace boot [--kernel VARIANT|PATH] [--cpus N] [--mem SIZE] -- CMD ARGS…`

use anyhow::{bail, Context, Result};
use clap::Args;
use control_proto::Stream;
use memrace::arch::Arch;
use memrace::backend::choice::{self, BackendKind};
use memrace::backend::kvm::CpuFeature;
use memrace::backend::{ControlMessage, Launcher, VmConfig};
use memrace::boot::{self, BootReport, Limits, Verdict};
use memrace::guest::{self, Job};
use memrace::kernel::image::{self, ImageKind};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct BootArgs {
    /// A kernel variant name (see `memrace kernel list`) or a path to a vmlinux/bzImage.
    #[arg(long, default_value = "base")]
    pub kernel: String,
    #[arg(long, default_value_t = 2)]
    pub cpus: usize,
    /// Guest memory: 512M, 1G, or MiB as a plain number.
    #[arg(long, default_value = "512M")]
    pub mem: String,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Guest architecture: the kernel is built for it and the VM emulates it.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// Extra kernel command-line arguments.
    #[arg(long, default_value = "")]
    pub append: String,
    /// Seconds allowed from VM start to /init.
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
    /// Seconds allowed for the command once /init runs.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Extra files for the guest, as HOST_PATH:GUEST_PATH.
    #[arg(long = "file")]
    pub files: Vec<String>,
    /// Echo the guest console to stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// CPU features to hide from the guest (kvm backend), comma-separated: xsave, avx,
    /// avx2, avx512, amx, fma, f16c, x2apic, pcid, rdrand, rdseed, rdtscp, pdpe1gb, la57.
    /// Hiding one hides what needs it (xsave: avx and amx too). On a software KVM
    /// xsave is always hidden.
    #[arg(long, value_name = "FEATURES", value_delimiter = ',', value_parser = parse_cpu_feature)]
    pub cpuid_mask: Vec<CpuFeature>,
    /// The command to run in the guest.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_cpu_feature(name: &str) -> Result<CpuFeature, String> {
    CpuFeature::from_name(name).map_err(|e| e.to_string())
}

/// Resolve --kernel: an existing file must be a kernel `backend` can boot; anything
/// else names a variant. QEMU boots an ELF vmlinux only through its PVH note; memrace's
/// own VMM also enters one without the note, through its 64-bit entry point.
pub fn resolve_kernel(spec: &str, backend: &Launcher, arch: Arch) -> Result<PathBuf> {
    let path = PathBuf::from(spec);
    if path.exists() || spec.contains('/') {
        return match (image::inspect(&path, arch)?, backend, arch) {
            (ImageKind::Elf { .. }, Launcher::Qemu(_), Arch::Arm64) => {
                bail!("{spec} is an ELF vmlinux; QEMU boots an arm64 Linux kernel from its Image (arch/arm64/boot/Image), which has the boot protocol's header. Pass the Image")
            }
            (ImageKind::Elf { pvh: false }, Launcher::Qemu(_), Arch::X86_64) => {
                bail!("{spec} is an ELF without a PVH entry note, which QEMU needs; build it with CONFIG_PVH=y, pass its bzImage, or use --backend kvm (64-bit entry)")
            }
            _ => Ok(path),
        };
    }
    // vmlinux boots through PVH, skipping the bzImage decompressor: the fastest path,
    // unless the variant says otherwise.
    Ok(super::kernel::ensure(arch, spec)?.boot_image())
}

/// Resolve `--backend` for a full Linux boot of an `arch` guest, saying what was chosen
/// and why (`qemu` stays quiet).
pub fn choose_backend(kind: BackendKind, arch: Arch) -> Result<Launcher> {
    let (chosen, why) = choice::choose(kind, arch)?;
    if kind != BackendKind::Qemu {
        eprintln!("memrace: backend {chosen} — {why}");
    }
    Ok(chosen)
}

fn run_dir(label: &str) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let dir = memrace::kernel::cache_root()
        .join("runs")
        .join(format!("{label}-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Boot as `args` say on `backend` and drive the VM to its end: `memrace boot` without
/// the verdict printing. Returns the report and the run directory (console.log).
pub fn boot(args: &BootArgs, backend: &Launcher) -> Result<(BootReport, PathBuf)> {
    if args.cpus == 0 {
        bail!("--cpus 0: a VM needs at least one vCPU");
    }
    if !args.cpuid_mask.is_empty() && !matches!(backend, Launcher::Kvm(_)) {
        bail!("--cpuid-mask applies to memrace's own VMM; this boot runs on {backend}. Use --backend kvm, or drop --cpuid-mask");
    }
    let mem_mib =
        memrace::backend::parse_mem_mib(&args.mem).map_err(|e| anyhow::anyhow!("--mem: {e}"))?;
    let kernel = resolve_kernel(&args.kernel, backend, args.arch)?;
    if let Launcher::Qemu(_) = backend {
        memrace::backend::qemu::find_qemu(args.arch)?;
    }
    let extra = args
        .files
        .iter()
        .map(|f| {
            let (host, guest) = f
                .split_once(':')
                .with_context(|| format!("--file {f:?}: expected HOST_PATH:GUEST_PATH"))?;
            Ok((PathBuf::from(host), guest.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let dir = run_dir("boot")?;
    let initramfs = dir.join("initramfs.cpio");
    guest::build_initramfs(
        &initramfs,
        args.arch,
        &Job::Command(args.command.clone()),
        &extra,
    )?;
    let cfg = VmConfig {
        arch: args.arch,
        kernel,
        initramfs,
        cmdline: format!("{} {}", boot::base_cmdline(args.arch), args.append)
            .trim()
            .to_string(),
        cpus: args.cpus,
        mem_mib,
        run_dir: dir.clone(),
        debug: false,
        instruction_clock: false,
    };
    let launcher = match backend {
        Launcher::Kvm(opts) => Launcher::Kvm(opts.clone().hiding(&args.cpuid_mask)),
        other => other.clone(),
    };
    let mut vm = launcher.launch(&cfg)?;
    let limits = Limits {
        boot: Duration::from_secs(args.boot_timeout),
        run: Duration::from_secs(args.timeout),
    };
    let verbose = args.verbose;
    let report = boot::run(
        vm.as_mut(),
        limits,
        &mut |message| {
            if let ControlMessage::Output { stream, data } = message {
                let _ = match stream {
                    Stream::Stdout => std::io::stdout().write_all(data),
                    Stream::Stderr => std::io::stderr().write_all(data),
                };
            }
        },
        &mut |line| {
            if verbose {
                eprintln!("console: {line}");
            }
        },
    );
    vm.kill();
    let _ = std::io::stdout().flush();
    // A failed write must not hide the verdict or the guest's status: say so, loudly.
    let report_path = dir.join("boot-report.json");
    if let Err(e) = memrace::fsutil::write_json_atomically(&report_path, &report) {
        eprintln!(
            "memrace: WARNING: boot report NOT written to {}: {e}",
            report_path.display()
        );
    }
    Ok((report, dir))
}

pub fn run(args: BootArgs) -> Result<i32> {
    // Before the kernel: a backend this host cannot use fails in milliseconds, not after a build.
    let backend = choose_backend(args.backend, args.arch)?;
    let (report, dir) = boot(&args, &backend)?;
    if let Some(t) = report.time_to_init {
        eprintln!(
            "memrace: /init after {:.2} s, total {:.2} s",
            t.as_secs_f64(),
            report.total.as_secs_f64()
        );
    }
    match &report.verdict {
        Verdict::Exited { .. } => {}
        Verdict::KernelPanic { report: k } => {
            eprintln!("memrace: verdict: kernel-panic: {}", k.headline);
            for l in &k.lines {
                eprintln!("  {l}");
            }
        }
        Verdict::Timeout { stage, seconds } => {
            eprintln!(
                "memrace: verdict: timeout: no {} within {seconds} s; last console lines:",
                if stage == "boot" { "/init" } else { "exit" }
            );
            for l in &report.console_tail {
                eprintln!("  {l}");
            }
        }
        Verdict::NoStatus { why } => {
            eprintln!("memrace: verdict: no-exit-status: {why}; last console lines:");
            for l in &report.console_tail {
                eprintln!("  {l}");
            }
        }
    }
    if !matches!(report.verdict, Verdict::Exited { .. }) {
        eprintln!(
            "memrace: console log: {}",
            dir.join("console.log").display()
        );
    }
    Ok(report.verdict.exit_code())
}
