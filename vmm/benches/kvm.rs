//! `cargo bench --bench kvm`: VMM micro-benchmarks on synthetic guests, plus
//! launch-to-`start_kernel` when `$MEMRACE_KERNEL_DIR` holds a vmlinux.
//! Plain timing loops (no criterion): each guest-side loop already amortises
//! thousands of exits, and the numbers are what `memrace bench vmm` prints.

use std::path::PathBuf;
use std::time::Duration;

use memrace::backend::kvm::{self, bench, KvmOptions};
use memrace::backend::VmConfig;
use object::{Object, ObjectSymbol};

const LIMIT: Duration = Duration::from_secs(120);

fn start_kernel_address(vmlinux: &std::path::Path) -> Option<u64> {
    let data = std::fs::read(vmlinux).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let symbol = file.symbols().find(|s| s.name() == Ok("start_kernel"))?;
    Some(symbol.address())
}

fn main() {
    let level = kvm::probe();
    println!("{}", kvm::describe());
    if !level.can_run_vms() {
        println!("LEVEL NOT RUN: kvm benchmarks — {}", level.reason());
        return;
    }
    let opts = KvmOptions::for_host();
    let results = [
        bench::port_io_round_trip(&opts, 20_000, LIMIT),
        bench::breakpoint_round_trip(&opts, 5_000, LIMIT),
        bench::create_destroy(&opts, 20, LIMIT),
    ];
    for result in results {
        match result {
            Ok(m) => println!("{m}"),
            Err(e) => println!("benchmark failed: {e}"),
        }
    }
    let Some(dir) = std::env::var_os("MEMRACE_KERNEL_DIR").map(PathBuf::from) else {
        println!("launch to start_kernel: not measured (set MEMRACE_KERNEL_DIR to a directory with vmlinux)");
        return;
    };
    let vmlinux = dir.join("vmlinux");
    let Some(start_kernel) = start_kernel_address(&vmlinux) else {
        println!(
            "launch to start_kernel: no start_kernel symbol in {}",
            vmlinux.display()
        );
        return;
    };
    let run_dir = std::env::temp_dir().join(format!("memrace-bench-kvm-{}", std::process::id()));
    let cfg = VmConfig {
        arch: memrace::arch::Arch::X86_64,
        kernel: vmlinux,
        initramfs: PathBuf::new(),
        cmdline: "console=ttyS0".into(),
        cpus: 2,
        mem_mib: 256,
        run_dir: run_dir.clone(),
        debug: true,
        instruction_clock: false,
    };
    for _ in 0..3 {
        match bench::time_to_start_kernel(&cfg, &opts, start_kernel, LIMIT) {
            Ok(m) => println!("{m}"),
            Err(e) => println!("launch to start_kernel failed: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(run_dir);
}
