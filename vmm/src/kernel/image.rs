//! Recognising a kernel file: an ELF vmlinux (booted through its PVH entry note) or a bzImage.

use object::Object;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("kernel {0} does not exist")]
    Missing(PathBuf),
    #[error("{path} is not a kernel: {why}\n  give an ELF vmlinux or a bzImage, or a variant name (`memrace kernel list`)")]
    NotAKernel { path: PathBuf, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// ELF vmlinux; `pvh` tells whether it carries the PVH entry note QEMU needs.
    Elf {
        pvh: bool,
    },
    BzImage,
}

/// Xen's ELF note type for the 32-bit PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY).
const PVH_NOTE_TYPE: u32 = 18;

pub fn inspect(path: &Path) -> Result<ImageKind, ImageError> {
    if !path.is_file() {
        return Err(ImageError::Missing(path.to_path_buf()));
    }
    let not = |why: &str| ImageError::NotAKernel {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let data = std::fs::read(path).map_err(|e| not(&e.to_string()))?;
    if data.starts_with(b"\x7fELF") {
        let file = object::File::parse(&*data)
            .map_err(|e| not(&format!("truncated or malformed ELF: {e}")))?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(not(&format!(
                "ELF for {:?}, not x86_64",
                file.architecture()
            )));
        }
        if file.entry() == 0 {
            return Err(not("ELF has no entry point"));
        }
        return Ok(ImageKind::Elf {
            pvh: has_pvh_note(&data),
        });
    }
    // The x86 boot protocol: "HdrS" at 0x202 in the setup header.
    if data.len() > 0x206 && &data[0x202..0x206] == b"HdrS" {
        return Ok(ImageKind::BzImage);
    }
    Err(not(
        "neither an ELF file nor a bzImage (no \"HdrS\" boot signature)",
    ))
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

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"hello world").unwrap();
        let err = inspect(&junk).unwrap_err().to_string();
        assert!(
            err.contains("not a kernel") && err.contains("bzImage"),
            "{err}"
        );
        let trunc = dir.path().join("trunc");
        std::fs::write(&trunc, b"\x7fELF\x02\x01\x01").unwrap();
        assert!(inspect(&trunc)
            .unwrap_err()
            .to_string()
            .contains("malformed ELF"));
        assert!(matches!(
            inspect(&dir.path().join("nope")),
            Err(ImageError::Missing(_))
        ));
        // A host ELF that is a program, not an x86_64 kernel with PVH, is still an ELF;
        // the current executable is x86_64 but has no PVH note.
        let me = std::env::current_exe().unwrap();
        assert_eq!(inspect(&me).unwrap(), ImageKind::Elf { pvh: false });
    }

    #[test]
    fn recognises_a_bzimage_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 0x400];
        data[0x202..0x206].copy_from_slice(b"HdrS");
        let p = dir.path().join("bz");
        std::fs::write(&p, &data).unwrap();
        assert_eq!(inspect(&p).unwrap(), ImageKind::BzImage);
    }
}
