//! Recognising a kernel file for a guest architecture: an ELF vmlinux (on x86_64
//! booted through its PVH entry note), an x86 bzImage, or an arm64 `Image`.

use crate::arch::Arch;
use object::Object;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("kernel {0} does not exist")]
    Missing(PathBuf),
    #[error("{path} is not a kernel for {arch}: {why}\n  give {expected}, or a variant name (`memrace kernel list`)", expected = expected(*.arch))]
    NotAKernel {
        path: PathBuf,
        arch: Arch,
        why: String,
    },
}

fn expected(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "an x86_64 ELF vmlinux or a bzImage",
        Arch::Arm64 => "an arm64 Image (arch/arm64/boot/Image) or an arm64 ELF vmlinux",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// ELF vmlinux; `pvh` tells whether it carries the PVH entry note QEMU needs
    /// (x86_64; always false on arm64).
    Elf { pvh: bool },
    /// x86 bzImage (boot protocol setup header).
    BzImage,
    /// arm64 `Image` (the arm64 boot protocol's 64-byte header).
    Arm64Image,
}

/// Xen's ELF note type for the 32-bit PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY).
const PVH_NOTE_TYPE: u32 = 18;

/// The x86 boot protocol: "HdrS" at 0x202 in the setup header.
fn is_bzimage(data: &[u8]) -> bool {
    data.get(0x202..0x206) == Some(b"HdrS".as_slice())
}

/// The arm64 boot protocol (Documentation/arch/arm64/booting.rst): the 64-byte
/// header's magic "ARM\x64" at offset 0x38.
fn is_arm64_image(data: &[u8]) -> bool {
    data.get(0x38..0x3c) == Some(b"ARM\x64".as_slice())
}

/// What kind of `arch` kernel `path` is, or why it is none.
pub fn inspect(path: &Path, arch: Arch) -> Result<ImageKind, ImageError> {
    if !path.is_file() {
        return Err(ImageError::Missing(path.to_path_buf()));
    }
    let not = |why: &str| ImageError::NotAKernel {
        path: path.to_path_buf(),
        arch,
        why: why.to_string(),
    };
    let data = std::fs::read(path).map_err(|e| not(&e.to_string()))?;
    if data.starts_with(b"\x7fELF") {
        let file = object::File::parse(&*data)
            .map_err(|e| not(&format!("truncated or malformed ELF: {e}")))?;
        if file.architecture() != arch.elf_architecture() {
            return Err(not(&format!(
                "ELF for {:?}, not {arch}",
                file.architecture()
            )));
        }
        if file.entry() == 0 {
            return Err(not("ELF has no entry point"));
        }
        return Ok(ImageKind::Elf {
            pvh: arch == Arch::X86_64 && has_pvh_note(&data),
        });
    }
    match (arch, is_bzimage(&data), is_arm64_image(&data)) {
        (Arch::X86_64, true, _) => Ok(ImageKind::BzImage),
        (Arch::Arm64, _, true) => Ok(ImageKind::Arm64Image),
        (Arch::X86_64, false, true) => Err(not("it is an arm64 Image (\"ARM\\x64\" header)")),
        (Arch::Arm64, true, false) => Err(not("it is an x86 bzImage (\"HdrS\" setup header)")),
        (Arch::X86_64, false, false) => Err(not(
            "neither an ELF file nor a bzImage (no \"HdrS\" boot signature)",
        )),
        (Arch::Arm64, false, false) => Err(not(
            "neither an ELF file nor an arm64 Image (no \"ARM\\x64\" magic at 0x38)",
        )),
    }
}

fn has_pvh_note(data: &[u8]) -> bool {
    let Ok(file) = object::read::elf::ElfFile64::<object::Endianness>::parse(data) else {
        return false;
    };
    let endian = file.endian();
    file.elf_program_headers().iter().any(|ph| {
        use object::read::elf::ProgramHeader;
        let Ok(Some(mut notes)) = ph.notes(endian, data) else {
            return false;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == PVH_NOTE_TYPE {
                return true;
            }
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn bzimage() -> Vec<u8> {
        let mut data = vec![0u8; 0x400];
        data[0x202..0x206].copy_from_slice(b"HdrS");
        data
    }

    /// The first 64 bytes of an arm64 Image as arch/arm64/kernel/head.S writes them
    /// (without EFI stub: `b primary_entry` at 0).
    fn arm64_image() -> Vec<u8> {
        let mut data = vec![0u8; 0x1000];
        data[0..4].copy_from_slice(&0x1400_0000u32.to_le_bytes());
        data[0x10..0x18].copy_from_slice(&0x0020_0000u64.to_le_bytes());
        data[0x38..0x3c].copy_from_slice(b"ARM\x64");
        data
    }

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let junk = write(dir.path(), "junk", b"hello world");
        let err = inspect(&junk, Arch::X86_64).unwrap_err().to_string();
        assert!(
            err.contains("not a kernel for x86_64") && err.contains("bzImage"),
            "{err}"
        );
        let err = inspect(&junk, Arch::Arm64).unwrap_err().to_string();
        assert!(
            err.contains("not a kernel for arm64") && err.contains("ARM\\x64"),
            "{err}"
        );
        let trunc = write(dir.path(), "trunc", b"\x7fELF\x02\x01\x01");
        assert!(inspect(&trunc, Arch::X86_64)
            .unwrap_err()
            .to_string()
            .contains("malformed ELF"));
        assert!(matches!(
            inspect(&dir.path().join("nope"), Arch::X86_64),
            Err(ImageError::Missing(_))
        ));
        // A host ELF that is a program, not an x86_64 kernel with PVH, is still an ELF;
        // the current executable is x86_64 but has no PVH note.
        let me = std::env::current_exe().unwrap();
        assert_eq!(
            inspect(&me, Arch::X86_64).unwrap(),
            ImageKind::Elf { pvh: false }
        );
        // ... and the wrong machine for an arm64 guest.
        let err = inspect(&me, Arch::Arm64).unwrap_err().to_string();
        assert!(
            err.contains("ELF for X86_64, not arm64") && err.contains("arm64 Image"),
            "{err}"
        );
    }

    #[test]
    fn recognises_a_bzimage_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bz", &bzimage());
        assert_eq!(inspect(&p, Arch::X86_64).unwrap(), ImageKind::BzImage);
    }

    #[test]
    fn recognises_an_arm64_image_header_for_arm64_only() {
        let dir = tempfile::tempdir().unwrap();
        let image = write(dir.path(), "Image", &arm64_image());
        assert_eq!(inspect(&image, Arch::Arm64).unwrap(), ImageKind::Arm64Image);
        let err = inspect(&image, Arch::X86_64).unwrap_err().to_string();
        assert!(
            err.contains("not a kernel for x86_64") && err.contains("it is an arm64 Image"),
            "{err}"
        );
        let bz = write(dir.path(), "bz", &bzimage());
        let err = inspect(&bz, Arch::Arm64).unwrap_err().to_string();
        assert!(
            err.contains("not a kernel for arm64") && err.contains("it is an x86 bzImage"),
            "{err}"
        );
        // The magic must sit at 0x38: shifted by one byte it is no Image.
        let mut shifted = arm64_image();
        shifted.copy_within(0x38..0x3c, 0x39);
        shifted[0x38] = 0;
        let p = write(dir.path(), "shifted", &shifted);
        assert!(inspect(&p, Arch::Arm64).is_err());
        // Shorter than the header.
        let p = write(dir.path(), "short", &arm64_image()[..0x3a]);
        assert!(inspect(&p, Arch::Arm64).is_err());
    }
}
