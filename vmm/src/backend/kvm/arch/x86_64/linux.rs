//! Loading Linux: the kernel image (ELF `vmlinux` or `bzImage`, via
//! linux-loader), the command line, the initrd, and the boot information the
//! chosen entry protocol wants (PVH `hvm_start_info` or the 64-bit zero page).
//!
//! Images are checked before anything is copied, so a truncated file or a
//! kernel bigger than the guest gets its own error instead of a loader failure.
//! Header values are untrusted input: every sum of offsets and sizes read from
//! the file is checked, so a crafted header is an error, never an overflow.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    BASE_MEMORY_END, CMDLINE_MAX_SIZE, CMDLINE_START, DEFAULT_INITRD_ADDR_MAX, HIMEM_START,
    MPTABLE_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::backend::kvm::memory::{GuestRam, MemoryError};

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

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
const LOADER_UNDEFINED: u8 = 0xff;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// bzImage: the 64-bit entry point is 0x200 past the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE: u64 = 4096;

enum Format {
    Elf { load_end: u64 },
    BzImage { load_end: u64, initrd_addr_max: u64 },
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap_or_default())
}

/// Recognise the image and check it is complete; returns where loading ends.
fn inspect(path: &Path, file: &mut File) -> Result<Format, LoadError> {
    let read = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let truncated = |detail: String| LoadError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let invalid = |detail: String| LoadError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    let len = file.metadata().map_err(read)?.len();
    let mut head = vec![0u8; len.min(0x400) as usize];
    read_at(file, 0, &mut head).map_err(read)?;

    if head.starts_with(b"\x7fELF") {
        const PT_LOAD: u32 = 1;
        const PHDR_LEN: u64 = 56;
        if head.len() < 64 {
            return Err(truncated(format!(
                "{len} bytes, shorter than an ELF header"
            )));
        }
        if head[4] != 2 || head[5] != 1 {
            return Err(LoadError::UnknownFormat {
                path: path.to_path_buf(),
            });
        }
        let phoff = le_u64(&head, 0x20);
        let phentsize = u64::from(le_u16(&head, 0x36));
        let phnum = u64::from(le_u16(&head, 0x38));
        if phentsize != PHDR_LEN {
            return Err(invalid(format!(
                "program header entries of {phentsize} bytes, ELF64 has {PHDR_LEN}"
            )));
        }
        // phnum is 16 bits: the table size fits; the offset is the file's word.
        let table_len = phnum * PHDR_LEN;
        match phoff.checked_add(table_len) {
            Some(end) if end <= len => {}
            _ => {
                return Err(truncated(format!(
                    "program headers at {phoff:#x} (+{table_len:#x}) run past {len:#x} bytes"
                )))
            }
        }
        let mut phdrs = vec![0u8; table_len as usize];
        read_at(file, phoff, &mut phdrs).map_err(read)?;
        let mut load_end = 0;
        for ph in phdrs.chunks_exact(PHDR_LEN as usize) {
            if le_u32(ph, 0) != PT_LOAD {
                continue;
            }
            let (offset, paddr, filesz, memsz) = (
                le_u64(ph, 8),
                le_u64(ph, 0x18),
                le_u64(ph, 0x20),
                le_u64(ph, 0x28),
            );
            match offset.checked_add(filesz) {
                Some(end) if end <= len => {}
                _ => {
                    return Err(truncated(format!(
                        "segment at file offset {offset:#x} (+{filesz:#x}) runs past {len:#x}"
                    )))
                }
            }
            let end = paddr.checked_add(memsz).ok_or_else(|| {
                invalid(format!(
                    "segment at {paddr:#x} (+{memsz:#x}) ends past the 64-bit address space"
                ))
            })?;
            load_end = load_end.max(end);
        }
        return Ok(Format::Elf { load_end });
    }

    if head.len() >= 0x264 && le_u32(&head, 0x202) == HDR_MAGIC {
        let setup_sects = match head[0x1f1] {
            0 => 4,
            n => u64::from(n),
        };
        // Both come from 8- and 32-bit fields: the sum stays far below u64::MAX.
        let syssize = u64::from(le_u32(&head, 0x1f4)) * 16;
        let image_end = (setup_sects + 1) * 512 + syssize;
        if image_end > len {
            return Err(truncated(format!(
                "header promises {image_end} bytes, file has {len}"
            )));
        }
        let init_size = u64::from(le_u32(&head, 0x260));
        let initrd_addr_max = match le_u32(&head, 0x22c) {
            0 => DEFAULT_INITRD_ADDR_MAX,
            n => u64::from(n),
        };
        return Ok(Format::BzImage {
            load_end: HIMEM_START + init_size.max(len),
            initrd_addr_max,
        });
    }
    Err(LoadError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

/// The e820 map: base memory, then RAM from 1 MiB up, skipping the MMIO hole.
fn e820_map(ram: &GuestRam) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, MPTABLE_START, E820_RAM),
        (
            MPTABLE_START,
            BASE_MEMORY_END - MPTABLE_START,
            E820_RESERVED,
        ),
    ];
    for (start, len) in ram.ranges() {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

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

fn write_pvh_start_info(ram: &GuestRam, initrd: Option<(u64, u64)>) -> Result<u64, LoadError> {
    let info_len = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist = PVH_INFO_START + info_len;
    let memmap = modlist + std::mem::size_of::<hvm_modlist_entry>() as u64;
    let map = e820_map(ram);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: memmap,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
        ram.mmap()
            .write_obj(
                hvm_modlist_entry {
                    paddr,
                    size,
                    ..Default::default()
                },
                GuestAddress(modlist),
            )
            .map_err(|_| MemoryError::OutOfRange {
                gpa: modlist,
                len: 32,
            })?;
    }
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        let at = memmap + i as u64 * std::mem::size_of::<hvm_memmap_table_entry>() as u64;
        ram.mmap()
            .write_obj(
                hvm_memmap_table_entry {
                    addr,
                    size,
                    type_,
                    reserved: 0,
                },
                GuestAddress(at),
            )
            .map_err(|_| MemoryError::OutOfRange { gpa: at, len: 24 })?;
    }
    ram.mmap()
        .write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(|_| MemoryError::OutOfRange {
            gpa: PVH_INFO_START,
            len: info_len as usize,
        })?;
    Ok(PVH_INFO_START)
}

fn write_zero_page(
    ram: &GuestRam,
    header: Option<setup_header>,
    initrd: Option<(u64, u64)>,
) -> Result<u64, LoadError> {
    let hdr = header.unwrap_or(setup_header {
        // A vmlinux has no setup header: describe a relocatable kernel loaded where
        // it is, whose command line may be as long as x86's COMMAND_LINE_SIZE allows.
        boot_flag: BOOT_FLAG,
        header: HDR_MAGIC,
        kernel_alignment: 0x0100_0000,
        cmdline_size: (CMDLINE_MAX_SIZE - 1) as u32,
        ..Default::default()
    });
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    // cmdline_size is the kernel's limit, for the loader to read: it stays as the
    // kernel gave it (`load_linux` checked the line against it). Only the pointer
    // tells the kernel where the line is.
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(ram);
    for (slot, &(addr, size, r#type)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry { addr, size, r#type };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    ram.mmap()
        .write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| MemoryError::OutOfRange {
            gpa: ZERO_PAGE_START,
            len: 4096,
        })?;
    Ok(ZERO_PAGE_START)
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
    fn e820_skips_the_legacy_hole_and_reserves_the_mp_table() {
        let ram = GuestRam::new(&[(0, 64 << 20), (1 << 32, 16 << 20)]).unwrap();
        assert_eq!(
            e820_map(&ram),
            vec![
                (0, MPTABLE_START, E820_RAM),
                (
                    MPTABLE_START,
                    BASE_MEMORY_END - MPTABLE_START,
                    E820_RESERVED
                ),
                (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM),
                (1 << 32, 16 << 20, E820_RAM),
            ]
        );
    }

    /// An ELF64 header with one PT_LOAD program header: (phoff, phentsize) in the
    /// file header and (offset, paddr, filesz, memsz) in the program header.
    fn crafted_elf(phoff: u64, phentsize: u16, segment: [u64; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&phentsize.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let [offset, paddr, filesz, memsz] = segment;
        let ph = &mut f[0x40..0x78];
        ph[0] = 1;
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[0x18..0x20].copy_from_slice(&paddr.to_le_bytes());
        ph[0x20..0x28].copy_from_slice(&filesz.to_le_bytes());
        ph[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
        f
    }

    #[test]
    fn header_values_that_would_overflow_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ram = GuestRam::new(&[(0, 64 << 20)]).unwrap();
        let load = |name: &str, bytes: Vec<u8>| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let image = LinuxImage {
                kernel: &path,
                initrd: None,
                cmdline: "",
            };
            load_linux(&ram, &image, true)
        };
        let ok_segment = [0x100, 0x100_0000, 0x10, 0x10];
        let result = load("phoff", crafted_elf(u64::MAX - 8, 56, ok_segment));
        assert!(
            matches!(result, Err(LoadError::Truncated { .. })),
            "{result:?}"
        );
        let result = load("phentsize", crafted_elf(0x40, 32, ok_segment));
        assert!(
            matches!(result, Err(LoadError::Invalid { .. })),
            "{result:?}"
        );
        let result = load(
            "offset",
            crafted_elf(0x40, 56, [u64::MAX, 0x100_0000, 2, 2]),
        );
        assert!(
            matches!(result, Err(LoadError::Truncated { .. })),
            "{result:?}"
        );
        let result = load(
            "memsz",
            crafted_elf(0x40, 56, [0x100, u64::MAX - 1, 0x10, 0x10]),
        );
        assert!(
            matches!(result, Err(LoadError::Invalid { .. })),
            "{result:?}"
        );
    }

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

    #[test]
    fn garbage_and_truncated_images_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let ram = GuestRam::new(&[(0, 64 << 20)]).unwrap();
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
        let image = |kernel| LinuxImage {
            kernel,
            initrd: None,
            cmdline: "",
        };
        assert!(matches!(
            load_linux(&ram, &image(&garbage), true),
            Err(LoadError::UnknownFormat { .. })
        ));
        let short_elf = dir.path().join("short.elf");
        std::fs::write(&short_elf, b"\x7fELF\x02\x01").unwrap();
        assert!(matches!(
            load_linux(&ram, &image(&short_elf), true),
            Err(LoadError::Truncated { .. })
        ));
    }
}
