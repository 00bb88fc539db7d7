//! Loading Linux: the kernel image (ELF `vmlinux` or `bzImage`, via
//! linux-loader), the command line, the initrd, and the boot information the
//! chosen entry protocol wants (PVH `hvm_start_info` or the 64-bit zero page,
//! written by `boot_info`).
//!
//! Images are checked before anything is copied (`image`), so a truncated file
//! or a kernel bigger than the guest gets its own error instead of a loader
//! failure. Header values are untrusted input: every sum of offsets and sizes
//! read from the file is checked, so a crafted header is an error, never an
//! overflow.

mod boot_info;
mod image;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, DEFAULT_INITRD_ADDR_MAX, HIMEM_START};
use crate::backend::kvm::memory::{GuestRam, MemoryError};
use boot_info::{write_pvh_start_info, write_zero_page};
use image::{inspect, Format};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is neither an x86-64 ELF vmlinux nor a bzImage")]
    UnknownFormat { path: PathBuf },
    #[error("{path} is truncated: {detail} (rebuild or re-copy the kernel)")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path} has an invalid header: {detail} (is it really a kernel?)")]
    Invalid { path: PathBuf, detail: String },
    #[error("kernel {path} needs guest memory up to {need_mib} MiB but the guest has {have_mib} MiB of low memory; raise mem_mib")]
    KernelTooLarge {
        path: PathBuf,
        need_mib: u64,
        have_mib: u64,
    },
    #[error("initrd {path} ({size} bytes) does not fit between the kernel end {kernel_end:#x} and {limit:#x}; raise mem_mib")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("linux-loader could not load {path}: {source}")]
    Loader {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel command line rejected ({len} bytes, at most {max}): {why}")]
    Cmdline { len: usize, max: usize, why: String },
    #[error("cannot write boot information: {0}")]
    Write(#[from] MemoryError),
}

/// What to boot.
pub struct LinuxImage<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 32-bit protected mode, paging off, RBX = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode, RSI = zero page.
    Linux64,
}

/// Where the kernel was loaded and how to enter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    pub protocol: BootProtocol,
    pub entry: u64,
    /// Guest-physical address of the boot information for `protocol`.
    pub boot_info: u64,
}

/// bzImage: the 64-bit entry point is 0x200 past the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE: u64 = 4096;

/// Place the initrd page-aligned at the top of low memory, above the kernel.
fn load_initrd(
    ram: &GuestRam,
    path: &Path,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(u64, u64), LoadError> {
    let read = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    let limit = ram.low_end().min(addr_max + 1);
    let too_large = || LoadError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE - 1);
    if addr < kernel_end {
        return Err(too_large());
    }
    ram.mmap()
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| read(std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

/// The longest command line (without its NUL) a bzImage takes: `cmdline_size`
/// from boot protocol 2.06 on, 255 before (Documentation/arch/x86/boot.rst).
fn bzimage_cmdline_max(header: &setup_header) -> usize {
    const CMDLINE_SIZE_SINCE: u16 = 0x0206;
    const OLD_CMDLINE_MAX: usize = 255;
    if header.version >= CMDLINE_SIZE_SINCE {
        header.cmdline_size as usize
    } else {
        OLD_CMDLINE_MAX
    }
}

fn write_cmdline(ram: &GuestRam, cmdline: &str) -> Result<(), LoadError> {
    let bad = |why: String| LoadError::Cmdline {
        len: cmdline.len(),
        max: CMDLINE_MAX_SIZE - 1,
        why,
    };
    let mut line = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| bad(e.to_string()))?;
    if !cmdline.is_empty() {
        line.insert_str(cmdline).map_err(|e| bad(e.to_string()))?;
    }
    load_cmdline(ram.mmap(), GuestAddress(CMDLINE_START), &line).map_err(|e| bad(e.to_string()))
}

/// Load `image` into `ram` and write everything its entry protocol needs.
/// ELF kernels with a PVH note enter through PVH unless `prefer_pvh` is false.
pub fn load_linux(
    ram: &GuestRam,
    image: &LinuxImage,
    prefer_pvh: bool,
) -> Result<LoadedKernel, LoadError> {
    let path = image.kernel;
    let mut file = File::open(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let format = inspect(path, &mut file)?;
    let (load_end, initrd_addr_max) = match format {
        Format::Elf { load_end } => (load_end, DEFAULT_INITRD_ADDR_MAX),
        Format::BzImage {
            load_end,
            initrd_addr_max,
        } => (load_end, initrd_addr_max),
    };
    if load_end > ram.low_end() {
        return Err(LoadError::KernelTooLarge {
            path: path.to_path_buf(),
            need_mib: load_end.div_ceil(1 << 20),
            have_mib: ram.low_end() >> 20,
        });
    }
    let loader = |source| LoadError::Loader {
        path: path.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded = match format {
        Format::Elf { .. } => Elf::load(ram.mmap(), None, &mut file, himem).map_err(loader)?,
        Format::BzImage { .. } => {
            BzImage::load(ram.mmap(), None, &mut file, himem).map_err(loader)?
        }
    };
    if let Some(header) = &loaded.setup_header {
        let max = bzimage_cmdline_max(header);
        if image.cmdline.len() > max {
            return Err(LoadError::Cmdline {
                len: image.cmdline.len(),
                max,
                why: "longer than the bzImage's cmdline_size".into(),
            });
        }
    }
    write_cmdline(ram, image.cmdline)?;
    let kernel_end = loaded.kernel_end.max(load_end);
    let initrd = image
        .initrd
        .map(|p| load_initrd(ram, p, kernel_end, initrd_addr_max))
        .transpose()?;

    match (loaded.pvh_boot_cap, loaded.setup_header) {
        (PvhBootCapability::PvhEntryPresent(entry), None) if prefer_pvh => Ok(LoadedKernel {
            protocol: BootProtocol::Pvh,
            entry: entry.0,
            boot_info: write_pvh_start_info(ram, initrd)?,
        }),
        (_, header) => {
            let entry = match header {
                Some(_) => loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                None => loaded.kernel_load.0,
            };
            let boot_info = write_zero_page(ram, header, initrd)?;
            Ok(LoadedKernel {
                protocol: BootProtocol::Linux64,
                entry,
                boot_info,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bzimage_limits_the_command_line_as_its_protocol_version_says() {
        let header = |version, cmdline_size| setup_header {
            version,
            cmdline_size,
            ..Default::default()
        };
        assert_eq!(bzimage_cmdline_max(&header(0x020f, 2047)), 2047);
        assert_eq!(bzimage_cmdline_max(&header(0x0206, 100)), 100);
        // Before 2.06 the field did not exist: the limit was 255.
        assert_eq!(bzimage_cmdline_max(&header(0x0205, 0)), 255);
    }
}
