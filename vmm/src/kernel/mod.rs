//! The kernel pipeline: recipe → verified Debian source → patched tree → config → build,
//! content-addressed under `~/.cache/memrace/kernels/<hash>/`.
//!
//! Every step is restartable: each one leaves a completion marker, `make` is
//! incremental, and the manifest that marks a finished kernel is written last and
//! atomically, so an interrupted build resumes where it stopped.

pub mod build;
pub mod config;
pub mod image;
mod lock;
pub mod patch;
pub mod recipe;
pub mod source;
pub mod tree;

use crate::arch::Arch;
use crate::child::{self, ChildError};
use lock::CacheLock;
use recipe::{Images, Variant};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const DEFAULT_ARCH: Arch = Arch::X86_64;
pub const DEFAULT_VARIANT: &str = "base";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Recipe(#[from] recipe::RecipeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {what}: {why}")]
    Spawn { what: String, why: String },
    #[error("{what} failed: {why}")]
    Command { what: String, why: String },
    #[error("cannot fetch {spec}: {why}")]
    Fetch { spec: String, why: String },
    #[error("{file} has SHA-256 {got}, the recipe expects {want}; refusing to build from it")]
    HashMismatch {
        file: PathBuf,
        want: String,
        got: String,
    },
    #[error("cannot read patch {path}: {source}\n  give the path of a patch file: `git format-patch` output, a `b4 am` mbox, or a unified diff")]
    PatchRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a patch: it holds no unified diff (`--- a/<file>`, `+++ b/<file>`, `@@` hunks)\n  give `git format-patch` output, a `b4 am` mbox, or the output of `git diff` or `diff -u`")]
    NotAPatch { path: PathBuf },
    #[error("patch {patch} does not apply:\n{why}\n  a patch must apply with `patch -p1` at the top of the base kernel's source (the recipe's Debian source, or the git tree's commit); rebase it onto that source")]
    Patch { patch: String, why: String },
    #[error("{path} does not exist\n  give the path of a Linux kernel git checkout")]
    GitRepoMissing { path: PathBuf },
    #[error("{path} is not a git repository: {why}\n  give the top directory of a Linux kernel git checkout")]
    NotAGitRepo { path: PathBuf, why: String },
    #[error("{repo} has no commit {rev:?}: {why}\n  name a commit, branch or tag of that repository (see `git -C {repo} log --oneline`)")]
    UnknownRevision {
        repo: PathBuf,
        rev: String,
        why: String,
    },
    #[error("{repo} at {commit} is not a Linux kernel tree: it has no {missing} at its top\n  name a commit of a kernel tree (Makefile, mm/ and kernel/ at the top)")]
    NotAKernelTree {
        repo: PathBuf,
        commit: String,
        missing: String,
    },
    #[error("Kconfig dropped requested options (unmet dependencies?):\n  {}", .0.join("\n  "))]
    ConfigDropped(Vec<String>),
    #[error("kernel build failed; full log: {log}\n{tail}")]
    BuildFailed { log: PathBuf, tail: String },
    #[error("the kernel build did not finish within {} min and was stopped; full log: {log}\n  run it again to resume (make is incremental); if the machine is just slow, build with fewer other jobs running", .limit.as_secs() / 60)]
    BuildTimeout { log: PathBuf, limit: Duration },
    #[error("{lock} ({what}) is still locked after {} min, by {holder}\n  if that process is stuck, stop it (the lock is freed when it exits) and run again", .waited.as_secs() / 60)]
    LockTimeout {
        lock: PathBuf,
        what: String,
        holder: String,
        waited: Duration,
    },
}

impl KernelError {
    pub fn io(path: &Path, source: std::io::Error) -> KernelError {
        KernelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Bound of each pipeline step other than `make` (download, unpack, patch, config).
pub const STEP_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Bound of `make vmlinux <image>`: a cold build takes about 10 min on 2 cores.
pub const MAKE_LIMIT: Duration = Duration::from_secs(60 * 60);
/// How long to wait for another process's build of the same variant: longer than a
/// build bounded by the limits above, so only a stuck holder ends the wait.
const BUILD_LOCK_WAIT: Duration = Duration::from_secs(100 * 60);

/// Run a command within [`STEP_LIMIT`]; on failure return its stderr tail in the error.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<(), KernelError> {
    let tail = |stderr: &[u8]| {
        let text = String::from_utf8_lossy(stderr);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    let out = match child::output_within(cmd, STEP_LIMIT) {
        Ok(out) => out,
        Err(ChildError::Timeout { output, .. }) => {
            return Err(KernelError::Command {
                what: what.to_string(),
                why: format!(
                    "did not finish within {} min and was stopped\n{}",
                    STEP_LIMIT.as_secs() / 60,
                    tail(&output.stderr)
                ),
            })
        }
        Err(e) => {
            return Err(KernelError::Spawn {
                what: what.to_string(),
                why: e.to_string(),
            })
        }
    };
    if out.status.success() {
        return Ok(());
    }
    Err(KernelError::Command {
        what: what.to_string(),
        why: format!("{}\n{}", out.status, tail(&out.stderr)),
    })
}

/// memrace's cache: `$MEMRACE_CACHE`, else `$XDG_CACHE_HOME/memrace`, else `~/.cache/memrace`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MEMRACE_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("memrace")
}

/// The repository's `images/` directory (recipes are data shipped with the source).
pub fn default_images_dir() -> PathBuf {
    std::env::var_os("MEMRACE_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../images"))
}

/// What a finished kernel directory holds; `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub variant: String,
    pub description: String,
    pub arch: Arch,
    pub hash: String,
    /// The file name of the boot image in the kernel's directory (the recipe's
    /// `image`): `bzImage` on x86_64, the only one manifests before arm64 knew.
    #[serde(default = "bzimage_name")]
    pub image: String,
    pub source_version: String,
    pub patches: Vec<String>,
    pub fragments: Vec<String>,
    pub toolchain: String,
    pub build_seconds: f64,
    pub build_steps: u64,
}

fn bzimage_name() -> String {
    "bzImage".into()
}

/// A built kernel on disk.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// What its variant boots (a cache listing does not know: vmlinux).
    pub boot: recipe::BootImage,
}

impl Kernel {
    /// The image the guest boots: on x86_64 its variant's choice; on arm64 always the
    /// `Image` (the arm64 boot protocol: the ELF vmlinux carries only virtual load
    /// addresses and is kept for its symbols).
    pub fn boot_image(&self) -> PathBuf {
        match (self.manifest.arch, self.boot) {
            (Arch::X86_64, recipe::BootImage::Vmlinux) => self.vmlinux(),
            (Arch::X86_64, recipe::BootImage::Image) | (Arch::Arm64, _) => self.image(),
        }
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// The architecture's boot image: `bzImage` (x86_64) or `Image` (arm64).
    pub fn image(&self) -> PathBuf {
        self.dir.join(&self.manifest.image)
    }
}

/// The first line of the architecture's compiler's `--version`: `gcc`'s, or the cross
/// compiler's.
fn toolchain(arch: &recipe::ArchRecipe) -> String {
    let gcc = arch.gcc();
    Command::new(&gcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| format!("unknown {gcc}"))
}

/// Content address of a variant: source (the Debian package, or a git tree object),
/// architecture, base config, toolchain, the `ARCH=`/`CROSS_COMPILE=` values where the
/// recipe sets them, every fragment and patch byte. The optional values are hashed
/// only when present, so a native recipe's addresses are what they were before
/// cross builds existed.
pub fn variant_hash(
    images: &Images,
    arch: Arch,
    variant: &Variant,
    toolchain: &str,
) -> Result<String, KernelError> {
    let a = images.arch(arch)?;
    let mut h = Sha256::new();
    let src = &images.recipe.source;
    let origin = match &variant.git {
        // A tree id names the files, whichever commit (or repository) has them.
        Some(git) => vec!["git", git.tree.as_str()],
        None => vec![src.package.as_str(), &src.version, &src.sha256],
    };
    for part in origin.into_iter().chain([arch.name(), &a.base, toolchain]) {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (key, value) in [
        ("make_arch", &a.make_arch),
        ("cross_compile", &a.cross_compile),
    ] {
        if let Some(value) = value {
            h.update(format!("{key}={value}").as_bytes());
            h.update([0]);
        }
    }
    let files = images
        .fragment_paths(a, variant)
        .into_iter()
        .chain(variant.patches.iter().map(|p| images.patch_path(p)));
    for path in files {
        h.update(std::fs::read(&path).map_err(|e| KernelError::io(&path, e))?);
        h.update([0]);
    }
    Ok(hex::encode(h.finalize())[..16].to_string())
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()
}

/// The content address `variant` has now (built or not): what a recorded kernel hash
/// is compared with.
pub fn current_hash(images: &Images, arch: Arch, variant: &Variant) -> Result<String, KernelError> {
    variant_hash(images, arch, variant, &toolchain(images.arch(arch)?))
}

/// The kernel for `variant` if it is already built.
pub fn find(images: &Images, arch: Arch, variant: &Variant) -> Result<Option<Kernel>, KernelError> {
    let hash = current_hash(images, arch, variant)?;
    let dir = cache_root().join("kernels").join(&hash);
    Ok(read_manifest(&dir).map(|manifest| Kernel {
        dir,
        manifest,
        boot: variant.boot,
    }))
}

/// Build `variant` (or return the cached build).
pub fn build(images: &Images, arch: Arch, variant: &Variant) -> Result<Kernel, KernelError> {
    let a = images.arch(arch)?;
    let toolchain = toolchain(a);
    let hash = variant_hash(images, arch, variant, &toolchain)?;
    let cache = cache_root();
    let dir = cache.join("kernels").join(&hash);
    if let Some(manifest) = read_manifest(&dir) {
        return Ok(Kernel {
            dir,
            manifest,
            boot: variant.boot,
        });
    }
    // Concurrent builders of one variant (parallel tests, two shells) take turns;
    // the second finds the manifest the first wrote.
    let _lock = CacheLock::take(
        &cache.join("kernels").join(format!("{hash}.lock")),
        &format!("the build of {}", variant.name),
        BUILD_LOCK_WAIT,
    )?;
    if let Some(manifest) = read_manifest(&dir) {
        return Ok(Kernel {
            dir,
            manifest,
            boot: variant.boot,
        });
    }
    let started = std::time::Instant::now();
    let pristine = match &variant.git {
        Some(git) => tree::export(git, &cache)?,
        None => source::unpack(&images.recipe.source, &cache)?,
    };
    let tree = dir.join("src");
    let patches: Vec<(String, PathBuf)> = variant
        .patches
        .iter()
        .map(|p| (p.clone(), images.patch_path(p)))
        .collect();
    source::patched_tree(&pristine, &tree, &patches)?;
    // The O= directory sits directly inside the tree so that kbuild uses `..` as srctree:
    // relative paths make ccache entries shared by every variant.
    let build_dir = tree.join("memrace-build");
    std::fs::create_dir_all(&build_dir).map_err(|e| KernelError::io(&build_dir, e))?;
    // The fragments are written for the recipe's kernel; another version may lack
    // some of their options and still be worth building.
    let dropped = match variant.git {
        Some(_) => config::DroppedOptions::Warn,
        None => config::DroppedOptions::Refuse,
    };
    config::configure(
        &tree,
        &build_dir,
        a,
        &images.fragment_paths(a, variant),
        dropped,
    )?;
    let hint_path = cache.join("kernels").join("steps-hint");
    let hint = std::fs::read_to_string(&hint_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1400);
    let label = format!("{} ({hash})", variant.name);
    let steps = build::make(
        &tree,
        &build_dir,
        a,
        &["vmlinux", a.image_name()],
        hint,
        &label,
        MAKE_LIMIT,
    )?;
    if steps > 100 {
        let _ = std::fs::write(&hint_path, steps.to_string());
    }
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        (a.image.as_str(), a.image_name()),
        (".config", "config"),
    ] {
        let (src, dst) = (build_dir.join(from), dir.join(to));
        let _ = std::fs::remove_file(&dst);
        std::fs::hard_link(&src, &dst)
            .or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))
            .map_err(|e| KernelError::io(&src, e))?;
        // On disk before the manifest that declares the kernel complete.
        crate::fsutil::sync_file(&dst).map_err(|e| KernelError::io(&dst, e))?;
    }
    let manifest = Manifest {
        variant: variant.name.clone(),
        description: variant.description.clone(),
        arch,
        hash,
        image: a.image_name().to_string(),
        source_version: match &variant.git {
            Some(git) => format!("git {} ({})", git.commit, git.subject),
            None => images.recipe.source.version.clone(),
        },
        patches: variant.patches.clone(),
        fragments: images
            .fragment_paths(a, variant)
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        toolchain,
        build_seconds: started.elapsed().as_secs_f64(),
        build_steps: steps,
    };
    let manifest_path = dir.join("manifest.json");
    crate::fsutil::write_json_atomically(&manifest_path, &manifest)
        .map_err(|e| KernelError::io(&manifest_path, e))?;
    Ok(Kernel {
        dir,
        manifest,
        boot: variant.boot,
    })
}

/// The built `arch` kernel of the variant `name` in the repository's images, building
/// it (with progress) if needed.
pub fn ensure(arch: Arch, name: &str) -> Result<Kernel, KernelError> {
    let images = Images::open(&default_images_dir())?;
    let variant = images.variant(name)?;
    build(&images, arch, &variant)
}

/// Every finished kernel in the cache.
pub fn list() -> Vec<Kernel> {
    let mut kernels: Vec<Kernel> = std::fs::read_dir(cache_root().join("kernels"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            read_manifest(&e.path()).map(|manifest| Kernel {
                dir: e.path(),
                manifest,
                boot: recipe::BootImage::default(),
            })
        })
        .collect();
    kernels.sort_by(|a, b| a.manifest.variant.cmp(&b.manifest.variant));
    kernels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_patch_on_base_is_addressed_like_the_variant_with_that_patch() {
        let images = Images::open(&default_images_dir()).unwrap();
        let base = images.variant(DEFAULT_VARIANT).unwrap();
        let unpatched = images.variant("mremap-unpatched").unwrap();
        let patch = images.patch_path("mremap-rmap-locks.patch");
        let mine = base.with_patches("mine", std::slice::from_ref(&patch));
        assert_eq!(mine.name, "mine");
        assert!(
            mine.description.contains("mremap-rmap-locks.patch"),
            "{}",
            mine.description
        );
        assert_eq!(
            images.patch_path(&mine.patches[0]),
            patch,
            "an absolute path as it is"
        );
        let hash = |v: &Variant| variant_hash(&images, DEFAULT_ARCH, v, "gcc 12").unwrap();
        assert_eq!(hash(&mine), hash(&unpatched));
        assert_ne!(hash(&mine), hash(&base));
    }

    /// An images directory with one native and one cross architecture, the same
    /// one-line fragment for both.
    fn synthetic_images(dir: &Path, arm64: &str) -> Images {
        std::fs::create_dir_all(dir.join("variants")).unwrap();
        std::fs::write(
            dir.join("recipe.toml"),
            format!(
                r#"
[source]
package = "linux-source-6.12"
version = "6.12.117-1~deb12u1"
sha256 = "e849faf31ca3555757f3a8877cb01af92122f744f75d1f3102734651c4e14703"
tarball = "usr/src/linux-source-6.12.tar.xz"
[arch.x86_64]
base = "tinyconfig"
fragment = "frag.config"
image = "arch/x86/boot/bzImage"
[arch.arm64]
base = "tinyconfig"
fragment = "frag.config"
image = "arch/arm64/boot/Image"
{arm64}
"#
            ),
        )
        .unwrap();
        std::fs::write(dir.join("frag.config"), "CONFIG_SMP=y\n").unwrap();
        std::fs::write(dir.join("variants/base.toml"), "description = \"d\"\n").unwrap();
        Images::open(dir).unwrap()
    }

    /// The x86_64 content address is the one the cache's kernels were built under
    /// before the recipe knew cross builds (computed by that code); the optional
    /// `make_arch`/`cross_compile` values move only the addresses of the recipes that
    /// set them.
    #[test]
    fn native_addresses_are_unchanged_and_cross_values_are_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let gcc = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0";
        let cross = "make_arch = \"arm64\"\ncross_compile = \"aarch64-linux-gnu-\"";
        let images = synthetic_images(dir.path(), cross);
        let base = images.variant("base").unwrap();
        let x86 = variant_hash(&images, Arch::X86_64, &base, gcc).unwrap();
        assert_eq!(x86, "8274a50dce618349");
        let arm = |images: &Images| variant_hash(images, Arch::Arm64, &base, gcc).unwrap();
        let with_cross = arm(&images);
        assert_ne!(with_cross, x86);
        let other = tempfile::tempdir().unwrap();
        let native_arm = arm(&synthetic_images(other.path(), ""));
        assert_ne!(
            native_arm, with_cross,
            "ARCH=/CROSS_COMPILE= are in the hash"
        );
        let prefix = tempfile::tempdir().unwrap();
        let other_prefix = arm(&synthetic_images(
            prefix.path(),
            &cross.replace("aarch64-linux-gnu-", "aarch64-none-elf-"),
        ));
        assert_ne!(other_prefix, with_cross);
        let toolchain = variant_hash(&images, Arch::Arm64, &base, "aarch64-linux-gnu-gcc").unwrap();
        assert_ne!(toolchain, with_cross);
    }

    #[test]
    fn the_boot_image_is_the_arch_image_unless_x86_boots_vmlinux() {
        let manifest = |arch: Arch, image: &str| Manifest {
            variant: "base".into(),
            description: String::new(),
            arch,
            hash: "0".into(),
            image: image.into(),
            source_version: String::new(),
            patches: Vec::new(),
            fragments: Vec::new(),
            toolchain: String::new(),
            build_seconds: 0.0,
            build_steps: 0,
        };
        let kernel = |arch, image, boot| Kernel {
            dir: PathBuf::from("/k"),
            manifest: manifest(arch, image),
            boot,
        };
        use recipe::BootImage::{Image, Vmlinux};
        let x86 = |boot| kernel(Arch::X86_64, "bzImage", boot).boot_image();
        assert_eq!(x86(Vmlinux), Path::new("/k/vmlinux"));
        assert_eq!(x86(Image), Path::new("/k/bzImage"));
        for boot in [Vmlinux, Image] {
            let k = kernel(Arch::Arm64, "Image", boot);
            assert_eq!(k.boot_image(), Path::new("/k/Image"));
            assert_eq!(k.vmlinux(), Path::new("/k/vmlinux"));
        }
        // A manifest written before the image name was recorded: an x86_64 bzImage.
        let old = r#"{"variant":"base","description":"d","arch":"x86_64","hash":"dbee72c0769a293b",
            "source_version":"6.12.117-1~deb12u1","patches":[],"fragments":[],
            "toolchain":"gcc","build_seconds":1.0,"build_steps":1}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!((m.arch, m.image.as_str()), (Arch::X86_64, "bzImage"));
    }
}
