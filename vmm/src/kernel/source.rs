//! Fetching and unpacking Debian's kernel source package, verified by SHA-256.

use super::lock::CacheLock;
use super::patch::{self, PatchFile};
use super::recipe::Source;
use super::{run_checked, KernelError, STEP_LIMIT};
use crate::child::{self, ChildError};
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
/// applied in order, each patch of a series on its own so that a failure names it.
/// Every file a patch touches is first replaced by a real copy, so the pristine tree
/// shared by all variants is never written through a link. A failure removes `dest`:
/// the tree is complete or absent, never half-patched.
pub fn patched_tree(
    pristine: &Path,
    dest: &Path,
    patches: &[(String, PathBuf)],
) -> Result<(), KernelError> {
    let done = dest.join(".memrace-tree-complete");
    if done.is_file() {
        return Ok(());
    }
    // Every patch is read (and a non-patch refused) before the tree is made.
    let files = patches
        .iter()
        .map(|(name, path)| Ok((name.as_str(), patch::read(path)?)))
        .collect::<Result<Vec<_>, KernelError>>()?;
    let _ = std::fs::remove_dir_all(dest);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| KernelError::io(parent, e))?;
    }
    let made = link_and_patch(pristine, dest, &files);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    made?;
    write_atomic(&done, b"").map_err(|e| KernelError::io(&done, e))?;
    Ok(())
}

fn link_and_patch(
    pristine: &Path,
    dest: &Path,
    files: &[(&str, PatchFile)],
) -> Result<(), KernelError> {
    let mut cp = Command::new("cp");
    cp.arg("-al").arg(pristine).arg(dest);
    run_checked(&mut cp, "linking the source tree")?;
    // Beside the tree, not in it: nothing but the patches' changes lands in the tree.
    let part_file = dest.with_extension("memrace-part.patch");
    for (name, file) in files {
        for (index, part) in file.parts.iter().enumerate() {
            for touched in patched_files(&part.text) {
                let target = dest.join(&touched);
                if target.is_file() {
                    let copy = dest.join(format!("{touched}.memrace-copy"));
                    std::fs::copy(&target, &copy).map_err(|e| KernelError::io(&target, e))?;
                    std::fs::rename(&copy, &target).map_err(|e| KernelError::io(&target, e))?;
                }
            }
            std::fs::write(&part_file, &part.text).map_err(|e| KernelError::io(&part_file, e))?;
            let applied = apply(dest, &part_file);
            let _ = std::fs::remove_file(&part_file);
            applied.map_err(|why| KernelError::Patch {
                patch: file.part_name(name, index),
                why,
            })?;
        }
    }
    Ok(())
}

/// Run `patch -p1` in `tree` on `part_file`; on failure, what it said.
fn apply(tree: &Path, part_file: &Path) -> Result<(), String> {
    let mut cmd = Command::new("patch");
    cmd.args(["-p1", "--batch", "--forward", "--no-backup-if-mismatch"])
        // No .rej files: a failed tree is removed, so they would name files that are gone.
        .arg("--reject-file=-")
        .arg("-i")
        .arg(part_file)
        .current_dir(tree);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match child::output_within(&mut cmd, STEP_LIMIT) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(failure_report(
            &text(&out.stdout),
            &text(&out.stderr),
            &out.status.to_string(),
        )),
        Err(ChildError::Timeout { output, .. }) => Err(failure_report(
            &text(&output.stdout),
            &text(&output.stderr),
            &format!(
                "did not finish within {} min and was stopped",
                STEP_LIMIT.as_secs() / 60
            ),
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// GNU patch names files and failed hunks on stdout, problems with its input on
/// stderr. Quote both, without the files and hunks that applied, indented.
fn failure_report(stdout: &str, stderr: &str, status: &str) -> String {
    const MAX_LINES: usize = 40;
    let mut kept: Vec<&str> = Vec::new();
    let mut file_line = None;
    for line in stdout.lines() {
        if line.starts_with("patching file ") {
            file_line = Some(line);
        } else if !(line.starts_with("Hunk #") && line.contains(" succeeded at ")) {
            kept.extend(file_line.take());
            kept.push(line);
        }
    }
    kept.extend(stderr.lines());
    if kept.is_empty() {
        kept.push(status);
    }
    let mut report: Vec<String> = kept
        .iter()
        .take(MAX_LINES)
        .map(|l| format!("    {l}"))
        .collect();
    if kept.len() > MAX_LINES {
        report.push(format!("    ({} more lines)", kept.len() - MAX_LINES));
    }
    report.join("\n")
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

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A pristine tree with `mm/rmap.c` holding `line 1` … `line 30`.
    fn pristine(dir: &Path) -> PathBuf {
        let tree = dir.join("pristine");
        std::fs::create_dir_all(tree.join("mm")).unwrap();
        let text: String = (1..=30).map(|n| format!("line {n}\n")).collect();
        std::fs::write(tree.join("mm/rmap.c"), text).unwrap();
        tree
    }

    /// A diff of `mm/rmap.c` with two hunks: line 4 → `four`, and line 22 →
    /// `twenty-two`, where `line 22` must read `was22` for the second to apply.
    fn two_hunks(was22: &str) -> String {
        format!(
            "--- a/mm/rmap.c\n+++ b/mm/rmap.c\n\
             @@ -2,5 +2,5 @@\n line 2\n line 3\n-line 4\n+four\n line 5\n line 6\n\
             @@ -20,5 +20,5 @@\n line 20\n line 21\n-{was22}\n+twenty-two\n line 23\n line 24\n"
        )
    }

    fn message(subject: &str, diff: &str) -> String {
        format!("From {ID} Mon Sep 17 00:00:00 2001\nSubject: {subject}\n\nWhy.\n---\n{diff}")
    }

    fn write(dir: &Path, name: &str, text: &str) -> (String, PathBuf) {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        (name.to_string(), path)
    }

    #[test]
    fn applies_a_patch_to_a_private_copy() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = pristine(dir.path());
        let dest = dir.path().join("variant/src");
        let good = write(dir.path(), "good.patch", &two_hunks("line 22"));
        patched_tree(&pristine, &dest, &[good]).unwrap();
        let patched = std::fs::read_to_string(dest.join("mm/rmap.c")).unwrap();
        assert!(patched.contains("four\n") && patched.contains("twenty-two\n"));
        let original = std::fs::read_to_string(pristine.join("mm/rmap.c")).unwrap();
        assert!(
            original.contains("line 4\n"),
            "the pristine tree is untouched"
        );
        assert!(dest.join(".memrace-tree-complete").is_file());
        let beside: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            beside,
            vec![std::ffi::OsString::from("src")],
            "no part file left"
        );
    }

    #[test]
    fn a_failed_hunk_is_quoted_and_no_tree_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = pristine(dir.path());
        let dest = dir.path().join("variant/src");
        let bad = write(dir.path(), "bad.patch", &two_hunks("no such line"));
        let err = patched_tree(&pristine, &dest, &[bad]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, KernelError::Patch { .. }), "{text}");
        assert!(text.contains("patch bad.patch does not apply"), "{text}");
        assert!(text.contains("patching file mm/rmap.c"), "{text}");
        assert!(text.contains("Hunk #2 FAILED at 20"), "{text}");
        assert!(text.contains("1 out of 2 hunks FAILED"), "{text}");
        assert!(text.contains("patch -p1"), "the hint: {text}");
        assert!(!dest.exists(), "the half-patched tree is removed");
    }

    #[test]
    fn a_failed_part_of_a_series_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = pristine(dir.path());
        let dest = dir.path().join("variant/src");
        let first = "--- a/mm/rmap.c\n+++ b/mm/rmap.c\n@@ -1,2 +1,2 @@\n-line 1\n+one\n line 2\n";
        let series = message("[PATCH 1/3] mm: first", first)
            + &message("[PATCH 2/3] mm: second", &two_hunks("no such line"))
            + &message("[PATCH 3/3] mm: third", first);
        let series = write(dir.path(), "series.mbox", &series);
        let err = patched_tree(&pristine, &dest, &[series])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("patch series.mbox [2/3] \"mm: second\" does not apply"),
            "{err}"
        );
        assert!(err.contains("Hunk #2 FAILED"), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn an_already_applied_patch_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = pristine(dir.path());
        let dest = dir.path().join("variant/src");
        let good = write(dir.path(), "good.patch", &two_hunks("line 22"));
        let again = write(dir.path(), "again.patch", &two_hunks("line 22"));
        let err = patched_tree(&pristine, &dest, &[good, again])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("again.patch") && err.contains("Reversed"),
            "{err}"
        );
        let not_a_patch = write(dir.path(), "notes.txt", "notes\n");
        let err = patched_tree(&pristine, &dest, &[not_a_patch])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a patch"), "{err}");
        assert!(!dest.exists());
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
