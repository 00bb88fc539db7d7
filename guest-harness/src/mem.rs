//! Anonymous mappings with RAII, and /proc/self/pagemap decoding.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{self, Res};

/// The base page size the harness assumes: pagemap indexing, gate addresses, the 2 MiB
/// PMD size of the THP workloads. x86_64 has only 4 KiB pages; arm64 kernels may be built
/// for 16 or 64 KiB, which [`check_page_size`] refuses.
pub const PAGE: usize = 4096;

/// Err unless the kernel's page size is [`PAGE`].
pub fn check_page_size() -> Res<()> {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size != PAGE as libc::c_long {
        return Err(format!(
            "the kernel's page size is {size} bytes; the harness supports {PAGE}-byte pages only (on arm64: CONFIG_ARM64_4K_PAGES)"
        ));
    }
    Ok(())
}

/// An `mmap` region, unmapped on drop. Holds only the address, so it is `Send + Sync`;
/// every access to the memory goes through raw pointers at the use site.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// `mmap(hint, len, prot, flags | MAP_ANONYMOUS, -1, 0)`.
    pub fn anon(hint: usize, len: usize, prot: libc::c_int, flags: libc::c_int) -> Res<Mapping> {
        assert_eq!(
            flags & libc::MAP_FIXED,
            0,
            "MAP_FIXED would replace existing mappings"
        );
        // SAFETY: without MAP_FIXED (checked above; MAP_FIXED_NOREPLACE fails instead of
        // replacing) a new anonymous mapping cannot alias any memory Rust knows about.
        let p = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                len,
                prot,
                flags | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(error::last(&format!("mmap({len:#x})")));
        }
        Ok(Mapping {
            addr: p as usize,
            len,
        })
    }

    /// A private read-write anonymous mapping.
    pub fn private(len: usize) -> Res<Mapping> {
        Mapping::anon(
            0,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
        )
    }

    /// A read-write `MAP_SHARED` mapping of the first `len` bytes of `fd`.
    pub fn shared(fd: &std::os::fd::OwnedFd, len: usize) -> Res<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a new mapping chosen by the kernel (no MAP_FIXED) cannot alias memory
        // Rust knows about; every access to it is raw.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(error::last(&format!("mmap(shared, {len:#x})")));
        }
        Ok(Mapping {
            addr: p as usize,
            len,
        })
    }

    pub fn addr(&self) -> usize {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// `madvise(addr + offset, len, advice)`.
    pub fn madvise(&self, offset: usize, len: usize, advice: libc::c_int, what: &str) -> Res<()> {
        assert!(offset + len <= self.len);
        // SAFETY: the range lies inside this mapping; madvise does not invalidate Rust references
        // because none exist into mapped memory (all accesses are raw).
        let ret = unsafe { libc::madvise((self.addr + offset) as *mut libc::c_void, len, advice) };
        error::check(ret.into(), what).map(drop)
    }

    /// Fill the whole mapping with `byte`.
    pub fn fill(&self, byte: u8) {
        // SAFETY: the mapping is `len` bytes of writable memory owned by `self`.
        unsafe { std::ptr::write_bytes(self.ptr(), byte, self.len) };
    }

    /// Give up ownership: the region stays mapped (e.g. after mremap moved part of it).
    pub fn leak(self) -> usize {
        let addr = self.addr;
        std::mem::forget(self);
        addr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by `anon` and is owned by `self`; nothing refers to it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// One decoded /proc/self/pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// Bit 63.
    pub present: bool,
    /// Bits 0–54 (0 without CAP_SYS_ADMIN or when not present).
    pub pfn: u64,
}

/// Decode a pagemap entry.
pub fn decode_pagemap(entry: u64) -> PageInfo {
    PageInfo {
        present: entry >> 63 & 1 == 1,
        pfn: entry & ((1 << 55) - 1),
    }
}

/// Pagemap entries for the `pages` pages starting at page-aligned `addr`.
pub fn pagemap(addr: usize, pages: usize) -> Res<Vec<PageInfo>> {
    let file = File::open("/proc/self/pagemap").map_err(|e| error::describe("open pagemap", &e))?;
    let mut raw = vec![0u8; pages * 8];
    file.read_exact_at(&mut raw, (addr / PAGE * 8) as u64)
        .map_err(|e| error::describe("read pagemap", &e))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| decode_pagemap(u64::from_le_bytes(c.try_into().expect("8-byte chunk"))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pagemap_entries() {
        let e = (1u64 << 63) | (1 << 55) | 0x12345;
        assert_eq!(
            decode_pagemap(e),
            PageInfo {
                present: true,
                pfn: 0x12345
            }
        );
        assert_eq!(
            decode_pagemap(0x7f_ffff_ffff_ffff),
            PageInfo {
                present: false,
                pfn: (1 << 55) - 1
            }
        );
        assert_eq!(
            decode_pagemap(1 << 62),
            PageInfo {
                present: false,
                pfn: 0
            }
        );
    }

    #[test]
    fn the_host_has_the_page_size_the_harness_assumes() {
        check_page_size().unwrap();
    }

    #[test]
    fn reads_own_pagemap() {
        let m = Mapping::private(2 * PAGE).unwrap();
        m.fill(1);
        let info = pagemap(m.addr(), 2).unwrap();
        assert!(info.iter().all(|p| p.present));
    }
}
