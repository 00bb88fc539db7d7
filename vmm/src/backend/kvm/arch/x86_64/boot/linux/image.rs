//! Recognising a kernel image (ELF64 `vmlinux` or `bzImage`) and checking it
//! is complete before anything is copied. Header values are untrusted: every
//! sum of offsets and sizes read from the file is checked.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::LoadError;
use crate::backend::kvm::arch::x86_64::boot::layout::{DEFAULT_INITRD_ADDR_MAX, HIMEM_START};

/// The setup header's magic, "HdrS".
pub(super) const HDR_MAGIC: u32 = 0x5372_6448;

pub(super) enum Format {
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
pub(super) fn inspect(path: &Path, file: &mut File) -> Result<Format, LoadError> {
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

#[cfg(test)]
mod tests {
    use super::super::{load_linux, LinuxImage};
    use super::*;
    use crate::backend::kvm::memory::GuestRam;

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
