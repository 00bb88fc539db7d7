//! The benchmarks. Each is one repetition on one thread: it sets up its memory untimed,
//! times only the mm operation it is named after, and returns how many it timed.
//! Sizes keep one repetition in the tens of milliseconds under TCG.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::{BenchFn, Ctx, Timer};
use crate::error::{self, Res};
use crate::mem::{Mapping, PAGE};

const HPAGE: usize = 2 << 20;
const MPOL_MF_MOVE: libc::c_int = 1 << 1;

/// Every benchmark, by the name `memrace perf --bench` takes, in the order they run
/// (the protocol's `PERF_BENCHES`, which a test holds this to).
pub const ALL: &[(&str, BenchFn)] = &[
    ("anon-fault-4k", anon_fault_4k),
    ("anon-fault-thp", anon_fault_thp),
    ("shmem-fault", shmem_fault),
    ("file-fault", file_fault),
    ("mmap-munmap", mmap_munmap),
    ("mremap-4k", mremap_4k),
    ("mremap-pmd", mremap_pmd),
    ("fork", fork_exit_wait),
    ("madv-dontneed", madv_dontneed),
    ("madv-free-pageout", madv_free_pageout),
    ("odirect-read", odirect_read),
    ("migrate", migrate),
];

/// Write one byte in every page of `len` bytes at `addr` (one fault per page when unmapped).
fn touch_pages(addr: usize, len: usize, stride: usize) {
    for off in (0..len).step_by(stride) {
        // SAFETY: callers pass a range of their own writable mapping.
        unsafe { ((addr + off) as *mut u8).write_volatile(1) };
    }
}

/// Read one byte in every page of `len` bytes at `addr`.
fn read_pages(addr: usize, len: usize) -> u64 {
    let mut sum = 0u64;
    for off in (0..len).step_by(PAGE) {
        // SAFETY: callers pass a range of their own readable mapping.
        sum += u64::from(unsafe { ((addr + off) as *const u8).read_volatile() });
    }
    sum
}

fn private_4k(len: usize) -> Res<Mapping> {
    let m = Mapping::private(len)?;
    // A THP would turn 512 faults into one: this benchmark is about 4 KiB faults.
    m.madvise(0, len, libc::MADV_NOHUGEPAGE, "madvise(MADV_NOHUGEPAGE)")?;
    Ok(m)
}

fn anon_fault_4k(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const LEN: usize = 4 << 20;
    let m = private_4k(LEN)?;
    t.time(|| touch_pages(m.addr(), LEN, PAGE));
    Ok((LEN / PAGE) as u64)
}

/// A region of `len` bytes whose start is a multiple of `align`, reserved inaccessible
/// (the slack around it stays reserved too, and is unmapped with it).
struct Reserved {
    map: Mapping,
    start: usize,
}

impl Reserved {
    fn new(len: usize, align: usize) -> Res<Reserved> {
        let map = Mapping::anon(0, len + align, libc::PROT_NONE, libc::MAP_PRIVATE)?;
        let start = map.addr().next_multiple_of(align);
        Ok(Reserved { map, start })
    }

    /// Replace `len` bytes at `addr` (inside this reservation) with fresh memory of `prot`.
    fn remap(&self, addr: usize, len: usize, prot: libc::c_int) -> Res<()> {
        assert!(addr >= self.map.addr() && addr + len <= self.map.addr() + self.map.len());
        // SAFETY: MAP_FIXED replaces only pages inside this reservation, which this struct
        // owns; nothing holds references into it (all accesses are raw).
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(error::last("mmap(MAP_FIXED) inside a reservation"));
        }
        Ok(())
    }

    /// mremap `len` bytes from `from` to `to`, both inside this reservation, then reserve
    /// the vacated range again (untimed), so no other mapping can land in it.
    fn mremap(&self, t: &mut Timer, from: usize, to: usize, len: usize) -> Res<()> {
        assert!(to >= self.map.addr() && to + len <= self.map.addr() + self.map.len());
        // SAFETY: moves this reservation's own pages to a range inside it; the target's
        // previous (inaccessible) pages are replaced, nothing outside is touched.
        let p = t.time(|| unsafe {
            libc::mremap(
                from as *mut libc::c_void,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        });
        if p == libc::MAP_FAILED {
            return Err(error::last("mremap(MREMAP_FIXED)"));
        }
        self.remap(from, len, libc::PROT_NONE)
    }
}

fn anon_fault_thp(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const LEN: usize = 8 * HPAGE;
    let r = Reserved::new(LEN, HPAGE)?;
    r.remap(r.start, LEN, libc::PROT_READ | libc::PROT_WRITE)?;
    r.map.madvise(
        r.start - r.map.addr(),
        LEN,
        libc::MADV_HUGEPAGE,
        "madvise(MADV_HUGEPAGE)",
    )?;
    t.time(|| touch_pages(r.start, LEN, HPAGE));
    // A fallback to 4 KiB pages would measure something else: check the VMA got THPs.
    let smaps = std::fs::read_to_string("/proc/self/smaps")
        .map_err(|e| error::describe("read /proc/self/smaps", &e))?;
    let huge_kb = crate::workloads::smaps_field(&smaps, r.start, "AnonHugePages").unwrap_or(0);
    if huge_kb < (LEN / 1024) as u64 / 2 {
        return Err(format!(
            "only {huge_kb} kB of {} kB faulted as THPs (is transparent_hugepage enabled?)",
            LEN / 1024
        ));
    }
    Ok((LEN / HPAGE) as u64)
}

/// A memfd of `len` bytes.
fn memfd(len: usize) -> Res<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"memrace-perf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(error::last("memfd_create"));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own.
    let ret = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
    error::check(ret.into(), "ftruncate(memfd)")?;
    Ok(fd)
}

fn shmem_fault(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const LEN: usize = 4 << 20;
    let fd = memfd(LEN)?;
    let m = Mapping::shared(&fd, LEN)?;
    t.time(|| touch_pages(m.addr(), LEN, PAGE));
    Ok((LEN / PAGE) as u64)
}

fn file_fault(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const LEN: usize = 4 << 20;
    let fd = memfd(LEN)?;
    let file = File::from(fd);
    // Page-cache pages that exist before the mapping: the faults only map them.
    file.write_all_at(&vec![7u8; LEN], 0)
        .map_err(|e| error::describe("write memfd", &e))?;
    let m = Mapping::shared(&OwnedFd::from(file), LEN)?;
    let sum = t.time(|| read_pages(m.addr(), LEN));
    if sum != 7 * (LEN / PAGE) as u64 {
        return Err(format!("file-fault read back {sum}, not the bytes written"));
    }
    Ok((LEN / PAGE) as u64)
}

fn mmap_munmap(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const ROUNDS: u64 = 512;
    for _ in 0..ROUNDS {
        t.time(|| Mapping::private(16 * PAGE).map(drop))?;
    }
    Ok(ROUNDS)
}

/// Move `len` bytes of populated 4 KiB pages back and forth `moves` times between two
/// slots of one reservation, at `offsets` from 2 MiB boundaries. Returns pages moved.
fn mremap_moves(t: &mut Timer, len: usize, offsets: [usize; 2]) -> Res<u64> {
    const MOVES: usize = 8;
    let slot = len.next_multiple_of(HPAGE) + HPAGE;
    let r = Reserved::new(2 * slot, HPAGE)?;
    let at = [r.start + offsets[0], r.start + slot + offsets[1]];
    r.remap(at[0], len, libc::PROT_READ | libc::PROT_WRITE)?;
    r.map.madvise(
        at[0] - r.map.addr(),
        len,
        libc::MADV_NOHUGEPAGE,
        "madvise(MADV_NOHUGEPAGE)",
    )?;
    touch_pages(at[0], len, PAGE);
    for m in 0..MOVES {
        r.mremap(t, at[m % 2], at[(m + 1) % 2], len)?;
    }
    Ok((MOVES * len / PAGE) as u64)
}

/// Source and destination at different offsets from a PMD boundary: every PTE moves.
fn mremap_4k(t: &mut Timer, _: &Ctx) -> Res<u64> {
    mremap_moves(t, 2 << 20, [PAGE, 2 * PAGE])
}

/// Both PMD-aligned over whole PMDs: the page tables move, not the PTEs.
fn mremap_pmd(t: &mut Timer, _: &Ctx) -> Res<u64> {
    mremap_moves(t, 4 * HPAGE, [0, 0])
}

fn fork_exit_wait(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const ROUNDS: u64 = 32;
    for _ in 0..ROUNDS {
        let status = t.time(|| {
            // SAFETY: the child only calls _exit, which is async-signal-safe, so forking a
            // multi-threaded process is sound.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: leaving the child at once, without running any Rust code.
                unsafe { libc::_exit(0) };
            }
            if pid < 0 {
                return Err(error::last("fork"));
            }
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out pointer.
            let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
            error::check(ret.into(), "waitpid").map(|_| status)
        })?;
        if status != 0 {
            return Err(format!("fork: child exited with status {status:#x}"));
        }
    }
    Ok(ROUNDS)
}

fn madv_dontneed(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const LEN: usize = 4 << 20;
    let m = private_4k(LEN)?;
    touch_pages(m.addr(), LEN, PAGE);
    t.time(|| m.madvise(0, LEN, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)"))?;
    Ok((LEN / PAGE) as u64)
}

fn madv_free_pageout(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const LEN: usize = 4 << 20;
    let m = private_4k(LEN)?;
    touch_pages(m.addr(), LEN, PAGE);
    t.time(|| {
        m.madvise(0, LEN, libc::MADV_FREE, "madvise(MADV_FREE)")?;
        m.madvise(0, LEN, libc::MADV_PAGEOUT, "madvise(MADV_PAGEOUT)")
    })?;
    Ok((LEN / PAGE) as u64)
}

fn odirect_read(t: &mut Timer, ctx: &Ctx) -> Res<u64> {
    const CHUNK: usize = 64 << 10;
    const LEN: usize = 2 << 20;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open("/dev/ram0")
        .map_err(|e| error::describe("open /dev/ram0 O_DIRECT", &e))?;
    let base = (ctx.thread * LEN) as u64;
    let size = crate::system::ram0_size()?;
    if base + LEN as u64 > size {
        return Err(format!(
            "/dev/ram0 has {size} bytes; {} threads need {}",
            ctx.threads,
            ctx.threads * LEN
        ));
    }
    let buf = Mapping::private(CHUNK)?;
    buf.fill(0x5a);
    // SAFETY: `buf` is CHUNK bytes of our own memory, alive for this function.
    let bytes = unsafe { std::slice::from_raw_parts_mut(buf.ptr(), CHUNK) };
    // The device's pages exist before the timed reads (brd allocates on first write).
    for off in (0..LEN).step_by(CHUNK) {
        dev.write_all_at(bytes, base + off as u64)
            .map_err(|e| error::describe("O_DIRECT write /dev/ram0", &e))?;
    }
    for off in (0..LEN).step_by(CHUNK) {
        let n = t
            .time(|| dev.read_at(bytes, base + off as u64))
            .map_err(|e| error::describe("O_DIRECT read /dev/ram0", &e))?;
        if n != CHUNK {
            return Err(format!("short O_DIRECT read: {n} of {CHUNK} bytes"));
        }
    }
    Ok((LEN / CHUNK) as u64)
}

/// move_pages(2) of this process' `pages` to `node`: how many ended up there.
fn move_pages(pages: &[*mut libc::c_void], node: libc::c_int) -> Res<usize> {
    let nodes = vec![node; pages.len()];
    let mut status = vec![i32::MIN; pages.len()];
    // SAFETY: the three arrays hold `pages.len()` elements each; pid 0 is this process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len(),
            pages.as_ptr(),
            nodes.as_ptr(),
            status.as_mut_ptr(),
            MPOL_MF_MOVE,
        )
    };
    error::check(ret, "move_pages")?;
    Ok(status.iter().filter(|&&s| s == node).count())
}

fn migrate(t: &mut Timer, _: &Ctx) -> Res<u64> {
    const LEN: usize = 2 << 20;
    if crate::system::numa_nodes() < 2 {
        return Err("migrate needs two NUMA nodes (boot with numa=fake=2)".into());
    }
    let m = private_4k(LEN)?;
    touch_pages(m.addr(), LEN, PAGE);
    let pages: Vec<*mut libc::c_void> = (0..LEN / PAGE)
        .map(|i| (m.addr() + i * PAGE) as *mut libc::c_void)
        .collect();
    let mut moved = 0;
    for node in [1, 0] {
        moved += t.time(|| move_pages(&pages, node))?;
    }
    // Pages that did not move (busy, or already there) would make this cheaper than it is.
    if moved < pages.len() {
        return Err(format!(
            "migrate: only {moved} of {} page moves happened",
            2 * pages.len()
        ));
    }
    Ok(moved as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_is_the_protocols_list() {
        let names: Vec<&str> = super::ALL.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, control_proto::PERF_BENCHES);
    }
}
