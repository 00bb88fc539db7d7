//! The boot information each entry protocol hands the kernel: the e820 map,
//! PVH's `hvm_start_info` (with its module list and memory map) and the 64-bit
//! protocol's zero page (`boot_params`).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

use super::image::HDR_MAGIC;
use super::LoadError;
use crate::backend::kvm::arch::x86_64::boot::layout::{
    BASE_MEMORY_END, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MPTABLE_START, PVH_INFO_START,
    ZERO_PAGE_START,
};
use crate::backend::kvm::memory::{GuestRam, MemoryError};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const LOADER_UNDEFINED: u8 = 0xff;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

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

pub(super) fn write_pvh_start_info(
    ram: &GuestRam,
    initrd: Option<(u64, u64)>,
) -> Result<u64, LoadError> {
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

pub(super) fn write_zero_page(
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
}
