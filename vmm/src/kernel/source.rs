//! Fetching and unpacking Debian's kernel source package, verified by SHA-256.

use super::lock::CacheLock;
use super::recipe::Source;
use super::{run_checked, KernelError, STEP_LIMIT};
use crate::fsutil::write_atomic;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long to wait for another process that unpacks the same source: longer than
/// its bounded download and unpack.
const UNPACK_LOCK_WAIT: Duration = STEP_LIMIT.saturating_mul(3);

/// File name `apt-get download` gives the package (epoch colons are escaped as `%3a`).
fn deb_name(source: &Source) -> String {
    format!(
        "{}_{}_all.deb",
        source.package,
        source.version.replace(':', "%3a")
    )
}

fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let mut file = std::fs::File::open(path).map_err(|e| KernelError::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| KernelError::io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// The verified .deb in `<cache>/downloads`, downloading it with apt-get if needed.
pub fn fetch(source: &Source, cache: &Path) -> Result<PathBuf, KernelError> {
    let downloads = cache.join("downloads");
    let deb = downloads.join(deb_name(source));
    if deb.is_file() && sha256_file(&deb)? == source.sha256 {
        return Ok(deb);
    }
    // Download into a private directory and move into place only once verified,
    // so an interrupted or corrupt download is never mistaken for a good one.
    let tmp = downloads.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| KernelError::io(&tmp, e))?;
    let spec = format!("{}={}", source.package, source.version);
    eprintln!("memrace: downloading {spec} with apt-get");
    let mut apt = Command::new("apt-get");
    apt.arg("download").arg(&spec).current_dir(&tmp);
    run_checked(&mut apt, "apt-get download").map_err(|e| KernelError::Fetch {
        spec: spec.clone(),
        why: format!("{e}\n  run `apt-get update` first; the version must still be in the archive"),
    })?;
    let got = tmp.join(deb_name(source));
    let sum = sha256_file(&got)?;
    if sum != source.sha256 {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(KernelError::HashMismatch {
            file: got,
            want: source.sha256.clone(),
            got: sum,
        });
    }
    std::fs::rename(&got, &deb).map_err(|e| KernelError::io(&deb, e))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(deb)
}

/// The pristine source tree for `source`, unpacked once under `<cache>/src/<version>/`.
pub fn unpack(source: &Source, cache: &Path) -> Result<PathBuf, KernelError> {
    let name = source.version.replace(['~', ':'], "_");
    let root = cache.join("src").join(&name);
    let done = root.join(".memrace-complete");
    let tree = root.join("linux");
    if done.is_file() {
        return Ok(tree);
    }
    // Variants built for the first time at once share this tree: one process
    // unpacks it, the others wait and then find it complete.
    let _lock = CacheLock::take(
        &cache.join("src").join(format!("{name}.lock")),
        &format!("unpacking {} {}", source.package, source.version),
        UNPACK_LOCK_WAIT,
    )?;
    if done.is_file() {
        return Ok(tree);
    }
    let deb = fetch(source, cache)?;
    let tmp = root.join(".unpack");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| KernelError::io(&tmp, e))?;
    eprintln!(
        "memrace: unpacking {} into {}",
        deb.display(),
        root.display()
    );
    // dpkg-deb streams the package's data tarball; the kernel tarball inside it is
    // extracted straight from the stream, without a 150 MB intermediate file.
    let mut cmd = Command::new("sh");
    cmd.arg("-ec")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -xO "./$2" | tar -xJ -C "$3""#)
        .arg("sh")
        .arg(&deb)
        .arg(&source.tarball)
        .arg(&tmp);
    run_checked(&mut cmd, "unpacking the kernel source")?;
    let top = std::fs::read_dir(&tmp)
        .map_err(|e| KernelError::io(&tmp, e))?
        .flatten()
        .find(|e| e.path().join("Makefile").is_file())
        .ok_or_else(|| KernelError::Fetch {
            spec: source.package.clone(),
            why: format!("{} holds no kernel tree", source.tarball),
        })?;
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::rename(top.path(), &tree).map_err(|e| KernelError::io(&tree, e))?;
    let _ = std::fs::remove_dir_all(&tmp);
    write_atomic(&done, source.version.as_bytes()).map_err(|e| KernelError::io(&done, e))?;
    Ok(tree)
}

/// Files a unified diff modifies, relative to the tree top (`-p1`).
pub fn patched_files(patch: &str) -> Vec<String> {
    patch
        .lines()
        .filter_map(|l| l.strip_prefix("+++ "))
        .map(|l| l.split('\t').next().unwrap_or(l).trim())
        .filter(|p| *p != "/dev/null")
        .filter_map(|p| p.split_once('/').map(|(_, rest)| rest.to_string()))
        .collect()
}

/// A private copy of `pristine` at `dest`, made of hard links (cheap), with `patches`
/// applied in order. Every file a patch touches is first replaced by a real copy, so
/// the pristine tree shared by all variants is never written through a link.
pub fn patched_tree(
    pristine: &Path,
    dest: &Path,
    patches: &[(String, PathBuf)],
) -> Result<(), KernelError> {
    let done = dest.join(".memrace-tree-complete");
    if done.is_file() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dest);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| KernelError::io(parent, e))?;
    }
    let mut cp = Command::new("cp");
    cp.arg("-al").arg(pristine).arg(dest);
    run_checked(&mut cp, "linking the source tree")?;
    for (name, path) in patches {
        let text = std::fs::read_to_string(path).map_err(|e| KernelError::io(path, e))?;
        for file in patched_files(&text) {
            let target = dest.join(&file);
            if target.is_file() {
                let copy = dest.join(format!("{file}.memrace-copy"));
                std::fs::copy(&target, &copy).map_err(|e| KernelError::io(&target, e))?;
                std::fs::rename(&copy, &target).map_err(|e| KernelError::io(&target, e))?;
            }
        }
        let mut patch = Command::new("patch");
        patch
            .args([
                "-p1",
                "--batch",
                "--forward",
                "--no-backup-if-mismatch",
                "-i",
            ])
            .arg(path)
            .current_dir(dest);
        run_checked(&mut patch, "patch").map_err(|e| KernelError::Patch {
            patch: name.clone(),
            why: e.to_string(),
        })?;
    }
    write_atomic(&done, b"").map_err(|e| KernelError::io(&done, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_files_a_patch_touches() {
        let p = "header text\n--- a/mm/rmap.c\t2024\n+++ b/mm/rmap.c\t2024\n@@ -1 +1 @@\n--- a/x/y.h\n+++ b/x/y.h\n--- a/gone.c\n+++ /dev/null\n";
        assert_eq!(
            patched_files(p),
            vec!["mm/rmap.c".to_string(), "x/y.h".to_string()]
        );
    }

    #[test]
    fn deb_names_escape_epochs() {
        let s = Source {
            package: "p".into(),
            version: "1:2.3".into(),
            sha256: String::new(),
            tarball: String::new(),
        };
        assert_eq!(deb_name(&s), "p_1%3a2.3_all.deb");
    }
}
