//! `memrace kernel …`

use anyhow::Result;
use clap::Subcommand;
use memrace::arch::Arch;
use memrace::kernel::{self, recipe::Images, Kernel, DEFAULT_VARIANT};

#[derive(Subcommand)]
pub enum KernelCommand {
    /// Build kernel variants (default: base); cached builds are reused.
    Build {
        /// The guest architecture to build for (arm64: cross-built with
        /// aarch64-linux-gnu-gcc).
        #[arg(long, value_enum, default_value_t)]
        arch: Arch,
        variants: Vec<String>,
    },
    /// List the kernels in the cache.
    List {
        /// The architecture whose kernels to list.
        #[arg(long, value_enum, default_value_t)]
        arch: Arch,
    },
    /// Print the cache directory of a variant's kernel, building it if needed.
    Path {
        /// The guest architecture of the kernel.
        #[arg(long, value_enum, default_value_t)]
        arch: Arch,
        #[arg(default_value = DEFAULT_VARIANT)]
        variant: String,
    },
}

/// The built `arch` kernel of `variant`, building it (with progress) if needed.
pub fn ensure(arch: Arch, variant: &str) -> Result<Kernel> {
    Ok(kernel::ensure(arch, variant)?)
}

pub fn run(cmd: KernelCommand) -> Result<i32> {
    match cmd {
        KernelCommand::Build { arch, variants } => {
            let variants = if variants.is_empty() {
                vec![DEFAULT_VARIANT.to_string()]
            } else {
                variants
            };
            for v in variants {
                let k = ensure(arch, &v)?;
                println!(
                    "{:<28} {}  ({:.0} s to build)",
                    v,
                    k.dir.display(),
                    k.manifest.build_seconds
                );
            }
        }
        KernelCommand::List { arch } => {
            let images = Images::open(&kernel::default_images_dir())?;
            let built = kernel::list();
            println!(
                "{:<28} {:<18} {:<9} DESCRIPTION ({arch})",
                "VARIANT", "HASH", "BUILT"
            );
            for name in images.variant_names() {
                let v = images.variant(&name)?;
                let current = kernel::find(&images, arch, &v)?;
                let hash = current
                    .as_ref()
                    .map(|k| k.manifest.hash.clone())
                    .unwrap_or_else(|| "-".into());
                let state = if current.is_some() { "yes" } else { "no" };
                println!("{:<28} {:<18} {:<9} {}", name, hash, state, v.description);
            }
            let stale = built.iter().filter(|k| {
                k.manifest.arch == arch
                    && images
                        .variant(&k.manifest.variant)
                        .ok()
                        .and_then(|v| kernel::find(&images, arch, &v).ok().flatten())
                        .map(|c| c.dir != k.dir)
                        .unwrap_or(true)
            });
            for k in stale {
                println!(
                    "{:<28} {:<18} stale     older recipe or patch version",
                    k.manifest.variant, k.manifest.hash
                );
            }
        }
        KernelCommand::Path { arch, variant } => {
            println!("{}", ensure(arch, &variant)?.dir.display())
        }
    }
    Ok(0)
}
