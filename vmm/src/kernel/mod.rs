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

use crate::child::{self, ChildError};
use lock::CacheLock;
use recipe::{Images, Variant};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const DEFAULT_ARCH: &str = "x86_64";
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
/// Bound of `make vmlinux bzImage`: a cold build takes about 10 min on 2 cores.
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
    pub arch: String,
    pub hash: String,
    pub source_version: String,
    pub patches: Vec<String>,
    pub fragments: Vec<String>,
    pub toolchain: String,
    pub build_seconds: f64,
    pub build_steps: u64,
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
    /// The image the guest boots: its variant's choice.
    pub fn boot_image(&self) -> PathBuf {
        match self.boot {
            recipe::BootImage::Vmlinux => self.vmlinux(),
            recipe::BootImage::BzImage => self.bzimage(),
        }
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
}

fn toolchain() -> String {
    Command::new("gcc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown gcc".into())
}

/// Content address of a variant: source (the Debian package, or a git tree object),
/// base config, every fragment and patch byte, toolchain.
pub fn variant_hash(
    images: &Images,
    arch: &str,
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
    for part in origin.into_iter().chain([arch, &a.base, toolchain]) {
        h.update(part.as_bytes());
        h.update([0]);
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
pub fn current_hash(images: &Images, arch: &str, variant: &Variant) -> Result<String, KernelError> {
    variant_hash(images, arch, variant, &toolchain())
}

/// The kernel for `variant` if it is already built.
pub fn find(images: &Images, arch: &str, variant: &Variant) -> Result<Option<Kernel>, KernelError> {
    let hash = variant_hash(images, arch, variant, &toolchain())?;
    let dir = cache_root().join("kernels").join(&hash);
    Ok(read_manifest(&dir).map(|manifest| Kernel {
        dir,
        manifest,
        boot: variant.boot,
    }))
}

/// Build `variant` (or return the cached build).
pub fn build(images: &Images, arch: &str, variant: &Variant) -> Result<Kernel, KernelError> {
    let toolchain = toolchain();
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
    let a = images.arch(arch)?;
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
        &a.base,
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
        &["vmlinux", "bzImage"],
        hint,
        &label,
        MAKE_LIMIT,
    )?;
    if steps > 100 {
        let _ = std::fs::write(&hint_path, steps.to_string());
    }
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        (a.image.as_str(), "bzImage"),
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
        arch: arch.to_string(),
        hash,
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

/// The built kernel of the variant `name` in the repository's images, building it (with
/// progress) if needed.
pub fn ensure(arch: crate::arch::Arch, name: &str) -> Result<Kernel, KernelError> {
    let images = Images::open(&default_images_dir())?;
    let variant = images.variant(name)?;
    build(&images, arch.name(), &variant)
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
}
