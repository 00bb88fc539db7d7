//! Reading patch input: a `git format-patch` file, an mbox series of several patches
//! (as `b4 am` writes it), or a plain unified diff; and the hunks of each patch.

use super::KernelError;
use std::path::{Path, PathBuf};

/// A patch file split into the patches it holds, in order.
#[derive(Debug, Clone)]
pub struct PatchFile {
    pub path: PathBuf,
    pub parts: Vec<PatchPart>,
}

/// One patch: a mail message of a series, or the whole file.
#[derive(Debug, Clone)]
pub struct PatchPart {
    /// The Subject header without its `[PATCH v2 n/m]` tag; `None` for a bare diff.
    pub subject: Option<String>,
    /// The message exactly as in the file (`patch` skips the mail headers itself).
    pub text: String,
}

/// One `@@` hunk of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// The patched file, relative to the tree top (as `patch -p1` strips it).
    pub file: String,
    /// 1-based within its file, as `patch` numbers hunks in "Hunk #2 FAILED".
    pub index: usize,
    pub new_start: u64,
    pub new_len: u64,
    /// New-side line numbers of every added line; where lines are only removed, the
    /// new-side line at the removal (so a pure deletion still maps to a function).
    pub changed_new_lines: Vec<u64>,
}

impl PatchFile {
    /// How messages name part `index` (0-based) of this file called `name`: the bare
    /// name for a single patch, `name [2/3] "subject"` within a series.
    pub fn part_name(&self, name: &str, index: usize) -> String {
        if self.parts.len() == 1 {
            return name.to_string();
        }
        let mut label = format!("{name} [{}/{}]", index + 1, self.parts.len());
        if let Some(subject) = &self.parts[index].subject {
            label.push_str(&format!(" {subject:?}"));
        }
        label
    }
}

/// The mbox separator `git format-patch` and `b4 am` write before every message.
fn is_message_start(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    let Some(rest) = line.strip_prefix("From ") else {
        return false;
    };
    let Some((id, date)) = rest.split_once(' ') else {
        return false;
    };
    id.len() == 40
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && date == "Mon Sep 17 00:00:00 2001"
}

/// The message's Subject from its header block, folded lines joined, tag and all.
fn subject_header(message: &str) -> Option<String> {
    let mut lines = message
        .lines()
        .skip_while(|l| is_message_start(l))
        .take_while(|l| !l.trim().is_empty());
    let first = lines.by_ref().find_map(|l| l.strip_prefix("Subject:"))?;
    let mut text = first.trim().to_string();
    for folded in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        text.push(' ');
        text.push_str(folded.trim());
    }
    Some(text)
}

/// `[PATCH v3 2/5] mm: x` → `mm: x`, and whether the tag says `0/N` (a cover letter).
/// A subject without a PATCH tag is kept whole.
fn split_tag(subject: &str) -> (&str, bool) {
    let tagged = subject
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .filter(|(tag, _)| tag.to_ascii_uppercase().contains("PATCH"));
    let Some((tag, after)) = tagged else {
        return (subject, false);
    };
    let cover = tag.split_whitespace().any(|word| {
        word.split_once('/').is_some_and(|(n, m)| {
            !n.is_empty() && n.bytes().all(|b| b == b'0') && m.parse::<u32>().is_ok()
        })
    });
    (after.trim_start(), cover)
}

/// Hunks, or a git diff without any (a rename, a mode change), which `patch` applies too.
fn has_diff(part: &PatchPart) -> bool {
    !hunks(part).is_empty() || part.text.lines().any(|l| l.starts_with("diff --git "))
}

/// Read `path` and split it into its patches. A series' cover letter (`0/N`, which
/// may quote an interdiff) and messages without a diff are left out; a file with no
/// diff at all is an error.
pub fn read(path: &Path) -> Result<PatchFile, KernelError> {
    let text = std::fs::read_to_string(path).map_err(|source| KernelError::PatchRead {
        path: path.to_path_buf(),
        source,
    })?;
    let mut messages: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        match messages.last_mut() {
            Some(message) if !is_message_start(line) => message.push_str(line),
            _ => messages.push(line.to_string()),
        }
    }
    let parts: Vec<PatchPart> = messages
        .into_iter()
        .filter_map(|text| {
            let header = subject_header(&text);
            let (subject, cover) = match header.as_deref().map(split_tag) {
                Some((subject, cover)) => (Some(subject.to_string()), cover),
                None => (None, false),
            };
            let part = PatchPart { subject, text };
            (!cover && has_diff(&part)).then_some(part)
        })
        .collect();
    if parts.is_empty() {
        return Err(KernelError::NotAPatch {
            path: path.to_path_buf(),
        });
    }
    Ok(PatchFile {
        path: path.to_path_buf(),
        parts,
    })
}

/// `a/mm/rmap.c\t2024-01-01 ...` → `mm/rmap.c`; `None` for `/dev/null`.
fn strip_one(header: &str) -> Option<String> {
    let name = header.split('\t').next().unwrap_or(header).trim();
    if name == "/dev/null" {
        return None;
    }
    name.split_once('/').map(|(_, rest)| rest.to_string())
}

/// `@@ -a[,b] +c[,d] @@ ...` → (b, c, d); an omitted length is 1.
fn parse_header(line: &str) -> Option<(u64, u64, u64)> {
    let ranges = line.strip_prefix("@@ -")?.split(" @@").next()?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |r: &str| -> Option<(u64, u64)> {
        match r.split_once(',') {
            Some((start, len)) => Some((start.parse().ok()?, len.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let ((_, old_len), (new_start, new_len)) = (range(old)?, range(new)?);
    Some((old_len, new_start, new_len))
}

/// Every hunk of `part`, in order.
pub fn hunks(part: &PatchPart) -> Vec<Hunk> {
    let lines: Vec<&str> = part.text.lines().collect();
    let mut found = Vec::new();
    let mut file: Option<String> = None;
    let mut index = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if let (Some(old), Some(new)) = (
            line.strip_prefix("--- "),
            lines.get(i).and_then(|l| l.strip_prefix("+++ ")),
        ) {
            // A deleted file has only its old name.
            file = strip_one(new).or_else(|| strip_one(old));
            index = 0;
            i += 1;
            continue;
        }
        let (Some(name), Some((old_len, new_start, new_len))) = (&file, parse_header(line)) else {
            continue;
        };
        index += 1;
        let body_len = lines[i..]
            .iter()
            .scan((old_len, new_len), |(old, new), l| {
                if *old == 0 && *new == 0 {
                    return None;
                }
                match l.as_bytes().first().copied() {
                    Some(b'+') => *new = new.saturating_sub(1),
                    Some(b'-') => *old = old.saturating_sub(1),
                    Some(b'\\') => {}
                    // Context; an empty line is context whose space was lost in mail.
                    _ => (*old, *new) = (old.saturating_sub(1), new.saturating_sub(1)),
                }
                Some(())
            })
            .count();
        let body = &lines[i..i + body_len];
        i += body_len;
        found.push(Hunk {
            file: name.clone(),
            index,
            new_start,
            new_len,
            changed_new_lines: changed_lines(body, new_start, new_len),
        });
    }
    found
}

/// The new-side lines a hunk body changes (see [`Hunk::changed_new_lines`]).
fn changed_lines(body: &[&str], new_start: u64, new_len: u64) -> Vec<u64> {
    let new_end = new_start + new_len;
    let mut changed = Vec::new();
    let mut line = new_start;
    // What the current run of -/+ lines did.
    let (mut removed, mut added) = (false, false);
    // An empty line is context whose space was lost in mail; `None` ends the last run.
    let kinds = body
        .iter()
        .map(|l| Some(*l.as_bytes().first().unwrap_or(&b' ')));
    for l in kinds.chain([None]) {
        match l {
            Some(b'+') => {
                added = true;
                changed.push(line);
                line += 1;
            }
            Some(b'-') => removed = true,
            Some(b'\\') => {}
            _ => {
                if removed && !added {
                    // The line now in the removed lines' place, or the last one before
                    // them when they were at the end of the hunk (of the file).
                    changed.push(if line < new_end {
                        line
                    } else {
                        line.saturating_sub(1).max(new_start)
                    });
                }
                (removed, added) = (false, false);
                if l.is_some() {
                    line += 1;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    fn message(subject: &str, diff: &str) -> String {
        format!(
            "From {ID} Mon Sep 17 00:00:00 2001\nFrom: A U Thor <a@example.org>\n\
             Date: Mon, 1 Jan 2024 00:00:00 +0000\nSubject: {subject}\n\n\
             Why it changes.\n\nSigned-off-by: A U Thor <a@example.org>\n---\n \
             mm/rmap.c | 2 +-\n\n{diff}-- \n2.43.0\n\n"
        )
    }

    const DIFF: &str = "diff --git a/mm/rmap.c b/mm/rmap.c\nindex 1111111..2222222 100644\n\
        --- a/mm/rmap.c\n+++ b/mm/rmap.c\n@@ -10,7 +10,7 @@ static int f(void)\n \
        a\n b\n c\n-old\n+new\n d\n e\n f\n";

    fn file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("input.patch");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn part(text: &str) -> PatchPart {
        PatchPart {
            subject: None,
            text: text.to_string(),
        }
    }

    #[test]
    fn reads_a_format_patch_file_with_its_folded_subject() {
        let dir = tempfile::tempdir().unwrap();
        let text = message("[PATCH v2] mm/rmap: fix the\n walk order", DIFF);
        let read = read(&file(dir.path(), &text)).unwrap();
        assert_eq!(read.parts.len(), 1);
        let only = &read.parts[0];
        assert_eq!(only.subject.as_deref(), Some("mm/rmap: fix the walk order"));
        assert_eq!(only.text, text, "the message is kept byte for byte");
        assert_eq!(read.part_name("fix.patch", 0), "fix.patch");
        let h = hunks(only);
        assert_eq!(h.len(), 1, "the `-- ` signature is not a hunk line: {h:?}");
        assert_eq!(h[0].changed_new_lines, vec![13]);
    }

    #[test]
    fn splits_an_mbox_series_and_skips_its_cover_letter() {
        let dir = tempfile::tempdir().unwrap();
        // The cover letter quotes an interdiff against v1: not a patch to apply.
        let cover = format!(
            "From {ID} Mon Sep 17 00:00:00 2001\nSubject: [PATCH v2 00/02] mm: a series\n\n\
             Cover letter text.\n\nInterdiff against v1:\n{DIFF}\n"
        );
        let second = DIFF.replace("-old\n+new", "-new\n+newer");
        let text = cover
            + &message("[PATCH 1/2] mm: first", DIFF)
            + &message("[PATCH 2/2] mm: second", &second);
        let read = read(&file(dir.path(), &text)).unwrap();
        let subjects: Vec<_> = read.parts.iter().map(|p| p.subject.as_deref()).collect();
        assert_eq!(subjects, vec![Some("mm: first"), Some("mm: second")]);
        assert!(read.parts[1].text.contains("+newer"));
        assert!(read.parts[0].text.starts_with("From "));
        assert_eq!(
            read.part_name("series.mbox", 1),
            "series.mbox [2/2] \"mm: second\""
        );
    }

    #[test]
    fn a_git_rename_without_hunks_is_a_patch() {
        let dir = tempfile::tempdir().unwrap();
        let rename = "diff --git a/mm/old.c b/mm/new.c\nsimilarity index 100%\n\
                      rename from mm/old.c\nrename to mm/new.c\n";
        let text = message("[PATCH 1/2] mm: rename", rename) + &message("[PATCH 2/2] mm: x", DIFF);
        let read = read(&file(dir.path(), &text)).unwrap();
        assert_eq!(read.parts.len(), 2);
        assert!(hunks(&read.parts[0]).is_empty());
        assert_eq!(split_tag("[RFC PATCH 10/12] x"), ("x", false));
        assert_eq!(split_tag("[other] x"), ("[other] x", false));
    }

    #[test]
    fn reads_a_plain_unified_diff() {
        let dir = tempfile::tempdir().unwrap();
        let text = "--- linux.orig/mm/rmap.c\t2024-01-01 00:00:00\n\
                    +++ linux/mm/rmap.c\t2024-01-01 00:00:00\n@@ -1 +1 @@\n-a\n+b\n";
        let read = read(&file(dir.path(), text)).unwrap();
        assert_eq!(read.parts.len(), 1);
        assert_eq!(read.parts[0].subject, None);
        let h = hunks(&read.parts[0]);
        assert_eq!(
            (h[0].file.as_str(), h[0].new_start, h[0].new_len),
            ("mm/rmap.c", 1, 1)
        );
    }

    #[test]
    fn a_file_without_a_diff_is_not_a_patch() {
        let dir = tempfile::tempdir().unwrap();
        let cover_only = format!(
            "From {ID} Mon Sep 17 00:00:00 2001\nSubject: [PATCH 0/1] x\n\n--- text\n+++ more\n"
        );
        for text in ["just some notes\n", "", cover_only.as_str()] {
            let path = file(dir.path(), text);
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains("is not a patch"), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        let missing = dir.path().join("missing.patch");
        let err = read(&missing).unwrap_err().to_string();
        assert!(
            err.contains("missing.patch") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn hunk_lines_for_additions_deletions_and_context() {
        let text = "--- a/mm/a.c\n+++ b/mm/a.c\n\
            @@ -10,5 +10,7 @@ int f(void)\n c10\n c11\n+n12\n+n13\n c12\n-gone\n c13\n+n16\n\
            @@ -40,4 +42,2 @@\n c40\n-d41\n-d42\n c43\n\
            @@ -50,3 +50,2 @@\n c50\n c51\n-last\n\\ No newline at end of file\n\
            --- a/mm/gone.c\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-x\n-y\n\
            --- /dev/null\n+++ b/mm/new.c\n@@ -0,0 +1 @@\n+only\n";
        let h = hunks(&part(text));
        let summary: Vec<_> = h
            .iter()
            .map(|h| (h.file.as_str(), h.index, h.new_start, h.new_len))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("mm/a.c", 1, 10, 7),
                ("mm/a.c", 2, 42, 2),
                ("mm/a.c", 3, 50, 2),
                ("mm/gone.c", 1, 0, 0),
                ("mm/new.c", 1, 1, 1),
            ]
        );
        // Added lines 12, 13 and 16; `gone` was removed where line 15 now is.
        assert_eq!(h[0].changed_new_lines, vec![12, 13, 15, 16]);
        // Two lines removed between new lines 42 and 43: at line 43.
        assert_eq!(h[1].changed_new_lines, vec![43]);
        // Removed at the file's end: the last line before it.
        assert_eq!(h[2].changed_new_lines, vec![51]);
        assert_eq!(h[3].changed_new_lines, vec![0]);
        assert_eq!(h[4].changed_new_lines, vec![1]);
    }

    #[test]
    fn malformed_hunk_headers_are_not_hunks() {
        let text = "--- a/x.c\n+++ b/x.c\n@@ -1,z +1 @@\n-a\n+b\n@@ bogus @@\n";
        assert!(hunks(&part(text)).is_empty());
        assert_eq!(parse_header("@@ -7 +9,0 @@ f"), Some((1, 9, 0)));
    }
}
