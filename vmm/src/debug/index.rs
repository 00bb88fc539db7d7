//! The on-disk cache of DWARF facts that take seconds to compute (a full walk
//! of ~35 MiB of `.debug_info`). Stored as JSON next to the vmlinux, keyed by
//! its identity; anything unreadable or stale is silently rebuilt.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::elf::Key;

/// Bump when the meaning or layout of [`Index`] changes.
const VERSION: u32 = 1;

/// Where the DWARF facts of a loaded [`Symbols`](super::Symbols) came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexSource {
    /// Read from this cache file.
    Cached(PathBuf),
    /// Computed from DWARF and saved to this cache file.
    Saved(PathBuf),
    /// Computed from DWARF and not saved, for this reason.
    Unsaved(String),
}

/// The cached facts. Names, not addresses, so that it stays valid as long as
/// the key matches and can be read by a human.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Index {
    version: u32,
    pub key: Key,
    /// Whether the vmlinux has DWARF at all; if not, only ELF symbols work.
    pub has_dwarf: bool,
    /// Function name -> out-of-line functions (ELF symbol names) containing an
    /// inlined copy of it, sorted, at most [`Index::MAX_CALLERS`].
    pub inlined: Vec<(String, Vec<String>)>,
    /// (type, member, byte offset) of the members every run needs.
    pub fields: Vec<(String, String, u64)>,
}

impl Index {
    /// Enough to suggest breakpoints; tiny helpers like `get_current` are
    /// inlined into thousands of functions and would bloat the index.
    pub const MAX_CALLERS: usize = 16;

    /// The members needed to identify the current task on a vCPU
    /// (`*(GS_BASE + &pcpu_hot) + task_struct.pid`), computed eagerly.
    pub const COMMON_FIELDS: [(&'static str, &'static str); 4] = [
        ("task_struct", "pid"),
        ("task_struct", "tgid"),
        ("task_struct", "comm"),
        ("pcpu_hot", "current_task"),
    ];

    pub fn new(
        key: Key,
        has_dwarf: bool,
        inlined: Vec<(String, Vec<String>)>,
        fields: Vec<(String, String, u64)>,
    ) -> Index {
        Index {
            version: VERSION,
            key,
            has_dwarf,
            inlined,
            fields,
        }
    }

    /// The cached index for `key`, if `path` holds one.
    pub fn read(path: &Path, key: &Key) -> Option<Index> {
        let bytes = fs::read(path).ok()?;
        let index: Index = serde_json::from_slice(&bytes).ok()?;
        (index.version == VERSION && index.key == *key).then_some(index)
    }

    /// Writes atomically, so a concurrent reader sees the old index or the new
    /// one, never half of one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::fsutil::write_atomic(path, &serde_json::to_vec(self)?)
    }
}

/// `<vmlinux>.memrace-index`, next to the vmlinux.
pub(crate) fn default_path(vmlinux: &Path) -> PathBuf {
    let mut p = vmlinux.as_os_str().to_owned();
    p.push(".memrace-index");
    PathBuf::from(p)
}
