//! Kernels from a developer's git tree: a revision resolved to its commit and tree
//! object, and the commit's files exported into the cache under the tree id.

use super::lock::CacheLock;
use super::{run_checked, KernelError, STEP_LIMIT};
use crate::child::{self, ChildError};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A commit of a git repository that a kernel is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    pub repo: PathBuf,
    /// The revision as the developer named it (`HEAD`, a branch, a tag).
    pub rev: String,
    pub commit: String,
    /// The commit's tree object id: what the exported files (and the kernel) are
    /// addressed by, so two commits with the same files share one export.
    pub tree: String,
    pub subject: String,
}

/// Bound of one git query (rev-parse, ls-tree, log -1): quick even on a kernel repository.
const QUERY_LIMIT: Duration = Duration::from_secs(120);
/// How long to wait for another process exporting the same tree: longer than its
/// export, which is bounded by [`STEP_LIMIT`].
const EXPORT_LOCK_WAIT: Duration = STEP_LIMIT.saturating_mul(2);
/// Written into an export last, before it is renamed into place.
const EXPORT_MARKER: &str = ".memrace-export-complete";
/// What a commit must have at its top to be a kernel tree, and of which object type.
const KERNEL_TOP: [(&str, &str); 3] = [("Makefile", "blob"), ("mm", "tree"), ("kernel", "tree")];

struct GitAnswer {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `git -C repo args`, bounded; a git that cannot run or hangs is an error, a git
/// that answers "no" is an answer.
fn git(repo: &Path, args: &[&str]) -> Result<GitAnswer, KernelError> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(repo).args(args);
    let what = child::describe(&cmd);
    match child::output_within(&mut cmd, QUERY_LIMIT) {
        Ok(out) => Ok(GitAnswer {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Err(e @ ChildError::Timeout { .. }) => Err(KernelError::Command {
            what,
            why: format!(
                "{e}\n  check that {} is on a responsive disk",
                repo.display()
            ),
        }),
        Err(e) => Err(KernelError::Spawn {
            what,
            why: format!("{e}\n  install git"),
        }),
    }
}

/// Resolve `rev` in the repository at `repo` and check that it is a kernel tree.
pub fn resolve(repo: &Path, rev: &str) -> Result<GitSource, KernelError> {
    if !repo.exists() {
        return Err(KernelError::GitRepoMissing {
            path: repo.to_path_buf(),
        });
    }
    let git_dir = git(repo, &["rev-parse", "--git-dir"])?;
    if !git_dir.ok {
        return Err(KernelError::NotAGitRepo {
            path: repo.to_path_buf(),
            why: git_dir.stderr,
        });
    }
    // `--end-of-options`: a revision that starts with `-` is a name, not an option.
    let object = |suffix: &str| {
        git(
            repo,
            &[
                "rev-parse",
                "--verify",
                "--end-of-options",
                &format!("{rev}^{{{suffix}}}"),
            ],
        )
    };
    let commit = object("commit")?;
    if !commit.ok {
        return Err(KernelError::UnknownRevision {
            repo: repo.to_path_buf(),
            rev: rev.to_string(),
            why: commit.stderr,
        });
    }
    let commit = commit.stdout;
    let tree = object("tree")?.stdout;
    let subject = git(repo, &["log", "-1", "--format=%s", &commit])?.stdout;
    let mut ls = vec!["ls-tree", commit.as_str(), "--"];
    ls.extend(KERNEL_TOP.iter().map(|(name, _)| *name));
    let listing = git(repo, &ls)?.stdout;
    // ls-tree lines are `<mode> <type> <id>\t<name>`.
    let present = |name: &str, kind: &str| {
        listing.lines().any(|l| {
            l.split_once('\t')
                .is_some_and(|(meta, n)| n == name && meta.split(' ').nth(1) == Some(kind))
        })
    };
    let missing: Vec<String> = KERNEL_TOP
        .iter()
        .filter(|(name, kind)| !present(name, kind))
        .map(|(name, kind)| match *kind {
            "tree" => format!("{name}/"),
            _ => name.to_string(),
        })
        .collect();
    if !missing.is_empty() {
        return Err(KernelError::NotAKernelTree {
            repo: repo.to_path_buf(),
            commit,
            missing: missing.join(", "),
        });
    }
    Ok(GitSource {
        repo: repo.to_path_buf(),
        rev: rev.to_string(),
        commit,
        tree,
        subject,
    })
}

/// The files of `src`'s commit under `<cache>/trees/<tree id>/`, exported once.
/// The commit, not the working tree: uncommitted edits never reach a build.
pub fn export(src: &GitSource, cache: &Path) -> Result<PathBuf, KernelError> {
    let trees = cache.join("trees");
    let dest = trees.join(&src.tree);
    if dest.join(EXPORT_MARKER).is_file() {
        return Ok(dest);
    }
    let _lock = CacheLock::take(
        &trees.join(format!("{}.lock", src.tree)),
        &format!("exporting {} from {}", src.commit, src.repo.display()),
        EXPORT_LOCK_WAIT,
    )?;
    if dest.join(EXPORT_MARKER).is_file() {
        return Ok(dest);
    }
    // Extracted beside its place and renamed into it complete, so an interrupted
    // export is never mistaken for a tree.
    let tmp = trees.join(format!(".export-{}", src.tree));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| KernelError::io(&tmp, e))?;
    eprintln!(
        "memrace: exporting {} ({}) from {} into {}",
        src.commit,
        src.subject,
        src.repo.display(),
        dest.display()
    );
    // bash for pipefail: a failing `git archive` must fail the step, not leave tar
    // with a short archive.
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(
            r#"set -o errexit -o pipefail; git -C "$1" archive --format=tar "$2" | tar -x -C "$3""#,
        )
        .arg("bash")
        .arg(&src.repo)
        .arg(&src.commit)
        .arg(&tmp);
    let placed = run_checked(&mut cmd, "git archive | tar -x")
        .and_then(|()| {
            let marker = tmp.join(EXPORT_MARKER);
            write_atomic(&marker, src.commit.as_bytes()).map_err(|e| KernelError::io(&marker, e))
        })
        .and_then(|()| {
            // A directory without the marker is a leftover that never finished.
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::rename(&tmp, &dest).map_err(|e| KernelError::io(&dest, e))
        });
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    placed?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::recipe::{BootImage, Images, Variant};
    use crate::kernel::{variant_hash, DEFAULT_ARCH, DEFAULT_VARIANT};

    /// Run git in `dir` for a test, with an identity and no signing from the
    /// environment's configuration.
    fn git_in(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=memrace test",
                "-c",
                "user.email=test@memrace.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    /// A kernel-shaped repository with two commits: `mm/a.c` says "one", then "two".
    fn kernel_repo(dir: &Path) -> PathBuf {
        let repo = dir.join("linux");
        for sub in ["mm", "kernel"] {
            std::fs::create_dir_all(repo.join(sub)).unwrap();
        }
        std::fs::write(repo.join("Makefile"), "all:\n").unwrap();
        std::fs::write(repo.join("kernel/b.c"), "int b;\n").unwrap();
        git_in(&repo, &["init", "-q"]);
        for (text, subject) in [("one\n", "mm: first"), ("two\n", "mm: second")] {
            std::fs::write(repo.join("mm/a.c"), text).unwrap();
            git_in(&repo, &["add", "."]);
            git_in(&repo, &["commit", "-q", "-m", subject]);
        }
        repo
    }

    #[test]
    fn resolve_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = resolve(&dir.path().join("nowhere"), "HEAD").unwrap_err();
        assert!(
            matches!(missing, KernelError::GitRepoMissing { .. }),
            "{missing}"
        );
        let plain = resolve(dir.path(), "HEAD").unwrap_err();
        assert!(matches!(plain, KernelError::NotAGitRepo { .. }), "{plain}");
        let repo = kernel_repo(dir.path());
        let unknown = resolve(&repo, "no-such-branch").unwrap_err();
        let text = unknown.to_string();
        assert!(
            matches!(unknown, KernelError::UnknownRevision { .. }),
            "{text}"
        );
        assert!(
            text.contains("\"no-such-branch\"") && text.contains("git -C"),
            "{text}"
        );
        assert!(
            resolve(&repo, "--all").is_err(),
            "a revision is never an option"
        );
        git_in(&repo, &["rm", "-q", "-r", "mm"]);
        git_in(&repo, &["commit", "-q", "-m", "no mm"]);
        let not_kernel = resolve(&repo, "HEAD").unwrap_err().to_string();
        assert!(
            not_kernel.contains("not a Linux kernel tree: it has no mm/ at its top"),
            "only what is missing: {not_kernel}"
        );
    }

    #[test]
    fn resolves_revisions_to_distinct_commits_and_trees() {
        let dir = tempfile::tempdir().unwrap();
        let repo = kernel_repo(dir.path());
        let head = resolve(&repo, "HEAD").unwrap();
        let parent = resolve(&repo, "HEAD~1").unwrap();
        assert_eq!(head.subject, "mm: second");
        assert_eq!(parent.subject, "mm: first");
        assert_eq!((head.commit.len(), head.tree.len()), (40, 40));
        assert_ne!(head.commit, parent.commit);
        assert_ne!(head.tree, parent.tree);
        assert_eq!(head.rev, "HEAD");
    }

    #[test]
    fn exports_the_commit_not_the_working_tree_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = kernel_repo(dir.path());
        let cache = dir.path().join("cache");
        std::fs::write(repo.join("mm/a.c"), "uncommitted\n").unwrap();
        let parent = resolve(&repo, "HEAD~1").unwrap();
        let tree = export(&parent, &cache).unwrap();
        assert_eq!(tree, cache.join("trees").join(&parent.tree));
        assert_eq!(
            std::fs::read_to_string(tree.join("mm/a.c")).unwrap(),
            "one\n"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("kernel/b.c")).unwrap(),
            "int b;\n"
        );
        let head = export(&resolve(&repo, "HEAD").unwrap(), &cache).unwrap();
        assert_eq!(
            std::fs::read_to_string(head.join("mm/a.c")).unwrap(),
            "two\n"
        );

        // Reused: a file planted in the export survives a second export.
        std::fs::write(tree.join("planted"), "").unwrap();
        assert_eq!(export(&parent, &cache).unwrap(), tree);
        assert!(tree.join("planted").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(cache.join("trees"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".export-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn git_variants_are_addressed_by_their_tree() {
        let dir = tempfile::tempdir().unwrap();
        let repo = kernel_repo(dir.path());
        let images = Images::open(&crate::kernel::default_images_dir()).unwrap();
        let hash = |rev: &str| {
            let variant = Variant::from_git("mine", resolve(&repo, rev).unwrap());
            variant_hash(&images, DEFAULT_ARCH, &variant, "gcc 12").unwrap()
        };
        let (head, parent) = (hash("HEAD"), hash("HEAD~1"));
        assert_ne!(head, parent);
        assert_eq!(head, hash("HEAD"), "stable");
        let base = images.variant(DEFAULT_VARIANT).unwrap();
        let debian = variant_hash(&images, DEFAULT_ARCH, &base, "gcc 12").unwrap();
        assert!(debian != head && debian != parent);
    }

    #[test]
    fn a_git_variant_is_the_commit_with_memrace_config_only() {
        let dir = tempfile::tempdir().unwrap();
        let src = resolve(&kernel_repo(dir.path()), "HEAD").unwrap();
        let variant = Variant::from_git("mine", src.clone());
        assert_eq!(variant.name, "mine");
        assert!(variant.patches.is_empty() && variant.fragments.is_empty());
        assert_eq!(variant.boot, BootImage::Vmlinux);
        assert!(
            variant.description.contains(&src.commit[..12]),
            "{}",
            variant.description
        );
        assert!(
            variant.description.contains("mm: second"),
            "{}",
            variant.description
        );
        assert_eq!(variant.git, Some(src));
    }

    #[test]
    fn a_failed_export_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = kernel_repo(dir.path());
        let cache = dir.path().join("cache");
        let mut src = resolve(&repo, "HEAD").unwrap();
        src.commit = "0".repeat(40);
        let err = export(&src, &cache).unwrap_err().to_string();
        assert!(err.contains("git archive"), "{err}");
        let left: Vec<_> = std::fs::read_dir(cache.join("trees"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
