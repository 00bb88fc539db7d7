//! Kernel debug information: turns breakpoint specs (`func`, `func+0x12`,
//! `mm/rmap.c:1870`, `0xffffffff81234567`) and struct members into addresses
//! and offsets, from the vmlinux the guest boots (nokaslr, so link-time
//! addresses are run-time addresses).
//!
//! Layout: [`symbols`] is the public face; [`Spec`] parses breakpoint specs;
//! `elf` reads the symbol table and sections, `dwarf` does every walk over the
//! debug info, `index` caches the expensive DWARF facts next to the vmlinux,
//! `suggest` ranks "did you mean" candidates for error messages.
//!
//! Costs (6.12 tinyconfig+DWARF5 vmlinux, 65 MB, release build, see
//! `benches/symbols.rs`): cold load ~0.23 s (3 s in a debug build), cached
//! load ~16 ms, `func+off` ~0.2 µs, `file:line` ~19 ms (plus ~35 ms once to
//! read the DWARF), cached field offsets ~60 ns, others ~70 µs.

mod dwarf;
mod elf;
mod index;
mod introspect;
mod returns;
mod spec;
mod suggest;
pub mod symbols;

pub use index::IndexSource;
pub use introspect::KernelIntrospect;
pub use returns::{injection_problem, ReturnType};
pub use spec::Spec;
pub use symbols::Symbols;

use std::path::PathBuf;

/// Why a symbol, location or offset could not be resolved. Every message names
/// the problem and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a readable ELF vmlinux ({reason}); pass the uncompressed `vmlinux` \
         from the kernel build directory, not bzImage"
    )]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "{path} has no {section} section; rebuild the kernel with CONFIG_DEBUG_INFO_DWARF5=y \
         (or DWARF4) and without CONFIG_DEBUG_INFO_REDUCED/SPLIT"
    )]
    NoDebugInfo { path: PathBuf, section: String },
    #[error(
        "{path}: section {section} is compressed, which memrace does not read; rebuild with \
         CONFIG_DEBUG_INFO_COMPRESSED_NONE=y"
    )]
    CompressedDebugInfo { path: PathBuf, section: String },
    #[error(
        "malformed DWARF in {path}: {reason}; is the vmlinux complete (not truncated mid-build)?"
    )]
    BadDwarf { path: PathBuf, reason: String },
    #[error("{path} changed on disk after it was loaded; load it again (Symbols::load)")]
    VmlinuxChanged { path: PathBuf },
    #[error(
        "cannot parse breakpoint spec `{spec}`: {reason}; expected `func`, `func+0x12`, \
         `file.c:123` or `0xffffffff81234567`"
    )]
    BadSpec { spec: String, reason: String },
    #[error("`{name}` is a data symbol (at {addr:#x}), not code; breakpoints need a function")]
    NotCode { name: String, addr: u64 },
    #[error("no symbol `{name}` in the vmlinux{}", suggest::did_you_mean(.suggestions))]
    NotFound {
        name: String,
        suggestions: Vec<String>,
    },
    #[error(
        "`{name}` has no out-of-line copy in this build (it only exists inlined), so a \
         breakpoint on it would never fire{}",
        suggest::instead(.suggestions)
    )]
    InlinedOnly {
        name: String,
        suggestions: Vec<String>,
    },
    #[error(
        "`{name}` names {} different functions ({}); pick one by `file.c:line` or by address",
        .addresses.len(),
        suggest::hex_list(.addresses)
    )]
    Ambiguous { name: String, addresses: Vec<u64> },
    #[error(
        "no source file ending in `{file}` in the line table (was it compiled into this \
         kernel?){}",
        suggest::did_you_mean(.suggestions)
    )]
    NoSuchFile {
        file: String,
        suggestions: Vec<String>,
    },
    #[error("`{file}` matches several source files ({}); give more of the path", .candidates.join(", "))]
    AmbiguousFile {
        file: String,
        candidates: Vec<String>,
    },
    #[error(
        "{file}:{line} has no code in this build (comment, declaration, or optimised out){}",
        suggest::nearby_lines(.nearby)
    )]
    NoCodeAtLine {
        file: String,
        line: u64,
        nearby: Vec<u64>,
    },
    #[error("no definition of struct/union `{ty}` in the DWARF (misspelt, or not compiled into this kernel)")]
    NoSuchType { ty: String },
    #[error("`{ty}` has no member `{field}`{}", suggest::did_you_mean(.suggestions))]
    NoSuchField {
        ty: String,
        field: String,
        suggestions: Vec<String>,
    },
    #[error(
        "`{ty}.{field}` is a bit-field and has no byte offset; read the containing word instead"
    )]
    BitField { ty: String, field: String },
    #[error("no function in the debug info starts at `{name}` ({addr:#x}); a forced return needs its declared return type")]
    NoSubprogram { name: String, addr: u64 },
}
