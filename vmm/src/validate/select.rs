//! What a patch touches, and from that which scenarios and benchmarks are relevant.
//!
//! A patch's hunks are mapped to functions through the patched build's DWARF line
//! table: every added line (or, for a deletion, the line where it happened) that
//! compiled to code names the out-of-line function holding that code, inlined copies
//! included. Comments and declarations compile to nothing and touch no function.

use crate::debug::{Spec, Symbols};
use crate::kernel::patch::{self, Hunk};
use crate::kernel::recipe::Images;
use crate::kernel::DEFAULT_ARCH;
use crate::scenario::file::Scenario;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What a patch changes in the patched kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Touched {
    /// Every file a hunk changes, relative to the tree top.
    pub files: BTreeSet<String>,
    /// Function → the `file:line`s of the patch compiled into it.
    pub functions: BTreeMap<String, BTreeSet<String>>,
}

impl Touched {
    /// Map `hunks` onto `symbols` (the patched build's). A file without code in this
    /// build (documentation, a Makefile, an unbuilt driver) touches no function.
    pub fn of(hunks: &[Hunk], symbols: &Symbols) -> Touched {
        let mut lines_by_file: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for h in hunks {
            lines_by_file
                .entry(&h.file)
                .or_default()
                .extend(&h.changed_new_lines);
        }
        let mut t = Touched::default();
        for (file, lines) in lines_by_file {
            t.files.insert(file.to_string());
            let Ok(functions) = symbols.functions_at_lines(file, &lines) else {
                continue;
            };
            for (function, at) in functions {
                t.functions
                    .entry(function)
                    .or_default()
                    .extend(at.iter().map(|l| format!("{file}:{l}")));
            }
        }
        t
    }

    fn where_(&self, function: &str) -> String {
        let lines: Vec<&str> = self
            .functions
            .get(function)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .take(3)
            .collect();
        lines.join(", ")
    }
}

/// A scenario picked by `--scenarios auto`, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Pick {
    pub scenario: String,
    pub why: String,
}

/// The functions the patches of the variant `name` change, each with the patch, mapped
/// on its build; none when it has no patches or is not built (its symbols are only
/// loaded then).
fn functions_changed_by(name: &str, images: &Images) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(variant) = images.variant(name) else {
        return out;
    };
    if variant.patches.is_empty() {
        return out;
    }
    let Ok(Some(built)) = crate::kernel::find(images, DEFAULT_ARCH, &variant) else {
        return out;
    };
    let Ok(symbols) = Symbols::load(&built.vmlinux()) else {
        return out;
    };
    for patch_name in &variant.patches {
        let Ok(file) = patch::read(&images.patch_path(patch_name)) else {
            continue;
        };
        let hunks: Vec<Hunk> = file.parts.iter().flat_map(patch::hunks).collect();
        for f in Touched::of(&hunks, &symbols).functions.into_keys() {
            out.entry(f).or_insert_with(|| patch_name.clone());
        }
    }
    out
}

/// The functions a scenario's race lives in: those of its breakpoints (resolved on
/// `symbols`), and those its race kernels' own patches change (`changed_by`, memoised
/// per variant: scenarios share their race kernels), each with where it comes from.
fn race_functions(
    scenario: &Scenario,
    symbols: &Symbols,
    images: &Images,
    changed_by: &mut BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (_, spec) in scenario.schedule.breakpoint_specs() {
        let function = match Spec::parse(spec) {
            Ok(Spec::Function { name, .. }) => Some(name),
            _ => symbols
                .resolve(spec)
                .ok()
                .and_then(|a| symbols.function_containing(a).map(str::to_string)),
        };
        if let Some(f) = function {
            out.entry(f)
                .or_insert_with(|| format!("the schedule's breakpoint `{spec}` is there"));
        }
    }
    for entry in &scenario.kernels {
        let changed = changed_by
            .entry(entry.variant.clone())
            .or_insert_with(|| functions_changed_by(&entry.variant, images));
        for (f, patch_name) in changed.iter() {
            out.entry(f.clone()).or_insert_with(|| {
                format!(
                    "the race's own kernel {} changes it ({patch_name})",
                    entry.variant
                )
            });
        }
    }
    out
}

/// The scenarios whose race code `touched` changes, each with the reason.
pub fn scenarios(
    all: &[Scenario],
    touched: &Touched,
    symbols: &Symbols,
    images: &Images,
) -> Vec<Pick> {
    let mut changed_by = BTreeMap::new();
    all.iter()
        .filter_map(|s| {
            let reasons: Vec<String> = race_functions(s, symbols, images, &mut changed_by)
                .into_iter()
                .filter(|(f, _)| touched.functions.contains_key(f))
                .map(|(f, why)| format!("the patch changes `{f}` ({}): {why}", touched.where_(&f)))
                .collect();
            (!reasons.is_empty()).then(|| Pick {
                scenario: s.name.clone(),
                why: reasons.join("; "),
            })
        })
        .collect()
}

/// Which source files each benchmark exercises (path prefixes under the tree top).
/// A benchmark is relevant to a patch that changes one of them.
const BENCH_CODE: &[(&str, &[&str])] = &[
    (
        "anon-fault-4k",
        &[
            "mm/memory.c",
            "mm/page_alloc.c",
            "mm/swap.c",
            "mm/memcontrol.c",
            "arch/x86/mm/fault.c",
            "include/linux/mm.h",
            "include/linux/pgtable.h",
        ],
    ),
    (
        "anon-fault-thp",
        &[
            "mm/huge_memory.c",
            "mm/memory.c",
            "mm/page_alloc.c",
            "mm/compaction.c",
            "arch/x86/mm/fault.c",
            "include/linux/huge_mm.h",
        ],
    ),
    (
        "shmem-fault",
        &["mm/shmem.c", "mm/filemap.c", "mm/memory.c"],
    ),
    (
        "file-fault",
        &["mm/filemap.c", "mm/memory.c", "mm/readahead.c"],
    ),
    (
        "mmap-munmap",
        &[
            "mm/mmap.c",
            "mm/vma.c",
            "mm/memory.c",
            "mm/mmu_gather.c",
            "lib/maple_tree.c",
        ],
    ),
    (
        "mremap-4k",
        &["mm/mremap.c", "mm/vma.c", "mm/mmap.c", "mm/rmap.c"],
    ),
    (
        "mremap-pmd",
        &["mm/mremap.c", "mm/huge_memory.c", "mm/vma.c"],
    ),
    (
        "fork",
        &[
            "kernel/fork.c",
            "kernel/exit.c",
            "mm/memory.c",
            "mm/rmap.c",
            "mm/mmap.c",
        ],
    ),
    (
        "madv-dontneed",
        &["mm/madvise.c", "mm/memory.c", "mm/mmu_gather.c"],
    ),
    (
        "madv-free-pageout",
        &[
            "mm/madvise.c",
            "mm/vmscan.c",
            "mm/rmap.c",
            "mm/swap.c",
            "mm/swap_state.c",
        ],
    ),
    (
        "odirect-read",
        &[
            "block/",
            "drivers/block/brd.c",
            "fs/direct-io.c",
            "fs/iomap/",
            "mm/gup.c",
        ],
    ),
    ("migrate", &["mm/migrate.c", "mm/rmap.c", "mm/mempolicy.c"]),
];

/// The benchmarks that exercise a file of `touched`, in the suite's order, each with
/// the files that made it relevant.
pub fn benches(touched: &Touched) -> Vec<(String, Vec<String>)> {
    BENCH_CODE
        .iter()
        .filter_map(|(bench, code)| {
            let hits: Vec<String> = touched
                .files
                .iter()
                .filter(|f| code.iter().any(|c| f.starts_with(c)))
                .cloned()
                .collect();
            (!hits.is_empty()).then(|| (bench.to_string(), hits))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_benchmark_has_its_code_listed() {
        let listed: Vec<&str> = BENCH_CODE.iter().map(|(b, _)| *b).collect();
        assert_eq!(listed, control_proto::PERF_BENCHES);
    }

    #[test]
    fn benchmarks_follow_the_files_a_patch_changes() {
        let touched = Touched {
            files: [
                "mm/mremap.c".to_string(),
                "Documentation/mm/x.rst".to_string(),
            ]
            .into(),
            functions: BTreeMap::new(),
        };
        let picked: Vec<String> = benches(&touched).into_iter().map(|(b, _)| b).collect();
        assert_eq!(picked, ["mremap-4k", "mremap-pmd"]);
        let block = Touched {
            files: ["block/blk-core.c".to_string()].into(),
            functions: BTreeMap::new(),
        };
        assert_eq!(benches(&block)[0].0, "odirect-read");
        assert!(benches(&Touched::default()).is_empty());
    }
}
