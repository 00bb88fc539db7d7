//! Reading the vmlinux ELF: identity key, symbol table, and raw DWARF
//! sections. Goes through `object::ReadCache`, which reads only the byte
//! ranges asked for, so checking a cached index costs a few KiB of I/O rather
//! than the whole (~60 MiB) file.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use object::read::ReadCache;
use object::{CompressionFormat, Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind, SymbolSection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SymbolError;

/// Identifies one build of a vmlinux: a rebuilt kernel (new build-id, or new
/// contents when there is no build-id) or a touched file invalidates the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Key {
    pub size: u64,
    pub mtime_ns: u64,
    /// sha256 of the GNU build-id, or of the first MiB if there is none.
    pub id_hash: String,
}

/// One ELF symbol worth resolving (sections, file names and undefined
/// symbols are dropped).
#[derive(Debug, Clone)]
pub(crate) struct ElfSymbol {
    pub name: String,
    pub addr: u64,
    /// STT_FUNC, or an untyped label inside an executable section (assembly
    /// entry points such as `entry_SYSCALL_64` are STT_NOTYPE).
    pub code: bool,
    pub global: bool,
}

/// Everything taken from the ELF proper (not DWARF); cheap to re-read on
/// every load, so it is not cached.
pub(crate) struct ElfInfo {
    pub key: Key,
    pub symbols: Vec<ElfSymbol>,
    /// Address ranges of executable sections; line-table rows outside them
    /// belong to discarded code (e.g. `.exit.text` of built-in drivers).
    pub code_ranges: Vec<Range<u64>>,
}

/// DWARF sections memrace needs (no location lists, no frame info), owned so
/// that `Symbols` can keep them for lazy queries.
pub(crate) struct DwarfSections {
    sections: HashMap<&'static str, Vec<u8>>,
}

const DWARF_SECTIONS: [&str; 9] = [
    ".debug_info",
    ".debug_abbrev",
    ".debug_line",
    ".debug_str",
    ".debug_line_str",
    ".debug_str_offsets",
    ".debug_addr",
    ".debug_rnglists",
    ".debug_ranges",
];
/// Without these no query can be answered.
const REQUIRED: [&str; 3] = [".debug_info", ".debug_abbrev", ".debug_line"];

impl DwarfSections {
    /// Bytes of a section; empty if the vmlinux lacks it (gimli treats an
    /// empty optional section as absent).
    pub fn get(&self, name: &str) -> &[u8] {
        self.sections.get(name).map_or(&[], Vec::as_slice)
    }
}

/// An opened vmlinux: the file plus the lazily-read ELF view of it.
struct Opened {
    path: PathBuf,
    file: File,
    cache: ReadCache<File>,
}

impl Opened {
    fn open(path: &Path) -> Result<Opened, SymbolError> {
        let io = |source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let cache = ReadCache::new(file.try_clone().map_err(io)?);
        Ok(Opened {
            path: path.to_path_buf(),
            file,
            cache,
        })
    }

    fn parse(&self) -> Result<object::File<'_, &ReadCache<File>>, SymbolError> {
        object::File::parse(&self.cache).map_err(|e| SymbolError::NotElf {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    fn io(&self, source: std::io::Error) -> SymbolError {
        SymbolError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn key<'d>(&self, obj: &object::File<'d, &'d ReadCache<File>>) -> Result<Key, SymbolError> {
        // fstat of the handle we read from, so key and contents agree even if
        // the path is replaced meanwhile.
        let meta = self.file.metadata().map_err(|e| self.io(e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        let mut hasher = Sha256::new();
        match obj.build_id().ok().flatten() {
            Some(id) => hasher.update(id),
            None => {
                let len = meta.len().min(1 << 20) as usize;
                let mut head = vec![0; len];
                self.file.read_exact_at(&mut head, 0).map_err(|e| self.io(e))?;
                hasher.update(&head);
            }
        }
        Ok(Key {
            size: meta.len(),
            mtime_ns,
            id_hash: hex::encode(hasher.finalize()),
        })
    }
}

pub(crate) fn read_info(path: &Path) -> Result<ElfInfo, SymbolError> {
    let opened = Opened::open(path)?;
    let obj = opened.parse()?;
    let key = opened.key(&obj)?;
    let text_sections: Vec<_> = obj
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .map(|s| (s.index(), s.address()..s.address() + s.size()))
        .collect();
    let symbols = obj
        .symbols()
        .filter_map(|sym| {
            let name = sym.name().ok().filter(|n| !n.is_empty())?;
            let in_text = match sym.section() {
                SymbolSection::Section(idx) => text_sections.iter().any(|(i, _)| *i == idx),
                SymbolSection::Absolute => false,
                _ => return None,
            };
            let code = match sym.kind() {
                SymbolKind::Text => true,
                SymbolKind::Unknown | SymbolKind::Label => in_text,
                SymbolKind::Data | SymbolKind::Tls => false,
                _ => return None,
            };
            Some(ElfSymbol {
                name: name.to_string(),
                addr: sym.address(),
                code,
                global: sym.is_global(),
            })
        })
        .collect();
    let code_ranges = text_sections
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.start != 0)
        .collect();
    Ok(ElfInfo {
        key,
        symbols,
        code_ranges,
    })
}

/// Reads the DWARF sections, checking first that the file is still the one
/// described by `expected` (so DWARF and the cached index agree).
pub(crate) fn read_dwarf(path: &Path, expected: &Key) -> Result<DwarfSections, SymbolError> {
    let opened = Opened::open(path)?;
    let obj = opened.parse()?;
    if opened.key(&obj)? != *expected {
        return Err(SymbolError::VmlinuxChanged {
            path: path.to_path_buf(),
        });
    }
    let mut sections = HashMap::new();
    for name in DWARF_SECTIONS {
        let Some(section) = obj.section_by_name(name) else {
            if REQUIRED.contains(&name) {
                return Err(SymbolError::NoDebugInfo {
                    path: path.to_path_buf(),
                    section: name.to_string(),
                });
            }
            continue;
        };
        let range = section.compressed_file_range().map_err(|e| SymbolError::NotElf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if range.format != CompressionFormat::None {
            return Err(SymbolError::CompressedDebugInfo {
                path: path.to_path_buf(),
                section: name.to_string(),
            });
        }
        // Read directly rather than through the ReadCache, which would keep a
        // second copy of tens of MiB alive.
        let mut data = vec![0; range.uncompressed_size as usize];
        opened
            .file
            .read_exact_at(&mut data, range.offset)
            .map_err(|e| opened.io(e))?;
        sections.insert(name, data);
    }
    Ok(DwarfSections { sections })
}
