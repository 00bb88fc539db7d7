//! Symbol resolver costs: cold load (full DWARF walk), cached load, and the
//! queries a run makes. Needs a kernel like the tests (`MEMRACE_VMLINUX` or
//! `memrace kernel path`). Run: `cargo bench -p memrace --bench symbols`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use memrace::debug::{IndexSource, Symbols};

fn bench(c: &mut Criterion) {
    let vmlinux = common::vmlinux();
    // A private index, so the bench neither depends on nor disturbs the one
    // next to the vmlinux.
    let dir = tempfile::tempdir().expect("tempdir");
    let index = dir.path().join("vmlinux.memrace-index");

    let mut load = c.benchmark_group("load");
    load.sample_size(10)
        .measurement_time(Duration::from_secs(20));
    load.bench_function("cold (no index)", |b| {
        b.iter(|| Symbols::load_uncached(black_box(&vmlinux)).expect("load"))
    });
    let first = Symbols::load_with_index(&vmlinux, &index).expect("load");
    assert!(
        matches!(first.index_source(), IndexSource::Saved(_)),
        "{:?}",
        first.index_source()
    );
    load.bench_function("cached", |b| {
        b.iter(|| {
            let s = Symbols::load_with_index(black_box(&vmlinux), &index).expect("load");
            assert!(matches!(s.index_source(), IndexSource::Cached(_)));
            s
        })
    });
    // What a run that uses one `file:line` breakpoint pays in total.
    load.bench_function("cached + first file:line", |b| {
        b.iter(|| {
            let s = Symbols::load_with_index(black_box(&vmlinux), &index).expect("load");
            s.resolve("mm/rmap.c:1870").expect("resolve")
        })
    });
    load.finish();

    // Queries on a cached load; the first lazy one pays for reading DWARF.
    let syms = Symbols::load_with_index(&vmlinux, &index).expect("load");
    let mut q = c.benchmark_group("query");
    q.sample_size(10);
    q.bench_function("resolve func+off", |b| {
        b.iter(|| {
            syms.resolve(black_box("try_to_unmap_one+0x10"))
                .expect("resolve")
        })
    });
    q.bench_function("resolve file:line", |b| {
        b.iter(|| syms.resolve(black_box("mm/rmap.c:1870")).expect("resolve"))
    });
    q.bench_function("field_offset cached (task_struct.pid)", |b| {
        b.iter(|| {
            syms.field_offset(black_box("task_struct"), "pid")
                .expect("offset")
        })
    });
    q.bench_function("field_offset lazy (mm_struct.pgd)", |b| {
        b.iter(|| {
            syms.field_offset(black_box("mm_struct"), "pgd")
                .expect("offset")
        })
    });
    q.bench_function("function error with suggestions", |b| {
        b.iter(|| {
            syms.function(black_box("madvise_pageout"))
                .expect_err("inlined")
        })
    });
    q.bench_function("describe", |b| {
        b.iter(|| syms.describe(black_box(0xffff_ffff_8100_1234)))
    });
    q.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
